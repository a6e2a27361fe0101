"""Test-only decoders and transforms, importable by spawned decode workers.

``DecodePool(..., decoder="faulty", extra_modules=["tests.vidfeat.pool_helpers"])`` makes each
worker import this module. The "faulty" decoder misbehaves according to the file name:

- ``hang*``: sleeps forever before the first frame
- ``spin*``: loops forever inside one C call, holding the GIL (like decord on a bad header)
- ``segv*``: the process dies of SIGSEGV
- ``stallspin*``: delivers the first frame, then loops forever holding the GIL
- ``stall*``: delivers the first frame, then sleeps forever
- anything else: decodes normally with PyAV

``main(paths)`` decodes the videos with this decoder and prints the worker pids once every
video has delivered something: a target for signal tests, run in a subprocess.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

from vidfeat.decode import DECODERS, PyAVDecoder, SampledFrame, VideoDecoder, VideoInfo
from vidfeat.decode.pool import DecodePool

FAULTS = ("stallspin", "stall", "hang", "spin", "segv")  # first prefix match wins
OUT_SIZE = 299


@DECODERS.register("faulty")
class FaultyDecoder(VideoDecoder):
    name = "faulty"

    def __init__(self, path: Path, threads: int = 0) -> None:
        super().__init__(path, threads)
        self.fault = next((f for f in FAULTS if self.path.stem.startswith(f)), None)
        needs_file = self.fault in (None, "stall", "stallspin")
        self._inner = PyAVDecoder(path) if needs_file else None
        self.info = self._inner.info if self._inner else VideoInfo(None, None, 0, 0, "none", None)

    def _sample(self, fps: Fraction, max_frames: int | None) -> Iterator[SampledFrame]:
        if self.fault == "segv":
            os.kill(os.getpid(), signal.SIGSEGV)
        if self.fault == "hang":
            time.sleep(3600)
        if self.fault == "spin":
            sum(itertools.repeat(1))  # never returns, never releases the GIL
        frames = self._inner.sample(fps, max_frames)
        if self.fault in ("stall", "stallspin"):
            yield next(frames)
            if self.fault == "stall":
                time.sleep(3600)
            sum(itertools.repeat(1))
        yield from frames
        self.decoded_duration_s = self._inner.decoded_duration_s

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()


def upscale_299(frame: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (299, 299, 3) float32 by nearest neighbour: ~1 MB, like the backbone's
    input, so a few frames overflow a pipe and make the worker wait for the consumer."""
    rows = np.arange(OUT_SIZE) * frame.shape[0] // OUT_SIZE
    cols = np.arange(OUT_SIZE) * frame.shape[1] // OUT_SIZE
    return frame[rows][:, cols].astype(np.float32)


def torch_loaded(frame: np.ndarray) -> np.ndarray:
    """A frame transform reporting whether the worker process has torch imported."""
    return np.array([float("torch" in sys.modules)], np.float32)


ENV_MARK = "VIDFEAT_TEST_POOL_MARK"


def env_mark(frame: np.ndarray) -> np.ndarray:
    """A frame transform reporting the worker's ``$VIDFEAT_TEST_POOL_MARK`` (-1: unset)."""
    return np.array([float(os.environ.get(ENV_MARK, -1))], np.float32)


def main(paths: list[str]) -> None:
    pool = DecodePool(
        len(paths),
        decoder="faulty",
        chunk_frames=1,
        timeout_s=600,
        extra_modules=["tests.vidfeat.pool_helpers"],
    )
    with pool:
        for path in paths:
            pool.submit(Path(path).stem, path)
        seen = set()
        for event in pool.events():
            seen.add(event.job_id)
            if len(seen) == len(paths):
                print(" ".join(map(str, pool.worker_pids)), flush=True)
