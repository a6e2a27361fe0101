"""``attention``: a bidirectional GRU encoder read by additive attention pooling.

This is the word-level half of hierarchical attention networks (Yang et al., 2016): each step's
state h_t is scored by u_t = tanh(W h_t + b) against a learned context vector u_w, and the video
vector is sum_t alpha_t h_t with alpha = softmax_t(u_t . u_w) over valid steps only. The
reduction is fixed to attention, so ``cfg.reduction`` is ignored; ``cfg.attention_size`` sets
the width of u_t.
"""

from __future__ import annotations

from heads.models.base import HEADS, HeadConfig
from heads.models.recurrent import RecurrentHead


class AttentionHead(RecurrentHead):
    """bigru encoder + additive attention pooling -> top block -> Linear."""

    def __init__(self, input_dim: int, num_classes: int, cfg: HeadConfig) -> None:
        super().__init__(
            input_dim, num_classes, cfg, cell="gru", bidirectional=True, reduction="attention"
        )


@HEADS.register("attention")
def attention(input_dim: int, num_classes: int, cfg: HeadConfig) -> AttentionHead:
    return AttentionHead(input_dim, num_classes, cfg)
