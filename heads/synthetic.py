"""Synthetic feature stores for tests, benchmarks and sanity checks of temporal modelling.

The *event-order* task has four classes in two pairs: ``ab`` (event A, later event B) vs ``ba``
(B, later A), and ``cd`` vs ``dc``. Both classes of a pair contain exactly the same kinds of
frames in the same proportions; only their order differs. An order-blind head (bag of frames,
mean/max pooling) therefore cannot beat chance (0.5) within a pair, while a recurrent head can
solve the task.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from vidfeat.pca.quantize import quantization_attrs, quantize
from vidfeat.store import create_store

ORDER_CLASSES = {"ab": (0, 1), "ba": (1, 0), "cd": (2, 3), "dc": (3, 2)}  # label -> event order
Video = tuple[str, np.ndarray, tuple[str, ...]]  # (video_id, (T, D) float32, labels)


def order_patterns(dim: int, pattern_seed: int = 1234) -> np.ndarray:
    """(5, dim) patterns: events A-D, then the background. Random signs of amplitude 0.8, so
    every frame has about the same norm (a per-frame LayerNorm does not blow up the noise of
    background frames) and values stay inside uint8 quantization's [-2, 2]."""
    rng = np.random.default_rng(pattern_seed)
    return (0.8 * rng.choice([-1.0, 1.0], size=(5, dim))).astype(np.float32)


