"""Zarr v3 backend: one directory store, one group per writer part.

Commit protocol for a part: append every array (features, timestamps, means, table columns),
then rewrite the part's ``zarr.json`` attributes with the new committed counts. Zarr's local
store writes each file to a temporary name and renames it, so every chunk and every metadata
document is either the old or the new version. A writer killed mid-commit leaves rows beyond
the committed counts; readers ignore them and the next writer of that part truncates them.

On an object store (any URL fsspec opens, through zarr's ``FsspecStore``) the same order holds:
every chunk and array document is one PUT, which S3 and GCS make atomic, and the part's group
document, the commit point, is written last. The root document is created with a conditional
PUT, so of two jobs creating a store at once exactly one writes it.

Schema 2 chunks carry a CRC32C and every chunk is written, so reads check both the bytes and
that each chunk under the committed counts exists. Schema-1 parts (read, or appended to on
resume) keep zarr's default codecs and are not checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec
from zarr.core.metadata import ArrayV3Metadata
from zarr.core.sync import sync
from zarr.errors import ContainsGroupError
from zarr.storage import FsspecStore, LocalStore, MemoryStore

from vidfeat import atomic
from vidfeat.errors import StoreError, StoreIntegrityError
from vidfeat.location import Location, RemotePath, put_exclusive
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
    layout_problem,
    mean_array,
)
from vidfeat.store.chunks import ChunkCache, ChunkError, FastChunks, fast_chunks

ROOT_KEY = "vidfeat"
COMMIT_KEY = "vidfeat_commit"
TABLE_CHUNK_ROWS = 4096
TIMESTAMP_CHUNK_ROWS = 16384
# Schema 2: every chunk ends with a CRC32C of its compressed bytes, checked on every read.
CHECKSUMMED_CODECS = (ZstdCodec(level=0), Crc32cCodec())
# Float frame features: zstd's fastest level, which stores incompressible blocks raw. At the
# default level float32 features shrink by about 7% and decode at about 1 GB/s, which bounded
# training reads; at level -1 they decode at memory speed. Any zstd reader reads either.
FLOAT_FRAME_CODECS = (ZstdCodec(level=-1), Crc32cCodec())
# Schema 2 writes every chunk, even one that equals the fill value, so that "every chunk under
# the committed row count exists" holds and a missing chunk is an error instead of zeros.
WRITE_ALL_CHUNKS = {"write_empty_chunks": True}


# The temporary name zarr's LocalStore writes a file under before renaming it.
_PARTIAL = re.compile(r".+\.[0-9a-f]{32}\.partial")


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


def _document_folders(meta: StoreMeta) -> set[str]:
    """Folders of a part that hold a document: the part, its groups and its arrays."""
    folders = {""}
    for path in _array_specs(meta):
        steps = path.split("/")
        folders.update("/".join(steps[:depth]) for depth in range(1, len(steps) + 1))
    return folders


class ZarrPartWriter(PartWriter):
    def __init__(self, group: zarr.Group, meta: StoreMeta) -> None:
        self.group = group
        self.meta = meta
        commit = dict(group.attrs.get(COMMIT_KEY, {"n_videos": 0, "n_frames": 0}))
        self.n_videos = int(commit["n_videos"])
        self.n_frames = int(commit["n_frames"])
        # zarr's local store writes each file under a temporary name and renames it; a writer
        # killed in between leaves "<name>.<hex>.partial" that nothing reads or removes. This
        # writer holds the part's lock, so none is another's write in progress. The documents
        # first (zarr warns about such files in a group it lists), then the chunks past the
        # committed rows: a commit writes no other chunk, and a part has thousands.
        self._sweep_partials(_document_folders(self.meta))
        self.arrays = self._open_arrays()
        self._sweep_partials(self._uncommitted_chunk_folders())
        self._truncate_uncommitted()

    def _open_arrays(self) -> dict[str, zarr.Array]:
        specs = _array_specs(self.meta)
        # The groups first, one by one: a group's document then exists before anything inside
        # it, and the listing below finds every array of a part whose making was interrupted.
        parents = {
            "/".join(path.split("/")[:depth])
            for path in specs
            for depth in range(1, path.count("/") + 1)
        }
        for parent in sorted(parents):  # "streams" before "streams/rgb"
            self.group.require_group(parent)
        # One listing finds what a resumed part already has; the missing arrays are made in
        # one concurrent batch. Array by array, zarr checks every ancestor on each create: a
        # new part took about 250 sequential requests on an object store, about 60 now.
        found = {
            path: node
            for path, node in self.group.members(max_depth=None)
            if path in specs and isinstance(node, zarr.Array)
        }
        missing = {
            path: self._metadata(path, *spec) for path, spec in specs.items() if path not in found
        }
        if missing:
            made = self.group.create_hierarchy(missing)
            found.update((path, node) for path, node in made if path in missing)
        if self.meta.checksummed:
            return {path: found[path].with_config(WRITE_ALL_CHUNKS) for path in specs}
        return {path: found[path] for path in specs}

    def _metadata(
        self, path: str, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: object
    ) -> ArrayV3Metadata:
        """The document ``create_array`` would write for this array, built in memory."""
        if not self.meta.checksummed:  # appending to a schema-1 store: zarr's default codecs
            codecs: object = "auto"
        elif np.dtype(dtype).kind == "f" and path in {
            feature_array(name, self.meta.schema_version) for name in self.meta.streams
        }:
            codecs = FLOAT_FRAME_CODECS
        else:
            codecs = CHECKSUMMED_CODECS
        template = zarr.create_array(
            MemoryStore(), shape=shape, chunks=chunks, dtype=dtype, compressors=codecs
        )
        return template.metadata

    def _committed_rows(self, array: str) -> int:
        per_frame = array in ("timestamps_s", "features") or array.endswith("/features")
        return self.n_frames if per_frame else self.n_videos

    def _truncate_uncommitted(self) -> None:
        # Rows past the committed counts belong to a commit that never finished.
        for name, arr in self.arrays.items():
            n = self._committed_rows(name)
            if arr.shape[0] != n:
                arr.resize((n, *arr.shape[1:]))

    def _uncommitted_chunk_folders(self) -> set[str]:
        folders = set()
        for name, arr in self.arrays.items():
            rows = arr.chunks[0]
            for i in range(self._committed_rows(name) // rows, -(-arr.shape[0] // rows)):
                key = arr.metadata.encode_chunk_key((i,) + (0,) * (arr.ndim - 1))
                folders.add(f"{name}/{key}".rsplit("/", 1)[0])
        return folders

    def _sweep_partials(self, folders: set[str]) -> None:
        """Remove zarr's temporary files in these folders of the part (local stores only:
        object stores write whole objects, without temporary names)."""
        store = self.group.store
        if not isinstance(store, LocalStore):
            return
        part = Path(store.root) / self.group.path
        for folder in folders:
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                for entry in os.scandir(part / folder):
                    if _PARTIAL.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(entry.path)

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

    def commit(self, records: list[VideoRecord], fence: Callable[[], None] = lambda: None) -> None:
        if not records:
            return
        columns = self._columns(records)
        # Every array at once: on an object store each append is a few requests (its document,
        # its last chunk), and one after another they made a commit wait on ~70 round trips.
        appends = [
            self.arrays[name].async_array.append(values, axis=0)
            for name, values in columns.items()
            if len(values)
        ]

        async def append_all() -> list[object]:
            # Let every append finish before a failure is raised: none may still be writing
            # while the caller handles it.
            return await asyncio.gather(*appends, return_exceptions=True)

        for outcome in sync(append_all()):
            if isinstance(outcome, BaseException):
                raise outcome
        n_videos = self.n_videos + len(records)
        n_frames = self.n_frames + int(columns["n_frames"].sum())
        fence()
        # The commit point: one atomic rewrite of this part's zarr.json.
        self.group.attrs[COMMIT_KEY] = {"n_videos": n_videos, "n_frames": n_frames}
        self.n_videos, self.n_frames = n_videos, n_frames

    def close(self) -> None:
        pass


class ZarrPartReader(PartReader):
    def __init__(self, store: Location, name: str, group: zarr.Group, meta: StoreMeta) -> None:
        self.store = store
        self.name = self.label = name
        self.group = group
        self.meta = meta
        commit = group.attrs.get(COMMIT_KEY, {"n_videos": 0, "n_frames": 0})
        self.n_videos = int(commit["n_videos"])
        self.n_frames = int(commit["n_frames"])
        self._arrays: dict[str, zarr.Array] = {}
        self._listed: dict[str, set[str]] = {}
        self._cache = ChunkCache(0)
        self._fast: dict[str, FastChunks | None] = {}

    def use_cache(self, cache: ChunkCache) -> None:
        self._cache = cache
        self._fast.clear()

    def _fast_reader(self, name: str) -> FastChunks | None:
        if name not in self._fast:
            arr = self._array(name)
            ok = self.meta.checksummed
            self._fast[name] = fast_chunks(arr, self._cache, (self.name, name)) if ok else None
        return self._fast[name]

    def _fail(self, array: str, detail: str) -> StoreIntegrityError:
        return StoreIntegrityError(detail, store=self.store, part=self.name, array=array)

    def _array(self, name: str) -> zarr.Array:
        if name not in self._arrays:
            try:
                arr = self.group[name]
            except KeyError:
                raise self._fail(name, "the array is missing") from None
            except (OSError, ValueError, TypeError) as exc:
                # A damaged array document: zarr raises JSON, Unicode, codec and metadata
                # validation errors for it, all ValueErrors.
                raise self._fail(name, f"unreadable array metadata ({exc})") from exc
            if not isinstance(arr, zarr.Array):
                raise self._fail(name, "expected an array, found a group")
            if arr.shape[0] < self.rows(name):
                raise self._fail(name, f"{arr.shape[0]} rows, but {self.rows(name)} are committed")
            if problem := layout_problem(self.meta, name, arr.shape, arr.dtype):
                raise self._fail(name, problem)
            codecs = arr.metadata.codecs
            if self.meta.checksummed and not (codecs and isinstance(codecs[-1], Crc32cCodec)):
                # Rewritten by another tool: nothing would catch a damaged chunk of it.
                raise self._fail(name, "its chunks carry no CRC32C, which schema 2 requires")
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
        listed = self._listed_chunks(array, arr)
        missing = []
        for i in range(start // row_chunk, -(-stop // row_chunk)):
            for rest in itertools.product(*col_chunks):
                key = arr.metadata.encode_chunk_key((i, *rest))
                exists = (arr.store_path / key).exists
                if not (key in listed if listed is not None else sync(exists())):
                    missing.append(key)
        return missing

    def _listed_chunks(self, name: str, arr: zarr.Array) -> set[str] | None:
        """On an object store, the array's chunk keys from one listing, instead of a request
        per chunk and read. The listing is a snapshot, like the reader: every chunk under the
        committed rows was written before the commit it belongs to."""
        if not isinstance(arr.store_path.store, FsspecStore):
            return None
        if name not in self._listed:
            prefix = f"{arr.store_path.path}/"

            async def keys() -> set[str]:
                return {k[len(prefix) :] async for k in arr.store_path.store.list_prefix(prefix)}

            self._listed[name] = sync(keys())
        return self._listed[name]

    def _checked_fast(self, array: str, start: int, stop: int) -> FastChunks | None:
        """The direct chunk reader for rows [start, stop) of ``array`` (bounds checked), or
        None when zarr's own path reads it."""
        if stop > self.rows(array) or start > stop:
            raise self._fail(array, f"rows {start}:{stop} are outside the committed rows")
        return self._fast_reader(array) if start < stop else None

    def row_pieces(self, array: str, start: int, stop: int) -> Iterator[tuple[int, np.ndarray]]:
        fast = self._checked_fast(array, start, stop)
        if fast is None:
            yield from super().row_pieces(array, start, stop)
            return
        try:
            yield from fast.pieces(start, stop)
        except ChunkError as exc:
            raise self._fail(array, f"{exc} (rows {start}:{stop})") from exc

    def read_rows(self, array: str, start: int, stop: int) -> np.ndarray:
        arr = self._array(array)
        fast = self._checked_fast(array, start, stop)
        if start == stop:
            return np.asarray(arr[0:0])
        if fast is not None:
            try:
                return fast.rows(start, stop)
            except ChunkError as exc:
                raise self._fail(array, f"{exc} (rows {start}:{stop})") from exc
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

    def __init__(self, path: Location) -> None:
        super().__init__(path)
        self._remote = _Remote(path) if isinstance(path, RemotePath) else None

    def exists(self) -> bool:
        if self._remote:
            return self._remote.exists("zarr.json")
        return (self.path / "zarr.json").is_file()

    def create_root(self, meta: StoreMeta) -> None:
        if self._remote:
            self._remote.create_root(meta)
            return
        if self.exists():
            return
        # Not empty: another shard's store (made since the check above), or something else.
        if self.path.exists() and any(self.path.iterdir()) and not self.exists():
            raise StoreError(f"{self.path} exists and is not a vidfeat store; choose another path")
        # Build the root under a temporary name and rename it: a store directory either has
        # complete root metadata or does not exist. Losing the race to another shard is fine.
        tmp = atomic.temp_name(self.path)
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
            if self._remote:
                doc = json.loads(self._remote.read("zarr.json"))
            else:
                doc = json.loads((self.path / "zarr.json").read_text())
            return StoreMeta.from_json(doc["attributes"][ROOT_KEY])
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise StoreError(f"{self.path} is not a readable vidfeat Zarr store: {exc}") from exc

    def _group(self, sub: str, mode: str) -> zarr.Group:
        if self._remote:
            return zarr.open_group(self._remote.zarr_store(), path=sub, mode=mode, zarr_format=3)
        return zarr.open_group(self.path / sub, mode=mode, zarr_format=3)

    def open_part_writer(self, part: str, meta: StoreMeta) -> PartWriter:
        try:
            parts = self._group("parts", "a")
        except ContainsGroupError:  # another shard made it between zarr's check and create
            parts = self._group("parts", "r+")
        group = parts[part] if part in parts else parts.create_group(part)
        return ZarrPartWriter(group, meta)

    def _part_names(self) -> list[str]:
        if self._remote:
            return self._remote.children("parts")
        parts_dir = self.path / "parts"
        if not parts_dir.is_dir():
            return []
        return sorted(c.name for c in parts_dir.iterdir() if c.is_dir())

    def iter_parts(
        self, meta: StoreMeta, damage: list[StoreIntegrityError] | None = None
    ) -> Iterator[PartReader]:
        for name in self._part_names():
            try:
                group = self._group(f"parts/{name}", "r")
                reader = ZarrPartReader(self.path, name, group, meta)
            except FileNotFoundError:
                # A folder without its part document. ``create_group`` writes the document
                # first, so this is an emptied folder (an object store's has no folder left),
                # a writer killed at that instant, or a lost document: the last only if the
                # folder holds anything. Readers skip it; verify says what it holds.
                if damage is not None and self._holds_files(f"parts/{name}"):
                    damage.append(
                        StoreIntegrityError(
                            "the part's zarr.json is missing, so its arrays cannot be read",
                            store=self.path,
                            part=name,
                            array="zarr.json",
                        )
                    )
                continue
            except (OSError, ValueError, TypeError, KeyError) as exc:
                error = StoreIntegrityError(
                    f"unreadable part metadata ({exc})",
                    store=self.path,
                    part=name,
                    array="zarr.json",
                )
                if damage is None:
                    raise error from exc
                damage.append(error)
                continue
            yield reader

    def _holds_files(self, prefix: str) -> bool:
        """Whether anything is stored under ``prefix`` (a part's folder) but zarr's temporary
        files (``*.partial``: a writer killed, or busy, writing the part's first document)."""
        if self._remote:  # object stores write whole objects: no temporary names
            return bool(self._remote.children(prefix))
        return any(p.is_file() and p.suffix != ".partial" for p in (self.path / prefix).rglob("*"))


