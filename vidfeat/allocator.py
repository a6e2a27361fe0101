"""Let glibc's malloc keep freed memory for reuse instead of handing it back to the kernel.

By default glibc serves every large block (a batch of frames, a layer's activations, a padded
training batch: megabytes to a few hundred) with a fresh ``mmap`` and unmaps it when freed, and
trims the top of its heap once enough is free. Each new block then faults in every page again,
and the kernel zeroes them: on the benchmark machine that cost more than the work itself for the
cheap heads (training ``bof`` from RAM on a float32 store ran at 216 sequences/s by default and
606 with the settings below; InceptionV3 in ``mixed`` precision ran 11-33% faster).

The price is memory. Freed blocks stay in the process, and glibc's aligned allocations leave
gaps while the heap settles: a loop that allocates and frees one 64 MiB tensor grows the heap
by 8 such blocks before it reuses them and stops growing (``tests/vidfeat/test_convert.py``).
Batch jobs allocate the same shapes over and over, so the footprint rises to a plateau above
the default's (backbone benchmark: 1.7 GB peak against 1.56) and stays there.

The commands ``vidfeat`` and ``heads`` call :func:`keep_freed_memory` when they start, and so
do the processes they start that do the heavy work (Ray embedding actors; DataLoader workers
and torchrun ranks inherit it or run the command themselves). A library user may call it too.
Setting ``VIDFEAT_MALLOC=system`` leaves the C library's defaults alone.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger(__name__)

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_NEVER_TRIM = 2**31 - 1  # an int: mallopt takes one

_done: bool | None = None


def keep_freed_memory() -> bool:
    """Serve large blocks from the heap and never trim it (glibc only; idempotent).

    Returns whether the settings are in effect: False elsewhere than glibc, or with
    ``VIDFEAT_MALLOC=system``.
    """
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get("VIDFEAT_MALLOC", "").lower() == "system":
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return False
    # gnu_get_libc_version is glibc's own: the parameters below are glibc's, other C
    # libraries (musl) have no such settings or give the numbers other meanings.
    if not (hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt")):
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    # mmap_max 0: no block gets its own mapping, so none is unmapped and faulted in again.
    # mmap_threshold cannot do it: glibc caps it at 32 MiB, below a batch of activations.
    _done = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM))
    log.debug("malloc keeps freed memory: %s", _done)
    return _done
