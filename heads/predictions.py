"""Prediction files: the format follows the file suffix, and YouTube-8M vocabulary indices.

``.csv``, ``.parquet`` and ``.jsonl`` hold the same table: ``video_id`` and ``predictions``,
the top classes best first as a list of ``{"label", "score"}`` (JSON text in a CSV cell, since
labels may hold spaces, colons and commas). ``fmt="yt8m"`` writes Kaggle's YouTube-8M
``VideoId,LabelConfidencePairs`` ("index score ..." with vocabulary indices) to a ``.csv``.
``.npz`` holds the raw (N, C) scores of every class: probabilities, and the ranking scores
that order them exactly (float32 probabilities of a confident model saturate and tie).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import importlib.util
import json
import os
import re
import shutil
import struct
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar

import numpy as np
import pandas as pd

from heads.labels import LabelMap
from heads.metrics import rank_classes
from vidfeat import atomic
from vidfeat.errors import ConfigError
from vidfeat.store.base import LABEL_SEPARATOR

if TYPE_CHECKING:
    from vidfeat.yt8m.vocabulary import Vocabulary


@dataclasses.dataclass(frozen=True)
class Scored:
    """A model's outputs on N videos, in dataset order: ``probs`` (N, C) float32 probabilities
    to show and threshold, ``ranking`` (N, C) float32 scores that order classes and videos as
    the exact probabilities do (``Loss.ranking_scores``; float32 probabilities saturate and
    tie), and ``labels`` (N, C) multi-hot."""

    probs: np.ndarray
    ranking: np.ndarray
    labels: np.ndarray


# suffix -> formats that may be written to it (the first is the default for that suffix)
SUFFIX_FORMATS: dict[str, tuple[str, ...]] = {
    ".csv": ("csv", "yt8m"),
    ".parquet": ("parquet",),
    ".jsonl": ("jsonl",),
    ".npz": ("npz",),
}
FORMATS = tuple(dict.fromkeys(f for fmts in SUFFIX_FORMATS.values() for f in fmts))
STDOUT_FORMATS = ("csv", "yt8m", "jsonl")  # text formats that can go to stdout


def resolve_format(out: Path | None, fmt: str | None) -> str:
    """The format to write: from ``out``'s suffix, checked against an explicit ``fmt``."""
    if fmt is not None and fmt not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    if out is None:
        fmt = fmt or "csv"
        if fmt not in STDOUT_FORMATS:
            raise ConfigError(f"--format {fmt} is binary: give a file with --out")
        return fmt
    allowed = SUFFIX_FORMATS.get(out.suffix.lower())
    if allowed is None:
        suffixes = ", ".join(SUFFIX_FORMATS)
        raise ConfigError(f"cannot tell the format of {out}: use a suffix among {suffixes}")
    if fmt is not None and fmt not in allowed:
        raise ConfigError(
            f"--format {fmt} does not match {out.name}: a {out.suffix} file holds "
            + " or ".join(allowed)
        )
    if allowed[0] == "parquet" and importlib.util.find_spec("pyarrow") is None:
        raise ConfigError("writing .parquet needs pyarrow: pip install 'vidfeat[parquet]'")
    return fmt or allowed[0]


def read_vocabulary(path: str | Path) -> dict[str, int]:
    """Label -> vocabulary index from Google's vocabulary.csv, read as ``import-yt8m`` reads
    it (Index and Name needed): by Name, and by KnowledgeGraphId where the file has one."""
    from vidfeat.yt8m.vocabulary import read_vocabulary as read_csv

    return _label_indices(read_csv(str(path)))


def recorded_vocabulary(attrs: Mapping[str, Any]) -> dict[str, int] | None:
    """Label -> index from the vocabulary a store imported from YouTube-8M records in its
    attrs (``import-yt8m --vocabulary``), or None."""
    from vidfeat.yt8m.vocabulary import Vocabulary

    recorded = attrs.get("vocabulary")
    return _label_indices(Vocabulary.from_json(recorded)) if recorded else None


def _label_indices(vocabulary: Vocabulary) -> dict[str, int]:
    # A name wins over a Knowledge Graph id spelled the same (there is none in Google's file).
    mapping = {graph_id: i for i, graph_id in vocabulary.graph_ids.items()}
    mapping.update(vocabulary.indices)
    return mapping


def is_index(label: str) -> bool:
    """Whether a label is a vocabulary index written as text (ASCII digits only)."""
    return label.isascii() and label.isdecimal()  # "²" is a digit, not an index


