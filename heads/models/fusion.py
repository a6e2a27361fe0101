"""Fusion of feature streams (Zhao, Deep Multimodal Learning): ``shared`` and ``projection``.

Plain per-frame concatenation (``concat``, his best) is the base ``Fusion`` in base.py. The two
others give each stream its own learned matrix; see docs/fusion.md for what the paper leaves
open and what is chosen here:

* ``shared``: x_m = tanh(sum_s W_s n_s(x_s) + b), one ``fusion_dim`` space for all streams
  (his f(x1, ..., xn), a learned joint layer);
* ``projection``: p_s = W_s n_s(x_s) + b_s, each ``fusion_dim`` wide; the head reads
  [p_1; ...; p_n], and training adds ``fusion_weight`` times the mean squared distance between
  the L2-normalised projections of the same frame, over every pair of streams (his
  f(x1) ~ g(x2)).

n_s is the stream's own ``input_norm`` (LayerNorm by default), so a 1024-d stream does not
drown a 128-d one by scale alone. Matrices start from N(0, 0.01) (standard deviation 0.01),
biases at 0.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heads.models.base import (
    FUSION_LAYERS,
    Fusion,
    HeadConfig,
    input_norm_layer,
    lengths_to_mask,
)
from vidfeat.errors import ConfigError

INIT_STD = 0.01  # Zhao: fusion matrices start from N(0, 0.01)


def _matrix(in_features: int, out_features: int, bias: bool) -> nn.Linear:
    layer = nn.Linear(in_features, out_features, bias=bias)
    nn.init.normal_(layer.weight, mean=0.0, std=INIT_STD)
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


class StreamMaps(Fusion):
    """Base of the fusions that map each stream by its own matrix into ``fusion_dim``."""

    kind = ""

    def __init__(self, dims: dict[str, int], cfg: HeadConfig, *, bias: bool) -> None:
        super().__init__(dims, cfg)
        if len(self.dims) < 2:
            raise ConfigError(
                f"--fusion {self.kind} combines two or more streams; the input has one "
                f"({', '.join(self.dims)}): read more streams or use --fusion concat"
            )
        widths = list(self.dims.values())
        self.norms = nn.ModuleList(input_norm_layer(cfg.input_norm, d) for d in widths)
        self.maps = nn.ModuleList(_matrix(d, cfg.fusion_dim, bias) for d in widths)

    def mapped(self, x: Tensor) -> list[Tensor]:
        """(B, T, sum D_s) -> one (B, T, fusion_dim) tensor per stream: W_s n_s(x_s)."""
        parts = torch.split(x, list(self.dims.values()), dim=-1)
        return [w(norm(p)) for w, norm, p in zip(self.maps, self.norms, parts, strict=True)]

    def extra_repr(self) -> str:
        return f"streams={self.dims}, out_dim={self.out_dim}"


@FUSION_LAYERS.register("shared")
class SharedFusion(StreamMaps):
    """tanh(sum_s W_s n_s(x_s) + b): every stream in one ``fusion_dim`` space."""

    kind = "shared"
    settings = ("fusion_dim",)

    def __init__(self, dims: dict[str, int], cfg: HeadConfig) -> None:
        super().__init__(dims, cfg, bias=False)  # one bias for the sum, not one per stream
        self.bias = nn.Parameter(torch.zeros(cfg.fusion_dim))
        self.out_dim = cfg.fusion_dim

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        return torch.tanh(torch.stack(self.mapped(x)).sum(dim=0) + self.bias)


@FUSION_LAYERS.register("projection")
class ProjectionFusion(StreamMaps):
    """[p_1; ...; p_n] with p_s = W_s n_s(x_s) + b_s; training adds ``fusion_l2``, weighted by
    ``fusion_weight``, pulling the projections of each frame together."""

    kind = "projection"
    settings = ("fusion_dim", "fusion_weight")

    def __init__(self, dims: dict[str, int], cfg: HeadConfig) -> None:
        super().__init__(dims, cfg, bias=True)
        self.weight = cfg.fusion_weight
        self.out_dim = cfg.fusion_dim * len(self.dims)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        projections = self.mapped(x)
        if self.training and self.weight > 0:
            self.set_aux_loss("fusion_l2", self.weight * self.distance(projections, lengths))
        return torch.cat(projections, dim=-1)

    @staticmethod
    def distance(projections: list[Tensor], lengths: Tensor) -> Tensor:
        """Mean over videos of the mean over its valid frames and the stream pairs of
        ||p_i/|p_i| - p_j/|p_j|||^2 (in [0, 4]).

        Normalised, because plain L2 is minimised by shrinking every projection to 0, which a
        following LayerNorm undoes: the term would constrain nothing. Per video, as the
        classification loss is: every video weighs the same whatever its length, which is also
        what makes N torchrun ranks add up to one process (they weigh their slices by videos)."""
        units = [F.normalize(p, dim=-1) for p in projections]
        pairs = [((a - b) ** 2).sum(dim=-1) for a, b in itertools.combinations(units, 2)]
        per_frame = torch.stack(pairs).mean(dim=0)  # (B, T)
        mask = lengths_to_mask(lengths, per_frame.shape[1])
        # where(), not a product: NaN in padded frames must not leak into the sum.
        per_video = torch.where(mask, per_frame, 0.0).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        return per_video.mean()