def order_videos(
    n_videos: int,
    *,
    dim: int = 32,
    min_len: int = 24,
    max_len: int = 64,
    noise: float = 0.5,
    seed: int = 0,
    pattern_seed: int = 1234,
) -> Iterator[Video]:
    """Videos of the event-order task, classes in turn (so every class has n_videos / 4)."""
    patterns = order_patterns(dim, pattern_seed)
    rng = np.random.default_rng(seed)
    labels = list(ORDER_CLASSES)
    for i in range(n_videos):
        label = labels[i % len(labels)]
        length = int(rng.integers(min_len, max_len + 1))
        x = np.repeat(patterns[4:], length, axis=0)  # (T, D) background frames
        half = length // 2
        for event, (lo, hi) in zip(ORDER_CLASSES[label], ((0, half), (half, length)), strict=True):
            # Each event fills a random window of 1/8..1/4 of the video inside its half.
            span = int(rng.integers(max(1, length // 8), max(2, length // 4) + 1))
            start = int(rng.integers(lo, max(lo + 1, hi - span + 1)))
            x[start : start + span] = patterns[event]
        x += rng.normal(0.0, noise, size=x.shape).astype(np.float32)
        yield f"{label}-{seed}-{i:05d}", x, (label,)


def write_store(
    path: str | Path,
    videos: Iterable[Video],
    *,
    dim: int,
    format: str | None = None,
    dtype: str = "float32",
    attrs: dict | None = None,
    splits: dict[str, str] | None = None,
) -> Path:
    """Write ``videos`` to a new store; uint8 stores get YouTube-8M quantization over [-2, 2]."""
    quant = quantization_attrs() if dtype == "uint8" else None
    with create_store(path, dim, format, attrs, dtype=dtype, quantization=quant) as writer:
        for video_id, x, labels in videos:
            feats = quantize(x) if quant else x
            extra = {"split": splits[video_id]} if splits and video_id in splits else {}
            writer.write(video_id, feats, labels=labels, **extra)
    return Path(path)


def write_order_store(
    path: str | Path,
    n_videos: int,
    *,
    dim: int = 32,
    seed: int = 0,
    format: str | None = None,
    dtype: str = "float32",
    **task: int | float,
) -> Path:
    """A store of the event-order task. Stores with another ``seed`` hold other videos of the
    same task (same patterns), e.g. a held-out evaluation store."""
    attrs = {
        "backbone": "synthetic-event-order",
        "weights": f"patterns-{task.get('pattern_seed', 1234)}",
        "pca": None,
        "fps": 1.0,
        "video_seed": seed,
    }
    videos = order_videos(n_videos, dim=dim, seed=seed, **task)
    return write_store(path, videos, dim=dim, format=format, dtype=dtype, attrs=attrs)


# ------------------------------------------------------------------------------ two streams

# The *sum* task: stream ``rgb`` carries a digit a and stream ``audio`` a digit b, each in
# 0..K-1 and equally often in every combination; the label is (a + b) mod K (K = 2: XOR).
# Given either stream alone, every label is equally likely (1/K is the chance level of hit@1);
# both together decide it.


def sum_videos(
    n_videos: int,
    *,
    dims: dict[str, int] | None = None,
    classes: int = 3,
    min_len: int = 3,
    max_len: int = 8,
    noise: float = 0.3,
    seed: int = 0,
    pattern_seed: int = 99,
) -> Iterator[tuple[str, dict[str, np.ndarray], tuple[str, ...]]]:
    """Videos of the sum task: (video_id, {stream: (T, D_stream) float32}, labels). Every
    (a, b) pair comes in turn, so each label has n_videos / K videos."""
    dims = dims or {"rgb": 8, "audio": 4}
    if len(dims) != 2:
        raise ValueError(f"the sum task has two streams, got {list(dims)}")
    k = classes
    pattern_rng = np.random.default_rng(pattern_seed)
    patterns = {s: 0.8 * pattern_rng.choice([-1.0, 1.0], size=(k, d)) for s, d in dims.items()}
    rng = np.random.default_rng(seed)
    for i in range(n_videos):
        digits = (i % k, (i // k) % k)
        length = int(rng.integers(min_len, max_len + 1))
        streams = {
            s: (patterns[s][digit] + rng.normal(0.0, noise, size=(length, dims[s]))).astype(
                np.float32
            )
            for s, digit in zip(dims, digits, strict=True)
        }
        yield f"sum-{seed}-{i:05d}", streams, (f"sum{sum(digits) % k}",)


def write_sum_store(
    path: str | Path,
    n_videos: int,
    *,
    dims: dict[str, int] | None = None,
    level: str = "frame",
    seed: int = 0,
    keep: tuple[str, ...] | None = None,
    format: str | None = None,
    dtype: str = "float32",
    **task: int | float,
) -> Path:
    """A store of the sum task, frame-level or video-level (each stream's mean over the frames).
    ``keep`` writes only those streams (e.g. a store that lacks one); uint8 frame-level stores
    get YouTube-8M quantization over [-2, 2], as released YouTube-8M features."""
    dims = dims or {"rgb": 8, "audio": 4}
    keep = tuple(keep or dims)
    attrs = {"backbone": "synthetic-sum", "weights": "patterns", "pca": None, "fps": 1.0}
    quant = quantization_attrs() if dtype == "uint8" else None
    spec = {"dtype": dtype, "quantization": quant}
    streams = {s: {"dim": dims[s], **spec} for s in keep}
    with create_store(path, format=format, attrs=attrs, level=level, streams=streams) as w:
        for video_id, frames, labels in sum_videos(n_videos, dims=dims, seed=seed, **task):
            values = {s: frames[s] for s in keep}
            if level == "video":
                values = {s: v.mean(axis=0) for s, v in values.items()}
            elif quant:
                values = {s: quantize(v) for s, v in values.items()}
            w.write(video_id, values, labels=labels)
    return Path(path)


# ------------------------------------------------------------------------------ both at once

# The *order-and-sound* task: stream ``rgb`` carries the event-order task above and stream
# ``audio`` a digit 0/1; the label is both (``ab0`` ... ``dc1``, 8 classes). Each video opens
# with ``intro`` frames that carry nothing about the label, in both streams. The chance level
# of hit@1 is 1/8; one stream alone gives at most 1/2 (rgb, order-aware) or 1/4 (audio), an
# order-blind head with both streams at most 1/2, an order-aware head with both streams 1.


def order_sound_videos(
    n_videos: int,
    *,
    dims: dict[str, int] | None = None,
    min_len: int = 12,
    max_len: int = 18,
    intro: int = 4,
    noise: float = 0.5,
    seed: int = 0,
    pattern_seed: int = 1234,
) -> Iterator[tuple[str, dict[str, np.ndarray], tuple[str, ...]]]:
    """(video_id, {"rgb": (T, D) float32, "audio": (T, D') float32}, labels), the 8 classes
    in turn (n_videos / 8 each)."""
    dims = dims or {"rgb": 32, "audio": 8}
    rgb_dim, audio_dim = dims["rgb"], dims["audio"]
    sounds = 0.8 * np.random.default_rng(pattern_seed + 1).choice([-1.0, 1.0], size=(2, audio_dim))
    rng = np.random.default_rng(seed + 10_000)
    rgb_videos = order_videos(
        n_videos, dim=rgb_dim, min_len=min_len, max_len=max_len, noise=noise, seed=seed,
        pattern_seed=pattern_seed,
    )  # fmt: skip
    for i, (_, rgb, (order,)) in enumerate(rgb_videos):
        digit = (i // len(ORDER_CLASSES)) % 2
        audio = sounds[digit] + rng.normal(0.0, noise, size=(len(rgb), audio_dim))
        streams = {"rgb": rgb, "audio": audio}
        for name, x in streams.items():  # an intro: a title card of this video alone
            card = 0.8 * rng.choice([-1.0, 1.0], size=(1, x.shape[1]))
            opening = card + rng.normal(0.0, noise, size=(intro, x.shape[1]))
            streams[name] = np.concatenate([opening, x]).astype(np.float32)
        yield f"{order}{digit}-{seed}-{i:05d}", streams, (f"{order}{digit}",)


def write_order_sound_store(
    path: str | Path, n_videos: int, *, seed: int = 0, format: str | None = None, **task: int
) -> Path:
    """A float32 two-stream store of the order-and-sound task."""
    dims = {"rgb": 32, "audio": 8}
    attrs = {"backbone": "synthetic-order-sound", "weights": "patterns", "pca": None, "fps": 1.0}
    streams = {s: {"dim": d, "dtype": "float32"} for s, d in dims.items()}
    with create_store(path, format=format, attrs=attrs, streams=streams) as writer:
        for video_id, frames, labels in order_sound_videos(n_videos, dims=dims, seed=seed, **task):
            writer.write(video_id, frames, labels=labels)
    return Path(path)
