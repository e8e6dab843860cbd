"""The MAF model: log_prob, gradients, batch-norm modes, sampling, conditioning, fit, save/load."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from flow_testing import preprocessing_config

from tfjetflows.flows.maf import MAF

tfb = tfp.bijectors
tfd = tfp.distributions

EVENT = 3
CONTEXT = 2
SMALL = {"event_size": EVENT, "blocks": 2, "hidden_units": (16, 16)}
SEED = tf.constant([1, 2], dtype=tf.int32)


def _maf(seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    return MAF(**{**SMALL, **kwargs})


def _data(n=16, seed=0, dim=EVENT):
    return np.random.default_rng(seed).normal(loc=0.5, scale=1.5, size=(n, dim))


def _context(n=16, seed=1):
    return np.random.default_rng(seed).normal(size=(n, CONTEXT))


def _inputs(model, x, context):
    return x if model.context_size == 0 else {"x": x, "context": context}


def _bounded_data(n=16, seed=0):
    x = _data(n, seed)
    x[:, 0] = np.random.default_rng(seed + 10).uniform(0.1, 3.9, size=n)
    return x


CONFIGS = {
    "plain": {},
    "no_batch_norm": {"batch_norm": False},
    "conditional": {"context_size": CONTEXT},
}


# ------------------------------------------------------------------------------- log_prob


@pytest.mark.parametrize("name", list(CONFIGS))
def test_log_prob_shape_and_trainable_weights(name):
    model = _maf(**CONFIGS[name])
    inputs = _inputs(model, _data(7), _context(7))
    log_prob = model(inputs)
    assert log_prob.shape == (7,)
    assert np.all(np.isfinite(log_prob.numpy()))
    per_made = 2 * 3 + (3 if model.context_size else 0)  # kernel+bias per layer, context kernels
    per_bn = 2 if model.batch_norm else 0
    assert len(model.trainable_weights) == 2 * per_made + per_bn
    assert len(model.non_trainable_weights) == per_bn


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_trainable_variable_gets_a_gradient(name, randomize):
    model = _maf(**CONFIGS[name])
    randomize(model, seed=3, scale=0.3)
    inputs = _inputs(model, _data(32), _context(32))
    with tf.GradientTape() as tape:
        loss = model.compute_loss(inputs, training=True)
    grads = tape.gradient(loss, model.trainable_weights)
    for variable, grad in zip(model.trainable_weights, grads, strict=True):
        assert grad is not None, variable.path
        assert np.any(grad.numpy() != 0), variable.path


@pytest.mark.parametrize("name", list(CONFIGS))
def test_eval_log_prob_equals_tfp_transformed_distribution(name, float64, randomize):
    model = _maf(**CONFIGS[name], preprocessing=preprocessing_config())
    randomize(model, seed=4, scale=0.4)
    x, context = _bounded_data(9), _context(9)
    kwargs = {}
    if model.context_size:
        kwargs = {f"maf_{k}": {"conditional_input": tf.constant(context)} for k in range(2)}
    chain = tfb.Chain(list(reversed(model.bijectors(training=False))))
    dist = tfd.TransformedDistribution(model.base_distribution(), chain)
    expected = dist.log_prob(tf.constant(x), bijector_kwargs=kwargs).numpy()
    got = model.log_prob(x, context=context if model.context_size else None).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)


def test_preprocessing_log_det_is_part_of_log_prob(float64, randomize):
    with_pre = _maf(preprocessing=preprocessing_config())
    plain = _maf()
    randomize(with_pre, seed=5)
    randomize(plain, seed=5)
    x = tf.constant(_bounded_data(8))
    pre = with_pre.preprocessing
    assert pre.dtype == tf.float64  # the model's dtype overrides the config's float32
    expected = plain.log_prob(pre.inverse(x)) + pre.inverse_log_det_jacobian(x, event_ndims=1)
    np.testing.assert_allclose(with_pre.log_prob(x).numpy(), expected.numpy(), atol=1e-12)


def _hand_log_prob(model, x):
    """log p(x) of a 2-block MAF with training-mode batch norm, data -> base, in numpy.

    Returns the log-prob and the batch statistics used by the batch norm.
    """
    bn = model.batch_norms[0]
    eps = bn.epsilon
    shift, log_scale = (t.numpy() for t in model.mades[1](tf.constant(x)))
    u = (x - shift) * np.exp(-log_scale)
    ildj = -log_scale.sum(axis=1)
    mean, var = u.mean(axis=0), u.var(axis=0)
    log_gamma, beta = bn.log_gamma.numpy(), bn.beta.numpy()
    v = (u - mean) / np.sqrt(var + eps) * np.exp(log_gamma) + beta
    ildj += np.sum(log_gamma - 0.5 * np.log(var + eps))
    shift, log_scale = (t.numpy() for t in model.mades[0](tf.constant(v)))
    z = (v - shift) * np.exp(-log_scale)
    ildj -= log_scale.sum(axis=1)
    log_prob = -0.5 * np.sum(z**2, axis=1) - 0.5 * EVENT * math.log(2 * math.pi) + ildj
    return log_prob, mean, var


@pytest.mark.parametrize("momentum", [0.0, 0.5])
def test_training_log_prob_matches_hand_computation(momentum, float64, randomize):
    model = _maf(batch_norm_momentum=momentum)
    randomize(model, seed=6, scale=0.4)  # moving statistics far from the batch's
    x = _data(16, seed=7)
    bn = model.batch_norms[0]
    old_mean, old_var = bn.moving_mean.numpy(), bn.moving_variance.numpy()
    expected, mean, var = _hand_log_prob(model, x)
    np.testing.assert_allclose(model.log_prob(x, training=True).numpy(), expected, atol=1e-10)
    np.testing.assert_allclose(bn.moving_mean.numpy(), momentum * old_mean + (1 - momentum) * mean)
    np.testing.assert_allclose(
        bn.moving_variance.numpy(), momentum * old_var + (1 - momentum) * var
    )


def test_momentum_zero_makes_eval_log_prob_equal_training(float64, randomize):
    model = _maf(batch_norm_momentum=0.0)
    randomize(model, seed=6, scale=0.4)
    x = _data(16, seed=7)
    log_prob_train = model.log_prob(x, training=True).numpy()
    # The moving statistics are now the batch statistics, so eval mode agrees exactly.
    np.testing.assert_allclose(model.log_prob(x).numpy(), log_prob_train, rtol=0, atol=1e-12)


def test_training_and_eval_modes_differ_when_statistics_differ(randomize):
    model = _maf(batch_norm_momentum=0.9)
    randomize(model, seed=8, scale=0.3)
    x = _data(16) * 3.0
    before = model.batch_norms[0].moving_mean.numpy()
    log_prob_train = model.log_prob(x, training=True).numpy()
    assert not np.allclose(model.batch_norms[0].moving_mean.numpy(), before)
    assert not np.allclose(model.log_prob(x).numpy(), log_prob_train, atol=1e-3)


def test_compute_loss_is_weighted_mean_nll():
    model = _maf()
    x = _data(6)
    log_prob = model.log_prob(x).numpy()
    loss = model.compute_loss(x, training=False).numpy()
    np.testing.assert_allclose(loss, -log_prob.mean(), rtol=1e-6)
    weights = np.array([1.0, 0.0, 2.0, 0.0, 0.0, 1.0])
    weighted = model.compute_loss(x, sample_weight=weights, training=False).numpy()
    np.testing.assert_allclose(weighted, -(weights * log_prob).sum() / weights.sum(), rtol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "inputs", "message"),
    [
        ({}, lambda x, c: (x, c), "tuple"),
        ({}, lambda x, c: {"x": x, "context": c}, "unconditional"),
        ({}, lambda x, c: {"data": x}, "key 'x'"),
        ({"context_size": CONTEXT}, lambda x, c: x, "needs a context"),
    ],
)
def test_bad_inputs_are_rejected(kwargs, inputs, message):
    model = _maf(**kwargs)
    with pytest.raises(ValueError, match=message):
        model(inputs(_data(4), _context(4)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"event_size": 0}, "event_size"),
        ({"blocks": 0}, "blocks"),
        ({"log_scale_clamp": -1.0}, "clamp"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _maf(**kwargs)


# ------------------------------------------------------------------------------- sampling


def test_sample_shape_and_seeds(randomize):
    model = _maf()
    randomize(model, seed=9, scale=0.3)
    a = model.sample(5, seed=SEED).numpy()
    b = model.sample(5, seed=SEED).numpy()
    c = model.sample(5, seed=tf.constant([3, 4])).numpy()
    assert a.shape == (5, EVENT)
    assert np.all(np.isfinite(a))
    np.testing.assert_array_equal(a, b)
    assert np.all(np.abs(a - c) > 1e-6)


def test_samples_map_back_to_the_base_draws(float64, randomize):
    model = _maf(preprocessing=preprocessing_config())
    randomize(model, seed=10, scale=0.3)
    x = model.sample(6, seed=SEED)
    z = model.base_distribution().sample(6, seed=SEED)
    y = tf.constant(x.numpy())
    for bijector in reversed(model.bijectors(training=False)):
        y = bijector.inverse(y)
    np.testing.assert_allclose(y.numpy(), z.numpy(), rtol=0, atol=1e-8)


def test_sample_in_tf_function_with_dynamic_n(randomize):
    model = _maf(context_size=CONTEXT)
    randomize(model, seed=11, scale=0.3)
    context = tf.constant([0.5, -1.0], dtype=tf.float32)
    sample = tf.function(
        lambda n, seed: model.sample(n, seed=seed, context=context),
        input_signature=[tf.TensorSpec([], tf.int32), tf.TensorSpec([2], tf.int32)],
    )
    assert sample(tf.constant(3), SEED).shape == (3, EVENT)
    graph = sample(tf.constant(5), SEED).numpy()
    eager = model.sample(5, seed=SEED, context=context).numpy()
    np.testing.assert_allclose(graph, eager, rtol=1e-5, atol=1e-6)


def test_context_changes_log_prob_and_samples(randomize):
    model = _maf(context_size=CONTEXT)
    randomize(model, seed=12, scale=0.3)
    x = _data(8)
    c1, c2 = np.zeros((8, CONTEXT)), np.ones((8, CONTEXT))
    assert np.all(np.abs(model.log_prob(x, c1).numpy() - model.log_prob(x, c2).numpy()) > 1e-4)
    s1 = model.sample(8, seed=SEED, context=c1).numpy()
    s2 = model.sample(8, seed=SEED, context=c2).numpy()
    assert np.all(np.abs(s1 - s2) > 1e-5)
    broadcast = model.sample(8, seed=SEED, context=np.ones(CONTEXT)).numpy()
    np.testing.assert_array_equal(broadcast, s2)


# ------------------------------------------------------------------------------- training


def test_fit_on_correlated_gaussian_lowers_loss_to_the_entropy():
    cov = np.array([[4.0, 0.9], [0.9, 0.25]])  # correlation 0.9
    entropy = 0.5 * math.log(np.linalg.det(2 * math.pi * math.e * cov))
    rng = np.random.default_rng(0)
    train = rng.multivariate_normal([1.0, -0.5], cov, size=2048).astype("float32")
    test = rng.multivariate_normal([1.0, -0.5], cov, size=2048).astype("float32")
    model = _maf(event_size=2)
    before = [w.numpy().copy() for w in model.trainable_weights]
    initial = float(-model.log_prob(test).numpy().mean())
    dataset = tf.data.Dataset.from_tensor_slices(train).shuffle(2048, seed=0).batch(128)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = model.fit(dataset, epochs=6, verbose=0, shuffle=False)
    final = float(-model.log_prob(test).numpy().mean())
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert initial - final > 1.0
    assert abs(final - entropy) < 0.15, (final, entropy)
    changed = [
        not np.allclose(b, w.numpy()) for b, w in zip(before, model.trainable_weights, strict=True)
    ]
    assert all(changed)


def test_fit_with_conditional_dict_dataset():
    model = _maf(context_size=CONTEXT)
    x, c = _data(256).astype("float32"), _context(256).astype("float32")
    x[:, 0] += 3.0 * c[:, 0]  # x depends on the context
    dataset = tf.data.Dataset.from_tensor_slices({"x": x, "context": c}).batch(64)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = model.fit(dataset, epochs=4, verbose=0, shuffle=False)
    assert history.history["loss"][-1] < history.history["loss"][0] - 0.2


# ---------------------------------------------------------------------------- save / load


def test_config_round_trip():
    model = _maf(context_size=CONTEXT, activation="tanh", preprocessing=preprocessing_config())
    config = model.get_config()
    for key in ["event_size", "context_size", "blocks", "hidden_units", "activation"]:
        assert key in config
    assert config["preprocessing"] == preprocessing_config()
    assert MAF.from_config(config).get_config() == config


@pytest.mark.parametrize("name", ["plain", "conditional"])
def test_save_and_load_keep_log_prob_and_samples(name, tmp_path, randomize):
    model = _maf(**CONFIGS[name], preprocessing=preprocessing_config())
    randomize(model, seed=13, scale=0.3)
    x, context = _bounded_data(8), _context(8)
    context = context if model.context_size else None
    model.log_prob(x, context, training=True)  # moving statistics away from their start
    path = tmp_path / "maf.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded, MAF)
    np.testing.assert_array_equal(
        loaded.log_prob(x, context).numpy(), model.log_prob(x, context).numpy()
    )
    np.testing.assert_array_equal(
        loaded.sample(4, SEED, context=None if context is None else context[:4]).numpy(),
        model.sample(4, SEED, context=None if context is None else context[:4]).numpy(),
    )
