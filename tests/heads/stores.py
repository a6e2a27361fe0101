"""Small synthetic feature stores for the stage-2 tests (no CNN involved)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from heads.synthetic import write_store

LABELS = ("cat", "dog", "owl")


def frame_videos(n_videos: int = 23, dim: int = 8, seed: int = 0, multilabel: bool = False):
    """Videos whose features say where they come from: column 0 is the frame number, column 1
    the video number; the rest is noise. Lengths vary from 3 to 60 frames."""
    rng = np.random.default_rng(seed)
    videos = []
    for v in range(n_videos):
        length = int(rng.integers(3, 61))
        x = rng.normal(size=(length, dim)).astype(np.float32)
        x[:, 0] = np.arange(length)
        x[:, 1] = v
        labels = (LABELS[v % 3],)
        if multilabel and v % 4 == 0:
            labels = (LABELS[v % 3], LABELS[(v + 1) % 3])
        videos.append((f"vid{v:03d}", x, labels))
    return videos


def make_frame_store(path: Path, fmt: str = "zarr", **kw) -> Path:
    return write_store(path, frame_videos(**kw), dim=kw.get("dim", 8), format=fmt)


def cluster_videos(
    n_videos: int, dim: int = 16, n_classes: int = 3, seed: int = 0, signal: float = 1.0
):
    """A learnable task: class c adds ``signal`` to feature c of every frame."""
    rng = np.random.default_rng(seed)
    videos = []
    for v in range(n_videos):
        c = v % n_classes
        x = rng.normal(scale=0.5, size=(int(rng.integers(4, 20)), dim)).astype(np.float32)
        x[:, c] += signal
        videos.append((f"c{seed}-{v:04d}", np.clip(x, -2, 2), (f"class{c}",)))
    return videos


def make_cluster_store(
    path: Path,
    n_videos: int = 60,
    fmt: str | None = None,
    dtype: str = "float32",
    attrs: dict | None = None,
    **kw,
) -> Path:
    attrs = {"backbone": "synthetic", "weights": "w1", "pca": None} if attrs is None else attrs
    dim = kw.get("dim", 16)
    return write_store(
        path, cluster_videos(n_videos, **kw), dim=dim, format=fmt, dtype=dtype, attrs=attrs
    )
