"""InceptionV3 as in TF's "inception-2015-12-05" graph (YouTube-8M's frame features).

Read top to bottom: blocks, the model, then the registered constructor (weight sources live
in ``inception_v3_weights``).

The port mirrors the TF graph, which differs from torchvision's ``Inception3`` in a few places:
batch norm has no scale (gamma) and eps 1e-3, the 3x3 average pools inside the mixed blocks
exclude padding from the mean (TF "SAME" pooling), and the last block's pool branch is a max
pool. Module names follow the TF graph (``mixed_4.tower_1.conv_2``), so weights map 1:1.
Input: (N, 3, 299, 299) already resized and scaled to (x - 128) / 128. Output: pool_3, (N, 2048).
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from vidfeat.backbones._module import ModuleBackbone
from vidfeat.backbones.base import BACKBONES, BackboneSpec
from vidfeat.backbones.inception_v3_weights import WEIGHT_SOURCES, LoadedWeights, load_from_path
from vidfeat.backbones.runtimes import DEFAULT_RUNTIME, check_runtime
from vidfeat.device import resolve_device

logger = logging.getLogger(__name__)

FEATURE_DIM = 2048
INPUT_SIZE = 299
DEFAULT_WEIGHTS = "yt8m"
BN_EPS = 1e-3  # TF's batch-norm epsilon in this graph

# ---- blocks --------------------------------------------------------------------------------------


class ConvBN(nn.Module):
    """conv (no bias) -> batch norm with beta only (TF's scale=False) -> relu."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int | tuple[int, int],
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
    ) -> None:
        super().__init__()
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        self.stride = stride
        self.padding = padding
        self.weight = nn.Parameter(torch.empty(out_ch, in_ch, kh, kw))
        self.beta = nn.Parameter(torch.zeros(out_ch))
        self.register_buffer("mean", torch.zeros(out_ch))
        self.register_buffer("var", torch.ones(out_ch))
        nn.init.kaiming_normal_(self.weight, nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight, None, self.stride, self.padding)
        x = F.batch_norm(x, self.mean, self.var, None, self.beta, False, 0.0, BN_EPS)
        return F.relu(x, inplace=True)

    def fold_batch_norm(self) -> ConvReLU:
        """The same function with the batch norm folded into the convolution (eval mode only).

        y = (conv(x, w) - mean) / sqrt(var + eps) + beta = conv(x, w * s) + (beta - mean * s),
        with s = 1 / sqrt(var + eps) per output channel: exact up to float rounding.
        """
        scale = torch.rsqrt(self.var.double() + BN_EPS)  # float64 so folding adds no error
        weight = (self.weight.double() * scale.view(-1, 1, 1, 1)).float()
        bias = (self.beta.double() - self.mean.double() * scale).float()
        return ConvReLU(weight, bias, self.stride, self.padding)


class ConvReLU(nn.Module):
    """conv (with bias) -> relu: a ``ConvBN`` after ``fold_batch_norm``."""

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor,
        stride: int,
        padding: int | tuple[int, int],
    ) -> None:
        super().__init__()
        self.stride = stride
        self.padding = padding
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(F.conv2d(x, self.weight, self.bias, self.stride, self.padding), inplace=True)


def _avg_pool_3x3(x: torch.Tensor) -> torch.Tensor:
    # TF "SAME" average pooling divides by the number of real (unpadded) inputs.
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


def _max_pool_3x3(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, 3, stride=1, padding=1)


def _max_pool_3x3_s2(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, 3, stride=2)


def _tower(*layers: ConvBN) -> nn.Sequential:
    """A branch named like TF's scopes: conv, conv_1, conv_2, ..."""
    names = ["conv"] + [f"conv_{i}" for i in range(1, len(layers))]
    return nn.Sequential(OrderedDict(zip(names, layers, strict=True)))


