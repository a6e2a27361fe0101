"""The extraction loop (vidfeat.extraction) driven with the events a decode pool emits."""

from __future__ import annotations

import numpy as np
import torch

from vidfeat.backbones._module import ModuleBackbone
from vidfeat.backbones.base import BackboneSpec
from vidfeat.config import ExtractConfig
from vidfeat.decode.pool import FramesChunk, VideoDone, VideoFailed
from vidfeat.extraction import Extraction
from vidfeat.manifest import ManifestEntry
from vidfeat.pca.apply import FeatureReduction
from vidfeat.pipeline import ExtractSummary
from vidfeat.store import create_store, open_store

SIZE, DIM = 8, 4


class _MeanColour(torch.nn.Module):
    """A stand-in network: each frame's mean per channel, and its overall mean (4 values)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        per_channel = x.mean(dim=(2, 3))
        return torch.cat([per_channel, per_channel.mean(dim=1, keepdim=True)], dim=1)


def test_the_loop_holds_only_the_videos_in_flight(tmp_path):
    # Every expected video used to get its record up front, and every pool event scanned them
    # all: quadratic in the manifest (4x slower at a million rows) and memory that grew with
    # it. Only videos with an event are held now, and a failure needs no record.
    spec = BackboneSpec("mean", DIM, SIZE, "tf1_bilinear", (0, 0, 0), (1, 1, 1), "t", "0" * 64)
    backbone = ModuleBackbone(spec, _MeanColour(), torch.device("cpu"), "fp32")
    cfg = ExtractConfig(manifest=tmp_path / "m.csv", out=tmp_path / "s.zarr", batch_size=2)
    summary = ExtractSummary()
    with create_store(cfg.out, dim=DIM) as writer:
        loop = Extraction(
            cfg, backbone, FeatureReduction.from_options(None, False), writer, summary
        )
        for i in range(500):
            loop.add(ManifestEntry(video_id=f"v{i:03d}", path=tmp_path / f"v{i}.mp4", labels=()))
        assert loop.videos == {}
        frames = np.stack([np.full((SIZE, SIZE, 3), v, np.float32) for v in (1.0, 3.0, 5.0)])
        loop.handle(FramesChunk("v007", np.array([0.0, 1.0]), frames[:2]))
        loop.handle(VideoFailed("v123", "timeout", "no result"))  # never started
        loop.handle(FramesChunk("v007", np.array([2.0]), frames[2:]))
        loop.handle(VideoDone("v007", {"n_frames": 3, "duration_s": 3.0}))
        assert set(loop.videos) == {"v007"}  # in flight: decoded, not all embedded
        loop.embed_batch()
        loop.drain()
        assert loop.finish_ready() == 2 and loop.videos == {} and len(loop.expected) == 498
    with open_store(cfg.out) as store:
        assert dict(zip(store.videos.video_id, store.videos.status, strict=True)) == {
            "v123": "timeout",
            "v007": "ok",
        }
        np.testing.assert_allclose(store.read("v007")[:, 0], [1.0, 3.0, 5.0])
        np.testing.assert_array_equal(store.timestamps("v007"), [0.0, 1.0, 2.0])


def test_without_a_batch_size_the_loop_batches_by_the_backbones_device(tmp_path):
    spec = BackboneSpec("mean", DIM, SIZE, "tf1_bilinear", (0, 0, 0), (1, 1, 1), "t", "0" * 64)
    backbone = ModuleBackbone(spec, _MeanColour(), torch.device("cpu"), "fp32")
    frames = np.zeros((40, SIZE, SIZE, 3), np.float32)
    taken = {}
    for batch_size in (None, 5):
        cfg = ExtractConfig(
            tmp_path / "m.csv", tmp_path / f"{batch_size}.zarr", batch_size=batch_size
        )
        with create_store(cfg.out, dim=DIM) as writer:
            loop = Extraction(
                cfg, backbone, FeatureReduction.from_options(None, False), writer, ExtractSummary()
            )
            loop.add(ManifestEntry(video_id="v", path=tmp_path / "v.mp4", labels=()))
            loop.handle(FramesChunk("v", np.arange(40.0), frames))
            parts, owners = loop._take_batch()
            taken[batch_size] = (loop.batch_size, sum(len(p) for p in parts), owners)
    # None: the CPU's default (CUDA's, 256, is checked on a GPU by test_cuda.py).
    assert taken == {None: (32, 32, [("v", 32)]), 5: (5, 5, [("v", 5)])}
