"""Pictures: jet-image grids (generated beside real) and training curves.

Matplotlib runs on the non-interactive Agg backend; every PNG is written to a temporary file
and renamed, so a crash never leaves half a picture.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tfjetflows.atomic import atomic_path

__all__ = ["jet_grid_figure", "plot_jet_grid", "plot_training_curves", "save_figure"]

_CHANNEL_TITLES = ("Tracks", "ECAL", "HCAL")


def _pyplot():  # noqa: ANN202 - matplotlib.pyplot module
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: object, path: str | os.PathLike) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    plt = _pyplot()
    try:
        with atomic_path(path, suffix=".png") as tmp:
            figure.savefig(tmp, dpi=90, bbox_inches="tight")  # type: ignore[attr-defined]
    finally:
        plt.close(figure)
    return path


def jet_grid_figure(
    generated: np.ndarray,
    real: np.ndarray | None = None,
    *,
    n_jets: int = 4,
    threshold: float = 1e-3,
) -> object:
    """Return a figure of jets: one row per jet, one column per channel, log colour scale.

    Generated jets fill the left three columns; real jets, when given, the right three.
    """
    plt = _pyplot()
    from matplotlib.colors import LogNorm

    sets = [("generated", np.asarray(generated)[:n_jets])]
    if real is not None:
        sets.append(("real", np.asarray(real)[:n_jets]))
    rows = max(len(images) for _, images in sets)
    cols = 3 * len(sets)
    vmax = max(float(np.abs(images).max(initial=threshold * 10)) for _, images in sets)
    norm = LogNorm(vmin=threshold, vmax=max(vmax, threshold * 10))
    figure, axes = plt.subplots(
        max(rows, 1), cols, figsize=(2.1 * cols, 2.1 * max(rows, 1)), squeeze=False
    )
    mappable = None
    for set_index, (label, images) in enumerate(sets):
        for row in range(rows):
            for channel in range(3):
                ax = axes[row, 3 * set_index + channel]
                ax.set_xticks([])
                ax.set_yticks([])
                if row >= len(images):
                    ax.axis("off")
                    continue
                plane = np.abs(images[row, channel])
                plane = np.where(plane >= threshold, plane, np.nan)
                mappable = ax.imshow(
                    plane, norm=norm, cmap="viridis", origin="lower", interpolation="nearest"
                )
                if row == 0:
                    ax.set_title(f"{label}: {_CHANNEL_TITLES[channel]}", fontsize=8)
    if mappable is not None:
        figure.colorbar(mappable, ax=axes, shrink=0.6, label="|E| [GeV]")
    return figure


def plot_jet_grid(
    path: str | os.PathLike,
    generated: np.ndarray,
    real: np.ndarray | None = None,
    *,
    n_jets: int = 4,
    threshold: float = 1e-3,
) -> Path:
    """Write :func:`jet_grid_figure` to ``path`` (PNG)."""
    return save_figure(
        jet_grid_figure(generated, real, n_jets=n_jets, threshold=threshold), path
    )


def plot_training_curves(
    history_csv: str | os.PathLike,
    path: str | os.PathLike,
    metrics: Sequence[str] = ("loss", "val_loss"),
) -> Path:
    """Plot the per-epoch ``metrics`` of a Keras CSV history to ``path`` (PNG)."""
    plt = _pyplot()
    with open(history_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    figure, ax = plt.subplots(figsize=(5, 3.5))
    epochs = [int(row["epoch"]) + 1 for row in rows]
    for name in metrics:
        values = [float(row[name]) for row in rows if row.get(name) not in (None, "")]
        if values:
            ax.plot(epochs[: len(values)], values, marker="o", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("negative log-likelihood [nats / jet]")
    ax.legend()
    ax.grid(alpha=0.3)
    return save_figure(figure, path)
