"""VGGish as a registered audio backbone with random weights in the published key layout."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from vidfeat.audio import load_vggish_pca, log_mel_examples
from vidfeat.audio.features import AudioFeatures
from vidfeat.backbones.audio import audio_backbone_names, create_audio_backbone
from vidfeat.backbones.vggish import VGGish
from vidfeat.errors import ConfigError, WeightsError

# The PyTorch port's state dict (vggish-10086976.pth): names and shapes of its 18 tensors.
PORT_KEYS = {
    "features.0": ((64, 1, 3, 3), (64,)),
    "features.3": ((128, 64, 3, 3), (128,)),
    "features.6": ((256, 128, 3, 3), (256,)),
    "features.8": ((256, 256, 3, 3), (256,)),
    "features.11": ((512, 256, 3, 3), (512,)),
    "features.13": ((512, 512, 3, 3), (512,)),
    "embeddings.0": ((4096, 12288), (4096,)),
    "embeddings.2": ((4096, 4096), (4096,)),
    "embeddings.4": ((128, 4096), (128,)),
}


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    torch.manual_seed(0)
    module = VGGish()
    path = tmp_path_factory.mktemp("vggish") / "vggish-random.pth"
    torch.save(module.state_dict(), path)
    return path, module.state_dict()


@pytest.fixture(scope="module")
def examples():
    t = np.arange(3 * 16000) / 16000
    return torch.from_numpy(log_mel_examples(0.3 * np.sin(2 * np.pi * 880 * t), 16000))


def test_state_dict_has_the_published_names_and_shapes():
    state = VGGish().state_dict()
    expected = {}
    for prefix, (w, b) in PORT_KEYS.items():
        expected[f"{prefix}.weight"], expected[f"{prefix}.bias"] = w, b
    assert {k: tuple(v.shape) for k, v in state.items()} == expected


def test_registered_and_embeds_examples(random_weights, examples, one_torch_thread):
    path, _ = random_weights
    assert "vggish" in audio_backbone_names()
    backbone = create_audio_backbone("vggish", weights=path)
    assert backbone.spec.example_shape == (96, 64) and backbone.spec.feature_dim == 128
    assert backbone.spec.weights_id == "file:vggish-random.pth:torch"
    out = backbone.embed_examples(examples)
    assert out.shape == (3, 128) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and (out < 0).any()  # pre-activation: no final ReLU
    torch.testing.assert_close(backbone.embed_examples(examples), out, rtol=0, atol=0)
    # Each example is embedded on its own: batching changes nothing.
    torch.testing.assert_close(backbone.embed_examples(examples[1:2]), out[1:2])
    with pytest.raises(ConfigError):
        backbone.embed_examples(examples[:, :, :32])


def test_state_dict_round_trips(random_weights, tmp_path, one_torch_thread):
    path, state = random_weights
    backbone = create_audio_backbone("vggish", weights=path)
    again = tmp_path / "again.pth"
    torch.save(backbone.module.state_dict(), again)
    reloaded = torch.load(again, weights_only=True)
    assert reloaded.keys() == state.keys()
    for key in state:
        torch.testing.assert_close(reloaded[key], state[key], rtol=0, atol=0)


def test_tf_checkpoint_layout_gives_the_same_network(
    random_weights, examples, tmp_path, one_torch_thread
):
    path, state = random_weights
    scopes = {
        "features.0": "conv1",
        "features.3": "conv2",
        "features.6": "conv3/conv3_1",
        "features.8": "conv3/conv3_2",
        "features.11": "conv4/conv4_1",
        "features.13": "conv4/conv4_2",
        "embeddings.0": "fc1/fc1_1",
        "embeddings.2": "fc1/fc1_2",
        "embeddings.4": "fc2",
    }
    tf_vars = {}
    for prefix, scope in scopes.items():
        w = state[f"{prefix}.weight"].numpy()
        # TF-Slim stores convolutions as HWIO and fully connected layers as (in, out).
        tf_vars[f"vggish/{scope}/weights"] = w.transpose(2, 3, 1, 0) if w.ndim == 4 else w.T
        tf_vars[f"vggish/{scope}/biases"] = state[f"{prefix}.bias"].numpy()
    npz = tmp_path / "vggish_model.npz"
    np.savez(npz, **tf_vars)
    from_tf = create_audio_backbone("vggish", weights=npz)
    from_port = create_audio_backbone("vggish", weights=path)
    assert from_tf.spec.weights_id.endswith(":tf")
    torch.testing.assert_close(
        from_tf.embed_examples(examples),
        from_port.embed_examples(examples),
        rtol=1e-5,
        atol=1e-6,
    )


def test_missing_weights_name_the_files_and_sources(tmp_path):
    for weights in (None, tmp_path / "nowhere.pth"):
        with pytest.raises(WeightsError) as info:
            create_audio_backbone("vggish", weights=weights)
        message = str(info.value)
        assert "vggish-10086976.pth" in message and "vggish_model.ckpt" in message
        assert "--audio-weights" in message


def test_foreign_state_dict_is_refused(tmp_path):
    bad = tmp_path / "other.pth"
    torch.save({"features.0.weight": torch.zeros(3)}, bad)
    with pytest.raises(WeightsError, match="vggish architecture"):
        create_audio_backbone("vggish", weights=bad)


def test_audio_features_compose_network_pca_and_codes(
    random_weights, examples, tmp_path, one_torch_thread
):
    path, _ = random_weights
    backbone = create_audio_backbone("vggish", weights=path)
    rng = np.random.default_rng(7)
    vectors, means = rng.standard_normal((128, 128)) * 0.05, rng.standard_normal(128)
    np.savez(tmp_path / "pca.npz", pca_eigen_vectors=vectors, pca_means=means)
    pca = load_vggish_pca(tmp_path / "pca.npz")
    audio = AudioFeatures(backbone, pca, quantize=True)
    codes = audio(examples.numpy(), has_audio=True)
    raw = backbone.embed_examples(examples).numpy().astype(np.float64)
    expected = np.floor((np.clip((raw - means) @ vectors.T, -2, 2) + 2) * 255 / 4)
    assert codes.dtype == np.uint8 and codes.shape == (3, 128)
    # float32 network output: a value on a bin edge may land one code either side.
    assert np.abs(codes.astype(int) - expected).max() <= 1
    assert (codes.astype(int) == expected).mean() > 0.99
    silent = audio(examples.numpy(), has_audio=False)
    assert silent.shape == (3, 128) and np.all(silent == 127)
    floats = AudioFeatures(backbone)(examples.numpy(), has_audio=True)
    np.testing.assert_allclose(floats, raw, rtol=1e-6, atol=1e-6)
    assert not AudioFeatures(backbone)(examples.numpy(), has_audio=False).any()


def test_audio_stream_spec_records_what_fixes_the_values(random_weights, tmp_path):
    path, _ = random_weights
    backbone = create_audio_backbone("vggish", weights=path)
    np.savez(tmp_path / "pca.npz", pca_eigen_vectors=np.eye(128), pca_means=np.zeros(128))
    pca = load_vggish_pca(tmp_path / "pca.npz")
    spec = AudioFeatures(backbone, pca, quantize=True).stream_spec()
    assert (spec["dim"], spec["dtype"], spec["quantization"]["scheme"]) == (
        128,
        "uint8",
        "vggish_uint8",
    )
    front_end = spec["attrs"]["backbone"]["front_end"]
    assert (front_end["window_samples"], front_end["hop_samples"], front_end["mel_bands"]) == (
        400,
        160,
        64,
    )
    assert (front_end["mel_min_hz"], front_end["mel_max_hz"]) == (125.0, 7500.0)
    assert (
        spec["attrs"]["backbone"]["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    )
    assert spec["attrs"]["pca"]["sha256"] == pca.sha256
    with pytest.raises(ConfigError, match="audio-pca"):
        AudioFeatures(backbone, None, quantize=True)
