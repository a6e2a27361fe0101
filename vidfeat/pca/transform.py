"""The whitened PCA transform: parameters, apply, save and load.

YouTube-8M reduces 2048-d InceptionV3 features to 1024-d with a whitened PCA,
``f = ((x - mean) @ E[:K].T) / sqrt(eigenvalues[:K] + 1e-4)``, then quantizes each value
to one byte (see ``vidfeat.pca.quantize``). ``load_pca`` reads either our ``.npz`` or the
directory of ``mean.npy`` / ``eigenvals.npy`` / ``eigenvecs.npy`` from YouTube-8M's
``yt8m_pca.tgz``, so features can be made comparable with the released dataset.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vidfeat import atomic
from vidfeat.errors import ConfigError

logger = logging.getLogger(__name__)

WHITEN_EPS = 1e-4  # YouTube-8M's: keeps near-zero eigenvalues from blowing up the whitening
YT8M_DIM = 1024
YT8M_FILES = ("mean.npy", "eigenvals.npy", "eigenvecs.npy")
NPZ_FORMAT = "vidfeat-pca/1"
SOURCES = ("fitted", "yt8m")


def _frozen(a: np.ndarray, dtype: type) -> np.ndarray:
    out = np.ascontiguousarray(a, dtype=dtype)
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False)
class PCATransform:
    """A whitened PCA from ``input_dim`` to ``output_dim`` features.

    ``components`` rows are orthonormal directions, sorted by decreasing ``eigenvalues``
    (variances along them); ``scale = 1 / sqrt(eigenvalues + eps)`` whitens.
    """

    mean: np.ndarray  # (D,) float32
    components: np.ndarray  # (K, D) float32
    eigenvalues: np.ndarray  # (K,) float64
    source: str  # "fitted" | "yt8m"
    eps: float = WHITEN_EPS
    total_variance: float = float("nan")  # trace of the covariance, over all D directions
    fit_info: Mapping[str, Any] = field(default_factory=dict)  # sample size, seed, ...
    scale: np.ndarray = field(init=False, repr=False)  # (K,) float32

    def __post_init__(self) -> None:
        mean = _frozen(self.mean, np.float32)
        comps = _frozen(self.components, np.float32)
        eig = _frozen(self.eigenvalues, np.float64)
        if mean.ndim != 1 or comps.ndim != 2 or comps.shape[1] != mean.shape[0]:
            raise ConfigError(
                f"PCA shapes disagree: mean {mean.shape}, components {comps.shape}; "
                "want (D,) and (K, D)"
            )
        if eig.shape != (comps.shape[0],):
            raise ConfigError(
                f"PCA eigenvalues {eig.shape} do not match {comps.shape[0]} components"
            )
        if comps.shape[0] < 1:
            raise ConfigError("PCA has no components")
        if self.source not in SOURCES:
            raise ConfigError(f"PCA source must be one of {SOURCES}, got {self.source!r}")
        if not self.eps > 0:
            raise ConfigError(f"PCA eps must be > 0, got {self.eps}")
        for name, arr in (("mean", mean), ("components", comps), ("eigenvalues", eig)):
            if not np.all(np.isfinite(arr)):
                raise ConfigError(f"PCA {name} contains NaN or inf")
        if np.any(eig + self.eps <= 0):
            raise ConfigError(f"PCA eigenvalues must be > -eps ({self.eps}); got min {eig.min()}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "components", comps)
        object.__setattr__(self, "eigenvalues", eig)
        object.__setattr__(self, "fit_info", dict(self.fit_info))
        object.__setattr__(self, "scale", _frozen(1.0 / np.sqrt(eig + self.eps), np.float32))

    @property
    def input_dim(self) -> int:
        return int(self.mean.shape[0])

    @property
    def output_dim(self) -> int:
        return int(self.components.shape[0])

    @property
    def variance_kept(self) -> float:
        """Fraction of the fitting data's variance inside the kept subspace (NaN if unknown)."""
        if not self.total_variance > 0:
            return float("nan")
        return float(self.eigenvalues.sum() / self.total_variance)

    @property
    def sha256(self) -> str:
        """Digest of what the transform computes (mean, components, scale), for provenance."""
        h = hashlib.sha256()
        for arr in (self.mean, self.components, self.scale):
            h.update(str(arr.shape).encode())
            h.update(arr.astype("<f4", copy=False).tobytes())
        return h.hexdigest()

    def apply(self, x: np.ndarray) -> np.ndarray:
        """(N, D) features -> (N, K) float32 whitened projections."""
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ConfigError(f"PCA expects (N, {self.input_dim}) features, got shape {x.shape}")
        centered = x.astype(np.float32, copy=False) - self.mean
        return np.asarray((centered @ self.components.T) * self.scale, dtype=np.float32)

    def provenance(self) -> dict[str, Any]:
        """JSON-ready description recorded in the attrs of every store it produces."""
        return {
            "source": self.source,
            "input_dim": self.input_dim,
            "output_dim": self.output_dim,
            "whiten_eps": float(self.eps),
            "variance_kept": _json_float(self.variance_kept),
            "sha256": self.sha256,
            "fit": dict(self.fit_info),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write an ``.npz`` atomically and durably (a store records its sha256)."""
        path = Path(path)
        meta = {
            "format": NPZ_FORMAT,
            "source": self.source,
            "eps": float(self.eps),
            "total_variance": _json_float(self.total_variance),
            "fit_info": dict(self.fit_info),
            "sha256": self.sha256,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic.atomic_open(path, "wb") as f:
            np.savez(
                f,
                mean=self.mean,
                components=self.components,
                eigenvalues=self.eigenvalues,
                meta=np.array(json.dumps(meta)),
            )
        return path


def _json_float(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


# --------------------------------------------------------------------------- loading


def load_pca(path: str | os.PathLike, dim: int | None = None) -> PCATransform:
    """Load our ``.npz`` or a YouTube-8M PCA directory; ``dim`` keeps the leading components."""
    path = Path(path)
    if path.is_dir():
        pca = _load_yt8m_dir(path, YT8M_DIM if dim is None else dim)
    elif path.is_file():
        pca = _load_npz(path)
    else:
        raise ConfigError(f"PCA file or directory not found: {path}")
    if dim is None or dim == pca.output_dim:
        return pca
    if not 1 <= dim <= pca.output_dim:
        raise ConfigError(f"cannot keep {dim} components of a {pca.output_dim}-component PCA")
    return _truncate(pca, dim)


def _truncate(pca: PCATransform, dim: int) -> PCATransform:
    return PCATransform(
        mean=pca.mean,
        components=pca.components[:dim],
        eigenvalues=pca.eigenvalues[:dim],
        source=pca.source,
        eps=pca.eps,
        total_variance=pca.total_variance,
        fit_info=pca.fit_info,
    )


def _npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise ConfigError(f"PCA directory is missing {path.name}: {path}")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc


def _column(a: np.ndarray, name: str) -> np.ndarray:
    # YouTube-8M ships mean and eigenvals as (D, 1) columns; accept flat (D,) too.
    if a.ndim == 2 and a.shape[1] == 1:
        return a[:, 0]
    if a.ndim == 1:
        return a
    raise ConfigError(f"{name} must have shape (D, 1) or (D,), got {a.shape}")


def _load_yt8m_dir(path: Path, dim: int) -> PCATransform:
    mean = _column(_npy(path / "mean.npy"), "mean.npy")
    eigenvals = _column(_npy(path / "eigenvals.npy"), "eigenvals.npy")
    eigenvecs = _npy(path / "eigenvecs.npy")
    d = mean.shape[0]
    # Rows of eigenvecs.npy are the eigenvectors: YouTube-8M multiplies by eigenvecs.T[:, :K].
    if eigenvecs.shape != (d, d):
        raise ConfigError(
            f"eigenvecs.npy must be ({d}, {d}) to match mean.npy, got {eigenvecs.shape}"
        )
    if eigenvals.shape != (d,):
        raise ConfigError(
            f"eigenvals.npy must have {d} values to match mean.npy, got {eigenvals.shape}"
        )
    if not 1 <= dim <= d:
        raise ConfigError(f"cannot keep {dim} components of a {d}-d YouTube-8M PCA")
    comps = eigenvecs[:dim].astype(np.float32)
    gram = comps.astype(np.float64) @ comps.T.astype(np.float64)
    if not np.allclose(gram, np.eye(dim), atol=1e-2):
        logger.warning("rows of %s are not orthonormal; is it really YouTube-8M's file?", path)
    total = float(np.sum(eigenvals, dtype=np.float64))
    return PCATransform(
        mean=mean,
        components=comps,
        eigenvalues=eigenvals[:dim],
        source="yt8m",
        eps=WHITEN_EPS,
        total_variance=total,
        fit_info={"files": list(YT8M_FILES)},
    )


def _load_npz(path: Path) -> PCATransform:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("mean", "components", "eigenvalues", "meta")}
    except KeyError as exc:
        raise ConfigError(f"{path} is not a vidfeat PCA file: missing {exc}") from exc
    except (ValueError, OSError, EOFError) as exc:
        raise ConfigError(f"cannot read PCA file {path}: {exc}") from exc
    try:
        meta = json.loads(str(arrays["meta"]))
    except ValueError as exc:
        raise ConfigError(f"{path} has unreadable metadata: {exc}") from exc
    if meta.get("format") != NPZ_FORMAT:
        raise ConfigError(f"{path} has format {meta.get('format')!r}, expected {NPZ_FORMAT!r}")
    total = meta.get("total_variance")
    pca = PCATransform(
        mean=arrays["mean"],
        components=arrays["components"],
        eigenvalues=arrays["eigenvalues"],
        source=meta.get("source", ""),
        eps=float(meta.get("eps", WHITEN_EPS)),
        total_variance=float("nan") if total is None else float(total),
        fit_info=meta.get("fit_info", {}),
    )
    if pca.sha256 != meta.get("sha256"):
        raise ConfigError(f"{path} is corrupt: its parameters do not match the recorded sha256")
    return pca
