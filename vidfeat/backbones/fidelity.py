"""How far features made one way are from reference features (e.g. fp32 eager).

``mean_rel_diff`` is mean |a - b| / mean |b| over all elements: relative to the features' own
scale, and defined where single reference elements are 0 (pool_3 averages ReLU outputs, so
zeros occur). Runtimes document a bound on it (``Runtime.bounds``).

``yt8m_test_difference`` is the measure YouTube-8M's own feature-extractor test applies to its
reference frame (bound 0.1): element-wise, |a - b| / (0.01 + max(|a|, |b|)), averaged.
"""

from __future__ import annotations

import numpy as np


def fidelity(features: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """(N, D) features vs (N, D) reference -> mean_rel_diff, max_abs_diff, min/mean cosine."""
    a = np.asarray(features, np.float64)
    b = np.asarray(reference, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"need two (N, D) arrays of one shape, got {a.shape} and {b.shape}")
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cosine = (a * b).sum(axis=1) / np.maximum(norms, 1e-30)
    return {
        "mean_rel_diff": float(np.abs(a - b).mean() / np.abs(b).mean()),
        "max_abs_diff": float(np.abs(a - b).max()),
        "cosine_min": float(cosine.min()),
        "cosine_mean": float(cosine.mean()),
    }


YT8M_TEST_BOUND = 0.1  # what YouTube-8M's feature-extractor test allows on its reference frame


def yt8m_test_difference(features: np.ndarray, reference: np.ndarray) -> float:
    """YouTube-8M's feature-extractor test measure: mean |a - b| / (0.01 + max(|a|, |b|)).

    Each element's difference is taken relative to the larger of the two magnitudes, plus 0.01
    so that elements near 0 in both (most of a ReLU network's pooled features are small) do not
    dominate; the test passes below ``YT8M_TEST_BOUND``.
    """
    a = np.asarray(features, np.float64)
    b = np.asarray(reference, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"need two arrays of one shape, got {a.shape} and {b.shape}")
    return float((np.abs(a - b) / (0.01 + np.maximum(np.abs(a), np.abs(b)))).mean())
