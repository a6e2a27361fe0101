"""Threaded conversion into float32 batches, and the allocator setting of the commands."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from vidfeat import convert
from vidfeat.pca.quantize import dequantize

RANGES = [(-2.0, 2.0), (-1.0, 3.0), (-2.5, 3.7), (0.0, 1e-3)]


def _numpy_only(monkeypatch: pytest.MonkeyPatch) -> None:
    # What a process that never imported torch runs (convert looks torch up in sys.modules).
    monkeypatch.setitem(sys.modules, "torch", None)


@pytest.mark.parametrize(("lo", "hi"), RANGES)
def test_threaded_dequantize_is_bit_identical_to_the_float32_formula(lo, hi, monkeypatch):
    q = np.random.default_rng(0).integers(0, 256, size=(300, 1024), dtype=np.uint8)
    assert q.size >= convert.THREADED_MIN  # large enough for torch's threads
    span = hi - lo
    per_element = q.astype(np.float32) * np.float32(span / 255) + np.float32(span / 512 + lo)
    batch = np.full((2, 320, 1030), 7.0, dtype=np.float32)  # a padded batch, a strided slice
    threaded = dequantize(q, lo, hi, out=batch[1, :300, 3:1027])
    assert threaded.tobytes() == per_element.tobytes()
    batch[1, :300, 3:1027] = 7.0
    assert (batch == 7.0).all()  # nothing else written
    _numpy_only(monkeypatch)
    assert dequantize(q, lo, hi).tobytes() == per_element.tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.uint8])
def test_copy_into_a_batch_slice_matches_numpy(dtype, monkeypatch):
    src = np.random.default_rng(1).normal(0, 3, size=(200, 2048)).astype(dtype)
    src = src[::2]  # a strided source, as a frame selection can be
    threaded = np.full((120, 2050), 5.0, dtype=np.float32)
    convert.copy_into(threaded[10:110, 1:2049], src)
    _numpy_only(monkeypatch)
    plain = np.full((120, 2050), 5.0, dtype=np.float32)
    convert.copy_into(plain[10:110, 1:2049], src)
    assert threaded.tobytes() == plain.tobytes()
    np.testing.assert_array_equal(threaded[10:110, 1:2049], src.astype(np.float32))


def test_a_read_only_source_converts_without_a_warning():
    # In a process of its own: torch warns only once per process, so in the test process any
    # earlier test's read-only conversion would hide the warning whatever convert does.
    code = textwrap.dedent(
        """
        import warnings
        import numpy as np
        import torch
        from vidfeat import convert
        src = np.arange(1 << 16, dtype=np.float32)
        src.flags.writeable = False  # as cached chunks are
        out = np.empty_like(src)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            convert.copy_into(out, src)
        assert (out == src).all()
        print(sum("not writable" in str(w.message) for w in caught))
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0", done.stderr


def _faults_of_reallocating(env: dict[str, str]) -> tuple[bool, int, int]:
    """Minor page faults of allocating, filling and freeing a 64 MiB tensor five times, after
    16 times; and how much the resident set grew over those five."""
    code = textwrap.dedent(
        """
        import resource, torch
        from vidfeat.allocator import keep_freed_memory
        kept = keep_freed_memory()
        def cycle():  # torch's CPU tensors come from malloc in 4 KiB pages (numpy asks for THP)
            block = torch.ones(64 << 20, dtype=torch.uint8)  # written: every page faults in
            del block
        def resident():
            return int(open("/proc/self/statm").read().split()[1])
        for _ in range(16):  # glibc's heap settles (aligned blocks leave gaps at first)
            cycle()
        before, pages = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, resident()
        for _ in range(5):
            cycle()
        print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, resident() - pages)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    kept, faults, grown = out.stdout.split()
    return kept == "True", int(faults), int(grown)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_keep_freed_memory_stops_large_blocks_faulting_in_again():
    env = {k: v for k, v in os.environ.items() if k != "VIDFEAT_MALLOC"}
    pages = 5 * (64 << 20) // os.sysconf("SC_PAGE_SIZE")
    kept, faults, grown = _faults_of_reallocating(env)
    assert kept and faults < pages // 100  # the freed block is reused as it is
    assert grown < pages // 100  # and the footprint has stopped growing
    kept, faults, _ = _faults_of_reallocating({**env, "VIDFEAT_MALLOC": "system"})
    assert not kept and faults > pages * 0.9  # glibc's default: unmapped, faulted in again
