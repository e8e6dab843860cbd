"""BNAF through the product: fit, export, TensorFlow-only reload, no sampling, evaluate."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from cli.main import main

BNAF_SETTINGS = (
    "model={kind: bnaf, flows: 1, layers: 1, hidden_factor: 2, residual: gated}",
    "training.epochs=1",
    "training.lr_schedule=plateau",
    "training.amsgrad=true",
    "training.evaluation_samples=0",
)


@pytest.fixture(scope="module")
def bnaf_run(tiny_config, tmp_path_factory):
    from tfjetflows.training.fit import fit

    root = tmp_path_factory.mktemp("bnaf")
    return fit(tiny_config(*BNAF_SETTINGS), run_dir=root / "run", saved_models_dir=None, verbose=0)


def test_bnaf_fit_exports_log_prob_without_sample(bnaf_run):
    import tensorflow as tf

    assert np.isfinite(bnaf_run.metrics["validation"]["nll"])
    assert bnaf_run.sample_png is None
    loaded = tf.saved_model.load(str(bnaf_run.saved_model))
    assert hasattr(loaded, "log_prob")
    assert not hasattr(loaded, "sample")
    with pytest.raises((ValueError, TypeError)):
        loaded.log_prob(tf.zeros([2, 50]))  # the model takes 51 dims


def test_bnaf_export_reloads_in_a_tensorflow_only_process(bnaf_run, subprocess_env, tmp_path):
    import keras
    import tensorflow as tf

    x = np.random.default_rng(0).uniform(0.1, 3.0, size=(6, 51)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    model = keras.saving.load_model(bnaf_run.run_dir / "model.keras", safe_mode=True)
    expected = model.log_prob(tf.constant(x)).numpy()
    code = (
        "import sys, json, numpy as np, tensorflow as tf\n"
        f"m = tf.saved_model.load({str(bnaf_run.saved_model)!r})\n"
        f"x = np.load({str(tmp_path / 'x.npy')!r})\n"
        "print(json.dumps(m.log_prob(tf.constant(x)).numpy().tolist()))\n"
        "assert 'tfjetflows' not in sys.modules and 'tensorflow_probability' not in sys.modules\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=subprocess_env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    got = np.array(json.loads(out.stdout.strip().splitlines()[-1]))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_sampling_a_bnaf_says_it_cannot(bnaf_run, tmp_path):
    result = CliRunner().invoke(
        main, ["sample", str(bnaf_run.saved_model), "--n", "3", "--out", str(tmp_path / "s.pq")]
    )
    assert result.exit_code != 0
    assert "cannot sample" in result.output and "MAF" in result.output
    assert not (tmp_path / "s.pq").exists()


def test_evaluate_bnaf_scores_real_above_random(bnaf_run, jet_data):
    result = CliRunner().invoke(
        main,
        ["evaluate", str(bnaf_run.run_dir), "--data", str(jet_data), "--max-jets", "100", "--json"],
    )
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    assert figures["comparisons"]["random"]["auc_real_vs_other"] > 0.9


def test_bnaf_config_refuses_conditions(tiny_config, tmp_path):
    from tfjetflows.training.fit import fit

    config = tiny_config(*BNAF_SETTINGS, "data.conditions=[y]")
    with pytest.raises(Exception, match="unconditional"):
        fit(config, run_dir=tmp_path / "run", saved_models_dir=None, verbose=0)


def test_shipped_bnaf_config_fits_in_memory():
    from tfjetflows.config import load_config
    from tfjetflows.flows.bnaf import bnaf_memory_bytes
    from tfjetflows.training.fit import build_representation

    config = load_config(default_bnaf_config())
    dim = build_representation(config).dim
    assert dim == 279
    model = config.model
    size = bnaf_memory_bytes(dim, model["hidden_factor"], model["layers"], model["flows"])
    assert size < 1 << 30


def default_bnaf_config():
    from tfjetflows.config import default_config_path

    return default_config_path().with_name("bnaf_hits.yaml")
