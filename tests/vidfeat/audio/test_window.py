"""WindowCutter against slicing a whole zero-padded timeline."""

from __future__ import annotations

import numpy as np
import pytest

from vidfeat.audio.window import WindowCutter


@pytest.mark.parametrize("chunk", [1, 7, 100, 5000])
@pytest.mark.parametrize("first", [-30, 0, 250])
def test_windows_equal_slices_of_the_padded_timeline(chunk, first):
    signal = np.random.default_rng(chunk).standard_normal(1000)
    # Overlapping, repeated, before-the-audio and past-the-end starts.
    starts = np.array([-200, -10, 0, 0, 40, 60, 500, 990, 1200])
    length = 64
    cutter = WindowCutter(starts, length)
    for i in range(0, len(signal), chunk):
        cutter.push(signal[i : i + chunk], first + i if i == 0 else None)
        assert cutter.buffered_samples <= length + chunk
    got = cutter.finish()
    pad = 2000
    timeline = np.zeros(len(signal) + 2 * pad + 1500)
    timeline[pad + first : pad + first + len(signal)] = signal
    expected = np.stack([timeline[pad + s : pad + s + length] for s in starts])
    np.testing.assert_array_equal(got, expected)


def test_no_audio_gives_zero_windows_and_descending_starts_are_refused():
    assert not WindowCutter(np.array([0, 5]), 4).finish().any()
    with pytest.raises(ValueError):
        WindowCutter(np.array([5, 0]), 4)
    with pytest.raises(ValueError):
        WindowCutter(np.array([0]), 4).push(np.zeros(3))  # first chunk without a position


def test_gaps_are_silence_and_overlaps_keep_the_earlier_samples():
    cutter = WindowCutter(np.array([0]), 12)
    cutter.push(np.ones(4), 0)
    cutter.push(np.full(3, 2.0), 6)  # a gap of two samples
    cutter.push(np.full(3, 3.0), 7)  # overlaps the last two samples
    np.testing.assert_array_equal(cutter.finish()[0], [1, 1, 1, 1, 0, 0, 2, 2, 2, 3, 0, 0])
