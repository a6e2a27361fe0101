"""Converted models, cached once per machine and keyed by what fixes them.

Key: backbone name + weights sha256 / runtime + precision + ``CACHE_FORMAT`` (+ the calibration
set for int8). A conversion runs in a temporary folder next to its entry and is renamed into
place when complete, under a file lock, so concurrent jobs on one machine convert once and a
killed conversion never leaves a half-written entry.

Every entry lists the sha256 of its files (``MANIFEST``), checked before each use: an entry
damaged since (a file deleted, truncated or changed on disk) is converted again, with a
warning, instead of failing deep inside a runtime or, worse, running a changed model.
"""

from __future__ import annotations

import collections
import fcntl
import hashlib
import json
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
CACHE_FORMAT = 2  # bump when a converter changes what it writes (2: entries list checksums)
MANIFEST = "MANIFEST.json"  # {path relative to the entry: sha256 of the file}
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
    if entry.is_dir() and _damage(entry) is None:
        return entry
    entry.parent.mkdir(parents=True, exist_ok=True)
    with open(entry.parent / f".{entry.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another job may be converting the same model
        if entry.is_dir():
            problem = _damage(entry)
            if problem is None:
                return entry
            logger.warning("cache entry %s is damaged (%s): converting again", entry, problem)
            _discard(entry)
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
        try:
            started = time.monotonic()
            logger.info("converting %s for %s %s (once per machine)", spec.name, runtime, precision)
            convert(tmp)
            _write_manifest(tmp)
            os.rename(tmp, entry)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        CONVERSIONS[(runtime, precision)] += 1
        logger.info("converted in %.1f s -> %s", time.monotonic() - started, entry)
    return entry


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_manifest(folder: Path) -> None:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    listed = {str(p.relative_to(folder)): _sha256(p) for p in files}
    (folder / MANIFEST).write_text(json.dumps(listed, indent=1, sort_keys=True))


def _damage(entry: Path) -> str | None:
    """What is wrong with a cache entry, or None when every file it lists is as written."""
    try:
        listed = json.loads((entry / MANIFEST).read_text())
    except (OSError, ValueError):
        return f"no readable {MANIFEST}"
    if not isinstance(listed, dict):
        return f"{MANIFEST} is not a file list"
    for name, sha in listed.items():
        path = entry / name
        if not path.is_file():
            return f"{name} is missing"
        if _sha256(path) != sha:
            return f"{name} does not match its sha256"
    return None


def _discard(entry: Path) -> None:
    """Take a damaged entry out of the way at once (a rename), then delete it."""
    aside = entry.with_name(f".{entry.name}.damaged-{os.getpid()}-{time.time_ns()}")
    os.rename(entry, aside)
    shutil.rmtree(aside, ignore_errors=True)
