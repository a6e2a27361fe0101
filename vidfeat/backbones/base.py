"""The backbone contract: a spec (data) plus ``embed_preprocessed``; a registry and one factory.

Torch-free on purpose: a ``BackboneSpec`` travels to decode workers (which only resize and
normalise) and into store attributes, and neither should pay for importing torch. Built-in
backbones are imported on first use of the registry.
"""

from __future__ import annotations

import importlib
import os
import re
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol

from vidfeat.errors import ConfigError
from vidfeat.preprocess import RESIZE_RULES
from vidfeat.registry import Registry

if TYPE_CHECKING:
    import torch

# Modules that register built-in backbones; imported lazily because they import torch.
_BUILTIN_MODULES = ("vidfeat.backbones.inception_v3", "vidfeat.backbones.vggish")

_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class BackboneSpec:
    """Everything that fixes a backbone's features, so preprocessing is derived, not repeated.

    ``mean``/``std`` are per RGB channel in pixel units (0-255), applied after ``resize``.
    """

    name: str
    feature_dim: int
    input_size: int
    resize: str  # a key of vidfeat.preprocess.RESIZE_RULES
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights_id: str
    weights_sha256: str  # of the weight file as read from disk

    def __post_init__(self) -> None:
        # Coerce sequences (e.g. lists from JSON) so specs compare and hash reliably.
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        problems = []
        if self.feature_dim < 1 or self.input_size < 1:
            problems.append("feature_dim and input_size must be >= 1")
        if self.resize not in RESIZE_RULES:
            problems.append(f"unknown resize rule {self.resize!r} ({RESIZE_RULES.names()})")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            problems.append("mean and std need 3 values each, std > 0")
        if not _SHA256.fullmatch(self.weights_sha256):
            problems.append("weights_sha256 must be 64 lowercase hex digits")
        if problems:
            raise ConfigError(f"invalid backbone spec {self.name!r}: " + "; ".join(problems))

    def to_attrs(self) -> dict[str, Any]:
        """JSON-friendly dict (lists, not tuples) for store attributes."""
        attrs = asdict(self)
        attrs["mean"], attrs["std"] = list(self.mean), list(self.std)
        return attrs


def backbone_provenance(spec: BackboneSpec, runtime: str, precision: str) -> dict[str, Any]:
    """The store attrs that pin a backbone's features: the one definition of their shape.

    Written by ``vidfeat extract`` and ``FeatureExtractor.store_attrs``; read back by
    :func:`describe_backbone`.
    """
    return {"backbone": spec.to_attrs(), "runtime": runtime, "precision": precision}


def describe_backbone(attrs: dict[str, Any]) -> dict[str, Any]:
    """``{"name", "weights"}`` from any store's attrs, or None values where they say nothing.

    Stores made through the API carry free-form attrs: ``backbone`` may be a provenance dict,
    a plain name, or missing, so readers go through here instead of assuming a shape.
    """
    backbone = attrs.get("backbone")
    if isinstance(backbone, dict):
        return {"name": backbone.get("name"), "weights": backbone.get("weights_id")}
    name = backbone if isinstance(backbone, str) else None
    weights = attrs.get("weights")
    return {"name": name, "weights": weights if isinstance(weights, str) else None}


class Backbone(Protocol):
    """A loaded backbone on one device at one precision."""

    spec: BackboneSpec
    device: torch.device
    precision: str

    def embed_preprocessed(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, S, S, 3) float32 preprocessed frames -> (N, feature_dim) float32 on ``device``."""
        ...


# Factories take (weights, device, precision) keywords and return a Backbone.
BACKBONES: Registry[Backbone] = Registry("backbone")


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def backbone_names() -> list[str]:
    """Names accepted by ``create_backbone``."""
    _load_builtins()
    return BACKBONES.names()


def create_backbone(
    name: str,
    weights: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    runtime: str = "eager",
) -> Backbone:
    """Build a registered backbone. ``weights=None`` picks that backbone's default weights.

    ``device``: "cpu", "cuda", "cuda:1", ... or "auto" (cuda when available).
    ``runtime`` and ``precision``: see ``vidfeat.backbones.runtimes`` (which runtime runs which
    precision on which device); precision "auto" is the runtime's default on that device.
    """
    from vidfeat.backbones.runtimes import AUTO_PRECISION, settle_precision

    _load_builtins()
    if precision == AUTO_PRECISION:
        from vidfeat.device import resolve_device

        precision = settle_precision(runtime, resolve_device(device).type, precision)
    kwargs: dict[str, object] = {"device": device, "precision": precision}
    if runtime != "eager":  # factories that only run eagerly need not know about runtimes
        kwargs["runtime"] = runtime
    if weights is not None:
        kwargs["weights"] = os.fspath(weights)
    return BACKBONES.create(name, **kwargs)
