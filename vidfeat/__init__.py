"""vidfeat: video frame features into a resumable feature store, for training video classifiers.

``open_store``/``create_store`` import no torch; ``FeatureExtractor`` loads torch on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

from vidfeat.store import create_store, open_store

if TYPE_CHECKING:
    from vidfeat.extractor import FeatureExtractor

__all__ = ["FeatureExtractor", "__version__", "create_store", "open_store"]


def __getattr__(name: str) -> object:
    # Lazy so that `import vidfeat` (e.g. in a training job reading a store) stays torch-free.
    if name == "FeatureExtractor":
        from vidfeat.extractor import FeatureExtractor

        return FeatureExtractor
    raise AttributeError(f"module 'vidfeat' has no attribute {name!r}")
