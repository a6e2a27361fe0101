"""``import_yt8m(cfg)``: YouTube-8M TFRecord files -> a multi-stream feature store.

A file is the unit of commit: its videos and its failures are queued together and committed in
one store commit, with SIGINT/SIGTERM held off meanwhile, so a killed import leaves every file
either wholly in the store or not at all. A rerun skips files whose rows are in the store (the
``source_path`` column), so nothing is duplicated. Files that could not be opened at all
(``unreadable``, e.g. a network error) or that end early (empty, not a TFRecord, cut short: a
download that did not finish) are reported but get no rows, so a rerun reads them again; with
``keep_partial`` the records before the damage are imported and the damage recorded instead.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import logging
import math
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from vidfeat import __version__
from vidfeat.config import shard_of
from vidfeat.errors import ConfigError, StoreError
from vidfeat.location import Location, as_location
from vidfeat.pca.quantize import quantization_attrs
from vidfeat.signals import signals_held, sigterm_as_interrupt
from vidfeat.store.base import video_id_problem
from vidfeat.yt8m.reader import FileResult, RecordFailure, read_files
from vidfeat.yt8m.schema import IMPORTED_SOURCE, STREAM_DIMS, Yt8mVideo
from vidfeat.yt8m.segments import write_segments
from vidfeat.yt8m.sources import (
    SPLIT_PREFIXES,
    SourceFile,
    canonical_url,
    expand_paths,
    split_from_name,
)
from vidfeat.yt8m.sources import store_split as to_store_split
from vidfeat.yt8m.vocabulary import Vocabulary, read_vocabulary

log = logging.getLogger(__name__)

# Not recorded in the store, so that a rerun tries the file again.
RETRY_STATUSES = frozenset({"unreadable"})


@dataclasses.dataclass(frozen=True)
class ImportConfig:
    """Everything ``vidfeat import-yt8m`` needs."""

    paths: tuple[str, ...]
    out: Location  # a local path, or a URL (s3://, gs://, ...)
    format: str | None = None  # zarr | hdf5 | None (by suffix)
    vocabulary: str | None = None
    split: str | None = None  # train | validate | test; None: from each file name
    workers: int = 1
    shard: tuple[int, int] = (0, 1)
    progress: bool = True
    # Import the records of a file that ends early and record the damage (a rerun then skips
    # the file), instead of leaving the file out so that a rerun reads it again.
    keep_partial: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "paths", tuple(str(p) for p in self.paths))
        object.__setattr__(self, "out", as_location(self.out))
        if self.split is not None and self.split not in SPLIT_PREFIXES:
            raise ConfigError(f"--split must be one of {', '.join(SPLIT_PREFIXES)}")
        if self.workers < 1:
            raise ConfigError("workers must be >= 1")
        i, n = self.shard
        if not 0 <= i < n:
            raise ConfigError(f"shard must satisfy 0 <= I < N, got {i}/{n}")

    @property
    def part_name(self) -> str:
        i, n = self.shard
        return "main" if n == 1 else f"shard-{i:05d}-of-{n:05d}"


@dataclasses.dataclass
class ImportSummary:
    files: int = 0  # files of this shard
    skipped_files: int = 0  # already in the store
    imported_files: int = 0
    videos: int = 0
    frames: int = 0
    feature_bytes: int = 0
    failed: int = 0  # records (or whole files) that could not be imported
    unrecorded: int = 0  # of those, failures of files left out (no rows: a rerun reads them)
    seconds: float = 0.0
    # False when no file of this run held a readable video: the store's streams come from the
    # first video, so there was no store to create and nothing (failures included) is recorded.
    written: bool = True
    failures: list[tuple[str, RecordFailure]] = dataclasses.field(default_factory=list)


# Provenance of each stream, as Google describes its release (recorded in the stream attrs).
_STREAM_SOURCES = {
    "rgb": "YouTube-8M release: InceptionV3 frame features, PCA to 1024-d, 8-bit quantized",
    "audio": "YouTube-8M release: VGG-like audio embedding, PCA to 128-d, 8-bit quantized",
}


def store_streams(level: str, names: Iterable[str] = STREAM_DIMS) -> dict[str, dict]:
    """The store streams for a level: uint8 codes as published, or the float32 means."""
    out = {}
    for name in names:
        spec: dict = {"dim": STREAM_DIMS[name], "attrs": {"source": _STREAM_SOURCES[name]}}
        if level == "frame":
            spec.update(dtype="uint8", quantization=quantization_attrs())
        else:
            spec.update(dtype="float32")
        out[name] = spec
    return out


def store_attrs(vocabulary: Vocabulary | None, level: str) -> dict:
    attrs = {
        "source": IMPORTED_SOURCE,
        "vocabulary": None if vocabulary is None else vocabulary.to_json(),
        "vidfeat_version": __version__,
        "command": " ".join(sys.argv),
    }
    if level == "frame":
        attrs["fps"] = "1"  # the release samples one frame per second
    return attrs


class _Importer:
    """Writes whole files into an open store writer."""

    def __init__(self, cfg: ImportConfig, vocabulary: Vocabulary | None, writer: Any) -> None:
        self.cfg, self.vocabulary, self.writer = cfg, vocabulary, writer
        self.ok_ids = writer.committed_ids("ok")

    def _labels(self, video: Yt8mVideo) -> list[str]:
        if self.vocabulary is None:
            return [str(i) for i in video.labels]
        return [self.vocabulary.name(i) for i in video.labels]

    def _split(self, source: SourceFile) -> str:
        split = self.cfg.split or split_from_name(source.name)
        assert split is not None, "checked before the import starts"
        return split

    def withheld(self, result: FileResult) -> bool:
        """Whether nothing of this file goes into the store, so that a rerun reads it again: it
        could not be opened, or it ends early (unless ``keep_partial``). Rows would mark it as
        done, and the records after the damage would never come in, even once it is whole."""
        return any(
            f.status in RETRY_STATUSES or (f.ends_file and not self.cfg.keep_partial)
            for f in result.failures
        )

    def commit_file(self, result: FileResult) -> list[RecordFailure]:
        """Queue and commit one file's rows; returns the failures recorded."""
        if self.withheld(result):
            return []
        source, split = result.source, self._split(result.source)
        failures = [f for f in result.failures if f.status not in RETRY_STATUSES]
        seen: set[str] = set()
        good = []
        for index, video in zip(result.record_indices, result.videos, strict=True):
            problem = self._problem(video, seen)
            if problem is None:
                seen.add(video.video_id)
                good.append(video)
            else:
                failures.append(RecordFailure(index, problem[0], problem[1], video.video_id))
        write_segments(self.cfg.out, source, good)
        with signals_held():
            try:
                for video in good:
                    self.writer.write(
                        video.video_id,
                        dict(video.features),
                        labels=self._labels(video),
                        source_path=source.url,
                        split=to_store_split(split, video.video_id),
                    )
                for f in failures:
                    self.writer.write_failure(
                        f"{source.url}#{f.index}",
                        f.status,
                        f.reason if f.video_id is None else f"{f.video_id}: {f.reason}",
                        source_path=source.url,
                        split="",
                    )
            except BaseException:
                # A file is in the store wholly or not at all: committed half, a rerun would
                # skip the file and its other videos would never come in.
                self.writer.discard_queued()
                raise
            self.writer.flush()
        self.ok_ids |= seen
        return failures

    def _problem(self, video: Yt8mVideo, seen: set[str]) -> tuple[str, str] | None:
        """A reason this parsed video cannot go into the store, or None."""
        store_level = self.writer.meta.level
        if video.level != store_level:
            return "wrong_level", f"a {video.level}-level record in a {store_level}-level store"
        if set(video.features) != set(self.writer.meta.streams):
            streams = ", ".join(self.writer.meta.streams)
            return "wrong_streams", f"streams {sorted(video.features)}; the store has {streams}"
        if video.video_id in self.ok_ids or video.video_id in seen:
            return "duplicate", "video id already imported"
        if (why := video_id_problem(video.video_id)) is not None:
            return "bad_example", f"video id {why}"
        nonfinite = [s for s, x in video.features.items() if not np.isfinite(x).all()]
        if nonfinite:  # video-level float means: the store refuses NaN and infinity
            return "bad_example", f"non-finite values in {', '.join(sorted(nonfinite))}"
        if negative := [i for i in video.labels if i < 0]:
            return "bad_label", f"negative label indices {negative}"
        if self.vocabulary is not None:
            unknown = [i for i in video.labels if i not in self.vocabulary.names]
            if unknown:
                return "bad_label", f"label indices {unknown} are not in the vocabulary"
        return None


