"""Frame preprocessing for backbones: resize + normalise, numpy only.

This runs in decode worker processes on every sampled frame, so it must not import torch and
must be cheap: each resize rule precomputes its index/weight tables once per
``(in_size, out_size)`` and then does a handful of vectorised gathers.

All outputs are HWC float32, so a batch ``(N, S, S, 3)`` becomes a channels_last NCHW tensor
with ``torch.from_numpy(batch).permute(0, 3, 1, 2)`` and no copy. ``mean``/``std`` are in
pixel units (0-255), applied after the resize.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Protocol

import numpy as np

from vidfeat.errors import ConfigError
from vidfeat.registry import Registry

# (frame (H, W, 3), size, out (size, size, 3) float32 | None) -> (size, size, 3) float32
ResizeFn = Callable[[np.ndarray, int, np.ndarray | None], np.ndarray]

RESIZE_RULES: Registry[ResizeFn] = Registry("resize rule")


class PreprocessSpec(Protocol):
    """What ``preprocess_frame`` needs from a backbone spec."""

    input_size: int
    resize: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def _check_frame(frame: np.ndarray, size: int) -> None:
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.shape[0] < 1 or frame.shape[1] < 1:
        raise ConfigError(f"expected an (H, W, 3) frame, got shape {frame.shape}")
    if size < 1:
        raise ConfigError(f"resize target must be >= 1 pixel, got {size}")


# ---- TF1 legacy bilinear ------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _tf1_axis_table(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lower, upper, lerp) per output index, computed in float32 exactly like TF1's kernel.

    TF1's legacy scaler maps ``dst -> dst * (in / out)`` with no half-pixel offset; ``upper`` is
    ``ceil`` clamped to the last pixel, so the right/bottom edge repeats instead of reflecting.
    """
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.arange(out_size, dtype=np.float32) * scale  # float32 on purpose: TF rounds here too
    src_floor = np.floor(src)
    lower = np.maximum(src_floor.astype(np.intp), 0)
    upper = np.minimum(np.ceil(src).astype(np.intp), in_size - 1)
    lerp = (src - src_floor).astype(np.float32)
    return lower, upper, lerp


@lru_cache(maxsize=16)
def _tf1_frame_table(height: int, width: int, size: int) -> tuple[np.ndarray, ...]:
    """Flat pixel indices of the 4 neighbours, each (S, S), plus x-lerp (S*3,) and y-lerp (S, 1)."""
    y0, y1, wy = _tf1_axis_table(height, size)
    x0, x1, wx = _tf1_axis_table(width, size)
    tables = tuple((ys[:, None] * width + xs[None, :]) for ys in (y0, y1) for xs in (x0, x1))
    tables += (np.repeat(wx, 3), wy[:, None].copy())
    for a in tables:
        a.flags.writeable = False
    return tables


_SCRATCH = threading.local()


def _scratch(key: tuple[object, ...], make: Callable[[], np.ndarray]) -> np.ndarray:
    """Per-thread reusable work buffer: fresh ~1 MB arrays per frame cost page faults."""
    buffers = _SCRATCH.__dict__.setdefault("buffers", {})
    if key not in buffers:
        buffers[key] = make()
    return buffers[key]


def _output(out: np.ndarray | None, size: int) -> np.ndarray:
    if out is None:
        return np.empty((size, size, 3), np.float32)
    if out.shape != (size, size, 3) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ConfigError(f"out must be a C-contiguous ({size}, {size}, 3) float32 array")
    return out


