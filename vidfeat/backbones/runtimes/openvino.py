"""``openvino``: our native port converted to OpenVINO IR, run by OpenVINO on the CPU.

bf16 is OpenVINO's inference-precision hint on the same IR; on CPUs without bf16 instructions
OpenVINO would silently run fp32, so it is refused there instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from vidfeat.backbones.runtimes.base import RUNTIMES, Runner, Runtime
from vidfeat.backbones.runtimes.cache import cached_conversion
from vidfeat.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from vidfeat.backbones.base import BackboneSpec

MODEL_FILE = "model.xml"  # with model.bin beside it
_HINTS = {"fp32": "f32", "bf16": "bf16"}


def convert_ir(module: nn.Module, spec: BackboneSpec, path: Path) -> None:
    import openvino as ov
    import torch

    example = torch.zeros(2, 3, spec.input_size, spec.input_size)
    with torch.inference_mode(False), torch.no_grad():
        model = ov.convert_model(module, example_input=example)
    model.reshape([-1, 3, spec.input_size, spec.input_size])  # any batch size
    ov.save_model(model, str(path), compress_to_fp16=False)  # keep the fp32 weights exact


@RUNTIMES.register("openvino")
class OpenVINO(Runtime):
    name = "openvino"
    precisions: ClassVar = {"cpu": ("fp32", "bf16")}
    bounds: ClassVar = {"fp32": 1e-4, "bf16": 0.05}
    requires = ("openvino",)
    extra = "openvino"

    def build(
        self, module: nn.Module, spec: BackboneSpec, device: torch.device, precision: str
    ) -> Runner:
        import openvino as ov
        import torch

        core = ov.Core()
        capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        if precision == "bf16" and "BF16" not in capabilities:
            raise ConfigError("this CPU has no bf16 instructions for OpenVINO; use fp32")
        folder = cached_conversion(
            spec, self.name, "fp32", lambda d: convert_ir(module, spec, d / MODEL_FILE)
        )
        compiled = core.compile_model(
            str(folder / MODEL_FILE),
            "CPU",
            {
                "INFERENCE_PRECISION_HINT": _HINTS[precision],
                "INFERENCE_NUM_THREADS": torch.get_num_threads(),
                "PERFORMANCE_HINT": "LATENCY",  # one batch at a time, all threads on it
            },
        )
        request = compiled.create_infer_request()

        def run(x: torch.Tensor) -> torch.Tensor:
            frames = x.float().cpu().contiguous().numpy()
            features = request.infer({0: frames})[0]
            return torch.from_numpy(features.copy()).to(device)

        return run