def _imported_sources(out: Location, format: str | None) -> set[str]:
    """Source files with rows in the store already (any status)."""
    from vidfeat.store import open_store

    try:
        with open_store(out, format) as store:
            # Canonical as the files are now: a store begun before the resume key took the
            # folder's real path recorded paths as typed.
            return {canonical_url(u) for u in store.videos["source_path"].astype(str).unique()}
    except StoreError:
        return set()


def _first_layout(
    results: Iterator[FileResult],
) -> tuple[tuple[str, list[str]] | None, list[FileResult]]:
    """Peek at results until one holds a video; the level and streams most of that file's
    videos have make the new store. One odd first record (rgb only among rgb and audio) made
    the store in its image, and every other record of the dataset failed as wrong_streams."""
    seen = []
    for result in results:
        seen.append(result)
        if result.videos:
            layouts = collections.Counter(
                (v.level, tuple(sorted(v.features))) for v in result.videos
            )
            # most_common keeps first-seen order among ties: the first record's layout wins.
            (level, streams), n = layouts.most_common(1)[0]
            if n < len(result.videos):
                log.warning(
                    "%s: records of %d layouts; the store takes the one of %d of its %d "
                    "videos (%s level, streams %s), the others are recorded as failures",
                    result.source.url,
                    len(layouts),
                    n,
                    len(result.videos),
                    level,
                    ", ".join(streams),
                )
            # The stream order the records give (rgb before audio), not sorted.
            first = next(
                v for v in result.videos if (v.level, tuple(sorted(v.features))) == (level, streams)
            )
            return (level, list(first.features)), seen
    return None, seen


