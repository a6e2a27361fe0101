"""The sparsely gated mixture-of-experts layer, lstm_moe training, and the MoE classifier option."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from click.testing import CliRunner

from heads import checkpoint as ck
from heads.models import HeadConfig, create_head
from heads.models.moe import MixtureOfExperts
from heads.models.sparse_moe import SparseMoE, cv_squared
from tests.heads.stores import make_cluster_store
from vidfeat.errors import ConfigError
from vidfeat_cli.heads import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CFG = HeadConfig(hidden_size=16, fc_size=16, moe_experts=8, moe_top_k=2, expert_size=12)


def _layer(cfg: HeadConfig = CFG) -> SparseMoE:
    torch.manual_seed(0)
    layer = SparseMoE(6, 5, cfg)
    with torch.no_grad():  # a non-trivial gate (it starts at zero, as in the paper)
        layer.gate.weight.normal_()
    return layer


def test_only_the_chosen_experts_run_on_their_rows():
    layer = _layer().eval()
    x = torch.randn(40, 6)
    seen: dict[int, int] = {}
    for e, expert in enumerate(layer.experts):
        expert.register_forward_hook(lambda m, i, o, e=e: seen.__setitem__(e, i[0].shape[0]))
    out = layer(x)
    chosen = layer.gate(x).topk(2, dim=1).indices  # no noise in eval
    routed = torch.bincount(chosen.flatten(), minlength=8)
    assert sum(seen.values()) == 40 * 2  # k experts per row, no more
    assert all(seen.get(e, 0) == int(routed[e]) for e in range(8))
    # The output is the gate-weighted sum of the chosen experts' outputs.
    weights = torch.softmax(layer.gate(x).gather(1, chosen), dim=1)
    expected = torch.stack(
        [
            sum(weights[n, j] * layer.experts[int(chosen[n, j])](x[n]) for j in range(2))
            for n in range(40)
        ]
    )
    torch.testing.assert_close(out, expected)


def test_balance_losses_are_recorded_in_training_only():
    layer = _layer().train()
    layer(torch.randn(32, 6))
    losses = layer.pop_aux_losses()
    assert set(losses) == {"moe_importance_loss", "moe_load_loss"}
    assert all(v.requires_grad and v.item() >= 0 for v in losses.values())
    assert layer.pop_aux_losses() == {}  # popped
    layer.eval()
    layer(torch.randn(32, 6))
    assert layer.pop_aux_losses() == {}


def test_load_loss_has_gradient_to_the_gate_through_the_noise():
    # Hard top-k counts have no gradient; the smooth load P(x) must reach W_g and W_noise.
    layer = _layer(dataclasses.replace(CFG, moe_importance_weight=0.0)).train()
    layer(torch.randn(32, 6))
    layer.pop_aux_losses()["moe_load_loss"].backward()
    assert layer.gate.weight.grad.abs().sum() > 0
    assert layer.noise.weight.grad.abs().sum() > 0


def test_cv_squared_and_max_load_ratio():
    assert float(cv_squared(torch.tensor([2.0, 2.0, 2.0]))) == 0.0
    torch.testing.assert_close(cv_squared(torch.tensor([0.0, 2.0])), torch.tensor(1.0))
    layer = _layer().train()
    with torch.no_grad():
        layer.gate.weight.zero_()
        layer.gate.weight[0].fill_(50.0)  # expert 0 wins every row with positive inputs
        layer.noise.weight.fill_(-50.0)  # (almost) no noise
    layer(torch.rand(30, 6) + 0.1)
    # Expert 0 took 30 of the 60 routed slots: 30 / (60 / 8) = 4x its fair share.
    assert layer.pop_stats() == {"moe_max_load_ratio": 4.0}
    assert layer.pop_stats() == {}  # reset for the next window


def test_top_k_must_leave_an_expert_out():
    # The default top k (4) with fewer experts named it as "must be in 1..3", not saying why
    # or which option to change.
    with pytest.raises(
        ConfigError, match=r"moe_top_k \(4\) must be below moe_experts \(4\).*--moe-top-k"
    ):
        HeadConfig(moe_experts=4, moe_top_k=4)
    with pytest.raises(ConfigError, match="moe_top_k must be"):
        HeadConfig(moe_top_k=0)


def test_lstm_moe_trains_with_balanced_load(tmp_path):
    store = make_cluster_store(tmp_path / "s.zarr", n_videos=120, dim=16, n_classes=3)
    args = ["train", str(store), "-m", "lstm_moe", "-o", str(tmp_path / "run")]
    args += ["--hidden-size", "16", "--fc-size", "16", "--expert-size", "16"]
    args += ["--moe-experts", "16", "--moe-top-k", "4", "--epochs", "8", "--batch-size", "16"]
    args += ["--lr", "0.005"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "run" / ck.METRICS).read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 8
    for record in records:
        assert record["train_moe_importance_loss"] >= 0
        assert record["train_moe_load_loss"] >= 0
        assert record["moe_max_load_ratio"] >= 1.0
    assert records[-1]["moe_max_load_ratio"] <= 3.0  # no expert above 3x its fair share
    test = json.loads((tmp_path / "run" / ck.TEST_METRICS).read_text())
    assert test["hit_at_1"] >= 0.9  # the MoE layer does not get in the way of learning


@pytest.mark.parametrize("name", ["gru", "bilstm", "lstm_moe"])
def test_recurrent_heads_take_a_moe_classifier(name):
    cfg = dataclasses.replace(CFG, classifier="moe", num_experts=3)
    model = create_head(name, input_dim=6, num_classes=4, cfg=cfg)
    assert isinstance(model.classifier, MixtureOfExperts)
    assert model.classifier.num_experts == 3
    model.reset_classifier(7)
    assert isinstance(model.classifier, MixtureOfExperts) and model.classifier.out_features == 7


def test_frame_head_refuses_a_moe_classifier():
    with pytest.raises(ConfigError, match="linear"):
        create_head("frame", input_dim=6, num_classes=4, cfg=HeadConfig(classifier="moe"))
