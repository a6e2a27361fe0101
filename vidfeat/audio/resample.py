"""Resampling to VGGish's 16 kHz exactly as its reference does: resampy's ``kaiser_best``.

Google's reference front end calls ``resampy.resample(data, rate, 16000)``, a band-limited
interpolator (Smith's method): every output sample at input time ``t`` is a sum of input
samples weighted by a Kaiser-windowed sinc read from a table and linearly interpolated
between its entries. Any other resampler (FFmpeg's, SciPy's polyphase) differs from it by up to
0.3 in the log-mel, mostly in the transition band under 8 kHz. This module repeats resampy's
arithmetic in numpy, so the examples match the reference to float rounding without numba:

- the table is the right half of a sinc with cutoff ``rolloff`` times a Kaiser window of
  ``beta``, 50 zero crossings, 2**13 entries per crossing (``KAISER_BEST``, which rebuilds
  resampy's shipped ``kaiser_best`` table to 3e-16);
- when downsampling, the table is scaled by the rate ratio and read every
  ``int(ratio * 2**13)`` entries (the sinc stretched to the lower Nyquist frequency);
- output sample ``j`` sits at input position ``j * (rate_in / rate_out)``, the left wing reads
  the input at and before it and the right wing after it; outside the signal is zero;
- ``int(n * rate_out / rate_in)`` samples come out.

``StreamResampler`` computes the same samples from chunks, holding only the filter's reach of
input, so a long track is resampled in bounded memory with the same numbers as the whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np

_BLOCK = 4096  # output samples computed at once (bounds the (block, taps) temporaries)


@dataclass(frozen=True)
class SincFilter:
    """A Kaiser-windowed sinc interpolation table (resampy's ``sinc_window`` construction)."""

    zeros: int  # zero crossings kept on each side
    precision_bits: int  # 2**bits table entries per zero crossing
    beta: float  # Kaiser window shape
    rolloff: float  # cutoff as a fraction of the (lower) Nyquist frequency

    @property
    def per_crossing(self) -> int:
        return 1 << self.precision_bits

    @cached_property
    def table(self) -> np.ndarray:
        """(zeros * per_crossing + 1,) the filter's right wing, from its centre outwards."""
        n = self.zeros * self.per_crossing
        x = np.linspace(0, self.zeros, num=n + 1, endpoint=True)
        sinc = self.rolloff * np.sinc(self.rolloff * x)
        # The right half of a (2n + 1)-point Kaiser window, as numpy's kaiser computes it.
        taper = np.i0(self.beta * np.sqrt(1.0 - (np.arange(n + 1) / n) ** 2)) / np.i0(self.beta)
        table = taper * sinc
        table.setflags(write=False)
        return table


# resampy's default filter. Its documentation prints beta = 12.9846 and rolloff = 0.917347;
# these are the unrounded values its table was built from (rolloff is stored with the table,
# beta was recovered from it). Built from them, the table equals resampy 0.4's to 3.3e-16.
KAISER_BEST = SincFilter(zeros=50, precision_bits=13, beta=12.984585247040012,
                         rolloff=0.9173473712608761)  # fmt: skip


def describe(sinc: SincFilter = KAISER_BEST) -> str:
    """The resampling as stored with features (store attrs)."""
    return (
        "resampy-compatible band-limited sinc interpolation (kaiser_best: "
        f"{sinc.zeros} zero crossings, 2**{sinc.precision_bits} per crossing, "
        f"Kaiser beta {sinc.beta!r}, rolloff {sinc.rolloff!r}) of the channel mean"
    )


def output_length(n: int, rate_in: int, rate_out: int) -> int:
    """Samples that ``n`` input samples resample to (resampy's rounding: down)."""
    return int(n * float(rate_out) / float(rate_in))


class _Kernel:
    """Everything fixed by (rate_in, rate_out): the table laid out by phase.

    resampy reads one wing at entries ``offset + i * step`` for ``i < (size - offset) // step``
    and interpolates towards the next entry by ``eta``. Row ``offset`` of ``win``/``delta``
    holds exactly those entries (zeros past each row's reach), so one output is two dot
    products with contiguous input: ``(win[o] + eta * delta[o]) . x``.
    """

    def __init__(self, rate_in: int, rate_out: int, sinc: SincFilter) -> None:
        ratio = float(rate_out) / rate_in
        table = sinc.table * ratio if ratio < 1 else sinc.table
        self.scale = min(1.0, ratio)
        self.increment = 1.0 / ratio  # input samples per output sample
        self.per_crossing = sinc.per_crossing
        step = int(self.scale * sinc.per_crossing)
        self.taps = len(table) // step + 1  # most products one wing can need
        # Offsets run from 0 to step (frac * per_crossing <= scale * per_crossing).
        offsets = np.arange(step + 1)[:, None]
        idx = offsets + np.arange(self.taps) * step
        reach = idx < offsets + (len(table) - offsets) // step * step
        delta = np.diff(table, append=table[-1])
        self.win = np.where(reach, table[np.minimum(idx, len(table) - 1)], 0.0)
        self.delta = np.where(reach, delta[np.minimum(idx, len(table) - 1)], 0.0)
        # The left wing pairs tap i with x[n - i]: reversed, it reads x[n - taps + 1 .. n].
        self.win_rev = np.ascontiguousarray(self.win[:, ::-1])
        self.delta_rev = np.ascontiguousarray(self.delta[:, ::-1])

    def phase(self, frac: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Table row and interpolation factor for fractional offsets ``frac``."""
        index_frac = frac * self.per_crossing
        offset = index_frac.astype(np.int64)
        return offset, index_frac - offset

    def compute(self, x: np.ndarray, x_start: int, first: int, stop: int) -> np.ndarray:
        """Outputs ``first``..``stop - 1`` from ``x`` (input samples from index ``x_start``);
        ``x`` must hold every input sample they read, zeros standing for outside the signal."""
        out = np.empty(stop - first, np.float64)
        rows = np.lib.stride_tricks.sliding_window_view(x, self.taps)
        for lo in range(first, stop, _BLOCK):
            t = np.arange(lo, min(lo + _BLOCK, stop)) * self.increment
            n = t.astype(np.int64)
            frac = self.scale * (t - n)
            left = rows[n - x_start - self.taps + 1]  # x[n - taps + 1 .. n]
            right = rows[n - x_start + 1]  # x[n + 1 .. n + taps]
            o, eta = self.phase(frac)
            y = _dot(self.win_rev[o], left) + eta * _dot(self.delta_rev[o], left)
            o, eta = self.phase(self.scale - frac)
            y += _dot(self.win[o], right) + eta * _dot(self.delta[o], right)
            out[lo - first : lo - first + len(t)] = y
        return out


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", a, b)


@lru_cache(maxsize=4)  # ~7 MB of tables each
def _kernel(rate_in: int, rate_out: int, sinc: SincFilter = KAISER_BEST) -> _Kernel:
    return _Kernel(rate_in, rate_out, sinc)


def resample(waveform: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """(n,) waveform at ``rate_in`` -> (int(n * rate_out / rate_in),) float64 at ``rate_out``,
    as ``resampy.resample(waveform, rate_in, rate_out)`` computes it."""
    x = np.asarray(waveform, np.float64)
    if rate_in == rate_out:
        return x.copy()
    stream = StreamResampler(rate_in, rate_out)
    return np.concatenate([stream.push(x), stream.finish()])


class StreamResampler:
    """``resample`` over a signal fed in chunks: the concatenated outputs are the samples the
    whole signal resamples to. Holds the filter's reach of input (~2 * 50 zero crossings)."""

    def __init__(self, rate_in: int, rate_out: int) -> None:
        self.rate_in, self.rate_out = int(rate_in), int(rate_out)
        self._k = _kernel(self.rate_in, self.rate_out)
        self._reach = self._k.taps + 1  # input samples a wing can read beyond its centre
        self._buf = np.zeros(0, np.float64)
        self._buf_start = 0  # input index of _buf[0]
        self._received = 0
        self._next = 0  # next output index

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Append input samples; return the outputs that no later input can change."""
        samples = np.asarray(samples, np.float64).reshape(-1)
        self._buf = np.concatenate([self._buf, samples])
        self._received += len(samples)
        # Output j reads input up to int(j * increment) + reach.
        last_input = self._received - 1 - self._reach
        if last_input < 0:
            return np.zeros(0, np.float64)
        stop = int(last_input / self._k.increment) + 1
        while stop > self._next and int((stop - 1) * self._k.increment) > last_input:
            stop -= 1  # the division in floats can land one too high
        return self._emit(stop)

    def finish(self) -> np.ndarray:
        """The remaining outputs, reading zeros past the end of the input."""
        stop = output_length(self._received, self.rate_in, self.rate_out)
        self._buf = np.concatenate([self._buf, np.zeros(self._reach)])
        return self._emit(max(stop, self._next))

    def _emit(self, stop: int) -> np.ndarray:
        if stop <= self._next:
            return np.zeros(0, np.float64)
        # Zeros before the signal's start stand in for resampy's shortened left wing.
        lead = self._reach if self._buf_start == 0 else 0
        x = np.concatenate([np.zeros(lead), self._buf]) if lead else self._buf
        out = self._k.compute(x, self._buf_start - lead, self._next, stop)
        self._next = stop
        # Keep what the next output's left wing can still read.
        keep_from = int(stop * self._k.increment) - self._reach
        drop = min(max(0, keep_from - self._buf_start), len(self._buf))
        self._buf = self._buf[drop:]
        self._buf_start += drop
        return out
