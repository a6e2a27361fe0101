"""Decoded audio against Google's reference front end on the whole waveform, at any rate.

The decoder streams a track through bounded windows; the reference reads the whole WAV,
averages its channels and resamples it at once. The 16 kHz samples the decoder cuts windows
from are those of the whole waveform resampled, so examples on the reference's 0.96 s grid
match the reference, and examples anywhere else match the same computation on the whole
waveform. The one difference left at window boundaries is by design: a window running past
the track's end is zero-padded, where the reference drops the partial example.
"""

from __future__ import annotations

import wave
from fractions import Fraction

import av
import numpy as np
import pytest

from tests.vidfeat.audio.reference_signal import (
    RESAMPLED_CASES,
    fixture_path,
    reference_signal,
    write_reference_wav,
)
from vidfeat.audio import VGGISH_LOG_MEL, decode_audio_examples, log_mel_examples
from vidfeat.audio.mel import windows_to_examples
from vidfeat.audio.resample import resample

L = VGGISH_LOG_MEL.example_samples


def _read_wav_like_the_reference(path) -> tuple[np.ndarray, int]:
    """int16 / 32768, channels averaged: what ``vggish_input.wavfile_to_examples`` feeds on."""
    with wave.open(str(path)) as w:
        rate, channels = w.getframerate(), w.getnchannels()
        data = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, channels)
    return (data / 32768.0).mean(axis=1), rate


@pytest.mark.parametrize(("rate", "channels"), RESAMPLED_CASES)
def test_decoded_wav_matches_googles_reference(tmp_path, rate, channels):
    path = write_reference_wav(tmp_path / "ref.wav", rate, channels)
    result = decode_audio_examples(path, [0.0, 0.96])
    assert result.source_rate == rate and result.source_channels == channels
    assert np.abs(result.examples - np.load(fixture_path(rate, channels))).max() < 1e-4


@pytest.mark.parametrize(("rate", "channels"), [(8000, 2), (44100, 2), (48000, 1)])
def test_windows_anywhere_equal_the_whole_waveform_resampled(tmp_path, rate, channels):
    path = write_reference_wav(tmp_path / "ref.wav", rate, channels)
    mono, _ = _read_wav_like_the_reference(path)
    whole = resample(mono, rate, 16000)  # 2.2 s -> 35200 samples
    # Off the 0.96 s grid, on it, one sample apart, and running past the end (2.2 s).
    times = np.array([0.0, 0.0123, 0.5, 0.96, 0.96 + 1 / 16000, 1.3, 1.5, 2.0])
    result = decode_audio_examples(path, times)
    padded = np.concatenate([whole, np.zeros(L)])
    expected = windows_to_examples(np.stack([padded[round(t * 16000) :][:L] for t in times]))
    np.testing.assert_array_equal(result.examples, expected)
    # On the grid these are the reference's examples of the whole waveform.
    np.testing.assert_array_equal(result.examples[[0, 3]], log_mel_examples(mono, rate))
    # Past the end: the zero-padded window, which the reference has no example for.
    assert len(whole) < round(1.5 * 16000) + L
    assert np.all(result.examples[-1][-60:] == np.float32(np.log(0.01)))


# PCM codec -> sample format, and the int16 values it can hold exactly as a function of them.
FORMATS = {
    "pcm_u8": ("u8", lambda v: (v >> 8).astype(np.int16) + 128, lambda v: (v >> 8) / 128.0),
    "pcm_s32le": ("s32", lambda v: v.astype(np.int32) << 16, lambda v: v / 32768.0),
    "pcm_f32le": ("flt", lambda v: (v / 32768.0).astype(np.float32), lambda v: v / 32768.0),
    "pcm_f64le": ("dbl", lambda v: v / 32768.0, lambda v: v / 32768.0),
}


@pytest.mark.parametrize("codec", sorted(FORMATS))
def test_sample_formats_are_read_on_the_int16_scale(tmp_path, codec):
    fmt, encode, value = FORMATS[codec]
    v = reference_signal(16000, 2).astype(np.int64)
    path = tmp_path / "pcm.wav"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=16000, layout="stereo")
        data = encode(v)
        if fmt == "u8":
            data = data.astype(np.uint8)
        frame = av.AudioFrame.from_ndarray(data.reshape(1, -1), format=fmt, layout="stereo")
        frame.sample_rate, frame.time_base, frame.pts = 16000, Fraction(1, 16000), 0
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    result = decode_audio_examples(path, [0.0, 0.96])
    expected = log_mel_examples(value(v).mean(axis=1), 16000)
    np.testing.assert_allclose(result.examples, expected, atol=1e-6, rtol=0)
