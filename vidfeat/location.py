"""Where stores and videos live: a local path, or a URL that fsspec opens (``s3://``, ``gs://``).

Credentials and endpoints are never part of a URL: they come from the environment and config
files the filesystem library reads itself (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``~/.aws/``, ``FSSPEC_S3_*`` variables and fsspec's ``~/.config/fsspec/``). A URL with a user or
password in it is refused, so no secret reaches a log, a store attr or a run's config.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import logging
import os
import posixpath
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from vidfeat.errors import ConfigError

URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# Listing caches make a process miss objects another process wrote since (a part, a claim).
_FS_OPTIONS: dict[str, dict[str, Any]] = {
    "s3": {"use_listings_cache": False},
    "s3a": {"use_listings_cache": False},
    "gs": {"use_listings_cache": False},
    "gcs": {"use_listings_cache": False},
}
# A remote video is copied to a local temporary file before decoding (decord needs a path);
# larger objects are refused rather than filling the worker's disk.
MAX_FETCH_BYTES = 8 << 30
FETCH_BLOCK = 8 << 20


# Object-store client libraries that report routine steps at INFO ("Found credentials in
# environment variables", on every command) and every request at DEBUG: warnings only, unless
# the command runs at -vv (below DEBUG), where everything is wanted.
CLIENT_LOGGERS = ("botocore", "aiobotocore", "s3fs", "gcsfs", "google.auth", "urllib3")


def quiet_client_logs(level: int) -> None:
    """Set the object-store clients' loggers for a process logging at ``level``."""
    for name in CLIENT_LOGGERS:
        client = logging.getLogger(name)
        client.setLevel(logging.NOTSET if level < logging.DEBUG else logging.WARNING)


def is_url(path: object) -> bool:
    """Whether ``path`` is a URL (``scheme://...``) rather than a local path."""
    return isinstance(path, (str, RemotePath)) and bool(URL_RE.match(str(path)))


@dataclasses.dataclass(frozen=True)
class RemotePath:
    """A URL with the few path operations the store needs (``name``, ``suffix``, ``/``)."""

    url: str

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if "@" in parts.netloc:
            raise ConfigError(
                f"{parts.scheme}:// URLs must not carry credentials; set them in the "
                "environment or the filesystem's config files instead"
            )
        if parts.query or parts.fragment:
            raise ConfigError(f"store and video URLs take no query or fragment: {self}")
        object.__setattr__(self, "url", self.url.rstrip("/"))

    @property
    def scheme(self) -> str:
        return self.url.split("://", 1)[0].lower()

    @property
    def _key(self) -> str:
        return self.url.split("://", 1)[1]

    @property
    def name(self) -> str:
        return posixpath.basename(self._key)

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.name).suffix

    @property
    def parent(self) -> RemotePath:
        return RemotePath(f"{self.scheme}://{posixpath.dirname(self._key)}")

    def with_name(self, name: str) -> RemotePath:
        return self.parent / name

    def __truediv__(self, child: str) -> RemotePath:
        return RemotePath(f"{self.url}/{child}")

    def __str__(self) -> str:
        return self.url

    @property
    def fs_options(self) -> dict[str, Any]:
        return dict(_FS_OPTIONS.get(self.scheme, {}))

    def filesystem(self) -> tuple[Any, str]:
        """The fsspec filesystem and the path within it (fsspec caches the instances)."""
        from fsspec.core import url_to_fs

        try:
            return url_to_fs(self.url, **self.fs_options)
        except ImportError as exc:  # e.g. s3fs not installed
            raise ConfigError(
                f"cannot open {self.scheme}:// URLs: {exc}; install vidfeat[{self.scheme}]"
            ) from exc
        except ValueError as exc:  # an unknown protocol
            raise ConfigError(f"cannot open {self}: {exc}") from exc


Location = Path | RemotePath


def as_location(path: str | os.PathLike | RemotePath) -> Location:
    """A ``RemotePath`` for a URL, else a local ``Path`` (``~`` expanded)."""
    if isinstance(path, RemotePath):
        return path
    if is_url(path):
        return RemotePath(str(path))
    try:
        return Path(path).expanduser()
    except RuntimeError:  # "~name..." naming no user: a file or folder called that
        return Path(path)


