"""Head contract: the shared config, the ``Head`` base module and padding-safe pooling helpers.

Every head maps zero-padded frame features ``x`` (B, T, D) and their true ``lengths`` (B,) to
class logits (B, C). Padding must never change an output, so every op over time either runs on
packed sequences or masks the padded steps out before it reduces.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor, nn

from heads.config import HeadConfig
from heads.errors import HeadInputError
from heads.validate import check_int
from vidfeat.errors import ConfigError
from vidfeat.registry import Registry


class L2Norm(nn.Module):
    """Each frame scaled to unit length over its features: YouTube-8M's starter code feeds
    every model ``tf.nn.l2_normalize`` of its input, x / sqrt(max(sum x^2, 1e-12)), which is
    x / max(|x|, 1e-6): the same floor here. A zero (padding) frame stays zero, also in
    float16, where a floor of 1e-12 would round to 0 and make it NaN."""

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.normalize(x, p=2.0, dim=-1, eps=1e-6)


_INPUT_NORMS: dict[str, Callable[[int], nn.Module]] = {
    "layer": nn.LayerNorm,
    "l2": lambda _dim: L2Norm(),
    "none": lambda _dim: nn.Identity(),
}


def input_norm_layer(kind: str, dim: int) -> nn.Module:
    """The per-frame normalisation ``HeadConfig.input_norm`` names, for ``dim`` features."""
    return _INPUT_NORMS[kind](dim)


# ---------------------------------------------------------------------------------------------
# Padding-safe reductions over time. h: (B, T, F); lengths: (B,) int64; mask: (B, T) bool.


def lengths_to_mask(lengths: Tensor, max_len: int) -> Tensor:
    """(B,) lengths -> (B, max_len) bool mask, True on valid steps."""
    steps = torch.arange(max_len, device=lengths.device)
    return steps.unsqueeze(0) < lengths.unsqueeze(1)


def masked_mean(h: Tensor, lengths: Tensor) -> Tensor:
    """(B, T, F) -> (B, F) mean over the valid steps only."""
    mask = lengths_to_mask(lengths, h.shape[1]).unsqueeze(-1)
    # where() rather than multiply, so non-finite junk in padding cannot leak in as NaN.
    total = torch.where(mask, h, 0.0).sum(dim=1)
    return total / lengths.to(h.dtype).unsqueeze(1)


def masked_max(h: Tensor, lengths: Tensor) -> Tensor:
    """(B, T, F) -> (B, F) element-wise max over the valid steps only."""
    mask = lengths_to_mask(lengths, h.shape[1]).unsqueeze(-1)
    return h.masked_fill(~mask, float("-inf")).amax(dim=1)


def linear_weights(lengths: Tensor, max_len: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """(B, max_len) weights t / T_b for steps t = 1..T_b of each video, 0 on padding."""
    steps = torch.arange(1, max_len + 1, device=lengths.device, dtype=dtype).unsqueeze(0)
    weights = steps / lengths.to(dtype).unsqueeze(1)
    return torch.where(lengths_to_mask(lengths, max_len), weights, 0.0)


def weighted_sum(h: Tensor, lengths: Tensor) -> Tensor:
    """(B, T, F) -> (B, F) sum of h_t weighted by t / T over each video's own valid steps.

    The last valid step has weight 1 and the first 1/T, so late frames count most. It is a sum,
    not a mean, so its scale grows like (T + 1) / 2.
    """
    mask = lengths_to_mask(lengths, h.shape[1]).unsqueeze(-1)
    h = torch.where(mask, h, 0.0)
    weights = linear_weights(lengths, h.shape[1], h.dtype).unsqueeze(-1)
    return (weights * h).sum(dim=1)


def last_valid(h: Tensor, lengths: Tensor) -> Tensor:
    """(B, T, F) -> (B, F) the state at each video's last valid step."""
    index = (lengths - 1).view(-1, 1, 1).expand(-1, 1, h.shape[2])
    return h.gather(1, index).squeeze(1)


