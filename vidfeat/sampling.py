"""Which frames to keep: pure functions on presentation timestamps.

The rule (see docs on frame sampling): with ``first`` the pts of the first frame and
``duration = last pts + last frame duration - first``, sample at

    t_k = first + k / fps   for every integer k >= 0 with k < fps * duration,

capped at ``max_frames`` points, and at each t_k take the frame on screen: the last frame
whose pts <= t_k + tick/2, where ``tick`` is the stream's time base. A clip shorter than one
interval still gives one frame (k = 0).

Everything is exact rational arithmetic (``fractions.Fraction``); float rounding on t_k
is exactly what gets the last frame wrong on 29.97 fps clips. The half tick is the
container's own rounding: Matroska and WebM store times in whole milliseconds, so the third
frame of a 30 fps clip, shown at 66.67 ms, is stored at 67 ms. Compared exactly with t_2 =
66.67 ms, it would lose to the frame before it, and sampling at the video's own rate would
repeat every third frame. A frame stored within half a tick after t_k may have been shown at
t_k, so it is taken. Where ticks are exact (MP4's 1/15360 s, 1/30000 s) this changes nothing.
"""

from __future__ import annotations

import itertools
import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Generic, TypeVar

import numpy as np

from vidfeat.errors import ConfigError

T = TypeVar("T")
Seconds = Fraction | float | int


def parse_fps(fps: Fraction | float | int | str) -> Fraction:
    """Sampling rate as an exact positive Fraction: 1, 0.5, "0.5", "30000/1001"."""
    try:
        # str() first so a float like 0.1 means one tenth, not its binary neighbour.
        rate = fps if isinstance(fps, Fraction) else Fraction(str(fps).strip())
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"fps must be a positive number, got {fps!r}") from None
    if rate <= 0:
        raise ConfigError(f"fps must be a positive number, got {fps!r}")
    return rate


