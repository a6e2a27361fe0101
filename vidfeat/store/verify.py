"""``vidfeat verify``: read every chunk of a store and check the tables against the arrays.

Reads already check each chunk they touch; verify checks all of them at once, so a store copied
to another disk or bucket can be vouched for before anyone trains on it. Each problem names the
part, the array and, where the damaged rows can be mapped, the videos.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from typing import Any

import numpy as np

from vidfeat.errors import StoreIntegrityError
from vidfeat.store.base import PartReader, frame_arrays, part_arrays
from vidfeat.store.schema import StoreMeta, check_readable


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing wrong with a store."""

    part: str
    array: str
    message: str
    videos: tuple[str, ...] = ()

    def __str__(self) -> str:
        where = f"part {self.part}, array {self.array}"
        if self.videos:
            shown = ", ".join(self.videos[:5]) + (" ..." if len(self.videos) > 5 else "")
            where += f", video(s) {shown}"
        return f"{where}: {self.message}"


@dataclasses.dataclass
class VerifyReport:
    path: str
    format: str
    schema_version: int
    checksummed: bool
    parts: int = 0  # writers' parts holding a committed video, as `vidfeat info` counts them
    videos: int = 0  # distinct video ids, as `vidfeat info` counts them
    rows: int = 0  # table rows: more than videos where a retried video kept its failed attempt
    chunks_read: int = 0
    problems: list[Problem] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["ok"] = self.ok
        out["problems"] = [{**dataclasses.asdict(p), "text": str(p)} for p in self.problems]
        return out


class _PartCheck:
    """Checks one part: every chunk of every array, then the table against the arrays."""

    def __init__(self, part: PartReader, meta: StoreMeta, report: VerifyReport) -> None:
        self.part, self.meta, self.report = part, meta, report
        self.ids: np.ndarray | None = None
        self.offsets: np.ndarray | None = None
        self.n_frames: np.ndarray | None = None
        self.ok_ids: set[str] = set()  # ids committed as ok here

    def problem(self, array: str, message: str, videos: tuple[str, ...] = ()) -> None:
        self.report.problems.append(Problem(self.part.label, array, message, videos))

    def run(self) -> None:
        if self.part.n_videos == 0:
            # Nothing committed, so nothing to check. Its arrays may be missing: a writer is
            # creating them, or was killed doing so (a Ray worker's part is never reopened to
            # finish them). Readers skip such a part too.
            self.ids = np.empty(0, dtype=object)
            return
        self.ids = self._column("video_id")
        self.offsets, self.n_frames = self._column("offset"), self._column("n_frames")
        for array in part_arrays(self.meta):
            self._scan(array)
        self._check_table()
        self.report.rows += 0 if self.ids is None else len(self.ids)

    def _column(self, name: str) -> np.ndarray | None:
        try:
            return self.part.read_rows(name, 0, self.part.n_videos)
        except StoreIntegrityError:
            return None  # reported, chunk by chunk, by _scan

    def _videos_at(self, array: str, start: int, stop: int) -> tuple[str, ...]:
        if self.ids is None:
            return ()
        if array not in frame_arrays(self.meta):
            return tuple(str(v) for v in self.ids[start:stop])
        if self.offsets is None or self.n_frames is None:
            return ()
        hit = (self.offsets < stop) & (self.offsets + self.n_frames > start)
        return tuple(str(v) for v in self.ids[hit])

    def _scan(self, array: str) -> None:
        try:
            ranges = self.part.chunk_ranges(array)
        except StoreIntegrityError as exc:
            self.problem(array, exc.detail)
            return
        for start, stop in ranges:
            self.report.chunks_read += 1
            try:
                data = self.part.read_rows(array, start, stop)
            except StoreIntegrityError as exc:
                self.problem(array, exc.detail, self._videos_at(array, start, stop))
                continue
            if data.dtype.kind == "f" and array != "duration_s" and array != "native_fps":
                bad = ~np.isfinite(data.reshape(len(data), -1)).all(axis=1)
                if bad.any():
                    rows = np.flatnonzero(bad) + start
                    videos = sorted({v for r in rows for v in self._videos_at(array, r, r + 1)})
                    self.problem(array, "non-finite values (inf or NaN)", tuple(videos))

    def _check_table(self) -> None:
        ids, offsets, lengths = self.ids, self.offsets, self.n_frames
        if ids is None or offsets is None or lengths is None:
            return
        status = self._column("status")
        empty = [i for i, v in enumerate(ids) if not str(v).strip()]
        if empty:
            self.problem("video_id", f"empty video ids at rows {empty[:10]}")
        if status is not None:
            ok_ids = Counter(str(v) for v, s in zip(ids, status, strict=True) if s == "ok")
            self.ok_ids = set(ok_ids)
            dupes = tuple(sorted(v for v, n in ok_ids.items() if n > 1))
            if dupes:
                self.problem("video_id", "ids committed as ok more than once in this part", dupes)
            frame_level = self.meta.level == "frame"
            wrong = [
                str(v)
                for v, s, n in zip(ids, status, lengths, strict=True)
                if (n > 0) != (s == "ok" and frame_level) or n < 0
            ]
            if wrong:
                self.problem("n_frames", "frame counts disagree with status/level", tuple(wrong))
        # Where each video's frames start: 0, then the running sum (nothing for an empty part).
        expected = np.cumsum(lengths, dtype=np.int64) - lengths
        bad = tuple(str(v) for v, o, e in zip(ids, offsets, expected, strict=True) if o != e)
        if bad:
            self.problem("offset", "offsets do not follow the frame counts", bad)
        if int(np.sum(lengths, dtype=np.int64)) != self.part.n_frames:
            self.problem(
                "n_frames",
                f"frame counts sum to {int(np.sum(lengths))}, "
                f"but {self.part.n_frames} frames are committed",
            )


