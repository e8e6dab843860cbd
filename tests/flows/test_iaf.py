"""The IAF student: one network pass per block to sample, exact (slow) log_prob, save/load."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from flow_testing import preprocessing_config

from tfjetflows.flows.iaf import IAF
from tfjetflows.flows.made import MADE

EVENT = 3
CONTEXT = 2
SMALL = {"event_size": EVENT, "blocks": 3, "hidden_units": (16,)}
SEED = tf.constant([1, 2], dtype=tf.int32)

CONFIGS = {
    "plain": {},
    "no_batch_norm": {"batch_norm": False},
    "conditional": {"context_size": CONTEXT},
}


def _iaf(seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    return IAF(**{**SMALL, **kwargs})


def _context(n, model, seed=1):
    if not model.context_size:
        return None
    return np.random.default_rng(seed).normal(size=(n, CONTEXT))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_log_prob_is_the_change_of_variables_of_sampling(name, float64, randomize):
    """log p(x) = log N(z) - log|det dx/dz|, with the Jacobian from autodiff of the sampler."""
    model = _iaf(**CONFIGS[name])
    randomize(model, seed=3, scale=0.4)
    z = tf.constant(np.random.default_rng(0).normal(size=(6, EVENT)))
    context = _context(6, model)
    with tf.GradientTape() as tape:
        tape.watch(z)
        x = model.standardized_sample(z, context)
    _, log_det = np.linalg.slogdet(tape.batch_jacobian(x, z).numpy())
    expected = model.base_distribution().log_prob(z).numpy() - log_det
    np.testing.assert_allclose(model.log_prob(x, context).numpy(), expected, atol=1e-9)


def test_preprocessing_is_applied_after_the_flow(float64, randomize):
    model = _iaf(preprocessing=preprocessing_config())
    randomize(model, seed=4, scale=0.3)
    x = model.sample(5, SEED)
    z = model.base_distribution().sample(5, seed=SEED)
    np.testing.assert_allclose(
        x.numpy(), model.preprocessing.forward(model.standardized_sample(z)).numpy()
    )
    assert np.all(np.isfinite(model.log_prob(x).numpy()))


@pytest.mark.parametrize("name", ["plain", "conditional"])
def test_sampling_makes_one_network_pass_per_block(name, monkeypatch, randomize):
    """The one-pass property: drawing a batch calls each block's MADE exactly once."""
    model = _iaf(**CONFIGS[name], blocks=4)
    randomize(model, seed=5)
    calls = []
    original = MADE.call

    def counting_call(self, *args, **kwargs):
        calls.append(self.name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MADE, "call", counting_call)
    context = _context(100, model)
    samples = model.sample(100, SEED, context=context)
    assert samples.shape == (100, EVENT)
    assert sorted(calls) == [f"made_{k}" for k in range(4)]
    calls.clear()
    model.log_prob(samples, context)  # the slow side: EVENT passes per block, plus one
    assert len(calls) == 4 * (EVENT + 1)


def test_samples_are_reproducible_and_context_matters(randomize):
    model = _iaf(context_size=CONTEXT)
    randomize(model, seed=6)
    a = model.sample(4, SEED, context=np.ones(CONTEXT)).numpy()
    b = model.sample(4, SEED, context=np.ones(CONTEXT)).numpy()
    c = model.sample(4, SEED, context=-np.ones(CONTEXT)).numpy()
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


def test_sample_in_tf_function_with_dynamic_n(randomize):
    model = _iaf()
    randomize(model, seed=7)
    draw = tf.function(
        lambda n: model.sample(n, SEED),
        input_signature=[tf.TensorSpec([], tf.int32)],
    )
    assert draw(tf.constant(3)).shape == (3, EVENT)
    assert draw(tf.constant(11)).shape == (11, EVENT)


@pytest.mark.parametrize("name", ["plain", "conditional"])
def test_save_and_load_keep_samples_and_log_prob(name, tmp_path, randomize):
    model = _iaf(**CONFIGS[name], preprocessing=preprocessing_config())
    randomize(model, seed=8, scale=0.3)
    context = _context(4, model)
    x = model.sample(4, SEED, context=context)
    path = tmp_path / "iaf.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded, IAF)
    assert loaded.get_config() == model.get_config()
    np.testing.assert_array_equal(loaded.sample(4, SEED, context=context).numpy(), x.numpy())
    np.testing.assert_allclose(
        loaded.log_prob(x, context).numpy(), model.log_prob(x, context).numpy(), rtol=1e-6
    )


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="blocks must be >= 1"):
        IAF(event_size=2, blocks=0)
    with pytest.raises(ValueError, match="needs a context"):
        IAF(event_size=2, context_size=1).sample(2, SEED)
