"""Single-frame networks of Karpathy et al. (2014) and Newman: ``late_fusion`` and ``frame``.

``late_fusion``: one shared single-frame tower (Linear -> ReLU) reads two frames
``cfg.frame_distance`` apart (Karpathy: 15); their outputs are concatenated and merged by the
first FC layer. Which two frames: the pair centred in the video, ``d = min(frame_distance,
T - 1)`` apart. A video of at most ``frame_distance`` frames therefore uses its first and last
frame, and a one-frame video its only frame twice.

``frame``: one classifier applied to every frame (Newman's frame-level model). It trains on
the frame-level loss, every valid frame labelled with its video's labels, and the video's
prediction is the mean of its frames' logits. The classifier is linear, so that mean equals
the classifier applied to the mean frame feature, which is how ``forward`` computes it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from heads.models.base import HEADS, Head, HeadConfig, lengths_to_mask
from vidfeat.errors import ConfigError


def fused_frames(lengths: Tensor, distance: int) -> tuple[Tensor, Tensor]:
    """(B,) lengths -> (B,) indices of the first and second frame late fusion reads."""
    gap = (lengths - 1).clamp(max=distance)
    first = (lengths - 1 - gap) // 2
    return first, first + gap


def _block(in_features: int, out_features: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_features, out_features), nn.ReLU(), nn.Dropout(dropout))


class LateFusionHead(Head):
    """tower(frame a), tower(frame b) -> concat -> FC (merge) -> top block -> classifier."""

    def __init__(self, input_dim: int, num_classes: int, cfg: HeadConfig) -> None:
        super().__init__(input_dim, num_classes, cfg)
        self.tower = nn.Sequential(nn.Linear(input_dim, cfg.hidden_size), nn.ReLU())
        self.merge = _block(2 * cfg.hidden_size, cfg.fc_size, cfg.dropout)
        self.top = _block(cfg.fc_size, cfg.fc_size, cfg.dropout)
        self.fc = self.make_classifier(cfg.fc_size, num_classes)

    def encode(self, x: Tensor, lengths: Tensor) -> Tensor:
        first, second = fused_frames(lengths, self.cfg.frame_distance)
        rows = torch.arange(x.shape[0], device=x.device)
        pair = torch.cat([self.tower(x[rows, first]), self.tower(x[rows, second])], dim=1)
        return self.merge(pair)  # (B, fc_size)


class FrameHead(Head):
    """Per-frame FC blocks -> linear classifier per frame; video logits = mean frame logits."""

    supports_per_frame = True
    order_invariant = True  # a mean over frames
    loss_per_frame = True  # every frame is a training example, as in Karpathy's single-frame model

    def __init__(self, input_dim: int, num_classes: int, cfg: HeadConfig) -> None:
        if cfg.classifier != "linear":
            # The mean of a non-linear classifier's outputs is not its output on the mean.
            raise ConfigError("the frame head needs classifier 'linear'")
        super().__init__(input_dim, num_classes, cfg)
        self.frames = nn.Sequential(
            _block(input_dim, cfg.fc_size, cfg.dropout), _block(cfg.fc_size, cfg.fc_size, 0.0)
        )
        self.top = nn.Identity()  # per-frame blocks sit in encode_frames, before the mean
        self.fc = self.make_classifier(cfg.fc_size, num_classes)

    @property
    def top_block(self) -> nn.Module:
        # The blocks run per frame (before the mean, hence not in ``top``); the last of them is
        # still the last block before the classifier, which ``finetune --train top`` retrains.
        return self.frames[-1]

    def encode_frames(self, x: Tensor, lengths: Tensor) -> Tensor:
        return self.frames(x)  # (B, T, fc_size)

    def encode(self, x: Tensor, lengths: Tensor) -> Tensor:
        mask = lengths_to_mask(lengths, x.shape[1]).unsqueeze(-1)
        h = torch.where(mask, self.frames(x), 0.0)
        # Summed in sorted order, so the mean is the same to the last bit in any frame order.
        total = torch.sort(h, dim=1).values.sum(dim=1)
        return total / lengths.to(h.dtype).unsqueeze(1)  # (B, fc_size)

    def training_losses(
        self,
        x: Tensor,
        lengths: Tensor,
        labels: Tensor,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
    ) -> tuple[Tensor, dict[str, Tensor]]:
        per_frame = self.forward_per_frame(x, lengths)  # (B, T, C), 0 on padding
        lengths = lengths.long()
        mask = lengths_to_mask(lengths, x.shape[1])
        frame_labels = labels.repeat_interleave(lengths, dim=0)  # row-major, as per_frame[mask]
        video_logits = per_frame.sum(dim=1) / lengths.to(per_frame.dtype).unsqueeze(1)
        loss = loss_fn(per_frame[mask], frame_labels)
        return video_logits, {"loss": loss, **self.pop_aux_losses()}


@HEADS.register("late_fusion")
def late_fusion(input_dim: int, num_classes: int, cfg: HeadConfig) -> LateFusionHead:
    return LateFusionHead(input_dim, num_classes, cfg)


@HEADS.register("frame")
def frame(input_dim: int, num_classes: int, cfg: HeadConfig) -> FrameHead:
    return FrameHead(input_dim, num_classes, cfg)
