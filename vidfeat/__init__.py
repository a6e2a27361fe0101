"""vidfeat: video frame features into a resumable feature store, for training video classifiers.

The public names load lazily: ``import vidfeat.decode`` in a decode worker should not pay for
zarr and pandas, and a training job reading a store should not pay for torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from vidfeat.extractor import FeatureExtractor
    from vidfeat.store import create_store, open_store

__all__ = ["FeatureExtractor", "__version__", "create_store", "open_store"]


def __getattr__(name: str) -> object:
    if name == "FeatureExtractor":
        from vidfeat.extractor import FeatureExtractor

        return FeatureExtractor
    if name in ("open_store", "create_store"):
        from vidfeat import store

        return getattr(store, name)
    raise AttributeError(f"module 'vidfeat' has no attribute {name!r}")
