"""Run a command in a child process and measure it: wall time, the child's own peak RSS (from
``wait4``, so earlier children do not count), and optionally its RSS sampled over time."""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

MIB = 2**20


def rss_bytes(pid: int) -> int | None:
    """Resident set size of ``pid`` now (psutil when installed, else /proc), None once gone."""
    try:
        import psutil
    except ImportError:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return None


def _lines(path: Path | None) -> int:
    try:
        return path.read_bytes().count(b"\n") if path else 0
    except OSError:
        return 0


@dataclass(frozen=True)
class RssSample:
    t_s: float  # since the child started
    rss_mib: float
    lines: int  # lines of the watched file at that moment (e.g. evaluations written so far)


class RssSampler(threading.Thread):
    """Samples a process's RSS every ``interval_s`` until it exits, with the line count of
    ``watch`` at each sample so that samples can be matched to what the process wrote."""

    def __init__(self, pid: int, interval_s: float, watch: Path | None = None) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval_s, self.watch = pid, interval_s, watch
        self.samples: list[RssSample] = []
        self._halt = threading.Event()
        self._t0 = time.perf_counter()

    def run(self) -> None:
        while not self._halt.is_set():
            rss = rss_bytes(self.pid)
            if rss is None:
                return
            t = time.perf_counter() - self._t0
            self.samples.append(RssSample(t, rss / MIB, _lines(self.watch)))
            self._halt.wait(self.interval_s)

    def stop(self) -> None:
        self._halt.set()
        self.join()


@dataclass
class Measured:
    returncode: int
    wall_s: float
    peak_rss_mib: float
    stdout: str
    stderr: str
    samples: list[RssSample] = field(default_factory=list)


def run_measured(
    cmd: list[str],
    *,
    env: dict | None = None,
    cwd: Path | None = None,
    sample_every_s: float | None = None,
    watch: Path | None = None,
) -> Measured:
    """Run ``cmd`` to the end; its output is captured (to files, so a chatty child never blocks
    on a full pipe)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=cwd)
        sampler = RssSampler(proc.pid, sample_every_s, watch) if sample_every_s else None
        if sampler:
            sampler.start()
        # wait4 reports this child's own peak RSS (ru_maxrss, KiB on Linux).
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        if sampler:
            sampler.stop()
        out.seek(0)
        err.seek(0)
        return Measured(
            returncode=proc.returncode,
            wall_s=wall,
            peak_rss_mib=usage.ru_maxrss / 1024,
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
            samples=sampler.samples if sampler else [],
        )
