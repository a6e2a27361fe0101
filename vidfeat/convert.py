"""Copying feature arrays into float32 buffers on all of torch's intra-op threads.

numpy converts on one core. Filling a training batch (tens of megabytes, converted from uint8
or copied from float32 chunks) that way took 33 ms for 32 cached float32 videos, against 23 ms
for the in-RAM collate, which torch runs on every core; on torch's threads it takes 23. This
module uses torch only when the process has imported it already (a training process has): the
store package promises not to import torch, and a plain numpy read must not pay its start-up.
Both paths give identical bytes; tests compare them.
"""

from __future__ import annotations

import sys
import threading
import warnings
from types import ModuleType
from typing import Any

import numpy as np

# Below this many elements torch's thread hand-off costs more than it saves.
THREADED_MIN = 1 << 15
_READ_ONLY_LOCK = threading.Lock()
_READ_ONLY_SEEN = False


def _torch():
    return sys.modules.get("torch")


def copy_into(out: np.ndarray, src: np.ndarray) -> None:
    """``out[...] = src``, converting to ``out``'s dtype (exact for integers and floats that
    widen), threaded when torch is loaded."""
    torch = _torch()
    if torch is None or out.size < THREADED_MIN or not _torch_can_view(src):
        out[...] = src
        return
    torch.from_numpy(out).copy_(_read_only_tensor(torch, src))


def scale_shift(out: np.ndarray, scalar: np.float32, bias: np.float32) -> None:
    """``out = out * scalar + bias`` in float32, one rounding per operation (no fused
    multiply-add), threaded when torch is loaded."""
    torch = _torch()
    if torch is None or out.size < THREADED_MIN:
        out *= scalar
        out += bias
        return
    # A Python float scalar is applied to a float32 tensor as float32: the same product and
    # sum as numpy's float32 operations.
    t = torch.from_numpy(out)
    t.mul_(float(scalar))
    t.add_(float(bias))


def _read_only_tensor(torch: ModuleType, src: np.ndarray) -> Any:
    """``torch.from_numpy(src)`` without torch's warning that a read-only array (a cached
    chunk) gives a tensor it cannot protect: the tensors made here are only ever read from.
    torch gives that warning once per process, so only the first read-only conversion is
    filtered, under a lock (``catch_warnings`` swaps the process-wide filters). Not a
    module-level filter: a caller's ``catch_warnings`` (pytest wraps every test in one) undoes
    it."""
    global _READ_ONLY_SEEN
    if src.flags.writeable or _READ_ONLY_SEEN:
        return torch.from_numpy(src)
    with _READ_ONLY_LOCK, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensor = torch.from_numpy(src)
        _READ_ONLY_SEEN = True
    return tensor


def _torch_can_view(a: np.ndarray) -> bool:
    return a.dtype.isnative and all(s >= 0 and s % a.itemsize == 0 for s in a.strides)
