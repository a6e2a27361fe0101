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


def _resampy_loop(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """resampy's ``resample_f``, output by output: the table read at ``offset + i * step`` and
    interpolated by ``eta``, with the time of output ``t`` computed as ``t / ratio``."""
    ratio = rate_out / rate_in
    win = KAISER_BEST.table * ratio if ratio < 1 else KAISER_BEST.table
    delta = np.diff(win, append=win[-1])
    scale, per = min(1.0, ratio), KAISER_BEST.per_crossing
    step = int(scale * per)
    y = np.zeros(output_length(len(x), rate_in, rate_out))
    for t in range(len(y)):
        time = t * (1.0 / ratio)
        n = int(time)
        for frac, sign in ((scale * (time - n), -1), (scale - scale * (time - n), 1)):
            offset = int(frac * per)
            eta = frac * per - offset
            count = (len(win) - offset) // step
            count = min(n + 1, count) if sign < 0 else min(len(x) - n - 1, count)
            taps = offset + np.arange(count) * step
            reads = n - np.arange(count) if sign < 0 else n + 1 + np.arange(count)
            y[t] += (win[taps] + eta * delta[taps]) @ x[reads]
    return y


@pytest.mark.parametrize("rate", RATES)
def test_the_phase_kernel_computes_resampys_samples(rate):
    x = np.random.default_rng(rate).uniform(-1, 1, rate // 10 + 7)  # ~0.1 s, an odd length
    expected = _resampy_loop(x, rate, 16000)
    got = resample(x, rate, 16000)
    assert got.shape == expected.shape
    # The same sums in another order: equal to float64 rounding, far below float32's.
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_a_rate_pair_with_many_phases_gives_the_same_samples():
    # 44056 / 16000 has 2000 phases: too many for the dense layout, computed per phase chunk.
    x = np.random.default_rng(3).uniform(-1, 1, 9000)
    np.testing.assert_allclose(
        resample(x, 44056, 16000), _resampy_loop(x, 44056, 16000), rtol=0, atol=1e-12
    )
