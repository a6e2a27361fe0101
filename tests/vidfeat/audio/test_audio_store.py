"""The audio stream in a real store: uint8 VGGish codes beside rgb, read back as floats."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vidfeat.audio import load_vggish_pca, log_mel_examples
from vidfeat.audio.features import AudioFeatures
from vidfeat.backbones.audio import create_audio_backbone
from vidfeat.backbones.vggish import VGGish
from vidfeat.errors import StoreMismatchError
from vidfeat.store import create_store, open_store


@pytest.fixture(scope="module")
def audio(tmp_path_factory, one_torch_thread):
    d = tmp_path_factory.mktemp("audio_store")
    torch.manual_seed(3)
    torch.save(VGGish().state_dict(), d / "w.pth")
    rng = np.random.default_rng(3)
    np.savez(
        d / "pca.npz",
        pca_eigen_vectors=rng.standard_normal((128, 128)) * 0.05,
        pca_means=rng.standard_normal(128),
    )
    backbone = create_audio_backbone("vggish", weights=d / "w.pth")
    return AudioFeatures(backbone, load_vggish_pca(d / "pca.npz"), quantize=True)


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_quantized_audio_beside_rgb_round_trips(audio, tmp_path, suffix):
    t = np.arange(3 * 16000) / 16000
    examples = log_mel_examples(0.3 * np.sin(2 * np.pi * 660 * t), 16000)  # (3, 96, 64)
    codes = audio(examples, has_audio=True)
    pca = audio.pca.apply(audio.backbone.embed_examples(torch.from_numpy(examples)).numpy())
    rgb = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    streams = {"rgb": {"dim": 8}, "audio": audio.stream_spec()}
    path = tmp_path / f"s{suffix}"
    with create_store(path, streams=streams, attrs={"fps": "1"}) as w:
        w.write("v", {"rgb": rgb, "audio": codes}, timestamps=np.arange(3.0))
        w.write("quiet", {"rgb": rgb, "audio": audio(examples, has_audio=False)}, note="no_audio")
    with open_store(path) as r:
        assert r.streams["audio"].quantization["scheme"] == "vggish_uint8"
        np.testing.assert_array_equal(r.read("v", "audio", raw=True), codes)
        # Dequantized codes are within one bin of the PCA values they came from.
        assert np.abs(r.read("v", "audio") - np.clip(pca, -2, 2)).max() <= 4 / 255 + 1e-6
        assert np.abs(r.read("quiet", "audio")).max() < 1e-3
        assert r.videos.set_index("video_id").loc["quiet", "reason"] == "no_audio"
    other = dict(streams, audio={**audio.stream_spec(), "attrs": {"pca": None}})
    with pytest.raises(StoreMismatchError):
        create_store(path, streams=other, attrs={"fps": "1"})
