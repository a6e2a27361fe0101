"""Fine-tuning a run on a new class set: warm start, freezing, the run directory it writes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
import torch

from heads import checkpoint as ck
from heads.config import DataConfig, TrainConfig
from heads.errors import IncompatibleStoreError, RunExistsError, TransferError
from heads.inference import evaluate_run, load_run, predict_run
from heads.models import HEADS, HeadConfig, create_head
from heads.report import write_report
from heads.run import train_run
from heads.splits import inherit_splits
from heads.transfer import (
    FINETUNE_LR,
    finetune_config,
    finetune_run,
    freeze,
    frozen_parts_in_eval,
    trainable_modules,
    warm_start_classifier,
)
from tests.heads.stores import make_cluster_store

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL_HEAD = HeadConfig(hidden_size=8, fc_size=16, attention_size=8, num_experts=2)
CLASSES = tuple(f"class{i}" for i in range(10))
SOURCE = CLASSES[:5]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _batch(n: int = 4, t: int = 6, dim: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, t, dim, generator=g), torch.tensor([6, 3, 1, 5][:n])


def _cfg(model: str, **kw) -> TrainConfig:
    data = DataConfig(batch_size=8, **kw.pop("data", {}))
    return TrainConfig(model=model, data=data, **{"head": SMALL_HEAD, "epochs": 3, **kw})


LSTM = _cfg("lstm", head=HeadConfig(hidden_size=16, fc_size=32), epochs=10)  # learns in 10 epochs


@pytest.fixture(scope="module")
def store10(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 learnable classes (class c lifts feature c), 10 videos each, 16-d."""
    path = tmp_path_factory.mktemp("s") / "s.zarr"
    return make_cluster_store(path, 100, n_classes=10, signal=2.0)


