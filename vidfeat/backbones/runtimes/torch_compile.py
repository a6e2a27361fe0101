"""``compile``: ``torch.compile`` (Inductor) of the eager module.

Compilation happens on the first batch of each new batch shape. Inductor keeps compiled
kernels in its on-disk cache (``TORCHINDUCTOR_CACHE_DIR``, by default under the temp folder),
so a later process on the same machine loads them instead of compiling again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from vidfeat.backbones.runtimes.base import RUNTIMES, Runner, Runtime
from vidfeat.backbones.runtimes.eager import Eager, module_runner

if TYPE_CHECKING:
    import torch
    from torch import nn

    from vidfeat.backbones.base import BackboneSpec


@RUNTIMES.register("compile")
class Compile(Runtime):
    name = "compile"
    # It compiles the eager runner; not "mixed": compiled, it ran at about 0.7x eager mixed
    # with other numerics (docs/precision.md).
    precisions: ClassVar = {
        device: tuple(p for p in precisions if p != "mixed")
        for device, precisions in Eager.precisions.items()
    }
    bounds: ClassVar = {"fp32": 1e-4, "fp16": 0.01, "bf16": 0.05}

    def build(
        self, module: nn.Module, spec: BackboneSpec, device: torch.device, precision: str
    ) -> Runner:
        import torch

        eager = module_runner(module, device, precision, spec)
        # dynamic=None: the first new batch size (a job's smaller last batch) recompiles once
        # with a dynamic batch dimension, not once per size.
        return torch.compile(eager, dynamic=None, fullgraph=False)
