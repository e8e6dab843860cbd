"""Artificial jets to test a density model against: does it prefer real jets?

Both perturbations keep each channel's hit multiplicity and energy spectrum and destroy the
structure a detector simulation must reproduce:

- :func:`random_positions`: every channel's pixels (HCAL: towers) are moved to uniformly random
  places, so the jet has the real multiplicity and energies but no shape;
- :func:`shuffled_energies`: the hits stay where they are and their energies are permuted
  among them, so the jet has the real positions but energies no longer follow the core.

Both work on images and are vectorised over the batch (a random key per pixel, one argsort).
"""

from __future__ import annotations

import numpy as np

from tfjetflows.data.schema import CHANNEL_GRID, CHANNELS, HCAL_TOWER, channel_grid

__all__ = ["random_positions", "shuffled_energies"]


def _to_image(grid: np.ndarray, name: str) -> np.ndarray:
    if name != "hcal":
        return grid
    return np.repeat(np.repeat(grid, HCAL_TOWER, axis=1), HCAL_TOWER, axis=2)


def _rebuild(images: np.ndarray, planes: dict[str, np.ndarray]) -> np.ndarray:
    out = np.empty_like(images)
    for index, name in enumerate(CHANNELS):
        out[:, index] = _to_image(planes[name], name)
    return out


def random_positions(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Return jets whose pixels (HCAL towers) sit at uniformly random places in their channel."""
    planes = {}
    for name in CHANNELS:
        grid = channel_grid(images, name)
        n, g = len(grid), CHANNEL_GRID[name]
        order = np.argsort(rng.random((n, g * g)), axis=1)
        planes[name] = np.take_along_axis(grid.reshape(n, -1), order, axis=1).reshape(n, g, g)
    return _rebuild(images, planes)


def shuffled_energies(
    images: np.ndarray, rng: np.random.Generator, threshold: float = 1e-3
) -> np.ndarray:
    """Return jets whose hit energies are permuted among the hits of each channel."""
    planes = {}
    for name in CHANNELS:
        grid = channel_grid(images, name)
        n = len(grid)
        flat = grid.reshape(n, -1)
        is_hit = np.abs(flat) >= threshold
        # hits first, in a random order; non-hits after them, in place order
        keys = np.where(is_hit, rng.random(flat.shape), 2.0 + np.arange(flat.shape[1]))
        shuffled_values = np.take_along_axis(flat, np.argsort(keys, axis=1), axis=1)
        # hit positions in place order receive the shuffled hit values
        positions = np.argsort(~is_hit, axis=1, kind="stable")
        out = flat.copy()
        counts = is_hit.sum(axis=1)
        take = np.arange(flat.shape[1])[None, :] < counts[:, None]
        rows = np.nonzero(take)[0]
        out[rows, positions[take]] = shuffled_values[take]
        planes[name] = out.reshape(grid.shape)
    return _rebuild(images, planes)
