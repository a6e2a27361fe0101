"""vidfeat.atomic: a replaced file is the old one or the new one, never half of either."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from vidfeat import atomic

REPO = Path(__file__).resolve().parents[2]


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(atomic.TMP_SUFFIX))


def test_write_replaces_whole_files(tmp_path):
    target = tmp_path / "a.json"
    atomic.write_text(target, "old")
    atomic.write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    with atomic.atomic_path(tmp_path / "b.bin", durable=False) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".b.bin.")
        tmp.write_bytes(b"x" * 10)
        assert not (tmp_path / "b.bin").exists()  # visible only once complete
    assert (tmp_path / "b.bin").read_bytes() == b"x" * 10
    assert _leftovers(tmp_path) == []


def test_an_error_mid_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "ckpt.pt"
    atomic.write_bytes(target, b"old contents")
    with pytest.raises(RuntimeError), atomic.atomic_open(target, "wb") as fh:
        fh.write(b"half of the new")
        raise RuntimeError("disk gone")
    assert target.read_bytes() == b"old contents"
    assert _leftovers(tmp_path) == []
    with pytest.raises(ValueError, match="whole files"), atomic.atomic_open(target, "a"):
        pass


def test_a_killed_writer_leaves_the_old_file(tmp_path):
    target = tmp_path / "metrics.json"
    atomic.write_text(target, "complete old file")
    # The child writes part of the new file, says so, then waits to be killed.
    code = (
        "import sys, time; from vidfeat import atomic\n"
        f"with atomic.atomic_open({str(target)!r}, 'w') as fh:\n"
        "    fh.write('half of the new'); fh.flush()\n"
        "    print('written', flush=True); time.sleep(60)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "written"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    assert target.read_text() == "complete old file"
    (leftover,) = _leftovers(tmp_path)  # hidden, and named so a writer can sweep it
    assert leftover.startswith(".metrics.json.")
    assert (tmp_path / leftover).read_text() == "half of the new"


def test_create_publishes_only_a_file_that_does_not_exist_yet(tmp_path):
    final = tmp_path / "root.h5"
    first, second = atomic.temp_name(final), atomic.temp_name(final)
    first.write_bytes(b"first")
    second.write_bytes(b"second")
    assert atomic.create(first, final) is True
    assert atomic.create(second, final) is False  # a rename would have replaced it
    assert final.read_bytes() == b"first"
    assert _leftovers(tmp_path) == []
