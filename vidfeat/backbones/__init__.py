"""Frame backbones: ``create_backbone(name, weights=..., device=..., precision=...)``.

Importing this package does not import torch; built-in backbones load on first use.
"""

from vidfeat.backbones.base import (
    BACKBONES,
    Backbone,
    BackboneSpec,
    backbone_names,
    create_backbone,
)

__all__ = ["BACKBONES", "Backbone", "BackboneSpec", "backbone_names", "create_backbone"]
