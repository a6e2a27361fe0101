"""The torch device a job runs on, from the one spelling every command accepts.

``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (``vidfeat.config.DEVICES_RE``). Extraction, training
and prediction all resolve ``--device`` here, so a device this machine lacks is refused with the
same message before any work starts, instead of failing deep inside torch.
"""

from __future__ import annotations

import torch

from vidfeat.config import DEVICES_RE
from vidfeat.errors import ConfigError

# Frames per backbone batch when --batch-size is not given. On CUDA a batch of 32 leaves an
# InceptionV3 at about 80% of what the device does at 256 or more (fp16 on an H200,
# benchmarks/results/backbone_gpu.json); on the CPU larger batches gain nothing and hold more
# memory per decode worker's frames in flight.
DEFAULT_BATCH_SIZES = {"cpu": 32, "cuda": 256}


def default_batch_size(device: torch.device | None) -> int:
    """Frames per backbone batch on ``device`` (None: the CPU's) when none is asked for."""
    cpu = DEFAULT_BATCH_SIZES["cpu"]
    return cpu if device is None else DEFAULT_BATCH_SIZES.get(device.type, cpu)


def resolve_device(name: str, *, label: str = "device") -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda[:N]`` must exist on this machine.
    ``label`` names the setting in errors (``--device`` from the command line).

    A bare ``cuda`` keeps no index: under torchrun each rank takes its local rank's device.
    """
    if not isinstance(name, str) or not DEVICES_RE.match(name):
        raise ConfigError(f"{label} must be auto, cpu, cuda or cuda:N, got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"{label} {name}: CUDA is not available here; use cpu or auto")
    index = int(name.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ConfigError(f"{label} {name}: this machine has {count} CUDA device(s)")
    return torch.device(name)
