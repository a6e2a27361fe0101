"""A decoded audio track on its own sample clock, turned into 16 kHz mono as it streams.

The reference front end reads int16 WAV samples as ``x / 32768``, averages the channels and
resamples the whole waveform with resampy. ``frame_to_mono`` converts each decoded frame the
same way (FFmpeg's integer formats scaled by their full range, float formats as they are), and
``SourceTrack`` places frames by their pts at the source rate (gaps as silence) and resamples
them with ``StreamResampler``, whose output equals resampling the whole track at once.
"""

from __future__ import annotations

import math

import av
import numpy as np

from vidfeat.audio.resample import StreamResampler
from vidfeat.audio.window import Timeline
from vidfeat.errors import DecodeError

# FFmpeg sample format (packed name) -> (numpy dtype, zero level, scale to [-1, 1]).
_SAMPLE_FORMATS: dict[str, tuple[str, float, float]] = {
    "u8": ("u1", 128.0, 2.0**-7),
    "s16": ("i2", 0.0, 2.0**-15),
    "s32": ("i4", 0.0, 2.0**-31),
    "s64": ("i8", 0.0, 2.0**-63),
    "flt": ("f4", 0.0, 1.0),
    "dbl": ("f8", 0.0, 1.0),
}


def frame_to_mono(frame: av.AudioFrame) -> np.ndarray:
    """(samples,) float64: the frame's channels as floats in [-1, 1], averaged."""
    fmt = frame.format
    try:
        dtype, zero, scale = _SAMPLE_FORMATS[fmt.packed.name]
    except KeyError:
        raise DecodeError(f"unsupported audio sample format {fmt.name}", "decode_error") from None
    channels = frame.layout.nb_channels
    # Views of the planes' buffers (padded past the last sample): the per-frame cost of
    # ``to_ndarray``'s copies is as large as the mixing itself.
    if fmt.is_planar:
        planes = [np.frombuffer(p, dtype, frame.samples) for p in frame.planes[:channels]]
    else:
        packed = np.frombuffer(frame.planes[0], dtype, frame.samples * channels)
        planes = [packed[c::channels] for c in range(channels)]
    # Sum the channels in float64, in channel order. The sum of integer samples is exact, and
    # offset and power-of-two scale commute with it, so this is the mean of the scaled
    # channels (float samples: their mean) as the reference computes it.
    x = planes[0].astype(np.float64)
    for plane in planes[1:]:
        x += plane
    if zero:
        x -= zero * channels
    if scale != 1.0:
        x *= scale
    if channels > 1:
        x /= channels
    return x


class SourceTrack:
    """Frames at the source rate in, contiguous 16 kHz (``rate_out``) mono chunks out.

    ``jitter_s``: how far a frame's pts may miss the previous frame's end and still count as
    contiguous (the container's timestamp rounding). Positions and the gap count are kept in
    source samples; ``first_s``/``end_s`` give them in seconds.
    """

    def __init__(self, rate_out: int, jitter_s: float) -> None:
        self.rate_out = rate_out
        self.jitter_s = jitter_s
        self.rate: int | None = None  # the source rate, fixed by the first frame
        self.timeline: Timeline | None = None
        self._resampler: StreamResampler | None = None

    def start(self, rate: int, position: int) -> int:
        """Set the clock from the first frame; returns its position in output samples."""
        self.rate = int(rate)
        self.timeline = Timeline(max(1, math.ceil(self.jitter_s * self.rate)))
        if self.rate != self.rate_out:
            self._resampler = StreamResampler(self.rate, self.rate_out)
        return round(position * self.rate_out / self.rate)

    def push(self, samples: np.ndarray, position: int | None, rate: int) -> np.ndarray:
        """Place a frame at source sample ``position`` (None: right after the previous one);
        returns the output samples that are now final."""
        if rate != self.rate:
            raise DecodeError(
                f"audio sample rate changes mid-stream ({self.rate} -> {rate} Hz)", "decode_error"
            )
        placed = self.timeline.place(samples, position)
        return self._resampler.push(placed) if self._resampler else placed

    def finish(self) -> np.ndarray:
        """The last output samples (the filter reads zeros past the end)."""
        return self._resampler.finish() if self._resampler else np.zeros(0, np.float64)

    def seconds(self, samples: int | None) -> float | None:
        return None if samples is None or self.rate is None else samples / self.rate

    @property
    def first_s(self) -> float | None:
        return self.seconds(self.timeline.first_sample) if self.timeline else None

    @property
    def end_s(self) -> float | None:
        return self.seconds(self.timeline.end_sample) if self.timeline else None

    @property
    def gap_s(self) -> float:
        return self.seconds(self.timeline.gap_samples) or 0.0 if self.timeline else 0.0
