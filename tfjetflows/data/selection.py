"""Jet selection while streaming: hit multiplicity, summed energy and class label cuts.

A hit is a pixel with ``|E| >= threshold`` in one of the chosen channels. HCAL is counted and
summed on its 25x25 tower grid (one tower = a 5x5 block of equal values in the image), so a tower
is one hit and its energy is counted once, not 25 times. All functions work on whole batches with
numpy; nothing loops over jets in Python.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path

import numpy as np

from tfjetflows.config import ConfigError, SelectionConfig
from tfjetflows.data.reader import JetBatch, ReadStats, iter_jet_batches
from tfjetflows.data.schema import CHANNELS, DataError, channel_grid

__all__ = [
    "SelectionStats",
    "describe_selection",
    "energy_sums",
    "hit_counts",
    "iter_selected",
    "selection_mask",
    "validate_selection",
]


@dataclass
class SelectionStats:
    """Counters filled while iterating: jets ``scanned`` by the selection and jets ``kept``."""

    scanned: int = 0
    kept: int = 0


def _check_channels(channels: Sequence[str]) -> list[str]:
    if isinstance(channels, str) or not isinstance(channels, Sequence) or not channels:
        raise ConfigError(
            f"selection.channels must be a non-empty list of {', '.join(CHANNELS)}; "
            f"got {channels!r}"
        )
    for name in channels:
        if name not in CHANNELS:
            raise ConfigError(
                f"selection.channels: unknown channel {name!r}; expected one of "
                f"{', '.join(CHANNELS)}"
            )
    if len(set(channels)) != len(channels):
        raise ConfigError(f"selection.channels lists a channel twice: {list(channels)}")
    return list(channels)


def _check_threshold(threshold: float) -> float:
    if (
        isinstance(threshold, bool) or not isinstance(threshold, Real)
        or not math.isfinite(threshold) or threshold < 0
    ):
        raise ConfigError(
            f"selection.threshold must be a finite number >= 0, got {threshold!r}"
        )
    return float(threshold)


def _is_int(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (
        isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(float(value))
    )


def validate_selection(selection: SelectionConfig) -> None:
    """Check a :class:`~tfjetflows.config.SelectionConfig`.

    Raises:
        ConfigError: naming the key: unknown or repeated channel, negative or non-finite
            threshold, non-integer or negative hit bounds, ``min > max``, non-finite energy
            bounds, empty or non-integer labels.
    """
    _check_channels(selection.channels)
    _check_threshold(selection.threshold)
    if not _is_int(selection.min_hits) or selection.min_hits < 0:
        raise ConfigError(
            f"selection.min_hits must be an integer >= 0, got {selection.min_hits!r}"
        )
    if selection.max_hits is not None:
        if not _is_int(selection.max_hits):
            raise ConfigError(
                f"selection.max_hits must be an integer or null, got {selection.max_hits!r}"
            )
        if selection.max_hits < selection.min_hits:
            raise ConfigError(
                f"selection.min_hits ({selection.min_hits}) is greater than "
                f"selection.max_hits ({selection.max_hits})"
            )
    for key in ("energy_min", "energy_max"):
        value = getattr(selection, key)
        if value is not None and not _is_number(value):
            raise ConfigError(f"selection.{key} must be a finite number or null, got {value!r}")
    if (
        selection.energy_min is not None and selection.energy_max is not None
        and selection.energy_min > selection.energy_max
    ):
        raise ConfigError(
            f"selection.energy_min ({selection.energy_min}) is greater than "
            f"selection.energy_max ({selection.energy_max})"
        )
    labels = selection.labels
    if labels is not None:
        if isinstance(labels, str) or not isinstance(labels, Sequence) or not labels:
            raise ConfigError(
                f"selection.labels must be a non-empty list of integers or null (keep all), "
                f"got {labels!r}"
            )
        for label in labels:
            if not _is_int(label):
                raise ConfigError(f"selection.labels: {label!r} is not an integer class label")


def describe_selection(selection: SelectionConfig) -> str:
    """Return a one-line summary of ``selection``, for messages and logs."""

    def interval(low: float | None, high: float | None) -> str:
        low_text = "-inf" if low is None else f"{low:g}"
        high_text = "inf" if high is None else f"{high:g}"
        return f"[{low_text}, {high_text}]"

    parts = [
        f"channels {'+'.join(selection.channels)}",
        f"|E| >= {selection.threshold:g}",
        f"hits in {interval(selection.min_hits, selection.max_hits)}",
        f"energy in {interval(selection.energy_min, selection.energy_max)}",
        f"labels {'all' if selection.labels is None else list(selection.labels)}",
    ]
    return ", ".join(parts)


def _flat_grids(images: np.ndarray, channels: Sequence[str]) -> list[np.ndarray]:
    """Return each channel of ``images`` on its natural grid, flattened to [n, pixels]."""
    n = images.shape[0]
    return [channel_grid(images, name).reshape(n, -1) for name in channels]


def _hits(grids: Sequence[np.ndarray], threshold: float, n: int) -> np.ndarray:
    total = np.zeros(n, dtype=np.int64)
    for grid in grids:
        total += np.count_nonzero(np.abs(grid) >= threshold, axis=1)
    return total


def _energy(grids: Sequence[np.ndarray], n: int) -> np.ndarray:
    total = np.zeros(n, dtype=np.float64)
    for grid in grids:
        total += grid.sum(axis=1, dtype=np.float64)
    return total


def hit_counts(images: np.ndarray, channels: Sequence[str], threshold: float) -> np.ndarray:
    """Count the hits of each jet: pixels with ``|E| >= threshold`` in ``channels``.

    Args:
        images: [n, 3, 125, 125] jet images.
        channels: channel names (``tracks``, ``ecal``, ``hcal``); HCAL counts towers (25x25).
        threshold: the hit threshold in GeV.

    Returns:
        [n] int64 hit counts, summed over the channels.
    """
    grids = _flat_grids(images, _check_channels(channels))
    return _hits(grids, _check_threshold(threshold), images.shape[0])


def energy_sums(images: np.ndarray, channels: Sequence[str]) -> np.ndarray:
    """Sum the energy of each jet over ``channels`` (HCAL summed over towers, each once).

    Args:
        images: [n, 3, 125, 125] jet images.
        channels: channel names (``tracks``, ``ecal``, ``hcal``).

    Returns:
        [n] float64 energy sums in GeV (track pixels can be negative and are summed as they are).
    """
    return _energy(_flat_grids(images, _check_channels(channels)), images.shape[0])


def selection_mask(
    images: np.ndarray, y: np.ndarray, selection: SelectionConfig
) -> np.ndarray:
    """Return the [n] boolean mask of the jets that pass ``selection``.

    A jet passes when ``min_hits <= hits <= max_hits``, ``energy_min <= energy <= energy_max``
    (None: unbounded) and its label ``y`` is in ``labels`` (None: any label).

    Args:
        images: [n, 3, 125, 125] jet images.
        y: [n] class labels.
        selection: the cuts.

    Raises:
        ConfigError: the selection is invalid (see :func:`validate_selection`).
    """
    validate_selection(selection)
    n = images.shape[0]
    mask = np.ones(n, dtype=bool)
    if selection.labels is not None:
        mask &= np.isin(np.asarray(y).reshape(n), np.asarray(selection.labels, dtype=np.float64))
    need_hits = selection.min_hits > 0 or selection.max_hits is not None
    need_energy = selection.energy_min is not None or selection.energy_max is not None
    if not (need_hits or need_energy) or not mask.any():
        return mask
    grids = _flat_grids(images, selection.channels)
    if need_hits:
        hits = _hits(grids, selection.threshold, n)
        mask &= hits >= selection.min_hits
        if selection.max_hits is not None:
            mask &= hits <= selection.max_hits
    if need_energy:
        energy = _energy(grids, n)
        if selection.energy_min is not None:
            mask &= energy >= selection.energy_min
        if selection.energy_max is not None:
            mask &= energy <= selection.energy_max
    return mask


def _iter_selected(
    batches: Iterator[JetBatch],
    selection: SelectionConfig,
    n_files: int,
    stats: SelectionStats,
    read_stats: ReadStats,
) -> Iterator[JetBatch]:
    scanned = kept = 0
    skipped_before = read_stats.bad_jets_skipped
    for batch in batches:
        mask = selection_mask(batch.images, batch.y, selection)
        chosen = batch.take(mask)
        scanned += len(batch)
        kept += len(chosen)
        stats.scanned += len(batch)
        stats.kept += len(chosen)
        if len(chosen):
            yield chosen
    if not kept:
        skipped = read_stats.bad_jets_skipped - skipped_before
        extra = f"; {skipped} more skipped for NaN/inf values" if skipped else ""
        raise DataError(
            f"no jet passes the selection: scanned {scanned} jets in {n_files} files"
            f"{extra} (selection: {describe_selection(selection)})"
        )


def iter_selected(
    paths: Sequence[str | Path],
    selection: SelectionConfig,
    *,
    batch_size: int = 256,
    on_bad_jet: str = "error",
    stats: SelectionStats | None = None,
    read_stats: ReadStats | None = None,
) -> Iterator[JetBatch]:
    """Stream the jets of ``paths`` that pass ``selection``, one full pass over the files.

    The selection and reader options are checked at the call. Batches shrink to the kept jets
    (row indices stay those of the file); empty batches are dropped.

    Args:
        paths: the files, in reading order.
        selection: the cuts.
        batch_size: jets read per batch (see :func:`~tfjetflows.data.reader.iter_jet_batches`).
        on_bad_jet: ``"error"`` or ``"skip"`` for jets with NaN/inf values.
        stats: selection counters, updated while iterating.
        read_stats: reader counters, updated while iterating.

    Yields:
        Non-empty :class:`~tfjetflows.data.reader.JetBatch` es of kept jets.

    Raises:
        DataError: when a full pass keeps no jet (the message gives the jets scanned, the files
            and the selection), or any reader error.
        ConfigError: invalid selection or reader options.
    """
    validate_selection(selection)
    if isinstance(paths, (str, Path)):
        paths = [paths]
    read_stats = read_stats if read_stats is not None else ReadStats()
    batches = iter_jet_batches(
        paths, batch_size=batch_size, on_bad_jet=on_bad_jet, stats=read_stats
    )
    return _iter_selected(
        batches, selection, len(paths), stats if stats is not None else SelectionStats(),
        read_stats,
    )
