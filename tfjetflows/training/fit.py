"""Fit orchestration: from a config to a trained, checkpointed and exported flow.

:func:`fit` is what ``tfjf fit`` runs. In order: open (or reopen, to resume) and lock the run
folder, copy the console into ``output.log``, write the resolved config and the installed
packages, count the jets that pass the selection and fit the preprocessing on a sample of them,
build and compile the flow, restore the last checkpoint when resuming, train with Keras
``fit`` and the callbacks (NaN guard, atomic checkpoints, learning-rate logging, CSV history,
early stopping, W&B), then evaluate on the held-out jets, draw a picture of sampled jets and
export the SavedModel (also copied to ``saved_models/NAME``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from tfjetflows.atomic import atomic_path, atomic_write_text, staged_dir
from tfjetflows.config import Config, ConfigError, build_from_section, config_to_dict

__all__ = [
    "FLOWS",
    "FitResult",
    "TrainingCallbacks",
    "build_flow",
    "build_representation",
    "evaluate_split",
    "finish_run",
    "fit",
    "resolve_data",
    "train_epochs",
    "training_callbacks",
]

log = logging.getLogger("tfjetflows.training")


def _flows() -> dict[str, Any]:
    from tfjetflows.flows.maf import MAF

    flows: dict[str, Any] = {"maf": MAF}
    try:
        from tfjetflows.flows.bnaf import BNAF
    except ImportError:
        return flows
    flows["bnaf"] = BNAF
    return flows


FLOWS = _flows


def resolve_data(files: Sequence[str]) -> list[Path]:
    """Return the Parquet files named by ``files``, or the built-in synthetic data if empty."""
    from tfjetflows.data.builtin import builtin_data
    from tfjetflows.data.reader import resolve_paths

    if files:
        return resolve_paths(list(files))
    return resolve_paths([builtin_data()])


def build_representation(config: Config) -> Any:
    """Build the representation of ``config`` (keys checked against its constructor)."""
    from tfjetflows.data.representations import REPRESENTATIONS

    return build_from_section(
        REPRESENTATIONS, config.representation, f"{config.source}: section 'representation'"
    )


def build_flow(
    config: Config, *, event_size: int, context_size: int, preprocessing: Mapping | None
) -> Any:
    """Build the flow of ``config`` for vectors of ``event_size`` and ``context_size``."""
    return build_from_section(
        FLOWS(),
        config.model,
        f"{config.source}: section 'model'",
        event_size=event_size,
        context_size=context_size,
        preprocessing=preprocessing,
    )


@dataclass
class FitResult:
    """What a fit produced and measured."""

    run_dir: Path
    saved_model: Path | None = None
    saved_model_copy: Path | None = None
    sample_png: Path | None = None
    curves_png: Path | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    nan_step: int | None = None
    epochs_done: int = 0
    is_chief: bool = True  # False: a multi-worker run's other worker (it wrote nothing)


def _learning_rate(config: Config, total_steps: int) -> Any:
    import keras

    training = config.training
    if training.lr_schedule in ("constant", "plateau"):
        return training.learning_rate
    if training.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            training.learning_rate, decay_steps=max(total_steps, 1)
        )
    raise ConfigError(
        f"{config.source}: training.lr_schedule must be 'cosine', 'constant' or 'plateau', "
        f"got {training.lr_schedule!r}"
    )


def _inputs(batch: Mapping[str, Any], conditions: Sequence[str]) -> Any:
    return batch if conditions else batch["x"]


def evaluate_split(
    model: Any, dataset: Any, steps: int, representation: Any, conditions: Sequence[str]
) -> dict[str, float]:
    """Return held-out figures: NLL per jet with its standard error, nats/dim and bits/dim.

    ``nll`` is of the representation vector in data units; ``jet_nll`` subtracts the known
    density of the noise that fills empty slots, so it is the NLL of the jet itself.
    """
    import tensorflow as tf

    @tf.function
    def scores(x: tf.Tensor, context: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        log_prob = model.log_prob(x, context=context if conditions else None, training=False)
        return log_prob, log_prob - representation.noise_log_prob(x)

    values, jet_values = [], []
    for batch in dataset.take(steps):
        log_prob, jet_log_prob = scores(batch["x"], batch["context"])
        values.append(log_prob.numpy())
        jet_values.append(jet_log_prob.numpy())
    nll = -np.concatenate(values).astype(np.float64)
    jet_nll = -np.concatenate(jet_values).astype(np.float64)
    dim = representation.dim
    return {
        "jets": int(len(nll)),
        "nll": float(nll.mean()),
        "nll_stderr": float(nll.std(ddof=1) / math.sqrt(len(nll))) if len(nll) > 1 else 0.0,
        "nats_per_dim": float(nll.mean() / dim),
        "bits_per_dim": float(nll.mean() / dim / math.log(2.0)),
        "jet_nll": float(jet_nll.mean()),
        "finite_fraction": float(np.isfinite(nll).mean()),
    }


def gaussian_baseline(
    preprocessing: Any, train_sample: np.ndarray, dataset: Any, steps: int, dim: int
) -> dict[str, float]:
    """NLL of a diagonal Gaussian fitted in the preprocessed space (same units as the flow)."""
    import tensorflow as tf

    z_train = preprocessing.inverse(tf.constant(train_sample)).numpy().astype(np.float64)
    mean, std = z_train.mean(axis=0), np.maximum(z_train.std(axis=0), 1e-6)
    nll = []
    for batch in dataset.take(steps):
        x = batch["x"]
        z = preprocessing.inverse(x).numpy().astype(np.float64)
        ildj = preprocessing.inverse_log_det_jacobian(x, event_ndims=1).numpy()
        log_normal = -0.5 * (((z - mean) / std) ** 2 + np.log(2 * np.pi)) - np.log(std)
        nll.append(-(log_normal.sum(axis=1) + ildj))
    values = np.concatenate(nll)
    return {
        "nll": float(values.mean()),
        "nats_per_dim": float(values.mean() / dim),
        "bits_per_dim": float(values.mean() / dim / math.log(2.0)),
    }


def _real_images(split: Any, config: Config, n: int) -> np.ndarray | None:
    """The first ``n`` held-out real jets (images as read)."""
    from tfjetflows.data.pipeline import _selected_with_split

    parts, found = [], 0
    for batch, keep in _selected_with_split(
        split.paths,
        split.rows_per_file,
        config.selection,
        config.data,
        config.seed,
        want_validation=True,
        row_limits=split.row_limits,  # the same max_jets cap the training used
    ):
        parts.append(batch.images[keep][: n - found])
        found += len(parts[-1])
        if found >= n:
            break
    return np.concatenate(parts) if parts else None


def sample_quality(
    draw: Any, representation: Any, real: np.ndarray, threshold: float, *, batch: int = 250
) -> dict[str, Any]:
    """W1 between sampled and held-out jets of each channel's hit multiplicity and energy sum.

    Real jets are compared twice: as read, and as the representation sees them
    (``decode(encode(jet))``, i.e. truncated to the top-K hits). The second is what a perfect
    flow could reach, so the difference between the two is the representation's share.
    """
    import tensorflow as tf

    from tfjetflows.evaluation.metrics import basic_observables, observable_distances

    channels = list(getattr(representation, "channels", ["tracks", "ecal", "hcal"]))
    generated = []
    for k, start in enumerate(range(0, len(real), batch)):
        size = min(batch, len(real) - start)
        vectors = draw(size, tf.constant([17, k], tf.int32))
        generated.append(representation.decode(vectors).numpy())
    sampled = basic_observables(np.concatenate(generated), channels, threshold)
    heldout = basic_observables(real, channels, threshold)
    seen = representation.decode(representation.encode(real, {}, np.random.default_rng(0)))
    represented = basic_observables(seen.numpy(), channels, threshold)
    return {
        "jets": len(real),
        "w1_vs_heldout": observable_distances(sampled, heldout),
        "w1_vs_heldout_as_represented": observable_distances(sampled, represented),
        "heldout_mean": {k: float(v.mean()) for k, v in heldout.items()},
        "generated_mean": {k: float(v.mean()) for k, v in sampled.items()},
    }


def _trim_history(path: Path, epochs: int) -> None:
    """Keep only the rows of ``history.csv`` for the first ``epochs`` epochs (the checkpoint's).

    A resumed fit appends the rows of the epochs it (re)does; rows of an epoch that was finished
    but not checkpointed before a kill would otherwise appear twice. No row left: no file.
    """
    import csv

    from tfjetflows.atomic import atomic_write_text

    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    if not lines:
        return
    width = len(next(csv.reader(lines[:1])))
    kept = [
        line
        for line, row in zip(lines[1:], csv.reader(lines[1:]), strict=True)
        if len(row) == width and row[0].isdigit() and int(row[0]) < epochs
    ]
    if kept:
        atomic_write_text(path, lines[0] + "".join(kept))
    else:
        path.unlink()


def _finite_or_none(value: Any) -> Any:
    """Replace NaN/inf by None, recursively, so the JSON is strict (no NaN/Infinity tokens)."""
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _save_atomically(model: Any, path: Path) -> Path:
    """``model.save`` to a temporary name beside ``path``, then rename."""
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)
    return Path(path)


class TrainingCallbacks(NamedTuple):
    """The callbacks of a training, in order, and the two whose results ``fit`` reads."""

    callbacks: list[Any]
    nan_guard: Any
    speed: Any


def training_callbacks(
    config: Config, run: Any, *, has_validation: bool, resume: bool
) -> TrainingCallbacks:
    """The callbacks every training in a run folder uses, in order.

    Steps/s timer, NaN guard (restores the last good weights), learning-rate logging, CSV
    history, the plateau schedule (``training.lr_schedule: plateau``), atomic checkpoints and
    early stopping. The history row of an epoch is written before its checkpoint: a run killed
    between the two redoes that epoch when resumed, and :func:`_trim_history` drops the row
    written twice.
    """
    import keras

    from tfjetflows.training.callbacks import (
        AtomicCheckpoint,
        LearningRateLogger,
        NanGuard,
        TrainingSpeed,
    )

    monitor = "val_loss" if has_validation else "loss"
    nan_guard = NanGuard()
    speed = TrainingSpeed()
    callbacks: list[Any] = [
        speed,
        nan_guard,
        LearningRateLogger(),
        keras.callbacks.CSVLogger(str(run.history_csv), append=resume),
    ]
    if config.training.lr_schedule == "plateau":
        # after the CSV row (which shows the rate the epoch used), before the checkpoint (which
        # stores the halved rate); its patience counter restarts on resume
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor=monitor, factor=0.5, patience=config.training.plateau_patience
            )
        )
    callbacks.append(AtomicCheckpoint(run.checkpoints_dir, monitor=monitor))
    if config.training.early_stopping_patience:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor=monitor, patience=config.training.early_stopping_patience
            )
        )
    return TrainingCallbacks(callbacks, nan_guard, speed)


def train_epochs(
    model: Any,
    train: Any,
    validation: Any,
    datasets: Any,
    callbacks: list[Any],
    initial_epoch: int,
    epochs: int,
    verbose: Any,
    wandb_logger: Any = None,
) -> int:
    """Run ``model.fit`` from ``initial_epoch`` to ``epochs`` (inside the W&B run, if any).

    Returns:
        The number of epochs done in all (``epochs`` when nothing was left to do).
    """
    with wandb_logger if wandb_logger is not None else contextlib.nullcontext():
        if epochs <= initial_epoch:
            return epochs
        model.fit(
            train,
            epochs=epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=datasets.train_steps,
            validation_data=validation,
            validation_steps=datasets.validation_steps or None,
            callbacks=callbacks,
            verbose=verbose,
            shuffle=False,  # the pipeline shuffles, reproducibly per epoch
        )
    return initial_epoch + len(model.history.epoch)


def fit(
    config: Config,
    *,
    run_dir: str | Path,
    resume: bool = False,
    saved_models_dir: str | Path | None = "saved_models",
    verbose: int | str = "auto",
) -> FitResult:
    """Train the flow described by ``config`` in ``run_dir``; see the module docstring.

    Args:
        config: the validated config (``config.data.files`` empty: built-in synthetic data).
        run_dir: the run folder; it must not exist (or be empty) unless ``resume``.
        resume: continue the run in ``run_dir`` from its last checkpoint.
        saved_models_dir: where a copy of the SavedModel goes (``NAME`` = run folder name);
            None: no copy.
        verbose: Keras' progress-bar setting.

    Returns:
        A :class:`FitResult` with the paths written and the held-out figures.

    ``distribute.strategy`` chooses the ``tf.distribute`` strategy
    (:mod:`tfjetflows.training.distribute`). In a multi-worker run only the chief uses
    ``run_dir``; every other worker trains in step with it from a temporary folder that it
    removes at the end, skips evaluation and export, and returns ``is_chief=False``.
    """
    import tempfile

    from tfjetflows.training.distribute import (
        check_global_batch,
        make_strategy,
        strategy_kind,
        training_role,
    )
    from tfjetflows.training.run_dir import RunDirectory

    role = training_role(config)  # checks distribute.strategy before anything is written
    # first TensorFlow work of the fit: a multi-worker strategy must precede all other
    strategy = make_strategy(strategy_kind(config, role=role))
    check_global_batch(config, strategy)
    if not role.is_chief:
        with tempfile.TemporaryDirectory(prefix=f"tfjf-{role.name}-") as scratch:
            run = RunDirectory.create(Path(scratch) / "run", resume=False)
            result = _fit_locked(config, run, resume, None, verbose, strategy=strategy)
        result.run_dir = Path(run_dir)
        return result
    run = RunDirectory.create(run_dir, resume=resume)
    with run.locked(), run.tee_output():
        return _fit_locked(config, run, resume, saved_models_dir, verbose, strategy=strategy)


def _fit_locked(
    config: Config,
    run: Any,
    resume: bool,
    saved_models_dir: Any,
    verbose: Any,
    *,
    strategy: Any = None,
) -> FitResult:
    import keras
    import tensorflow as tf

    from tfjetflows.data.pipeline import build_datasets, scan_split
    from tfjetflows.data.preprocessing import fit_preprocessing
    from tfjetflows.training.callbacks import (
        WandbLogger,
        read_checkpoint_state,
        restore_checkpoint,
    )
    from tfjetflows.training.distribute import (
        broadcast_from_chief,
        check_global_batch,
        chief_values,
        clip_global_gradient,
        describe_strategy,
        num_workers,
    )

    strategy = strategy if strategy is not None else tf.distribute.get_strategy()
    chief = bool(strategy.extended.should_checkpoint)
    result = FitResult(run_dir=run.path, is_chief=chief)
    run.write_config(config_to_dict(config))
    run.write_requirements()
    devices = [d.name for d in tf.config.list_logical_devices()]
    print(f"run folder: {run.path}   devices: {', '.join(devices)}", flush=True)
    print(f"distribute: {describe_strategy(strategy)}", flush=True)
    if num_workers(strategy) > 1:
        print(
            "input: sharded by data (the datasets are Python generators, with no files for "
            "tf.data to shard): every worker reads all jets and keeps its share of each batch",
            flush=True,
        )
    keras.utils.set_random_seed(config.seed)

    paths = resolve_data(config.data.files)
    representation = build_representation(config)
    split = scan_split(paths, config.selection, representation, config.data, config.seed)
    print(
        f"data: {len(paths)} files, {split.scanned} jets scanned, {split.kept} pass the "
        f"selection ({split.train} train, {split.validation} validation); "
        f"vector of {representation.dim} dims",
        flush=True,
    )
    check_global_batch(config, strategy, validation_jets=split.validation)
    preprocessing = fit_preprocessing(representation, split.sample)
    conditions = list(config.data.conditions)
    with strategy.scope():
        model = build_flow(
            config,
            event_size=representation.dim,
            context_size=len(conditions),
            preprocessing=preprocessing.get_config(),
        )
    checkpoint_path = run.checkpoints_dir / "last.weights.h5"
    resuming = resume and checkpoint_path.exists()  # a non-chief worker has no checkpoint
    initial_epoch = read_checkpoint_state(checkpoint_path).epoch if resuming else 0
    initial_epoch = int(chief_values(strategy, [initial_epoch])[0])  # the chief's decides
    epochs = config.training.epochs
    datasets = build_datasets(
        paths,
        config.selection,
        representation,
        config.data,
        config.seed,
        initial_epoch=initial_epoch,
        split=split,
    )
    total_steps = epochs * datasets.train_steps
    with strategy.scope():
        optimizer = keras.optimizers.Adam(
            learning_rate=_learning_rate(config, total_steps),
            clipnorm=config.training.clipnorm,
            amsgrad=config.training.amsgrad,
            use_ema=config.training.ema_momentum is not None,
            ema_momentum=config.training.ema_momentum or 0.99,
        )
        if strategy.num_replicas_in_sync > 1:
            clip_global_gradient(optimizer)  # Keras would clip each replica's share
        model.compile(
            optimizer=optimizer,
            jit_compile=config.training.jit_compile,
            steps_per_execution=config.training.steps_per_execution,
        )
        # build the weights on a few sampled training vectors (no pass over the input pipeline)
        model(
            _inputs(
                {"x": split.sample[:2], "context": split.condition_context(conditions)[:2]},
                conditions,
            )
        )
        optimizer.build(model.trainable_variables)
    if resuming:  # outside the scope: loading makes throwaway variables, on the chief alone
        state = restore_checkpoint(model, checkpoint_path)
        print(f"resumed from {checkpoint_path}: epoch {state.epoch}, step {state.global_step}")
    # multi-worker: the others take the chief's (restored) weights and optimizer state
    broadcast_from_chief(strategy, [*model.weights, *optimizer.variables])

    if resume:
        _trim_history(run.history_csv, initial_epoch)
    train = datasets.train
    validation = datasets.validation
    if not conditions:
        train = train.map(lambda batch: batch["x"])
        validation = validation.map(lambda batch: batch["x"]) if validation is not None else None
    if validation is not None:
        # Under a tf.distribute strategy Keras 3.15 reuses the exhausted iterator of a finite
        # validation set in the next epoch (StopIteration); repeated, each pass still takes
        # validation_steps batches from a fresh iterator
        validation = validation.repeat()

    callbacks, nan_guard, speed = training_callbacks(
        config, run, has_validation=validation is not None, resume=resume
    )
    can_sample = bool(getattr(model, "can_sample", True))
    context_bank = split.condition_context(conditions) if conditions else None

    @tf.function
    def sample_fn(n: int, seed: tf.Tensor) -> tf.Tensor:
        context = None if context_bank is None else tf.constant(context_bank[:n])
        return model.sample(n, seed=seed, context=context)

    wandb_logger = None
    if config.wandb.enabled and chief:

        def sample_figure() -> Any:
            from tfjetflows.evaluation.plots import jet_grid_figure

            vectors = sample_fn(config.wandb.sample_images, tf.constant([1, 2]))
            return jet_grid_figure(representation.decode(vectors).numpy(), n_jets=4)

        wandb_logger = WandbLogger(
            config.wandb.project,
            config=config_to_dict(config),
            run_dir=run.path,
            mode=config.wandb.mode,
            name=run.path.name,
            sample_images_fn=sample_figure if can_sample else None,
        )
        callbacks.append(wandb_logger)

    print(
        f"training {type(model).__name__}: {model.count_params()} parameters, epochs "
        f"{initial_epoch + 1}-{epochs}, {datasets.train_steps} steps per epoch",
        flush=True,
    )
    result.epochs_done = train_epochs(
        model, train, validation, datasets, callbacks, initial_epoch, epochs, verbose, wandb_logger
    )
    result.nan_step = nan_guard.bad_step
    result.metrics["training_speed"] = speed.summary(datasets.train_steps, config.data.batch_size)
    if not chief:
        return result  # evaluation and export are the chief's (they run no collective)

    if datasets.validation is not None:
        result.metrics["validation"] = evaluate_split(
            model, datasets.validation, datasets.validation_steps, representation, conditions
        )
        result.metrics["gaussian_baseline"] = gaussian_baseline(
            preprocessing,
            split.sample,
            datasets.validation,
            datasets.validation_steps,
            representation.dim,
        )
    n_quality = min(config.training.evaluation_samples, split.validation)
    if can_sample and n_quality > 0 and representation.decodes_images:
        real = _real_images(split, config, n_quality)
        if real is not None:
            start = time.perf_counter()
            result.metrics["sample_quality"] = sample_quality(
                sample_fn, representation, real, config.selection.threshold
            )
            result.metrics["sample_quality"]["seconds"] = time.perf_counter() - start
    result.metrics["data"] = datasets.summary()
    return finish_run(
        result,
        run,
        model=model,
        draw=sample_fn if can_sample else None,
        representation=representation,
        split=split,
        config=config,
        saved_models_dir=saved_models_dir,
    )


def finish_run(
    result: FitResult,
    run: Any,
    *,
    model: Any,
    draw: Any,
    representation: Any,
    split: Any,
    config: Config,
    saved_models_dir: str | Path | None,
) -> FitResult:
    """Write what a finished training leaves in its run folder, and the SavedModel.

    ``metrics.json`` (``result.metrics``), the training curves, a picture of four jets drawn
    with ``draw(n, seed)`` beside four held-out jets (no picture when ``draw`` is None),
    ``model.keras``, ``condition_sample.npy`` and the SavedModel, copied to
    ``saved_models_dir/NAME`` unless that is None.
    """
    import tensorflow as tf

    from tfjetflows.evaluation.plots import plot_jet_grid, plot_training_curves
    from tfjetflows.training.export_run import CONDITION_SAMPLE, MODEL_FILE, export_run

    conditions = list(config.data.conditions)
    atomic_write_text(
        run.path / "metrics.json", json.dumps(_finite_or_none(result.metrics), indent=2)
    )
    if run.history_csv.exists():
        result.curves_png = plot_training_curves(
            run.history_csv, run.plots_dir / "training_curves.png"
        )
    if draw is not None:
        result.sample_png = plot_jet_grid(
            run.plots_dir / "samples.png",
            representation.decode(draw(4, tf.constant([0, 0]))).numpy(),
            _real_images(split, config, 4),
            threshold=config.selection.threshold,
        )
    _save_atomically(model, run.path / MODEL_FILE)
    with atomic_path(run.path / CONDITION_SAMPLE, suffix=".npy") as tmp:
        np.save(tmp, split.condition_sample(conditions), allow_pickle=False)
    result.saved_model = export_run(run.path, run.saved_model_dir)
    if saved_models_dir is not None:
        copy = Path(saved_models_dir) / run.path.name
        with staged_dir(copy, replace=True) as staging:
            shutil.copytree(result.saved_model, staging, dirs_exist_ok=True)
        result.saved_model_copy = copy
    return result
