"""Atomic file writes: the one way this project replaces a file.

Every writer builds the new file under a temporary name in the target's directory and renames
it over the target, so a reader (or a process restarted after a kill) sees the old file or the
new one, never half of one. With ``durable=True`` the file is fsynced before the rename and the
directory after it, so the new file also survives a power loss; plots and reports, which can be
regenerated, skip the fsyncs.

Temporary names are ``.<name>.<random>.tmp``: hidden, never mistaken for data, and easy for a
writer to sweep after a crash.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from vidfeat.errors import exception_chain

TMP_SUFFIX = ".tmp"


def temp_name(path: str | os.PathLike) -> Path:
    """A fresh temporary path next to ``path`` (same directory, so the rename is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}{TMP_SUFFIX}")


def sweep_temps(directory: str | os.PathLike, names: Iterable[str]) -> list[Path]:
    """Remove the temporary files of ``names`` in ``directory`` that writers killed mid-write
    left behind; returns them. Only for a directory's sole writer (one that holds its lock):
    another writer's file in progress would go too."""
    pattern = re.compile(r"\.(.+)\.[0-9a-f]{32}" + re.escape(TMP_SUFFIX))
    wanted, removed = set(names), []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(directory):
            found = pattern.fullmatch(entry.name)
            if found and found[1] in wanted and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


def fsync_dir(directory: str | os.PathLike) -> None:
    """Flush a directory entry (a rename or a new file) to disk."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace(tmp: str | os.PathLike, final: str | os.PathLike, *, durable: bool = True) -> None:
    """Rename the finished file ``tmp`` over ``final`` (fsyncing both first when durable)."""
    if durable:
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
    os.replace(tmp, final)
    if durable:
        fsync_dir(Path(final).parent)


def create(tmp: str | os.PathLike, final: str | os.PathLike) -> bool:
    """Publish the finished file ``tmp`` as ``final`` only if ``final`` does not exist yet.

    Returns whether it did; ``tmp`` is gone either way. A hard link fails when the name
    exists, atomically, so of two processes racing to create ``final`` exactly one wins (a
    rename would let the second silently replace the first). Where hard links are not
    supported, it falls back to checking, then renaming, which leaves that race open.
    """
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    try:
        os.link(tmp, final)
        created = True
    except FileExistsError:
        created = False
    except OSError:  # no hard links on this filesystem
        created = not os.path.exists(final)
        if created:
            os.replace(tmp, final)
    Path(tmp).unlink(missing_ok=True)
    fsync_dir(Path(final).parent)
    return created


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on error it is removed.

    For writers that want a file name (``savefig``, ``h5py.File``)."""
    final = Path(path)
    tmp = temp_name(final)
    try:
        yield tmp
        replace(tmp, final, durable=durable)
    except (OSError, RuntimeError) as exc:
        cause = _os_error(exc)
        if cause is None or cause.errno is None:
            raise
        # Name the file being replaced, not its hidden temporary name; torch reports a full
        # disk as "unexpected pos" with the OSError (and no file name) only in the chain.
        raise OSError(cause.errno, cause.strerror or str(cause), str(final)) from exc
    finally:
        tmp.unlink(missing_ok=True)


def _os_error(exc: BaseException) -> OSError | None:
    """``exc`` itself or the first OSError in its cause/context chain."""
    return next((e for e in exception_chain(exc) if isinstance(e, OSError)), None)


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike, mode: str = "w", *, durable: bool = True, **kwargs: Any
) -> Iterator[IO[Any]]:
    """``open()`` for writing, atomically: the file appears under ``path`` only once closed."""
    if not mode.startswith("w"):
        raise ValueError(f"atomic_open writes whole files (mode 'w' or 'wb'), got {mode!r}")
    with atomic_path(path, durable=durable) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh
        fh.flush()


def write_bytes(path: str | os.PathLike, data: bytes, *, durable: bool = True) -> None:
    with atomic_open(path, "wb", durable=durable) as fh:
        fh.write(data)


def write_text(path: str | os.PathLike, text: str, *, durable: bool = True) -> None:
    with atomic_open(path, "w", durable=durable, encoding="utf-8") as fh:
        fh.write(text)
