"""Validation metrics at YouTube-8M's class count: peak memory and time of scoring N videos as
`heads train`'s validation did before (the whole set's (N, C) scores and labels, then
``evaluate_all``) against now (``MetricStream``, a batch at a time), for growing N.

``--test-files``: the end of training instead, the test split's metrics and its prediction
files (``test_predictions.npz`` and ``.csv``) from whole (N, C) arrays, as before, against
``MetricStream`` and ``PredictionsWriter`` fed a batch at a time, as now; both ways' files must
be byte for byte the same.

Scores are random normals and each video has 3 random labels of ``--classes``; each
measurement runs in its own process, whose peak RSS (ru_maxrss) is the figure. The two ways
must give the same metrics; ``evaluate_all`` is itself one stream of one batch now, so this
checks the batching (tests/heads/test_metrics.py checks the metrics themselves).

    python -m benchmarks.eval_memory                      # -> benchmarks/results/eval_memory.json
    python -m benchmarks.eval_memory --videos 20000,40000 --classes 3862
    python -m benchmarks.eval_memory --test-files   # -> benchmarks/results/test_files_memory.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS, machine_info, save_json

BATCH = 256


def batches(n: int, classes: int, labels_per_video: int):
    """(rows, scores float32, labels bool) batches of the set; the same for both ways."""
    for start in range(0, n, BATCH):
        rows = np.arange(start, min(n, start + BATCH))
        rng = np.random.default_rng(start)
        scores = rng.standard_normal((len(rows), classes), dtype=np.float32)
        labels = np.zeros((len(rows), classes), bool)
        picks = rng.integers(0, classes, (len(rows), labels_per_video))
        labels[np.arange(len(rows))[:, None], picks] = True
        yield rows, scores, labels


def measure(way: str, n: int, classes: int, labels_per_video: int) -> dict:
    from heads.metrics import MetricStream, evaluate_all

    started = time.perf_counter()
    if way == "whole":  # the (N, C) arrays validation filled before scoring them at once
        scores = np.zeros((n, classes), np.float32)
        labels = np.zeros((n, classes), np.float32)
        for rows, s, y in batches(n, classes, labels_per_video):
            scores[rows], labels[rows] = s, y
        metrics = evaluate_all(scores, labels)
    else:
        stream = MetricStream(classes)
        for rows, s, y in batches(n, classes, labels_per_video):
            stream.add(rows, s, y)
        metrics = stream.result()
    took = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"way": way, "videos": n, "seconds": took, "peak_rss_mib": peak_mib, **metrics}


def measure_test_files(way: str, n: int, classes: int, labels_per_video: int) -> dict:
    from heads.labels import LabelMap
    from heads.metrics import MetricStream, evaluate_all
    from heads.predictions import PredictionsWriter, Scored

    label_map = LabelMap(tuple(f"class{i}" for i in range(classes)), multilabel=True)
    ids = [f"v{i:07d}" for i in range(n)]

    def scored(s: np.ndarray, y: np.ndarray) -> Scored:
        return Scored(probs=1 / (1 + np.exp(-s)), ranking=s, labels=y)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        stem = Path(folder) / "test_predictions"
        if way == "whole":  # as the end of training did: (N, C) arrays, then both files
            scores = np.zeros((n, classes), np.float32)
            labels = np.zeros((n, classes), np.float32)
            for rows, s, y in batches(n, classes, labels_per_video):
                scores[rows], labels[rows] = s, y
            metrics = evaluate_all(scores, labels)
            with PredictionsWriter(stem, ids, label_map) as writer:  # all rows in one go
                writer.add(np.arange(n), scored(scores, labels))
        else:
            stream = MetricStream(classes)
            with PredictionsWriter(stem, ids, label_map) as writer:
                for rows, s, y in batches(n, classes, labels_per_video):
                    stream.add(rows, s, y)
                    writer.add(rows, scored(s, y))
            metrics = stream.result()
        digests = {}
        for suffix in (".npz", ".csv"):
            with stem.with_suffix(suffix).open("rb") as fh:  # in pieces: not held whole
                digests[suffix] = hashlib.file_digest(fh, "sha256").hexdigest()
    took = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "way": way,
        "videos": n,
        "seconds": took,
        "peak_rss_mib": peak_mib,
        **metrics,
        **digests,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos", default="10000,20000,40000")
    p.add_argument("--classes", type=int, default=3862)
    p.add_argument("--labels-per-video", type=int, default=3)
    p.add_argument("--test-files", action="store_true", help="the end of training's test files")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)  # way n
    args = p.parse_args()
    if args.child:
        way, n = args.child
        run = measure_test_files if args.test_files else measure
        print(json.dumps(run(way, int(n), args.classes, args.labels_per_video)))
        return
    rows = []
    for n in map(int, args.videos.split(",")):
        for way in ("whole", "stream"):
            cmd = [sys.executable, "-m", "benchmarks.eval_memory", "--child", way, str(n)]
            cmd += ["--classes", str(args.classes)]
            cmd += ["--labels-per-video", str(args.labels_per_video)]
            cmd += ["--test-files"] if args.test_files else []
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
        whole, stream = rows[-2], rows[-1]
        same = all(whole[k] == stream[k] for k in ("hit_at_1", "top5", "gap_at_20", "perr"))
        same = same and all(whole.get(k) == stream.get(k) for k in (".npz", ".csv"))
        if not same or not np.isclose(whole["mean_ap"], stream["mean_ap"], rtol=0, atol=1e-12):
            raise SystemExit(f"the two ways disagree at {n} videos: {whole} {stream}")
    out = save_json(
        RESULTS / ("test_files_memory.json" if args.test_files else "eval_memory.json"),
        {"machine": machine_info(), "settings": vars(args) | {"batch": BATCH}, "results": rows},
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
