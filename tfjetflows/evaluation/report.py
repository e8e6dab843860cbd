"""The physics report of a generative model: ``tfjf report``.

Generated jets are compared with held-out real jets the way the field does it (CaloChallenge
2022, JetNet): per-observable histograms and Wasserstein-1 distances next to the real-vs-real
statistical floor, the Fréchet distance on the observables (FPD) with its floor, and a
classifier two-sample test (ROC AUC; 0.5 means the classifier cannot tell them apart) on the
observables and on the low-level representation vectors. A conditional model is also checked
per class, and on whether it reproduces the quark/gluon separation of the real jets.

Everything lands in one folder: ``metrics.json``, PNG plots and a static ``index.html``.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tfjetflows.atomic import atomic_write_text
from tfjetflows.errors import ModelError

__all__ = ["heldout_jets", "model_metrics", "write_report"]


def heldout_jets(
    paths: Sequence[Path], meta: dict[str, Any], limit: int
) -> tuple[np.ndarray, dict[str, np.ndarray], bool]:
    """Real jets passing the model's selection; its validation side when these are its files.

    Returns images, scalars and whether the jets are the model's own held-out split.
    """
    from tfjetflows.config import config_from_dict
    from tfjetflows.data.pipeline import _validation_flags
    from tfjetflows.data.reader import resolve_paths, validate_files
    from tfjetflows.data.selection import iter_selected

    config = config_from_dict(meta.get("config", {}))
    training_files = list(config.data.files)
    if not training_files:
        from tfjetflows.data.builtin import builtin_data

        training_files = [str(builtin_data())]
    own = [p.resolve() for p in resolve_paths(training_files)] == [p.resolve() for p in paths]
    flags = None
    if own:
        rows = validate_files(paths)
        flags = {
            path: _validation_flags(config.seed, k, rows[k], config.data.validation_fraction)
            for k, path in enumerate(paths)
        }
    images, scalars, found = [], {"pt": [], "m0": [], "y": []}, 0
    for batch in iter_selected(list(paths), config.selection):
        keep = flags[batch.file][batch.rows] if flags is not None else np.ones(len(batch.y), bool)
        keep &= np.cumsum(keep) <= limit - found
        if not keep.any():
            continue
        images.append(batch.images[keep])
        for key in scalars:
            scalars[key].append(getattr(batch, key)[keep])
        found += int(keep.sum())
        if found >= limit:
            break
    if not images:
        raise ModelError("no held-out jets pass the model's selection in the data given")
    return (
        np.concatenate(images),
        {k: np.concatenate(v) for k, v in scalars.items()},
        own,
    )


def _generated_jets(
    module: Any, meta: dict[str, Any], n: int, seed: int, samples: str | None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Images, sampled representation vectors (None when read from a file) and labels."""
    if samples is not None:
        from tfjetflows.data.reader import iter_jet_batches, resolve_paths

        images, labels = [], []
        for batch in iter_jet_batches(resolve_paths([samples])):
            images.append(batch.images)
            labels.append(batch.y)
        return np.concatenate(images)[:n], None, np.concatenate(labels)[:n]
    from tfjetflows.sampling import sample_batches

    images, vectors, labels = [], [], []
    for batch in sample_batches(module, meta, n=n, seed=seed, batch_size=500):
        images.append(batch["images"])
        vectors.append(batch["vector"])
        labels.append(batch.get("y", np.full(len(batch["images"]), -1.0)))
    return np.concatenate(images), np.concatenate(vectors), np.concatenate(labels)


def _observable_table(generated: dict, real: dict, rng: np.random.Generator) -> dict[str, Any]:
    from tfjetflows.evaluation.two_sample import w1_with_floor

    return {name: w1_with_floor(generated[name], real[name], rng) for name in real}


def _matrix(observables: dict[str, np.ndarray]) -> np.ndarray:
    return np.stack([observables[name] for name in sorted(observables)], axis=1)


