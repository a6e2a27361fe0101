"""``eager``: the module itself, channels_last, cast to the precision's dtype.

bf16 on the CPU runs through oneDNN, which is fast only where the CPU has bf16 instructions
(AVX-512 BF16 or AMX); elsewhere it is refused rather than emulated slowly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from vidfeat.backbones.runtimes.base import COMPUTE_DTYPES, RUNTIMES, Runner, Runtime
from vidfeat.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from vidfeat.backbones.base import BackboneSpec


def module_runner(module: nn.Module, device: torch.device, precision: str) -> Runner:
    """``module`` on ``device`` in the precision's dtype; features come back as float32."""
    import torch

    dtype = getattr(torch, COMPUTE_DTYPES[precision])
    if device.type == "cpu" and dtype == torch.bfloat16 and not cpu_has_fast_bf16():
        raise ConfigError("bf16 on this CPU has no oneDNN bf16 kernels; use fp32")
    module = module.to(device=device, dtype=dtype, memory_format=torch.channels_last)

    def run(x: torch.Tensor) -> torch.Tensor:
        return module(x.to(dtype)).float()

    return run


def cpu_has_fast_bf16() -> bool:
    import torch

    mkldnn = torch.backends.mkldnn
    return bool(mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


@RUNTIMES.register("eager")
class Eager(Runtime):
    name = "eager"
    precisions: ClassVar = {"cpu": ("fp32", "bf16"), "cuda": ("fp32", "fp16", "bf16")}
    bounds: ClassVar = {"fp32": 1e-5, "fp16": 0.01, "bf16": 0.05}

    def build(
        self, module: nn.Module, spec: BackboneSpec, device: torch.device, precision: str
    ) -> Runner:
        return module_runner(module, device, precision)
