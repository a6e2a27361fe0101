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

The weights depend only on the output's phase in the rate ratio (160 phases for 44.1 kHz ->
16 kHz), so they are built once per rate pair and applied as matrix products over contiguous
input (``_Kernel``). ``StreamResampler`` computes the same samples from chunks a block at a
time, holding about one block and the filter's reach of input, so a long track is resampled in
bounded memory with the same numbers as the whole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np


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


_BLOCK_OUTPUTS = 1024  # outputs per block, about (the block is whole phase periods)
_DENSE_LIMIT = 1 << 21  # entries of the dense phase matrix (16 MB); past it, per-block weights
_FALLBACK_PHASES = 1024  # phases whose weights are built at once without the dense matrix


class _Kernel:
    """Everything fixed by (rate_in, rate_out): one filter per phase of the rate ratio.

    With ``rate_out / rate_in = L / M`` in lowest terms, output ``j = k * L + r`` sits at input
    time ``k * M + r * M / L``: its integer part ``n`` and the fraction, hence the weights it
    gives to ``x[n - taps + 1 .. n + taps]``, depend only on the phase ``r``. resampy reads a
    wing's entries ``offset + i * step`` of the table and interpolates towards the next entry
    by ``eta`` (``(win + eta * delta)[o]`` below); here that is done once per phase instead of
    once per output.

    Phases are grouped ``G`` periods at a time (``Lg = G * L`` outputs from ``Mg = G * M``
    inputs, ``Mg`` at least the filter's length) and laid into a dense ``(A, Mg, Lg)`` matrix,
    so ``Lg`` outputs are ``sum_a x_rows[k + a] @ dense[a]`` over contiguous rows of ``Mg``
    input samples: one matrix product per block, no gathers. A block is always ``B`` groups
    computed by the same product shapes, because BLAS results depend on the shapes: every
    output then has the same value however the input was chunked.
    """

    def __init__(self, rate_in: int, rate_out: int, sinc: SincFilter) -> None:
        ratio = float(rate_out) / rate_in
        table = sinc.table * ratio if ratio < 1 else sinc.table
        self.scale = min(1.0, ratio)
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

        common = math.gcd(rate_in, rate_out)
        self.L, self.M = rate_out // common, rate_in // common
        periods = max(1, -(-2 * self.taps // self.M))
        self.Lg, self.Mg = periods * self.L, periods * self.M
        self.A = -(-(self.Mg + 2 * self.taps - 1) // self.Mg)  # input rows one group reads
        self.B = max(1, _BLOCK_OUTPUTS // self.Lg)  # groups per block
        self.dense = self._dense() if self.A * self.Mg * self.Lg <= _DENSE_LIMIT else None

    @property
    def block_outputs(self) -> int:
        return self.B * self.Lg

    @property
    def block_inputs(self) -> int:
        return self.B * self.Mg

    @property
    def span(self) -> int:
        """Input samples a block reads, from ``block_start``."""
        return (self.B + self.A - 1) * self.Mg

    def block_start(self, block: int) -> int:
        """Input index of the first sample block ``block`` reads (its first left wing)."""
        return block * self.block_inputs - self.taps + 1

    def phase_weights(self, phases: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(P,) phases -> their centre sample ``n`` within the group and (P, 2 * taps) weights
        on ``x[n - taps + 1 .. n + taps]`` (the left wing reversed, then the right wing)."""
        centre, rest = np.divmod(phases * self.M, self.L)
        frac = self.scale * (rest / self.L)  # the fraction resampy computes as t - int(t)
        o, eta = self._offset(frac)
        left = self.win[o] + eta[:, None] * self.delta[o]
        o, eta = self._offset(self.scale - frac)
        right = self.win[o] + eta[:, None] * self.delta[o]
        return centre, np.concatenate([left[:, ::-1], right], axis=1)

    def _offset(self, frac: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        index_frac = frac * self.per_crossing
        offset = index_frac.astype(np.int64)
        return offset, index_frac - offset

    def _dense(self) -> np.ndarray:
        centre, weights = self.phase_weights(np.arange(self.Lg))
        dense = np.zeros((self.A * self.Mg, self.Lg))
        rows = centre[:, None] + np.arange(2 * self.taps)
        dense[rows, np.arange(self.Lg)[:, None]] = weights
        return dense.reshape(self.A, self.Mg, self.Lg)

    def compute(self, x: np.ndarray, blocks: int) -> np.ndarray:
        """(blocks * block_outputs,) outputs of consecutive blocks; ``x`` holds the input from
        the first block's ``block_start``, at least ``(blocks - 1) * block_inputs + span``."""
        groups = blocks * self.B
        rows = x[: (groups + self.A - 1) * self.Mg].reshape(-1, self.Mg)
        if self.dense is None:
            return self._compute_sparse(rows, groups)
        shape = (blocks, self.B, self.Mg)
        y = rows[:groups].reshape(shape) @ self.dense[0]
        for a in range(1, self.A):
            y += rows[a : a + groups].reshape(shape) @ self.dense[a]
        return y.reshape(-1)

    def _compute_sparse(self, rows: np.ndarray, groups: int) -> np.ndarray:
        """For ratios with too many phases to lay out densely: weights built per chunk of
        phases, windows gathered (slower, but only for unusual rate pairs)."""
        flat = rows.reshape(-1)
        windows = np.lib.stride_tricks.sliding_window_view(flat, 2 * self.taps)
        out = np.empty((groups, self.Lg))
        for lo in range(0, self.Lg, _FALLBACK_PHASES):
            centre, weights = self.phase_weights(np.arange(lo, min(lo + _FALLBACK_PHASES, self.Lg)))
            for k in range(groups):
                out[k, lo : lo + len(centre)] = np.einsum(
                    "ij,ij->i", weights, windows[k * self.Mg + centre]
                )
        return out.reshape(-1)


@lru_cache(maxsize=4)  # a few MB each
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


_BLOCKS_AT_ONCE = 64  # blocks per matrix product (bounds the temporaries of a long push)


class StreamResampler:
    """``resample`` over a signal fed in chunks: the concatenated outputs are the samples the
    whole signal resamples to. Outputs come a block at a time (~1024 samples), so it holds
    about one block's input plus the filter's reach (~2 * 50 zero crossings) and one chunk."""

    def __init__(self, rate_in: int, rate_out: int) -> None:
        self.rate_in, self.rate_out = int(rate_in), int(rate_out)
        self._k = _kernel(self.rate_in, self.rate_out)
        self._buf = np.zeros(0, np.float64)
        self._buf_start = 0  # input index of _buf[0]
        self._received = 0
        self._block = 0  # next block to compute
        self._sent = 0  # outputs returned so far

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Append input samples; return the outputs that no later input can change."""
        samples = np.asarray(samples, np.float64).reshape(-1)
        self._buf = np.concatenate([self._buf, samples])
        self._received += len(samples)
        k = self._k
        # Whole blocks whose input has all arrived, and whose outputs the signal has.
        ready = (self._received - k.span - k.block_start(self._block)) // k.block_inputs + 1
        known = output_length(self._received, self.rate_in, self.rate_out) // k.block_outputs
        return self._emit(min(ready, known - self._block), None)

    def finish(self) -> np.ndarray:
        """The remaining outputs, reading zeros past the end of the input."""
        stop = output_length(self._received, self.rate_in, self.rate_out)
        blocks = -(-stop // self._k.block_outputs) - self._block
        return self._emit(blocks, stop)

    def _emit(self, blocks: int, stop: int | None) -> np.ndarray:
        k, parts = self._k, [np.zeros(0, np.float64)]
        while blocks > 0:
            n = min(blocks, _BLOCKS_AT_ONCE)
            parts.append(k.compute(self._input(k.block_start(self._block), n), n))
            self._block += n
            blocks -= n
        out = np.concatenate(parts)
        if stop is not None:
            out = out[: max(0, stop - self._sent)]
        self._sent += len(out)
        # Keep what the next block reads.
        drop = min(max(0, k.block_start(self._block) - self._buf_start), len(self._buf))
        self._buf = self._buf[drop:]
        self._buf_start += drop
        return out

    def _input(self, start: int, blocks: int) -> np.ndarray:
        """Input samples ``start ..`` for ``blocks`` blocks; zeros outside the signal (before
        its start they stand in for resampy's shortened left wing)."""
        k = self._k
        length = (blocks - 1) * k.block_inputs + k.span
        end = self._buf_start + len(self._buf)
        if start >= self._buf_start and start + length <= end:
            return self._buf[start - self._buf_start : start - self._buf_start + length]
        x = np.zeros(length, np.float64)
        lo, hi = max(start, self._buf_start), min(start + length, end)
        if hi > lo:
            x[lo - start : hi - start] = self._buf[lo - self._buf_start : hi - self._buf_start]
        return x
