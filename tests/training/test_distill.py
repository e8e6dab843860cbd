"""``tfjf distill`` end to end: fit -> distill -> SavedModel with the teacher's signatures.

The student of the session's tiny trained run (:func:`trained_run`) is distilled once for the
module; a second, interrupted-and-resumed distillation must give the same history.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

from cli.main import main
from tfjetflows.config import ConfigError
from tfjetflows.errors import ModelError
from tfjetflows.flows.iaf import IAF
from tfjetflows.training.distill import distill, distill_config

# a constant learning rate: a cosine schedule spreads over the configured epochs, so a 1-epoch
# run resumed to 2 would decay differently from a 2-epoch run
SETTINGS = (
    "training.epochs=2",
    "training.lr_schedule=constant",
    "distill.blockwise_epochs=1",
    "training.evaluation_samples=10",
)


def _distill(teacher, run_dir: Path, *overrides: str, resume: bool = False):
    config = distill_config(teacher.run_dir, None, [*SETTINGS, *overrides])
    return distill(
        teacher.run_dir,
        config,
        run_dir=run_dir,
        resume=resume,
        saved_models_dir=run_dir.parent / "saved_models",
        verbose=0,
    )


@pytest.fixture(scope="module")
def student_run(trained_run, tmp_path_factory):
    """A student of ``trained_run`` distilled for 2 epochs (1 block by block)."""
    return _distill(trained_run, tmp_path_factory.mktemp("student") / "run")


def _history(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_shipped_distill_config_loads_over_a_teacher(trained_run):
    config = distill_config(trained_run.run_dir)
    assert config.source.endswith("configs/distill_iaf.yaml")
    assert config.model["kind"] == "iaf"
    assert config.distill.blockwise_epochs >= 1


def test_config_takes_data_from_the_teacher_and_the_model_from_both(trained_run):
    config = distill_config(trained_run.run_dir, None, ["model.hidden_units=[8]"])
    teacher = distill_config(trained_run.run_dir, None).model
    assert config.model["kind"] == "iaf"
    assert config.model["hidden_units"] == [8]
    assert config.model["blocks"] == teacher["blocks"] == 2
    assert config.representation["hits_per_channel"] == {"tracks": 4, "ecal": 8, "hcal": 4}


def test_config_refuses_the_sections_that_belong_to_the_teacher(trained_run, tmp_path):
    path = tmp_path / "distill.yaml"
    path.write_text("data:\n  batch_size: 8\n")
    with pytest.raises(ConfigError, match=r"section 'data' cannot be set"):
        distill_config(trained_run.run_dir, path)
    path.write_text("distill:\n  blockwise_epoch: 3\n")
    with pytest.raises(ConfigError, match="unknown key 'blockwise_epoch'"):
        distill_config(trained_run.run_dir, path)


def test_run_folder_holds_student_teacher_history_and_figures(student_run):
    folder = student_run.run_dir
    assert student_run.epochs_done == 2
    assert isinstance(keras.saving.load_model(folder / "model.keras", safe_mode=True), IAF)
    assert (folder / "teacher.keras").is_file()
    rows = _history(folder / "history.csv")
    assert [row["epoch"] for row in rows] == ["0", "1"]
    assert {"data_mse", "latent_mse", "block_mse", "params_mse", "val_loss"} <= set(rows[0])
    metrics = json.loads((folder / "metrics.json").read_text())
    speed = metrics["sampling_speed"]
    assert speed["student_jets_per_second"] > 0 and speed["teacher_jets_per_second"] > 0
    assert metrics["training_speed"]["steps_per_second"] > 0
    assert metrics["training_speed"]["steps_per_epoch"] == 8
    assert metrics["sample_quality"]["jets"] == 10
    assert (folder / "plots" / "samples.png").is_file()


def _signatures(saved: object) -> dict[str, object]:
    return {
        name: getattr(saved, name).concrete_functions[0].structured_input_signature
        for name in ("log_prob", "jet_log_prob", "sample")
    }


def test_saved_model_has_the_teacher_signatures_and_log_prob(student_run, trained_run):
    student = tf.saved_model.load(str(student_run.saved_model))
    teacher = tf.saved_model.load(str(trained_run.saved_model))
    assert _signatures(student) == _signatures(teacher)
    jets = student.sample(tf.constant(6), tf.constant([1, 2]))
    assert jets["images"].shape == (6, 3, 125, 125)
    np.testing.assert_array_equal(
        student.log_prob(jets["vector"]).numpy(), teacher.log_prob(jets["vector"]).numpy()
    )
    again = student.sample(tf.constant(6), tf.constant([1, 2]))
    np.testing.assert_array_equal(jets["vector"].numpy(), again["vector"].numpy())
    metadata = json.loads((student_run.saved_model / "assets" / "tfjetflows.json").read_text())
    assert (metadata["sampler"], metadata["density"]) == ("IAF", "MAF")


def test_saved_model_samples_with_tensorflow_alone(student_run, subprocess_env):
    script = textwrap.dedent(
        """
        import sys
        import tensorflow as tf
        model = tf.saved_model.load(sys.argv[1])
        jets = model.sample(tf.constant(3), tf.constant([4, 5]))
        print(tuple(jets["images"].shape), "tfjetflows" in sys.modules)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(student_run.saved_model)],
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "(3, 3, 125, 125) False"


def test_resumed_distillation_equals_uninterrupted(student_run, trained_run, tmp_path):
    run_dir = tmp_path / "run"
    _distill(trained_run, run_dir, "training.epochs=1")
    resumed = _distill(trained_run, run_dir, resume=True)
    assert resumed.epochs_done == 2
    assert "resumed from" in (run_dir / "output.log").read_text()
    straight = _history(student_run.run_dir / "history.csv")
    again = _history(run_dir / "history.csv")
    assert len(again) == 2
    for a, b in zip(straight, again, strict=True):
        for key in ("loss", "data_mse", "latent_mse", "val_loss"):
            assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-5), key


def test_cli_distill_and_its_errors(student_run, trained_run, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["distill", str(tmp_path / "nowhere")])
    assert result.exit_code != 0
    assert "no config.yaml" in result.output
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(trained_run.run_dir / "config.yaml", unfinished)
    result = runner.invoke(main, ["distill", str(unfinished)])
    assert result.exit_code != 0
    assert "no model.keras" in result.output
    assert not (tmp_path / "unfinished-student").exists()  # nothing written for a bad teacher


def test_a_bnaf_teacher_is_refused(trained_run, tmp_path):
    from tfjetflows.flows.bnaf import BNAF

    folder = tmp_path / "bnaf"
    folder.mkdir()
    shutil.copy(trained_run.run_dir / "config.yaml", folder)
    BNAF(event_size=51, flows=1, layers=1, hidden_factor=2).save(folder / "model.keras")
    with pytest.raises(ModelError, match="distillation needs a MAF"):
        _distill(_Run(folder), tmp_path / "student")


class _Run:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
