"""Shared torch plumbing for backbones that are an ``nn.Module``: compute dtype, batch-norm
folding, and the runtime that runs the module."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from vidfeat.backbones.audio import AudioBackboneSpec
from vidfeat.backbones.base import BackboneSpec
from vidfeat.backbones.runtimes import COMPUTE_DTYPES, DEFAULT_RUNTIME, Runner, check_runtime
from vidfeat.errors import ConfigError

# Torch dtypes of the precisions that cast the module (int8 is a runtime's own quantization),
# named by the one precision table in vidfeat.backbones.runtimes.
CAST_DTYPES: dict[str, torch.dtype] = {
    p: getattr(torch, COMPUTE_DTYPES[p]) for p in ("fp32", "fp16", "bf16")
}


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """Compute dtype of a module that always runs eagerly (the audio backbones): the eager
    runtime's precisions on that device, so one --precision means the same for every stream."""
    if precision in ("mixed", "int8"):
        # "mixed" means bf16 only where a backbone's measured plan allows it, and int8 is the
        # image backbone's ONNX Runtime quantization, calibrated on frames: the audio
        # backbones have neither, and run fp32.
        return torch.float32
    check_runtime(DEFAULT_RUNTIME, device.type, precision)
    return CAST_DTYPES[precision]


@contextlib.contextmanager
def exact_fp32(device: torch.device, precision: str) -> Iterator[None]:
    """Within: fp32 convolutions on CUDA computed in fp32, as ``precision`` "fp32" promises.

    cuDNN runs fp32 convolutions as TF32 by default on Ampere and later GPUs (inputs rounded to
    a 10-bit mantissa), which put InceptionV3's "fp32" features 0.0022 from the CPU's on an H200
    (docs/precision.md) while the store's attrs say fp32. Scoped to the backbone's own calls:
    the process's setting is restored.
    """
    if device.type != "cuda" or precision != "fp32":
        yield
        return
    cudnn = torch.backends.cudnn
    conv = getattr(cudnn, "conv", None)
    if hasattr(conv, "fp32_precision"):  # torch >= 2.9: the per-operator setting
        # (torch then refuses reads of the legacy cudnn.allow_tf32 until it is restored, as it
        # does whenever only some operators are set; nothing on the backbone's path reads it.)
        saved = conv.fp32_precision
        conv.fp32_precision = "ieee"
        try:
            yield
        finally:
            conv.fp32_precision = saved
    else:
        saved_tf32 = cudnn.allow_tf32
        cudnn.allow_tf32 = False
        try:
            yield
        finally:
            cudnn.allow_tf32 = saved_tf32


def fold_batch_norm(module: nn.Module) -> nn.Module:
    """Fold every eval-mode batch norm into the convolution before it, in place.

    Blocks that own their batch norm implement ``fold_batch_norm()`` (returning the folded
    replacement); torchvision-style blocks with a ``conv`` (Conv2d) and a ``bn`` (BatchNorm2d)
    child are fused with torch's own helper. Exact up to float rounding, and it removes a full
    pass over every activation map.
    """
    for name, child in list(module.named_children()):
        fold = getattr(child, "fold_batch_norm", None)
        if callable(fold):
            setattr(module, name, fold())
        elif isinstance(getattr(child, "conv", None), nn.Conv2d) and isinstance(
            getattr(child, "bn", None), nn.BatchNorm2d
        ):
            child.conv = fuse_conv_bn_eval(child.conv, child.bn)
            child.bn = nn.Identity()
        else:
            fold_batch_norm(child)
    return module


class ModuleBackbone:
    """Runs ``module`` (NCHW in, (N, D) out) with BN folded, through a registered runtime."""

    def __init__(
        self,
        spec: BackboneSpec,
        module: nn.Module,
        device: torch.device,
        precision: str,
        runtime: str = DEFAULT_RUNTIME,
    ) -> None:
        self.spec = spec
        self.device = device
        self.precision = precision
        self.runtime = runtime
        runtime_cls = check_runtime(runtime, device.type, precision)
        module.eval().requires_grad_(False)
        self.module = fold_batch_norm(module)
        self._run: Runner = runtime_cls().build(self.module, spec, device, precision)

    @torch.inference_mode()
    def embed_preprocessed(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, S, S, 3) float32 preprocessed frames -> (N, feature_dim) float32 on ``device``."""
        size = self.spec.input_size
        if batch.ndim != 4 or tuple(batch.shape[1:]) != (size, size, 3):
            raise ConfigError(f"expected a (N, {size}, {size}, 3) batch, got {tuple(batch.shape)}")
        # NHWC storage viewed as NCHW is exactly channels_last: no copy on the host.
        x = batch.permute(0, 3, 1, 2).to(self.device, non_blocking=True)
        with exact_fp32(self.device, self.precision):
            return self._run(x.contiguous(memory_format=torch.channels_last)).float()


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
        # channels_last as the image backbones run (oneDNN's fast convolution layout); a
        # (N, 1, H, W) input already has that layout, so only the weights are converted.
        self.module = module.to(device=device, dtype=self.dtype, memory_format=torch.channels_last)

    @torch.inference_mode()
    def embed_examples(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, frames, bands) float32 log-mel examples -> (N, feature_dim) float32."""
        shape = self.spec.example_shape
        if batch.ndim != 3 or tuple(batch.shape[1:]) != shape:
            raise ConfigError(
                f"expected a (N, {shape[0]}, {shape[1]}) batch, got {tuple(batch.shape)}"
            )
        with exact_fp32(self.device, self.precision):
            return self.module(batch.to(self.device, self.dtype)).float()
