"""Stage-2 heads: ``create_head(name, input_dim=D, num_classes=C, cfg=HeadConfig(...))``.

Each family lives in its own module and registers its names in ``HEADS`` on import; the
imports below are what makes every family available.
"""

from heads.models import (
    attention,
    bof,
    frames,
    fusion,
    logistic,
    moe,
    recurrent,
    sparse_moe,
    tconv,
)
from heads.models.base import (
    CLASSIFIERS,
    FUSION_LAYERS,
    HEADS,
    AdditiveAttentionPool,
    AuxLossModule,
    Head,
    HeadConfig,
    HeadInputError,
    create_head,
    lengths_to_mask,
    linear_weights,
    masked_max,
    masked_mean,
    unused_fusion_settings,
    weighted_sum,
)

__all__ = [
    "CLASSIFIERS",
    "FUSION_LAYERS",
    "HEADS",
    "AdditiveAttentionPool",
    "AuxLossModule",
    "Head",
    "HeadConfig",
    "HeadInputError",
    "attention",
    "bof",
    "create_head",
    "frames",
    "fusion",
    "lengths_to_mask",
    "linear_weights",
    "logistic",
    "masked_max",
    "masked_mean",
    "moe",
    "recurrent",
    "sparse_moe",
    "tconv",
    "unused_fusion_settings",
    "weighted_sum",
]
