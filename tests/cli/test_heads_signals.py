"""`heads train` stopped by a scheduler (SIGTERM) or Ctrl-C (SIGINT): exit 130, a message that
says what to do next, nothing half-made left behind, and a run that resumes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.heads.stores import make_cluster_store

ROOT = Path(__file__).resolve().parents[2]
# Run this checkout's cli/heads.py by path: an installed `vidfeat_cli` may be another copy.
RUN = "import runpy, sys; sys.argv[0] = 'heads'; runpy.run_path(sys.argv.pop(1), None, '__main__')"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cluster_store(tmp_path_factory.mktemp("sig") / "s.zarr", 400, dim=32)


def _train(store: Path, out: Path, *extra: str) -> subprocess.Popen:
    args = ["train", str(store), "-m", "lstm", "-o", str(out), "--epochs", "6"]
    args += ["--hidden-size", "32", "--batch-size", "4", "--patience", "0", "--device", "cpu"]
    cmd = [sys.executable, "-c", RUN, str(ROOT / "cli" / "heads.py"), "-q", *args, *extra]
    return subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stopped_before_a_checkpoint_leaves_nothing(store, tmp_path, sig):
    out = tmp_path / "run"
    proc = _train(store, out)
    _wait_for(lambda: (out / "config.json").exists(), proc)
    proc.send_signal(sig)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130 and "Traceback" not in err, err
    if "nothing was kept" in err:  # stopped before the first evaluation, as intended
        assert not out.exists()
    else:  # the first checkpoint came first: then it must say how to go on from it
        assert "add --resume" in err and (out / "last.pt").exists()


def test_sigterm_after_a_checkpoint_keeps_the_run_and_resume_finishes_it(store, tmp_path):
    out = tmp_path / "run"
    proc = _train(store, out)
    metrics = out / "metrics.jsonl"
    _wait_for(lambda: metrics.exists() and metrics.read_text().count("\n") >= 2, proc)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("interrupted: the last checkpoint is kept")
    assert "add --resume to the same command" in err
    again = _train(store, out, "--resume")
    err = again.communicate(timeout=300)[1]
    assert again.returncode == 0, err
    history = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2, 3, 4, 5, 6]
    assert (out / "test_metrics.json").exists()