def _sources(cfg: ImportConfig) -> list[SourceFile]:
    """This shard's files, each with a split (from its name or ``--split``)."""
    i, n = cfg.shard
    sources = [s for s in expand_paths(cfg.paths) if shard_of(s.name, n) == i]
    if cfg.split is None:
        unnamed = [s.name for s in sources if split_from_name(s.name) is None]
        if unnamed:
            raise ConfigError(
                f"cannot tell the split of {unnamed[:3]} from the file name "
                f"(train*, validate*, test*); give --split"
            )
    return sources


def _layout(
    cfg: ImportConfig, results: Iterator[FileResult]
) -> tuple[str | None, list[str], list[FileResult]]:
    """Level and streams: the existing store's, else those of the first video read (the files
    read to find it are returned, to be imported first)."""
    from vidfeat.store import open_store, store_exists

    if store_exists(cfg.out, cfg.format):
        with open_store(cfg.out, cfg.format) as store:
            return store.level, list(store.streams), []
    layout, first = _first_layout(results)
    if layout is None:
        return None, [], first
    return layout[0], layout[1], first


def import_yt8m(cfg: ImportConfig) -> ImportSummary:
    """Run (or resume) one import job. Raises VidfeatError subclasses on bad input."""
    from vidfeat.store import create_store

    t0 = time.monotonic()
    vocabulary = read_vocabulary(cfg.vocabulary) if cfg.vocabulary else None
    sources = _sources(cfg)
    done = _imported_sources(cfg.out, cfg.format)
    todo = [s for s in sources if s.url not in done]
    summary = ImportSummary(files=len(sources), skipped_files=len(sources) - len(todo))
    if summary.skipped_files:
        log.info(
            "resuming: %d of %d files already in %s", summary.skipped_files, len(sources), cfg.out
        )
    results = read_files(todo, cfg.workers)
    level, streams, first = _layout(cfg, results)
    with sigterm_as_interrupt(), _progress(len(todo), cfg.progress) as bar:
        if level is None:  # no file held a single video: nothing to make a store from
            summary.written = False
            for result in first:
                for failure in result.failures:
                    summary.failed += 1
                    summary.failures.append((result.source.url, failure))
                _tick(bar, summary)
        else:
            writer = create_store(
                cfg.out,
                format=cfg.format,
                streams=store_streams(level, streams),
                level=level,
                attrs=store_attrs(vocabulary, level),
                part=cfg.part_name,
                commit_every=2**62,  # commits happen per file, in _Importer.commit_file
                commit_seconds=math.inf,
            )
            with writer:
                importer = _Importer(cfg, vocabulary, writer)
                for result in itertools.chain(first, results):  # streamed, not listed
                    recorded = importer.commit_file(result)
                    _account(summary, result, recorded, importer.withheld(result))
                    _tick(bar, summary)
    summary.seconds = time.monotonic() - t0
    return summary


def _account(
    summary: ImportSummary, result: FileResult, recorded: list[RecordFailure], withheld: bool
) -> None:
    if withheld:  # nothing of the file was written: each failure is reported, none recorded
        if any(f.status not in RETRY_STATUSES for f in result.failures):
            log.warning(
                "%s ends early: none of it imported (%d readable record(s) before the damage); "
                "a rerun reads it again, --keep-partial imports what is readable",
                result.source.url,
                len(result.videos),
            )
        summary.unrecorded += len(result.failures)
        _report_failures(summary, result, result.failures)
        return
    # By record, not by id: a file that repeats an id has its first copy imported and the
    # second recorded as a duplicate failure under the same id.
    failed = {f.index for f in recorded}
    ok = [v for i, v in zip(result.record_indices, result.videos, strict=True) if i not in failed]
    if ok or recorded:
        summary.imported_files += 1
    summary.videos += len(ok)
    summary.frames += sum(v.n_frames for v in ok)
    summary.feature_bytes += sum(v.nbytes for v in ok)
    _report_failures(summary, result, recorded)


def _report_failures(
    summary: ImportSummary, result: FileResult, failures: list[RecordFailure]
) -> None:
    for f in failures:
        summary.failed += 1
        summary.failures.append((result.source.url, f))
        log.warning("%s record %d: %s (%s)", result.source.url, f.index, f.reason, f.status)


def _tick(bar: Any, summary: ImportSummary) -> None:
    bar.set_postfix(videos=summary.videos, frames=summary.frames, failed=summary.failed)
    bar.update(1)


@contextlib.contextmanager
def _progress(total: int, enabled: bool) -> Iterator[Any]:
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="file", disable=not enabled, dynamic_ncols=True, desc="import")
    try:
        yield bar
    finally:
        bar.close()