@RESIZE_RULES.register("tf1_bilinear")
def tf1_resize_bilinear(frame: np.ndarray, size: int, out: np.ndarray | None = None) -> np.ndarray:
    """``tf.image.resize_bilinear(align_corners=False)`` of TF1 (no half-pixel centres, no crop).

    frame: (H, W, 3) uint8 or float. Returns (size, size, 3) float32, written into ``out`` if
    given. The arithmetic order (lerp along x on both rows, then along y, in float32) follows
    TF's kernel, so results agree with it to the last bit up to compiler FMA contraction.
    """
    _check_frame(frame, size)
    pixels = np.ascontiguousarray(frame)
    # One pixel = one opaque 3-channel item, so each neighbour is a single flat np.take.
    void = np.dtype((np.void, 3 * pixels.itemsize))
    flat = pixels.view(void).reshape(-1)
    i00, i01, i10, i11, wx3, wy = _tf1_frame_table(frame.shape[0], frame.shape[1], size)
    gathered = _scratch(("gather", size, void), lambda: np.empty((size, size), void))
    as_channels = gathered.view(pixels.dtype).reshape(size, size * 3)

    def neighbour(index: np.ndarray, dst: np.ndarray) -> np.ndarray:
        np.take(flat, index, out=gathered)
        np.copyto(dst, as_channels, casting="unsafe")  # TF also casts to float32 first
        return dst

    def plane() -> np.ndarray:
        return np.empty((size, size * 3), np.float32)

    work = [_scratch(("f32", size, k), plane) for k in "ab"]
    result = _output(out, size)
    top = neighbour(i01, result.reshape(size, size * 3))
    top -= neighbour(i00, work[0])
    top *= wx3
    top += work[0]
    bottom = neighbour(i11, work[1])
    bottom -= neighbour(i10, work[0])
    bottom *= wx3
    bottom += work[0]
    bottom -= top
    bottom *= wy
    top += bottom  # = top + (bottom - top) * y_lerp, written into ``result``
    return result


# ---- torchvision-style antialiased bilinear ------------------------------------------------------


