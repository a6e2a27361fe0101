"""VGGish's postprocessor: PCA with whitening, then 8-bit quantization, as YouTube-8M's audio.

With ``vggish_pca_params.npz`` (``pca_eigen_vectors`` (128, 128), ``pca_means`` (128,)):
``pca = eigen_vectors @ (embedding - means)``. Quantization clips to [-2, 2] and keeps
``floor((x + 2) * 255 / 4)`` (the reference casts the scaled float to uint8, which truncates);
YouTube-8M's reader formula (``vidfeat.pca.quantize.dequantize``, with its half-bin bias) then
reads the bin's centre.

"No audio": YouTube-8M's released records carry audio for every video and no documented
stand-in for a missing track, so we store the PCA-space origin, 0.0 in every dimension (the
mean embedding of VGGish's PCA training set, i.e. "average audio", not silence), which
quantizes to code 127 and reads back as ~0.0; without PCA, raw embeddings get zeros. A flag
per video records it, so readers can tell it from real sound.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vidfeat.errors import WeightsError
from vidfeat.pca.quantize import quantize

EMBEDDING_DIM = 128
QUANTIZE_MIN = -2.0
QUANTIZE_MAX = 2.0
QUANTIZE_ROUNDING = "floor"
NO_AUDIO_PCA_VALUE = 0.0  # stored for every dimension of every frame of a video without audio
PCA_FILE = "vggish_pca_params.npz"
PCA_SOURCE = "https://storage.googleapis.com/audioset/vggish_pca_params.npz"


@dataclass(frozen=True)
class VGGishPCA:
    """PCA (with whitening) of VGGish embeddings; ``sha256`` of the file it came from."""

    eigen_vectors: np.ndarray  # (128, 128) float64, rows are output dimensions
    means: np.ndarray  # (128,) float64
    sha256: str

    def apply(self, embeddings: np.ndarray, dtype: type = np.float32) -> np.ndarray:
        """(N, 128) raw embeddings -> (N, 128) PCA-whitened features, computed in float64 and
        returned as ``dtype`` (float64 for quantization: the reference truncates the float64
        product, and a float32 rounding first moved about one code in two million)."""
        x = np.asarray(embeddings, np.float64)
        if x.ndim != 2 or x.shape[1] != EMBEDDING_DIM:
            raise ValueError(f"expected (N, {EMBEDDING_DIM}) embeddings, got {x.shape}")
        return ((x - self.means) @ self.eigen_vectors.T).astype(dtype, copy=False)

    def to_attrs(self) -> dict[str, object]:
        return {"file": PCA_FILE, "sha256": self.sha256}


def quantize_audio(pca_features: np.ndarray) -> np.ndarray:
    """(N, 128) PCA features -> uint8 codes by VGGish's postprocessor's formula (give it the
    float64 product, as the reference truncates)."""
    return quantize(pca_features, QUANTIZE_MIN, QUANTIZE_MAX, rounding=QUANTIZE_ROUNDING)


def quantization_attrs() -> dict[str, object]:
    return {
        "scheme": "vggish_uint8",
        "min": QUANTIZE_MIN,
        "max": QUANTIZE_MAX,
        "rounding": QUANTIZE_ROUNDING,
    }


def load_vggish_pca(path: str | Path | None) -> VGGishPCA:
    """Read ``vggish_pca_params.npz``; a missing or malformed file -> ``WeightsError``."""
    if path is None or not Path(path).is_file():
        raise WeightsError(
            f"VGGish PCA parameters not found{f' at {path}' if path else ''}: pass "
            f"--audio-pca PATH to {PCA_FILE} (from {PCA_SOURCE}, or the AudioSet VGGish "
            "release in tensorflow/models research/audioset/vggish)"
        )
    data = Path(path).read_bytes()  # ~130 KB: hashing it whole is cheap
    try:
        with np.load(Path(path), allow_pickle=False) as npz:
            vectors = np.asarray(npz["pca_eigen_vectors"], np.float64)
            means = np.asarray(npz["pca_means"], np.float64).reshape(-1)
    except (OSError, ValueError, KeyError) as exc:
        raise WeightsError(f"{path} is not a VGGish PCA file ({exc})") from exc
    if vectors.shape != (EMBEDDING_DIM, EMBEDDING_DIM) or means.shape != (EMBEDDING_DIM,):
        raise WeightsError(
            f"{path}: expected pca_eigen_vectors (128, 128) and pca_means (128,), "
            f"got {vectors.shape} and {means.shape}"
        )
    return VGGishPCA(vectors, means, hashlib.sha256(data).hexdigest())
