"""What training minimises, and with what: the loss, its class weights, the optimizer."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heads.config import SGD_MOMENTUM, TrainConfig
from heads.labels import MultiHot


class Loss:
    """Softmax cross-entropy (one label per video) or per-class sigmoid BCE (multi-label).

    ``weight`` (C,) scales every term of a class; ``pos_weight`` (C,) only its positive term,
    so it makes a false negative of that class cost more. Softmax cross-entropy has only the
    positive term, so there both act alike.
    """

    def __init__(
        self, multilabel: bool, weight: Tensor | None = None, pos_weight: Tensor | None = None
    ) -> None:
        self.multilabel = multilabel
        self.weight = weight  # (C,) or None
        self.pos_weight = pos_weight  # (C,) or None

    def __call__(self, logits: Tensor, labels: Tensor) -> Tensor:
        weight = None if self.weight is None else self.weight.to(logits.device)
        pos = None if self.pos_weight is None else self.pos_weight.to(logits.device)
        if self.multilabel:
            loss = F.binary_cross_entropy_with_logits(
                logits, labels, reduction="none", pos_weight=pos
            )
            return (loss * weight).mean() if weight is not None else loss.mean()
        if pos is not None:
            weight = pos if weight is None else weight * pos
        # Probability targets: exactly one-hot for single-label data, and a forced "single"
        # loss on multi-label data spreads the mass over a video's labels instead of failing.
        target = labels / labels.sum(dim=1, keepdim=True).clamp_min(1.0)
        return F.cross_entropy(logits, target, weight=weight)

    def probabilities(self, logits: Tensor) -> Tensor:
        return torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=1)

    def ranking_scores(self, logits: Tensor) -> Tensor:
        """Scores that rank (video, class) pairs, across videos too, as the exact probabilities
        do: the logits under sigmoid, the log-probabilities under softmax. Float32
        probabilities saturate (sigmoid is exactly 1.0 above a logit of about 17, softmax 0.0
        far below the best class), and the ties they make would be broken by class index."""
        return logits if self.multilabel else torch.log_softmax(logits, dim=1)


def inverse_frequency_weights(targets: MultiHot) -> Tensor:
    """(C,) weights ∝ 1 / positives per class (absent classes count as 1), mean 1."""
    counts = np.maximum(targets.class_counts().astype(np.float64), 1.0)
    weights = 1.0 / counts
    return torch.tensor(weights / weights.mean(), dtype=torch.float32)


def loss_weights(cfg: TrainConfig, targets: MultiHot) -> dict[str, Tensor | None]:
    """``class_weight`` and ``pos_weight`` for ``train`` from the training targets (N, C)."""
    weights = inverse_frequency_weights(targets)
    return {
        "class_weight": weights if cfg.class_weights else None,
        "pos_weight": weights if cfg.pos_weight == "inverse-frequency" else None,
    }


def make_optimizer(cfg: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    kw = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    factories = {
        "sgd": lambda: torch.optim.SGD(params, momentum=SGD_MOMENTUM, **kw),
        "adam": lambda: torch.optim.Adam(params, **kw),
        "rmsprop": lambda: torch.optim.RMSprop(params, alpha=cfg.rmsprop_decay, **kw),
    }
    return factories[cfg.optimizer]()
