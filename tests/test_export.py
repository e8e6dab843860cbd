"""The exported SavedModel, loaded in a fresh process that imports TensorFlow only.

One child process loads the unconditional and the ``[y, pt]``-conditional SavedModels of the
session's trained runs, scores given jets and samples; the tests compare what it returns with the
Keras models of the same runs in this process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from tfjetflows.config import load_config
from tfjetflows.data.pipeline import PT_REFERENCE
from tfjetflows.data.reader import iter_jet_batches, resolve_paths
from tfjetflows.export import read_metadata
from tfjetflows.training.export_run import load_run_model
from tfjetflows.training.fit import build_representation

N_SCORED = 8
N_SAMPLED = 5

CHILD = textwrap.dedent(
    """
    import json
    import sys

    import numpy as np
    import tensorflow as tf

    inputs_path, plain_path, conditional_path, out_path, n = sys.argv[1:]
    N = int(n)
    inputs = np.load(inputs_path)
    x = tf.constant(inputs["x"])
    out, facts = {}, {}

    plain = tf.saved_model.load(plain_path)
    out["log_prob"] = plain.log_prob(x).numpy()
    out["jet_log_prob"] = plain.jet_log_prob(x).numpy()
    for name, seed in (("first", [1, 2]), ("again", [1, 2]), ("other", [3, 4])):
        jets = plain.sample(n=tf.constant(N), seed=tf.constant(seed))
        facts[name + "_keys"] = sorted(jets)
        for key, value in jets.items():
            out[name + "_" + key] = value.numpy()
    try:
        plain.sample(n=tf.constant(N), seed=tf.constant([1, 2, 3]))
        facts["seed_of_3_raised"] = None
    except (TypeError, ValueError) as err:
        facts["seed_of_3_raised"] = type(err).__name__

    conditional = tf.saved_model.load(conditional_path)
    y, pt = tf.constant(inputs["y"]), tf.constant(inputs["pt"])
    out["conditional_log_prob"] = conditional.log_prob(x, y, pt).numpy()
    for name, label in (("gluon", 1.0), ("quark", 0.0)):
        jets = conditional.sample_conditional(
            tf.constant(N), tf.constant([5, 6]), tf.constant(label), tf.constant(200.0)
        )
        for key, value in jets.items():
            out[name + "_" + key] = value.numpy()
    jets = conditional.sample(tf.constant(N), tf.constant([5, 6]))
    for key, value in jets.items():
        out["drawn_" + key] = value.numpy()

    np.savez(out_path, **out)
    facts["tfjetflows_imported"] = "tfjetflows" in sys.modules
    facts["tfp_imported"] = "tensorflow_probability" in sys.modules
    print(json.dumps(facts))
    """
)


@pytest.fixture(scope="module")
def scored_jets(trained_run) -> dict[str, np.ndarray]:
    """The first jets of the training data, encoded as the runs see them, with y and pt.

    Two more are the first two without their tracks, so they have empty (noise-filled) slots.
    """
    config = load_config(trained_run.run_dir / "config.yaml")
    batch = next(iter(iter_jet_batches(resolve_paths(config.data.files), batch_size=N_SCORED)))
    no_tracks = batch.images[:2].copy()
    no_tracks[:, 0] = 0.0
    images = np.concatenate([batch.images, no_tracks])
    y = np.concatenate([batch.y, batch.y[:2]]).astype(np.float32)
    pt = np.concatenate([batch.pt, batch.pt[:2]]).astype(np.float32)
    representation = build_representation(config)
    x = representation.encode(images, {"pt": pt, "y": y}, np.random.default_rng(0))
    return {"x": x, "y": y, "pt": pt}


@pytest.fixture(scope="module")
def child(trained_run, conditional_run, scored_jets, subprocess_env, tmp_path_factory):
    """Run :data:`CHILD` once; return ``(arrays, facts)``."""
    folder = tmp_path_factory.mktemp("fresh")
    np.savez(folder / "inputs.npz", **scored_jets)
    (folder / "child.py").write_text(CHILD)
    command = [
        sys.executable,
        str(folder / "child.py"),
        str(folder / "inputs.npz"),
        str(trained_run.saved_model),
        str(conditional_run.saved_model),
        str(folder / "out.npz"),
        str(N_SAMPLED),
    ]
    done = subprocess.run(
        command, cwd=folder, env=subprocess_env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-3000:]
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    with np.load(folder / "out.npz") as arrays:
        return dict(arrays), facts


def _context(y: np.ndarray, pt: np.ndarray) -> np.ndarray:
    return np.stack([y, np.log(pt / PT_REFERENCE)], axis=-1).astype(np.float32)


def test_fresh_process_imports_tensorflow_only(child):
    _, facts = child
    assert facts["tfjetflows_imported"] is False
    assert facts["tfp_imported"] is False


def test_log_prob_matches_the_keras_model(child, trained_run, scored_jets):
    arrays, _ = child
    model = load_run_model(trained_run.run_dir)
    expected = model.log_prob(tf.constant(scored_jets["x"])).numpy()
    assert np.isfinite(expected).all()
    np.testing.assert_allclose(arrays["log_prob"], expected, rtol=1e-5)


def test_jet_log_prob_is_log_prob_minus_fill_noise(child, trained_run, scored_jets):
    arrays, _ = child
    representation = build_representation(load_config(trained_run.run_dir / "config.yaml"))
    noise = representation.noise_log_prob(tf.constant(scored_jets["x"])).numpy()
    assert np.isfinite(arrays["jet_log_prob"]).all()
    assert (noise[:N_SCORED] == 0).all() and (noise[N_SCORED:] != 0).all()
    np.testing.assert_allclose(arrays["jet_log_prob"], arrays["log_prob"] - noise, rtol=1e-5)


def test_sample_is_seeded_and_decoded(child, trained_run):
    arrays, facts = child
    dim = read_metadata(trained_run.saved_model)["dim"]
    assert facts["first_keys"] == ["hits", "images", "vector"]
    assert arrays["first_images"].shape == (N_SAMPLED, 3, 125, 125)
    assert arrays["first_vector"].shape == (N_SAMPLED, dim)
    assert arrays["first_hits"].shape == (N_SAMPLED, 16, 4)
    assert np.isfinite(arrays["first_images"]).all()
    for key in ("images", "vector", "hits"):
        np.testing.assert_array_equal(arrays[f"again_{key}"], arrays[f"first_{key}"])
    assert not np.allclose(arrays["other_vector"], arrays["first_vector"])
    # The images are the representation's decoding of the vectors.
    representation = build_representation(load_config(trained_run.run_dir / "config.yaml"))
    decoded = representation.decode(tf.constant(arrays["first_vector"])).numpy()
    np.testing.assert_allclose(arrays["first_images"], decoded, rtol=1e-6, atol=1e-6)


def test_sample_matches_the_keras_model(child, trained_run):
    arrays, _ = child
    model = load_run_model(trained_run.run_dir)
    draw = tf.function(lambda: model.sample(N_SAMPLED, seed=tf.constant([1, 2])))
    np.testing.assert_allclose(arrays["first_vector"], draw().numpy(), rtol=1e-4, atol=1e-4)


def test_sample_refuses_a_seed_of_shape_3(child):
    _, facts = child
    assert facts["seed_of_3_raised"] is not None


def test_conditional_log_prob_matches_the_keras_model(child, conditional_run, scored_jets):
    arrays, _ = child
    model = load_run_model(conditional_run.run_dir)
    context = _context(scored_jets["y"], scored_jets["pt"])
    expected = model.log_prob(tf.constant(scored_jets["x"]), context=tf.constant(context))
    np.testing.assert_allclose(arrays["conditional_log_prob"], expected.numpy(), rtol=1e-5)


def test_sample_conditional_returns_the_requested_conditions(child, conditional_run):
    arrays, _ = child
    assert read_metadata(conditional_run.saved_model)["conditions"] == ["y", "pt"]
    np.testing.assert_array_equal(arrays["gluon_y"], np.ones(N_SAMPLED, np.float32))
    np.testing.assert_array_equal(arrays["quark_y"], np.zeros(N_SAMPLED, np.float32))
    np.testing.assert_array_equal(arrays["gluon_pt"], np.full(N_SAMPLED, 200.0, np.float32))
    assert arrays["gluon_images"].shape == (N_SAMPLED, 3, 125, 125)
    # Same seed, other class: the condition reaches the flow.
    assert not np.allclose(arrays["gluon_vector"], arrays["quark_vector"])
    model = load_run_model(conditional_run.run_dir)
    context = _context(np.ones(1, np.float32), np.full(1, 200.0, np.float32))
    draw = tf.function(
        lambda: model.sample(N_SAMPLED, seed=tf.constant([5, 6]), context=tf.constant(context))
    )
    np.testing.assert_allclose(arrays["gluon_vector"], draw().numpy(), rtol=1e-4, atol=1e-4)


def test_sample_of_a_conditional_model_draws_training_conditions(child, conditional_run):
    arrays, _ = child
    bank = np.load(conditional_run.run_dir / "condition_sample.npy")
    assert bank.shape[1] == 2
    drawn = np.stack([arrays["drawn_y"], arrays["drawn_pt"]], axis=-1)
    seen = {tuple(row) for row in bank.tolist()}
    assert all(tuple(row) in seen for row in drawn.tolist())
    assert set(arrays["drawn_y"].tolist()) <= {0.0, 1.0}