def model_metrics(
    model: str | os.PathLike,
    data: Sequence[str],
    *,
    n: int = 2000,
    seed: int = 0,
    samples: str | None = None,
    classifier_folds: int = 5,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Compute every figure of the report; also return the arrays the plots need."""
    from tfjetflows.data.reader import resolve_paths
    from tfjetflows.data.representations import representation_from_config
    from tfjetflows.evaluation.density_eval import resolve_saved_model
    from tfjetflows.evaluation.observables import compute_observables
    from tfjetflows.evaluation.two_sample import classifier_auc, fpd_with_floor
    from tfjetflows.sampling import load_exported

    if n <= 0:
        raise ModelError(f"n must be positive, got {n}")
    saved = resolve_saved_model(model)
    module, meta = load_exported(saved)
    if samples is None and not meta.get("can_sample", True):
        raise ModelError(f"{saved}: this model cannot sample; give --samples jets.parquet")
    threshold = float(meta["representation"].get("threshold", 1e-3))
    real_images, real_scalars, own_split = heldout_jets(resolve_paths(list(data)), meta, n)
    gen_images, gen_vectors, gen_labels = _generated_jets(module, meta, n, seed, samples)
    rng = np.random.default_rng(seed)
    real_obs = compute_observables(real_images, threshold)
    gen_obs = compute_observables(gen_images, threshold)
    metrics: dict[str, Any] = {
        "model": str(saved),
        "real_jets": len(real_images),
        "generated_jets": len(gen_images),
        "real_is_models_heldout_split": own_split,
        "w1": _observable_table(gen_obs, real_obs, rng),
        "fpd": fpd_with_floor(_matrix(gen_obs), _matrix(real_obs), rng),
        "classifier_observables": classifier_auc(
            _matrix(gen_obs), _matrix(real_obs), folds=classifier_folds, seed=seed
        ),
    }
    representation = representation_from_config(meta["representation"])
    if gen_vectors is not None:
        real_vectors = representation.encode(real_images, real_scalars, rng)
        metrics["classifier_low_level"] = classifier_auc(
            gen_vectors, real_vectors, folds=classifier_folds, seed=seed
        )
    if representation.decodes_images:
        # real jets as the representation sees them (top-K hits): what a perfect flow reaches,
        # so these figures are the flow's share and the gap to the ones above the representation's
        seen = representation.decode(representation.encode(real_images, real_scalars, rng))
        seen_obs = compute_observables(seen.numpy(), threshold)
        metrics["vs_represented"] = {
            "w1": _observable_table(gen_obs, seen_obs, rng),
            "fpd": fpd_with_floor(_matrix(gen_obs), _matrix(seen_obs), rng),
            "classifier_observables": classifier_auc(
                _matrix(gen_obs), _matrix(seen_obs), folds=classifier_folds, seed=seed
            ),
        }
    if "y" in meta.get("conditions", []):
        per_class: dict[str, Any] = {}
        for label, name in ((0, "quark"), (1, "gluon")):
            real_mask = real_scalars["y"] == label
            gen_mask = gen_labels == label
            if real_mask.sum() < 10 or gen_mask.sum() < 10:
                continue
            per_class[name] = {
                "w1": _observable_table(
                    {k: v[gen_mask] for k, v in gen_obs.items()},
                    {k: v[real_mask] for k, v in real_obs.items()},
                    rng,
                )
            }
        metrics["per_class"] = per_class
        separation = {}
        for label, obs, y in (
            ("real", real_obs, real_scalars["y"]),
            ("generated", gen_obs, gen_labels),
        ):
            matrix = _matrix(obs)
            if (y == 0).sum() >= 10 and (y == 1).sum() >= 10:
                separation[label] = classifier_auc(
                    matrix[y == 1], matrix[y == 0], folds=classifier_folds, seed=seed
                )
        metrics["quark_gluon_auc"] = separation
    arrays = {
        "real_images": real_images,
        "generated_images": gen_images,
        **{f"real/{k}": v for k, v in real_obs.items()},
        **{f"generated/{k}": v for k, v in gen_obs.items()},
    }
    return metrics, arrays


def _histograms(out: Path, arrays: dict[str, np.ndarray]) -> list[Path]:
    from tfjetflows.evaluation.observables import OBSERVABLE_LABELS
    from tfjetflows.evaluation.plots import _pyplot, save_figure

    plt = _pyplot()
    paths = []
    names = [k.split("/", 1)[1] for k in arrays if k.startswith("real/")]
    for name in names:
        real, gen = arrays[f"real/{name}"], arrays[f"generated/{name}"]
        both = np.concatenate([real, gen])
        lo, hi = np.quantile(both, [0.005, 0.995])
        if hi <= lo:
            hi = lo + 1.0
        bins = np.linspace(lo, hi, 41)
        real_h, _ = np.histogram(real, bins=bins, density=True)
        gen_h, _ = np.histogram(gen, bins=bins, density=True)
        figure, (top, bottom) = plt.subplots(
            2, 1, figsize=(4.5, 4), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
        )
        centres = 0.5 * (bins[1:] + bins[:-1])
        top.step(centres, real_h, where="mid", label="real (held out)")
        top.step(centres, gen_h, where="mid", label="generated")
        top.legend(fontsize=7)
        top.set_ylabel("density")
        ratio = np.divide(gen_h, real_h, out=np.full_like(gen_h, np.nan), where=real_h > 0)
        bottom.step(centres, ratio, where="mid", color="k")
        bottom.axhline(1.0, color="grey", lw=0.8)
        bottom.set_ylim(0, 2)
        bottom.set_ylabel("gen / real")
        bottom.set_xlabel(OBSERVABLE_LABELS.get(name, name))
        paths.append(save_figure(figure, out / f"hist_{name}.png"))
    return paths


def _average_images(out: Path, real: np.ndarray, generated: np.ndarray) -> Path:
    from matplotlib.colors import LogNorm, SymLogNorm

    from tfjetflows.evaluation.plots import _pyplot, save_figure

    plt = _pyplot()
    mean_real, mean_gen = real.mean(axis=0), generated.mean(axis=0)
    figure, axes = plt.subplots(3, 3, figsize=(8, 8))
    for channel, title in enumerate(("Tracks", "ECAL", "HCAL")):
        vmax = max(float(mean_real[channel].max()), float(mean_gen[channel].max()), 1e-6)
        for row, (label, image) in enumerate((("real", mean_real), ("generated", mean_gen))):
            ax = axes[row, channel]
            ax.imshow(np.maximum(image[channel], 1e-6), norm=LogNorm(1e-6, vmax), origin="lower")
            ax.set_title(f"{label}: {title}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        diff = mean_gen[channel] - mean_real[channel]
        limit = max(float(np.abs(diff).max()), 1e-6)
        ax = axes[2, channel]
        ax.imshow(
            diff, cmap="RdBu_r", norm=SymLogNorm(1e-4, vmin=-limit, vmax=limit), origin="lower"
        )
        ax.set_title(f"generated - real: {title}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    return save_figure(figure, out / "average_images.png")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _table_rows(all_metrics: dict[str, dict[str, Any]]) -> list[list[str]]:
    first = next(iter(all_metrics.values()))
    rows = []
    for name in first["w1"]:
        row = [f"W1 {name}"]
        for metrics in all_metrics.values():
            entry = metrics["w1"].get(name, {})
            row.append(
                f"{_fmt(entry.get('w1'))} ± {_fmt(entry.get('w1_err'))} "
                f"(floor {_fmt(entry.get('floor'))}, x{_fmt(entry.get('ratio'))})"
            )
        rows.append(row)
    rows.append(
        ["FPD"]
        + [
            f"{_fmt(m['fpd']['fpd'])} (floor {_fmt(m['fpd']['floor'])})"
            for m in all_metrics.values()
        ]
    )
    rows.append(
        ["FPD vs real as represented"]
        + [
            f"{_fmt(m['vs_represented']['fpd']['fpd'])} "
            f"(floor {_fmt(m['vs_represented']['fpd']['floor'])})"
            if "vs_represented" in m
            else "-"
            for m in all_metrics.values()
        ]
    )
    rows.append(
        ["classifier AUC, observables vs real as represented"]
        + [
            f"{_fmt(m['vs_represented']['classifier_observables']['auc'])} ± "
            f"{_fmt(m['vs_represented']['classifier_observables']['auc_err'])}"
            if "vs_represented" in m
            else "-"
            for m in all_metrics.values()
        ]
    )
    for key, label in (
        ("classifier_observables", "classifier AUC, observables"),
        ("classifier_low_level", "classifier AUC, representation vectors"),
    ):
        rows.append(
            [label]
            + [
                f"{_fmt(m[key]['auc'])} ± {_fmt(m[key]['auc_err'])}" if key in m else "-"
                for m in all_metrics.values()
            ]
        )
    for label in ("real", "generated"):
        rows.append(
            [f"quark/gluon AUC, {label} jets"]
            + [
                _fmt(m.get("quark_gluon_auc", {}).get(label, {}).get("auc", "-"))
                for m in all_metrics.values()
            ]
        )
    return rows


def write_report(
    out_dir: str | os.PathLike,
    metrics: dict[str, Any],
    arrays: dict[str, np.ndarray],
    *,
    run_dir: Path | None = None,
    compare: dict[str, Any] | None = None,
) -> Path:
    """Write ``metrics.json``, the PNGs and ``index.html`` into ``out_dir``; return the HTML."""
    from tfjetflows.evaluation.plots import plot_jet_grid, plot_training_curves

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"model": metrics} if compare is None else {"model": metrics, "compare": compare}
    atomic_write_text(out / "metrics.json", json.dumps(payload, indent=2, default=float))
    pictures = _histograms(out, arrays)
    pictures.append(_average_images(out, arrays["real_images"], arrays["generated_images"]))
    pictures.append(
        plot_jet_grid(out / "samples.png", arrays["generated_images"], arrays["real_images"])
    )
    if run_dir is not None and (run_dir / "history.csv").is_file():
        pictures.append(plot_training_curves(run_dir / "history.csv", out / "training_curves.png"))
    columns = {metrics["model"]: metrics}
    if compare is not None:
        columns[compare["model"]] = compare
    header = "".join(f"<th>{html.escape(name)}</th>" for name in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>"
        for row in _table_rows(columns)
    )
    images = "".join(
        f'<figure><img src="{html.escape(p.name)}" alt="{html.escape(p.stem)}">'
        f"<figcaption>{html.escape(p.stem)}</figcaption></figure>"
        for p in pictures
    )
    note = (
        "the model's own held-out split"
        if metrics["real_is_models_heldout_split"]
        else "the jets given with --data (not the model's own split)"
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>tfjetflows report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px}}
figure{{display:inline-block;margin:6px}}img{{max-width:420px}}</style></head><body>
<h1>tfjetflows report</h1>
<p>{metrics["generated_jets"]} generated jets against {metrics["real_jets"]} real jets from {note}.
W1: Wasserstein-1 distance with its bootstrap error, next to the real-vs-real floor (two halves
of the real jets) and the ratio to it. FPD: Fréchet distance on the standardised observables.
Classifier AUC: 0.5 means generated and real jets cannot be told apart. "As represented":
real jets decoded from their own representation (top-K hits per channel), the best a flow
on that representation can reach; the gap to the plain figures is the representation's.</p>
<table><tr><th>figure</th>{header}</tr>{body}</table>
<h2>Plots</h2>{images}
</body></html>
"""
    return atomic_write_text(out / "index.html", page)
