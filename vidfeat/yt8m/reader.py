"""Read whole YouTube-8M TFRecord files into videos and per-record failures, in parallel.

A file is the unit of work (and of commit, for the importer): :func:`read_file` returns every
good video of a file plus a :class:`RecordFailure` for each record that could not be read, so
one corrupt record never costs its neighbours. :func:`read_files` runs files in worker
processes with a bounded window of files in flight, so memory stays bounded by about
``workers + 1`` files whatever the number of files.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import gzip
import multiprocessing
import zlib
from collections.abc import Iterator, Sequence
from typing import BinaryIO

import fsspec

from vidfeat.errors import RecordError
from vidfeat.signals import die_with_parent
from vidfeat.yt8m.schema import Yt8mVideo, parse_record
from vidfeat.yt8m.sources import SourceFile
from vidfeat.yt8m.tfrecord import is_gzip, iter_records


@dataclasses.dataclass(frozen=True)
class RecordFailure:
    """A record (or a whole file, ``index`` 0) that could not be read, with the reason."""

    index: int  # record position in its file
    status: str  # RecordError.status: empty, not_tfrecord, truncated, bad_crc, bad_example
    reason: str
    video_id: str | None = None  # when the record was readable far enough to tell
    ends_file: bool = False  # nothing after it could be read (RecordError.ends_file)


@dataclasses.dataclass
class FileResult:
    """Everything read from one file, in record order."""

    source: SourceFile
    videos: list[Yt8mVideo] = dataclasses.field(default_factory=list)
    failures: list[RecordFailure] = dataclasses.field(default_factory=list)
    # Each video's record position in the file (unreadable records leave gaps), for the ids
    # of failures found after parsing (duplicates, labels, levels).
    record_indices: list[int] = dataclasses.field(default_factory=list)

    @property
    def n_frames(self) -> int:
        return sum(v.n_frames for v in self.videos)


def _records(stream: BinaryIO, result: FileResult) -> None:
    for index, item in enumerate(iter_records(stream)):
        if isinstance(item, RecordError):
            failure = RecordFailure(item.index, item.status, item.reason, ends_file=item.ends_file)
            result.failures.append(failure)
            continue
        try:
            result.videos.append(parse_record(item))
        except RecordError as exc:
            result.failures.append(RecordFailure(index, exc.status, exc.reason))
        else:
            result.record_indices.append(index)


def read_file(source: SourceFile) -> FileResult:
    """Parse one file; unreadable records become failures, an unopenable file one failure.

    Files written with TensorFlow's GZIP option (the whole stream compressed) are recognised by
    their magic bytes and read through gzip; a damaged compressed stream ends the file as
    ``bad_gzip`` after the records before the damage.
    """
    result = FileResult(source)
    try:
        with fsspec.open(source.url, "rb") as stream:
            if is_gzip(stream.read(12)):
                stream.seek(0)
                try:
                    _records(gzip.GzipFile(fileobj=stream, mode="rb"), result)
                except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
                    index = len(result.videos) + len(result.failures)
                    reason = f"compressed stream damaged after record {index - 1}: {exc}"
                    failure = RecordFailure(index, "bad_gzip", reason, ends_file=True)
                    result.failures.append(failure)
            else:
                stream.seek(0)
                _records(stream, result)
    except OSError as exc:
        # Nothing of a file that could not be read to its end is kept: the importer records
        # no rows for it, so a rerun reads it again whole.
        reason = f"cannot read the file: {exc}"
        return FileResult(source, failures=[RecordFailure(0, "unreadable", reason)])
    return result


def read_files(sources: Sequence[SourceFile], workers: int = 1) -> Iterator[FileResult]:
    """:func:`read_file` for each source, in the given order, ``workers`` files at a time."""
    if workers <= 1:
        for source in sources:
            yield read_file(source)
        return
    # spawn: the parent may hold threads (progress bar, store locks) that fork would copy.
    context = multiprocessing.get_context("spawn")
    # One file per busy worker plus one parsed and waiting: memory is about (workers + 1)
    # files, whatever the number of files.
    window = workers + 1
    # A SIGKILLed import runs no cleanup: its workers must not live on reading files.
    pool = cf.ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=die_with_parent
    )
    with pool:
        pending: collections.deque[cf.Future] = collections.deque()
        todo = iter(sources)
        for source in todo:
            pending.append(pool.submit(read_file, source))
            if len(pending) >= window:
                break
        while pending:
            result = pending.popleft().result()
            for source in todo:
                pending.append(pool.submit(read_file, source))
                break
            yield result
