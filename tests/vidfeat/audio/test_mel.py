"""VGGish's log-mel front end on known signals, an independent DFT, and Google's reference."""

from __future__ import annotations

import numpy as np
import pytest

from tests.vidfeat.audio.reference_signal import (
    FIXTURE,
    RESAMPLED_CASES,
    SAMPLE_RATE,
    fixture_path,
    reference_signal,
)
from vidfeat.audio import VGGISH_LOG_MEL, log_mel_examples, mel_matrix
from vidfeat.audio.mel import hz_to_mel, windows_to_examples

P = VGGISH_LOG_MEL


def _band_of(freq_hz: float) -> int:
    """The band whose centre (on the HTK mel scale) is nearest ``freq_hz``."""
    lo, hi = hz_to_mel(P.mel_min_hz), hz_to_mel(P.mel_max_hz)
    centres = np.linspace(lo, hi, P.mel_bands + 2)[1:-1]
    return int(np.abs(centres - hz_to_mel(freq_hz)).argmin())


def test_parameters_are_vggish():
    assert (P.window_samples, P.hop_samples, P.fft_size) == (400, 160, 512)
    assert P.example_samples == 400 + 95 * 160
    assert mel_matrix().shape == (257, 64)
    assert not mel_matrix()[0].any()  # DC bin in no band


@pytest.mark.parametrize("freq_hz", [250.0, 440.0, 1000.0, 3000.0, 6500.0])
def test_pure_tone_peaks_in_its_band(freq_hz):
    t = np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE
    examples = log_mel_examples(0.5 * np.sin(2 * np.pi * freq_hz * t), SAMPLE_RATE)
    assert examples.shape == (2, 96, 64) and examples.dtype == np.float32
    peaks = examples.argmax(axis=2)
    assert np.all(np.abs(peaks - _band_of(freq_hz)) <= 0), np.unique(peaks)


def test_silence_gives_log_offset():
    examples = log_mel_examples(np.zeros(3 * SAMPLE_RATE), SAMPLE_RATE)
    assert examples.shape == (3, 96, 64)
    np.testing.assert_array_equal(examples, np.float32(np.log(0.01)))


def test_partial_examples_are_dropped():
    # 96 frames need 400 + 95 * 160 samples; one sample fewer gives none.
    assert log_mel_examples(np.zeros(P.example_samples), SAMPLE_RATE).shape == (1, 96, 64)
    assert log_mel_examples(np.zeros(P.example_samples - 1), SAMPLE_RATE).shape == (0, 96, 64)


def test_matches_a_direct_dft_per_frame():
    rng = np.random.default_rng(5)
    x = rng.uniform(-1, 1, P.example_samples)
    n = np.arange(400)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / 400)
    k = np.arange(257)[:, None]
    dft = np.exp(-2j * np.pi * k * n / 512)  # 512-point DFT of a zero-padded 400-sample frame
    expected = np.empty((96, 64))
    for i in range(96):
        magnitude = np.abs(dft @ (x[i * 160 : i * 160 + 400] * window))
        expected[i] = np.log(magnitude @ mel_matrix() + 0.01)
    got = log_mel_examples(x, SAMPLE_RATE)
    assert got.shape == (1, 96, 64)
    np.testing.assert_allclose(got[0], expected, atol=1e-4, rtol=0)


def test_mel_matrix_triangles_follow_the_htk_scale():
    m = mel_matrix()
    freqs = np.linspace(0, 8000, 257)
    # Every band lies in (125, 7500) Hz, its weights never exceed 1, and its peak moves up
    # with the band index.
    assert np.all(np.diff(m.argmax(axis=0)) >= 0)
    for band in range(64):
        nz = np.flatnonzero(m[:, band])
        assert freqs[nz[0]] > 125 and freqs[nz[-1]] < 7500
        assert 0 < m[:, band].max() <= 1.0
    assert hz_to_mel(700.0) == pytest.approx(1127.0 * np.log(2.0))


def test_matches_googles_reference_front_end():
    """The fixture is the reference's own output on ``reference_signal`` (see that module)."""
    reference = np.load(FIXTURE)
    ours = log_mel_examples(reference_signal() / 32768.0, SAMPLE_RATE)
    assert ours.shape == reference.shape == (2, 96, 64)
    assert np.abs(ours - reference).max() < 1e-4


@pytest.mark.parametrize(("rate", "channels"), RESAMPLED_CASES)
def test_matches_googles_reference_front_end_at_other_rates(rate, channels):
    """The reference resamples with resampy's kaiser_best; so must we, to 1e-4."""
    reference = np.load(fixture_path(rate, channels))
    ours = log_mel_examples(reference_signal(rate, channels) / 32768.0, rate)
    assert ours.shape == reference.shape == (2, 96, 64)
    assert np.abs(ours - reference).max() < 1e-4


def test_windows_cut_from_a_long_signal_equal_its_examples():
    x = np.random.default_rng(1).uniform(-1, 1, 3 * SAMPLE_RATE)
    starts = [0, 96 * 160]  # example hops of 96 frames
    windows = np.stack([x[s : s + P.example_samples] for s in starts])
    np.testing.assert_array_equal(windows_to_examples(windows), log_mel_examples(x, 16000)[:2])


@pytest.mark.parametrize("rate", [8000, 44100, 48000])
def test_other_rates_are_resampled_to_16k(rate):
    t = np.arange(2 * rate) / rate
    tone = 0.5 * np.sin(2 * np.pi * 1000.0 * t)
    stereo = np.stack([tone, tone], axis=1)
    examples = log_mel_examples(stereo, rate)
    direct = log_mel_examples(0.5 * np.sin(2 * np.pi * 1000.0 * np.arange(32000) / 16000), 16000)
    assert examples.shape == direct.shape == (2, 96, 64)
    assert np.all(examples.argmax(axis=2) == _band_of(1000.0))
    # Band-limited resampling of an in-band tone changes the log-mel only slightly.
    assert np.abs(examples[:, 2:-2] - direct[:, 2:-2])[..., 8:40].max() < 0.05
