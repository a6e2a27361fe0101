"""``eager``: the module itself, channels_last, cast to the precision's dtype.

bf16 on the CPU runs through oneDNN, which is fast only where the CPU has bf16 instructions
(AVX-512 BF16 or AMX); elsewhere it is refused rather than emulated slowly. ``mixed`` runs the
layers a backbone's plan allows in bf16 and the rest in fp32 (``runtimes.mixed``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from vidfeat.backbones.runtimes.base import COMPUTE_DTYPES, RUNTIMES, Runner, Runtime
from vidfeat.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from vidfeat.backbones.base import BackboneSpec


def module_runner(
    module: nn.Module, device: torch.device, precision: str, spec: BackboneSpec | None = None
) -> Runner:
    """``module`` on ``device`` in the precision's dtype; features come back as float32."""
    import torch

    dtype = getattr(torch, COMPUTE_DTYPES[precision])
    if device.type == "cpu" and dtype == torch.bfloat16 and not cpu_has_fast_bf16():
        raise ConfigError(f"{precision} on this CPU has no oneDNN bf16 kernels; use fp32")
    if precision == "mixed":
        from vidfeat.backbones.runtimes.mixed import cached_input_means, has_plan, to_mixed

        module = module.to(device=device, memory_format=torch.channels_last)
        if has_plan(module):
            if spec is None:
                raise ConfigError("the mixed precision needs the backbone's spec to calibrate")
            module = to_mixed(module, cached_input_means(module, spec))
        dtype = torch.float32  # the input; the module casts where its bf16 part begins
    else:
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
    precisions: ClassVar = {
        "cpu": ("fp32", "bf16", "mixed"),
        "cuda": ("fp32", "fp16", "bf16"),
    }
    bounds: ClassVar = {"fp32": 1e-5, "fp16": 0.01, "bf16": 0.05, "mixed": 0.01}

    @classmethod
    def default_precision(cls, device_type: str) -> str:
        # mixed: 0.0075 from fp32 on real frames at 1.5-1.9x its speed where the CPU has bf16
        # instructions. fp16 on CUDA: 0.0032 on an H200 at 3.96x fp32 (docs/precision.md).
        if device_type == "cuda":
            return "fp16"
        return "mixed" if cpu_has_fast_bf16() else "fp32"

    def build(
        self, module: nn.Module, spec: BackboneSpec, device: torch.device, precision: str
    ) -> Runner:
        return module_runner(module, device, precision, spec)
