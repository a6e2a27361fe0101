"""VGGish's PCA and 8-bit quantization, and YouTube-8M's reader on the codes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from vidfeat.audio import NO_AUDIO_PCA_VALUE, load_vggish_pca
from vidfeat.audio.postprocess import quantize_audio
from vidfeat.errors import WeightsError
from vidfeat.pca.quantize import dequantize


@pytest.fixture
def pca_file(tmp_path):
    rng = np.random.default_rng(3)
    path = tmp_path / "vggish_pca_params.npz"
    vectors, means = rng.standard_normal((128, 128)), rng.standard_normal((128, 1))
    np.savez(path, pca_eigen_vectors=vectors, pca_means=means)  # means as a column, like Google's
    return path, vectors, means[:, 0]


def test_pca_is_eigen_vectors_times_centred_embeddings(pca_file):
    path, vectors, means = pca_file
    pca = load_vggish_pca(path)
    x = np.random.default_rng(4).standard_normal((5, 128))
    expected = np.stack([vectors @ (row - means) for row in x])
    np.testing.assert_allclose(pca.apply(x), expected, rtol=1e-5, atol=1e-4)
    assert len(pca.sha256) == 64 and pca.to_attrs()["sha256"] == pca.sha256


def test_quantization_clips_and_truncates_like_the_vggish_postprocessor():
    x = np.array([[-3.0, -2.0, 0.0, 1.99, 2.0, 5.0, -1.0, 0.01]])
    # clip to [-2, 2], scale by 255 / 4, then cast to uint8 (truncation).
    expected = [[0, 0, 127, 254, 255, 255, 63, 128]]
    np.testing.assert_array_equal(quantize_audio(x), expected)
    assert quantize_audio(x).dtype == np.uint8


def test_reader_recovers_values_within_a_bin():
    x = np.random.default_rng(6).uniform(-2, 2, (50, 128))
    err = np.abs(dequantize(quantize_audio(x)) - x)
    assert err.max() <= 4 / 255  # the half-bin bias centres each truncation bin


def test_no_audio_value_reads_back_as_zero():
    codes = quantize_audio(np.full((1, 128), NO_AUDIO_PCA_VALUE))
    assert np.all(codes == 127)
    assert np.abs(dequantize(codes)).max() < 1e-3


def test_missing_or_wrong_pca_file(tmp_path):
    with pytest.raises(WeightsError, match=r"vggish_pca_params\.npz"):
        load_vggish_pca(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    np.savez(bad, pca_eigen_vectors=np.zeros((64, 128)), pca_means=np.zeros(128))
    with pytest.raises(WeightsError, match="expected"):
        load_vggish_pca(bad)


def test_audio_package_imports_without_torch():
    code = "import sys, vidfeat.audio, vidfeat.backbones.audio; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_quantization_truncates_the_float64_pca_product():
    # A PCA output a hair below code 128's lower edge: the float64 product truncates to 127, as
    # the reference's does; rounded to float32 first, it reached the edge and became 128.
    from vidfeat.audio.postprocess import VGGishPCA

    edge = 128 * 4 / 255 - 2
    pca = VGGishPCA(eigen_vectors=np.eye(128), means=np.full(128, -(edge - 1e-12)), sha256="")
    embedding = np.zeros((1, 128), np.float32)
    assert float(np.float32(edge - 1e-12)) > edge  # what the float32 rounding did
    assert (quantize_audio(pca.apply(embedding, np.float64)) == 127).all()
    assert (quantize_audio(pca.apply(embedding)) == 128).all()  # float32, for storing floats
