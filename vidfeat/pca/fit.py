"""Fit a whitened PCA on a reproducible sample of a store's frames, in bounded memory.

Frames are drawn uniformly without replacement from all (video, frame) positions of the
store's successful videos, then read video by video. The mean and covariance accumulate in
float64 with Chan's pairwise update, so memory is one (D, D) matrix (32 MB at D=2048) plus
one batch of frames, whatever the store or sample size.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from vidfeat.errors import ConfigError, StoreError
from vidfeat.pca.transform import WHITEN_EPS, PCATransform

if TYPE_CHECKING:
    from vidfeat.store import StoreReader

logger = logging.getLogger(__name__)

DEFAULT_SAMPLE_FRAMES = 100_000
DEFAULT_BATCH_FRAMES = 4096

Progress = Callable[[int, int], None]  # (videos done, videos total)


class StreamingMoments:
    """Running mean and scatter matrix of (N, D) batches (Chan et al.'s pairwise update)."""

    def __init__(self, dim: int) -> None:
        self.n = 0
        self.mean = np.zeros(dim, dtype=np.float64)
        self.scatter = np.zeros((dim, dim), dtype=np.float64)  # sum of centered outer products

    def update(self, batch: np.ndarray) -> None:
        x = np.asarray(batch, dtype=np.float64)
        n_b = x.shape[0]
        if n_b == 0:
            return
        mean_b = x.mean(axis=0)
        centered = x - mean_b
        n = self.n + n_b
        delta = mean_b - self.mean
        # Merging centered sums avoids the cancellation of sum(x x^T) - n mean mean^T.
        self.scatter += centered.T @ centered + np.outer(delta, delta) * (self.n * n_b / n)
        self.mean += delta * (n_b / n)
        self.n = n

    def covariance(self) -> np.ndarray:
        """Unbiased (n - 1) covariance, like scikit-learn's PCA."""
        if self.n < 2:
            raise ConfigError(f"need at least 2 frames to estimate a covariance, got {self.n}")
        return self.scatter / (self.n - 1)


def sample_positions(n_frames: np.ndarray, sample_frames: int, seed: int) -> list[np.ndarray]:
    """For each video, the sorted frame indices in a uniform sample of all frames."""
    n_frames = np.asarray(n_frames, dtype=np.int64)
    total = int(n_frames.sum())
    if sample_frames >= total:
        return [np.arange(n, dtype=np.int64) for n in n_frames]
    flat = np.sort(np.random.default_rng(seed).choice(total, size=sample_frames, replace=False))
    starts = np.concatenate([[0], np.cumsum(n_frames)])
    bounds = np.searchsorted(flat, starts)  # flat[bounds[i]:bounds[i+1]] fall in video i
    return [flat[bounds[i] : bounds[i + 1]] - starts[i] for i in range(len(n_frames))]


def _top_components(cov: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    eigvals, eigvecs = np.linalg.eigh(cov)  # ascending
    order = np.argsort(eigvals)[::-1][:dim]
    vals = np.clip(eigvals[order], 0.0, None)  # round-off can make null directions slightly < 0
    comps = eigvecs[:, order].T  # (K, D)
    # eigh's signs are arbitrary; make each component's largest-magnitude entry positive
    # so that refitting the same frames gives the same features.
    pivots = comps[np.arange(dim), np.argmax(np.abs(comps), axis=1)]
    comps = comps * np.where(pivots < 0, -1.0, 1.0)[:, None]
    return comps, vals


def fit_pca(
    reader: StoreReader,
    dim: int,
    sample_frames: int = DEFAULT_SAMPLE_FRAMES,
    seed: int = 0,
    batch_frames: int = DEFAULT_BATCH_FRAMES,
    eps: float = WHITEN_EPS,
    progress: Progress | None = None,
    stream: str | None = None,
) -> PCATransform:
    """Whitened PCA with ``dim`` components from a seeded sample of the store's frames, of
    ``stream`` (default: the store's only stream)."""
    if dim < 1 or sample_frames < 1 or batch_frames < 1:
        raise ConfigError(
            f"dim, sample_frames and batch_frames must be >= 1 "
            f"(got {dim}, {sample_frames}, {batch_frames})"
        )
    stream = reader.stream_name(stream)
    if reader.level != "frame":
        # Said here: sampling "frames" of it found none, and the count was all it said.
        raise ConfigError(f"store {reader.path} is video-level: it has no frames to fit a PCA on")
    in_dim = reader.streams[stream].dim
    table = reader.videos
    ok = table[table["status"] == "ok"]
    if ok.empty:
        raise StoreError(f"store {reader.path} has no successful videos to fit a PCA on")
    # Sort by id so the sample depends on the seed, not on the order shards committed in.
    ok = ok.sort_values("video_id", kind="stable")
    ids = ok["video_id"].tolist()
    positions = sample_positions(ok["n_frames"].to_numpy(), sample_frames, seed)
    n_sampled = int(sum(len(p) for p in positions))
    if dim > min(n_sampled, in_dim):
        raise ConfigError(
            f"cannot fit {dim} components from {n_sampled} sampled frames of "
            f"{in_dim}-d features: at most min(frames, dim) = {min(n_sampled, in_dim)}"
        )
    moments = _accumulate(reader, stream, ids, positions, batch_frames, progress)
    cov = moments.covariance()
    total_var = float(np.trace(cov))
    if not total_var > 0:
        raise ConfigError(
            f"the {n_sampled} sampled frames are all identical (zero variance): "
            "no principal directions to fit; is the backbone output constant?"
        )
    comps, vals = _top_components(cov, dim)
    kept = float(vals.sum() / total_var)
    n_videos = int(sum(1 for p in positions if len(p)))
    _warn_if_weak(vals, eps, n_videos)
    logger.info(
        "PCA %d -> %d on %d frames keeps %.4f of the variance", in_dim, dim, n_sampled, kept
    )
    return PCATransform(
        mean=moments.mean,
        components=comps,
        eigenvalues=vals,
        source="fitted",
        eps=eps,
        total_variance=total_var,
        fit_info={
            "sample_frames": int(sample_frames),
            "seed": int(seed),
            "n_frames": n_sampled,
            "n_videos": n_videos,
            "store_frames": int(ok["n_frames"].sum()),
        },
    )


def _warn_if_weak(eigenvalues: np.ndarray, eps: float, n_videos: int) -> None:
    """Warn when components are noise that whitening would blow up: variance at or below
    ``eps``, or more components than the sample holds independent videos."""
    dim = len(eigenvalues)
    n_tiny = int(np.sum(eigenvalues <= eps))
    if n_tiny:
        logger.warning(
            "%d of %d components have variance <= eps=%g: the frames span fewer directions; "
            "whitening will scale their noise by up to 1/sqrt(eps)",
            n_tiny,
            dim,
            eps,
        )
    if n_videos < dim:
        # Frames of one video are nearly alike, so the sample holds about one independent
        # observation per video: the components past that describe within-clip jitter, and
        # whitening scales them to the same unit variance as the informative ones.
        logger.warning(
            "fitting %d components on frames of only %d videos: components beyond about the "
            "first %d will not generalise to new videos, and whitening gives them as much "
            "weight as the rest; fit on more videos or keep fewer components",
            dim,
            n_videos,
            n_videos,
        )


def _accumulate(
    reader: StoreReader,
    stream: str,
    ids: list[str],
    positions: list[np.ndarray],
    batch_frames: int,
    progress: Progress | None,
) -> StreamingMoments:
    moments = StreamingMoments(reader.streams[stream].dim)
    todo = [(vid, pos) for vid, pos in zip(ids, positions, strict=True) if len(pos)]
    pending: list[np.ndarray] = []
    n_pending = 0
    for done, (vid, pos) in enumerate(todo, start=1):
        frames = reader.read(vid, stream=stream)[pos]  # (n, D) float32, dequantized if uint8
        if not np.all(np.isfinite(frames)):
            raise StoreError(f"video {vid!r} has NaN or inf features; cannot fit a PCA")
        pending.append(frames)
        n_pending += len(frames)
        if n_pending >= batch_frames:
            moments.update(np.concatenate(pending))
            pending, n_pending = [], 0
        if progress is not None:
            progress(done, len(todo))
    if pending:
        moments.update(np.concatenate(pending))
    return moments
