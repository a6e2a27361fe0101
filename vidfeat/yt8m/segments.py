"""Segment ratings of YouTube-8M's 2019 files, kept beside a store as a side table.

The store's per-video table has fixed columns, so the ratings go to ``<store>.segments/``: one
CSV per imported TFRecord file (``video_id,label,start_time_s,score``, one row per rated
segment and label), written atomically before that file's videos are committed. A file is
named after the source file and a hash of its URL. Rows of videos that are not committed in the
store (an import killed before the commit) are ignored by :func:`read_segments` and rewritten
by the rerun.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from vidfeat import atomic
from vidfeat.yt8m.schema import Segments, Yt8mVideo
from vidfeat.yt8m.sources import SourceFile

COLUMNS = ("video_id", "label", "start_time_s", "score")
_DTYPES = {"video_id": str, "label": np.int64, "start_time_s": np.int64, "score": np.float32}


def segments_dir(store: str | os.PathLike) -> Path:
    """Where a store's segment ratings live: ``<store>.segments`` next to it."""
    p = Path(store)
    return p.with_name(p.name + ".segments")


def _file_name(source: SourceFile) -> str:
    digest = hashlib.blake2b(source.url.encode("utf-8"), digest_size=6).hexdigest()
    return f"{source.name}-{digest}.csv"


def write_segments(
    store: str | os.PathLike, source: SourceFile, videos: Iterable[Yt8mVideo]
) -> int:
    """Write the ratings of ``videos`` read from ``source``; returns the number of rows."""
    rows = [
        (v.video_id, int(label), int(start), float(score))
        for v in videos
        if v.segments is not None
        for label, start, score in zip(
            v.segments.labels, v.segments.start_times, v.segments.scores, strict=True
        )
    ]
    if not rows:
        return 0
    directory = segments_dir(store)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / _file_name(source)
    with atomic.atomic_open(path, "w", newline="") as fh:
        pd.DataFrame(rows, columns=list(COLUMNS)).to_csv(fh, index=False)
    return len(rows)


def read_segments(store: str | os.PathLike, video_ids: Iterable[str] | None = None) -> pd.DataFrame:
    """All ratings (columns ``COLUMNS``), limited to ``video_ids`` (e.g. the store's ok ids)."""
    files = sorted(segments_dir(store).glob("*.csv"))
    frames = [pd.read_csv(f, dtype=_DTYPES, keep_default_na=False) for f in files]
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in _DTYPES.items()})
    table = pd.concat(frames, ignore_index=True)
    if video_ids is not None:
        table = table[table["video_id"].isin(set(video_ids))]
    return table.drop_duplicates().reset_index(drop=True)


def segments_by_video(table: pd.DataFrame) -> dict[str, Segments]:
    """The side table back into per-video :class:`Segments` (row order kept)."""
    return {
        str(vid): Segments(
            g["label"].to_numpy(np.int64),
            g["start_time_s"].to_numpy(np.int64),
            g["score"].to_numpy(np.float32),
        )
        for vid, g in table.groupby("video_id", sort=False)
    }
