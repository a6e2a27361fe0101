"""Video classification heads on frame-feature stores.

The public API, imported on first use so that ``import heads.config`` stays free of torch:

* :func:`load_run` - a trained run directory, ready to predict (model, config, label map);
* :class:`FeatureDataset` - a torch ``Dataset`` over a store's videos (``split=...``);
* :func:`collate` - pads a list of samples into a :class:`Batch`;
* :func:`create_head` and :class:`TrainConfig` - build a head, configure a run.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "load_run": "heads.inference",
    "LoadedRun": "heads.inference",
    "FeatureDataset": "heads.data",
    "Batch": "heads.data",
    "collate": "heads.data",
    "make_loader": "heads.batching",
    "create_head": "heads.models",
    "TrainConfig": "heads.config",
    "DataConfig": "heads.config",
    "HeadConfig": "heads.config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'heads' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