def format_fps(fps: Fraction | float | int | str) -> str:
    """One spelling per rate, so ``1``, ``1.0`` and ``1/1`` are the same text: an integer
    (``"1"``), else a terminating decimal (``"0.5"``, ``"29.97"``), else ``"p/q"``."""
    rate = parse_fps(fps)
    if rate.denominator == 1:
        return str(rate.numerator)
    den = rate.denominator
    twos = fives = 0
    while den % 2 == 0:
        den, twos = den // 2, twos + 1
    while den % 5 == 0:
        den, fives = den // 5, fives + 1
    if den != 1:
        return f"{rate.numerator}/{rate.denominator}"
    digits = max(twos, fives)
    text = str(rate.numerator * 10**digits // rate.denominator).rjust(digits + 1, "0")
    return f"{text[:-digits]}.{text[-digits:]}"


def _exact(t: Seconds) -> Fraction:
    return t if isinstance(t, Fraction) else Fraction(t)


def _check_max_frames(max_frames: int | None) -> None:
    if max_frames is not None and max_frames < 1:
        raise ConfigError(f"max_frames must be >= 1 or None, got {max_frames!r}")


def num_samples(
    duration_s: Seconds, fps: Fraction | float | int | str, max_frames: int | None = None
) -> int:
    """How many grid points a clip of ``duration_s`` gets: #{k : k < fps * duration}, >= 1."""
    _check_max_frames(max_frames)
    n = max(1, math.ceil(parse_fps(fps) * _exact(duration_s)))
    return n if max_frames is None else min(n, max_frames)


def grid_times(
    duration_s: Seconds, fps: Fraction | float | int | str, max_frames: int | None = None
) -> list[Fraction]:
    """The sampling times t_k, relative to the first frame."""
    rate = parse_fps(fps)
    return [Fraction(k) / rate for k in range(num_samples(duration_s, rate, max_frames))]


def select_indices(
    pts_s: Sequence[Seconds],
    duration_s: Seconds,
    fps: Fraction | float | int | str,
    max_frames: int | None = None,
    tick: Seconds = 0,
) -> list[int]:
    """Indices into ``pts_s`` of the frames on screen at each t_k.

    ``pts_s`` are the presentation timestamps of all decoded frames in presentation order
    (non-decreasing); ``duration_s`` is measured from ``pts_s[0]``; ``tick`` is the stream's
    time base (0: pts are exact). Two grid points may pick the same frame when the video's
    own rate is below ``fps``.
    """
    rate = parse_fps(fps)
    if not pts_s:
        return []
    pts = [_exact(t) for t in pts_s]
    if any(b < a for a, b in itertools.pairwise(pts)):
        raise ValueError("pts_s must be in presentation (non-decreasing) order")
    first, slack = pts[0], _exact(tick) / 2
    # bisect_right gives the count of frames with pts <= t; the last of them is on screen.
    grid = grid_times(duration_s, rate, max_frames)
    return [bisect_right(pts, first + t + slack) - 1 for t in grid]


def select_tick_indices(
    pts_ticks: np.ndarray,
    duration_ticks: int,
    time_base: Fraction,
    fps: Fraction | float | int | str,
    max_frames: int | None = None,
) -> np.ndarray:
    """``select_indices`` for integer pts in ``time_base`` units, vectorised for long videos.

    ``pts_ticks`` is (N,) int64 in presentation order. Exact: a tick count is <= t + 1/2
    exactly when it is <= floor(t + 1/2), so each grid time becomes one integer threshold.
    """
    rate = parse_fps(fps)
    ticks = np.asarray(pts_ticks, dtype=np.int64)
    if ticks.size == 0:
        return np.zeros(0, dtype=np.int64)
    if np.any(np.diff(ticks) < 0):
        raise ValueError("pts_ticks must be in presentation (non-decreasing) order")
    grid = grid_times(Fraction(duration_ticks) * time_base, rate, max_frames)
    half = Fraction(1, 2)  # the rule's half tick (module docstring)
    thresholds = np.array([math.floor(t / time_base + half) for t in grid], dtype=np.int64)
    return np.searchsorted(ticks, ticks[0] + thresholds, side="right").astype(np.int64) - 1


def pickable_ticks(
    pts_ticks: np.ndarray,
    time_base: Fraction,
    fps: Fraction | float | int | str,
    max_frames: int | None = None,
) -> set[int]:
    """The pts (in ``time_base`` ticks) of every frame the rule can pick, from the pts of all
    frames in any order, plus the first frame and the last two, which fix the grid's origin
    and the decoded duration. A decoder may skip every other frame that no kept frame needs.
    """
    ticks = np.unique(np.asarray(pts_ticks, dtype=np.int64))  # sorted: presentation order
    if ticks.size == 0:
        return set()
    # Grid times past the last pts pick the last frame, which is kept anyway, so the span up
    # to the last pts is enough whatever the true duration.
    span = int(ticks[-1] - ticks[0]) + 1
    picks = select_tick_indices(ticks, span, time_base, fps, max_frames)
    return {int(t) for t in ticks[picks]} | {int(ticks[0])} | {int(t) for t in ticks[-2:]}


@dataclass(frozen=True)
class Selected(Generic[T]):
    """One sampled frame: grid time t_k and the picked frame's own pts, both from the first pts."""

    grid_s: Fraction
    pts_s: Fraction
    frame: T


class FrameSelector(Generic[T]):
    """Streaming form of the rule: feed frames in pts order, get picks as soon as they are known.

    Holds at most one frame (the one currently on screen). ``done`` turns true once
    ``max_frames`` picks were made, so the caller can stop decoding there.
    """

    def __init__(
        self,
        fps: Fraction | float | int | str,
        max_frames: int | None = None,
        tick: Seconds = 0,
    ) -> None:
        """``tick``: the stream's time base in seconds (0: pts are exact)."""
        _check_max_frames(max_frames)
        self.fps = parse_fps(fps)
        self.max_frames = max_frames
        self._slack = _exact(tick) / 2
        self.first_pts_s: Fraction | None = None
        self.n_selected = 0
        self.n_frames = 0  # frames accepted so far (out-of-order ones are dropped)
        self._held: T | None = None
        self._held_pts: Fraction | None = None
        self._held_duration: Fraction | None = None
        self._prev_interval: Fraction | None = None
        self._finished = False

    @property
    def done(self) -> bool:
        """True once no further frame can be picked."""
        capped = self.max_frames is not None and self.n_selected >= self.max_frames
        return capped or self._finished

    @property
    def end_s(self) -> Fraction | None:
        """First pts + decoded duration so far: the end of the held frame."""
        if self._held_pts is None:
            return None
        return self._held_pts + (self._held_duration or self._prev_interval or Fraction(0))

    def push(
        self, pts_s: Seconds, frame: T, duration_s: Seconds | None = None
    ) -> list[Selected[T]]:
        """Feed the next decoded frame; returns the picks it decides (possibly none)."""
        if self.done:
            return []
        pts = _exact(pts_s)
        if self._held_pts is not None and pts < self._held_pts:
            return []  # out-of-order frame from a broken stream: never shown in sequence
        picks: list[Selected[T]] = []
        if self.first_pts_s is None:
            self.first_pts_s = pts
        elif pts > self._held_pts:
            # Every pending t_k before this pts had the held frame on screen.
            picks = self._emit(before_pts=pts)
            self._prev_interval = pts - self._held_pts
        self._held, self._held_pts = frame, pts
        self._held_duration = _exact(duration_s) if duration_s else None
        self.n_frames += 1
        return picks

    def cap_end(self, end_s: Seconds) -> None:
        """End the held frame no later than ``end_s`` (pts from the stream's start), when that
        is after its pts: a frame's own duration may be a gap between decode times rather than
        how long it is shown (B-frames, variable frame rate), and reach past the stream's end."""
        end = _exact(end_s)
        if self._held_pts is not None and self._held_pts < end < self.end_s:
            self._held_duration = end - self._held_pts

    def finish(self) -> list[Selected[T]]:
        """End of stream: the last frame covers every remaining t_k before the decoded end."""
        if self.done or self._held_pts is None:
            self._finished = True
            return []
        total = num_samples(self.end_s - self.first_pts_s, self.fps, self.max_frames)
        picks = self._emit(total=total)
        self._finished = True
        return picks

    def _emit(
        self, before_pts: Fraction | None = None, total: int | None = None
    ) -> list[Selected[T]]:
        """Pick the held frame for each pending t_k < ``before_pts`` (or up to ``total`` picks)."""
        picks = []
        while not self.done and (total is None or self.n_selected < total):
            grid = Fraction(self.n_selected) / self.fps
            if before_pts is not None and self.first_pts_s + grid + self._slack >= before_pts:
                break  # the next frame is on screen at this t_k
            picks.append(Selected(grid, self._held_pts - self.first_pts_s, self._held))
            self.n_selected += 1
        return picks
