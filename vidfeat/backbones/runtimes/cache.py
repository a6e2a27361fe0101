"""Converted models, cached once per machine and keyed by what fixes them.

Key: backbone name + weights sha256 / runtime + precision + ``CACHE_FORMAT`` (+ the calibration
set for int8). A conversion runs in a temporary folder next to its entry and is renamed into
place when complete, under a file lock, so concurrent jobs on one machine convert once and a
killed conversion never leaves a half-written entry.
"""

from __future__ import annotations

import collections
import fcntl
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from vidfeat.backbones.base import BackboneSpec

logger = logging.getLogger(__name__)

CACHE_ENV = "VIDFEAT_CACHE"
CACHE_FORMAT = 1  # bump when a converter changes what it writes
# (runtime, precision) -> conversions this process ran; the cache's reuse is tested on it.
CONVERSIONS: collections.Counter[tuple[str, str]] = collections.Counter()


def cache_root() -> Path:
    """$VIDFEAT_CACHE, else $XDG_CACHE_HOME/vidfeat, else ~/.cache/vidfeat."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vidfeat"


def entry_dir(spec: BackboneSpec, runtime: str, precision: str, variant: str = "") -> Path:
    """The folder holding one converted model."""
    name = f"{runtime}-{precision}-v{CACHE_FORMAT}" + (f"-{variant}" if variant else "")
    return cache_root() / "backbones" / f"{spec.name}-{spec.weights_sha256}" / name


def cached_conversion(
    spec: BackboneSpec,
    runtime: str,
    precision: str,
    convert: Callable[[Path], None],
    variant: str = "",
) -> Path:
    """The cache entry's folder, running ``convert(folder)`` first if it does not exist yet."""
    entry = entry_dir(spec, runtime, precision, variant)
    if entry.is_dir():
        return entry
    entry.parent.mkdir(parents=True, exist_ok=True)
    with open(entry.parent / f".{entry.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another job may be converting the same model
        if entry.is_dir():
            return entry
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
        try:
            started = time.monotonic()
            logger.info("converting %s for %s %s (once per machine)", spec.name, runtime, precision)
            convert(tmp)
            os.rename(tmp, entry)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        CONVERSIONS[(runtime, precision)] += 1
        logger.info("converted in %.1f s -> %s", time.monotonic() - started, entry)
    return entry
