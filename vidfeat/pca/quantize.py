"""YouTube-8M's 8-bit feature quantization.

Writers clip each value to [min, max] and store ``q = round((x - min) * 255 / (max - min))``.
Readers use YouTube-8M's own reader formula, ``x̂ = q * scalar + bias`` with
``scalar = (max - min) / 255`` and ``bias = (max - min) / 512 + min``. The extra half-bin
``(max - min) / 512`` is part of the released format (its readers add it), so we reproduce it
rather than "fixing" it: features read from our stores then match features read by YouTube-8M code.
"""

from __future__ import annotations

import numpy as np

from vidfeat.convert import copy_into, scale_shift
from vidfeat.errors import ConfigError

SCHEME = "yt8m_uint8"
DEFAULT_MIN = -2.0
DEFAULT_MAX = 2.0


# np.rint rounds half to even, like YouTube-8M's numpy writer (np.round).
_ROUNDING = {"nearest": np.rint, "floor": np.floor}


def _check_range(min_value: float, max_value: float) -> None:
    if not max_value > min_value:
        raise ConfigError(f"quantization range is empty: min={min_value} max={max_value}")


def quantize(
    x: np.ndarray,
    min_value: float = DEFAULT_MIN,
    max_value: float = DEFAULT_MAX,
    rounding: str = "nearest",
) -> np.ndarray:
    """Float features -> uint8 codes, clipping to [min_value, max_value].

    ``rounding="nearest"`` is YouTube-8M's frame-feature writer; ``"floor"`` is VGGish's
    postprocessor (``astype(np.uint8)`` of the scaled value), which made the audio features.
    """
    _check_range(min_value, max_value)
    if rounding not in _ROUNDING:
        raise ConfigError(f"unknown rounding {rounding!r}; choose one of: {sorted(_ROUNDING)}")
    # YouTube-8M's writer works on float32 features in float32 (clip, subtract, scale); in
    # float64 a value within an ulp of a half-code tie could round the other way (about 6 in
    # a million codes). The floor rounding (VGGish's) is computed in float64 as before.
    dtype = np.float32 if rounding == "nearest" else np.float64
    x = np.asarray(x, dtype=dtype)
    if np.isnan(x).any():
        # NaN has no code: the cast made it 0, which reads back as the range's minimum.
        raise ConfigError(f"cannot quantize NaN ({int(np.isnan(x).sum())} of {x.size} values)")
    lo, scale = dtype(min_value), dtype(255.0 / (max_value - min_value))
    x = np.clip(x, lo, dtype(max_value))
    return _ROUNDING[rounding]((x - lo) * scale).astype(np.uint8)


def dequantize(
    q: np.ndarray,
    min_value: float = DEFAULT_MIN,
    max_value: float = DEFAULT_MAX,
    *,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """uint8 codes -> float32 with YouTube-8M's reader formula (including its +range/512 bias).

    ``out``: a float32 array of ``q``'s shape to write into (a slice of a padded batch, say),
    returned; by default a new one.
    """
    _check_range(min_value, max_value)
    q = np.asarray(q)
    if q.dtype != np.uint8:
        raise ConfigError(f"dequantize expects uint8 codes, got {q.dtype}")
    if out is None:
        out = np.empty(q.shape, dtype=np.float32)
    elif out.dtype != np.float32 or out.shape != q.shape:
        raise ConfigError(f"dequantize writes float32 {q.shape}, got {out.dtype} {out.shape}")
    span = max_value - min_value
    scalar = span / 255.0
    bias = span / 512.0 + min_value
    # The formula in float32, one rounding per operation as YouTube-8M's reader does, in three
    # passes over ``out`` (the codes widen exactly; the later passes find ``out`` in cache).
    # On the training read path this beats both a multiply that casts the codes as it goes
    # (1.6x) and a 256-entry table gather, which numpy indexes through widened (intp) indices;
    # the passes run on torch's threads in a process that has loaded it (vidfeat.convert).
    copy_into(out, q)
    scale_shift(out, np.float32(scalar), np.float32(bias))
    return out


def quantization_attrs(min_value: float = DEFAULT_MIN, max_value: float = DEFAULT_MAX) -> dict:
    """The store attribute block describing this scheme."""
    _check_range(min_value, max_value)
    return {"scheme": SCHEME, "min": float(min_value), "max": float(max_value)}
