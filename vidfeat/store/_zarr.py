"""Zarr v3 backend: one directory store, one group per writer part.

Commit protocol for a part: append every array (features, timestamps, means, table columns),
then rewrite the part's ``zarr.json`` attributes with the new committed counts. Zarr's local
store writes each file to a temporary name and renames it, so every chunk and every metadata
document is either the old or the new version. A writer killed mid-commit leaves rows beyond
the committed counts; readers ignore them and the next writer of that part truncates them.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import zarr

from vidfeat.errors import StoreError
from vidfeat.store.base import (
    BACKENDS,
    TABLE_DTYPES,
    Backend,
    PartReader,
    PartWriter,
    StoreMeta,
    VideoRecord,
    frame_chunk_rows,
)

ROOT_KEY = "vidfeat"
COMMIT_KEY = "vidfeat_commit"
TABLE_CHUNK_ROWS = 4096
TIMESTAMP_CHUNK_ROWS = 16384


def _zarr_dtype(kind: str) -> object:
    return str if kind == "str" else kind


class ZarrPartWriter(PartWriter):
    def __init__(self, group: zarr.Group, meta: StoreMeta) -> None:
        self.group = group
        commit = dict(group.attrs.get(COMMIT_KEY, {"n_videos": 0, "n_frames": 0}))
        self.n_videos = int(commit["n_videos"])
        self.n_frames = int(commit["n_frames"])
        self.arrays = self._open_arrays(meta)
        self._truncate_uncommitted()

    def _open_arrays(self, meta: StoreMeta) -> dict[str, zarr.Array]:
        g = self.group
        specs: dict[str, tuple[tuple[int, ...], tuple[int, ...], object]] = {
            "features": (
                (0, meta.dim),
                (frame_chunk_rows(meta.dim, np.dtype(meta.dtype).itemsize), meta.dim),
                meta.dtype,
            ),
            "timestamps_s": ((0,), (TIMESTAMP_CHUNK_ROWS,), "float64"),
            "mean": ((0, meta.dim), (max(16, frame_chunk_rows(meta.dim, 4)), meta.dim), "float32"),
        }
        for col, kind in TABLE_DTYPES.items():
            specs[col] = ((0,), (TABLE_CHUNK_ROWS,), _zarr_dtype(kind))
        arrays = {}
        for name, (shape, chunks, dtype) in specs.items():
            if name in g:
                arrays[name] = g[name]
            else:
                arrays[name] = g.create_array(name, shape=shape, chunks=chunks, dtype=dtype)
        return arrays

    def _truncate_uncommitted(self) -> None:
        # Rows past the committed counts belong to a commit that never finished.
        for name, arr in self.arrays.items():
            n = self.n_frames if name in ("features", "timestamps_s") else self.n_videos
            if arr.shape[0] != n:
                arr.resize((n, *arr.shape[1:]))

    def commit(self, records: list[VideoRecord]) -> None:
        if not records:
            return
        feats = np.concatenate([r.features for r in records], axis=0)
        stamps = np.concatenate([r.timestamps_s for r in records])
        lengths = np.array([len(r.features) for r in records], dtype=np.int64)
        offsets = self.n_frames + np.concatenate([[0], np.cumsum(lengths)[:-1]])
        columns: dict[str, np.ndarray] = {
            "features": feats,
            "timestamps_s": stamps,
            "mean": np.stack([r.mean for r in records]).astype(np.float32),
            "n_frames": lengths.astype(np.int32),
            "offset": offsets.astype(np.int64),
        }
        for col, kind in TABLE_DTYPES.items():
            if col not in columns:
                values = [r.table[col] for r in records]
                columns[col] = np.array(values, dtype=str if kind == "str" else kind)
        for name, values in columns.items():
            if len(values):
                self.arrays[name].append(values, axis=0)
        self.n_videos += len(records)
        self.n_frames += int(lengths.sum())
        # The commit point: one atomic rewrite of this part's zarr.json.
        self.group.attrs[COMMIT_KEY] = {"n_videos": self.n_videos, "n_frames": self.n_frames}

    def close(self) -> None:
        pass


class ZarrPartReader(PartReader):
    def __init__(self, name: str, group: zarr.Group) -> None:
        self.name = name
        self.group = group
        commit = group.attrs.get(COMMIT_KEY, {"n_videos": 0, "n_frames": 0})
        self.n_videos = int(commit["n_videos"])
        self.n_frames = int(commit["n_frames"])
        self._arrays: dict[str, zarr.Array] = {}

    def _array(self, name: str) -> zarr.Array:
        if name not in self._arrays:
            self._arrays[name] = self.group[name]
        return self._arrays[name]

    def table(self) -> dict[str, np.ndarray]:
        if self.n_videos == 0:
            return {
                c: np.empty(0, dtype=object if k == "str" else k) for c, k in TABLE_DTYPES.items()
            }
        return {c: np.asarray(self._array(c)[: self.n_videos]) for c in TABLE_DTYPES}

    def frames(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self._array("features")[start:stop])

    def timestamps(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self._array("timestamps_s")[start:stop])

    def means(self, rows: np.ndarray) -> np.ndarray:
        arr = self._array("mean")
        if len(rows) == 0:
            return np.empty((0, arr.shape[1]), dtype=np.float32)
        lo, hi = int(rows.min()), int(rows.max()) + 1
        return np.asarray(arr[lo:hi])[np.asarray(rows) - lo]


@BACKENDS.register("zarr")
class ZarrBackend(Backend):
    name = "zarr"
    suffixes = (".zarr",)

    def exists(self) -> bool:
        return (self.path / "zarr.json").is_file()

    def create_root(self, meta: StoreMeta) -> None:
        if self.exists():
            return
        if self.path.exists() and any(self.path.iterdir()):
            raise StoreError(f"{self.path} exists and is not a vidfeat store; choose another path")
        # Build the root under a temporary name and rename it: a store directory either has
        # complete root metadata or does not exist. Losing the race to another shard is fine.
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.tmp")
        root = zarr.open_group(tmp, mode="w-", zarr_format=3)
        root.attrs[ROOT_KEY] = meta.to_json()
        root.create_group("parts")
        try:
            if self.path.exists():  # an empty directory made by the user
                self.path.rmdir()
            os.rename(tmp, self.path)
        except OSError:
            _rmtree(tmp)
            if not self.exists():
                raise

    def read_meta(self) -> StoreMeta:
        try:
            doc = json.loads((self.path / "zarr.json").read_text())
            return StoreMeta.from_json(doc["attributes"][ROOT_KEY])
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise StoreError(f"{self.path} is not a readable vidfeat Zarr store: {exc}") from exc

    def open_part_writer(self, part: str, meta: StoreMeta) -> PartWriter:
        parts = zarr.open_group(self.path / "parts", mode="a", zarr_format=3)
        group = parts[part] if part in parts else parts.create_group(part)
        return ZarrPartWriter(group, meta)

    def iter_parts(self) -> Iterator[PartReader]:
        parts_dir = self.path / "parts"
        if not parts_dir.is_dir():
            return
        for child in sorted(parts_dir.iterdir()):
            if (child / "zarr.json").is_file():
                group = zarr.open_group(child, mode="r", zarr_format=3)
                yield ZarrPartReader(child.name, group)


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
