"""Zarr v3 backend: one directory store, one group per writer part.

Commit protocol for a part: append every array (features, timestamps, means, table columns),
then rewrite the part's ``zarr.json`` attributes with the new committed counts. Zarr's local
store writes each file to a temporary name and renames it, so every chunk and every metadata
document is either the old or the new version. A writer killed mid-commit leaves rows beyond
the committed counts; readers ignore them and the next writer of that part truncates them.

Schema 2 chunks carry a CRC32C and every chunk is written, so reads check both the bytes and
that each chunk under the committed counts exists. Schema-1 parts (read, or appended to on
resume) keep zarr's default codecs and are not checked.
"""

from __future__ import annotations

import itertools
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec
from zarr.core.sync import sync

from vidfeat.errors import StoreError, StoreIntegrityError
from vidfeat.store.base import (
    BACKENDS,
    TABLE_DTYPES,
    Backend,
    PartReader,
    PartWriter,
    StoreMeta,
    VideoRecord,
    feature_array,
    frame_chunk_rows,
    mean_array,
)

ROOT_KEY = "vidfeat"
COMMIT_KEY = "vidfeat_commit"
TABLE_CHUNK_ROWS = 4096
TIMESTAMP_CHUNK_ROWS = 16384
# Schema 2: every chunk ends with a CRC32C of its compressed bytes, checked on every read.
CHECKSUMMED_CODECS = (ZstdCodec(level=0), Crc32cCodec())
# Schema 2 writes every chunk, even one that equals the fill value, so that "every chunk under
# the committed row count exists" holds and a missing chunk is an error instead of zeros.
WRITE_ALL_CHUNKS = {"write_empty_chunks": True}


def _zarr_dtype(kind: str) -> object:
    return str if kind == "str" else kind


def _array_specs(meta: StoreMeta) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], object]]:
    """Array path -> (empty shape, chunk shape, dtype) for every array of a part."""
    specs: dict[str, tuple[tuple[int, ...], tuple[int, ...], object]] = {}
    for name, spec in meta.streams.items():
        if meta.level == "frame":
            rows = frame_chunk_rows(spec.dim, np.dtype(spec.dtype).itemsize)
            specs[feature_array(name, meta.schema_version)] = (
                (0, spec.dim),
                (rows, spec.dim),
                spec.dtype,
            )
        mean_rows = max(16, frame_chunk_rows(spec.dim, 4))
        specs[mean_array(name, meta.schema_version)] = (
            (0, spec.dim),
            (mean_rows, spec.dim),
            "float32",
        )
    specs["timestamps_s"] = ((0,), (TIMESTAMP_CHUNK_ROWS,), "float64")
    for col, kind in TABLE_DTYPES.items():
        specs[col] = ((0,), (TABLE_CHUNK_ROWS,), _zarr_dtype(kind))
    return specs


class ZarrPartWriter(PartWriter):
    def __init__(self, group: zarr.Group, meta: StoreMeta) -> None:
        self.group = group
        self.meta = meta
        commit = dict(group.attrs.get(COMMIT_KEY, {"n_videos": 0, "n_frames": 0}))
        self.n_videos = int(commit["n_videos"])
        self.n_frames = int(commit["n_frames"])
        self.arrays = self._open_arrays()
        self._truncate_uncommitted()

    def _open_arrays(self) -> dict[str, zarr.Array]:
        arrays = {}
        for path, (shape, chunks, dtype) in _array_specs(self.meta).items():
            *parents, name = path.split("/")
            g = self.group
            for parent in parents:
                g = g.require_group(parent)
            if name in g:
                arr = g[name]
            elif self.meta.checksummed:
                arr = g.create_array(
                    name, shape=shape, chunks=chunks, dtype=dtype, compressors=CHECKSUMMED_CODECS
                )
            else:  # appending to a schema-1 store keeps its layout: zarr's default codecs
                arr = g.create_array(name, shape=shape, chunks=chunks, dtype=dtype)
            arrays[path] = arr.with_config(WRITE_ALL_CHUNKS) if self.meta.checksummed else arr
        return arrays

    def _truncate_uncommitted(self) -> None:
        # Rows past the committed counts belong to a commit that never finished.
        for name, arr in self.arrays.items():
            per_frame = name in ("timestamps_s", "features") or name.endswith("/features")
            n = self.n_frames if per_frame else self.n_videos
            if arr.shape[0] != n:
                arr.resize((n, *arr.shape[1:]))

    def _columns(self, records: list[VideoRecord]) -> dict[str, np.ndarray]:
        lengths = np.array([r.n_frames for r in records], dtype=np.int64)
        offsets = self.n_frames + np.concatenate([[0], np.cumsum(lengths)[:-1]])
        version = self.meta.schema_version
        columns: dict[str, np.ndarray] = {
            "timestamps_s": np.concatenate([r.timestamps_s for r in records]),
            "n_frames": lengths.astype(np.int32),
            "offset": offsets.astype(np.int64),
        }
        for stream in self.meta.streams:
            if self.meta.level == "frame":
                feats = [r.features[stream] for r in records]
                columns[feature_array(stream, version)] = np.concatenate(feats, axis=0)
            means = np.stack([r.means[stream] for r in records]).astype(np.float32)
            columns[mean_array(stream, version)] = means
        for col, kind in TABLE_DTYPES.items():
            if col not in columns:
                values = [r.table[col] for r in records]
                columns[col] = np.array(values, dtype=str if kind == "str" else kind)
        return columns

    def commit(self, records: list[VideoRecord]) -> None:
        if not records:
            return
        columns = self._columns(records)
        for name, values in columns.items():
            if len(values):
                self.arrays[name].append(values, axis=0)
        self.n_videos += len(records)
        self.n_frames += int(columns["n_frames"].sum())
        # The commit point: one atomic rewrite of this part's zarr.json.
        self.group.attrs[COMMIT_KEY] = {"n_videos": self.n_videos, "n_frames": self.n_frames}

    def close(self) -> None:
        pass


