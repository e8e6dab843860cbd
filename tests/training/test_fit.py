"""End-to-end tests of ``fit``: the run folder, resuming (in process and after SIGKILL), NaNs."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cli.main import main
from tfjetflows.config import config_to_dict, load_config
from tfjetflows.training.callbacks import read_checkpoint_state
from tfjetflows.training.export_run import load_run_model
from tfjetflows.training.fit import fit

DIM = 4 * 3 + 8 * 3 + 4 * 3 + 3  # (eta, phi, E) per hit plus one multiplicity per channel
TRAIN_STEPS = 272 // 32  # jet_data: 272 training jets, batches of 32
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _history(run_dir: Path) -> dict[str, np.ndarray]:
    with open(run_dir / "history.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {key: np.array([float(row[key]) for row in rows]) for key in rows[0]}


def _weights(run_dir: Path) -> dict[str, np.ndarray]:
    """Weights by path without the model's own name (``maf_3/made_0/...`` in a busy session)."""
    return {w.path.split("/", 1)[1]: np.asarray(w) for w in load_run_model(run_dir).weights}


def _tfjf() -> str:
    candidate = Path(sys.executable).parent / "tfjf"
    found = str(candidate) if candidate.exists() else shutil.which("tfjf")
    if found is None:
        pytest.skip("the tfjf script is not installed")
    return found


# ---- one trained run -------------------------------------------------------------------------


def test_run_folder_records_config_requirements_and_console(trained_run, trained_config):
    run = trained_run.run_dir
    saved = load_config(run / "config.yaml")
    assert config_to_dict(saved) == config_to_dict(trained_config)
    requirements = (run / "requirements.txt").read_text().splitlines()
    names = {line.split("==")[0].lower() for line in requirements}
    assert {"tensorflow", "keras", "tensorflow-probability"} <= names
    assert all("==" in line for line in requirements)
    log = (run / "output.log").read_text()
    for line in ("Epoch 1/2", "Epoch 2/2", f"{TRAIN_STEPS}/{TRAIN_STEPS} - ", "val_loss: "):
        assert line in log
    assert f"vector of {DIM} dims" in log
    assert trained_run.epochs_done == 2
    assert trained_run.nan_step is None


def test_history_has_every_metric_per_epoch(trained_run):
    history = _history(trained_run.run_dir)
    columns = {
        "loss",
        "val_loss",
        "log_prob_mean",
        "log_prob_std",
        "nats_per_dim",
        "bits_per_dim",
        "learning_rate",
    }
    assert columns <= set(history)
    np.testing.assert_array_equal(history["epoch"], [0, 1])
    for key in columns:
        assert np.isfinite(history[key]).all(), key
    # The metrics are the same number in different units.
    np.testing.assert_allclose(history["loss"], -history["log_prob_mean"], rtol=1e-5)
    np.testing.assert_allclose(history["nats_per_dim"], history["loss"] / DIM, rtol=1e-5)
    np.testing.assert_allclose(
        history["bits_per_dim"], history["nats_per_dim"] / math.log(2.0), rtol=1e-5
    )
    np.testing.assert_allclose(history["learning_rate"], [1e-3, 1e-3], rtol=1e-6)
    assert (history["log_prob_std"] > 0).all()


def test_metrics_hold_finite_heldout_nll_and_gaussian_baseline(trained_run):
    metrics = json.loads((trained_run.run_dir / "metrics.json").read_text())
    assert metrics["validation"] == trained_run.metrics["validation"]
    validation, baseline = metrics["validation"], metrics["gaussian_baseline"]
    assert validation["jets"] == 28
    assert validation["finite_fraction"] == 1.0
    for value in (validation["nll"], validation["nll_stderr"], baseline["nll"]):
        assert math.isfinite(value)
    assert validation["nats_per_dim"] == pytest.approx(validation["nll"] / DIM)
    assert baseline["bits_per_dim"] == pytest.approx(baseline["nll"] / DIM / math.log(2.0))
    # Held-out NLL is Keras' last val_loss (the same jets, batch-size weighted mean).
    assert validation["nll"] == pytest.approx(_history(trained_run.run_dir)["val_loss"][-1], 1e-4)
    assert metrics["sample_quality"]["jets"] == 28  # training.evaluation_samples, capped
    assert metrics["data"] == {
        "files": 2,
        "scanned": 300,
        "kept": 300,
        "train": 272,
        "validation": 28,
        "bad_jets_skipped": 0,
    }


