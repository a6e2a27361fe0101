"""The kaiser_best resampler: known signals, whole versus streamed, output lengths."""

from __future__ import annotations

import numpy as np
import pytest

from vidfeat.audio.resample import KAISER_BEST, StreamResampler, output_length, resample

RATES = [8000, 22050, 44100, 48000]


def _tone(freq_hz: float, rate: int, seconds: float) -> np.ndarray:
    return np.sin(2 * np.pi * freq_hz * np.arange(round(seconds * rate)) / rate)


def test_table_is_a_kaiser_windowed_sinc():
    table = KAISER_BEST.table
    per = KAISER_BEST.per_crossing
    assert table.shape == (50 * per + 1,)
    assert table[0] == pytest.approx(KAISER_BEST.rolloff)  # sinc(0) * window(0) * cutoff
    # The sinc's zeros: at multiples of 1 / rolloff zero crossings of the table's abscissa.
    x = np.linspace(0, 50, 50 * per + 1)
    zero = np.abs(x - 1 / KAISER_BEST.rolloff).argmin()
    assert abs(table[zero]) < 1e-3 * table[0]
    assert np.all(np.diff(table[: zero + 1]) < 0)  # the main lobe falls monotonically
    assert abs(table[-1]) < 1e-6  # the window has tapered the tail to nothing


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("fraction", [0.05, 0.4, 0.8])
def test_an_in_band_tone_comes_out_as_the_same_tone_at_16k(rate, fraction):
    freq_hz = fraction * min(rate, 16000) / 2  # a fraction of the lower Nyquist frequency
    y = resample(_tone(freq_hz, rate, 1.0), rate, 16000)
    expected = _tone(freq_hz, 16000, 1.0)
    assert y.shape == expected.shape
    # Away from the ends (where the filter reads zeros), a band-limited interpolator is exact
    # up to its passband ripple.
    inner = slice(200, -200)
    assert np.abs(y[inner] - expected[inner]).max() < 2e-3


@pytest.mark.parametrize("rate", [22050, 44100, 48000])
def test_a_tone_above_the_new_nyquist_is_removed(rate):
    y = resample(_tone(10000.0, rate, 1.0), rate, 16000)
    assert np.abs(y[200:-200]).max() < 1e-4  # -80 dB; unfiltered it would alias to 6 kHz


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("n", [0, 1, 5, 333, 40000])
def test_streamed_chunks_give_the_whole_signals_samples(rate, n):
    x = np.random.default_rng(n).uniform(-1, 1, n)
    whole = resample(x, rate, 16000)
    assert whole.shape == (output_length(n, rate, 16000),) == (int(n * 16000 / rate),)
    stream, parts, i, size = StreamResampler(rate, 16000), [], 0, 1
    while i < n:
        parts.append(stream.push(x[i : i + size]))
        i, size = i + size, size * 3 + 1  # uneven chunks, from 1 sample up
    parts.append(stream.finish())
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_the_stream_holds_only_the_filters_reach():
    stream = StreamResampler(44100, 16000)
    for _ in range(50):
        stream.push(np.zeros(4410))
    assert len(stream._buf) < 4410 + 2 * 150  # one chunk and the filter's ~138 taps a side


def test_the_same_rate_is_a_copy():
    x = np.arange(5.0)
    y = resample(x, 16000, 16000)
    np.testing.assert_array_equal(y, x)
    assert y is not x
