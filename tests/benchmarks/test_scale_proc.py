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


def _samples(growth_mib_per_s: float) -> tuple[list[RssSample], list[dict]]:
    samples = [RssSample(t / 2, 500 + growth_mib_per_s * t / 2, int(t / 20)) for t in range(200)]
    points = [
        {"step": 100 * k, "t_s": 10.0 * k, "rss_mib": 500 + growth_mib_per_s * 10 * k}
        for k in range(1, 10)
    ]
    return samples, points


def test_flatness_tells_growth_from_flat():
    assert flatness(*_samples(0.0))["flat"] is True
    leaking = flatness(*_samples(2.0))
    assert leaking["flat"] is False
    assert leaking["rss_slope_mib_per_1k_steps"] > 0
