"""``tfjf sample``, ``tfjf export`` and ``tfjf fit`` on the session's trained runs, and bad input.

Commands run in process through ``click.testing.CliRunner`` (the installed ``tfjf`` script runs
in ``tests/training/test_fit.py``: the fit that is killed). Every bad input must end the command
with a non-zero status and one ``Error:`` line naming the problem, without a traceback and
without writing anything.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner, Result

from cli.main import main
from tfjetflows.config import config_to_dict
from tfjetflows.data.reader import iter_jet_batches
from tfjetflows.export import export_saved_model, read_metadata
from tfjetflows.flows.maf import MAF
from tfjetflows.sampling import NO_LABEL, load_exported, sample_batches
from tfjetflows.training.fit import build_representation
from tfjetflows.training.run_dir import RunDirectory

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _invoke(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def _read_jets(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    batches = list(iter_jet_batches([path]))
    return tuple(
        np.concatenate([getattr(b, k) for b in batches]) for k in ("images", "pt", "m0", "y")
    )


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>"
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture(scope="module")
def y_only_model(tiny_config: Callable[..., object], tmp_path_factory) -> Path:
    """An untrained MAF conditioned on ``y`` only, exported (only its conditions matter here)."""
    representation = build_representation(tiny_config())
    model = MAF(event_size=representation.dim, context_size=1, blocks=1, hidden_units=(8,))
    model.log_prob(tf.zeros([1, representation.dim]), context=tf.zeros([1, 1]))
    return export_saved_model(
        model,
        representation,
        tmp_path_factory.mktemp("y_only") / "model",
        conditions=["y"],
        condition_sample=np.array([[0.0], [1.0]]),
    )


# ---- sample ----------------------------------------------------------------------------------


def test_sample_writes_readable_parquet_and_a_png(trained_run, tmp_path):
    out, png = tmp_path / "x.parquet", tmp_path / "g.png"
    result = _invoke(
        "sample", trained_run.saved_model, "--n", 10, "--seed", 3, "--out", out, "--png", png
    )
    assert result.exit_code == 0, result.output
    assert f"wrote 10 jets to {out}" in result.output
    images, pt, m0, y = _read_jets(out)
    assert images.shape == (10, 3, 125, 125)
    assert np.isfinite(images).all() and (images != 0).any()
    assert np.isfinite(pt).all() and (pt > 0).all() and np.isfinite(m0).all()
    np.testing.assert_array_equal(y, np.full(10, NO_LABEL))  # unconditional: no class
    assert png.read_bytes().startswith(PNG_MAGIC)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.png", "x.parquet"]


def test_same_seed_same_file(trained_run, tmp_path):
    saved = trained_run.saved_model
    for name, seed in (("a.parquet", 3), ("b.parquet", 3), ("other.parquet", 4)):
        result = _invoke("sample", saved, "--n", 10, "--seed", seed, "--out", tmp_path / name)
        assert result.exit_code == 0, result.output
    assert (tmp_path / "b.parquet").read_bytes() == (tmp_path / "a.parquet").read_bytes()
    assert not np.allclose(
        _read_jets(tmp_path / "other.parquet")[0], _read_jets(tmp_path / "a.parquet")[0]
    )


def test_sample_with_label_and_pt(conditional_run, tmp_path):
    out = tmp_path / "gluons.parquet"
    result = _invoke(
        "sample",
        conditional_run.saved_model,
        "--n",
        6,
        "--seed",
        1,
        "--out",
        out,
        "--label",
        "gluon",
        "--pt",
        200,
    )
    assert result.exit_code == 0, result.output
    images, _, _, y = _read_jets(out)
    assert images.shape == (6, 3, 125, 125)
    np.testing.assert_array_equal(y, np.ones(6))


# ---- export ----------------------------------------------------------------------------------


def test_export_writes_a_saved_model_of_the_run(trained_run, tmp_path):
    out = tmp_path / "exported"
    result = _invoke("export", trained_run.run_dir, "--out", out)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(out)
    meta = read_metadata(out)
    assert meta["run"] == str(trained_run.run_dir)
    assert meta["conditions"] == []
    assert meta == read_metadata(trained_run.saved_model)
    # The same weights as the SavedModel written by fit: the same jets for the same seed.
    jets = [
        next(sample_batches(*load_exported(path), n=3, seed=9))["vector"]
        for path in (out, trained_run.saved_model)
    ]
    np.testing.assert_array_equal(jets[0], jets[1])


# ---- bad input -------------------------------------------------------------------------------


def _bad_args(case: str, request: pytest.FixtureRequest, tmp: Path) -> list[object]:
    """The command line of each bad-input case (fixtures fetched only when needed)."""
    out = ["--out", tmp / "jets.parquet"]
    if case == "n-zero":
        return ["sample", request.getfixturevalue("trained_run").saved_model, "--n", 0, *out]
    if case == "missing-saved-model":
        return ["sample", tmp / "nowhere", "--n", 5, *out]
    if case == "not-a-saved-model":
        (tmp / "empty").mkdir()
        return ["sample", tmp / "empty", "--n", 5, *out]
    if case == "run-folder":
        return ["sample", request.getfixturevalue("trained_run").run_dir, "--n", 5, *out]
    if case == "label-on-unconditional":
        saved = request.getfixturevalue("trained_run").saved_model
        return ["sample", saved, "--n", 5, "--label", "gluon", *out]
    if case == "pt-on-y-only":
        saved = request.getfixturevalue("y_only_model")
        return ["sample", saved, "--n", 5, "--label", "gluon", "--pt", 200, *out]
    if case == "label-without-pt":
        saved = request.getfixturevalue("conditional_run").saved_model
        return ["sample", saved, "--n", 5, "--label", "gluon", *out]
    if case == "unknown-label":
        saved = request.getfixturevalue("conditional_run").saved_model
        return ["sample", saved, "--n", 5, "--label", "gluino", "--pt", 200, *out]
    if case == "misspelt-key":
        (tmp / "bad.yaml").write_text("training:\n  learnin_rate: 0.01\n")
        return ["fit", "--config", tmp / "bad.yaml", "--run-dir", tmp / "run"]
    if case == "resume-without-run-dir":
        return ["fit", "--resume"]
    if case == "export-without-model":
        (tmp / "unfinished").mkdir()
        (tmp / "unfinished" / "config.yaml").write_text("seed: 0\n")
        return ["export", tmp / "unfinished", "--out", tmp / "exported"]
    if case == "export-missing-run":
        return ["export", tmp / "nowhere", "--out", tmp / "exported"]
    raise AssertionError(case)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("n-zero", ["--n", "must be positive, got 0"]),
        ("missing-saved-model", ["nowhere", "no such SavedModel folder"]),
        ("not-a-saved-model", ["empty", "not a SavedModel folder"]),
        ("run-folder", ["a run folder?", "saved_model"]),
        ("label-on-unconditional", ["unconditional", "--label"]),
        ("pt-on-y-only", ["conditioned on ['y'], not on pt", "--pt"]),
        ("label-without-pt", ["conditioned on ['y', 'pt']", "also give --pt"]),
        ("unknown-label", ["'gluino' is not one of quark, gluon", "--label"]),
        ("misspelt-key", ["bad.yaml", "'learnin_rate'", "learning_rate"]),
        ("resume-without-run-dir", ["--resume needs --run-dir"]),
        ("export-without-model", ["unfinished", "no model.keras", "--resume"]),
        ("export-missing-run", ["nowhere", "no such run folder"]),
    ],
)
def test_bad_input_is_one_clear_line(case, expected, request, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = _bad_args(case, request, tmp_path)
    before = _snapshot(tmp_path)
    result = _invoke(*args)
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), result.exception  # handled, not a crash
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, result.output
    for fragment in expected:
        assert fragment in errors[0]
    assert _snapshot(tmp_path) == before  # nothing written: no Parquet, no run folder


def _existing_run(tiny_config: Callable[..., object], path: Path) -> Path:
    run = RunDirectory.create(path, resume=False)
    run.write_config(config_to_dict(tiny_config("training.epochs=1")))
    (run.path / "history.csv").write_text("epoch,loss\n0,1.5\n")
    return run.path


def test_fit_into_an_existing_run_folder_is_refused(
    tiny_settings, tiny_config, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    run = _existing_run(tiny_config, tmp_path / "run")
    before = _snapshot(tmp_path)
    sets = [arg for item in tiny_settings for arg in ("--set", item)]
    result = _invoke("fit", "--run-dir", run, "--epochs", 1, *sets)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.output.startswith(f"Error: run folder {run} already exists and is not empty")
    assert "--resume" in result.output and len(result.output.splitlines()) == 1
    assert _snapshot(tmp_path) == before


def test_fit_into_a_locked_run_folder_is_refused(tiny_config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = _existing_run(tiny_config, tmp_path / "run")
    with RunDirectory(run).locked():
        before = _snapshot(tmp_path)
        result = _invoke("fit", "--run-dir", run, "--resume")
        assert _snapshot(tmp_path) == before  # the holder's pid is still in run.lock
    assert (run / "run.lock").read_text().strip() == ""  # released by the holder
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.output == (
        f"Error: run folder {run} is locked by a running fit (pid {os.getpid()}); wait for it "
        "to finish or choose another --run-dir\n"
    )
