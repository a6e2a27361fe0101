"""HDF5 backend: a root file plus immutable segment files.

HDF5 cannot be safely appended in place: a writer killed between flushes leaves a file that
no longer opens. So every commit is a new *segment*: a complete small HDF5 file written under a
temporary name, closed, fsynced and renamed into ``<store>.parts/``. A segment is either fully
there or absent. The root file ``<store>`` holds the metadata and is itself written the same way.

On an object store (any URL fsspec opens) a segment is one conditional PUT of its final name
(``If-None-Match: *`` on S3): it appears whole or not at all, and a second writer of the same
segment number is refused instead of replacing it. Segments are read through fsspec file
objects, which h5py reads like local files.
"""

from __future__ import annotations

import errno
import io
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import google_crc32c
import h5py
import numpy as np

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

ROOT_ATTR = "vidfeat"
SEGMENT_ATTR = "vidfeat_segment"
SEGMENT_RE = re.compile(r"^(?P<part>.+)\.(?P<seq>\d{8})\.h5$")
_STR = h5py.string_dtype("utf-8")
ROWS_PER_CHUNK = 4096  # per-video arrays and timestamps
# Schema-2 segments written since the chunk checksums came: on each chunked dataset, a uint32
# CRC32C per chunk (in row order) of its stored bytes. Older segments lack it.
CHUNK_CRC_ATTR = "vidfeat_chunk_crc32c"


def _list_names(folder: Location) -> list[str]:
    """File names directly in ``folder`` (one listing request on an object store)."""
    if isinstance(folder, RemotePath):
        fs, path = folder.filesystem()
        try:
            return [e.rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(path, detail=False)]
        except FileNotFoundError:
            return []
    return [p.name for p in folder.iterdir()] if folder.is_dir() else []


def _open_h5(path: Location) -> h5py.File:
    if isinstance(path, RemotePath):
        fs, key = path.filesystem()
        return h5py.File(fs.open(key, "rb"), "r")
    return h5py.File(path, "r")


def _open_root(path: Location) -> h5py.File:
    """The root file, which holds only attributes: on an object store its bytes are fetched
    whole (one GET), so HDF5 never calls back into the object store's client while it parses,
    which in concurrent shard writers was seen to hang on the client's event loop."""
    if isinstance(path, RemotePath):
        fs, key = path.filesystem()
        return h5py.File(io.BytesIO(fs.cat_file(key)), "r")
    return h5py.File(path, "r")


def _put_new(final: RemotePath, image: bytes) -> None:
    fs, key = final.filesystem()
    if not put_exclusive(fs, key, image):
        raise StoreError(f"{final} was written by another writer of this part; rerun to resume")


class HDF5PartWriter(PartWriter):
    def __init__(self, parts_dir: Location, part: str, meta: StoreMeta) -> None:
        self.parts_dir = parts_dir
        self.part = part
        self.meta = meta
        names = _list_names(parts_dir)
        seqs = [
            int(m["seq"]) for m in (SEGMENT_RE.match(n) for n in names) if m and m["part"] == part
        ]
        self.next_seq = max(seqs, default=-1) + 1
        # Leftovers of a writer killed before its rename are garbage, never data.
        if isinstance(parts_dir, Path):
            atomic.sweep_temps(parts_dir, [part])

    def commit(self, records: list[VideoRecord], fence: Callable[[], None] = lambda: None) -> None:
        if not records:
            return
        final = self.parts_dir / f"{self.part}.{self.next_seq:08d}.h5"
        # Build the segment in memory and write its bytes ourselves: libhdf5 handles a full
        # disk badly (it can crash while closing), plain file I/O raises a clean OSError.
        # Schema 2 segments use HDF5's newest file format, whose metadata (object headers,
        # chunk indexes) carries checksums: a flipped byte there is an error, not a chunk that
        # silently reads as fill values. Schema 1 (resume only) keeps the format it had.
        libver = "latest" if self.meta.checksummed else None
        with h5py.File(io.BytesIO(), "w", libver=libver) as f:
            _SegmentBuilder(f, self.meta).write(records)
            if self.meta.checksummed:
                f.attrs[SEGMENT_ATTR] = json.dumps({"part": self.part, "seq": self.next_seq})
                f.flush()
                _record_chunk_checksums(f)
            f.flush()
            image = f.id.get_file_image()
        fence()
        if isinstance(final, RemotePath):
            _put_new(final, image)  # the commit point: one conditional PUT
            self.next_seq += 1
            return
        tmp = atomic.temp_name(self.parts_dir / self.part)
        try:
            with open(tmp, "wb") as fh:
                fh.write(image)
            atomic.replace(tmp, final)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"could not write {final}: {exc}") from exc
        self.next_seq += 1

    def close(self) -> None:
        pass


