"""Cutting fixed-length windows at given sample positions out of a stream of audio chunks.

Only the samples a pending window can still need are kept: at most one window plus one
decoded chunk, however long the audio is.
"""

from __future__ import annotations

import numpy as np


class Timeline:
    """Lays chunks that carry (possibly rounded) absolute positions end to end on one clock.

    A chunk whose position is within ``jitter`` samples of the previous chunk's end counts as
    contiguous: containers round timestamps (Matroska to 1 ms). A position further past the
    end leaves a gap of zeros (the stream skipped damaged data); one before it overlaps what
    came before, and the overlapping samples are dropped.
    """

    def __init__(self, jitter: int = 0) -> None:
        self.jitter = int(jitter)
        self.first_sample: int | None = None
        self.end_sample: int | None = None  # one past the last sample placed
        self.gap_samples = 0  # zeros inserted where chunks left gaps

    def place(self, samples: np.ndarray, position: int | None = None) -> np.ndarray:
        """The samples that continue the timeline from ``end_sample``, for a chunk at absolute
        sample index ``position`` (required for the first chunk; None: right after the
        previous one)."""
        samples = np.asarray(samples, np.float64)
        if self.first_sample is None:
            if position is None:
                raise ValueError("the first chunk needs its absolute position")
            self.first_sample = self.end_sample = int(position)
        elif position is not None and abs(position - self.end_sample) > self.jitter:
            if position > self.end_sample:
                self.gap_samples += position - self.end_sample
                samples = np.concatenate([np.zeros(position - self.end_sample), samples])
            else:
                samples = samples[self.end_sample - position :]
        self.end_sample += len(samples)
        return samples


class WindowCutter:
    """Collects windows of ``length`` samples starting at ascending absolute sample ``starts``.

    Feed chunks with ``push`` (placed on a ``Timeline`` with ``jitter``); samples before the
    first chunk or after the last are zeros.
    """

    def __init__(self, starts: np.ndarray, length: int, jitter: int = 0) -> None:
        self.starts = np.asarray(starts, np.int64)
        if np.any(np.diff(self.starts) < 0):
            raise ValueError("window starts must be ascending")
        self.length = int(length)
        self.timeline = Timeline(jitter)
        self.windows = np.zeros((len(self.starts), self.length), np.float64)
        self._next = 0  # first window not yet complete
        self._buf = np.zeros(0, np.float64)
        self._buf_start: int | None = None  # absolute index of _buf[0]

    @property
    def first_sample(self) -> int | None:
        return self.timeline.first_sample

    @property
    def end_sample(self) -> int | None:
        return self.timeline.end_sample

    @property
    def buffered_samples(self) -> int:
        """Samples held right now for windows not yet complete."""
        return len(self._buf)

    @property
    def done(self) -> bool:
        return self._next >= len(self.starts)

    def push(self, samples: np.ndarray, position: int | None = None) -> None:
        """Append mono samples at absolute sample index ``position`` (see ``Timeline.place``)."""
        samples = self.timeline.place(samples, position)
        if self._buf_start is None:
            self._buf_start = self.first_sample
        self._buf = np.concatenate([self._buf, samples])
        while not self.done and self.starts[self._next] + self.length <= self.end_sample:
            self._cut(self._next)
            self._next += 1
        self._drop_consumed()

    def finish(self) -> np.ndarray:
        """(n_windows, length) float64; windows past the end are zero-padded."""
        while not self.done:
            self._cut(self._next)
            self._next += 1
        self._buf = np.zeros(0, np.float64)
        return self.windows

    def _cut(self, k: int) -> None:
        if self._buf_start is None:
            return  # no audio at all: the window stays zeros
        start = int(self.starts[k])
        lo, hi = max(start, self._buf_start), min(start + self.length, self.end_sample)
        if hi > lo:
            self.windows[k, lo - start : hi - start] = self._buf[
                lo - self._buf_start : hi - self._buf_start
            ]

    def _drop_consumed(self) -> None:
        keep_from = self.end_sample if self.done else int(self.starts[self._next])
        drop = min(max(0, keep_from - self._buf_start), len(self._buf))
        if drop:
            self._buf = self._buf[drop:]
            self._buf_start += drop
