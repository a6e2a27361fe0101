"""The 1-fps grid rule on exact timestamps: t_k = k / fps for k < fps * duration."""

from __future__ import annotations

import gc
import weakref
from fractions import Fraction

import numpy as np
import pytest

from vidfeat.errors import ConfigError
from vidfeat.sampling import (
    FrameSelector,
    grid_times,
    num_samples,
    parse_fps,
    pickable_ticks,
    select_indices,
    select_tick_indices,
)


def cfr(n_frames: int, fps: Fraction) -> tuple[list[Fraction], Fraction]:
    """pts of a constant-rate clip and its duration (last pts + one frame)."""
    return [Fraction(i) / fps for i in range(n_frames)], Fraction(n_frames) / fps


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, Fraction(1)),
        ("1", Fraction(1)),
        ("0.5", Fraction(1, 2)),
        (0.5, Fraction(1, 2)),
        (0.1, Fraction(1, 10)),  # the decimal the user typed, not float(0.1)'s binary value
        ("30000/1001", Fraction(30000, 1001)),
        (Fraction(2, 3), Fraction(2, 3)),
    ],
)
def test_parse_fps_is_exact(value, expected):
    assert parse_fps(value) == expected


@pytest.mark.parametrize("bad", [0, -1, "0", "abc", "1/0", ""])
def test_parse_fps_rejects_non_positive_or_garbage(bad):
    with pytest.raises(ConfigError):
        parse_fps(bad)


@pytest.mark.parametrize(
    ("duration", "fps", "max_frames", "expected"),
    [
        (Fraction(2), Fraction(1), None, 2),  # exactly 2 s: t = 0, 1 (t = 2 is the end)
        (Fraction(2) + Fraction(1, 15360), Fraction(1), None, 3),  # one tick more: t = 2 too
        (Fraction(60 * 1001, 30000), Fraction(1), None, 3),  # 60 frames at 29.97: 2.002 s
        (Fraction(59 * 1001, 30000), Fraction(1), None, 2),  # 59 frames: 1.968 s
        (Fraction(50, 25), Fraction(1), None, 2),  # 25 fps, 50 frames
        (Fraction(2, 5), Fraction(1), None, 1),  # shorter than one interval: still one
        (Fraction(0), Fraction(1), None, 1),  # a single frame without duration
        (Fraction(5), Fraction(1, 2), None, 3),  # 0.5 fps: t = 0, 2, 4
        (Fraction(600), Fraction(1), 300, 300),  # capped
        (Fraction(299, 1), Fraction(1), 300, 299),  # cap not reached
    ],
)
def test_num_samples_edges(duration, fps, max_frames, expected):
    assert num_samples(duration, fps, max_frames) == expected
    assert len(grid_times(duration, fps, max_frames)) == expected


def test_num_samples_rejects_bad_cap():
    with pytest.raises(ConfigError):
        num_samples(Fraction(3), Fraction(1), max_frames=0)


def test_30fps_takes_the_frame_exactly_at_each_second():
    pts, duration = cfr(90, Fraction(30))
    assert select_indices(pts, duration, 1) == [0, 30, 60]


def test_2997fps_takes_the_frame_still_on_screen():
    pts, duration = cfr(90, Fraction(30000, 1001))  # 3.003 s, so t = 3 is sampled too
    # frame 30 starts at 1.001 s: at t = 1 frame 29 is still on screen
    assert select_indices(pts, duration, 1) == [0, 29, 59, 89]


def test_25fps_and_fractional_rates():
    pts, duration = cfr(125, Fraction(25))  # 5 s
    assert select_indices(pts, duration, 1) == [0, 25, 50, 75, 100]
    assert select_indices(pts, duration, "0.5") == [0, 50, 100]
    # t = 0.5 falls between frames 12 (0.48 s) and 13 (0.52 s)
    assert select_indices(pts, duration, 2)[:4] == [0, 12, 25, 37]


def test_exact_arithmetic_where_floats_pick_the_wrong_frame():
    pts, duration = cfr(50, Fraction(25))  # e.g. an AVI with time base 1/25
    # Frame 35 starts exactly at t_7 = 1.4 s, but in floats it starts after it,
    # so a float sampler would take frame 34 there.
    assert 35 * (1 / 25) > 7 / 5
    assert select_indices(pts, duration, 5)[7] == 35