def _record_chunk_checksums(f: h5py.File) -> None:
    """Give every chunked dataset a CRC32C of each chunk's stored bytes (``CHUNK_CRC_ATTR``).

    fletcher32, the filter HDF5 checks on every read, sums to 0 over zero bytes: a chunk zeroed
    together with its checksum reads back as zeros. CRC32C does not; every read checks it."""

    def visit(_name: str, obj: object) -> None:
        if isinstance(obj, h5py.Dataset) and obj.chunks is not None:
            obj.attrs[CHUNK_CRC_ATTR] = np.array(
                [_stored_crc(obj, row) for row in range(0, obj.shape[0], obj.chunks[0])],
                dtype=np.uint32,
            )

    f.visititems(visit)


def _chunk_crcs(ds: h5py.Dataset) -> np.ndarray | None:
    """The dataset's chunk checksums, when it has them and its chunks are stored as this module
    writes them (fletcher32 only, so the stored bytes are the rows): else None."""
    if ds.chunks is None or CHUNK_CRC_ATTR not in ds.attrs:
        return None
    if ds.compression is not None or ds.shuffle or ds.scaleoffset is not None or not ds.fletcher32:
        return None
    return ds.attrs[CHUNK_CRC_ATTR]


def _chunk_at(ds: h5py.Dataset, row: int) -> tuple[int, ...]:
    """The coordinates of the chunk that starts at ``row`` (chunked along rows only)."""
    return (row,) + (0,) * (ds.ndim - 1)


def _stored_crc(ds: h5py.Dataset, row: int) -> int:
    """CRC32C of the stored (filtered) bytes of the chunk that starts at ``row``."""
    _mask, raw = ds.id.read_direct_chunk(_chunk_at(ds, row))
    return google_crc32c.value(bytes(raw))


class _SegmentBuilder:
    """Writes one commit's datasets. Schema 2: chunked with fletcher32 checksums, and strings
    as fixed-length UTF-8 so that they live in checksummed chunks (variable-length strings
    live in HDF5's global heap, which no filter covers). Schema 1 (resume only): as it was."""

    def __init__(self, f: h5py.File, meta: StoreMeta) -> None:
        self.f, self.meta = f, meta

    def dataset(self, name: str, data: np.ndarray, chunk_rows: int = ROWS_PER_CHUNK) -> None:
        if not self.meta.checksummed:
            if data.dtype == object:
                self.f.create_dataset(name, data=data, dtype=_STR)
            else:
                self.f.create_dataset(name, data=data)
            return
        if data.dtype == object:
            data = np.array([str(x).encode("utf-8") for x in data], dtype=bytes)
            # Typed as UTF-8: numpy's S alone is typed ASCII, which tools that trust the type,
            # such as h5py's .asstr(), refuse to decode when a value is not ASCII.
            data = data.astype(h5py.string_dtype("utf-8", max(1, data.dtype.itemsize)))
        kwargs = {}
        if len(data):  # HDF5 chunks must fit the data; an empty dataset has nothing to check
            kwargs = {"chunks": (min(chunk_rows, len(data)), *data.shape[1:]), "fletcher32": True}
        self.f.create_dataset(name, data=data, **kwargs)

    def write(self, records: list[VideoRecord]) -> None:
        version = self.meta.schema_version
        lengths = np.array([r.n_frames for r in records], dtype=np.int64)
        for stream, spec in self.meta.streams.items():
            if self.meta.level == "frame":
                feats = np.concatenate([r.features[stream] for r in records], axis=0)
                rows = frame_chunk_rows(spec.dim, np.dtype(spec.dtype).itemsize)
                self.dataset(feature_array(stream, version), feats.astype(spec.dtype), rows)
            means = np.stack([r.means[stream] for r in records]).astype(np.float32)
            self.dataset(mean_array(stream, version), means, max(16, frame_chunk_rows(spec.dim, 4)))
        self.dataset("timestamps_s", np.concatenate([r.timestamps_s for r in records]))
        self.dataset("n_frames", lengths.astype(np.int32))
        self.dataset("offset", np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64))
        for col, kind in TABLE_DTYPES.items():
            if col not in ("n_frames", "offset"):
                values = [r.table[col] for r in records]
                self.dataset(col, np.array(values, dtype=object if kind == "str" else kind))


