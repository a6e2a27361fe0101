"""How much of a feature a PCA (and PCA + uint8) round trip keeps: variance and cosine.

Features f stored by a PCA store are reconstructed as x̂ = mean + (f / scale) @ components and
compared with the original 2048-d x, on the frames the PCA was fitted on (truncation and
quantization alone) and on clips it never saw (grouped k-fold).
"""

from __future__ import annotations

import logging

import numpy as np

from vidfeat.pca import PCATransform, fit_pca
from vidfeat.pca.quantize import dequantize, quantize

log = logging.getLogger("benchmarks.pca")


class Subset:
    """The slice of a reader that ``fit_pca`` reads, restricted to some videos."""

    def __init__(self, reader, ids: list[str]) -> None:
        self.path, self.dim, self.read = reader.path, reader.dim, reader.read
        self.videos = reader.videos[reader.videos["video_id"].isin(ids)]


def _truncate(pca: PCATransform, k: int) -> PCATransform:
    return PCATransform(
        pca.mean, pca.components[:k], pca.eigenvalues[:k], pca.source, pca.eps, pca.total_variance
    )


def _reconstruct(pca: PCATransform, f: np.ndarray) -> np.ndarray:
    return pca.mean + (f.astype(np.float64) / pca.scale) @ pca.components


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def _round_trip_stats(x: np.ndarray, x_hat: np.ndarray, mean: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "sse": np.sum((x - x_hat) ** 2, 1),
        "sst": np.sum((x - mean) ** 2, 1),
        "cos": _cosine(x, x_hat),
        "cos_centered": _cosine(x - mean, x_hat - mean),
    }


class _Metrics:
    """Accumulates round-trip errors per case (float16, pca<K>, pca<K>_uint8) over clips."""

    def __init__(self) -> None:
        self.stats: dict[str, dict[str, list[np.ndarray]]] = {}

    def add(self, name: str, values: dict[str, np.ndarray]) -> None:
        for key, val in values.items():
            self.stats.setdefault(name, {}).setdefault(key, []).append(val)

    def add_clip(self, pca: PCATransform, x: np.ndarray, ks: list[int]) -> None:
        f = pca.apply(x)  # (T, K) whitened
        q = dequantize(quantize(f))  # what a reader of the uint8 store gets
        self.add("float16", _round_trip_stats(x, x.astype(np.float16).astype(np.float64), pca.mean))
        for k in ks:
            sub = _truncate(pca, k)
            self.add(f"pca{k}", _round_trip_stats(x, _reconstruct(sub, f[:, :k]), pca.mean))
            self.add(f"pca{k}_uint8", _round_trip_stats(x, _reconstruct(sub, q[:, :k]), pca.mean))
        self.add("whitened", {"cos_uint8": _cosine(f, q), "clipped": np.mean(np.abs(f) > 2, 1)})

    def summary(self) -> dict:
        out: dict = {}
        for name, values in self.stats.items():
            cat = {k: np.concatenate(v) for k, v in values.items()}
            if name == "whitened":
                out[name] = {
                    "cosine_after_uint8": float(cat["cos_uint8"].mean()),
                    "fraction_clipped": float(cat["clipped"].mean()),
                }
                continue
            out[name] = {
                "variance_kept": float(1 - cat["sse"].sum() / cat["sst"].sum()),
                "cosine_mean": float(cat["cos"].mean()),
                "cosine_min": float(cat["cos"].min()),
                "cosine_centered_mean": float(cat["cos_centered"].mean()),
            }
        return out


def _sweep(dims: tuple[int, ...], k_max: int) -> list[int]:
    return [d for d in dims if d < k_max] + [k_max]


def in_sample_metrics(reader, pca: PCATransform, dims: tuple[int, ...]) -> dict:
    """Fit and measure on the same frames: the loss of truncation and quantization alone."""
    ks = _sweep(dims, pca.output_dim)
    metrics = _Metrics()
    for vid in reader.ok_ids:
        metrics.add_clip(pca, reader.read(vid).astype(np.float64), ks)
    return {"k_max": pca.output_dim, "dims": ks, **metrics.summary()}


def held_out_metrics(reader, dims: tuple[int, ...], folds: int, seed: int = 0) -> dict:
    """Grouped k-fold: fit on the clips of the other folds, measure on this fold's clips."""
    ids = sorted(reader.ok_ids)
    order = np.random.default_rng(seed).permutation(len(ids))
    fold_of = {ids[j]: i % folds for i, j in enumerate(order)}
    total = n_frames(reader, ids)
    held_frames = [n_frames(reader, [v for v in ids if fold_of[v] == f]) for f in range(folds)]
    # n centred frames span at most n - 1 directions: a further component would be pure eps.
    k_max = min(max(dims), total - max(held_frames) - 1)
    ks = _sweep(dims, k_max)
    metrics = _Metrics()
    for f in range(folds):
        log.info("held-out fold %d of %d", f + 1, folds)
        pca = fit_pca(Subset(reader, [v for v in ids if fold_of[v] != f]), k_max)
        for vid in (v for v in ids if fold_of[v] == f):
            metrics.add_clip(pca, reader.read(vid).astype(np.float64), ks)
    return {"k_max": k_max, "dims": ks, "folds": folds, **metrics.summary()}


def n_frames(reader, ids: list[str]) -> int:
    v = reader.videos
    return int(v.loc[v["video_id"].isin(ids), "n_frames"].sum())