def vocabulary_indices(labels: tuple[str, ...], vocabulary: dict[str, int] | None) -> list[int]:
    """The vocabulary index of each label, for YouTube-8M's submission format: its entry in
    ``vocabulary`` (by name or Knowledge Graph id), else the label itself when it is an index
    (a store imported from YouTube-8M without a vocabulary keeps them so). A name made of
    digits (a class called "1984") is looked up first, so it is never taken for an index."""
    vocabulary = vocabulary or {}
    names = [lbl for lbl in labels if lbl not in vocabulary and not is_index(lbl)]
    if names and not vocabulary:
        raise ConfigError(
            f"the run's labels are names ({', '.join(names[:3])}, ...), but the yt8m format "
            "needs vocabulary indices: pass --vocabulary vocabulary.csv"
        )
    if names:
        raise ConfigError(f"labels not in the vocabulary: {', '.join(names[:5])}")
    return [vocabulary[lbl] if lbl in vocabulary else int(lbl) for lbl in labels]


def write_table(table: pd.DataFrame, out: Path | None, fmt: str) -> None:
    """Write a prediction table atomically (the old file or the new one, never half), or to
    stdout when ``out`` is None (text formats)."""
    writers = {
        "csv": (lambda fh: as_csv_cells(table).to_csv(fh, index=False), "w"),
        "yt8m": (lambda fh: table.to_csv(fh, index=False), "w"),
        "jsonl": (
            lambda fh: table.to_json(fh, orient="records", lines=True, force_ascii=False),
            "w",
        ),
        "parquet": (lambda fh: table.to_parquet(fh, index=False), "wb"),
    }
    write, mode = writers[fmt]
    if out is None:
        write(sys.stdout)
        return
    text = {} if mode == "wb" else {"encoding": "utf-8", "newline": ""}  # whatever the locale
    with atomic.atomic_open(out, mode, **text) as fh:
        write(fh)


def _best(scores: np.ndarray, k: int, ranking: np.ndarray | None) -> np.ndarray:
    """Indices of the k best classes by ``ranking`` (default: the scores), ties by index."""
    return rank_classes(np.asarray(scores if ranking is None else ranking)[None], k)[0]


def top_classes(
    scores: np.ndarray, names: tuple[str, ...], k: int, ranking: np.ndarray | None = None
) -> list[dict[str, Any]]:
    """The k best classes by ``ranking`` (default: the scores), best first (ties by class
    index), as ``{"label", "score"}``."""
    return _named(scores, names, _best(scores, k, ranking))


def _named(scores: np.ndarray, names: tuple[str, ...], order: np.ndarray) -> list[dict[str, Any]]:
    return [{"label": names[i], "score": round(float(scores[i]), 6)} for i in order]


def format_yt8m_pairs(
    scores: np.ndarray, indices: tuple[str, ...], k: int, ranking: np.ndarray | None = None
) -> str:
    """YouTube-8M's LabelConfidencePairs: "index score index score ..." of the k best classes
    by ``ranking`` (default: the scores; vocabulary indices, so spaces separate
    unambiguously). Scores are written as Google's inference.py writes them (``%g``: six
    significant digits), so a small score keeps its digits instead of rounding to 0.000000."""
    order = _best(scores, k, ranking)
    return " ".join(f"{indices[i]} {float(scores[i]):g}" for i in order)


