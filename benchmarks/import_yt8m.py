"""`vidfeat import-yt8m` throughput, peak memory and store size against the TFRecords.

Writes frame-level YouTube-8M files of realistic size (``--videos`` videos of ``--frames``
frames per file, random uint8 codes for rgb and audio) with vidfeat's own writer (its framing
is byte-identical to TensorFlow's, see tests/vidfeat/yt8m), then imports them in a fresh
process per run, so the peak RSS is the import's own. Two runs:

- ``realistic``: ``--files`` files of ``--videos`` x ``--frames`` (YouTube-8M's train files
  hold about 1,000 videos of about 230 frames, ~265 MB);
- ``many_files``: ``--many-files`` small files, to show that memory does not grow with the
  number of files.

Then ``heads train``'s data path on the imported (rgb + audio, 1,152-d uint8) store against the
same batches held in RAM, with ``benchmarks.train``'s method (the two feeds alternate in one
process; ``--train-models``).

    .venv/bin/python -m benchmarks.import_yt8m                      # 1 x 1000 x 230, 100 x 10 x 230
    .venv/bin/python -m benchmarks.import_yt8m --files 2 --workers 2
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import work_dir, write_result
from benchmarks.train import _run_in_subprocess
from vidfeat.yt8m.schema import STREAM_DIMS, Yt8mVideo, encode_record
from vidfeat.yt8m.tfrecord import write_records

ROOT = Path(__file__).resolve().parents[1]


def write_files(directory: Path, n_files: int, videos: int, frames: int, tag: str) -> int:
    """``n_files`` train files; returns their total size in bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    total = 0
    for f in range(n_files):
        path = directory / f"train{f:04d}.tfrecord"
        if not path.exists():
            records = (
                encode_record(
                    Yt8mVideo(
                        f"{tag}{f:04d}v{v:05d}",
                        tuple(int(x) for x in rng.integers(0, 3862, 3)),
                        "frame",
                        {
                            n: rng.integers(0, 256, (frames, d), dtype=np.uint8)
                            for n, d in STREAM_DIMS.items()
                        },
                    )
                )
                for v in range(videos)
            )
            with open(path, "wb") as fh:
                write_records(fh, records)
        total += path.stat().st_size
    return total


def _tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_import(inputs: Path, store: Path, workers: int) -> dict:
    """One import in a child process: seconds, the child's peak RSS and the summary line."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    cmd = [sys.executable, "-m", "vidfeat_cli.vidfeat", "import-yt8m", str(inputs)]
    cmd += ["--out", str(store), "--workers", str(workers), "--no-progress"]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "seconds": seconds,
        # ru_maxrss of children is the largest child so far; each run is larger than the last
        # or reported as at most the earlier peak (noted in the README).
        "peak_rss_mib": peak_kib / 1024,
        "peak_rss_grew": peak_kib > before,
        "summary": done.stdout.strip().split(" -> ")[0],  # without the machine's path
    }


def measure(work: Path, name: str, n_files: int, videos: int, frames: int, workers: int) -> dict:
    inputs = work / f"{name}-in"
    tfrecord_bytes = write_files(inputs, n_files, videos, frames, name)
    store = work / f"{name}.zarr"
    if store.exists():
        import shutil

        shutil.rmtree(store)
    result = run_import(inputs, store, workers)
    n_videos = n_files * videos
    return {
        "files": n_files,
        "videos": n_videos,
        "frames_per_video": frames,
        "workers": workers,
        "tfrecord_mb": tfrecord_bytes / 1e6,
        "store_mb": _tree_size(store) / 1e6,
        "store_over_tfrecord": _tree_size(store) / tfrecord_bytes,
        "videos_per_s": n_videos / result["seconds"],
        "mb_per_s": tfrecord_bytes / 1e6 / result["seconds"],
        **result,
    }


def train_case(store: Path, model: str) -> dict:
    """One benchmarks.train case (0 workers, length-bucketed batches of 32) on ``store``."""
    case = {
        "store": str(store),
        "store_name": "imported rgb+audio u8-1152",
        "model": model,
        "workers": 0,
        "bucket": True,
        "batches": 4 if model == "lstm" else 16,
        "rounds": 3,
        "batch_size": 32,
    }
    return {**case, **_run_in_subprocess(case), "store": store.name}  # no machine path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=1)
    ap.add_argument("--videos", type=int, default=1000)
    ap.add_argument("--frames", type=int, default=230)
    ap.add_argument("--many-files", type=int, default=100)
    ap.add_argument("--many-videos", type=int, default=10)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--keep", type=Path, default=None, help="Work folder to keep and reuse.")
    ap.add_argument("--train-models", nargs="*", default=["bof", "lstm"])
    args = ap.parse_args()
    with work_dir(args.keep, "bench-yt8m-") as work:
        # The small run goes first: ru_maxrss of children only ever grows.
        many = measure(work, "many", args.many_files, args.many_videos, args.frames, args.workers)
        real = measure(work, "real", args.files, args.videos, args.frames, args.workers)
        train = [train_case(work / "real.zarr", model) for model in args.train_models]
    payload = {
        "load_average": os.getloadavg(),
        "many_files": many,
        "realistic": real,
        "train_on_imported_store": train,
    }
    print(write_result("import_yt8m", payload))
    for label, r in (("many files", many), ("realistic", real)):
        print(
            f"{label}: {r['videos']} videos in {r['seconds']:.1f} s = {r['videos_per_s']:.1f} "
            f"videos/s, {r['mb_per_s']:.1f} MB/s; peak RSS {r['peak_rss_mib']:.0f} MiB; "
            f"store/TFRecord {r['store_over_tfrecord']:.2f}"
        )
    for r in train:
        print(
            f"heads train {r['model']} on the imported store: {r['store_sequences_per_s']:.1f} "
            f"seq/s vs {r['ram_sequences_per_s']:.1f} in RAM = {r['vs_ram']:.2f} "
            f"(first pass {r['vs_ram_first_pass']:.2f})"
        )


if __name__ == "__main__":
    main()
