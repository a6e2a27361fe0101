"""VGGish as a registered audio backbone with random weights in the published key layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vidfeat.audio import log_mel_examples
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
