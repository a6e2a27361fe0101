"""HDF5 backend: a root file plus immutable segment files.

HDF5 cannot be safely appended in place: a writer killed between flushes leaves a file that
no longer opens. So every commit is a new *segment*: a complete small HDF5 file written under a
temporary name, closed, fsynced and renamed into ``<store>.parts/``. A segment is either fully
there or absent. The root file ``<store>`` holds the metadata and is itself written the same way.
"""

from __future__ import annotations

import io
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

from vidfeat import atomic
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

ROOT_ATTR = "vidfeat"
SEGMENT_RE = re.compile(r"^(?P<part>.+)\.(?P<seq>\d{8})\.h5$")
_STR = h5py.string_dtype("utf-8")


class HDF5PartWriter(PartWriter):
    def __init__(self, parts_dir: Path, part: str, meta: StoreMeta) -> None:
        self.parts_dir = parts_dir
        self.part = part
        self.meta = meta
        seqs = [
            int(m["seq"])
            for m in (SEGMENT_RE.match(p.name) for p in parts_dir.glob(f"{part}.*.h5"))
            if m and m["part"] == part
        ]
        self.next_seq = max(seqs, default=-1) + 1
        # Leftovers of a writer killed before its rename are garbage, never data.
        for stale in parts_dir.glob(f".{part}.*.tmp"):
            stale.unlink(missing_ok=True)

    def commit(self, records: list[VideoRecord]) -> None:
        if not records:
            return
        final = self.parts_dir / f"{self.part}.{self.next_seq:08d}.h5"
        tmp = self.parts_dir / f".{self.part}.{uuid.uuid4().hex}.tmp"
        # Build the segment in memory and write its bytes ourselves: libhdf5 handles a full
        # disk badly (it can crash while closing), plain file I/O raises a clean OSError.
        with h5py.File(io.BytesIO(), "w") as f:
            _write_segment(f, records, self.meta)
            f.flush()
            image = f.id.get_file_image()
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


def _write_segment(f: h5py.File, records: list[VideoRecord], meta: StoreMeta) -> None:
    feats = np.concatenate([r.features for r in records], axis=0)
    lengths = np.array([len(r.features) for r in records], dtype=np.int64)
    rows = frame_chunk_rows(meta.dim, np.dtype(meta.dtype).itemsize)
    f.create_dataset(
        "features",
        data=feats,
        dtype=meta.dtype,
        chunks=(max(1, min(rows, len(feats))), meta.dim) if len(feats) else None,
    )
    f.create_dataset("timestamps_s", data=np.concatenate([r.timestamps_s for r in records]))
    f.create_dataset("mean", data=np.stack([r.mean for r in records]).astype(np.float32))
    f.create_dataset("n_frames", data=lengths.astype(np.int32))
    f.create_dataset("offset", data=np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64))
    for col, kind in TABLE_DTYPES.items():
        if col in ("n_frames", "offset"):
            continue
        values = [r.table[col] for r in records]
        if kind == "str":
            f.create_dataset(col, data=np.array(values, dtype=object), dtype=_STR)
        else:
            f.create_dataset(col, data=np.array(values, dtype=kind))


class HDF5PartReader(PartReader):
    """One segment file. Opened lazily so a reader can be pickled into DataLoader workers."""

    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self.path = path
        self._file: h5py.File | None = None

    @property
    def file(self) -> h5py.File:
        if self._file is None:
            try:
                self._file = h5py.File(self.path, "r")
            except OSError as exc:
                raise StoreError(f"cannot open store segment {self.path}: {exc}") from exc
        return self._file

    def table(self) -> dict[str, np.ndarray]:
        out = {}
        for col, kind in TABLE_DTYPES.items():
            ds = self.file[col]
            out[col] = ds.asstr()[()] if kind == "str" else ds[()]
        return out

    def frames(self, start: int, stop: int) -> np.ndarray:
        return self.file["features"][start:stop]

    def timestamps(self, start: int, stop: int) -> np.ndarray:
        return self.file["timestamps_s"][start:stop]

    def means(self, rows: np.ndarray) -> np.ndarray:
        return self.file["mean"][()][np.asarray(rows)]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@BACKENDS.register("hdf5")
class HDF5Backend(Backend):
    name = "hdf5"
    suffixes = (".h5", ".hdf5")

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.parts_dir = path.with_name(path.name + ".parts")
        self._readers: list[HDF5PartReader] = []

    def exists(self) -> bool:
        return self.path.is_file()

    def create_root(self, meta: StoreMeta) -> None:
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        if self.exists():
            return
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.tmp")
        with h5py.File(tmp, "w") as f:
            f.attrs[ROOT_ATTR] = json.dumps(meta.to_json())
        if self.exists():  # another shard created it first; theirs is identical or checked later
            tmp.unlink()
            return
        atomic.replace(tmp, self.path)

    def read_meta(self) -> StoreMeta:
        try:
            with h5py.File(self.path, "r") as f:
                return StoreMeta.from_json(json.loads(f.attrs[ROOT_ATTR]))
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise StoreError(f"{self.path} is not a readable vidfeat HDF5 store: {exc}") from exc

    def open_part_writer(self, part: str, meta: StoreMeta) -> PartWriter:
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        return HDF5PartWriter(self.parts_dir, part, meta)

    def iter_parts(self) -> Iterator[PartReader]:
        if not self.parts_dir.is_dir():
            return
        segments = []
        for p in self.parts_dir.iterdir():
            m = SEGMENT_RE.match(p.name)
            if m:
                segments.append((m["part"], int(m["seq"]), p))
        for part, _seq, p in sorted(segments):
            reader = HDF5PartReader(part, p)
            self._readers.append(reader)
            yield reader

    def close(self) -> None:
        for r in self._readers:
            r.close()
        self._readers.clear()