class HDF5PartReader(PartReader):
    """One segment file. Opened lazily so a reader can be pickled into DataLoader workers."""

    def __init__(self, store: Location, name: str, path: Location, meta: StoreMeta) -> None:
        self.store = store
        self.name = name
        self.label = path.name
        self.path = path
        self.meta = meta
        self._file: h5py.File | None = None
        self._datasets: dict[str, h5py.Dataset] = {}
        self._crcs: dict[str, np.ndarray | None] = {}  # per dataset, read once

    def _fail(self, array: str, detail: str) -> StoreIntegrityError:
        return StoreIntegrityError(detail, store=self.store, part=self.label, array=array)

    @property
    def file(self) -> h5py.File:
        if self._file is None:
            try:
                self._file = _open_h5(self.path)
            except OSError as exc:
                if exc.errno == errno.EMFILE:  # no damage: every segment read stays open
                    raise StoreError(
                        f"store {self.store}: too many open files to read all its segments "
                        "(each commit is one); raise the limit (ulimit -n)"
                    ) from exc
                raise self._fail("(file)", f"cannot open store segment {self.path}: {exc}") from exc
            if self.meta.checksummed:
                self._check_identity(self._file)
        return self._file

    def _check_identity(self, file: h5py.File) -> None:
        """A schema-2 segment names the part and commit it was written as: a copy under
        another name (a commit counted twice, or standing in for a lost one) is damage."""
        m = SEGMENT_RE.match(self.label)
        expected = {"part": self.name, "seq": int(m["seq"]) if m else None}
        try:
            written = json.loads(file.attrs[SEGMENT_ATTR])
            problem = "" if written == expected else f"written as {written} but named {self.label}"
        except (KeyError, OSError, ValueError, TypeError) as exc:
            problem = f"its {SEGMENT_ATTR} attribute is missing or unreadable ({exc})"
        if problem:
            self._file = None
            file.close()
            raise self._fail("(file)", f"{problem}: a copied, renamed or rewritten segment")

    def _dataset(self, name: str) -> h5py.Dataset:
        if name not in self._datasets:  # looking a path up costs as much as a small read
            file = self.file  # its own errors say what is wrong with the file
            try:
                found = file[name]
            except (KeyError, OSError, ValueError, RuntimeError) as exc:
                raise self._fail(name, f"the dataset is missing or unreadable ({exc})") from exc
            if not isinstance(found, h5py.Dataset):  # damaged metadata can name another object
                raise self._fail(name, f"not a dataset but {type(found).__name__}")
            if problem := layout_problem(self.meta, name, found.shape, found.dtype):
                raise self._fail(name, problem)
            self._datasets[name] = found
        return self._datasets[name]

    def _chunk_starts(self, ds: h5py.Dataset, start: int, stop: int) -> range:
        step = ds.chunks[0]
        return range(start - start % step, stop, step)

    def _check_allocated(self, array: str, ds: h5py.Dataset, start: int, stop: int) -> None:
        """Every chunk under rows [start, stop) must be stored: a segment is written whole,
        and HDF5 would read an absent chunk as fill values."""
        for row in self._chunk_starts(ds, start, stop):
            info = ds.id.get_chunk_info_by_coord(_chunk_at(ds, row))
            if info.byte_offset is None:
                end = min(row + ds.chunks[0], ds.shape[0])
                raise self._fail(array, f"chunk under rows {row}:{end} missing")

    @property
    def n_videos(self) -> int:  # type: ignore[override]
        return int(self._dataset("video_id").shape[0])

    @property
    def n_frames(self) -> int:  # type: ignore[override]
        return int(self._dataset("timestamps_s").shape[0])

    def read_rows(self, array: str, start: int, stop: int) -> np.ndarray:
        ds = self._dataset(array)
        try:
            if array not in self._crcs:
                found = _chunk_crcs(ds)
                if self.meta.checksummed and ds.shape[0] and not (ds.chunks and ds.fletcher32):
                    # Schema 2 writes every non-empty dataset so (CRC32Cs came later); without,
                    # nothing vouches for its rows (rewritten by another tool, say).
                    raise self._fail(
                        array, "stored without fletcher32 chunks, which every schema-2 dataset has"
                    )
                self._crcs[array] = found
            crcs = self._crcs[array]
            # Segments with chunk checksums have checksummed chunk indexes too: a chunk cannot
            # go missing there without an error. Older ones are looked up chunk by chunk.
            if crcs is None and ds.chunks is not None and stop > start:
                self._check_allocated(array, ds, start, stop)
            if crcs is not None:
                rows = self._read_checked(array, ds, crcs, start, stop)
            elif ds.dtype.kind != "S" and h5py.check_string_dtype(ds.dtype) is not None:
                return ds.asstr()[start:stop]  # schema 1: variable-length strings
            else:
                rows = ds[start:stop]
            if ds.dtype.kind == "S":  # schema 2 strings: fixed-length UTF-8
                return np.char.decode(rows, "utf-8").astype(object)
            return rows
        except StoreIntegrityError:  # already names the chunk (and is a ValueError)
            raise
        except (OSError, ValueError, RuntimeError) as exc:  # fletcher32 or metadata checksum
            # mismatch, or broken bytes (UnicodeDecodeError is a ValueError)
            raise self._fail(array, f"corrupt chunk under rows {start}:{stop} ({exc})") from exc

    def _read_checked(
        self, array: str, ds: h5py.Dataset, crcs: np.ndarray, start: int, stop: int
    ) -> np.ndarray:
        """Rows [start, stop) from the chunks' stored bytes, each checked against its CRC32C.

        The stored bytes are the chunk's rows (edge chunks padded to the full chunk) and the
        4-byte fletcher32 that CRC32C supersedes: one read serves both the check and the rows.
        """
        step = ds.chunks[0]
        per_chunk = int(np.prod(ds.chunks))
        out = np.empty((stop - start, *ds.shape[1:]), dtype=ds.dtype)
        for row in self._chunk_starts(ds, start, stop):
            index = row // step
            mask, raw = ds.id.read_direct_chunk(_chunk_at(ds, row))
            if mask or index >= len(crcs) or google_crc32c.value(raw) != int(crcs[index]):
                end = min(row + step, ds.shape[0])
                raise self._fail(array, f"chunk under rows {row}:{end} fails its CRC32C checksum")
            chunk = np.frombuffer(raw, dtype=ds.dtype, count=per_chunk).reshape(ds.chunks)
            lo, hi = max(start, row), min(stop, row + step)
            out[lo - start : hi - start] = chunk[lo - row : hi - row]
        return out

    def chunk_ranges(self, array: str) -> list[tuple[int, int]]:
        ds = self._dataset(array)
        rows = ds.shape[0]
        step = ds.chunks[0] if ds.chunks else max(rows, 1)
        return [(i, min(i + step, rows)) for i in range(0, rows, step)]

    def drop_datasets(self) -> None:
        """Let go of the looked-up datasets (they are looked up again when next read)."""
        self._datasets.clear()
        self._crcs.clear()

    def close(self) -> None:
        self.drop_datasets()
        if self._file is not None:
            self._file.close()
            self._file = None