@lru_cache(maxsize=64)
def _antialias_table(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(index, weight) of shape (out_size, taps): PIL / ``interpolate(antialias=True)`` taps.

    When shrinking, the triangle filter is stretched by the scale so every input pixel
    contributes (that is the antialiasing); unused taps get weight 0 and a valid index.
    Computed in float32 like ATen, which keeps us within a few ulps of torch.
    """
    f32 = np.float32
    scale = f32(in_size) / f32(out_size)
    support = scale if scale >= 1.0 else f32(1.0)  # bilinear half-width 1, stretched to shrink
    inv_scale = f32(1.0) / scale if scale >= 1.0 else f32(1.0)
    centers = scale * (np.arange(out_size, dtype=f32) + f32(0.5))
    starts = np.maximum((centers - support + f32(0.5)).astype(np.intp), 0)
    stops = np.minimum((centers + support + f32(0.5)).astype(np.intp), in_size)
    index = starts[:, None] + np.arange(int((stops - starts).max()))[None, :]  # (S, taps)
    distance = (index.astype(f32) - centers[:, None] + f32(0.5)) * inv_scale
    weight = np.where(index < stops[:, None], np.maximum(f32(1.0) - np.abs(distance), 0), 0)
    weight = (weight / weight.sum(axis=1, keepdims=True)).astype(f32)
    index = np.minimum(index, in_size - 1)
    for a in (index, weight):
        a.flags.writeable = False
    return index, weight


def _resample_rows(x: np.ndarray, index: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Weighted sum of ``taps`` gathered rows of an (H, W, 3) array: (S, W, 3) float32."""
    out = np.take(x, index[:, 0], axis=0).astype(np.float32)
    out *= weight[:, 0].reshape(-1, 1, 1)  # constant along each row: numpy's fast inner loop
    for k in range(1, index.shape[1]):
        term = np.take(x, index[:, k], axis=0).astype(np.float32, copy=False)
        term *= weight[:, k].reshape(-1, 1, 1)
        out += term
    return out


def _resample_columns(x: np.ndarray, index: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Weighted sum of ``taps`` gathered columns of an (H, W, 3) array: (H, S, 3) float32.

    The same arithmetic as ``_resample_rows`` in the other direction, but on (H, S * 3) rows:
    a (1, S, 1) weight broadcast over (H, S, 3) makes numpy's inner loop 3 elements long (that
    took about 20% more time); each pixel is gathered as one 3-channel item, as the TF1 rule
    does."""
    h, c = x.shape[0], x.shape[2]
    s = index.shape[0]
    pixels = np.ascontiguousarray(x)
    flat = pixels.view(np.dtype((np.void, c * pixels.itemsize))).reshape(h, -1)
    w3 = np.repeat(weight, c, axis=0)  # (S * 3, taps): each output pixel's weight per channel
    out = np.empty((h, s * c), np.float32)
    term = np.empty((h, s * c), np.float32)

    def tap(k: int, dst: np.ndarray) -> np.ndarray:
        gathered = np.take(flat, index[:, k], axis=1)
        np.copyto(dst, gathered.view(pixels.dtype).reshape(h, s * c), casting="unsafe")
        dst *= w3[:, k]
        return dst

    tap(0, out)
    for k in range(1, index.shape[1]):
        out += tap(k, term)
    return out.reshape(h, s, c)


@RESIZE_RULES.register("torch_bilinear_antialias")
def antialias_resize_bilinear(
    frame: np.ndarray, size: int, out: np.ndarray | None = None
) -> np.ndarray:
    """Float version of torchvision's ``Resize(antialias=True)`` bilinear to (size, size).

    Matches ``torch.nn.functional.interpolate(mode="bilinear", antialias=True,
    align_corners=False)`` on a float image; unlike torchvision on uint8 it does not round the
    result back to uint8. The whole frame is squashed to a square, no crop.
    """
    _check_frame(frame, size)
    cols_index, cols_weight = _antialias_table(frame.shape[1], size)
    rows_index, rows_weight = _antialias_table(frame.shape[0], size)
    x = _resample_columns(frame, cols_index, cols_weight)  # (H, S, 3)
    x = _resample_rows(x, rows_index, rows_weight)  # (S, S, 3)
    if out is None:
        return x
    np.copyto(_output(out, size), x)
    return out


# ---- normalisation -------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def _channel_row(values: tuple[float, float, float], pixels: int) -> np.ndarray:
    """(pixels * 3,) float32: per-channel ``values`` repeated for every pixel of an image row.

    Broadcasting a (3,) operand over (..., 3) makes numpy's inner loop 3 elements long, which
    took 1.42 ms to normalise a 299 x 299 frame; against whole rows it takes 0.30 ms, with the
    same arithmetic on every element (``benchmarks/preprocess.py``)."""
    row = np.tile(np.asarray(values, dtype=np.float32), pixels)
    row.flags.writeable = False
    return row


def normalize(
    x: np.ndarray, mean: Sequence[float], std: Sequence[float], out: np.ndarray | None = None
) -> np.ndarray:
    """``(x - mean) / std`` per channel over the last axis of an (..., W, 3) image, float32
    (into ``out``, C-contiguous float32 of ``x``'s shape, if given).

    With mean = std = 128 this equals YouTube-8M's ``(x - 128) * (1/128)`` bit for bit, because
    dividing by a power of two is exact.
    """
    mean32 = np.asarray(mean, dtype=np.float32)
    std32 = np.asarray(std, dtype=np.float32)
    if mean32.shape != (3,) or std32.shape != (3,) or not np.all(std32 > 0):
        raise ConfigError(f"mean/std must be 3 values with std > 0, got {mean!r} / {std!r}")
    x = np.asarray(x)
    if x.ndim < 2 or x.shape[-1] != 3:
        raise ConfigError(f"expected an (..., W, 3) image, got shape {x.shape}")
    if out is None:
        out = np.empty(x.shape, np.float32)
    elif out.shape != x.shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ConfigError(f"out must be a C-contiguous float32 array of shape {x.shape}")
    pixels, row_shape = x.shape[-2], (*x.shape[:-2], x.shape[-2] * 3)
    rows = out.reshape(row_shape)  # a view: ``out`` is C-contiguous
    np.subtract(
        x.reshape(row_shape),
        _channel_row(tuple(mean32.tolist()), pixels),
        out=rows,
        dtype=np.float32,  # float32 arithmetic whatever x's dtype
    )
    rows /= _channel_row(tuple(std32.tolist()), pixels)
    return out


def preprocess_frame(
    frame_uint8: np.ndarray, spec: PreprocessSpec, out: np.ndarray | None = None
) -> np.ndarray:
    """One RGB frame (H, W, 3) uint8 -> (S, S, 3) float32 ready for ``spec``'s backbone.

    Pass ``out`` (e.g. ``batch[i]``) to write straight into a preallocated batch.
    """
    resized = RESIZE_RULES.get(spec.resize)(frame_uint8, spec.input_size, out)
    return normalize(resized, spec.mean, spec.std, out=resized)
