"""Shared torch plumbing for backbones that are an ``nn.Module``: device, precision, layout."""

from __future__ import annotations

import torch
from torch import nn

from vidfeat.backbones.audio import AudioBackboneSpec
from vidfeat.backbones.base import BackboneSpec
from vidfeat.errors import ConfigError

PRECISIONS: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}


def resolve_device(device: str) -> torch.device:
    """ "auto" -> cuda when available, else cpu; anything else must be a usable torch device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"invalid device {device!r}: {exc}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available")
    if resolved.type not in ("cpu", "cuda"):
        raise ConfigError(f"unsupported device {device!r}; use cpu, cuda[:N] or auto")
    return resolved


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """Compute dtype for ``precision``; reduced precision only where it is fast and tested."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of: {sorted(PRECISIONS)}")
    if precision != "fp32" and device.type != "cuda":
        raise ConfigError(f"precision {precision!r} needs a CUDA device (got {device}); use fp32")
    return PRECISIONS[precision]


class ModuleBackbone:
    """Runs ``module`` (NCHW in, (N, D) out) in eval mode, channels_last, under inference_mode."""

    def __init__(
        self, spec: BackboneSpec, module: nn.Module, device: torch.device, precision: str
    ) -> None:
        self.spec = spec
        self.device = device
        self.precision = precision
        self.dtype = resolve_dtype(precision, device)
        module.eval().requires_grad_(False)
        self.module = module.to(device=device, dtype=self.dtype, memory_format=torch.channels_last)

    @torch.inference_mode()
    def embed_preprocessed(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, S, S, 3) float32 preprocessed frames -> (N, feature_dim) float32 on ``device``."""
        size = self.spec.input_size
        if batch.ndim != 4 or tuple(batch.shape[1:]) != (size, size, 3):
            raise ConfigError(f"expected a (N, {size}, {size}, 3) batch, got {tuple(batch.shape)}")
        # NHWC storage viewed as NCHW is exactly channels_last: no copy on the host.
        x = batch.permute(0, 3, 1, 2).to(self.device, self.dtype, non_blocking=True)
        features = self.module(x.contiguous(memory_format=torch.channels_last))
        return features.float()


class ExamplesBackbone:
    """Runs ``module`` ((N, frames, bands) in, (N, D) out) in eval mode under inference_mode."""

    def __init__(
        self, spec: AudioBackboneSpec, module: nn.Module, device: torch.device, precision: str
    ) -> None:
        self.spec = spec
        self.device = device
        self.precision = precision
        self.dtype = resolve_dtype(precision, device)
        module.eval().requires_grad_(False)
        self.module = module.to(device=device, dtype=self.dtype)

    @torch.inference_mode()
    def embed_examples(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, frames, bands) float32 log-mel examples -> (N, feature_dim) float32."""
        shape = self.spec.example_shape
        if batch.ndim != 3 or tuple(batch.shape[1:]) != shape:
            raise ConfigError(
                f"expected a (N, {shape[0]}, {shape[1]}) batch, got {tuple(batch.shape)}"
            )
        return self.module(batch.to(self.device, self.dtype)).float()
