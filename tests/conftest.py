"""Session fixtures for the end-to-end tests: a few tiny jets and tiny trained runs, made once.

Training is the slow part of the suite, so each trained run here is shared by the tests of
``fit``, the export and the model commands. Everything goes under pytest's temporary folders;
nothing is written into the repository (``saved_models_dir`` points into the session tmp).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

# A MAF small enough to train an epoch in well under a second on 2 CPU cores (51 dims), and no
# sample-quality evaluation after training (trained_run turns it on).
TINY_SETTINGS = (
    "model.blocks=2",
    "model.hidden_units=[16, 16]",
    "data.batch_size=32",
    "representation.hits_per_channel={tracks: 4, ecal: 8, hcal: 4}",
    "training.evaluation_samples=0",
)


@pytest.fixture(scope="session")
def subprocess_env() -> dict[str, str]:
    """Environment for child processes: quiet TensorFlow, W&B offline."""
    return {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
    }


@pytest.fixture(scope="session")
def jet_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of 300 synthetic jets in two DeepFalcon Parquet files (272 train, 28 validation)."""
    from tfjetflows.data.generate import make_data

    folder = tmp_path_factory.mktemp("jets")
    make_data(folder, jets=300, seed=1, files=2)
    return folder


@pytest.fixture(scope="session")
def tiny_settings(jet_data: Path) -> list[str]:
    """``--set`` overrides of the tiny model on :func:`jet_data` (data files included)."""
    return [f"data.files=['{jet_data}']", *TINY_SETTINGS]


@pytest.fixture(scope="session")
def tiny_config(tiny_settings: list[str]) -> Callable[..., object]:
    """Return ``build(*overrides)``: the shipped default config, made tiny, plus ``overrides``."""
    from tfjetflows.config import load_config

    def build(*overrides: str) -> object:
        return load_config(overrides=[*tiny_settings, *overrides])

    return build


def _fit(config: object, root: Path) -> object:
    from tfjetflows.training.fit import fit

    return fit(config, run_dir=root / "run", saved_models_dir=root / "saved_models", verbose=2)


@pytest.fixture(scope="session")
def trained_config(tiny_config: Callable[..., object]) -> object:
    """The config of :func:`trained_run`."""
    return tiny_config(
        "training.epochs=2", "training.lr_schedule=constant", "training.evaluation_samples=28"
    )


@pytest.fixture(scope="session")
def trained_run(trained_config: object, tmp_path_factory: pytest.TempPathFactory):
    """An unconditional run trained 2 epochs at a constant learning rate (a ``FitResult``)."""
    return _fit(trained_config, tmp_path_factory.mktemp("trained"))


@pytest.fixture(scope="session")
def conditional_run(tiny_config: Callable[..., object], tmp_path_factory: pytest.TempPathFactory):
    """A run conditioned on ``[y, pt]``, trained 1 epoch (a ``FitResult``)."""
    config = tiny_config("training.epochs=1", "data.conditions=[y, pt]")
    return _fit(config, tmp_path_factory.mktemp("conditional"))
