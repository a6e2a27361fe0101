"""PCA-reduced, 8-bit quantized features in YouTube-8M's 1024-d format.

- :mod:`vidfeat.pca.transform`: :class:`PCATransform`, :func:`load_pca` (our ``.npz`` or
  YouTube-8M's ``yt8m_pca.tgz`` directory).
- :mod:`vidfeat.pca.fit`: :func:`fit_pca`, streaming and bounded in memory.
- :mod:`vidfeat.pca.apply`: :class:`FeatureReduction`, :func:`apply_pca_to_store`.
- :mod:`vidfeat.pca.quantize`: YouTube-8M's 8-bit quantization and its inverse.

numpy only: importing this package does not import torch.
"""

from vidfeat.pca.apply import FeatureReduction, apply_pca_to_store
from vidfeat.pca.fit import fit_pca
from vidfeat.pca.transform import WHITEN_EPS, YT8M_DIM, PCATransform, load_pca

__all__ = [
    "WHITEN_EPS",
    "YT8M_DIM",
    "FeatureReduction",
    "PCATransform",
    "apply_pca_to_store",
    "fit_pca",
    "load_pca",
]
