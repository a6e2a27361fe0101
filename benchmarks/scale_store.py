"""Scale, store rows: build a large store of tiny videos in many parts with vidfeat's own writer,
then time ``open_store``, ``store.videos``, random reads and opening a writer on it, each in a
fresh process so that its peak RSS is its own.

The store is schema 2 (the default Zarr backend) as ``create_store`` writes it: crc32c on every
chunk, every chunk written, one part per writer. Its videos are tiny (a few frames of a small
dim) so that the per-video and per-part costs of the index, not the feature bytes, are measured.
Writers commit every ``COMMIT_EVERY`` videos (``create_store(commit_every=...)``), which changes
how often a part is committed, not its layout: the chunks are the same for any commit size.

A probe runs as ``python -m benchmarks.scale_store PROBE STORE`` and prints one JSON line.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import random
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.scale_proc import MIB, rss_bytes, run_measured

log = logging.getLogger(__name__)

# A commit costs about 45 ms whatever its size (each of the ~15 arrays is resized and its last
# chunk rewritten), so the default 16 videos per commit spends ~3 ms per video on commits alone;
# 1024 brings the whole write path under 0.1 ms per video.
COMMIT_EVERY = 1024
# Labels as YouTube-8M's have them: its 3,862 classes, about 3 a video, a few classes on many
# videos and most on few. Dense (N, C) targets would take 15 KB a video at this many classes.
CLASSES = 3862
LABELS_PER_VIDEO = 3.0
ATTRS = {"backbone": "synthetic-scale", "fps": "1", "pca": None}
APPEND_PART = "probe-append"


def video_id(i: int) -> str:
    return f"v{i:08d}"


def split_of(i: int) -> str:
    """1% val, 1% test, the rest train: given in the store, so no split is computed at 1M."""
    return {0: "val", 1: "test"}.get(i % 100, "train")


def part_name(p: int, parts: int) -> str:
    return f"shard-{p:05d}-of-{parts:05d}"


def part_range(p: int, parts: int, videos: int) -> range:
    return range(p * videos // parts, (p + 1) * videos // parts)


def video_labels(rng: np.random.Generator, n: int, classes: int, mean: float) -> list[list[str]]:
    """``n`` videos' labels: 1 + Poisson(mean - 1) distinct classes each, drawn with Zipf-like
    frequencies (class k about 1 / (k + 10))."""
    weights = 1.0 / (np.arange(classes) + 10.0)
    weights /= weights.sum()
    counts = np.minimum(1 + rng.poisson(max(mean - 1.0, 0.0), n), classes)
    drawn = rng.choice(classes, size=(n, int(counts.max()) * 2), p=weights)
    out = []
    for row, k in zip(drawn, counts, strict=True):
        distinct = list(dict.fromkeys(row.tolist()))[:k]
        out.append([f"c{c}" for c in distinct])
    return out


def _write_parts(
    path: str,
    ids: list[int],
    parts: int,
    videos: int,
    dim: int,
    frames: int,
    classes: int = CLASSES,
    labels_per_video: float = LABELS_PER_VIDEO,
) -> int:
    """One build process: open a writer for each of its parts first (while the store is still
    empty, as the shards of a job array do), then fill them one after the other."""
    from vidfeat.store import create_store

    writers = {
        p: create_store(
            path,
            dim=dim,
            attrs=ATTRS,
            part=part_name(p, parts),
            commit_every=COMMIT_EVERY,
            commit_seconds=1e9,
        )
        for p in ids
    }
    written = 0
    for p, writer in writers.items():
        with writer:
            rows = part_range(p, parts, videos)
            rng = np.random.default_rng(p)
            for start in range(rows.start, rows.stop, COMMIT_EVERY):
                stop = min(start + COMMIT_EVERY, rows.stop)
                block = rng.standard_normal((stop - start, frames, dim), dtype=np.float32)
                labels = video_labels(rng, stop - start, classes, labels_per_video)
                for i, x, y in zip(range(start, stop), block, labels, strict=True):
                    writer.write(video_id(i), x, labels=y, split=split_of(i))
            written += len(rows)
        log.info("part %s: %d videos", part_name(p, parts), len(rows))
    return written


def build_store(
    path: Path,
    videos: int,
    parts: int,
    dim: int,
    frames: int,
    jobs: int,
    classes: int = CLASSES,
    labels_per_video: float = LABELS_PER_VIDEO,
) -> dict:
    """Write ``videos`` videos of ``frames`` x ``dim`` float32 into ``parts`` parts with ``jobs``
    processes; reuse a complete store already there."""
    from vidfeat.store import check_store, open_store

    if path.exists():
        with open_store(path) as store:
            if len(store.videos) == videos and store.videos["part"].nunique() == parts:
                log.info("reusing %s (%d videos, %d parts)", path, videos, parts)
                return {"reused": True}
        raise SystemExit(f"{path} holds another store; remove it or choose another --work")
    check_store(path, dim=dim, attrs=ATTRS)
    jobs = max(1, min(jobs, parts))
    t0 = time.perf_counter()
    labelling = (classes, labels_per_video)
    with mp.get_context("spawn").Pool(jobs) as pool:
        args = [
            (str(path), list(range(j, parts, jobs)), parts, videos, dim, frames, *labelling)
            for j in range(jobs)
        ]
        written = sum(pool.starmap(_write_parts, args))
    took = time.perf_counter() - t0
    return {
        "reused": False,
        "seconds": took,
        "videos_per_s": written / took,
        "processes": jobs,
        "commit_every": COMMIT_EVERY,
        "classes": classes,
        "labels_per_video": labels_per_video,
        "disk_bytes": _tree_bytes(path),
    }


def _tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# ------------------------------------------------------------------------------ probes


def _probe_baseline(path: str) -> dict:
    import pandas  # noqa: F401 - what every other probe imports too
    import zarr  # noqa: F401

    import vidfeat.store  # noqa: F401

    return {}


def _probe_open(path: str) -> dict:
    from vidfeat.store import open_store

    before = rss_bytes(os.getpid()) or 0
    t0 = time.perf_counter()
    store = open_store(path)
    t1 = time.perf_counter()
    table = store.videos  # built by open_store: the attribute only returns it
    n = len(table)
    t2 = time.perf_counter()
    ok = len(store.ok_ids)
    t3 = time.perf_counter()
    return {
        "videos": n,
        "parts": int(table["part"].nunique()),
        "open_s": t1 - t0,
        "videos_s": t2 - t1,
        "ok_ids_s": t3 - t2,
        "ok": ok,
        "table_bytes": int(table.memory_usage(deep=True).sum()),
        # Resident memory the open store holds (the peak also has the open's transients).
        "held_rss_mib": ((rss_bytes(os.getpid()) or 0) - before) / MIB,
    }


def _probe_read(path: str, reads: int = 100) -> dict:
    from vidfeat.store import open_store

    store = open_store(path)
    ids = random.Random(0).sample(store.ok_ids, min(reads + 1, len(store.ok_ids)))
    t0 = time.perf_counter()
    first = store.read(ids[0])
    t1 = time.perf_counter()
    for vid in ids[1:]:
        store.read(vid)
    t2 = time.perf_counter()
    return {
        "first_read_s": t1 - t0,
        "first_read_shape": list(first.shape),
        "random_reads": len(ids) - 1,
        "random_read_mean_s": (t2 - t1) / max(1, len(ids) - 1),
    }


def _probe_append_writer(path: str) -> dict:
    """Open a writer for a new part: it reads every committed id, as a resumed shard or a new
    Ray embedding worker does. The empty part it leaves is removed."""
    from vidfeat.store import create_store, open_store

    with open_store(path) as store:
        dim = store.dim
    t0 = time.perf_counter()
    writer = create_store(path, dim=dim, attrs=ATTRS, part=APPEND_PART)
    took = time.perf_counter() - t0
    known = len(writer.committed_ids())
    writer.close()
    shutil.rmtree(Path(path) / "parts" / APPEND_PART, ignore_errors=True)
    return {"open_writer_s": took, "committed_ids": known}


PROBES: dict[str, Callable[[str], dict]] = {
    "baseline": _probe_baseline,
    "open": _probe_open,
    "read": _probe_read,
    "append_writer": _probe_append_writer,
}


def probe(name: str, store: Path) -> dict:
    """Run one probe in a fresh process: its figures plus its peak RSS."""
    cmd = [sys.executable, "-m", "benchmarks.scale_store", name, str(store)]
    run = run_measured(cmd)
    if run.returncode != 0:
        raise SystemExit(f"probe {name} failed ({run.returncode}):\n{run.stderr}")
    return {**json.loads(run.stdout.strip().splitlines()[-1]), "peak_rss_mib": run.peak_rss_mib}


def measure_index(store: Path) -> dict:
    """Every probe against ``store``."""
    rows = {name: probe(name, store) for name in PROBES}
    rows["open"]["peak_over_baseline_mib"] = (
        rows["open"]["peak_rss_mib"] - rows["baseline"]["peak_rss_mib"]
    )
    return rows


def _main() -> None:
    name, store = sys.argv[1], sys.argv[2]
    print(json.dumps(PROBES[name](store)), flush=True)


if __name__ == "__main__":
    _main()
