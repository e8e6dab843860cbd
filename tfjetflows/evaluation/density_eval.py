"""Score real and artificial jets with an exported model: the figures behind ``tfjf evaluate``.

Works with any exported tfjetflows model (MAF or BNAF) through its SavedModel functions alone:
held-out NLL per jet and per dimension with its standard error, and how well the model's
log-likelihood separates real jets from artificial ones (random hit positions, shuffled hit
energies, or any other jets file such as MAF samples): a histogram and the ROC AUC of
"real vs other" for each.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tfjetflows.errors import ModelError

__all__ = ["evaluate_model", "resolve_saved_model"]


def resolve_saved_model(path: str | os.PathLike) -> Path:
    """Return the SavedModel folder of ``path``: itself, or ``path/saved_model`` for a run."""
    path = Path(path)
    if (path / "saved_model" / "saved_model.pb").is_file():
        return path / "saved_model"
    return path


def _collect(
    paths: Sequence[Path], selection: Any, limit: int, *, select: bool
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    from tfjetflows.data.reader import iter_jet_batches
    from tfjetflows.data.selection import iter_selected

    batches = iter_selected(paths, selection) if select else iter_jet_batches(paths)
    images, scalars, found = [], {"pt": [], "m0": [], "y": []}, 0
    for batch in batches:
        take = min(len(batch.y), limit - found)
        images.append(batch.images[:take])
        for key in scalars:
            scalars[key].append(getattr(batch, key)[:take])
        found += take
        if found >= limit:
            break
    return np.concatenate(images), {k: np.concatenate(v) for k, v in scalars.items()}


class _Scorer:
    """Encode jets with the model's representation and call its ``jet_log_prob``."""

    def __init__(self, module: Any, meta: dict[str, Any], seed: int, batch_size: int) -> None:
        from tfjetflows.data.representations import representation_from_config

        self.module = module
        self.representation = representation_from_config(meta["representation"])
        self.dim = int(meta["dim"])
        self.conditions = list(meta.get("conditions", []))
        self.rng = np.random.default_rng(seed)
        self.batch_size = batch_size

    def __call__(self, images: np.ndarray, scalars: dict[str, np.ndarray]) -> dict[str, Any]:
        import tensorflow as tf

        x = self.representation.encode(images, scalars, self.rng)
        if x.shape[1] != self.dim:
            raise ModelError(
                f"the data encode to {x.shape[1]} dims but the model expects {self.dim}"
            )
        log_prob, jet_log_prob = [], []
        for start in range(0, len(x), self.batch_size):
            xs = tf.constant(x[start : start + self.batch_size])
            columns = [
                tf.constant(scalars[name][start : start + self.batch_size], tf.float32)
                for name in self.conditions
            ]
            log_prob.append(self.module.log_prob(xs, *columns).numpy())
            jet_log_prob.append(self.module.jet_log_prob(xs, *columns).numpy())
        return {"log_prob": np.concatenate(log_prob), "jet_log_prob": np.concatenate(jet_log_prob)}


def _nll_figures(log_prob: np.ndarray, jet_log_prob: np.ndarray, dim: int) -> dict[str, float]:
    nll = -log_prob.astype(np.float64)
    n = len(nll)
    stderr = float(nll.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    return {
        "jets": n,
        "nll": float(nll.mean()),
        "nll_stderr": stderr,
        "nats_per_dim": float(nll.mean() / dim),
        "nats_per_dim_stderr": stderr / dim,
        "bits_per_dim": float(nll.mean() / dim / math.log(2.0)),
        "jet_nll": float(-jet_log_prob.mean()),
    }


def _histogram(path: Path, real: np.ndarray, other: np.ndarray, label: str, auc: float) -> Path:
    from tfjetflows.evaluation.plots import _pyplot, save_figure

    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(5, 3.5))
    finite = np.concatenate([real, other])
    finite = finite[np.isfinite(finite)]
    bins = np.linspace(np.quantile(finite, 0.005), np.quantile(finite, 0.995), 60)
    ax.hist(real, bins=bins, histtype="step", density=True, label="real")
    ax.hist(other, bins=bins, histtype="step", density=True, label=label)
    ax.set_xlabel("log-likelihood of the jet [nats]")
    ax.set_ylabel("density")
    ax.set_title(f"real vs {label}: ROC AUC {auc:.3f}", fontsize=9)
    ax.legend()
    return save_figure(figure, path)


def evaluate_model(
    model: str | os.PathLike,
    data: Sequence[str],
    *,
    against: Sequence[str] = (),
    out_dir: str | os.PathLike | None = None,
    max_jets: int = 2000,
    seed: int = 0,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Score ``data`` (the model's own selection applied) and artificial jets with ``model``.

    Args:
        model: a SavedModel folder or a run folder.
        data: Parquet files, globs or folders of real jets.
        against: other jets files to compare with (e.g. MAF samples), scored as they are.
        out_dir: where the histograms go (None: no plots).
        max_jets: jets scored per set.
        seed: seed of the dequantization noise and the artificial jets.
        batch_size: jets per model call.

    Returns:
        JSON-ready figures: ``test`` (NLL), and ``comparisons`` (AUC, mean log-likelihoods).
    """
    from tfjetflows.config import config_from_dict
    from tfjetflows.data.reader import resolve_paths
    from tfjetflows.evaluation.artificial import random_positions, shuffled_energies
    from tfjetflows.evaluation.metrics import roc_auc
    from tfjetflows.sampling import load_exported

    if max_jets <= 0:
        raise ModelError(f"max_jets must be positive, got {max_jets}")
    saved = resolve_saved_model(model)
    module, meta = load_exported(saved)
    config = config_from_dict(meta.get("config", {}), source=str(saved))
    scorer = _Scorer(module, meta, seed, batch_size)
    images, scalars = _collect(resolve_paths(list(data)), config.selection, max_jets, select=True)
    real = scorer(images, scalars)
    result: dict[str, Any] = {
        "model": str(saved),
        "test": _nll_figures(real["log_prob"], real["jet_log_prob"], scorer.dim),
        "comparisons": {},
    }
    others: dict[str, tuple[np.ndarray, dict[str, np.ndarray]]] = {}
    if scorer.representation.decodes_images:
        rng = np.random.default_rng([seed, 1])
        others["random"] = (random_positions(images, rng), scalars)
        others["shuffled_energies"] = (shuffled_energies(images, rng), scalars)
    for pattern in against:
        other_images, other_scalars = _collect(
            resolve_paths([pattern]), config.selection, max_jets, select=False
        )
        others[Path(pattern).name] = (other_images, other_scalars)
    out = Path(out_dir) if out_dir is not None else None
    for label, (other_images, other_scalars) in others.items():
        scores = scorer(other_images, other_scalars)["jet_log_prob"]
        auc = roc_auc(real["jet_log_prob"], scores)
        entry: dict[str, Any] = {
            "jets": len(scores),
            "auc_real_vs_other": auc,
            "mean_jet_log_prob_real": float(real["jet_log_prob"].mean()),
            "mean_jet_log_prob_other": float(scores.mean()),
        }
        if out is not None:
            name = "".join(ch if ch.isalnum() else "_" for ch in label)
            entry["plot"] = str(
                _histogram(
                    out / f"logprob_real_vs_{name}.png", real["jet_log_prob"], scores, label, auc
                )
            )
        result["comparisons"][label] = entry
    return result
