import json

import pytest

from heads.config import DEFAULT_LR, DataConfig, TrainConfig
from heads.models import HeadConfig
from vidfeat.errors import ConfigError


def test_json_round_trip():
    cfg = TrainConfig(
        model="bilstm",
        head=HeadConfig(hidden_size=64, residual=True),
        data=DataConfig(max_frames=100, sampling="random-crop", classes=("a", "b")),
        optimizer="sgd",
        lr_step=5,
        monitor="gap_at_20",
    )
    again = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert again.data.classes == ("a", "b") and again.head.hidden_size == 64


def test_lr_defaults_follow_the_optimizer():
    assert TrainConfig(model="gru").lr == DEFAULT_LR["adam"] == 1e-3
    assert TrainConfig(model="gru", optimizer="sgd").lr == 0.01
    assert TrainConfig(model="gru", optimizer="sgd", lr=0.5).lr == 0.5
    assert isinstance(TrainConfig(model="gru", lr=1).lr, float)  # JSON ints compare equal


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"optimizer": "lbfgs"}, "optimizer"),
        ({"lr": 0}, "lr"),
        ({"lr_gamma": 1.5}, "lr_gamma"),
        ({"epochs": 0}, "epochs"),
        ({"monitor": "accuracy"}, "monitor"),
        ({"loss": "focal"}, "loss"),
        ({"patience": -1}, "patience"),
        ({"class_weights": "yes"}, "class_weights"),
        ({"grad_clip": float("nan")}, "grad_clip"),
    ],
)
def test_train_config_validation(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(model="gru", **kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_frames": 0}, "max_frames"),
        ({"sampling": "middle"}, "sampling"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"classes": "cat"}, "classes"),
        ({"classes": ("a", "a")}, "unique"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"num_workers": True}, "num_workers"),
        ({"cache_mb": -1}, "cache_mb"),
    ],
)
def test_data_config_validation(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        DataConfig(**kwargs)


def test_unknown_keys_are_refused():
    with pytest.raises(ConfigError, match="bogus"):
        TrainConfig.from_dict({"model": "gru", "bogus": 1})
    with pytest.raises(ConfigError, match="bogus"):
        DataConfig.from_dict({"bogus": 1})
