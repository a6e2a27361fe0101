"""``onnxruntime``: our native port exported to ONNX, run by ONNX Runtime on the CPU.

fp32 runs the exported graph. int8 is ONNX Runtime's static post-training quantization (QDQ,
per-channel int8 weights, uint8 activations: the u8s8 form that uses AVX-512 VNNI), calibrated
on real frames (``runtimes.calibration``). Both are cached per machine (``runtimes.cache``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from vidfeat.backbones.runtimes.base import RUNTIMES, Runner, Runtime
from vidfeat.backbones.runtimes.cache import cached_conversion

if TYPE_CHECKING:
    import torch
    from torch import nn

    from vidfeat.backbones.base import BackboneSpec

logger = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
OPSET = 17
INPUT, OUTPUT = "frames", "features"


def export_onnx(module: nn.Module, spec: BackboneSpec, path: Path) -> None:
    """``module`` (float32, CPU) -> an ONNX file with a dynamic batch dimension."""
    import torch

    example = torch.zeros(2, 3, spec.input_size, spec.input_size)
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_axes={INPUT: {0: "n"}, OUTPUT: {0: "n"}},
            opset_version=OPSET,
            # The TorchScript exporter (deprecated since torch 2.9): the torch.export-based one
            # needs onnxscript, one more dependency for the same graph.
            dynamo=False,
        )


def quantize_int8(fp32_path: Path, spec: BackboneSpec, path: Path) -> None:
    """Static int8 quantization of ``fp32_path``, calibrated on real frames."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from vidfeat.backbones.runtimes.calibration import calibration_frames

    frames = calibration_frames(spec).transpose(0, 3, 1, 2)  # (N, 3, S, S)

    class Frames(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = ({INPUT: frames[i : i + 4].copy()} for i in range(0, len(frames), 4))

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    quantize_static(
        str(fp32_path),
        str(path),
        Frames(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )


def session_runner(path: Path, device: torch.device) -> Runner:
    import numpy as np
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    # Same thread budget as torch, so runtimes compare (and share cores) on equal terms.
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        frames = np.ascontiguousarray(x.float().cpu().numpy())  # NCHW, as exported
        (features,) = session.run([OUTPUT], {INPUT: frames})
        return torch.from_numpy(features).to(device)

    return run


@RUNTIMES.register("onnxruntime")
class OnnxRuntime(Runtime):
    name = "onnxruntime"
    precisions: ClassVar = {"cpu": ("fp32", "int8")}
    # int8 measured 0.10-0.12 on real frames: a throughput option, never a default.
    bounds: ClassVar = {"fp32": 1e-4, "int8": 0.15}
    requires = ("onnxruntime", "onnx")
    extra = "onnx"

    def build(
        self, module: nn.Module, spec: BackboneSpec, device: torch.device, precision: str
    ) -> Runner:
        fp32_dir = cached_conversion(
            spec, self.name, "fp32", lambda d: export_onnx(module, spec, d / MODEL_FILE)
        )
        if precision == "fp32":
            return session_runner(fp32_dir / MODEL_FILE, device)
        from vidfeat.backbones.runtimes.calibration import CALIBRATION_ID

        int8_dir = cached_conversion(
            spec,
            self.name,
            precision,
            lambda d: quantize_int8(fp32_dir / MODEL_FILE, spec, d / MODEL_FILE),
            variant=CALIBRATION_ID,
        )
        return session_runner(int8_dir / MODEL_FILE, device)
