"""Inference runtimes: how a backbone's module runs (eager, torch.compile, ONNX Runtime,
OpenVINO) and at which precision. One file per runtime, each registered in ``RUNTIMES``.

Importing this package does not import torch or any runtime library, so the CLI can list the
choices cheaply; a runtime imports what it needs when it builds.
"""

from vidfeat.backbones.runtimes.base import (
    AUTO_PRECISION,
    COMPUTE_DTYPES,
    DEFAULT_RUNTIME,
    PRECISIONS,
    RUNTIMES,
    Runner,
    Runtime,
    check_runtime,
    get_runtime,
    precision_names,
    runtime_names,
    settle_precision,
)

__all__ = [
    "AUTO_PRECISION",
    "COMPUTE_DTYPES",
    "DEFAULT_RUNTIME",
    "PRECISIONS",
    "RUNTIMES",
    "Runner",
    "Runtime",
    "check_runtime",
    "get_runtime",
    "precision_names",
    "runtime_names",
    "settle_precision",
]