class AdditiveAttentionPool(nn.Module):
    """Additive attention pooling (Yang et al. 2016) over the valid steps.

    u_t = tanh(W h_t + b), alpha_t = softmax_t(u_t . u_w) over valid t, output sum_t alpha_t h_t.
    """

    def __init__(self, dim: int, attention_size: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, attention_size)
        self.context = nn.Parameter(torch.randn(attention_size) / math.sqrt(attention_size))

    def weights(self, h: Tensor, lengths: Tensor) -> Tensor:
        """(B, T, F) -> (B, T) attention weights, summing to 1 over valid steps, 0 on padding."""
        mask = lengths_to_mask(lengths, h.shape[1])
        scores = torch.tanh(self.proj(h)) @ self.context
        return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=1)

    def forward(self, h: Tensor, lengths: Tensor) -> Tensor:
        mask = lengths_to_mask(lengths, h.shape[1]).unsqueeze(-1)
        h = torch.where(mask, h, 0.0)
        return (self.weights(h, lengths).unsqueeze(-1) * h).sum(dim=1)


# ---------------------------------------------------------------------------------------------
# Auxiliary losses: a layer that regularises itself (e.g. load balancing of experts) records
# its terms during a training forward pass; ``Head.training_losses`` collects them for the
# trainer, which adds them to the loss and logs each one apart. No special cases in the loop.


class AuxLossModule(nn.Module):
    """A layer that contributes named terms to the training loss and window statistics."""

    def __init__(self) -> None:
        super().__init__()
        self._aux_losses: dict[str, Tensor] = {}

    def set_aux_loss(self, name: str, value: Tensor) -> None:
        """Record ``value`` for this forward pass; it replaces the previous pass's value, so a
        forward pass whose losses nobody collects keeps no graph alive."""
        self._aux_losses[name] = value

    def pop_aux_losses(self) -> dict[str, Tensor]:
        out, self._aux_losses = self._aux_losses, {}
        return out

    def pop_stats(self) -> dict[str, float]:
        """Statistics gathered over the training steps since the last call (then reset)."""
        return {}


class Fusion(AuxLossModule):
    """Combines the streams of each frame: (B, T, sum of D_s) -> (B, T, ``out_dim``).

    ``dims`` maps each stream, in input order, to its width. This base is plain per-frame
    concatenation (the input passes unchanged); the other kinds live in heads/models/fusion.py.
    Fusion acts on each frame alone, so padded frames never reach a valid one.
    """

    # The HeadConfig fields of the "fusion_*" family this kind reads (unused_fusion_settings).
    settings: tuple[str, ...] = ()

    def __init__(self, dims: dict[str, int], cfg: HeadConfig) -> None:
        super().__init__()
        widths = list(dims.values())
        if not widths or any(
            isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in widths
        ):
            raise ConfigError(f"streams must map names to positive widths, got {dims!r}")
        self.dims = dict(dims)
        self.in_dim = sum(self.dims.values())
        self.out_dim = self.in_dim

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        return x


FUSION_LAYERS: Registry[Fusion] = Registry("fusion")
FUSION_LAYERS.register("concat")(Fusion)


def unused_fusion_settings(cfg: HeadConfig, fusion: Fusion) -> list[str]:
    """The fusion settings ``cfg`` sets away from their defaults that ``fusion`` never reads
    (--fusion-dim with concat, or with one stream): worth a word, not silence."""
    defaults = HeadConfig()
    return [
        name
        for name in ("fusion_dim", "fusion_weight")
        if name not in fusion.settings and getattr(cfg, name) != getattr(defaults, name)
    ]


CLASSIFIERS: Registry[nn.Module] = Registry("classifier")


@CLASSIFIERS.register("linear")
def linear_classifier(in_features: int, num_classes: int, cfg: HeadConfig) -> nn.Module:
    return nn.Linear(in_features, num_classes)


# ---------------------------------------------------------------------------------------------


