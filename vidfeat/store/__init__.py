"""The feature store: the contract between extraction and training.

Public API: :func:`open_store` and :func:`create_store`. Backends (Zarr, HDF5) live in private
modules behind :class:`vidfeat.store.base.Backend`. Importing this package does not import torch.
"""

from __future__ import annotations

import os
from pathlib import Path

from vidfeat.errors import ConfigError, StoreError
from vidfeat.store import _hdf5, _zarr  # noqa: F401 - registers the backends
from vidfeat.store.base import BACKENDS, SCHEMA_VERSION, Backend, StoreMeta
from vidfeat.store.reader import StoreReader
from vidfeat.store.writer import StoreWriter, check_compatible, new_meta

__all__ = [
    "SCHEMA_VERSION",
    "StoreReader",
    "StoreWriter",
    "create_store",
    "detect_format",
    "open_store",
]

DEFAULT_FORMAT = "zarr"


def detect_format(path: str | os.PathLike, format: str | None = None) -> str:
    """The backend name for ``path``: explicit ``format``, else by suffix, else Zarr."""
    if format is not None:
        BACKENDS.get(format)  # raises a ConfigError listing the choices
        return format
    suffix = Path(path).suffix.lower()
    for name in BACKENDS.names():
        if suffix in BACKENDS.get(name).suffixes:
            return name
    return DEFAULT_FORMAT


def _backend(path: str | os.PathLike, format: str | None) -> Backend:
    p = Path(path)
    if format is None and p.is_dir() and not (p / "zarr.json").exists():
        raise StoreError(f"{p} is a directory but not a vidfeat store")
    return BACKENDS.get(detect_format(p, format))(p)


def open_store(path: str | os.PathLike, format: str | None = None) -> StoreReader:
    """Open an existing store for reading (a snapshot of its committed videos)."""
    backend = _backend(path, format)
    if not backend.exists():
        raise StoreError(f"no feature store at {path}")
    meta = backend.read_meta()
    if meta.schema_version > SCHEMA_VERSION:
        raise StoreError(
            f"{path} uses store schema {meta.schema_version}; this vidfeat reads up to "
            f"{SCHEMA_VERSION}. Upgrade vidfeat."
        )
    return StoreReader(backend)


def create_store(
    path: str | os.PathLike,
    dim: int,
    format: str | None = None,
    attrs: dict | None = None,
    *,
    dtype: str = "float32",
    quantization: dict | None = None,
    part: str = "main",
    commit_every: int = 16,
    commit_seconds: float = 10.0,
) -> StoreWriter:
    """Create a store, or reopen one written with identical settings to append (resume).

    A store written with other settings (dim, dtype, quantization or any attr except the
    volatile ones such as ``vidfeat_version``) raises :class:`StoreMismatchError`.
    """
    from vidfeat import __version__

    backend = _backend(path, format)
    wanted = new_meta(dim, dtype, quantization, attrs, __version__)
    if backend.exists():
        check_compatible(backend.read_meta(), wanted, backend.path)
    else:
        backend.path.parent.mkdir(parents=True, exist_ok=True)
        backend.create_root(wanted)
        # Another shard may have created it concurrently with other settings.
        check_compatible(backend.read_meta(), wanted, backend.path)
    if not isinstance(part, str):
        raise ConfigError("part must be a string")
    return StoreWriter(
        backend, wanted, part=part, commit_every=commit_every, commit_seconds=commit_seconds
    )


__all__ += ["StoreMeta"]
