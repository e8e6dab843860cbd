"""Shared fixtures for the data tests: small, seeded, sparse jets in the DeepFalcon schema."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tfjetflows.data import schema


def make_jets(
    n: int = 6,
    seed: int = 0,
    *,
    tracks: int = 8,
    ecal: int = 40,
    towers: int = 6,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(images, pt, m0, y)`` for ``n`` sparse random jets (float64, seeded).

    Each jet gets up to ``tracks`` track pixels (either sign), ``ecal`` ECAL pixels and ``towers``
    HCAL towers, the towers stored as 5x5 blocks of equal value as in the real files. Labels
    alternate 0, 1, 0, ... so both classes are present.
    """
    rng = np.random.default_rng(seed)
    side = schema.IMAGE_SHAPE[1]
    images = np.zeros((n, *schema.IMAGE_SHAPE))
    for i in range(n):
        for channel, count, sign in ((0, tracks, True), (1, ecal, False)):
            flat = rng.choice(side * side, size=count, replace=False)
            values = rng.exponential(1.0, size=count) + 1e-3
            if sign:
                values *= rng.choice([-1.0, 1.0], size=count)
            images[i, channel].flat[flat] = values
        grid = schema.CHANNEL_GRID["hcal"]
        tower_values = np.zeros(grid * grid)
        tower_values[rng.choice(grid * grid, size=towers, replace=False)] = (
            rng.exponential(2.0, size=towers) + 1e-3
        )
        block = np.ones((schema.HCAL_TOWER, schema.HCAL_TOWER))
        images[i, 2] = np.kron(tower_values.reshape(grid, grid), block)
    pt = rng.uniform(70.0, 300.0, size=n)
    m0 = rng.uniform(5.0, 50.0, size=n)
    y = (np.arange(n) % 2).astype(np.float64)
    return images, pt, m0, y


@pytest.fixture
def jet_file(tmp_path: Path) -> Callable[..., Path]:
    """Return ``write(name="jets.parquet", n=6, seed=0, **make_jets_kwargs) -> Path``.

    Files are written under the test's ``tmp_path`` with one row per row group (the public layout).
    """

    def write(name: str = "jets.parquet", n: int = 6, seed: int = 0, **kwargs: int) -> Path:
        images, pt, m0, y = make_jets(n, seed, **kwargs)
        return schema.write_jets(tmp_path / name, images, pt, m0, y)

    return write


@pytest.fixture
def jet_arrays() -> Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Return :func:`make_jets`, for tests that need the arrays rather than a file."""
    return make_jets
