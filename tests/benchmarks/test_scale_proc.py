"""The scale benchmark's memory measurement: a child's peak RSS and sampled RSS see a real
allocation, and the flatness check tells a growing run from a flat one."""

from __future__ import annotations

import sys

from benchmarks.scale_proc import RssSample, run_measured
from benchmarks.scale_train import flatness

# Holds 200 MiB of touched memory for a moment, then exits.
ALLOCATE = (
    "import time; b = bytearray(200 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(0.4)"
)


def test_child_peak_and_samples_see_an_allocation():
    run = run_measured([sys.executable, "-c", ALLOCATE], sample_every_s=0.05)
    assert run.returncode == 0
    assert run.peak_rss_mib >= 200
    assert run.samples and max(s.rss_mib for s in run.samples) >= 200


def _run(leak_mib_per_s: float, warmup_mib: float = 0.0) -> tuple[list[RssSample], list[dict]]:
    """100 s sampled every 0.5 s, an evaluation every 10 s (100 steps, 800 videos); the first
    20 s add ``warmup_mib`` (a cache filling), then ``leak_mib_per_s`` grows throughout."""

    def rss(t: float) -> float:
        return 500 + warmup_mib * min(t, 20) / 20 + leak_mib_per_s * t

    samples = [RssSample(t / 2, rss(t / 2), int(t / 20)) for t in range(200)]
    points = [
        {"step": 100 * k, "examples": 800 * k, "t_s": 10.0 * k, "rss_mib": rss(10.0 * k)}
        for k in range(1, 10)
    ]
    return samples, points


def test_flatness_tells_growth_from_flat():
    assert flatness(*_run(0.0))["flat"] is True
    leaking = flatness(*_run(2.0))
    assert leaking["flat"] is False
    assert leaking["rss_slope_mib_per_1k_steps"] > 0


def test_flatness_leaves_the_first_pass_out():
    # A cache filling during the first pass (1,600 videos) is not growth; a leak after it is.
    assert flatness(*_run(0.0, warmup_mib=100), warm_examples=1600)["flat"] is True
    assert flatness(*_run(0.0, warmup_mib=100))["flat"] is False
    assert flatness(*_run(2.0, warmup_mib=100), warm_examples=1600)["flat"] is False
