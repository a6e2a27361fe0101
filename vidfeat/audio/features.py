"""From log-mel examples to the stored audio stream: VGGish, then PCA and 8-bit codes.

``AudioFeatures`` is what an extraction job applies to each video's examples, and
``stream_spec`` describes the result for the store (dim, dtype, quantization and the
provenance attrs that fix the values). torch is reached only through the backbone.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np

from vidfeat.audio.postprocess import (
    NO_AUDIO_PCA_VALUE,
    VGGishPCA,
    quantization_attrs,
    quantize_audio,
)
from vidfeat.audio.resample import describe
from vidfeat.errors import ConfigError

if TYPE_CHECKING:
    from vidfeat.backbones.audio import AudioBackbone

ALIGNMENT = "the 96 STFT frames starting at each video frame's pts; silence outside the track"
RESAMPLER = f"{describe()}, to 16 kHz"


@dataclasses.dataclass
class AudioFeatures:
    """VGGish embeddings of each example, PCA-whitened with ``pca``, as uint8 if ``quantize``."""

    backbone: AudioBackbone
    pca: VGGishPCA | None = None
    quantize: bool = False
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.quantize and self.pca is None:
            raise ConfigError("quantized audio needs --audio-pca (VGGish's PCA parameters)")

    @property
    def dim(self) -> int:
        return self.backbone.spec.feature_dim

    @property
    def dtype(self) -> str:
        return "uint8" if self.quantize else "float32"

    def __call__(self, examples: np.ndarray, has_audio: bool) -> np.ndarray:
        """(T, 96, 64) float32 examples -> (T, 128) stored values (float32 or uint8).

        Without an audio track every frame gets the no-audio value (see
        ``vidfeat.audio.postprocess``) and the network is not run.
        """
        if has_audio:
            features = self._embed(examples)
            if self.pca is not None:
                features = self.pca.apply(features, np.float64 if self.quantize else np.float32)
        else:
            fill = NO_AUDIO_PCA_VALUE if self.pca is not None else 0.0
            features = np.full((len(examples), self.dim), fill, np.float32)
        return quantize_audio(features) if self.quantize else features.astype(np.float32)

    def _embed(self, examples: np.ndarray) -> np.ndarray:
        import torch

        out = np.empty((len(examples), self.dim), np.float32)
        for start in range(0, len(examples), self.batch_size):
            batch = torch.from_numpy(
                np.ascontiguousarray(examples[start : start + self.batch_size])
            )
            out[start : start + len(batch)] = self.backbone.embed_examples(batch).cpu().numpy()
        return out

    def stream_spec(self) -> dict[str, Any]:
        """The store's description of the ``audio`` stream: dim, dtype, quantization, attrs."""
        spec = self.backbone.spec
        attrs: dict[str, Any] = {
            "backbone": spec.to_attrs(),  # name, weights id + sha256, front end (window, hop, mel)
            "pca": self.pca.to_attrs() if self.pca is not None else None,
            "alignment": ALIGNMENT,
            "resampler": RESAMPLER,
            "no_audio_value": NO_AUDIO_PCA_VALUE if self.pca is not None else 0.0,
        }
        return {
            "dim": self.dim,
            "dtype": self.dtype,
            "quantization": quantization_attrs() if self.quantize else None,
            "attrs": attrs,
        }
