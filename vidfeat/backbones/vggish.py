"""VGGish: AudioSet's VGG-like network from (96, 64) log-mel examples to 128-d embeddings.

Read top to bottom: the model, then the registered constructor (weight files are read in
``vggish_weights``). Layer names follow the published PyTorch port (torchvggish,
``vggish-10086976.pth``: ``features.{0,3,6,8,11,13}`` convolutions and
``embeddings.{0,2,4}`` linear layers), so its state dict loads as is.

The network is Google's TF-Slim definition: 3x3 convolutions (stride 1, SAME) with ReLU,
2x2 max-pools (stride 2), conv 64 / 128 / 256x2 / 512x2, flatten in TF's (H, W, C) order,
fc 4096x2 with ReLU, then the 128-d embedding *without* a final ReLU (Google's current
reference; the PyTorch port adds one, so its outputs equal ours clipped at 0).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from vidfeat.audio.mel import VGGISH_LOG_MEL
from vidfeat.backbones._module import ExamplesBackbone, resolve_dtype
from vidfeat.backbones.audio import AUDIO_BACKBONES, AudioBackboneSpec
from vidfeat.device import resolve_device

logger = logging.getLogger(__name__)

EMBEDDING_DIM = 128
_CONV_PLAN = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M")


class VGGish(nn.Module):
    """(N, 96, 64) log-mel examples -> (N, 128) pre-activation embeddings."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for step in _CONV_PLAN:
            if step == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, int(step), 3, padding=1), nn.ReLU(inplace=True)]
                channels = int(step)
        self.features = nn.Sequential(*layers)
        self.embeddings = nn.Sequential(
            nn.Linear(512 * 6 * 4, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, EMBEDDING_DIM),
        )

    def forward(self, examples: torch.Tensor) -> torch.Tensor:
        x = self.features(examples.unsqueeze(1))  # (N, 512, 6, 4)
        # TF flattens NHWC: the fc1 weights expect (H, W, C) order.
        x = x.permute(0, 2, 3, 1).flatten(1)
        return self.embeddings(x)


# ---- registered constructor ----------------------------------------------------------------------


@AUDIO_BACKBONES.register("vggish")
def vggish(
    weights: str | None = None, device: str = "cpu", precision: str = "fp32"
) -> ExamplesBackbone:
    """VGGish 128-d embeddings. ``weights``: a vggish-10086976.pth-style state dict or a
    converted TF checkpoint (.npz/.pth keyed ``vggish/conv1/weights``, ...); required."""
    from vidfeat.backbones.vggish_weights import load_vggish_weights

    resolved = resolve_device(device)
    resolve_dtype(precision, resolved)  # fail before the weight load
    with torch.device("meta"):  # shapes only: every value comes from the weight file
        module = VGGish()
    weights_id, sha256 = load_vggish_weights(weights, module)
    spec = AudioBackboneSpec(
        name="vggish",
        feature_dim=EMBEDDING_DIM,
        front_end=VGGISH_LOG_MEL,
        weights_id=weights_id,
        weights_sha256=sha256,
    )
    logger.info("vggish weights %s (sha256 %s)", spec.weights_id, spec.weights_sha256[:12])
    return ExamplesBackbone(spec, module, resolved, precision)
