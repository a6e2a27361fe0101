"""Every registered head: contract, padding invariance, overfitting, and temporal order."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from heads.config import REDUCTIONS
from heads.models import (
    HEADS,
    Head,
    HeadConfig,
    HeadInputError,
    create_head,
    linear_weights,
    masked_max,
    masked_mean,
    weighted_sum,
)
from heads.models.base import L2Norm, last_valid
from heads.models.fusion import ProjectionFusion
from heads.models.moe import MixtureOfExperts
from vidfeat.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

D = 12  # feature dim for the small tests
C = 4  # classes
SMALL = HeadConfig(hidden_size=16, fc_size=16, attention_size=8)


def make_head(name: str, cfg: HeadConfig = SMALL, dim: int = D, classes: int = C) -> Head:
    torch.manual_seed(0)
    return create_head(name, input_dim=dim, num_classes=classes, cfg=cfg)


def padded_batch(videos: list[torch.Tensor], total_len: int, pad: float = 0.0):
    """Stack (T_i, D) videos into (B, total_len, D) filled with ``pad`` beyond each length."""
    x = torch.full((len(videos), total_len, videos[0].shape[1]), pad)
    for i, v in enumerate(videos):
        x[i, : len(v)] = v
    return x, torch.tensor([len(v) for v in videos])


@pytest.fixture(params=HEADS.names())
def name(request) -> str:
    return request.param


# --- contract -----------------------------------------------------------------------------------


def test_output_shapes_and_per_frame_support(name):
    model = make_head(name).eval()
    x, lengths = padded_batch([torch.randn(t, D) for t in (5, 9, 1)], total_len=11)
    logits = model(x, lengths)
    assert logits.shape == (3, C) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    if model.supports_per_frame:
        per_frame = model.forward_per_frame(x, lengths)
        assert per_frame.shape == (3, 11, C)
        assert torch.count_nonzero(per_frame[0, 5:]) == 0  # padded steps are zeroed
        assert torch.count_nonzero(per_frame[0, :5]) > 0
    else:
        with pytest.raises(HeadInputError, match="per-frame"):
            model.forward_per_frame(x, lengths)


def test_classifier_produces_the_logits_from_the_top_block(name):
    model = make_head(name).eval()
    seen: dict[str, torch.Tensor] = {}
    model.top_block.register_forward_hook(lambda m, i, o: seen.update(top=o))
    model.classifier.register_forward_hook(lambda m, i, o: seen.update(fc_in=i[0], fc=o))
    x, lengths = padded_batch([torch.randn(t, D) for t in (4, 7)], total_len=7)
    logits = model(x, lengths)
    assert torch.equal(seen["fc"], logits)
    if seen["top"].dim() == 3:
        # A top block run on each frame (the frame head): the classifier reads the mean of its
        # outputs over each video's own frames.
        mask = (torch.arange(7) < lengths[:, None]).unsqueeze(-1)
        mean = (seen["top"] * mask).sum(dim=1) / lengths[:, None]
        torch.testing.assert_close(seen["fc_in"], mean)
    else:
        assert torch.equal(seen["top"], seen["fc_in"])
    assert model.classifier.out_features == C
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert any(linears[-1] is m for m in model.classifier.modules())


def test_reset_classifier_changes_only_the_class_layer(name):
    model = make_head(name).eval()
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("fc.")}
    model.reset_classifier(7)
    x, lengths = padded_batch([torch.randn(t, D) for t in (3, 6)], total_len=6)
    assert model(x, lengths).shape == (2, 7)
    assert model.classifier.out_features == 7 and model.num_classes == 7
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())


def test_bad_inputs_are_refused(name):
    model = make_head(name)
    x = torch.randn(2, 5, D)
    with pytest.raises(HeadInputError, match="feature dim"):
        model(torch.randn(2, 5, D + 1), torch.tensor([5, 5]))
    with pytest.raises(HeadInputError, match="lengths must be in"):
        model(x, torch.tensor([0, 5]))
    with pytest.raises(HeadInputError, match="lengths must be in"):
        model(x, torch.tensor([6, 5]))
    with pytest.raises(HeadInputError, match="int"):
        model(x, torch.tensor([5.0, 5.0]))


def test_unknown_head_name_lists_the_choices():
    with pytest.raises(ConfigError, match="bilstm"):
        create_head("transformer", input_dim=D, num_classes=C)


# --- padding invariance -------------------------------------------------------------------------


def assert_padding_invariant(model: Head, pad: float) -> None:
    torch.manual_seed(1)
    video = torch.randn(7, D)
    alone_x, alone_len = padded_batch([video], total_len=7)
    # Longer and shorter neighbours, plus extra padding beyond the longest video.
    batch_x, batch_len = padded_batch(
        [torch.randn(12, D), video, torch.randn(3, D)], total_len=15, pad=pad
    )
    with torch.no_grad():
        alone, batched = model(alone_x, alone_len)[0], model(batch_x, batch_len)[1]
        torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)
        if model.supports_per_frame:
            alone_pf = model.forward_per_frame(alone_x, alone_len)[0]
            batched_pf = model.forward_per_frame(batch_x, batch_len)[1]
            torch.testing.assert_close(batched_pf[:7], alone_pf, atol=1e-5, rtol=0)
            assert torch.count_nonzero(batched_pf[7:]) == 0


@pytest.mark.parametrize("pad", [0.0, float("nan")], ids=["zero-pad", "nan-pad"])
def test_padding_never_changes_outputs(name, pad):
    # NaN padding proves padded steps are masked out, not merely added as zeros.
    assert_padding_invariant(make_head(name).eval(), pad)


@pytest.mark.parametrize("fusion", ["concat", "shared", "projection"])
def test_padding_never_changes_outputs_with_fused_streams(name, fusion):
    torch.manual_seed(0)
    cfg = dataclasses.replace(SMALL, fusion=fusion, fusion_dim=6)
    model = create_head(name, input_dim=D, num_classes=C, cfg=cfg, streams={"a": 7, "b": 5})
    assert model.input_dim == D
    assert_padding_invariant(model.eval(), float("nan"))


def test_projection_term_counts_valid_frames_and_weighs_videos_alike():
    torch.manual_seed(0)
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    alone = ProjectionFusion.distance([a[None], b[None]], torch.tensor([4]))
    pad = torch.full((2, 6, 3), float("nan"))
    pa, pb = pad.clone(), pad.clone()
    pa[1, :4], pb[1, :4] = a, b
    pa[0, :6], pb[0, :6] = a.repeat(2, 1)[:6], b.repeat(2, 1)[:6]
    batched = ProjectionFusion.distance([pa, pb], torch.tensor([6, 4]))
    # The mean of the two videos' own means, whatever their lengths (6 and 4 frames): so
    # torchrun's per-video weighting of the ranks' slices adds up to one process.
    expected = (alone + ProjectionFusion.distance([pa[:1], pb[:1]], torch.tensor([6]))) / 2
    torch.testing.assert_close(batched, expected)
    same = ProjectionFusion.distance([a[None], 3 * a[None]], torch.tensor([4]))
    assert float(same) == pytest.approx(0.0, abs=1e-6)  # scale-free: only directions count


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("cell", ["gru", "bilstm"])
def test_each_reduction_is_padding_invariant(cell, reduction):
    cfg = dataclasses.replace(SMALL, reduction=reduction)
    assert_padding_invariant(make_head(cell, cfg).eval(), pad=float("nan"))


@pytest.mark.parametrize("name_", ["lstm", "bigru"])
def test_deep_residual_stack_is_padding_invariant(name_):
    cfg = dataclasses.replace(SMALL, num_layers=3, residual=True, dropout=0.3)
    assert_padding_invariant(make_head(name_, cfg).eval(), pad=float("nan"))


# --- reductions and pooling helpers ---------------------------------------------------------------


def test_weighted_sum_gives_step_t_weight_t_over_own_length():
    # h_t = e_t (one-hot in time) makes the output the weight vector itself.
    eye = torch.eye(6).expand(2, 6, 6)
    out = weighted_sum(eye, torch.tensor([6, 4]))
    torch.testing.assert_close(out[0], torch.arange(1, 7) / 6.0)
    torch.testing.assert_close(out[1], torch.tensor([1 / 4, 2 / 4, 3 / 4, 1.0, 0.0, 0.0]))
    assert torch.equal(linear_weights(torch.tensor([4]), 6)[0], out[1])


def test_masked_mean_and_max_ignore_padding():
    h = torch.tensor([[[1.0], [3.0], [100.0]], [[-2.0], [-5.0], [float("nan")]]])
    lengths = torch.tensor([2, 2])
    assert torch.equal(masked_mean(h, lengths), torch.tensor([[2.0], [-3.5]]))
    assert torch.equal(masked_max(h, lengths), torch.tensor([[3.0], [-2.0]]))


@pytest.mark.parametrize("cell", ["gru", "bilstm"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_recurrent_reduction_follows_its_definition(cell, reduction):
    model = make_head(cell, dataclasses.replace(SMALL, reduction=reduction)).eval()
    x, lengths = padded_batch([torch.randn(t, D) for t in (9, 4, 6)], total_len=10)
    with torch.no_grad():
        frames = model.input_norm(x)
        h = model.encode_frames(frames, lengths)  # (B, T, F)
        pooled = model.encode(frames, lengths)
    half = h.shape[2] // 2
    expected = {
        "mean": lambda: masked_mean(h, lengths),
        "weighted": lambda: weighted_sum(h, lengths),
        "attention": lambda: model.attention(h, lengths),
        "last": lambda: (
            last_valid(h, lengths)
            if cell == "gru"
            else torch.cat([last_valid(h[..., :half], lengths), h[:, 0, half:]], dim=1)
        ),
    }[reduction]()
    torch.testing.assert_close(pooled, expected)


def test_attention_weights_are_a_distribution_over_valid_steps():
    model = make_head("attention").eval()
    x, lengths = padded_batch([torch.randn(t, D) for t in (8, 3)], total_len=8)
    with torch.no_grad():
        alpha = model.attention_weights(x, lengths)
    assert alpha.shape == (2, 8)
    torch.testing.assert_close(alpha.sum(dim=1), torch.ones(2))
    assert torch.count_nonzero(alpha[1, 3:]) == 0 and (alpha[1, :3] > 0).all()


def test_unidirectional_per_frame_logits_equal_logits_of_the_prefix():
    model = make_head("gru", dataclasses.replace(SMALL, reduction="last")).eval()
    x = torch.randn(1, 6, D)
    with torch.no_grad():
        per_frame = model.forward_per_frame(x, torch.tensor([6]))[0]
        for t in range(1, 7):
            prefix = model(x[:, :t], torch.tensor([t]))[0]
            torch.testing.assert_close(per_frame[t - 1], prefix)


def test_residual_skip_carries_the_projected_input():
    model = make_head("gru", dataclasses.replace(SMALL, residual=True, input_norm="none")).eval()
    with torch.no_grad():
        for p in model.encoder.layers.parameters():
            p.zero_()  # a zeroed GRU outputs 0, leaving only the skip path
        x = torch.randn(2, 5, D)
        h = model.encode_frames(x, torch.tensor([5, 5]))
    torch.testing.assert_close(h, model.encoder.skips[0](x))


def test_moe_logits_are_the_logit_of_the_mixture_probability():
    moe = MixtureOfExperts(in_features=5, num_classes=3, num_experts=2)
    v = torch.randn(4, 5)
    gates = torch.softmax(moe.gates(v).view(4, 3, 3), dim=-1)
    experts = torch.sigmoid(moe.experts(v).view(4, 3, 2))
    p = (gates[..., :2] * experts).sum(-1)
    torch.testing.assert_close(torch.sigmoid(moe(v)), p)
    torch.testing.assert_close(moe(v), torch.log(p) - torch.log1p(-p), atol=1e-4, rtol=1e-4)
    assert torch.isfinite(moe(1e4 * v)).all()  # log-space mixing: no overflow to inf/NaN


# --- learning -------------------------------------------------------------------------------------


def fit(model: Head, x, lengths, y, max_steps: int, lr: float, stop_loss: float) -> float:
    """Full-batch Adam until the training loss drops below ``stop_loss``; returns the last loss."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(max_steps):
        loss = F.cross_entropy(model(x, lengths), y)
        if loss.item() < stop_loss:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


