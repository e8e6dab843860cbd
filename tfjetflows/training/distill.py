"""``tfjf distill``: train a one-pass IAF student to reproduce a trained MAF teacher.

The student run is a run folder like a fit's (config, requirements, ``output.log``, history,
atomic checkpoints with optimizer state, ``--resume``, W&B, plots, SavedModel), plus
``teacher.keras``, a copy of the teacher, so the folder stands alone. The config is the teacher
run's own (data, selection, representation, seed) with the sections of the distillation config
on top: ``model`` (``kind: iaf``; keys not given are the teacher's, so by default the student
has the teacher's blocks), ``training``, ``distill`` and ``wandb``.

The exported SavedModel samples with the student (one network pass per block) and answers
``log_prob`` / ``jet_log_prob`` with the teacher: the same signatures as the teacher's, so it is
a drop-in replacement. The loss is in :mod:`tfjetflows.flows.distillation`.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tfjetflows.atomic import atomic_path
from tfjetflows.config import (
    Config,
    ConfigError,
    build_from_section,
    config_from_dict,
    config_to_dict,
    parse_overrides,
)
from tfjetflows.errors import ModelError
from tfjetflows.training.export_run import TEACHER_FILE

__all__ = [
    "DISTILL_SECTIONS",
    "default_distill_config_path",
    "distill",
    "distill_config",
]

DISTILL_SECTIONS = ("model", "training", "distill", "wandb")


def default_distill_config_path() -> Path:
    """Return the shipped distillation config, ``configs/distill_iaf.yaml``."""
    return Path(__file__).resolve().parents[2] / "configs" / "distill_iaf.yaml"


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return raw


def distill_config(
    teacher_run: str | Path, path: str | Path | None = None, overrides: Iterable[str] = ()
) -> Config:
    """Merge the teacher run's config with a distillation config and ``--set`` overrides.

    Args:
        teacher_run: the teacher's run folder (its ``config.yaml`` gives data and representation).
        path: the distillation YAML (sections ``model``, ``training``, ``distill``, ``wandb``);
            None reads ``configs/distill_iaf.yaml``.
        overrides: ``section.key=value`` strings, applied last.

    Raises:
        ConfigError: a section the distillation cannot change, or any invalid key.
    """
    teacher_config = Path(teacher_run) / "config.yaml"
    if not teacher_config.is_file():
        raise ModelError(f"{teacher_run}: no config.yaml; is it a tfjf fit run folder?")
    merged = _read_yaml(teacher_config)
    path = Path(path) if path is not None else default_distill_config_path()
    raw = _read_yaml(path)
    for section in raw:
        if section not in DISTILL_SECTIONS:
            raise ConfigError(
                f"{path}: section {section!r} cannot be set for a distillation (the data, "
                f"selection and representation are the teacher's); allowed: "
                f"{', '.join(DISTILL_SECTIONS)}"
            )
    teacher_model = {k: v for k, v in (merged.get("model") or {}).items() if k != "kind"}
    merged["model"] = {**teacher_model, "kind": "iaf", **(raw.get("model") or {})}
    merged["training"] = raw.get("training") or {}
    merged["distill"] = raw.get("distill") or {}
    merged["wandb"] = {**(merged.get("wandb") or {}), **(raw.get("wandb") or {})}
    for keys, value in parse_overrides(overrides):
        node = merged
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {'.'.join(keys)}: {key!r} is not a section")
        node[keys[-1]] = value
    return config_from_dict(merged, str(path))


def _students() -> dict[str, Any]:
    from tfjetflows.flows.iaf import IAF

    return {"iaf": IAF}


def _load_teacher(path: Path) -> Any:
    import keras

    import tfjetflows.flows.maf  # noqa: F401 - registers the serializable classes
    from tfjetflows.flows.maf import MAF

    teacher = keras.saving.load_model(path, safe_mode=True)
    if not isinstance(teacher, MAF):
        raise ModelError(
            f"{path}: the teacher is a {type(teacher).__name__}; distillation needs a MAF "
            "(a BNAF cannot sample, so there is nothing to distil)"
        )
    return teacher


def _block_phase_callback(blockwise_epochs: int) -> Any:
    import keras

    class BlockwisePhase(keras.callbacks.Callback):
        """Block-by-block terms on for the first ``blockwise_epochs`` epochs, then off."""

        def on_epoch_begin(self, epoch: int, logs: Mapping | None = None) -> None:
            self.model.block_weight.assign(1.0 if epoch < blockwise_epochs else 0.0)

    return BlockwisePhase()


def distill(
    teacher_run: str | Path,
    config: Config,
    *,
    run_dir: str | Path,
    resume: bool = False,
    saved_models_dir: str | Path | None = "saved_models",
    verbose: int | str = "auto",
) -> Any:
    """Distil the MAF of ``teacher_run`` into an IAF student in ``run_dir``.

    Args:
        teacher_run: the finished fit run folder of the teacher (``model.keras``).
        config: from :func:`distill_config` (or the student run's own ``config.yaml``).
        run_dir: the student's run folder; new (or empty) unless ``resume``.
        resume: continue from the last checkpoint in ``run_dir``.
        saved_models_dir: where a copy of the SavedModel goes (None: no copy).
        verbose: Keras' progress-bar setting.

    Returns:
        A :class:`~tfjetflows.training.fit.FitResult`.
    """
    from tfjetflows.training.export_run import MODEL_FILE
    from tfjetflows.training.run_dir import RunDirectory

    teacher_run = Path(teacher_run)
    resuming = resume and (Path(run_dir) / TEACHER_FILE).is_file()
    if not resuming and not (teacher_run / MODEL_FILE).is_file():
        raise ModelError(
            f"{teacher_run}: no {MODEL_FILE}; distil a finished fit (tfjf fit ... first)"
        )
    run = RunDirectory.create(run_dir, resume=resume)
    with run.locked(), run.tee_output():
        return _distill_locked(teacher_run, config, run, resume, saved_models_dir, verbose)


def _distill_locked(
    teacher_run: Path,
    config: Config,
    run: Any,
    resume: bool,
    saved_models_dir: Any,
    verbose: Any,
) -> Any:
    import keras
    import tensorflow as tf

    from tfjetflows.data.pipeline import build_datasets, scan_split
    from tfjetflows.flows.distillation import Distillation, copy_batch_norms
    from tfjetflows.training.callbacks import (
        WandbLogger,
        read_checkpoint_state,
        restore_checkpoint,
    )
    from tfjetflows.training.export_run import MODEL_FILE
    from tfjetflows.training.fit import (
        FitResult,
        _learning_rate,
        _real_images,
        _trim_history,
        build_representation,
        finish_run,
        resolve_data,
        sample_quality,
        train_epochs,
        training_callbacks,
    )

    result = FitResult(run_dir=run.path)
    run.write_config(config_to_dict(config))
    run.write_requirements()
    keras.utils.set_random_seed(config.seed)
    teacher_copy = run.path / TEACHER_FILE
    if not teacher_copy.is_file():
        with atomic_path(teacher_copy, suffix=".keras") as tmp:
            shutil.copyfile(teacher_run / MODEL_FILE, tmp)
    teacher = _load_teacher(teacher_copy)
    print(f"run folder: {run.path}   teacher: {teacher_run}", flush=True)

    paths = resolve_data(config.data.files)
    representation = build_representation(config)
    if representation.dim != teacher.event_size:
        raise ModelError(
            f"{teacher_run}: the teacher has event_size {teacher.event_size} but the config's "
            f"representation gives {representation.dim} dims"
        )
    split = scan_split(paths, config.selection, representation, config.data, config.seed)
    conditions = list(config.data.conditions)
    student = build_from_section(
        _students(),
        config.model,
        f"{config.source}: section 'model'",
        event_size=teacher.event_size,
        context_size=teacher.context_size,
        preprocessing=teacher._preprocessing_config,
    )
    copy_batch_norms(teacher, student)
    model = Distillation(
        teacher,
        student,
        data_weight=config.distill.data_weight,
        latent_weight=config.distill.latent_weight,
        params_weight=config.distill.params_weight,
        seed=config.seed,
    )
    checkpoint_path = run.checkpoints_dir / "last.weights.h5"
    resuming = resume and checkpoint_path.exists()
    initial_epoch = read_checkpoint_state(checkpoint_path).epoch if resuming else 0
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
    model.compile(
        optimizer=keras.optimizers.Adam(
            learning_rate=_learning_rate(config, epochs * datasets.train_steps),
            clipnorm=config.training.clipnorm,
            amsgrad=config.training.amsgrad,
        ),
        jit_compile=config.training.jit_compile,
        steps_per_execution=config.training.steps_per_execution,
    )
    context_bank = split.condition_context(conditions)
    warm = {"x": split.sample[:2], "context": context_bank[:2]}
    model(warm if conditions else warm["x"])
    if resuming:
        state = restore_checkpoint(model, checkpoint_path)
        print(f"resumed from {checkpoint_path}: epoch {state.epoch}, step {state.global_step}")
    if resume:
        _trim_history(run.history_csv, initial_epoch)
    train, validation = datasets.train, datasets.validation
    if not conditions:
        train = train.map(lambda batch: batch["x"])
        validation = validation.map(lambda batch: batch["x"]) if validation is not None else None

    callbacks, nan_guard, speed = training_callbacks(
        config, run, has_validation=validation is not None, resume=resume
    )
    callbacks.insert(0, _block_phase_callback(config.distill.blockwise_epochs))

    @tf.function
    def draw(n: int, seed: tf.Tensor) -> tf.Tensor:
        context = tf.constant(context_bank[:n]) if conditions else None
        return student.sample(n, seed=seed, context=context)

    wandb_logger = None
    if config.wandb.enabled:

        def sample_figure() -> Any:
            from tfjetflows.evaluation.plots import jet_grid_figure

            vectors = draw(config.wandb.sample_images, tf.constant([1, 2]))
            return jet_grid_figure(representation.decode(vectors).numpy(), n_jets=4)

        wandb_logger = WandbLogger(
            config.wandb.project,
            config={**config_to_dict(config), "teacher_run": str(teacher_run)},
            run_dir=run.path,
            mode=config.wandb.mode,
            name=run.path.name,
            sample_images_fn=sample_figure,
        )
        callbacks.append(wandb_logger)

    print(
        f"distilling into {type(student).__name__}: {student.count_params()} parameters, "
        f"epochs {initial_epoch + 1}-{epochs} ({config.distill.blockwise_epochs} block by "
        f"block), {datasets.train_steps} steps per epoch",
        flush=True,
    )
    result.epochs_done = train_epochs(
        model, train, validation, datasets, callbacks, initial_epoch, epochs, verbose, wandb_logger
    )
    result.nan_step = nan_guard.bad_step
    result.metrics["training_speed"] = speed.summary(datasets.train_steps, config.data.batch_size)

    if validation is not None:
        scores = model.evaluate(
            validation, steps=datasets.validation_steps, verbose=0, return_dict=True
        )
        result.metrics["validation"] = {k: float(v) for k, v in scores.items()}
    result.metrics["sampling_speed"] = sampling_speed(teacher, student, context_bank, conditions)
    n_quality = min(config.training.evaluation_samples, split.validation)
    if n_quality > 0 and representation.decodes_images:
        real = _real_images(split, config, n_quality)
        if real is not None:
            result.metrics["sample_quality"] = sample_quality(
                draw, representation, real, config.selection.threshold
            )
    result.metrics["data"] = datasets.summary()
    result.metrics["teacher_run"] = str(teacher_run)
    return finish_run(
        result,
        run,
        model=student,
        draw=draw if representation.decodes_images else None,
        representation=representation,
        split=split,
        config=config,
        saved_models_dir=saved_models_dir,
    )


def sampling_speed(
    teacher: Any,
    student: Any,
    context_bank: np.ndarray,
    conditions: list[str],
    *,
    student_jets: int = 1000,
    teacher_jets: int = 250,
) -> dict[str, float]:
    """Time flow-vector sampling of the student and the teacher inside ``tf.function``.

    Each is traced once, then timed on a second call. The teacher is timed on fewer jets (its
    cost is ``D`` passes per block); jets/s of each and their ratio are returned.
    """
    import tensorflow as tf

    out: dict[str, float] = {}
    for name, model, n in (("student", student, student_jets), ("teacher", teacher, teacher_jets)):
        context = tf.constant(np.resize(context_bank, (n, len(conditions)))) if conditions else None

        @tf.function
        def draw(seed: tf.Tensor, model: Any = model, n: int = n, context: Any = context) -> Any:
            return model.sample(n, seed=seed, context=context)

        draw(tf.constant([0, 1])).numpy()
        start = time.perf_counter()
        draw(tf.constant([0, 2])).numpy()
        seconds = time.perf_counter() - start
        out[f"{name}_jets"] = float(n)
        out[f"{name}_seconds"] = seconds
        out[f"{name}_jets_per_second"] = n / seconds
    out["speedup"] = out["student_jets_per_second"] / out["teacher_jets_per_second"]
    return out
