"""YouTube-8M's 8-bit quantization formulas, value by value."""

from __future__ import annotations

import numpy as np
import pytest

from vidfeat.errors import ConfigError
from vidfeat.pca.quantize import dequantize, quantization_attrs, quantize


def test_every_code_dequantizes_with_youtube8m_reader_formula() -> None:
    codes = np.arange(256, dtype=np.uint8)
    # YouTube-8M's reader: q * (max - min) / 255 + (max - min) / 512 + min, here min=-2, max=2.
    expected = codes.astype(np.float64) * 4.0 / 255.0 + 4.0 / 512.0 - 2.0
    got = dequantize(codes)
    assert got.dtype == np.float32 and got.shape == (256,)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    # The lookup table is bit-identical to evaluating the formula in float32 element by element.
    per_element = codes.astype(np.float32) * np.float32(4 / 255) + np.float32(4 / 512 - 2)
    np.testing.assert_array_equal(got, per_element)


def test_dequantize_keeps_the_shape_of_frame_matrices() -> None:
    q = np.random.default_rng(0).integers(0, 256, size=(7, 1024), dtype=np.uint8)
    x = dequantize(q, -1.0, 3.0)
    assert x.shape == (7, 1024) and x.dtype == np.float32
    np.testing.assert_allclose(x, q * (4.0 / 255.0) + 4.0 / 512.0 - 1.0, atol=1e-6)


def test_dequantize_into_a_strided_slice_writes_only_there() -> None:
    q = np.random.default_rng(2).integers(0, 256, size=(5, 12), dtype=np.uint8)
    batch = np.full((2, 6, 20), 7.0, dtype=np.float32)  # a padded batch, streams side by side
    got = dequantize(q, -1.0, 3.0, out=batch[1, :5, 4:16])
    assert np.shares_memory(got, batch)
    per_element = q.astype(np.float32) * np.float32(4 / 255) + np.float32(4 / 512 - 1)
    assert batch[1, :5, 4:16].tobytes() == per_element.tobytes()
    batch[1, :5, 4:16] = 7.0
    assert (batch == 7.0).all()  # nothing else written
    with pytest.raises(ConfigError, match="float32"):
        dequantize(q, out=np.empty((5, 12), np.float64))
    with pytest.raises(ConfigError, match="float32"):
        dequantize(q, out=np.empty((5, 11), np.float32))


def test_quantize_clips_and_rounds_half_to_even() -> None:
    x = np.array([-5.0, -2.0, 2.0, 7.0, 0.0, -1.0, 1.0])
    # Beyond the range: clipped to the end codes; 0 sits at 127.5 steps and rounds to even.
    np.testing.assert_array_equal(quantize(x), [0, 0, 255, 255, 128, 64, 191])
    # With a range of 255 a step is 1, so exact halves are representable: numpy's np.round
    # (YouTube-8M's writer) sends them to the even neighbour.
    halves = np.array([0.5, 1.5, 2.5, 253.5, 254.5])
    np.testing.assert_array_equal(quantize(halves, 0.0, 255.0), [0, 2, 2, 254, 254])


def test_round_trip_error_is_within_one_step_plus_the_bias() -> None:
    x = np.random.default_rng(1).uniform(-2, 2, size=10_000)
    err = np.abs(dequantize(quantize(x)) - x)
    # Rounding costs at most half a step; the reader's +range/512 bias adds about half a step.
    assert err.max() <= 4.0 / 255.0 / 2 + 4.0 / 512.0 + 1e-6


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ConfigError, match="uint8"):
        dequantize(np.array([1.0, 2.0]))
    with pytest.raises(ConfigError, match="empty"):
        quantize(np.zeros(3), 1.0, 1.0)
    with pytest.raises(ConfigError, match="empty"):
        quantization_attrs(2.0, -2.0)
    assert quantization_attrs() == {"scheme": "yt8m_uint8", "min": -2.0, "max": 2.0}


def test_nan_is_refused_and_infinity_clipped() -> None:
    # The cast turned NaN into code 0, stored silently as the range's minimum.
    with pytest.raises(ConfigError, match=r"cannot quantize NaN \(1 of 3 values\)"):
        quantize(np.array([0.5, np.nan, 1.0], np.float32))
    assert quantize(np.array([np.inf, -np.inf])).tolist() == [255, 0]


def test_codes_next_to_half_code_ties_follow_youtube8ms_float32_writer() -> None:
    # Google's writer: clip a float32 vector, (f - min) * (255 / range) in float32, then
    # int(round(f)) per value (half to even). Scaled in float64, values an ulp from a tie
    # rounded the other way.
    ties = ((np.arange(256) + 0.5) / 63.75 - 2.0).astype(np.float32).view(np.int32)
    x = (ties[:, None] + np.arange(-8, 9)[None, :]).astype(np.int32).view(np.float32).ravel()
    x = x[(x >= -2) & (x <= 2)]
    scaled = (np.clip(x, -2.0, 2.0) - np.float32(-2.0)) * np.float32(255.0 / 4.0)
    assert scaled.dtype == np.float32
    google = np.array([round(float(v)) for v in scaled])  # float(): exact, half to even
    assert (quantize(x).astype(int) == google).all()