def verify_store(path: str | os.PathLike, format: str | None = None) -> VerifyReport:
    """Check everything in a store; the report lists each problem (empty when clean)."""
    from vidfeat.store import _backend, no_store_at

    backend = _backend(path, format)
    if not backend.exists():
        raise no_store_at(path)
    meta = backend.read_meta()
    check_readable(meta, backend.path, action="verifies")
    report = VerifyReport(str(backend.path), backend.name, meta.schema_version, meta.checksummed)
    ids: set[str] = set()
    # Parts as `vidfeat info` counts them: writers' parts holding a committed video (an HDF5
    # part is one segment file per commit; a part begun but not yet committed holds none).
    parts: set[str] = set()
    # Per writer's part, in how many of its segments (HDF5 commits) each id is ok: one part
    # never commits a video twice, so more is a segment copied in under another number.
    ok_in: dict[str, Counter[str]] = {}
    damage: list[StoreIntegrityError] = []  # parts that cannot be listed or opened
    try:
        for part in backend.iter_parts(meta, damage):
            check = _PartCheck(part, meta, report)
            try:
                check.run()
            except StoreIntegrityError as exc:  # the part cannot be opened: on to the next
                report.problems.append(Problem(exc.part, exc.array, exc.detail))
            finally:
                part.close()
            if check.ids is not None and len(check.ids):
                parts.add(part.name)
            ids.update(str(v) for v in (() if check.ids is None else check.ids))
            ok_in.setdefault(part.name, Counter()).update(check.ok_ids)
    finally:
        backend.close()
    report.problems += [Problem(exc.part, exc.array, exc.detail) for exc in damage]
    for name, counts in ok_in.items():
        if dupes := tuple(sorted(v for v, n in counts.items() if n > 1)):
            message = "ids committed as ok in more than one segment of this part"
            report.problems.append(Problem(name, "video_id", message, dupes))
    report.videos = len(ids)
    report.parts = len(parts)
    return report


def format_report(report: VerifyReport) -> str:
    lines = [str(p) for p in report.problems]
    state = "clean" if report.ok else f"{len(report.problems)} problem(s)"
    checks = "checksums and tables" if report.checksummed else "tables only (schema 1: unverified)"
    rows = f" ({report.rows} table rows)" if report.rows != report.videos else ""
    lines.append(
        f"{report.path}: {state}; {report.videos} video(s){rows} in {report.parts} part(s), "
        f"{report.chunks_read} chunks read, {checks}"
    )
    return "\n".join(lines)
