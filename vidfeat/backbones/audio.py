"""The audio backbone contract: a spec (data) plus ``embed_examples``; a registry and a factory.

An audio backbone reads log-mel examples, not pictures, so its spec carries the front end
that makes them (``LogMelParams``) instead of image size, resize rule and pixel statistics.
Torch-free like ``vidfeat.backbones.base``; built-in backbones load on first use.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from vidfeat.audio.mel import LogMelParams
from vidfeat.backbones.base import _load_builtins
from vidfeat.errors import ConfigError
from vidfeat.registry import Registry

if TYPE_CHECKING:
    import torch

_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class AudioBackboneSpec:
    """Everything that fixes an audio backbone's features, front end included."""

    name: str
    feature_dim: int
    front_end: LogMelParams
    weights_id: str
    weights_sha256: str  # of the weight file as read from disk

    def __post_init__(self) -> None:
        problems = []
        if self.feature_dim < 1:
            problems.append("feature_dim must be >= 1")
        if not isinstance(self.front_end, LogMelParams):
            problems.append("front_end must be a LogMelParams")
        if not _SHA256.fullmatch(self.weights_sha256):
            problems.append("weights_sha256 must be 64 lowercase hex digits")
        if problems:
            raise ConfigError(f"invalid audio backbone spec {self.name!r}: " + "; ".join(problems))

    @property
    def example_shape(self) -> tuple[int, int]:
        """(frames, mel bands) of one input example."""
        return (self.front_end.example_frames, self.front_end.mel_bands)

    def to_attrs(self) -> dict[str, Any]:
        """JSON-friendly dict for store attributes."""
        return {
            "name": self.name,
            "feature_dim": self.feature_dim,
            "front_end": self.front_end.to_attrs(),
            "weights_id": self.weights_id,
            "weights_sha256": self.weights_sha256,
        }


class AudioBackbone(Protocol):
    """A loaded audio backbone on one device at one precision."""

    spec: AudioBackboneSpec
    device: torch.device
    precision: str

    def embed_examples(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, frames, bands) float32 log-mel examples -> (N, feature_dim) float32."""
        ...


# Factories take (weights, device, precision) keywords and return an AudioBackbone.
AUDIO_BACKBONES: Registry[AudioBackbone] = Registry("audio backbone")


def audio_backbone_names() -> list[str]:
    """Names accepted by ``create_audio_backbone``."""
    _load_builtins()
    return AUDIO_BACKBONES.names()


def create_audio_backbone(
    name: str,
    weights: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    precision: str = "fp32",
) -> AudioBackbone:
    """Build a registered audio backbone from a weight file (there is no download)."""
    _load_builtins()
    kwargs: dict[str, object] = {"device": device, "precision": precision}
    if weights is not None:
        kwargs["weights"] = os.fspath(weights)
    return AUDIO_BACKBONES.create(name, **kwargs)