def _factorised_7x7(in_ch: int, mid_ch: int, out_ch: int, first: str) -> list[ConvBN]:
    """A 1x7 and a 7x1 convolution, ``first`` ("1x7" or "7x1") first."""
    row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))
    (k1, p1), (k2, p2) = (row, col) if first == "1x7" else (col, row)
    return [ConvBN(in_ch, mid_ch, k1, padding=p1), ConvBN(mid_ch, out_ch, k2, padding=p2)]


class InceptionA(nn.Module):
    """35x35 block ("mixed", "mixed_1", "mixed_2")."""

    def __init__(self, in_ch: int, pool_ch: int) -> None:
        super().__init__()
        self.conv = ConvBN(in_ch, 64, 1)
        self.tower = _tower(ConvBN(in_ch, 48, 1), ConvBN(48, 64, 5, padding=2))
        self.tower_1 = _tower(
            ConvBN(in_ch, 64, 1), ConvBN(64, 96, 3, padding=1), ConvBN(96, 96, 3, padding=1)
        )
        self.tower_2 = _tower(ConvBN(in_ch, pool_ch, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.tower_2(_avg_pool_3x3(x))
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), pooled], 1)


class InceptionB(nn.Module):
    """35x35 -> 17x17 reduction ("mixed_3")."""

    def __init__(self, in_ch: int) -> None:
        super().__init__()
        self.conv = ConvBN(in_ch, 384, 3, stride=2)
        self.tower = _tower(
            ConvBN(in_ch, 64, 1), ConvBN(64, 96, 3, padding=1), ConvBN(96, 96, 3, stride=2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), _max_pool_3x3_s2(x)], 1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions ("mixed_4" .. "mixed_7")."""

    def __init__(self, in_ch: int, mid_ch: int) -> None:
        super().__init__()
        self.conv = ConvBN(in_ch, 192, 1)
        self.tower = _tower(ConvBN(in_ch, mid_ch, 1), *_factorised_7x7(mid_ch, mid_ch, 192, "1x7"))
        self.tower_1 = _tower(
            ConvBN(in_ch, mid_ch, 1),
            *_factorised_7x7(mid_ch, mid_ch, mid_ch, "7x1"),
            *_factorised_7x7(mid_ch, mid_ch, 192, "7x1"),
        )
        self.tower_2 = _tower(ConvBN(in_ch, 192, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.tower_2(_avg_pool_3x3(x))
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), pooled], 1)


class InceptionD(nn.Module):
    """17x17 -> 8x8 reduction ("mixed_8")."""

    def __init__(self, in_ch: int) -> None:
        super().__init__()
        self.tower = _tower(ConvBN(in_ch, 192, 1), ConvBN(192, 320, 3, stride=2))
        self.tower_1 = _tower(
            ConvBN(in_ch, 192, 1),
            *_factorised_7x7(192, 192, 192, "1x7"),
            ConvBN(192, 192, 3, stride=2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.tower(x), self.tower_1(x), _max_pool_3x3_s2(x)], 1)


# The pool branch of the 8x8 blocks: the 2015 graph max-pools in its last block, where
# torchvision's Inception3 averages.
_E_POOLS = {"avg": _avg_pool_3x3, "max": _max_pool_3x3}


class InceptionE(nn.Module):
    """8x8 block with split 1x3/3x1 branches ("mixed_9" avg-pools, "mixed_10" max-pools)."""

    def __init__(self, in_ch: int, pool: str) -> None:
        super().__init__()
        self.conv = ConvBN(in_ch, 320, 1)
        self.tower_conv = ConvBN(in_ch, 384, 1)
        self.tower_mixed_conv = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.tower_mixed_conv_1 = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.tower_1_conv = ConvBN(in_ch, 448, 1)
        self.tower_1_conv_1 = ConvBN(448, 384, 3, padding=1)
        self.tower_1_mixed_conv = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.tower_1_mixed_conv_1 = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.tower_2_conv = ConvBN(in_ch, 192, 1)
        self.pool = _E_POOLS[pool]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.tower_conv(x)
        b = self.tower_1_conv_1(self.tower_1_conv(x))
        branches = [
            self.conv(x),
            self.tower_mixed_conv(a),
            self.tower_mixed_conv_1(a),
            self.tower_1_mixed_conv(b),
            self.tower_1_mixed_conv_1(b),
            self.tower_2_conv(self.pool(x)),
        ]
        return torch.cat(branches, 1)


# ---- model ---------------------------------------------------------------------------------------


_MIXED_BLOCKS = ("mixed", *(f"mixed_{i}" for i in range(1, 11)))


class InceptionV3TF(nn.Module):
    """The 2015 TF InceptionV3 up to pool_3: (N, 3, 299, 299) in (x-128)/128 -> (N, 2048)."""

    # The mixed precision (runtimes.mixed) runs this child and every later one in bf16. Rounded
    # one block at a time on real frames, the stem convs and the first 35x35 block each move
    # the features 0.006-0.012 alone, the later blocks 0.002-0.004; with the stem and "mixed"
    # in fp32 the whole moves 0.0075, inside the 0.01 a default may move.
    BF16_FROM = "mixed_1"

    def __init__(self) -> None:
        super().__init__()
        self.conv = ConvBN(3, 32, 3, stride=2)
        self.conv_1 = ConvBN(32, 32, 3)
        self.conv_2 = ConvBN(32, 64, 3, padding=1)
        self.conv_3 = ConvBN(64, 80, 1)
        self.conv_4 = ConvBN(80, 192, 3)
        self.mixed = InceptionA(192, 32)
        self.mixed_1 = InceptionA(256, 64)
        self.mixed_2 = InceptionA(288, 64)
        self.mixed_3 = InceptionB(288)
        self.mixed_4 = InceptionC(768, 128)
        self.mixed_5 = InceptionC(768, 160)
        self.mixed_6 = InceptionC(768, 160)
        self.mixed_7 = InceptionC(768, 192)
        self.mixed_8 = InceptionD(768)
        self.mixed_9 = InceptionE(1280, pool="avg")
        self.mixed_10 = InceptionE(2048, pool="max")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_2(self.conv_1(self.conv(x)))  # (N, 64, 147, 147)
        x = self.conv_4(self.conv_3(_max_pool_3x3_s2(x)))  # (N, 192, 71, 71)
        x = _max_pool_3x3_s2(x)  # (N, 192, 35, 35)
        for name in _MIXED_BLOCKS:
            x = getattr(self, name)(x)  # ends at (N, 2048, 8, 8)
        # pool_3: an 8x8 average over the whole 8x8 map (no padding), as in the graph.
        return F.avg_pool2d(x, 8).flatten(1)


# ---- registered constructor ----------------------------------------------------------------------


def _load_weights(weights: str) -> LoadedWeights:
    if weights in WEIGHT_SOURCES:
        return WEIGHT_SOURCES.create(weights, build_native=InceptionV3TF)
    return load_from_path(weights, InceptionV3TF())


@BACKBONES.register("inception_v3")
def inception_v3(
    weights: str = DEFAULT_WEIGHTS,
    device: str = "cpu",
    precision: str = "fp32",
    runtime: str = DEFAULT_RUNTIME,
) -> ModuleBackbone:
    """InceptionV3 pool_3 (2048-d). ``weights``: "yt8m" (default), "imagenet", or a file path."""
    resolved = resolve_device(device)
    check_runtime(runtime, resolved.type, precision)  # fail before the (slow) weight load
    loaded = _load_weights(weights)
    spec = BackboneSpec(
        name="inception_v3",
        feature_dim=FEATURE_DIM,
        input_size=INPUT_SIZE,
        resize=loaded.resize,
        mean=loaded.mean,
        std=loaded.std,
        weights_id=loaded.weights_id,
        weights_sha256=loaded.sha256,
    )
    logger.info("inception_v3 weights %s (sha256 %s)", spec.weights_id, spec.weights_sha256[:12])
    return ModuleBackbone(spec, loaded.module, resolved, precision, runtime)