def test_variable_frame_rate_picks_by_pts_and_may_repeat_a_frame():
    pts = [Fraction(x) for x in ("0", "0.5", "0.6", "2.5", "2.6")]
    duration = Fraction("2.7")  # t = 0, 1, 2
    assert select_indices(pts, duration, 1) == [0, 2, 2]


def test_grid_starts_at_the_first_pts_not_at_zero():
    pts, duration = cfr(90, Fraction(30))
    shifted = [p + Fraction(7, 3) for p in pts]
    assert select_indices(shifted, duration, 1) == select_indices(pts, duration, 1)


def test_max_frames_caps_the_grid():
    pts, duration = cfr(300, Fraction(30))  # 10 s
    assert select_indices(pts, duration, 1, max_frames=4) == [0, 30, 60, 90]


def test_short_clip_gives_exactly_one_frame():
    pts, duration = cfr(10, Fraction(25))  # 0.4 s
    assert select_indices(pts, duration, 1) == [0]


def test_unsorted_pts_are_refused():
    with pytest.raises(ValueError, match="presentation"):
        select_indices([0, 2, 1], 3, 1)
    with pytest.raises(ValueError, match="presentation"):
        select_tick_indices(np.array([0, 2, 1]), 3, Fraction(1), 1)


def random_vfr(rng: np.random.Generator, tb: Fraction) -> tuple[np.ndarray, int]:
    """Random increasing tick pts (with occasional duplicates) and a duration in ticks."""
    steps = rng.choice([0, 1, 7, 333, 512, 1001, 3003, 40000], size=rng.integers(1, 120))
    ticks = np.cumsum(steps) + int(rng.integers(0, 5000))
    return ticks, int(ticks[-1] - ticks[0] + rng.choice([0, 1, 512, 1001]))


@pytest.mark.parametrize("fps", ["1", "0.5", "3", "30000/1001"])
def test_tick_selector_matches_exact_selector(fps):
    rng = np.random.default_rng(0)
    tb = Fraction(1, 15360)
    for _ in range(200):
        ticks, duration = random_vfr(rng, tb)
        cap = int(rng.integers(1, 20))
        exact = select_indices([int(t) * tb for t in ticks], duration * tb, fps, cap, tick=tb)
        assert select_tick_indices(ticks, duration, tb, fps, cap).tolist() == exact


@pytest.mark.parametrize("fps", ["1", "3", "30000/1001"])
def test_pickable_ticks_cover_every_pick_whatever_the_true_duration(fps):
    rng = np.random.default_rng(1)
    tb = Fraction(1, 15360)
    for _ in range(200):
        ticks, duration = random_vfr(rng, tb)
        cap = None if rng.random() < 0.5 else int(rng.integers(1, 20))
        shuffled = rng.permutation(ticks)  # decode order differs from presentation order
        keep = pickable_ticks(shuffled, tb, fps, cap)
        # Any duration from the last pts on (the decoder learns it only at the end).
        last = int(ticks[-1] - ticks[0])
        for span in (last, duration, last + 1, last + 1001, last + 90_000):
            picks = select_tick_indices(ticks, span, tb, fps, cap)
            assert {int(ticks[i]) for i in picks} <= keep
        assert {int(ticks[0]), *(int(t) for t in ticks[-2:])} <= keep


def test_millisecond_pts_at_the_videos_own_rate_pick_every_frame_once():
    # Matroska stores 30 fps frames at 0, 33, 67, 100, ... ms: the frame shown at 66.67 ms is
    # stored after it. Compared exactly, every third frame lost to the one before it.
    tb = Fraction(1, 1000)
    ticks = np.array([round(i * 1000 / 30) for i in range(60)])
    duration = 2000
    assert select_tick_indices(ticks, duration, tb, 30).tolist() == list(range(60))
    ends = [*ticks[1:], duration]  # durations in the container's own ticks too
    pairs = enumerate(zip(ticks, ends, strict=True))
    frames = [(int(t) * tb, i, (int(e) - int(t)) * tb) for i, (t, e) in pairs]
    assert [p.frame for p in stream(frames, 30, tick=tb)[0]] == list(range(60))
    # A half-tick never moves a pick where pts are exact: 30 fps in 1/15360 s ticks.
    exact_tb = Fraction(1, 15360)
    exact = np.arange(60) * 512
    for fps in (1, 30, "30000/1001", 7):
        assert select_tick_indices(exact, 60 * 512, exact_tb, fps).tolist() == select_indices(
            [int(t) * exact_tb for t in exact], 60 * 512 * exact_tb, fps
        )


