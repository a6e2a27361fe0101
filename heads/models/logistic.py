"""``logistic``: a linear classifier on the video-level mean feature (YouTube-8M baseline)."""

from __future__ import annotations

from torch import Tensor, nn

from heads.models.base import HEADS, Head, HeadConfig, masked_mean


class LogisticHead(Head):
    """Masked mean over valid frames -> Linear. Order-blind by construction."""

    order_invariant = True  # pools frames before anything else sees them
    video_level = True  # the mean of a video's frames is its video-level vector

    def __init__(self, input_dim: int, num_classes: int, cfg: HeadConfig) -> None:
        super().__init__(input_dim, num_classes, cfg)
        self.top = nn.Identity()  # no hidden block: fine-tuning "top" trains the classifier only
        self.fc = self.make_classifier(input_dim, num_classes)

    def encode(self, x: Tensor, lengths: Tensor) -> Tensor:
        return masked_mean(x, lengths)  # (B, D)


@HEADS.register("logistic")
def logistic(input_dim: int, num_classes: int, cfg: HeadConfig) -> LogisticHead:
    return LogisticHead(input_dim, num_classes, cfg)
