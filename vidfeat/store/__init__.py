"""The feature store: the contract between extraction and training.

Public API: :func:`open_store` and :func:`create_store`. Backends (Zarr, HDF5) live in private
modules behind :class:`vidfeat.store.base.Backend`. Importing this package does not import torch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vidfeat.errors import ConfigError, StoreError
from vidfeat.location import RemotePath, as_location
from vidfeat.store import _hdf5, _zarr  # noqa: F401 - registers the backends
from vidfeat.store.base import BACKENDS, Backend
from vidfeat.store.chunks import DEFAULT_CACHE_MB
from vidfeat.store.reader import StoreReader
from vidfeat.store.schema import (
    DEFAULT_STREAM,
    SCHEMA_VERSION,
    StoreMeta,
    StreamSpec,
    as_schema,
    check_compatible,
    check_readable,
    new_meta,
)
from vidfeat.store.writer import StoreWriter

__all__ = [
    "SCHEMA_VERSION",
    "StoreMeta",
    "StoreReader",
    "StoreWriter",
    "StreamSpec",
    "check_store",
    "check_store_path",
    "create_store",
    "detect_format",
    "open_store",
    "read_store_attrs",
    "store_exists",
]

DEFAULT_FORMAT = "zarr"


def detect_format(path: str | os.PathLike | RemotePath, format: str | None = None) -> str:
    """The backend name for ``path``: explicit ``format``, else by suffix, else Zarr."""
    if format is not None:
        BACKENDS.get(format)  # raises a ConfigError listing the choices
        return format
    suffix = as_location(path).suffix.lower()
    for name in BACKENDS.names():
        if suffix in BACKENDS.get(name).suffixes:
            return name
    return DEFAULT_FORMAT


# Suffixes of files people mean by "--out" that no store has: a new store there would be a
# Zarr directory named like a table or a model (what a newcomer asking for features.csv gets).
_NOT_STORE_SUFFIXES = frozenset(
    {
        *(".csv", ".tsv", ".txt", ".json", ".jsonl", ".yaml", ".yml", ".md", ".log", ".pdf"),
        *(".npz", ".npy", ".parquet", ".pt", ".pth", ".pkl", ".tfrecord"),
        *(".mp4", ".mkv", ".avi", ".webm", ".mov", ".png", ".jpg"),
    }
)


def _backend(path: str | os.PathLike | RemotePath, format: str | None) -> Backend:
    """The backend for a local path or a URL (``s3://``, ``gs://``, anything fsspec opens)."""
    p = as_location(path)
    named_otherwise = format is None and p.suffix.lower() in _NOT_STORE_SUFFIXES
    if isinstance(p, Path) and named_otherwise and not p.exists():  # an old one stays readable
        raise StoreError(
            f"{p}: a store is a .zarr directory or an .h5 file (or a name without a "
            f"suffix), not a {p.suffix} file; choose another name"
        )
    backend = BACKENDS.get(detect_format(p, format))(p)
    if isinstance(p, Path) and format is None and not backend.exists():
        # A store made with --format against its suffix (or without one) is what is on
        # disk, whatever its name says: readers take it for what it is.
        for name in BACKENDS.names():
            if name != backend.name and _holds_store(other := BACKENDS.get(name)(p)):
                return other
        # An empty directory is where the user asked a new store to go; anything else at the
        # path is not ours to write into (or read as a store). Another shard may have made
        # the store since the check above (its root appears whole): asked again before
        # refusing, so that what it made is taken as the store it is.
        if p.is_dir() and (any(p.iterdir()) or not backend.root_is_dir):
            if not backend.exists():
                raise StoreError(f"{p} is a directory but not a vidfeat store")
        elif p.exists() and not p.is_dir() and not backend.exists():
            raise StoreError(f"{p} is a file, not a vidfeat {backend.name} store")
    return backend


def _holds_store(backend: Backend) -> bool:
    """Whether ``backend``'s root is at its path and reads as one (any file passes the HDF5
    backend's look for a root file; a file it cannot parse is not a store)."""
    try:
        return backend.exists() and backend.read_meta() is not None
    except StoreError:
        return False


def check_store_path(path: str | os.PathLike | RemotePath, format: str | None = None) -> None:
    """Raise StoreError when what lies at a local ``path`` can be neither a store nor a new
    one: a file where a directory goes, a directory that is not a store and is not empty."""
    _backend(path, format)


def store_exists(path: str | os.PathLike | RemotePath, format: str | None = None) -> bool:
    """Whether a store's root is at ``path`` (a local path or a URL)."""
    return _backend(path, format).exists()


def read_store_attrs(
    path: str | os.PathLike | RemotePath, format: str | None = None
) -> dict[str, Any] | None:
    """The store's root attrs, read without its per-video index; None when there is no
    readable store at ``path`` (whoever creates or opens it reports why)."""
    try:
        backend = _backend(path, format)
        return dict(backend.read_meta().attrs) if backend.exists() else None
    except StoreError:
        return None


def read_store_created(
    path: str | os.PathLike | RemotePath, format: str | None = None
) -> dict[str, Any] | None:
    """The root's creation record (``created``: version and time), read without the per-video
    index; None when no store is at ``path``. Two processes that see the same record at one
    path see the same store (an object store's endpoint, or a mount, may differ between them)."""
    backend = _backend(path, format)
    return dict(backend.read_meta().created) if backend.exists() else None


def open_store(
    path: str | os.PathLike | RemotePath,
    format: str | None = None,
    *,
    cache_mb: float = DEFAULT_CACHE_MB,
) -> StoreReader:
    """Open an existing store for reading (a snapshot of its committed videos), keeping up to
    ``cache_mb`` MiB of decoded chunks for later reads (0: none)."""
    backend = _backend(path, format)
    if not backend.exists():
        raise no_store_at(path)
    check_readable(backend.read_meta(), backend.path)
    return StoreReader(backend, cache_mb=cache_mb)


def no_store_at(path: str | os.PathLike | RemotePath) -> StoreError:
    """The error for a path where no store is; on an object store, whether its bucket is
    missing, the usual cause (a typo, or another endpoint than the one the bucket is on)."""
    message = f"no feature store at {path}"
    location = as_location(path)
    if isinstance(location, RemotePath):
        fs, key = location.filesystem()
        bucket = key.split("/", 1)[0]
        try:
            seen = fs.exists(bucket)
        except Exception:  # a hint only: without it the plain message stands
            seen = True
        if not seen:
            message += f": bucket {bucket!r} does not exist (or these credentials cannot see it)"
    return StoreError(message)


def _streams(
    dim: int | None,
    streams: Mapping[str, int | Mapping[str, Any]] | None,
    dtype: str | None,
    quantization: dict | None,
) -> Mapping[str, int | Mapping[str, Any]]:
    if (dim is None) == (streams is None):
        raise ConfigError("give either dim= (one stream named 'rgb') or streams=, not both")
    if streams is not None:
        if dtype is not None or quantization is not None:
            raise ConfigError("with streams=, give dtype and quantization per stream")
        return streams
    spec = {"dim": dim, "dtype": dtype or "float32", "quantization": quantization}
    return {DEFAULT_STREAM: spec}


def _open_for_writing(
    path: str | os.PathLike | RemotePath,
    dim: int | None,
    format: str | None,
    attrs: dict | None,
    streams: Mapping[str, int | Mapping[str, Any]] | None,
    level: str,
    dtype: str | None,
    quantization: dict | None,
) -> tuple[Backend, StoreMeta, StoreMeta]:
    """Create the root if absent; check the store accepts these settings. Returns the backend,
    the wanted metadata and the existing one."""
    from vidfeat import __version__

    backend = _backend(path, format)
    wanted = new_meta(_streams(dim, streams, dtype, quantization), attrs, __version__, level)
    if not backend.exists():
        if isinstance(backend.path, Path):
            backend.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            backend.create_root(wanted)
        except FileNotFoundError as exc:
            if exc.filename is not None:
                raise
            # An object store's missing bucket comes without a path ("The specified bucket
            # does not exist"): name the store the user gave.
            raise StoreError(f"cannot create the store at {backend.path}: {exc}") from exc
    # The root may be older, newer, or made concurrently by another shard with other settings.
    existing = backend.read_meta()
    check_readable(existing, backend.path, action="writes")
    check_compatible(existing, wanted, backend.path)
    return backend, wanted, existing


def check_store(
    path: str | os.PathLike | RemotePath,
    dim: int | None = None,
    format: str | None = None,
    attrs: dict | None = None,
    *,
    streams: Mapping[str, int | Mapping[str, Any]] | None = None,
    level: str = "frame",
    dtype: str | None = None,
    quantization: dict | None = None,
) -> None:
    """What :func:`create_store` checks, without opening a part: create the root if absent,
    refuse a store written with other settings. For a coordinator whose workers write."""
    backend, _, _ = _open_for_writing(path, dim, format, attrs, streams, level, dtype, quantization)
    backend.close()


def create_store(
    path: str | os.PathLike | RemotePath,
    dim: int | None = None,
    format: str | None = None,
    attrs: dict | None = None,
    *,
    streams: Mapping[str, int | Mapping[str, Any]] | None = None,
    level: str = "frame",
    dtype: str | None = None,
    quantization: dict | None = None,
    part: str = "main",
    commit_every: int = 16,
    commit_seconds: float = 10.0,
) -> StoreWriter:
    """Create a store, or reopen one written with identical settings to append (resume).

    ``streams`` maps each stream name to its dim, or to a dict with ``dim`` and optionally
    ``dtype``, ``quantization`` and ``attrs`` (provenance). ``dim=`` (with ``dtype`` and
    ``quantization``) is one stream named ``rgb``. ``level="video"`` makes a store of one vector
    per video and stream, with no frames.

    A store written with other settings (streams, level or any attr except the volatile ones
    such as ``vidfeat_version``) raises :class:`StoreMismatchError`. A store of a schema this
    vidfeat does not know is refused. Appending to a schema-1 store writes schema-1 parts, so
    the store stays readable by older vidfeat versions (and stays unverified).
    """
    backend, wanted, existing = _open_for_writing(
        path, dim, format, attrs, streams, level, dtype, quantization
    )
    if not isinstance(part, str):
        raise ConfigError("part must be a string")
    return StoreWriter(
        backend,
        as_schema(wanted, existing),
        part=part,
        commit_every=commit_every,
        commit_seconds=commit_seconds,
    )
