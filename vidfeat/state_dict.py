"""What keeps a state dict from loading into a module, named key by key.

torch's own message for a mismatch is many lines long and names no cause; weight files
(``vidfeat.backbones``) and training checkpoints (``heads.checkpoint``) both report it through
this one description, inside their own error types.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn


def describe_mismatch(module: nn.Module, state: Mapping[str, object]) -> str | None:
    """``"missing keys (2): a, b; wrong shapes (1): c"``, or None when ``state`` fits."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshapen = sorted(
        k
        for k in set(expected) & set(state)
        if not isinstance(state[k], torch.Tensor) or state[k].shape != expected[k].shape
    )
    problems = [
        f"{label} ({len(keys)}): {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("wrong shapes", misshapen),
        )
        if keys
    ]
    return "; ".join(problems) or None