@BACKENDS.register("hdf5")
class HDF5Backend(Backend):
    name = "hdf5"
    suffixes = (".h5", ".hdf5")
    root_is_dir = False  # the root is one file, its parts in a folder beside it

    def __init__(self, path: Location) -> None:
        super().__init__(path)
        self.parts_dir = path.with_name(path.name + ".parts")
        self._readers: list[HDF5PartReader] = []

    def exists(self) -> bool:
        if isinstance(self.path, RemotePath):
            fs, key = self.path.filesystem()
            return fs.isfile(key)
        return self.path.is_file()

    def create_root(self, meta: StoreMeta) -> None:
        if not self.exists() and (
            segments := [n for n in _list_names(self.parts_dir) if SEGMENT_RE.match(n)]
        ):
            # The root file alone was deleted ("starting over"): a new root with this run's
            # settings would adopt segments made with others, and resume would skip them.
            raise StoreError(
                f"{self.path} is missing but {self.parts_dir} holds {len(segments)} segments of "
                f"it: restore {self.path.name}, or remove {self.parts_dir.name} (and "
                f"{self.path.name}.locks) to start a new store"
            )
        if isinstance(self.path, RemotePath):
            if not self.exists():
                with h5py.File(io.BytesIO(), "w") as f:
                    f.attrs[ROOT_ATTR] = json.dumps(meta.to_json())
                    f.flush()
                    image = f.id.get_file_image()
                fs, key = self.path.filesystem()
                put_exclusive(fs, key, image)  # losing the race keeps the first root
            return
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        if self.exists():
            return
        tmp = atomic.temp_name(self.path)
        with h5py.File(tmp, "w") as f:
            f.attrs[ROOT_ATTR] = json.dumps(meta.to_json())
        # Another shard may be creating it now: the first root stays, and the caller compares
        # its settings with the root it reads back.
        atomic.create(tmp, self.path)

    def read_meta(self) -> StoreMeta:
        try:
            with _open_root(self.path) as f:
                return StoreMeta.from_json(json.loads(f.attrs[ROOT_ATTR]))
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise StoreError(f"{self.path} is not a readable vidfeat HDF5 store: {exc}") from exc

    def open_part_writer(self, part: str, meta: StoreMeta) -> PartWriter:
        if isinstance(self.parts_dir, Path):
            self.parts_dir.mkdir(parents=True, exist_ok=True)
        return HDF5PartWriter(self.parts_dir, part, meta)

    def iter_parts(
        self, meta: StoreMeta, damage: list[StoreIntegrityError] | None = None
    ) -> Iterator[PartReader]:
        segments = []
        for name in _list_names(self.parts_dir):
            m = SEGMENT_RE.match(name)
            if m:
                segments.append((m["part"], int(m["seq"]), self.parts_dir / name))
        segments.sort()
        gaps = _gaps(self.path, segments)
        if gaps and damage is None:
            raise gaps[0]
        if damage is not None:
            damage += gaps
        _allow_open_files(len(segments))
        for part, _seq, p in segments:
            reader = HDF5PartReader(self.path, part, p, meta)
            self._readers.append(reader)
            yield reader

    def close(self) -> None:
        # Every segment's datasets go before any file closes: h5py's File.close scans every
        # object h5py still holds, so closing segment after segment while the others' datasets
        # were alive took time quadratic in the segments (103 s for 2,000; 3 s this way).
        for r in self._readers:
            r.drop_datasets()
        for r in self._readers:
            r.close()
        self._readers.clear()


def _allow_open_files(n_segments: int) -> None:
    """A segment stays open once read (its datasets are looked up once): raise this process's
    soft limit on open files (often 1024) toward its hard limit, so that a store of many
    commits opens. A long extraction reached 1,000 segments in about 3 hours, and reads then
    failed with "Too many open files", reported as a damaged segment. Children (DataLoader
    workers) inherit the limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n_segments + 256  # and what else the process holds open
    if soft == resource.RLIM_INFINITY or soft >= want:
        return
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _gaps(store: Location, segments: list[tuple[str, int, Location]]) -> list[StoreIntegrityError]:
    """Segments of a part are numbered 0, 1, 2...: a gap is a lost commit, never a skip."""
    gaps = []
    expected: dict[str, int] = {}
    for part, seq, _path in segments:
        want = expected.get(part, 0)
        if seq != want:
            missing = f"{part}.{want:08d}.h5"
            if seq > want + 1:
                missing += f" to {part}.{seq - 1:08d}.h5"
            gaps.append(
                StoreIntegrityError(
                    f"segment {missing} is missing (found {part}.{seq:08d}.h5)",
                    store=store,
                    part=part,
                    array="(segments)",
                )
            )
        expected[part] = seq + 1
    return gaps
