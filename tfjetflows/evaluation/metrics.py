"""Two-sample distances between generated and real jets.

References:
    [1] Villani, Optimal Transport: Old and New (2009): in one dimension the Wasserstein-1
        distance is the area between the two empirical CDFs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from tfjetflows.data.selection import energy_sums, hit_counts

__all__ = ["basic_observables", "observable_distances", "roc_auc", "wasserstein_1d"]


def wasserstein_1d(a: np.ndarray, b: np.ndarray) -> float:
    """Return the Wasserstein-1 distance between two 1-D samples (area between their CDFs).

    Example:
        >>> wasserstein_1d(np.array([0.0, 1.0]), np.array([2.0, 3.0]))
        2.0
    """
    a = np.sort(np.asarray(a, np.float64).ravel())
    b = np.sort(np.asarray(b, np.float64).ravel())
    if len(a) == 0 or len(b) == 0:
        raise ValueError("wasserstein_1d needs two non-empty samples")
    values = np.sort(np.concatenate([a, b]))
    cdf_a = np.searchsorted(a, values[:-1], side="right") / len(a)
    cdf_b = np.searchsorted(b, values[:-1], side="right") / len(b)
    return float(np.sum(np.abs(cdf_a - cdf_b) * np.diff(values)))


def basic_observables(
    images: np.ndarray, channels: Sequence[str], threshold: float = 1e-3
) -> dict[str, np.ndarray]:
    """Per-jet hit multiplicity and energy sum of each channel (HCAL in towers)."""
    out: dict[str, np.ndarray] = {}
    for channel in channels:
        out[f"{channel}_hits"] = hit_counts(images, [channel], threshold).astype(np.float64)
        out[f"{channel}_energy_sum"] = energy_sums(images, [channel])
    return out


def observable_distances(
    generated: Mapping[str, np.ndarray], real: Mapping[str, np.ndarray]
) -> dict[str, float]:
    """W1 of every observable present in both mappings."""
    return {name: wasserstein_1d(generated[name], real[name]) for name in generated if name in real}


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """ROC AUC of telling ``positive`` from ``negative`` by score (Mann-Whitney U, ties halved).

    Example:
        >>> roc_auc(np.array([2.0, 3.0]), np.array([0.0, 1.0]))
        1.0
    """
    positive = np.asarray(positive, np.float64).ravel()
    negative = np.asarray(negative, np.float64).ravel()
    if len(positive) == 0 or len(negative) == 0:
        raise ValueError("roc_auc needs two non-empty samples")
    scores = np.concatenate([positive, negative])
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average ranks of ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(average, counts)
    u = ranks[: len(positive)].sum() - len(positive) * (len(positive) + 1) / 2.0
    return float(u / (len(positive) * len(negative)))
