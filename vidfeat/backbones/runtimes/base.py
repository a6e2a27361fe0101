"""The runtime contract: precisions per device, a documented fidelity bound, ``build``.

A runtime turns an eval-mode ``nn.Module`` (NCHW float32 in, (N, D) out, batch norm already
folded) into a ``Runner`` for one device and precision. Runtimes that convert the module (ONNX
Runtime, OpenVINO) cache the converted model per machine (``runtimes.cache``).
"""

from __future__ import annotations

import importlib
import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, ClassVar

from vidfeat.errors import ConfigError
from vidfeat.registry import Registry

if TYPE_CHECKING:
    import torch
    from torch import nn

    from vidfeat.backbones.base import BackboneSpec

# (N, 3, S, S) float32 channels_last on the backbone's device -> (N, D) float32 on that device.
Runner = Callable[["torch.Tensor"], "torch.Tensor"]

# precision -> the dtype its arithmetic runs in (int8: a runtime's own quantized kernels;
# mixed: bf16 for the layers a backbone's measured plan allows, fp32 for the rest).
COMPUTE_DTYPES = {
    "fp32": "float32",
    "fp16": "float16",
    "bf16": "bfloat16",
    "int8": "int8",
    "mixed": "bfloat16",
}
PRECISIONS = tuple(COMPUTE_DTYPES)
DEFAULT_RUNTIME = "eager"
# A job's default: the runtime's fastest precision on the job's device that stays within 0.01
# of fp32 (Runtime.default_precision), settled once when the job starts and recorded as such.
AUTO_PRECISION = "auto"

_BUILTIN_MODULES = tuple(
    f"vidfeat.backbones.runtimes.{name}" for name in ("eager", "torch_compile", "ort", "openvino")
)


class Runtime(ABC):
    """One way to run a backbone. The class attributes are data: the CLI and tests read them."""

    name: ClassVar[str]
    # device type -> precisions this runtime runs there.
    precisions: ClassVar[Mapping[str, tuple[str, ...]]]
    # precision -> bound on the mean relative difference to fp32 eager on real frames
    # (``vidfeat.backbones.fidelity``); tests hold every installed runtime to it.
    bounds: ClassVar[Mapping[str, float]]
    requires: ClassVar[tuple[str, ...]] = ()  # importable packages it needs
    extra: ClassVar[str | None] = None  # the pip extra that installs them

    @classmethod
    def default_precision(cls, device_type: str) -> str:
        """What ``--precision auto`` means on ``device_type``: fp32 unless a runtime measured
        something faster within the 0.01 a default may move (see docs/precision.md)."""
        return "fp32"

    @classmethod
    def missing(cls) -> list[str]:
        """Packages this runtime needs that are not installed."""
        return [m for m in cls.requires if importlib.util.find_spec(m) is None]

    @classmethod
    def check(cls, device_type: str, precision: str) -> None:
        """ConfigError unless this runtime can run ``precision`` on ``device_type``."""
        if precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {precision!r}; choose one of: {PRECISIONS}")
        supported = cls.precisions.get(device_type, ())
        if precision not in supported:
            where = [d for d, p in cls.precisions.items() if precision in p]
            hint = f" (it runs {precision} on {', '.join(where)} only)" if where else ""
            raise ConfigError(
                f"runtime {cls.name!r} does not run precision {precision!r} on {device_type}"
                f"{hint}; on {device_type} it runs: {', '.join(supported) or 'nothing'}"
            )
        missing = cls.missing()
        if missing:
            raise ConfigError(
                f"runtime {cls.name!r} needs {', '.join(missing)}: "
                f"pip install 'vidfeat[{cls.extra}]'"
            )

    @abstractmethod
    def build(
        self, module: nn.Module, spec: BackboneSpec, device: torch.device, precision: str
    ) -> Runner:
        """A runner for ``module`` (eval mode, batch norm folded, float32 on the CPU)."""


# Keys are runtime names; values are ``Runtime`` subclasses (called with no arguments).
RUNTIMES: Registry[Runtime] = Registry("runtime")


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def get_runtime(name: str) -> type[Runtime]:
    _load_builtins()
    return RUNTIMES.get(name)  # type: ignore[return-value]


def runtime_names() -> list[str]:
    """Registered runtimes, installed or not (``Runtime.missing`` tells which)."""
    _load_builtins()
    return RUNTIMES.names()


def precision_names() -> list[str]:
    """Precisions at least one registered runtime runs on some device, in ``PRECISIONS`` order."""
    _load_builtins()
    offered = {
        p for name in RUNTIMES.names() for ps in get_runtime(name).precisions.values() for p in ps
    }
    return [p for p in PRECISIONS if p in offered]


def settle_precision(runtime: str, device_type: str, precision: str) -> str:
    """``precision``, with "auto" replaced by the runtime's default on ``device_type``."""
    if precision != AUTO_PRECISION:
        return precision
    return get_runtime(runtime).default_precision(device_type)


def check_runtime(runtime: str, device_type: str, precision: str) -> type[Runtime]:
    """The runtime class, after checking it runs ``precision`` on ``device_type`` here."""
    cls = get_runtime(runtime)
    cls.check(device_type, precision)
    return cls
