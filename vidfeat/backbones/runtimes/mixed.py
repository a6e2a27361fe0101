"""The ``mixed`` precision: bf16 where a backbone's measured plan allows it, fp32 elsewhere.

Cast whole to bf16 (8 significant bits), InceptionV3's pool_3 features move 0.024 in mean
relative difference from fp32, over the 0.01 a default may move. Rounding one source at a time
on real frames shows where that comes from (``docs/precision.md`` has the numbers):

- the folded biases: a folded batch-norm bias nearly cancels its convolution's output, so its
  rounding error is large against what is left. Here biases stay fp32: oneDNN adds an fp32
  bias inside its fp32 accumulator, before the one rounding of the output;
- the stem: errors made early are amplified by every later layer. The module names the first
  child that may run in bf16 (``BF16_FROM``); everything before it stays fp32 (each conv and
  its ReLU in one oneDNN call, bit for bit the two apart);
- the weights' rounding, whose mean effect on each output channel is a constant: it is folded
  back into the bias ("bias correction"), from per-channel input means measured on real
  calibration frames (``runtimes.calibration``), cached per machine with the weights' checksum.

A module without a plan (``BF16_FROM``) runs wholly in fp32 under this precision: nothing in it
was measured safe to round.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from vidfeat.backbones.runtimes.cache import cached_conversion
from vidfeat.errors import ConfigError

if TYPE_CHECKING:
    from vidfeat.backbones.base import BackboneSpec

MEANS_FILE = "input_means.pt"  # {conv name: (C_in,) float32 mean of its input over real frames}
_CALIBRATION_BATCH = 8


class _FusedConvReLU(nn.Module):
    """conv + relu as one oneDNN call: the ReLU is the convolution's post-op, applied to the
    fp32 accumulator before the output is written, instead of a second pass over the output."""

    def __init__(self, conv: nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight.contiguous(memory_format=torch.channels_last))
        self.register_buffer("bias", bias.float())
        self.args = (_pair(conv.padding), _pair(conv.stride), [1, 1], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._convolution_pointwise(
            x, self.weight, self.bias, *self.args, "relu", [], ""
        )


class Fp32ConvReLU(_FusedConvReLU):
    """An fp32 conv + relu in one call: bit for bit the output of ``ConvReLU`` (the same oneDNN
    convolution; only where the ReLU runs changes). The fp32 stem's activation maps are the
    network's largest: fused, the whole ran about 5-6% faster (``benchmarks/mixed_fusion.py``)."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__(conv, conv.weight.detach(), conv.bias.detach())


class Bf16ConvReLU(_FusedConvReLU):
    """conv + relu with bf16 input and weights, an fp32 bias, fp32 accumulation, bf16 output."""

    def __init__(self, conv: nn.Module, input_mean: torch.Tensor) -> None:
        weight = conv.weight.detach()
        rounded = weight.to(torch.bfloat16)
        # Bias correction: E[(w - round(w)) . x] per output channel, with x at its mean.
        shift = (weight - rounded.float()).sum(dim=(2, 3)) @ input_mean.to(weight)
        super().__init__(conv, rounded, conv.bias.detach() + shift)


class _CastInput(nn.Module):
    """Runs ``inner`` on its input cast to bf16: the boundary between the fp32 and bf16 parts."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.to(torch.bfloat16))


def _pair(value: int | tuple[int, int]) -> list[int]:
    return [value, value] if isinstance(value, int) else list(value)


def has_plan(module: nn.Module) -> bool:
    """Whether ``module`` names where its bf16 part begins (``BF16_FROM``)."""
    return getattr(module, "BF16_FROM", None) is not None


def bf16_children(module: nn.Module) -> list[str]:
    """Names of the top-level children that run in bf16: ``BF16_FROM`` and those after it."""
    first = getattr(module, "BF16_FROM", None)
    names = [name for name, _ in module.named_children()]
    if first not in names:
        raise ConfigError(f"{type(module).__name__}.BF16_FROM names no child: {first!r}")
    return names[names.index(first) :]


def _convs(module: nn.Module, names: list[str]) -> dict[str, nn.Module]:
    """The fusable conv + relu layers (``ConvReLU``) inside the children ``names``, by full name."""
    from vidfeat.backbones.inception_v3 import ConvReLU

    return {
        f"{child}.{name}" if name else child: layer
        for child in names
        for name, layer in getattr(module, child).named_modules()
        if isinstance(layer, ConvReLU)
    }


def measure_input_means(module: nn.Module, frames: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-channel mean of every bf16-bound conv's input, over ``frames`` (N, 3, S, S) fp32."""
    convs = _convs(module, bf16_children(module))
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name: str):
        def record(_layer: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0]
            sums[name] = sums.get(name, 0) + x.double().sum(dim=(0, 2, 3))
            counts[name] = counts.get(name, 0) + x.shape[0] * x.shape[2] * x.shape[3]

        return record

    handles = [layer.register_forward_pre_hook(hook(name)) for name, layer in convs.items()]
    try:
        with torch.inference_mode():
            for batch in frames.split(_CALIBRATION_BATCH):
                module(batch.contiguous(memory_format=torch.channels_last))
    finally:
        for handle in handles:
            handle.remove()
    return {name: (sums[name] / counts[name]).float() for name in convs}


def to_mixed(module: nn.Module, input_means: dict[str, torch.Tensor]) -> nn.Module:
    """``module`` (fp32, batch norm folded) with its convs replaced, in place: the bf16
    children's by ``Bf16ConvReLU``, the others' by ``Fp32ConvReLU`` (the same fp32 result)."""
    names = bf16_children(module)
    fp32_names = [name for name, _ in module.named_children() if name not in names]
    bf16_convs = _convs(module, names)
    missing = [name for name in bf16_convs if name not in input_means]
    if missing:  # checked before anything changes: the module is converted whole or not at all
        raise ConfigError(f"calibration has no input mean for {missing[0]}; clear the cache")
    replacements = {name: Fp32ConvReLU(layer) for name, layer in _convs(module, fp32_names).items()}
    replacements |= {
        name: Bf16ConvReLU(layer, input_means[name]) for name, layer in bf16_convs.items()
    }
    for full_name, layer in replacements.items():
        parent_name, _, attr = full_name.rpartition(".")
        setattr(module.get_submodule(parent_name) if parent_name else module, attr, layer)
    setattr(module, names[0], _CastInput(getattr(module, names[0])))
    return module


def cached_input_means(module: nn.Module, spec: BackboneSpec) -> dict[str, torch.Tensor]:
    """The calibration means for these weights: measured once per machine, then read."""
    from vidfeat.backbones.runtimes.calibration import CALIBRATION_ID, calibration_frames

    def calibrate(folder: Path) -> None:
        frames = torch.from_numpy(calibration_frames(spec)).permute(0, 3, 1, 2)
        torch.save(measure_input_means(module, frames), folder / MEANS_FILE)

    folder = cached_conversion(spec, "eager", "mixed", calibrate, variant=CALIBRATION_ID)
    return torch.load(folder / MEANS_FILE, weights_only=True)