def test_every_head_overfits_a_handful_of_videos(name):
    torch.manual_seed(0)
    videos = [torch.randn(t, D) for t in (3, 9, 5, 12, 7, 4, 10, 6)]
    x, lengths = padded_batch(videos, total_len=12)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    model = make_head(name, dataclasses.replace(SMALL, dropout=0.0))
    loss = fit(model, x, lengths, y, max_steps=300, lr=1e-2, stop_loss=0.05)
    model.eval()
    with torch.no_grad():
        accuracy = (model(x, lengths).argmax(1) == y).float().mean()
    assert loss < 0.05
    assert accuracy == 1.0


def order_task(n: int, seed: int, dim: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class 0 shows pattern a then b, class 1 shows b then a; same frames, different order.

    Videos come in (video, time-reversed video) pairs labelled (0, 1), so an order-blind model,
    which must give both the same scores, is right on at most half of them.
    """
    gen = torch.Generator().manual_seed(seed)
    a, b = torch.randn(2, dim, generator=torch.Generator().manual_seed(1234))
    videos, labels = [], []
    for _ in range(n // 2):
        length = int(torch.randint(6, 17, (1,), generator=gen))
        split = int(torch.randint(2, length - 1, (1,), generator=gen))
        video = torch.cat([a.expand(split, dim), b.expand(length - split, dim)])
        video = video + 0.5 * torch.randn(length, dim, generator=gen)
        videos += [video, video.flip(0)]
        labels += [0, 1]
    x, lengths = padded_batch(videos, total_len=16)
    return x, lengths, torch.tensor(labels)


def test_only_order_aware_heads_learn_temporal_order(name):
    # Default config at the trainer's default lr (Adam 1e-3): the defaults must learn order.
    torch.manual_seed(0)
    x, lengths, y = order_task(64, seed=0)
    model = make_head(name, HeadConfig(), dim=16)
    fit(model, x, lengths, y, max_steps=150, lr=1e-3, stop_loss=0.02)
    x_test, len_test, y_test = order_task(64, seed=1)
    model.eval()
    with torch.no_grad():
        accuracy = float((model(x_test, len_test).argmax(1) == y_test).float().mean())
    if model.order_invariant:
        assert accuracy <= 0.5 + 1 / 32  # one pair may split on a float rounding tie
    else:
        assert accuracy >= 0.9


def test_order_invariant_heads_give_identical_outputs_for_reversed_videos(name):
    model = make_head(name, dataclasses.replace(SMALL, input_norm="none")).eval()
    # Quarter-integer features: every sum over frames is exact in float32, in any order.
    videos = [torch.randint(-8, 9, (t, D)).float() / 4 for t in (6, 11, 2)]
    x, lengths = padded_batch(videos, total_len=11)
    x_rev, _ = padded_batch([v.flip(0) for v in videos], total_len=11)
    with torch.no_grad():
        same = torch.equal(model(x, lengths), model(x_rev, lengths))
    assert same == model.order_invariant


# --- config -------------------------------------------------------------------------------------


def test_config_round_trips_through_json():
    cfg = HeadConfig(hidden_size=64, num_layers=3, residual=True, reduction="attention")
    restored = HeadConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert restored == cfg
    assert HeadConfig.from_dict({"dropout": 0}).dropout == 0.0  # JSON ints become floats
    assert HeadConfig.from_dict({}) == HeadConfig()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("num_layers", 0, "num_layers must be in 1..3"),
        ("num_layers", 4, "num_layers must be in 1..3"),
        ("num_layers", 2.0, "num_layers must be an integer"),
        ("hidden_size", True, "hidden_size must be an integer"),
        ("fc_size", 0, "fc_size must be >= 1"),
        ("reduction", "max", "reduction must be one of"),
        ("pooling", "sum", "pooling must be one of"),
        ("input_norm", "batch", "input_norm must be one of"),
        ("dropout", 1.0, r"dropout must be in \[0, 1\)"),
        ("dropout", -0.1, r"dropout must be in \[0, 1\)"),
        ("dropout", float("nan"), r"dropout must be in \[0, 1\)"),
        ("dropout", "0.2", "dropout must be a number"),
        ("residual", "yes", "residual must be true or false"),
    ],
)
def test_config_rejects_bad_values(field, value, message):
    with pytest.raises(ConfigError, match=message):
        HeadConfig(**{field: value})


def test_config_from_dict_refuses_unknown_keys():
    with pytest.raises(ConfigError, match="unknown head config keys: bogus"):
        HeadConfig.from_dict({"hidden_size": 8, "bogus": 1})


@pytest.mark.parametrize("name", ["logistic", "bof", "gru"])
def test_l2_input_norm_gives_frames_unit_length_as_youtube8m(name):
    # YouTube-8M's train.py feeds every model tf.nn.l2_normalize(input, feature_dim).
    model = make_head(name, dataclasses.replace(SMALL, input_norm="l2")).eval()
    x, lengths = padded_batch([torch.randn(t, D) for t in (5, 3)], total_len=6)
    with torch.no_grad():
        frames, _ = model.prepare(x, lengths)
        norms = frames.norm(dim=-1)
        torch.testing.assert_close(norms[0, :5], torch.ones(5))
        torch.testing.assert_close(norms[1, :3], torch.ones(3))
        assert not frames[1, 3:].any()  # padding stays zero, never NaN
        # Only each frame's direction reaches the head: scaling a frame changes nothing.
        torch.testing.assert_close(model(x * 7.0, lengths), model(x, lengths))


def test_l2_input_norm_has_tensorflows_floor_and_no_nan_in_half_precision():
    # tf.nn.l2_normalize(x) = x / sqrt(max(sum(x^2), 1e-12)): a tiny frame is not blown up.
    tiny = torch.full((1, 1, 4), 1e-8)
    expected = tiny / torch.sqrt(torch.clamp((tiny**2).sum(-1, keepdim=True), min=1e-12))
    torch.testing.assert_close(L2Norm()(tiny), expected)
    zero = torch.zeros(2, 3, 4, dtype=torch.float16)
    assert not L2Norm()(zero).isnan().any()
