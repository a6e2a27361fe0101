"""Resampling to VGGish's 16 kHz with FFmpeg's libswresample (PyAV's ``AudioResampler``).

VGGish's reference resamples with ``resampy`` (a Kaiser-windowed sinc, "kaiser_best").
libswresample's default is also a windowed-sinc filter (Kaiser window, 32 taps per phase,
cutoff at 97% of the lower Nyquist). Both are linear-phase band-limited interpolators and
neither shifts the signal in time, so they agree closely below ~7.5 kHz, the top of VGGish's
mel range; they differ in the transition band just under 8 kHz. One resampler serves both the
decoding path and ``log_mel_examples`` so the two give the same numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from fractions import Fraction

import av
import numpy as np

_CHUNK = 1 << 16  # input samples per frame handed to the resampler


def new_resampler(rate: int) -> av.AudioResampler:
    """A resampler to float64 mono at ``rate``; it downmixes whatever layout it is fed."""
    return av.AudioResampler(format="dbl", layout="mono", rate=rate)


def frames_to_mono(frames: Iterable[av.AudioFrame]) -> Iterator[tuple[int | None, np.ndarray]]:
    """Resampler output frames -> (pts in output samples or None, (n,) float64)."""
    for frame in frames:
        yield frame.pts, frame.to_ndarray().reshape(-1).astype(np.float64, copy=False)


def resample_mono(waveform: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """(n,) mono waveform at ``rate_in`` -> float64 mono at ``rate_out`` (whole signal, flushed)."""
    x = np.ascontiguousarray(waveform, dtype=np.float64)
    resampler = new_resampler(rate_out)
    parts: list[np.ndarray] = []
    for start in range(0, len(x), _CHUNK):
        frame = av.AudioFrame.from_ndarray(
            x[None, start : start + _CHUNK], format="dblp", layout="mono"
        )
        frame.sample_rate = rate_in
        frame.time_base = Fraction(1, rate_in)
        frame.pts = start
        parts.extend(part for _, part in frames_to_mono(resampler.resample(frame)))
    parts.extend(part for _, part in frames_to_mono(resampler.resample(None)))
    return np.concatenate(parts) if parts else np.zeros(0, np.float64)
