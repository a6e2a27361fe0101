"""What tconv, late_fusion and frame compute, beyond the registry-wide contract tests."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from heads.config import DataConfig, TrainConfig
from heads.models import HeadConfig, create_head
from heads.models.frames import fused_frames
from heads.objective import Loss
from heads.run import train_run
from tests.heads.stores import make_cluster_store

pytestmark = pytest.mark.usefixtures("one_torch_thread")

D, C = 6, 3
SMALL = HeadConfig(hidden_size=8, fc_size=8, dropout=0.0, num_layers=1)


def _head(name: str, cfg: HeadConfig = SMALL):
    torch.manual_seed(0)
    return create_head(name, input_dim=D, num_classes=C, cfg=cfg).eval()


@pytest.mark.parametrize("length", [1, 2, 7, 64, 100])
def test_tconv_output_sees_the_first_and_the_last_frame(length):
    model = _head("tconv")
    torch.manual_seed(1)
    x = torch.randn(1, length, D)
    lengths = torch.tensor([length])
    with torch.no_grad():
        base = model(x, lengths)
        for step in {0, length - 1}:
            changed = x.clone()
            changed[0, step] += 3.0 * torch.randn(D)  # not a constant: LayerNorm removes those
            assert not torch.allclose(model(changed, lengths), base)


def test_late_fusion_reads_a_centred_pair_a_fixed_distance_apart():
    lengths = torch.tensor([1, 5, 16, 17, 40])
    first, second = fused_frames(lengths, distance=15)
    assert first.tolist() == [0, 0, 0, 0, 12]
    assert second.tolist() == [0, 4, 15, 15, 27]
    model = _head("late_fusion")
    x = torch.randn(1, 40, D)
    with torch.no_grad():
        base = model(x, torch.tensor([40]))
        outside = x.clone()
        outside[0, [0, 11, 13, 26, 28, 39]] += torch.randn(6, D)  # frames other than 12, 27
        torch.testing.assert_close(model(outside, torch.tensor([40])), base)
        inside = x.clone()
        inside[0, 27] += torch.randn(D)
        assert not torch.allclose(model(inside, torch.tensor([40])), base)


def test_frame_head_trains_on_frames_and_predicts_their_mean():
    model = _head("frame")
    x = torch.randn(2, 5, D)
    lengths = torch.tensor([5, 3])
    labels = torch.tensor([[1.0, 0, 0], [0, 0, 1.0]])
    loss_fn = Loss(multilabel=False)
    with torch.no_grad():
        per_frame = model.forward_per_frame(x, lengths)  # (B, T, C)
        logits, terms = model.training_losses(x, lengths, labels, loss_fn)
        video = model(x, lengths)
    expected_logits = torch.stack([per_frame[0, :5].mean(0), per_frame[1, :3].mean(0)])
    torch.testing.assert_close(video, expected_logits)
    torch.testing.assert_close(logits, expected_logits)
    frame_targets = torch.tensor([0] * 5 + [2] * 3)
    frames = torch.cat([per_frame[0, :5], per_frame[1, :3]])
    torch.testing.assert_close(terms["loss"], F.cross_entropy(frames, frame_targets))
    assert set(terms) == {"loss"}


@pytest.mark.parametrize("name", ["frame", "late_fusion", "tconv"])
def test_heads_train_end_to_end(tmp_path, name):
    # A strong per-frame signal: late fusion reads two frames only.
    store = make_cluster_store(tmp_path / "s.zarr", n_videos=60, signal=2.0)
    cfg = TrainConfig(model=name, head=SMALL, epochs=12, lr=0.01, data=DataConfig(batch_size=8))
    metrics = train_run(store, cfg, tmp_path / "run")
    assert metrics["hit_at_1"] >= 0.9
