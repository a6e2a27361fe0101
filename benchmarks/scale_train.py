"""Scale, training rows: ``heads train`` on a large store, in a child process whose RSS is
sampled while it runs.

- ``throughput``: a short ``--max-steps`` run; videos read per second (training batches and the
  validation pass) and peak RSS.
- ``flat``: an epoch-free run (``--max-steps`` with ``--eval-every``) over several passes of the
  store. The RSS at each evaluation, its least-squares slope against the step, and the RSS early
  and late in the run show whether memory grows with steps or videos read. The first pass is
  left out of the check: each reading process keeps up to ``--cache-mb`` MiB of decoded chunks,
  which fill while the first pass reads (or sooner, for a store larger than the cache) and then
  stay; a leak goes on growing through the later passes.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.scale_proc import Measured, RssSample, run_measured

REPO = Path(__file__).resolve().parents[1]
# Memory counts as flat when it grows by less than this over the run (after the first
# evaluation): allocator noise and the metrics history are a few MiB, a per-video or per-step
# leak at 100k videos is far more.
FLAT_TOLERANCE_MIB = 16.0
FLAT_TOLERANCE_FRACTION = 0.03


@dataclass(frozen=True)
class TrainRun:
    model: str
    batch_size: int
    max_steps: int
    eval_every: int
    num_workers: int = 0
    device: str = "cpu"
    cache_mb: int | None = None  # None: heads train's default
    sample_every_s: float = 0.5


def heads_train(store: Path, out: Path, run: TrainRun) -> tuple[Measured, list[dict], dict]:
    """One ``heads train`` in a child process: the measurement, metrics records, test metrics."""
    cmd = [sys.executable, "-m", "vidfeat_cli.heads", "-q", "train", str(store)]
    cmd += ["--model", run.model, "--out", str(out), "--device", run.device]
    cmd += ["--epochs", "1000000", "--max-steps", str(run.max_steps)]
    cmd += ["--eval-every", str(run.eval_every), "--patience", "0"]
    cmd += ["--batch-size", str(run.batch_size), "--num-workers", str(run.num_workers)]
    cmd += [] if run.cache_mb is None else ["--cache-mb", str(run.cache_mb)]
    metrics = out / "metrics.jsonl"
    shutil.rmtree(out, ignore_errors=True)  # a kept --work holds the previous run
    done = run_measured(cmd, cwd=REPO, sample_every_s=run.sample_every_s, watch=metrics)
    if done.returncode != 0:
        raise SystemExit(f"heads train failed ({done.returncode}):\n{done.stderr[-4000:]}")
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    test = json.loads((out / "test_metrics.json").read_text())
    return done, records, test


def throughput(store: Path, out: Path, run: TrainRun, val_videos: int) -> dict:
    """Videos read per second over the training windows (each ends with a validation pass)."""
    done, records, _ = heads_train(store, out, run)
    window_s = sum(r["wall_s"] for r in records)
    examples = records[-1]["examples"]
    read = examples + len(records) * val_videos
    return {
        "settings": run.__dict__,
        "steps": records[-1]["step"],
        "train_videos": examples,
        "val_videos_per_evaluation": val_videos,
        "windows_s": window_s,
        "train_videos_per_s": examples / window_s,
        "videos_read_per_s": read / window_s,
        "command_wall_s": done.wall_s,
        "outside_windows_s": done.wall_s - window_s,
        "peak_rss_mib": done.peak_rss_mib,
    }


def eval_points(samples: list[RssSample], records: list[dict]) -> list[dict]:
    """The RSS when each evaluation's metrics line had just been written."""
    points = []
    for k, record in enumerate(records, start=1):
        after = next((s for s in samples if s.lines >= k), None)
        if after is not None:
            points.append(
                {
                    "evaluation": k,
                    "step": record["step"],
                    "examples": record["examples"],
                    "t_s": round(after.t_s, 2),
                    "rss_mib": round(after.rss_mib, 1),
                }
            )
    return points


def flatness(samples: list[RssSample], points: list[dict], warm_examples: int = 0) -> dict:
    """Slope of RSS against the step, and early against late RSS, over the evaluations after
    ``warm_examples`` training videos (one pass: the model, the optimizer, the first checkpoint
    and the bounded chunk cache are in place by then)."""
    later = [p for p in points if p["examples"] > warm_examples]
    if len(later) < 3:
        return {"flat": None, "why": "fewer than 3 evaluations after the warm-up were sampled"}
    steps = np.array([p["step"] for p in later], dtype=float)
    rss = np.array([p["rss_mib"] for p in later])
    slope = float(np.polyfit(steps, rss, 1)[0])  # MiB per step
    start, end = later[0]["t_s"], samples[-1].t_s
    middle = (start + end) / 2
    early = [s.rss_mib for s in samples if start <= s.t_s < middle]
    late = [s.rss_mib for s in samples if s.t_s >= middle]
    early_mib, late_mib = statistics.median(early), statistics.median(late)
    tolerance = max(FLAT_TOLERANCE_MIB, FLAT_TOLERANCE_FRACTION * early_mib)
    fitted_growth = slope * (steps[-1] - steps[0])
    flat = abs(fitted_growth) <= tolerance and late_mib - early_mib <= tolerance
    return {
        "from_step": int(steps[0]),
        "warmup_rss_growth_mib": later[0]["rss_mib"] - points[0]["rss_mib"],
        "rss_slope_mib_per_1k_steps": slope * 1000,
        "fitted_growth_mib": fitted_growth,
        "early_median_mib": early_mib,
        "late_median_mib": late_mib,
        "tolerance_mib": tolerance,
        "flat": bool(flat),
        "rule": (
            "from the first evaluation after one pass over the train set, the fitted RSS growth "
            "and the late-half minus early-half median RSS are both within the tolerance"
        ),
    }


def flat_memory(store: Path, out: Path, run: TrainRun, train_videos: int) -> dict:
    """The epoch-free run: RSS over time, at each evaluation, and the flatness check."""
    done, records, _ = heads_train(store, out, run)
    points = eval_points(done.samples, records)
    examples = records[-1]["examples"]
    return {
        "settings": run.__dict__,
        "steps": records[-1]["step"],
        "train_videos_in_store": train_videos,
        "passes_over_train_set": examples / max(1, train_videos),
        "command_wall_s": done.wall_s,
        "peak_rss_mib": done.peak_rss_mib,
        "samples": len(done.samples),
        "eval_points": points,
        "check": flatness(done.samples, points, warm_examples=train_videos),
    }


def default_steps(train_videos: int, batch_size: int, passes: float = 3.0) -> int:
    return max(10, math.ceil(passes * train_videos / batch_size))
