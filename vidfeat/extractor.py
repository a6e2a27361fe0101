"""``FeatureExtractor``: RGB frames in, one backbone feature vector per frame out."""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch

from vidfeat.backbones import BackboneSpec, create_backbone
from vidfeat.backbones.base import backbone_provenance
from vidfeat.errors import ConfigError, VidfeatError
from vidfeat.preprocess import preprocess_frame

logger = logging.getLogger(__name__)


class FramesError(VidfeatError, ValueError):
    """Frames passed to the extractor have the wrong shape or dtype."""


class FeatureExtractor:
    """Loads a backbone once; ``embed`` maps (N, H, W, 3) uint8 RGB to (N, D) float32.

    ``device``: "cpu", "cuda[:N]" or "auto"; ``runtime`` and ``precision``: a registered
    runtime (``vidfeat.backbones.runtimes``) and a precision it runs on that device, or "auto"
    (as ``vidfeat extract``: the runtime's default there, docs/precision.md).
    ``weights``: a name the backbone knows (inception_v3: "yt8m", "imagenet"), a state-dict
    file, or None for the backbone's default (inception_v3: "yt8m").
    """

    def __init__(
        self,
        backbone: str = "inception_v3",
        weights: str | os.PathLike[str] | None = None,
        device: str = "cpu",
        precision: str = "auto",
        batch_size: int = 32,
        runtime: str = "eager",
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = batch_size
        self.backbone = create_backbone(
            backbone, weights=weights, device=device, precision=precision, runtime=runtime
        )

    @property
    def spec(self) -> BackboneSpec:
        return self.backbone.spec

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    @property
    def precision(self) -> str:
        return self.backbone.precision

    @property
    def runtime(self) -> str:
        return getattr(self.backbone, "runtime", "eager")

    def store_attrs(self) -> dict[str, Any]:
        """Everything that determines the features, JSON-friendly, for the store's attributes
        (the same shape ``vidfeat extract`` writes, less its sampling keys)."""
        return backbone_provenance(self.spec, self.runtime, self.precision)

    def preprocess(self, frames: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, S, S, 3) float32, the backbone's own resize + normalisation."""
        _check_frames(frames)
        size = self.spec.input_size
        batch = np.empty((len(frames), size, size, 3), np.float32)
        for frame, out in zip(frames, batch, strict=True):
            preprocess_frame(frame, self.spec, out=out)
        return batch

    def embed_preprocessed(self, batch: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) float32 from ``preprocess`` -> (N, D) float32, in ``batch_size`` chunks."""
        size = self.spec.input_size
        if batch.ndim != 4 or batch.shape[1:] != (size, size, 3) or batch.dtype != np.float32:
            raise FramesError(
                f"expected (N, {size}, {size}, 3) float32, got {batch.shape} {batch.dtype}"
            )
        features = np.empty((len(batch), self.spec.feature_dim), np.float32)
        for start in range(0, len(batch), self.batch_size):
            chunk = torch.from_numpy(np.ascontiguousarray(batch[start : start + self.batch_size]))
            embedded = self.backbone.embed_preprocessed(chunk)  # (n, D) on the device
            features[start : start + len(chunk)] = embedded.cpu().numpy()
        return features

    def embed(self, frames: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB frames -> (N, feature_dim) float32 features."""
        _check_frames(frames)
        features = np.empty((len(frames), self.spec.feature_dim), np.float32)
        # Preprocess one chunk at a time so a long clip never holds all 299x299 floats at once.
        for start in range(0, len(frames), self.batch_size):
            chunk = self.preprocess(frames[start : start + self.batch_size])
            features[start : start + len(chunk)] = self.embed_preprocessed(chunk)
        return features


def _check_frames(frames: np.ndarray) -> None:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
        kind = getattr(frames, "dtype", type(frames).__name__)
        raise FramesError(f"frames must be a uint8 numpy array, got {kind}")
    if frames.ndim != 4 or frames.shape[3] != 3 or min(frames.shape[1:3], default=0) < 1:
        raise FramesError(f"frames must have shape (N, H, W, 3), got {frames.shape}")
