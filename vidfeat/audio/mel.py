"""VGGish's log-mel front end: waveform -> (N, 96, 64) float32 examples, in numpy.

It follows Google's reference (AudioSet VGGish, ``mel_features.py`` and ``vggish_input.py``)
step by step, so examples match it to float rounding:

- mono by averaging channels, then 16 kHz with resampy's ``kaiser_best`` interpolator, as the
  reference does (see ``vidfeat.audio.resample``);
- frames of 25 ms (400 samples) every 10 ms (160 samples), only whole frames, no padding;
- a *periodic* Hann window, ``0.5 - 0.5 cos(2 pi n / 400)``;
- magnitude of a 512-point real FFT (the next power of two above 400);
- 64 triangular mel bands between 125 and 7500 Hz on the HTK mel scale
  ``1127 ln(1 + f / 700)``, with triangles built in the mel domain over the FFT bins' centre
  frequencies and the DC bin excluded;
- ``log(mel + 0.01)``;
- examples of 96 frames every 96 frames; a partial example at the end is dropped.

Everything is computed in float64 (as the reference does) and cast to float32 at the end.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from vidfeat.audio.resample import resample
from vidfeat.errors import ConfigError

_HTK_BREAK_HZ = 700.0
_HTK_Q = 1127.0


@dataclass(frozen=True)
class LogMelParams:
    """Everything that fixes the log-mel examples; stored with the features."""

    sample_rate: int = 16000
    window_s: float = 0.025
    hop_s: float = 0.010
    mel_bands: int = 64
    mel_min_hz: float = 125.0
    mel_max_hz: float = 7500.0
    log_offset: float = 0.01
    example_frames: int = 96
    example_hop_frames: int = 96

    def __post_init__(self) -> None:
        if not 0.0 <= self.mel_min_hz < self.mel_max_hz <= self.sample_rate / 2:
            raise ConfigError(
                f"mel range must satisfy 0 <= {self.mel_min_hz} < {self.mel_max_hz} <= "
                f"Nyquist ({self.sample_rate / 2})"
            )
        if min(self.window_samples, self.hop_samples, self.example_frames) < 1:
            raise ConfigError("window, hop and example length must be at least one sample/frame")

    @property
    def window_samples(self) -> int:
        return round(self.sample_rate * self.window_s)

    @property
    def hop_samples(self) -> int:
        return round(self.sample_rate * self.hop_s)

    @property
    def fft_size(self) -> int:
        return 1 << (self.window_samples - 1).bit_length()

    @property
    def example_samples(self) -> int:
        """Waveform samples one example reads: 96 frames of 400 samples, 160 apart (15600)."""
        return self.window_samples + (self.example_frames - 1) * self.hop_samples

    @property
    def example_s(self) -> float:
        """Seconds one example stands for (the reference's EXAMPLE_WINDOW_SECONDS, 0.96)."""
        return self.example_frames * self.hop_samples / self.sample_rate

    def to_attrs(self) -> dict[str, Any]:
        attrs = asdict(self)
        attrs.update(
            window_samples=self.window_samples,
            hop_samples=self.hop_samples,
            fft_size=self.fft_size,
            window="periodic_hann",
            spectrum="magnitude",
            mel_scale="htk",
            log="log(mel + log_offset)",
        )
        return attrs


VGGISH_LOG_MEL = LogMelParams()


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale as VGGish defines it: 1127 ln(1 + f / 700)."""
    return _HTK_Q * np.log1p(np.asarray(hz, np.float64) / _HTK_BREAK_HZ)


def periodic_hann(n: int) -> np.ndarray:
    """One full period of a raised cosine over n points (the last zero is left out)."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


@lru_cache(maxsize=8)
def mel_matrix(params: LogMelParams = VGGISH_LOG_MEL) -> np.ndarray:
    """(fft_size // 2 + 1, mel_bands) float64 weights; spectrum rows @ matrix -> mel rows."""
    n_bins = params.fft_size // 2 + 1
    bins_mel = hz_to_mel(np.linspace(0.0, params.sample_rate / 2, n_bins))
    edges_mel = np.linspace(
        hz_to_mel(params.mel_min_hz), hz_to_mel(params.mel_max_hz), params.mel_bands + 2
    )
    lower, center, upper = edges_mel[:-2], edges_mel[1:-1], edges_mel[2:]
    rising = (bins_mel[:, None] - lower) / (center - lower)
    falling = (upper - bins_mel[:, None]) / (upper - center)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0  # HTK leaves the DC bin out of every band
    weights.setflags(write=False)
    return weights


def frame_signal(x: np.ndarray, length: int, hop: int) -> np.ndarray:
    """(n, ...) -> (frames, length, ...) view of every whole frame; no padding."""
    n_frames = 1 + (x.shape[0] - length) // hop if x.shape[0] >= length else 0
    if n_frames == 0:
        return np.empty((0, length, *x.shape[1:]), x.dtype)
    shape = (n_frames, length, *x.shape[1:])
    strides = (x.strides[0] * hop, *x.strides)
    return np.lib.stride_tricks.as_strided(x, shape=shape, strides=strides, writeable=False)


def log_mel_spectrogram(
    waveform_16k: np.ndarray, params: LogMelParams = VGGISH_LOG_MEL
) -> np.ndarray:
    """Mono waveform at ``params.sample_rate`` -> (frames, mel_bands) float64 log-mel."""
    x = np.ascontiguousarray(waveform_16k, dtype=np.float64)
    return log_mel_frames(frame_signal(x, params.window_samples, params.hop_samples), params)


def log_mel_frames(frames: np.ndarray, params: LogMelParams = VGGISH_LOG_MEL) -> np.ndarray:
    """(..., window_samples) float64 frames -> (..., mel_bands) float64 log-mel, all at once."""
    spectrum = np.abs(np.fft.rfft(frames * _hann(params.window_samples), params.fft_size))
    return np.log(spectrum @ mel_matrix(params) + params.log_offset)


@lru_cache(maxsize=8)
def _hann(n: int) -> np.ndarray:
    window = periodic_hann(n)
    window.setflags(write=False)
    return window


def to_mono(waveform: np.ndarray) -> np.ndarray:
    """(samples,) or (samples, channels) -> (samples,) float64, averaging channels."""
    x = np.asarray(waveform, dtype=np.float64)
    if x.ndim == 2:
        return x.mean(axis=1)
    if x.ndim != 1:
        raise ConfigError(f"waveform must be (samples,) or (samples, channels), got {x.shape}")
    return x


def log_mel_examples(
    waveform: np.ndarray, sample_rate: int, params: LogMelParams = VGGISH_LOG_MEL
) -> np.ndarray:
    """Float waveform in [-1, 1], (samples,) or (samples, channels) -> (N, 96, 64) float32.

    The contract of VGGish's ``waveform_to_examples``: N whole examples of 96 frames, 96 frames
    apart. Other sample rates are resampled to 16 kHz as the reference's
    ``resampy.resample(data, sample_rate, 16000)`` does.
    """
    mono = to_mono(waveform)
    if int(sample_rate) != params.sample_rate:
        mono = resample(mono, int(sample_rate), params.sample_rate)
    log_mel = log_mel_spectrogram(mono, params)
    examples = frame_signal(log_mel, params.example_frames, params.example_hop_frames)
    return examples.astype(np.float32)


_WINDOWS_AT_ONCE = 16  # examples per FFT call: ~6 MB of spectra, far fewer numpy calls


def windows_to_examples(windows: np.ndarray, params: LogMelParams = VGGISH_LOG_MEL) -> np.ndarray:
    """(T, example_samples) mono 16 kHz windows -> (T, 96, 64) float32, one example each.

    Each window yields exactly the example VGGish would compute for a waveform starting at its
    first sample; used to cut one example per video frame timestamp.
    """
    if windows.ndim != 2 or windows.shape[1] != params.example_samples:
        raise ConfigError(
            f"expected (T, {params.example_samples}) windows, got {tuple(windows.shape)}"
        )
    windows = np.ascontiguousarray(windows, dtype=np.float64)
    n_frames, length, hop = params.example_frames, params.window_samples, params.hop_samples
    out = np.empty((windows.shape[0], n_frames, params.mel_bands), np.float32)
    for lo in range(0, windows.shape[0], _WINDOWS_AT_ONCE):
        chunk = windows[lo : lo + _WINDOWS_AT_ONCE]
        # (chunk, frames, length) view: frame f of window w starts at sample f * hop.
        frames = np.lib.stride_tricks.as_strided(
            chunk,
            shape=(chunk.shape[0], n_frames, length),
            strides=(chunk.strides[0], hop * chunk.strides[1], chunk.strides[1]),
            writeable=False,
        )
        out[lo : lo + len(chunk)] = log_mel_frames(frames, params)
    return out