def test_pickable_ticks_leave_most_frames_out_at_1fps_from_30fps():
    tb = Fraction(1, 30)
    ticks = np.arange(300)  # 10 s at 30 fps
    keep = pickable_ticks(ticks[::-1], tb, 1)
    assert keep == {*range(0, 300, 30), 298, 299}
    assert pickable_ticks(np.zeros(0, np.int64), tb, 1) == set()


def stream(frames, fps, max_frames=None, tick=0):
    """Feed ``(pts, name, duration)`` into a FrameSelector; returns picks and the selector."""
    selector = FrameSelector(fps, max_frames, tick)
    picks = []
    for pts, name, duration in frames:
        picks.extend(selector.push(pts, name, duration))
        if selector.done:
            break
    else:
        picks.extend(selector.finish())
    return picks, selector


@pytest.mark.parametrize("fps", ["1", "2", "30000/1001"])
def test_streaming_selector_matches_batch_rule(fps):
    rng = np.random.default_rng(1)
    tb = Fraction(1, 1000)
    for _ in range(200):
        ticks, duration = random_vfr(rng, tb)
        ticks = np.unique(ticks)  # a stream gives one frame per pts
        end = int(ticks[0]) + duration
        frames = [(int(t) * tb, i, None) for i, t in enumerate(ticks)]
        last_len = max(0, end - int(ticks[-1])) * tb
        frames[-1] = (frames[-1][0], frames[-1][1], last_len)
        if last_len == 0 and len(ticks) > 1:
            continue  # without a duration the selector would assume one interval
        cap = int(rng.integers(1, 20))
        picks, _ = stream(frames, fps, cap, tick=tb)
        expected = select_indices([f[0] for f in frames], duration * tb, fps, cap, tick=tb)
        assert expected == select_tick_indices(ticks, duration, tb, fps, cap).tolist()
        assert [p.frame for p in picks] == expected
        assert [p.grid_s for p in picks] == grid_times(duration * tb, parse_fps(fps), cap)


def test_streaming_emits_each_pick_as_soon_as_the_next_frame_shows():
    selector = FrameSelector(1)
    emitted_at = {}
    for i in range(61):  # 30 fps; the last frame starts exactly at t = 2
        for pick in selector.push(Fraction(i, 30), i, Fraction(1, 30)):
            emitted_at[pick.frame] = i
    # frame 30 is known to be on screen at t = 1 only once frame 31 arrives (pts 1.033 > 1)
    assert emitted_at == {0: 1, 30: 31}
    # nothing follows frame 60, so only the end of the stream settles t = 2
    tail = selector.finish()
    assert [(p.frame, p.grid_s, p.pts_s) for p in tail] == [(60, 2, 2)]


def test_streaming_stops_after_max_frames():
    picks, selector = stream(((Fraction(i, 30), i, None) for i in range(600)), 1, max_frames=3)
    assert [p.frame for p in picks] == [0, 30, 60]
    assert selector.done
    assert selector.n_frames == 62  # frame 61 decided t = 2; nothing after it was needed
    assert selector.push(Fraction(70, 30), 70) == []


def test_streaming_holds_one_frame_at_a_time():
    class Frame:
        pass

    selector = FrameSelector(1)
    refs = []
    for i in range(200):
        frame = Frame()
        refs.append(weakref.ref(frame))
        selector.push(Fraction(i, 30), frame, Fraction(1, 30))
        del frame
    gc.collect()
    assert sum(r() is not None for r in refs) == 1


def test_streaming_short_clip_and_missing_durations():
    picks, _ = stream([(Fraction(0), "only", Fraction(2, 5))], 1)
    assert [p.frame for p in picks] == ["only"]
    # no durations: the last frame is assumed to last as long as the one before it
    picks, selector = stream([(Fraction(0), "a", None), (Fraction(1, 2), "b", None)], 2)
    assert [p.frame for p in picks] == ["a", "b"]
    assert selector.end_s == 1


def test_streaming_drops_out_of_order_frames():
    frames = [(Fraction(0), "a", None), (Fraction(1, 2), "b", None), (Fraction(1, 4), "late", None)]
    frames.append((Fraction(3, 2), "c", Fraction(1, 2)))
    picks, selector = stream(frames, 1)
    assert [p.frame for p in picks] == ["a", "b"]
    assert selector.n_frames == 3