def test_checkpoint_model_and_saved_model_are_written(trained_run):
    run = trained_run.run_dir
    state = read_checkpoint_state(run / "checkpoints" / "last.weights.h5")
    assert (state.epoch, state.global_step) == (2, 2 * TRAIN_STEPS)
    model = load_run_model(run)
    assert model.event_size == DIM
    assert all(np.isfinite(np.asarray(w)).all() for w in model.weights)
    assert trained_run.saved_model == run / "saved_model"
    assert (run / "saved_model" / "saved_model.pb").is_file()
    copy = trained_run.saved_model_copy
    assert copy is not None and copy.parent.name == "saved_models" and copy.name == run.name
    assert (copy / "saved_model.pb").read_bytes() == (
        run / "saved_model" / "saved_model.pb"
    ).read_bytes()
    assert not [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]


def test_plots_are_pngs(trained_run):
    plots = sorted(p.name for p in (trained_run.run_dir / "plots").glob("*.png"))
    assert plots == ["samples.png", "training_curves.png"]
    assert trained_run.sample_png.name == "samples.png"
    for name in plots:
        data = (trained_run.run_dir / "plots" / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, name


# ---- resume --------------------------------------------------------------------------------


def test_resumed_training_equals_uninterrupted_training(trained_run, tiny_config, tmp_path):
    """Run A: 2 epochs straight (``trained_run``). Run B: 1 epoch, then resumed to 2.

    A constant learning rate, because a cosine schedule decays over the epochs asked for: run B's
    first fit (1 epoch) decays to 0 within that epoch, so B would legitimately differ from A.
    """
    settings = ("training.lr_schedule=constant",)
    run_b = tmp_path / "b"
    fit(
        tiny_config("training.epochs=1", *settings), run_dir=run_b, saved_models_dir=None, verbose=0
    )
    assert read_checkpoint_state(run_b / "checkpoints" / "last.weights.h5").epoch == 1
    resumed = fit(
        tiny_config("training.epochs=2", *settings),
        run_dir=run_b,
        resume=True,
        saved_models_dir=None,
        verbose=0,
    )
    assert resumed.epochs_done == 2
    assert "resumed from" in (run_b / "output.log").read_text()
    history_a, history_b = _history(trained_run.run_dir), _history(run_b)
    assert set(history_a) == set(history_b)
    for key in history_a:
        np.testing.assert_allclose(history_b[key], history_a[key], rtol=1e-5, err_msg=key)
    weights_a, weights_b = _weights(trained_run.run_dir), _weights(run_b)
    assert weights_a.keys() == weights_b.keys()
    for key in weights_a:
        np.testing.assert_allclose(
            weights_b[key], weights_a[key], rtol=1e-5, atol=1e-7, err_msg=key
        )
    assert resumed.metrics["validation"]["nll"] == pytest.approx(
        trained_run.metrics["validation"]["nll"], rel=1e-5
    )


def test_sigkill_then_resume_finishes_the_run(tiny_settings, subprocess_env, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    checkpoint = run_dir / "checkpoints" / "last.weights.h5"
    # Batches of 16: 17 steps per epoch, so an epoch takes a moment after the first checkpoint.
    settings = [*tiny_settings, "data.batch_size=16"]
    sets = [arg for item in settings for arg in ("--set", item)]
    command = [_tfjf(), "fit", "--run-dir", str(run_dir), "--epochs", "3", "--no-wandb", *sets]
    log_path = tmp_path / "child.log"
    with open(log_path, "w") as log:
        child = subprocess.Popen(
            command, cwd=tmp_path, env=subprocess_env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 120
            while not checkpoint.exists():
                assert child.poll() is None, f"fit ended early:\n{log_path.read_text()[-3000:]}"
                assert time.monotonic() < deadline, "no checkpoint within 120 s"
                time.sleep(0.01)
            os.kill(child.pid, signal.SIGKILL)
            assert child.wait(timeout=30) == -signal.SIGKILL
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(timeout=30)
    killed_at = read_checkpoint_state(checkpoint).epoch
    assert killed_at < 3, "the kill came after training had finished"
    assert not (run_dir / "model.keras").exists()
    # What a kill in the middle of a checkpoint write leaves behind: a temporary file, and the
    # history row of the epoch being checkpointed (rows are written first).
    leftover = run_dir / "checkpoints" / ".last.weights.h5.k1ll3d.weights.h5"
    leftover.write_bytes(b"partial")
    history_csv = run_dir / "history.csv"
    rows = history_csv.read_text().splitlines(keepends=True)
    assert len(rows) >= 1 + killed_at  # header, then one row per checkpointed epoch
    history_csv.write_text("".join(rows) + f"{killed_at}," + rows[-1].split(",", 1)[1])

    monkeypatch.chdir(tmp_path)  # the SavedModel copy goes to tmp_path/saved_models
    result = CliRunner().invoke(main, ["fit", "--run-dir", str(run_dir), "--resume"])
    assert result.exit_code == 0, result.output
    assert f"resumed from {checkpoint}: epoch {killed_at}" in result.output
    for line in (
        "held-out NLL: ",
        f"run folder:     {run_dir}",
        f"SavedModel:     {run_dir / 'saved_model'}",
        f"copied to:      {Path('saved_models') / 'run'}",
        f"sample picture: {run_dir / 'plots' / 'samples.png'}",
    ):
        assert line in result.output
    history = _history(run_dir)
    np.testing.assert_array_equal(history["epoch"], [0, 1, 2])
    # Cosine decay over 3 epochs, continued across the kill (step count restored).
    expected_lr = [1e-3 * 0.5 * (1 + math.cos(math.pi * e / 3)) for e in (1, 2, 3)]
    np.testing.assert_allclose(history["learning_rate"], expected_lr, rtol=1e-5, atol=1e-9)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "best.weights.h5",
        "last.weights.h5",
    ]
    assert read_checkpoint_state(checkpoint).global_step == 3 * (272 // 16)
    assert (run_dir / "model.keras").is_file()
    assert (run_dir / "saved_model" / "saved_model.pb").is_file()
    assert (tmp_path / "saved_models" / "run" / "saved_model.pb").is_file()


# ---- NaN guard -----------------------------------------------------------------------------


def test_nan_guard_stops_restores_and_still_exports(tiny_config, tmp_path):
    # A learning rate of 1e6 without clipping: the first Adam step moves every weight by ~1e6,
    # the second gives a non-finite loss.
    config = tiny_config(
        "training.epochs=2",
        "training.learning_rate=1000000.0",
        "training.lr_schedule=constant",
        "training.clipnorm=null",
    )
    result = fit(config, run_dir=tmp_path / "run", saved_models_dir=None, verbose=2)
    run = result.run_dir
    assert result.nan_step is not None and 1 <= result.nan_step < TRAIN_STEPS
    log = (run / "output.log").read_text()
    assert f"NaN loss at epoch 1 step {result.nan_step}; restored weights from step" in log
    # The cut-short epoch wrote no checkpoint; the saved model holds the restored, finite weights.
    assert not (run / "checkpoints" / "last.weights.h5").exists()
    model = load_run_model(run)
    assert all(np.isfinite(np.asarray(w)).all() for w in model.weights)
    assert int(np.asarray(model.optimizer.iterations)) == result.nan_step - 1
    assert (result.saved_model / "saved_model.pb").is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["data"]["train"] == 272


def test_bnaf_paper_recipe_plateau_amsgrad_polyak(tiny_config, tmp_path):
    """lr halving on plateau, AMSGrad and Polyak averaging run through fit."""
    import keras

    from tfjetflows.training.fit import fit

    config = tiny_config(
        "training.epochs=4",
        "training.lr_schedule=plateau",
        "training.plateau_patience=0",
        "training.amsgrad=true",
        "training.ema_momentum=0.9",
        "training.evaluation_samples=0",
    )
    result = fit(config, run_dir=tmp_path / "run", saved_models_dir=None, verbose=0)
    with open(result.run_dir / "history.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    rates = [float(row["learning_rate"]) for row in rows]
    losses = [float(row["val_loss"]) for row in rows]
    assert rates[0] == pytest.approx(1e-3)
    # patience 0: the rate halves after exactly the epochs whose val_loss did not improve
    best = losses[0]
    for epoch in range(1, len(rows)):
        improved = losses[epoch - 1] < best - 1e-4 if epoch > 1 else True
        best = min(best, losses[epoch - 1])
        expected = rates[epoch - 1] if improved else rates[epoch - 1] / 2
        assert rates[epoch] == pytest.approx(expected)
    optimizer = keras.saving.load_model(result.run_dir / "model.keras").optimizer
    assert optimizer.get_config()["amsgrad"] is True
    assert optimizer.get_config()["use_ema"] is True