def put_exclusive(fs: Any, path: str, data: bytes) -> bool:
    """Write ``data`` to ``path`` only if nothing is there; False if an object already was.

    S3 (s3fs) sends ``If-None-Match: *``, so the check and the write are one atomic request.
    Other filesystems fall back to check-then-write, which two racing writers can both pass.
    """
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    if "s3" in protocols:
        try:
            fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        except OSError as exc:  # s3fs maps 412 Precondition Failed to a plain OSError
            if "PreconditionFailed" in str(exc) or "412" in str(exc):
                return False
            raise
        return True
    if fs.exists(path):
        return False
    fs.pipe_file(path, data)
    return True


@contextlib.contextmanager
def local_copy(
    url: str, max_bytes: int = MAX_FETCH_BYTES, directory: str | None = None
) -> Iterator[Path]:
    """A temporary local copy of the object at ``url``, under its own name in a new folder
    of ``directory`` (the system's temporary folder by default), removed on exit. The folder's
    name starts with this process's pid, so that whoever kills the process (a decode pool) can
    remove what it leaves.

    Raises ``FileNotFoundError`` for a missing object, ``IsADirectoryError`` for a prefix (which
    would otherwise read as an empty file) and ``OSError`` for one over ``max_bytes``.
    """
    remote = RemotePath(url)
    fs, path = remote.filesystem()
    info = fs.info(path)
    if info.get("type") == "directory":
        raise IsADirectoryError(f"{url} is a prefix (a directory), not a video object")
    size = info.get("size")
    if size is not None and size > max_bytes:
        raise OSError(f"{remote.name} is {size} bytes, over the {max_bytes}-byte fetch limit")
    folder = tempfile.mkdtemp(prefix=f"{os.getpid()}-vidfeat-", dir=directory)
    try:
        copy = Path(folder) / _local_name(remote)
        with open(copy, "wb") as out, fs.open(path, "rb") as src:
            copied = 0
            while block := src.read(FETCH_BLOCK):
                copied += len(block)
                if copied > max_bytes:
                    raise OSError(f"{remote.name} is over the {max_bytes}-byte fetch limit")
                out.write(block)
        yield copy
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# A decode pool's folder for its workers' URL copies: "vidfeat-pool-<host>-<pid>-<random>".
_COPY_FOLDER_PREFIX = "vidfeat-pool-"


def new_copy_folder() -> str:
    """A folder for the copies this process's decode workers make (``local_copy``'s
    ``directory``), after removing those of pools on this host whose process died (a job
    killed with SIGKILL takes its workers along, before they could clean up). Only folders
    named for this host are judged: a temporary folder shared by several machines (NFS) holds
    other hosts' pids too."""
    from vidfeat.signals import process_alive

    mine = f"{_COPY_FOLDER_PREFIX}{socket.gethostname()}-"
    for stale in Path(tempfile.gettempdir()).glob(f"{glob.escape(mine)}*"):
        pid = stale.name.removeprefix(mine).split("-", 1)[0]
        if pid.isdigit() and not process_alive(int(pid)):
            remove_copy_folder(str(stale))
    return tempfile.mkdtemp(prefix=f"{mine}{os.getpid()}-")


def remove_copies(folder: str, pid: int | None) -> None:
    """What process ``pid`` copied into ``folder`` (``local_copy`` names its folders by pid)."""
    for copy in Path(folder).glob(f"{pid}-*"):
        shutil.rmtree(copy, ignore_errors=True)


def remove_copy_folder(folder: str) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def _local_name(remote: RemotePath) -> str:
    # The object's own name, which messages and suffix-based probing see; a placeholder where
    # that name cannot be a file name here ("..", or too long for the filesystem).
    name = remote.name
    if name in ("", ".", "..") or len(name.encode()) > 200:
        return f"video{remote.suffix if len(remote.suffix) < 20 else ''}"
    return name


def canonical(path: str | os.PathLike | RemotePath) -> str:
    """One spelling per location, for provenance and comparisons: a URL, or an absolute path."""
    location = as_location(path)
    return str(location if isinstance(location, RemotePath) else location.resolve())
