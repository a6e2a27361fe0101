"""Which TFRecord files to read: PATHS (files, directories, globs; local or remote) -> files."""

from __future__ import annotations

import dataclasses
import os
import posixpath
from collections.abc import Sequence

from fsspec.core import url_to_fs

from vidfeat.config import shard_of
from vidfeat.errors import ConfigError

# YouTube-8M names its files <split><NNNN>.tfrecord.
SPLIT_PREFIXES = ("train", "validate", "test")
TFRECORD_SUFFIX = ".tfrecord"
_GLOB_CHARS = frozenset("*?[")


@dataclasses.dataclass(frozen=True)
class SourceFile:
    """One input file. ``url`` is fully qualified (``file:///...``, ``gs://...``)."""

    url: str
    size: int | None = None

    @property
    def name(self) -> str:
        return posixpath.basename(self.url.rstrip("/"))


def split_from_name(name: str) -> str | None:
    """``train``, ``validate`` or ``test`` from a file name such as ``validate0123.tfrecord``."""
    base = posixpath.basename(name).lower()
    return next((s for s in SPLIT_PREFIXES if base.startswith(s)), None)


def store_split(yt8m_split: str, video_id: str) -> str:
    """The store's split for a video of a YouTube-8M split.

    ``train`` stays ``train``. Google's ``validate`` files are cut in two by a hash of the video
    id (stable whatever the file order): half ``val``, half ``test``, so the held-out sets have
    labels. ``test`` files have no public labels and land in ``test``, for prediction.
    """
    if yt8m_split == "validate":
        return "val" if shard_of(video_id, 2) == 0 else "test"
    if yt8m_split in ("train", "test"):
        return yt8m_split
    raise ConfigError(f"unknown YouTube-8M split {yt8m_split!r}; use one of {SPLIT_PREFIXES}")


_FILE_SCHEME = "file://"


def _expand_one(path: str) -> list[SourceFile]:
    fs, stripped = url_to_fs(path)
    if _GLOB_CHARS & set(stripped):
        found = [p for p in fs.glob(stripped) if fs.isfile(p)]
    elif fs.isdir(stripped):
        found = [p for p in fs.find(stripped) if p.endswith(TFRECORD_SUFFIX)]
    elif fs.isfile(stripped):
        found = [stripped]
    else:
        raise ConfigError(f"no such file or directory: {path}")
    if not found:
        raise ConfigError(f"{path} matches no TFRecord files")
    out = []
    for p in found:
        info = fs.info(p)
        out.append(SourceFile(canonical_url(fs.unstrip_protocol(p)), info.get("size")))
    return out


def canonical_url(url: str) -> str:
    """A local file's URL with its folder's real path: the URL is the resume key, and "data//x",
    "a/../data/x" and a symlinked folder name one file, which a rerun must not read again as
    new videos. The file name stays as given (a link's name may say its split, where its
    target is a content hash); other URLs are returned as they are."""
    if not url.startswith(_FILE_SCHEME):
        return url
    path = url[len(_FILE_SCHEME) :]
    folder, name = os.path.split(path)
    return _FILE_SCHEME + os.path.join(os.path.realpath(folder or "."), name)


def expand_paths(paths: Sequence[str]) -> list[SourceFile]:
    """Every file PATHS name, sorted by URL, each once."""
    if not paths:
        raise ConfigError("give at least one TFRecord file, directory or glob")
    files: dict[str, SourceFile] = {}
    for path in paths:
        for f in _expand_one(str(path)):
            files.setdefault(f.url, f)
    return [files[url] for url in sorted(files)]