@pytest.fixture(scope="module")
def bof5(store10: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bag-of-frames run (BatchNorm in every block) on the first 5 classes."""
    run = tmp_path_factory.mktemp("runs") / "bof5"
    train_run(store10, _cfg("bof", data={"classes": SOURCE}), run)
    return run


@pytest.fixture(scope="module")
def lstm5(store10: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An LSTM run on the first 5 classes, trained long enough to be useful."""
    run = tmp_path_factory.mktemp("runs") / "lstm5"
    train_run(store10, LSTM.replace(data=DataConfig(batch_size=8, classes=SOURCE)), run)
    return run


@pytest.fixture(scope="module")
def ft_head(store10: Path, lstm5: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """``lstm5`` fine-tuned on all 10 classes with the defaults (--train head)."""
    out = tmp_path_factory.mktemp("runs") / "ft"
    return out, finetune_run(lstm5, store10, out)


# ------------------------------------------------------------------------------ warm start


@pytest.mark.parametrize("name", HEADS.names())
def test_warm_start_keeps_old_class_outputs_exactly(name: str) -> None:
    torch.manual_seed(0)
    model = create_head(name, input_dim=16, num_classes=3, cfg=SMALL_HEAD).eval()
    x, lengths = _batch()
    with torch.no_grad():
        before = model(x, lengths)
    old_state = {k: v.clone() for k, v in model.classifier.state_dict().items()}
    warm = warm_start_classifier(model, ["a", "b", "c"], ["d", "c", "a", "e", "f"])
    with torch.no_grad():
        after = model(x, lengths)
    assert after.shape == (4, 5) and model.num_classes == 5
    # Old classes moved to new positions but compute what they did (up to BLAS blocking).
    torch.testing.assert_close(after[:, [2, 1]], before[:, [0, 2]], rtol=0, atol=1e-6)
    for key, new in model.classifier.state_dict().items():  # rows of a and c copied bitwise
        k = old_state[key].shape[0] // 3
        assert torch.equal(new[2 * k : 3 * k], old_state[key][0:k])
        assert torch.equal(new[1 * k : 2 * k], old_state[key][2 * k : 3 * k])
    assert warm.kept == ("c", "a") and warm.new == ("d", "e", "f") and warm.dropped == ("b",)


def test_new_rows_are_fresh_and_seeded() -> None:
    def rows(seed: int) -> torch.Tensor:
        torch.manual_seed(0)
        model = create_head("lstm", input_dim=16, num_classes=2, cfg=SMALL_HEAD)
        torch.manual_seed(seed)
        warm_start_classifier(model, ["a", "b"], ["a", "b", "z"])
        return model.classifier.weight.detach()[2].clone()

    assert torch.equal(rows(1), rows(1)) and not torch.equal(rows(1), rows(2))
    assert rows(1).abs().sum() > 0


def test_warm_start_refuses_a_label_count_mismatch() -> None:
    model = create_head("bof", input_dim=16, num_classes=3, cfg=SMALL_HEAD)
    with pytest.raises(TransferError, match="3 outputs but 2 labels"):
        warm_start_classifier(model, ["a", "b"], ["a", "b", "c"])


# ------------------------------------------------------------------------------ freezing


@pytest.mark.parametrize("name", HEADS.names())
@pytest.mark.parametrize("mode", ["head", "top", "all"])
def test_freeze_trains_exactly_the_mode_parts(name: str, mode: str) -> None:
    model = create_head(name, input_dim=16, num_classes=4, cfg=SMALL_HEAD)
    params = freeze(model, mode)
    expected = {
        "head": {id(p) for p in model.classifier.parameters()},
        "top": {id(p) for m in (model.top_block, model.classifier) for p in m.parameters()},
        "all": {id(p) for p in model.parameters()},
    }[mode]
    assert {id(p) for p in params} == expected
    assert {id(p) for p in model.parameters() if p.requires_grad} == expected
    x, lengths = _batch()
    model.train()
    model(x, lengths).sum().backward()
    assert all(p.grad is None for p in model.parameters() if id(p) not in expected)


@pytest.mark.parametrize("name", HEADS.names())
def test_top_block_is_empty_only_for_heads_without_a_hidden_block(name: str) -> None:
    # "--train top" retrains the last block before the classifier; a head whose hidden layers
    # sit elsewhere (the frame head's per-frame blocks) must still name the last of them.
    model = create_head(name, input_dim=16, num_classes=4, cfg=SMALL_HEAD)
    outside = {
        id(p) for m in (model.classifier, model.input_norm, model.fusion) for p in m.parameters()
    }
    hidden = [p for p in model.parameters() if id(p) not in outside]
    top = list(model.top_block.parameters())
    assert bool(top) == bool(hidden), name
    assert not {id(p) for p in top} & outside


def test_unknown_mode_is_refused() -> None:
    model = create_head("bof", input_dim=16, num_classes=4, cfg=SMALL_HEAD)
    with pytest.raises(TransferError, match="head, top, all"):
        trainable_modules(model, "encoder")


def test_frozen_parts_stay_in_eval_while_training() -> None:
    model = create_head("bof", input_dim=16, num_classes=4, cfg=SMALL_HEAD)
    block1_bn, block1_drop, top_bn, top_drop = model.block1[1], model.block1[3], *model.top[1::2]
    with frozen_parts_in_eval(model, "top"):
        model.train()
        assert not block1_bn.training and not block1_drop.training
        assert top_bn.training and top_drop.training and model.fc.training and model.training
        before = block1_bn.running_mean.clone()
        model(*_batch())
        assert torch.equal(block1_bn.running_mean, before)  # batch stats never written back
        assert not torch.equal(top_bn.running_mean, torch.zeros(16))  # the trained one learns
    with frozen_parts_in_eval(model, "head"):
        model.train()
        assert not top_bn.training and not top_drop.training and model.fc.training
    model.train()
    assert block1_bn.training and block1_drop.training  # the pin ends with the block


# ------------------------------------------------------------------------------ config


def test_finetune_config_defaults_and_overrides() -> None:
    parent = _cfg("bilstm", optimizer="sgd", lr=0.5, patience=4, data={"classes": SOURCE})
    cfg = finetune_config(parent, "head")
    assert (cfg.optimizer, cfg.lr, cfg.data.classes) == ("adam", FINETUNE_LR["head"], None)
    assert (cfg.patience, cfg.head, cfg.data.batch_size) == (4, parent.head, 8)  # inherited
    assert finetune_config(parent, "all").lr == FINETUNE_LR["all"]
    assert finetune_config(parent, "top", optimizer="sgd").lr == 0.01  # sgd's own default
    # Naming fine-tuning's own optimiser keeps its step, not Adam's training default.
    assert finetune_config(parent, "top", optimizer="adam").lr == FINETUNE_LR["top"]


def test_parent_split_is_kept_and_new_videos_are_split_afresh() -> None:
    videos = pd.DataFrame(
        {
            "video_id": [f"v{i}" for i in range(40)],
            "labels": [(f"c{i % 4}",) for i in range(40)],
            "split": "",
            "group": "",
        }
    )
    parent = pd.DataFrame({"video_id": [f"v{i}" for i in range(0, 40, 2)], "split": "train"})
    cfg = _cfg("bof")
    splits = inherit_splits(videos, parent, test_fraction=0.2, val_fraction=0.1, seed=cfg.seed)
    assert list(splits["video_id"]) == list(videos["video_id"])
    known = splits["video_id"].isin(parent["video_id"])
    assert (splits.loc[known, "split"] == "train").all()  # no parent training video in test
    assert set(splits.loc[~known, "split"]) == {"train", "val", "test"}


# ------------------------------------------------------------------------------ runs


def _state(path: Path) -> dict[str, torch.Tensor]:
    return ck.load_checkpoint(path)["model_state"]


@pytest.mark.parametrize("mode", ["head", "top", "all"])
def test_finetune_changes_only_the_trained_parts(
    store10: Path, bof5: Path, tmp_path: Path, mode: str
) -> None:
    out = tmp_path / "ft"
    metrics = finetune_run(bof5, store10, out, mode=mode, cfg=None)
    parent, best, last = _state(bof5 / ck.BEST), _state(out / ck.BEST), _state(out / ck.LAST)
    trained_prefix = {"head": ("fc.",), "top": ("fc.", "top."), "all": ("",)}[mode]
    for key, old in parent.items():
        if key.startswith("fc."):
            continue  # resized
        changed = not torch.equal(old, last[key])
        if key.startswith(trained_prefix):
            if key.endswith("weight") and "running" not in key:
                assert changed, key
        else:  # frozen: parameters and BatchNorm buffers bitwise equal
            assert not changed, key
            assert torch.equal(old, best[key]), key
    model = load_run(out).model
    parts = {"head": [model.fc], "top": [model.top, model.fc], "all": [model]}[mode]
    trained = [p for part in parts for p in part.parameters()]
    assert metrics["trainable_params"] == sum(p.numel() for p in trained)
    optimizer = ck.load_checkpoint(out / ck.LAST)["optimizer_state"]
    assert len(optimizer["param_groups"][0]["params"]) == len(trained)  # frozen ones left out
    records = [json.loads(x) for x in (out / ck.METRICS).read_text().splitlines()]
    assert {r["trainable_params"] for r in records} == {metrics["trainable_params"]}
    assert metrics["train_wall_s"] > 0


def test_finetuned_run_is_a_normal_run_with_the_new_classes(
    store10: Path, lstm5: Path, ft_head: tuple
) -> None:
    out, metrics = ft_head
    for name in (ck.CONFIG, ck.LABEL_MAP, ck.SPLIT, ck.METRICS, ck.BEST, ck.TEST_METRICS):
        assert (out / name).is_file(), name
    assert json.loads((out / ck.LABEL_MAP).read_text())["labels"] == list(CLASSES)
    config = json.loads((out / ck.CONFIG).read_text())
    info = config["finetune"]
    assert info["parent"] == str(lstm5.resolve()) and info["train"] == "head"
    assert info["warm_started"] == list(SOURCE) and info["new_classes"] == list(CLASSES[5:])
    assert config["optimizer"] == "adam" and config["lr"] == FINETUNE_LR["head"]
    with np.load(out / "test_predictions.npz") as npz:
        assert npz["scores"].shape == (metrics["n_test"], 10)
    run = load_run(out)
    assert run.model.num_classes == 10 and run.label_map.labels == CLASSES
    assert evaluate_run(out)["n"] == metrics["n_test"]
    assert len(predict_run(out, store10)) == 100
    # The parent's training videos never reach the new test set.
    parent_split = pd.read_csv(lstm5 / ck.SPLIT).set_index("video_id")["split"]
    new_split = pd.read_csv(out / ck.SPLIT).set_index("video_id")["split"]
    assert (new_split[parent_split.index] == parent_split).all()
    assert len(new_split) == 100


def test_finetune_on_a_class_subset(store10: Path, bof5: Path, tmp_path: Path) -> None:
    parent = load_run(bof5)
    cfg = finetune_config(
        parent.cfg, "top", data=DataConfig(batch_size=8, classes=("class7", "class0"))
    )
    finetune_run(parent, store10, tmp_path / "ft", mode="top", cfg=cfg)
    info = json.loads((tmp_path / "ft" / ck.CONFIG).read_text())["finetune"]
    assert info["warm_started"] == ["class0"] and info["new_classes"] == ["class7"]
    assert info["dropped_classes"] == ["class1", "class2", "class3", "class4"]
    ids = pd.read_csv(tmp_path / "ft" / ck.SPLIT)["video_id"]
    assert len(ids) == 20  # videos of other classes are left out
    assert load_run(tmp_path / "ft").label_map.labels == ("class7", "class0")


def test_finetune_refuses_an_incompatible_store(bof5: Path, tmp_path: Path) -> None:
    other = make_cluster_store(
        tmp_path / "other.zarr", 30, attrs={"backbone": "resnet50", "weights": "w1", "pca": None}
    )
    with pytest.raises(IncompatibleStoreError, match="backbone"):
        finetune_run(bof5, other, tmp_path / "ft")
    wide = make_cluster_store(tmp_path / "wide.zarr", 30, dim=24)
    with pytest.raises(IncompatibleStoreError, match="dim: model expects 16, store has 24"):
        finetune_run(bof5, wide, tmp_path / "ft")
    assert not (tmp_path / "ft").exists()  # nothing written before the checks pass


def test_finetune_refuses_another_architecture_or_an_existing_run(
    store10: Path, bof5: Path, tmp_path: Path
) -> None:
    parent = load_run(bof5)
    wider = parent.cfg.replace(head=dataclasses.replace(parent.cfg.head, fc_size=32))
    with pytest.raises(TransferError, match="architecture"):
        finetune_run(parent, store10, tmp_path / "ft", cfg=wider)
    with pytest.raises(TransferError, match="differ from the parent"):
        finetune_run(bof5, store10, bof5)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / ck.CONFIG).write_text("{}")
    with pytest.raises(RunExistsError, match="already holds an unfinished run"):
        finetune_run(bof5, store10, taken)


def test_report_of_a_finetuned_run(ft_head: tuple, tmp_path: Path) -> None:
    report = write_report([ft_head[0]], tmp_path / "report")
    pngs = sorted((tmp_path / "report").glob("*.png"))
    assert {p.name for p in pngs} >= {"ft_training.png", "ft_confusion.png", "ft_pr_curves.png"}
    for png in pngs:
        assert png.read_bytes().startswith(PNG_MAGIC)
        image = mpimg.imread(png)  # decodes: a real image, with something drawn on it
        assert image.shape[0] > 200 and image.shape[1] > 200 and image.std() > 0.01
        assert f"({png.name})" in report.read_text()


def test_head_only_transfer_nearly_matches_training_from_scratch(
    store10: Path, ft_head: tuple, tmp_path: Path
) -> None:
    out, metrics = ft_head
    with np.load(out / "test_predictions.npz") as npz:
        scores, labels = npz["scores"], npz["labels"]
    new = labels[:, 5:].any(axis=1)  # videos of classes the parent never saw
    hits = labels[np.arange(len(labels)), scores.argmax(axis=1)].astype(bool)
    assert new.sum() >= 8
    assert hits[new].mean() >= 0.6  # chance is 0.1: the frozen features carry the new classes
    # The same videos in the same splits, every layer trained from scratch on all 10 classes.
    full = train_run(store10, LSTM, tmp_path / "full", split_file=out / ck.SPLIT)
    assert full["n_test"] == metrics["n_test"]
    assert metrics["hit_at_1"] >= 0.75 * full["hit_at_1"]
    assert metrics["trainable_params"] == 32 * 10 + 10  # fc_size x classes + biases only
    assert full["trainable_params"] > 9 * metrics["trainable_params"]
