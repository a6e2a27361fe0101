"""``bof``: bag of frames. Order-blind pooling over valid frames, then two FC blocks.

Pooling (max or mean, ``cfg.pooling``) forgets the order of frames, so this head is the
baseline that shows how much the recurrent heads gain from temporal order.
"""

from __future__ import annotations

from torch import Tensor, nn

from heads.models.base import HEADS, Head, HeadConfig, masked_max, masked_mean

_POOLS = {"max": masked_max, "mean": masked_mean}


def fc_block(in_features: int, out_features: int, dropout: float) -> nn.Sequential:
    """FC -> BatchNorm -> ReLU -> dropout. BatchNorm needs batches of >= 2 videos in training."""
    return nn.Sequential(
        nn.Linear(in_features, out_features, bias=False),  # BatchNorm supplies the bias
        nn.BatchNorm1d(out_features),
        nn.ReLU(),
        nn.Dropout(dropout),
    )


class BagOfFramesHead(Head):
    """pool(valid frames) -> fc_block -> fc_block (top block) -> Linear."""

    order_invariant = True  # pools frames before anything else sees them

    def __init__(self, input_dim: int, num_classes: int, cfg: HeadConfig) -> None:
        super().__init__(input_dim, num_classes, cfg)
        self.pool = _POOLS[cfg.pooling]
        self.block1 = fc_block(input_dim, cfg.fc_size, cfg.dropout)
        self.top = fc_block(cfg.fc_size, cfg.fc_size, cfg.dropout)
        self.fc = self.make_classifier(cfg.fc_size, num_classes)

    def encode(self, x: Tensor, lengths: Tensor) -> Tensor:
        return self.block1(self.pool(x, lengths))  # (B, fc_size)


@HEADS.register("bof")
def bof(input_dim: int, num_classes: int, cfg: HeadConfig) -> BagOfFramesHead:
    return BagOfFramesHead(input_dim, num_classes, cfg)