class ZarrPartReader(PartReader):
    def __init__(self, store: Path, name: str, group: zarr.Group, meta: StoreMeta) -> None:
        self.store = store
        self.name = self.label = name
        self.group = group
        self.meta = meta
        commit = group.attrs.get(COMMIT_KEY, {"n_videos": 0, "n_frames": 0})
        self.n_videos = int(commit["n_videos"])
        self.n_frames = int(commit["n_frames"])
        self._arrays: dict[str, zarr.Array] = {}

    def _fail(self, array: str, detail: str) -> StoreIntegrityError:
        return StoreIntegrityError(detail, store=self.store, part=self.name, array=array)

    def _array(self, name: str) -> zarr.Array:
        if name not in self._arrays:
            try:
                arr = self.group[name]
            except KeyError:
                raise self._fail(name, "the array is missing") from None
            if not isinstance(arr, zarr.Array):
                raise self._fail(name, "expected an array, found a group")
            if arr.shape[0] < self.rows(name):
                raise self._fail(name, f"{arr.shape[0]} rows, but {self.rows(name)} are committed")
            self._arrays[name] = arr
        return self._arrays[name]

    def table(self) -> dict[str, np.ndarray]:
        if self.n_videos == 0:  # a writer may still be creating the arrays of its first commit
            return {
                c: np.empty(0, dtype=object if k == "str" else k) for c, k in TABLE_DTYPES.items()
            }
        return super().table()

    def missing_chunks(self, array: str, start: int, stop: int) -> list[str]:
        """Keys of chunks under rows [start, stop) that are absent (schema 2 writes them all)."""
        arr = self._array(array)
        row_chunk = arr.chunks[0]
        col_chunks = [range(-(-n // c)) for n, c in zip(arr.shape[1:], arr.chunks[1:], strict=True)]
        missing = []
        for i in range(start // row_chunk, -(-stop // row_chunk)):
            for rest in itertools.product(*col_chunks):
                key = arr.metadata.encode_chunk_key((i, *rest))
                if not sync((arr.store_path / key).exists()):
                    missing.append(key)
        return missing

    def read_rows(self, array: str, start: int, stop: int) -> np.ndarray:
        arr = self._array(array)
        if stop > self.rows(array) or start > stop:
            raise self._fail(array, f"rows {start}:{stop} are outside the committed rows")
        if start == stop:
            return np.asarray(arr[0:0])
        if self.meta.checksummed:
            missing = self.missing_chunks(array, start, stop)
            if missing:
                raise self._fail(array, f"chunk(s) {', '.join(missing)} missing")
        try:
            return np.asarray(arr[start:stop])
        except Exception as exc:  # checksum mismatch, or bytes the codecs cannot decode
            raise self._fail(array, f"corrupt chunk under rows {start}:{stop} ({exc})") from exc

    def chunk_ranges(self, array: str) -> list[tuple[int, int]]:
        step, rows = self._array(array).chunks[0], self.rows(array)
        return [(i, min(i + step, rows)) for i in range(0, rows, step)]


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

    def iter_parts(self, meta: StoreMeta) -> Iterator[PartReader]:
        parts_dir = self.path / "parts"
        if not parts_dir.is_dir():
            return
        for child in sorted(parts_dir.iterdir()):
            if (child / "zarr.json").is_file():
                try:
                    group = zarr.open_group(child, mode="r", zarr_format=3)
                    reader = ZarrPartReader(self.path, child.name, group, meta)
                except (OSError, ValueError, TypeError, KeyError) as exc:
                    raise StoreIntegrityError(
                        f"unreadable part metadata ({exc})",
                        store=self.path,
                        part=child.name,
                        array="zarr.json",
                    ) from exc
                yield reader


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
