"""One writer per part: a flock on local disks, a claim object on object stores.

Object stores have no locks. A writer claims its part by creating ``<store>.locks/<part>.claim``
with a conditional PUT (``If-None-Match: *`` on S3), which exactly one of two racing writers
wins. The claim names its owner (a random token, host and pid) and a heartbeat that the writer
renews at every commit. A claim is taken over only when its owner is provably gone (same host,
pid no longer running, or the pid is this process's and the claim is not one it holds: a
restarted container's process often has the pid its predecessor had) or its heartbeat is older
than :data:`CLAIM_TTL_S`. Before every commit
point, and before writing the data it commits, the writer checks that the claim still holds its
token (and renews it), so a writer whose claim was taken over stops before it writes into the
part. docs/store-format.md lists what this cannot guarantee.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Protocol

from vidfeat.errors import StoreError
from vidfeat.location import Location, RemotePath, put_exclusive
from vidfeat.signals import process_alive

log = logging.getLogger(__name__)

# A claim whose heartbeat is older than this belongs to a dead writer. Writers renew at every
# commit (every few seconds while videos finish) and while idle at most every CLAIM_TTL_S / 4.
CLAIM_TTL_S = 15 * 60.0
LOCKS_SUFFIX = ".locks"  # the claims of store "x.zarr" live in "x.zarr.locks" beside it
_HELD_HERE: set[str] = set()  # tokens of the claims this process holds now


class PartClaim(Protocol):
    def check(self) -> None:
        """Raise ``StoreError`` unless this writer still owns its part (before a commit point)."""

    def keep_alive(self) -> None:
        """Renew the claim of an idle writer before it could look stale."""

    def release(self) -> None: ...


def _busy(part: str, locks: Location, holder: dict | None = None) -> StoreError:
    # Claims live in "<store>.locks" beside the store: name the store the user gave.
    store = locks.with_name(locks.name.removesuffix(LOCKS_SUFFIX))
    held = ""
    heartbeat = (holder or {}).get("heartbeat")
    if isinstance(heartbeat, (int, float)):  # an object store's claim: say whose, and until when
        age = max(0.0, time.time() - heartbeat)
        held = (
            f" ({_describe(holder)}, heard from {age:.0f} s ago; if that writer is gone, its "
            f"claim lapses in {max(0.0, CLAIM_TTL_S - age) / 60:.0f} min)"
        )
    return StoreError(
        f"part {part!r} of {store} is being written by another process{held}; "
        "give each concurrent job its own --shard"
    )


# Descriptors of the flocks this process holds. A forked child (a DataLoader worker) shares
# each lock's open file, and the kernel keeps an flock until every copy is closed: a killed
# process's orphaned workers held its locks for seconds, and an immediate rerun was refused.
_LOCK_FDS: set[int] = set()


def _drop_locks_in_child() -> None:
    # /dev/null over each copy rather than close(): the child's file objects keep a valid
    # descriptor, and the number cannot be reused for another file under them.
    if not _LOCK_FDS:
        return
    null = os.open(os.devnull, os.O_RDONLY)
    for fd in _LOCK_FDS:
        with contextlib.suppress(OSError):
            os.dup2(null, fd)
    os.close(null)
    _LOCK_FDS.clear()


os.register_at_fork(after_in_child=_drop_locks_in_child)


# How long a lock taken by lock_fd is tried again before it counts as held. Readers asking
# whether a lock is held (parts_being_written, `vidfeat info`) take it shared for a moment;
# without this a writer starting just then was refused as if another writer had its part.
LOCK_PATIENCE_S = 0.5


def lock_fd(fd: int) -> None:
    """Take an exclusive flock on ``fd`` (``BlockingIOError`` when another process holds it
    for longer than :data:`LOCK_PATIENCE_S`), held by this process alone: forked children do
    not keep it. Call :func:`unlock_fd` before closing ``fd``."""
    deadline = time.monotonic() + LOCK_PATIENCE_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.01)
    _LOCK_FDS.add(fd)


def unlock_fd(fd: int) -> None:
    """Forget ``fd`` as a held lock (its number may be reused once it is closed)."""
    _LOCK_FDS.discard(fd)


def _locks_dir(store: Location) -> Location:
    return store.with_name(store.name + LOCKS_SUFFIX)


def claim_part(store: Location, part: str) -> PartClaim:
    """Claim ``part`` of the store at ``store`` for this writer, or raise ``StoreError``."""
    if isinstance(store, RemotePath):
        return ObjectClaim(_locks_dir(store) / f"{part}.claim", part)
    return FileLock(_locks_dir(store) / f"{part}.lock", part)


class FileLock:
    """An exclusive flock, released by the kernel when the process dies."""

    def __init__(self, path: Path, part: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "a+")  # noqa: SIM115 - held for the writer's lifetime
        try:
            lock_fd(self._fh.fileno())
        except BlockingIOError:
            self._fh.close()
            raise _busy(part, path.parent) from None
        try:
            self._fh.seek(0)
            self._fh.truncate()
            self._fh.write(f"{os.getpid()}\n")
            self._fh.flush()
        except OSError as exc:  # a full disk: the lock file has no room for the pid
            unlock_fd(self._fh.fileno())
            with contextlib.suppress(OSError):  # closing flushes the same pid again
                self._fh.close()
            raise StoreError(f"cannot write the lock file {path}; nothing was written") from exc

    def check(self) -> None:
        pass  # the kernel holds the lock until this process exits

    def keep_alive(self) -> None:
        pass

    def release(self) -> None:
        if not self._fh.closed:
            unlock_fd(self._fh.fileno())
        self._fh.close()


class ObjectClaim:
    """A claim object created with a conditional PUT; see the module docstring."""

    def __init__(self, url: RemotePath, part: str) -> None:
        self.url = url
        self.part = part
        self._fs, self._path = url.filesystem()
        self.token = uuid.uuid4().hex
        self._renewed = 0.0
        if not put_exclusive(self._fs, self._path, self._doc()):
            holder = self._read()
            if holder is not None and not _is_stale(holder):
                raise _busy(part, url.parent, holder)
            log.warning(
                "part %r: taking over the claim of a writer that is gone (%s)",
                part,
                _describe(holder),
            )
            # Read again just before deleting: a second rerun that judged the same claim stale
            # may have replaced it since, and its fresh claim must not be deleted.
            if self._read() != holder:
                raise _busy(part, url.parent)
            self._fs.rm_file(self._path)
            if not put_exclusive(self._fs, self._path, self._doc()):
                raise _busy(part, url.parent)  # another writer took it over first
        self._renewed = time.monotonic()
        _HELD_HERE.add(self.token)

    def _doc(self) -> bytes:
        return json.dumps(
            {
                "token": self.token,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "heartbeat": time.time(),
            }
        ).encode()

    def _read(self) -> dict | None:
        return _read_claim(self._fs, self._path)

    def check(self) -> None:
        holder = self._read()
        if holder is None or holder.get("token") != self.token:
            raise StoreError(
                f"part {self.part!r} of {self.url.parent}: this writer's claim was taken over "
                f"by {_describe(holder)}; nothing more is committed by this writer"
            )
        self._fs.pipe_file(self._path, self._doc())
        self._renewed = time.monotonic()

    def keep_alive(self) -> None:
        """Renew the heartbeat of an idle writer before it could look stale."""
        if time.monotonic() - self._renewed > CLAIM_TTL_S / 4:
            self.check()

    def release(self) -> None:
        _HELD_HERE.discard(self.token)
        holder = self._read()
        if holder is not None and holder.get("token") == self.token:
            self._fs.rm_file(self._path)


def _read_claim(fs: Any, path: str) -> dict | None:
    """A claim's document; None when there is none, {} when it is unreadable (treated as stale:
    its heartbeat is unknown)."""
    try:
        return json.loads(fs.cat_file(path))
    except FileNotFoundError:
        return None
    except ValueError:
        return {}


def _is_stale(holder: dict) -> bool:
    heartbeat = holder.get("heartbeat")
    if not isinstance(heartbeat, (int, float)) or time.time() - heartbeat > CLAIM_TTL_S:
        return True
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        if holder["pid"] == os.getpid():
            # This process's pid: either a claim it holds, or one left by an earlier process
            # that had the same pid (a container restarted on this host runs as pid 1 again).
            return holder.get("token") not in _HELD_HERE
        return not process_alive(holder["pid"])
    return False


def _describe(holder: dict | None) -> str:
    if not holder:
        return "an unknown writer"
    return f"pid {holder.get('pid')} on {holder.get('host')}"


def parts_being_written(store: Location) -> list[str]:
    """Parts of the store at ``store`` that a live writer holds now (sorted): readers see only
    what such a writer has committed so far. Locally, a lock some process holds; on object
    stores, a claim whose heartbeat is fresh."""
    locks = _locks_dir(store)
    if isinstance(locks, RemotePath):
        fs, folder = locks.filesystem()
        try:
            names = [n.rstrip("/").rsplit("/", 1)[-1] for n in fs.ls(folder, detail=False)]
        except FileNotFoundError:
            return []
        held = []
        for name in (n for n in names if n.endswith(".claim")):
            # Released meanwhile (None), or unreadable ({}, stale: a writer would take it over).
            holder = _read_claim(fs, f"{folder}/{name}")
            if isinstance(holder, dict) and not _is_stale(holder):
                held.append(name.removesuffix(".claim"))
        return sorted(held)
    held = []
    for lock in sorted(locks.glob("*.lock")) if locks.is_dir() else []:
        try:
            with open(lock) as fh:  # read-only: a reader never creates or changes a lock
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    held.append(lock.stem)
        except OSError:
            continue  # removed meanwhile
    return held
