"""Export the trained model of a run folder (``tfjf export RUN_DIR``).

A finished fit leaves ``model.keras`` (the flow with its preprocessing), ``config.yaml`` (the
representation and conditions) and ``condition_sample.npy`` (training conditions, drawn from by a
conditional model's ``sample``) in the run folder; this rebuilds the SavedModel from them. A
distillation run also holds ``teacher.keras``: its SavedModel samples with the student
(``model.keras``) and answers ``log_prob`` with the teacher.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tfjetflows.errors import ModelError

__all__ = ["CONDITION_SAMPLE", "MODEL_FILE", "TEACHER_FILE", "export_run", "load_run_model"]

MODEL_FILE = "model.keras"
CONDITION_SAMPLE = "condition_sample.npy"
TEACHER_FILE = "teacher.keras"


def load_run_model(run_dir: str | os.PathLike) -> object:
    """Load the Keras model of a run folder with ``safe_mode`` on."""
    import keras

    import tfjetflows.flows.iaf  # noqa: F401 - registers the serializable classes
    import tfjetflows.flows.maf  # noqa: F401

    run_dir = Path(run_dir)
    path = run_dir / MODEL_FILE
    if not run_dir.is_dir():
        raise ModelError(f"{run_dir}: no such run folder")
    if not path.is_file():
        raise ModelError(
            f"{run_dir}: no {MODEL_FILE}; the fit has not finished (continue it with "
            f"tfjf fit --run-dir {run_dir} --resume)"
        )
    return keras.saving.load_model(path, safe_mode=True)


def export_run(run_dir: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write the SavedModel of ``run_dir`` to ``out`` and return ``out``."""
    from tfjetflows.config import config_to_dict, load_config
    from tfjetflows.export import export_saved_model
    from tfjetflows.training.fit import build_representation

    run_dir = Path(run_dir)
    model = load_run_model(run_dir)
    config = load_config(run_dir / "config.yaml")
    conditions = list(config.data.conditions)
    sample_path = run_dir / CONDITION_SAMPLE
    condition_sample = np.load(sample_path, allow_pickle=False) if sample_path.is_file() else None
    teacher_path = run_dir / TEACHER_FILE
    density_model = None
    if teacher_path.is_file():
        import keras

        density_model = keras.saving.load_model(teacher_path, safe_mode=True)
    return export_saved_model(
        model,
        build_representation(config),
        out,
        conditions=conditions,
        condition_sample=condition_sample,
        metadata={"run": str(run_dir), "config": config_to_dict(config)},
        density_model=density_model,
    )
