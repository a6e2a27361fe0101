"""Where VGGish weights come from: a file, never a download.

Two layouts are read:

- the PyTorch port's state dict (``vggish-10086976.pth``): keys ``features.N.weight`` /
  ``embeddings.N.weight`` in torch layout;
- a converted TF-Slim checkpoint (``vggish_model.ckpt``'s variables saved to ``.npz`` or
  ``.pth``): keys ``vggish/conv1/weights`` ... ``vggish/fc2/biases`` in TF layout
  (convolutions HWIO, fully connected (in, out)), transposed here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vidfeat.backbones.inception_v3_weights import file_sha256, load_state_dict_strict
from vidfeat.errors import WeightsError

PORT_FILE = "vggish-10086976.pth"
PORT_URL = "https://github.com/harritaylor/torchvggish/releases/download/v0.1/" + PORT_FILE
TF_CHECKPOINT_URL = "https://storage.googleapis.com/audioset/vggish_model.ckpt"

# TF-Slim scope -> our module prefix.
TF_SCOPES = {
    "conv1": "features.0",
    "conv2": "features.3",
    "conv3/conv3_1": "features.6",
    "conv3/conv3_2": "features.8",
    "conv4/conv4_1": "features.11",
    "conv4/conv4_2": "features.13",
    "fc1/fc1_1": "embeddings.0",
    "fc1/fc1_2": "embeddings.2",
    "fc2": "embeddings.4",
}


def missing_weights_error(path: str | None) -> WeightsError:
    where = f"{path!r} is not a file" if path else "no VGGish weights were given"
    return WeightsError(
        f"{where}: pass --audio-weights PATH to {PORT_FILE} (the PyTorch port, {PORT_URL}) or "
        f"to Google's TF checkpoint vggish_model.ckpt ({TF_CHECKPOINT_URL}) converted to .npz "
        "with its variable names; weights are never downloaded"
    )


def _read(path: Path) -> Mapping[str, object]:
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                return {k: torch.from_numpy(np.array(npz[k])) for k in npz.files}
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for a corrupt / foreign file
        raise WeightsError(f"could not read VGGish weights {path}: {exc}") from exc
    if not isinstance(state, Mapping):
        raise WeightsError(f"{path} holds a {type(state).__name__}, not a state dict")
    return state


def from_tf_names(state: Mapping[str, object]) -> dict[str, object]:
    """TF-Slim variables (``vggish/<scope>/weights|biases``) -> our keys and torch layout."""
    out: dict[str, object] = {}
    for key, value in state.items():
        name = key.removesuffix(":0").removeprefix("vggish/")
        scope, _, kind = name.rpartition("/")
        if scope not in TF_SCOPES or kind not in ("weights", "biases"):
            out[key] = value  # left for the strict loader to report
            continue
        tensor = torch.as_tensor(value, dtype=torch.float32)
        if kind == "weights":
            # HWIO -> OIHW for convolutions, (in, out) -> (out, in) for linear layers.
            tensor = tensor.permute(3, 2, 0, 1) if tensor.ndim == 4 else tensor.t()
        out[f"{TF_SCOPES[scope]}.{'weight' if kind == 'weights' else 'bias'}"] = tensor.contiguous()
    return out


def load_vggish_weights(path: str | os.PathLike[str] | None, module: nn.Module) -> tuple[str, str]:
    """Load a weight file into ``module``; returns (weights_id, sha256 of the file).

    The file's tensors are assigned, not copied, so ``module`` may be built on the meta device
    (no random initialisation of ~70M parameters that would be overwritten at once)."""
    if path is None or not Path(path).is_file():
        raise missing_weights_error(None if path is None else os.fspath(path))
    file = Path(path)
    state = _read(file)
    tf_layout = any(str(k).startswith("vggish/") for k in state)
    if tf_layout:
        state = from_tf_names(state)
    load_state_dict_strict(
        module, state, f"weights file {file}", architecture="vggish", assign=True
    )
    layout = "tf" if tf_layout else "torch"
    return f"file:{file.name}:{layout}", file_sha256(file)
