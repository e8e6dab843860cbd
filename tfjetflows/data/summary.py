"""What is in a set of jet files: the figures behind ``tfjf inspect``.

One streaming pass gathers per-jet statistics (a few numbers per jet, never the images), then
reports counts, per-channel sparsity and energy quantiles, labels, the selection's pass count,
and, for the hits representation, how much of each channel's energy the top-K hits keep.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tfjetflows.config import SelectionConfig
from tfjetflows.data.reader import ReadStats, iter_jet_batches, validate_files
from tfjetflows.data.schema import CHANNELS, channel_grid
from tfjetflows.data.selection import selection_mask

__all__ = ["QUANTILES", "summarize_files", "topk_energy_fraction"]

QUANTILES = (0.1, 0.5, 0.9)


def topk_energy_fraction(grid: np.ndarray, k: int, threshold: float) -> np.ndarray:
    """Return, per jet, the fraction of |E| above ``threshold`` held by the ``k`` largest hits."""
    flat = np.abs(grid.reshape(len(grid), -1))
    flat = np.where(flat >= threshold, flat, 0.0)
    total = flat.sum(axis=1)
    if k <= 0:
        return np.zeros(len(grid))
    k = min(k, flat.shape[1])
    top = -np.partition(-flat, k - 1, axis=1)[:, :k]
    return np.divide(top.sum(axis=1), total, out=np.ones_like(total), where=total > 0)


def _quantiles(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {}
    return {f"q{int(q * 100)}": float(np.quantile(values, q)) for q in QUANTILES}


def summarize_files(
    paths: Sequence[Path],
    selection: SelectionConfig,
    *,
    hits_per_channel: Mapping[str, int] | None = None,
    on_bad_jet: str = "error",
    batch_size: int = 256,
) -> dict[str, Any]:
    """Return a JSON-ready summary of the jets in ``paths``.

    Args:
        paths: resolved Parquet files.
        selection: the selection whose pass count is reported.
        hits_per_channel: when given (the hits representation's K per channel), report the
            fraction of each channel's energy kept by the top-K hits.
        on_bad_jet: ``"error"`` or ``"skip"`` for jets with NaN/inf pixels.
        batch_size: jets read per batch.
    """
    rows = validate_files(paths)
    threshold = selection.threshold
    hits: dict[str, list[np.ndarray]] = {c: [] for c in CHANNELS}
    energy: dict[str, list[np.ndarray]] = {c: [] for c in CHANNELS}
    negative: list[np.ndarray] = []
    coverage: dict[str, list[np.ndarray]] = {c: [] for c in hits_per_channel or {}}
    labels: list[np.ndarray] = []
    passed = 0
    read_stats = ReadStats()
    for batch in iter_jet_batches(
        paths, batch_size=batch_size, on_bad_jet=on_bad_jet, stats=read_stats
    ):
        for channel in CHANNELS:
            grid = channel_grid(batch.images, channel)
            flat = grid.reshape(len(grid), -1)
            hits[channel].append((np.abs(flat) >= threshold).sum(axis=1))
            energy[channel].append(flat.sum(axis=1))
            if channel in coverage:
                k = int(hits_per_channel[channel])  # type: ignore[index]
                coverage[channel].append(topk_energy_fraction(grid, k, threshold))
        negative.append((batch.images[:, 0] <= -threshold).sum(axis=(1, 2)))
        labels.append(batch.y)
        passed += int(selection_mask(batch.images, batch.y, selection).sum())
    all_labels = np.concatenate(labels) if labels else np.zeros(0)
    values, counts = np.unique(all_labels, return_counts=True)
    summary: dict[str, Any] = {
        "files": len(paths),
        "jets": int(sum(rows)),
        "jets_per_file": {str(p): int(n) for p, n in zip(paths, rows, strict=True)},
        "bad_jets_skipped": read_stats.bad_jets_skipped,
        "labels": {str(int(v)): int(c) for v, c in zip(values, counts, strict=True)},
        "channels": {
            channel: {
                "hits": _quantiles(np.concatenate(hits[channel])),
                "energy_sum_gev": _quantiles(np.concatenate(energy[channel])),
            }
            for channel in CHANNELS
            if hits[channel]
        },
        "tracks_negative_pixels": _quantiles(np.concatenate(negative)) if negative else {},
        "selection": {"passed": passed, "scanned": int(len(all_labels))},
    }
    if coverage:
        summary["topk_energy_fraction"] = {
            channel: {"k": int(hits_per_channel[channel]), **_quantiles(np.concatenate(v))}  # type: ignore[index]
            for channel, v in coverage.items()
            if v
        }
    return summary