def check_inputs(x: Tensor, lengths: Tensor, input_dim: int) -> Tensor:
    """Refuse inputs that break the head contract; return ``lengths`` as int64."""
    if x.dim() != 3 or not x.is_floating_point():
        raise HeadInputError(f"x must be a float (B, T, D) tensor, got {tuple(x.shape)} {x.dtype}")
    if x.shape[2] != input_dim:
        raise HeadInputError(f"x has feature dim {x.shape[2]}, head expects {input_dim}")
    bad_dtype = lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool
    if lengths.dim() != 1 or lengths.shape[0] != x.shape[0] or bad_dtype:
        raise HeadInputError(
            f"lengths must be an int (B,) tensor with B={x.shape[0]}, "
            f"got {tuple(lengths.shape)} {lengths.dtype}"
        )
    if x.shape[0] == 0:
        raise HeadInputError("empty batch")
    low, high = int(lengths.min()), int(lengths.max())
    if low < 1 or high > x.shape[1]:
        raise HeadInputError(f"lengths must be in 1..{x.shape[1]} (T), got {low}..{high}")
    return lengths.long()


class Head(nn.Module):
    """Base of every head: input checks, input norm, encode -> top block -> classifier.

    Subclasses build ``self.top`` (the last block before the classifier) and ``self.fc`` (the
    classifier) and implement ``encode`` (B, T, D) -> (B, F). ``top`` may be empty only for a
    head without hidden parameters (logistic, moe): ``finetune --train top`` retrains ``top``
    and the classifier, so parameters kept elsewhere would stay frozen
    (``tests/heads/test_transfer.py`` checks it for every head). Heads with a per-step encoder
    also implement ``encode_frames`` (B, T, D) -> (B, T, F) and set ``supports_per_frame``.
    """

    supports_per_frame: ClassVar[bool] = False
    # True when the head provably ignores frame order (it pools frames first).
    order_invariant: ClassVar[bool] = False
    # True when the head's first step is the mean of the frames, so one video-level vector (a
    # video-level store, read as a one-frame video) is exactly the input it was made for.
    video_level: ClassVar[bool] = False
    # True when the training loss is a mean over frames, not videos: under DDP the ranks'
    # slices are then weighted by their frames (heads.distributed.loss_scale).
    loss_per_frame: ClassVar[bool] = False

    def __init__(self, input_dim: int, num_classes: int, cfg: HeadConfig) -> None:
        super().__init__()
        check_int("input_dim", input_dim, low=1)
        check_int("num_classes", num_classes, low=1)
        if not isinstance(cfg, HeadConfig):
            raise ConfigError(f"cfg must be a HeadConfig, got {type(cfg).__name__}")
        self.input_dim = input_dim
        self.num_classes = num_classes
        self.cfg = cfg
        # Replaced by create_head when the input holds several streams (``set_fusion``).
        self.fusion: Fusion = Fusion({"input": input_dim}, cfg)
        # Per-frame, so it cannot mix padding into valid steps. It puts raw CNN features
        # (non-negative, mean ~0.4) and unit-scale features on the same footing.
        self.input_norm = input_norm_layer(cfg.input_norm, input_dim)
        # Subclasses assign these last, so module (and state_dict) order ends with top -> fc.
        self.top: nn.Module
        self.fc: nn.Module

    @property
    def classifier(self) -> nn.Module:
        """The final layer producing logits; has ``in_features`` and ``out_features``."""
        return self.fc

    @property
    def top_block(self) -> nn.Module:
        """The last block before the classifier (an empty module for linear heads)."""
        return self.top

    def make_classifier(self, in_features: int, num_classes: int) -> nn.Module:
        """Build a fresh classifier of kind ``cfg.classifier`` (Linear by default)."""
        return CLASSIFIERS.create(
            self.cfg.classifier, in_features=in_features, num_classes=num_classes, cfg=self.cfg
        )

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier by a freshly initialised one for ``num_classes`` classes."""
        check_int("num_classes", num_classes, low=1)
        old = self.fc
        ref = next(old.parameters())
        self.fc = self.make_classifier(old.in_features, num_classes).to(ref.device, ref.dtype)
        self.num_classes = num_classes

    def encode(self, x: Tensor, lengths: Tensor) -> Tensor:
        """(B, T, D) normalised frames -> (B, F) video-level features."""
        raise NotImplementedError

    def encode_frames(self, x: Tensor, lengths: Tensor) -> Tensor:
        """(B, T, D) normalised frames -> (B, T, F) per-step features."""
        raise NotImplementedError

    def set_fusion(self, fusion: Fusion) -> None:
        """Read ``fusion.in_dim``-wide frames through ``fusion``; the head was built for its
        ``out_dim``."""
        if fusion.out_dim != self.fusion.out_dim:
            raise ConfigError(
                f"fusion gives {fusion.out_dim} features per frame, "
                f"the head reads {self.fusion.out_dim}"
            )
        self.fusion = fusion
        self.input_dim = fusion.in_dim

    def prepare(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Check the contract, fuse the streams and normalise: -> ((B, T, F) frames, lengths)."""
        lengths = check_inputs(x, lengths, self.input_dim)
        return self.input_norm(self.fusion(x, lengths)), lengths

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        """x (B, T, D) zero-padded, lengths (B,) -> (B, C) logits."""
        x, lengths = self.prepare(x, lengths)
        return self.fc(self.top(self.encode(x, lengths)))

    def training_losses(
        self,
        x: Tensor,
        lengths: Tensor,
        labels: Tensor,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """One training forward pass -> (B, C) logits and named loss terms to add up.

        ``loss`` is the classification loss; every other key is an auxiliary term recorded by
        a layer of the head (``AuxLossModule``). Heads trained on another target (per-frame
        labels) override this.
        """
        logits = self(x, lengths)
        return logits, {"loss": loss_fn(logits, labels), **self.pop_aux_losses()}

    def pop_aux_losses(self) -> dict[str, Tensor]:
        """The auxiliary terms of the last forward pass, summed by name over the layers."""
        out: dict[str, Tensor] = {}
        for module in self.modules():
            if isinstance(module, AuxLossModule):
                for key, value in module.pop_aux_losses().items():
                    out[key] = out[key] + value if key in out else value
        return out

    def pop_stats(self) -> dict[str, float]:
        """Statistics of the layers over the training steps since the last call."""
        out: dict[str, float] = {}
        for module in self.modules():
            if isinstance(module, AuxLossModule):
                out.update(module.pop_stats())
        return out

    @property
    def supports_attention(self) -> bool:
        """True when the head pools its steps with attention (``attention_weights`` works)."""
        return False

    def attention_weights(self, x: Tensor, lengths: Tensor) -> Tensor:
        """(B, T, D), (B,) -> (B, T) attention over steps (0 on padding), for inspection."""
        raise HeadInputError(f"{type(self).__name__} has no attention weights")

    def forward_per_frame(self, x: Tensor, lengths: Tensor) -> Tensor:
        """x (B, T, D), lengths (B,) -> (B, T, C) logits at every step; 0 on padded steps."""
        if not self.supports_per_frame:
            raise HeadInputError(f"{type(self).__name__} has no per-frame outputs")
        frames, lengths = self.prepare(x, lengths)
        logits = self.fc(self.top(self.encode_frames(frames, lengths)))
        mask = lengths_to_mask(lengths, x.shape[1]).unsqueeze(-1)
        return torch.where(mask, logits, 0.0)


HEADS: Registry[Head] = Registry("head")


def create_head(
    name: str,
    *,
    input_dim: int,
    num_classes: int,
    cfg: HeadConfig | None = None,
    streams: dict[str, int] | None = None,
) -> Head:
    """Build the registered head ``name`` for D-dim frame features and C classes.

    ``streams`` (name -> width, in input order, widths summing to D) says how each frame is made
    of streams; ``cfg.fusion`` combines them before the head proper. None: one stream.
    """
    cfg = cfg if cfg is not None else HeadConfig()
    dims = dict(streams) if streams else {"input": input_dim}
    if sum(dims.values()) != input_dim:
        raise ConfigError(f"streams {dims} do not add up to the input width {input_dim}")
    fusion = FUSION_LAYERS.create(cfg.fusion, dims=dims, cfg=cfg)
    head = HEADS.create(name, input_dim=fusion.out_dim, num_classes=num_classes, cfg=cfg)
    head.set_fusion(fusion)
    return head