# s3fs asks for an object's size (a HEAD request) before every whole-object read, to split
# objects larger than its block size into concurrent range reads. Zarr's objects are metadata
# documents and chunks of at most a few MB, so without this every read was two requests.
_CHUNK_FS_OPTIONS: dict[str, dict[str, object]] = {
    "s3": {"max_concurrency": 1},
    "s3a": {"max_concurrency": 1},
}


class _Remote:
    """The Zarr store's root on an object store: a few whole-object reads and writes."""

    def __init__(self, url: RemotePath) -> None:
        self.url = url
        self.fs, self.root = url.filesystem()
        self._zarr_store: FsspecStore | None = None

    def exists(self, key: str) -> bool:
        return self.fs.exists(f"{self.root}/{key}")

    def read(self, key: str) -> bytes:
        return self.fs.cat_file(f"{self.root}/{key}")

    def children(self, key: str) -> list[str]:
        """Names directly under ``key``: one listing request."""
        try:
            entries = self.fs.ls(f"{self.root}/{key}", detail=False)
        except FileNotFoundError:
            return []
        return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in entries if not e.endswith(".json"))

    def zarr_store(self) -> FsspecStore:
        if self._zarr_store is None:
            options = {**self.url.fs_options, **_CHUNK_FS_OPTIONS.get(self.url.scheme, {})}
            self._zarr_store = FsspecStore.from_url(str(self.url), storage_options=options)
        return self._zarr_store

    def create_root(self, meta: StoreMeta) -> None:
        if self.exists("zarr.json"):
            return
        try:
            occupied = bool(self.fs.ls(self.root, detail=False))
        except FileNotFoundError:
            occupied = False
        if occupied and not self.exists("zarr.json"):  # not another shard's root made just now
            raise StoreError(f"{self.url} exists and is not a vidfeat store; choose another path")
        # A complete zarr v3 group document in one conditional PUT: readers see the root whole
        # or not at all, and of two jobs creating the store the second keeps the first's.
        doc = {"zarr_format": 3, "node_type": "group", "attributes": {ROOT_KEY: meta.to_json()}}
        put_exclusive(self.fs, f"{self.root}/zarr.json", json.dumps(doc).encode())


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