def as_csv_cells(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with its list cells (``predictions``) as JSON text, which a CSV cell can hold
    and ``json.loads`` reads back exactly."""
    lists = [c for c in table.columns if len(table) and isinstance(table[c].iloc[0], list)]
    return table.assign(
        **{c: table[c].map(lambda v: json.dumps(v, ensure_ascii=False)) for c in lists}
    )


# Scores read at a time by what walks a whole (N, C) file a block of rows at a time.
BLOCK_VALUES = 1 << 20


def row_blocks(n_rows: int, n_classes: int, factor: int = 1) -> Iterator[np.ndarray]:
    """The row indices of consecutive blocks of ``n_rows``, about ``factor * BLOCK_VALUES``
    scores each."""
    step = max(1, factor * BLOCK_VALUES // max(n_classes, 1))
    for start in range(0, n_rows, step):
        yield np.arange(start, min(n_rows, start + step))


def npz_arrays(
    path: Path, names: tuple[str, ...] | None = None, *, held: contextlib.ExitStack
) -> dict[str, np.ndarray | NpzRows]:
    """The arrays ``names`` (default: all; absent ones are left out) of an ``.npz``. A 2-D
    array stored uncompressed in a plain dtype (as ``np.savez`` and :class:`ScoresWriter`
    write it) comes as :class:`NpzRows`, whose rows are read when indexed: (N, C) scores at
    YouTube-8M's scale are gigabytes. The rest (1-D arrays, anything from
    ``np.savez_compressed``) is read whole.

    Every entry returned has its CRC-32 checked, as ``np.load`` does (the rows' entries in one
    sequential pass). ``NpzRows`` read from the file opened here, which ``held`` closes: a
    file replaced meanwhile is not read at another's offsets. A damaged file raises
    ``zipfile.BadZipFile``, ``ValueError`` or ``OSError``."""
    raw = held.enter_context(open(path, "rb", buffering=0))  # noqa: SIM115 - held closes it
    arrays: dict[str, np.ndarray | NpzRows] = {}
    with zipfile.ZipFile(raw) as npz:  # the same open file: one version of it throughout
        for info in npz.infolist():
            name = info.filename.removesuffix(".npy")
            if names is not None and name not in names:
                continue
            stored = info.compress_type == zipfile.ZIP_STORED
            array = _stored_rows(raw, info) if stored else None
            if array is None:
                with npz.open(info) as fh:  # checks the CRC as it reads
                    array = np.lib.format.read_array(fh, allow_pickle=False)
            arrays[name] = array
    return arrays


class NpzRows:
    """A 2-D array stored uncompressed in an ``.npz``, read a set of rows at a time with
    positioned reads (one per run of consecutive rows) from a file held open. A memory map
    would serve the same rows, but every page it touched would stay in the process's resident
    memory."""

    def __init__(self, raw: BinaryIO, offset: int, shape: tuple[int, int], dtype: np.dtype):
        self._raw, self.offset = raw, offset
        self.shape, self.dtype = shape, dtype
        self._row_bytes = shape[1] * dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        """The rows ``rows`` (a 1-D array of indices, any order), as a new (n, C) array."""
        rows = np.asarray(rows, np.int64)
        if rows.ndim != 1 or (rows.size and (rows.min() < 0 or rows.max() >= self.shape[0])):
            raise IndexError(f"rows must be 1-D indices in [0, {self.shape[0]})")
        out = np.empty((rows.size, self.shape[1]), self.dtype)
        order = np.argsort(rows, kind="stable")
        ascending = rows[order]
        runs = np.split(np.arange(rows.size), np.flatnonzero(np.diff(ascending) != 1) + 1)
        for run in runs if rows.size else []:
            first, count = int(ascending[run[0]]), len(run)
            at, size = self.offset + first * self._row_bytes, count * self._row_bytes
            data = os.pread(self._raw.fileno(), size, at)
            if len(data) != size:
                raise ValueError(f"{self._raw.name} ends inside rows {first}..{first + count}")
            out[order[run]] = np.frombuffer(data, self.dtype).reshape(count, self.shape[1])
        return out


# A zip entry's local header: its signature, 22 bytes of versions, flags, times, CRC and
# sizes (the central directory's are the ones used), then the lengths of its name and extra.
_LOCAL_HEADER = struct.Struct("<4s22xHH")
_CRC_PIECE = 16 << 20


def _stored_rows(raw: BinaryIO, info: zipfile.ZipInfo) -> NpzRows | None:
    """A stored 2-D ``.npy`` entry as :class:`NpzRows`, its CRC checked; None for what is
    read whole."""
    raw.seek(info.header_offset)
    header = raw.read(_LOCAL_HEADER.size)
    if len(header) != _LOCAL_HEADER.size:
        raise zipfile.BadZipFile(f"{info.filename}: its entry lies past the end of the file")
    signature, name_len, extra_len = _LOCAL_HEADER.unpack(header)
    if signature != b"PK\x03\x04":
        raise zipfile.BadZipFile(f"{info.filename}: no entry where the directory points")
    start = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
    raw.seek(start)
    version = np.lib.format.read_magic(raw)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(raw)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(raw)
    else:
        return None  # numpy reads the rest (version 3 headers, say) whole
    if len(shape) != 2 or fortran or dtype.hasobject or 0 in shape:
        return None
    offset = raw.tell()
    if offset - start + shape[0] * shape[1] * dtype.itemsize != info.file_size:
        raise ValueError(f"{info.filename}: {info.file_size} bytes, not what its header says")
    crc, done = 0, 0
    while done < info.file_size:
        piece = os.pread(raw.fileno(), min(_CRC_PIECE, info.file_size - done), start + done)
        if not piece:
            raise zipfile.BadZipFile(f"{info.filename}: the file ends inside it")
        crc, done = zlib.crc32(piece, crc), done + len(piece)
    if crc != info.CRC:
        raise zipfile.BadZipFile(f"Bad CRC-32 for file {info.filename!r}")
    return NpzRows(raw, offset, shape, dtype)


class ScoresWriter:
    """Writes an ``.npz`` of ``video_id`` (N,), ``scores`` (N, C) float32 probabilities,
    ``ranking`` (N, C) float32 ranking scores and ``class_names`` (C,) from batches of rows in
    any order, without ever holding an (N, C) array: at YouTube-8M's 3,862 classes 400,000
    videos are 6 GB per array.

    Each (N, C) array goes row by row into its own ``.npy`` beside ``path`` (positioned writes,
    so batches may come in any order, e.g. bucketed by length); on close the ``.npz`` is
    assembled from them, in the zip layout ``np.savez`` writes, so for a while the disk holds
    the arrays twice. It appears atomically, or not at all if the writer is left by an
    exception; the row files are removed either way. Their folder stays locked while its writer
    lives, and a new writer of the same path removes those that a killed one left.
    """

    ARRAYS: ClassVar[dict[str, type]] = {"scores": np.float32, "ranking": np.float32}

    def __init__(self, path: Path, video_ids: list[str], class_names: tuple[str, ...]) -> None:
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise FileNotFoundError(f"cannot write {self.path}: no folder {self.path.parent}")
        self.video_ids = list(video_ids)
        self.class_names = tuple(class_names)
        self.n, self.classes = len(self.video_ids), len(self.class_names)
        self.written = np.zeros(self.n, bool)
        self._remove_abandoned_parts()
        self._parts = Path(
            tempfile.mkdtemp(prefix=f".{self.path.stem}-", suffix=".parts", dir=self.path.parent)
        )
        self._files: dict[str, Any] = {}
        self._offsets: dict[str, int] = {}
        try:
            self._lock = open(self._parts / ".lock", "w")  # noqa: SIM115 - closed in close()
            fcntl.flock(self._lock, fcntl.LOCK_EX)
            for name, dtype in self.ARRAYS.items():
                fh = open(self._parts / f"{name}.npy", "w+b")  # noqa: SIM115 - as the lock
                self._files[name] = fh
                header = {
                    "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                    "fortran_order": False,
                    "shape": (self.n, self.classes),
                }
                np.lib.format.write_array_header_1_0(fh, header)
                self._offsets[name] = fh.tell()
        except BaseException:
            self.close(commit=False)
            raise

    def _remove_abandoned_parts(self) -> None:
        """Row files (gigabytes at YouTube-8M's scale) of a writer of this path that died: its
        folder, named as ``mkdtemp`` names ours, whose lock nobody holds."""
        pattern = re.compile(rf"\.{re.escape(self.path.stem)}-[a-z0-9_]{{8}}\.parts")
        for folder in self.path.parent.iterdir():
            if not pattern.fullmatch(folder.name) or not folder.is_dir():
                continue
            try:
                with open(folder / ".lock") as lock:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if held
                    shutil.rmtree(folder, ignore_errors=True)
            except OSError:
                continue  # a live writer's (or not one of ours): left alone

    def _arrays(self, scored: Scored) -> dict[str, np.ndarray]:
        return {"scores": scored.probs, "ranking": scored.ranking}

    def add(self, rows: np.ndarray, scored: Scored) -> None:
        """The videos ``rows`` (their indices in ``video_ids``), (n, C) each in ``scored``."""
        rows = np.asarray(rows)
        if rows.ndim != 1 or not (rows.size == 0 or np.issubdtype(rows.dtype, np.integer)):
            raise ValueError(f"rows must be a 1-D array of integer indices, got {rows.dtype}")
        rows = rows.astype(np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.n):
            raise ValueError(f"rows must be in [0, {self.n}), got {rows.min()}..{rows.max()}")
        if len(np.unique(rows)) != len(rows) or self.written[rows].any():
            raise ValueError("a video's predictions were given twice")
        arrays = self._arrays(scored)
        for name, dtype in self.ARRAYS.items():
            block = np.ascontiguousarray(arrays[name], dtype=dtype)
            if block.shape != (len(rows), self.classes):
                raise ValueError(
                    f"{name}: expected ({len(rows)}, {self.classes}), got {block.shape}"
                )
            fd, base, size = self._files[name].fileno(), self._offsets[name], block[0:1].nbytes
            for row, values in zip(rows.tolist(), block, strict=True):
                os.pwrite(fd, values.tobytes(), base + row * size)
        self.written[rows] = True

    def _rows(self, name: str, start: int, stop: int) -> np.ndarray:
        dtype = np.dtype(self.ARRAYS[name])
        fh = self._files[name]
        fh.seek(self._offsets[name] + start * self.classes * dtype.itemsize)
        return np.fromfile(fh, dtype, (stop - start) * self.classes).reshape(-1, self.classes)

    def _write_npz(self) -> None:
        with (
            atomic.atomic_open(self.path, "wb") as fh,
            zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED, allowZip64=True) as npz,
        ):

            def put(name: str, array: np.ndarray) -> None:
                with npz.open(f"{name}.npy", "w", force_zip64=True) as entry:
                    np.lib.format.write_array(entry, array, allow_pickle=False)

            put("video_id", np.array(self.video_ids, dtype=str))
            for name in self.ARRAYS:
                src = self._files[name]
                src.flush()
                src.seek(0)
                with npz.open(f"{name}.npy", "w", force_zip64=True) as entry:
                    shutil.copyfileobj(src, entry, 16 << 20)
            put("class_names", np.array(self.class_names, dtype=str))

    def _write_more(self) -> None:
        """Files made from the complete row files besides the ``.npz`` (none here)."""

    def close(self, *, commit: bool = True) -> None:
        try:
            if commit:
                if not self.written.all():
                    missing = int((~self.written).sum())
                    raise ValueError(f"{missing} of {self.n} videos have no predictions")
                self._write_npz()
                self._write_more()
        finally:
            for fh in self._files.values():
                fh.close()
            shutil.rmtree(self._parts, ignore_errors=True)
            if getattr(self, "_lock", None) is not None:
                self._lock.close()

    def __enter__(self) -> ScoresWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.close(commit=exc_type is None)


class PredictionsWriter(ScoresWriter):
    """Writes a run's (or an ensemble's) test predictions: ``stem``.npz (``ScoresWriter``'s
    arrays and the labels) and ``stem``.csv (each video's top 20 as in :func:`top_classes`,
    and its true labels), from batches of rows in any order, as ``ScoresWriter`` does. The
    ``.csv`` is made from the complete row files a block of rows at a time, after the
    ``.npz``; each file appears atomically."""

    ARRAYS: ClassVar[dict[str, type]] = {
        "scores": np.float32,
        "ranking": np.float32,
        "labels": np.uint8,
    }
    _CSV_BLOCK_VALUES = 1 << 22  # rows formatted at a time: about 16 MB of float32 scores

    def __init__(self, stem: Path, video_ids: list[str], label_map: LabelMap) -> None:
        super().__init__(Path(stem).with_suffix(".npz"), video_ids, label_map.labels)

    def _arrays(self, scored: Scored) -> dict[str, np.ndarray]:
        return {"scores": scored.probs, "ranking": scored.ranking, "labels": scored.labels}

    def _write_more(self) -> None:
        k = min(20, self.classes)
        names = self.class_names
        all_names = np.array(names)
        with atomic.atomic_open(
            self.path.with_suffix(".csv"), "w", newline="", encoding="utf-8"
        ) as fh:
            step = max(1, self._CSV_BLOCK_VALUES // max(self.classes, 1))
            for start in range(0, max(self.n, 1), step):
                stop = min(start + step, self.n)
                probs, labels = self._rows("scores", start, stop), self._rows("labels", start, stop)
                best = rank_classes(self._rows("ranking", start, stop), k)  # as top_classes
                rows = {
                    "video_id": self.video_ids[start:stop],
                    "labels": [LABEL_SEPARATOR.join(all_names[y > 0]) for y in labels],
                    "predictions": [
                        _named(p, names, order) for p, order in zip(probs, best, strict=True)
                    ],
                }
                table = as_csv_cells(pd.DataFrame(rows))
                table.to_csv(fh, index=False, header=start == 0)
