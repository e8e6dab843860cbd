"""BNAF: masks, log-space helpers, Jacobians vs autodiff, refusals, save/load and a tiny fit."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from flow_testing import preprocessing_config

from tfjetflows.config import ConfigError
from tfjetflows.flows import bnaf as bnaf_module
from tfjetflows.flows.bnaf import (
    BNAF,
    BlockFlow,
    MaskedWeight,
    block_ids,
    bnaf_memory_bytes,
    bnaf_parameter_count,
    diagonal_block_mask,
    log_block_product,
    log_tanh_derivative,
    lower_block_mask,
)
from tfjetflows.flows.maf import MAF

EVENT = 3
SMALL = {"event_size": EVENT, "flows": 2, "layers": 2, "hidden_factor": 3}
NO_INVERSE = "BNAF has no closed-form inverse: it scores jets .* use a MAF to sample"


def _bnaf(seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    return BNAF(**{**SMALL, **kwargs})


def _data(n=8, seed=0, dim=EVENT, scale=1.5):
    return np.random.default_rng(seed).normal(loc=0.3, scale=scale, size=(n, dim))


def _bounded_data(n=8, seed=0):
    x = _data(n, seed)
    x[:, 0] = np.random.default_rng(seed + 10).uniform(0.1, 3.9, size=n)
    return x


def _jacobian(fn, x):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fn(x)
    return tape.batch_jacobian(y, x).numpy()


# ------------------------------------------------------------------------------------ masks


def test_block_ids():
    np.testing.assert_array_equal(block_ids(3, 2), [0, 0, 1, 1, 2, 2])


@pytest.mark.parametrize(
    ("blocks", "out_size", "in_size", "diagonal", "lower"),
    [
        (
            3,
            2,
            1,
            [[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1]],
            [[0, 0, 0], [0, 0, 0], [1, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 0]],
        ),
        (
            2,
            2,
            3,
            [[1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1]],
            [[0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0]],
        ),
        (
            3,
            1,
            2,
            [[1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1]],
            [[0, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0]],
        ),
    ],
)
def test_masks_match_literal_matrices(blocks, out_size, in_size, diagonal, lower):
    np.testing.assert_array_equal(diagonal_block_mask(blocks, out_size, in_size), diagonal)
    np.testing.assert_array_equal(lower_block_mask(blocks, out_size, in_size), lower)


@pytest.mark.parametrize(("out_size", "in_size"), [(1, 1), (3, 1), (2, 4), (1, 3)])
def test_masked_weight_structure_and_weight_norm(out_size, in_size, float64, randomize):
    keras.utils.set_random_seed(0)
    layer = MaskedWeight(EVENT, in_size, out_size)
    randomize(layer, seed=1, scale=0.7)
    diagonal, lower = (m.numpy() for m in layer.masks())
    np.testing.assert_array_equal(diagonal, diagonal_block_mask(EVENT, out_size, in_size))
    np.testing.assert_array_equal(lower, lower_block_mask(EVENT, out_size, in_size))
    weight, log_diagonal = (t.numpy() for t in layer.weight_and_log_diagonal())
    upper = 1 - diagonal - lower
    assert np.all(weight[upper == 1] == 0.0)
    assert np.all(weight[diagonal == 1] > 0)
    # weight normalisation: every row has norm exp(log_scale)
    np.testing.assert_allclose(
        np.linalg.norm(weight, axis=1), np.exp(layer.log_scale.numpy()), rtol=1e-12
    )
    # the log diagonal blocks are the logs of the weight's diagonal blocks
    blocks = weight.reshape(EVENT, out_size, EVENT, in_size)
    direct = np.stack([blocks[d, :, d, :] for d in range(EVENT)])
    assert log_diagonal.shape == (EVENT, out_size, in_size)
    np.testing.assert_allclose(log_diagonal, np.log(direct), rtol=0, atol=1e-12)
    x = _data(4, dim=EVENT * in_size)
    y, _ = layer(x)
    np.testing.assert_allclose(y.numpy(), x @ weight.T + layer.bias.numpy(), atol=1e-12)


# -------------------------------------------------------------------- log-space helpers


@pytest.mark.parametrize(
    ("shape_a", "shape_b"),
    [((4, 2, 3), (4, 3, 1)), ((4, 2, 3), (5, 4, 3, 1)), ((5, 4, 1, 3), (5, 4, 3, 2))],
)
def test_log_block_product_equals_direct_product(shape_a, shape_b):
    rng = np.random.default_rng(0)
    log_a, log_b = rng.normal(size=shape_a), rng.normal(size=shape_b)
    got = log_block_product(tf.constant(log_a), tf.constant(log_b)).numpy()
    expected = np.log(np.matmul(np.exp(log_a), np.exp(log_b)))
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_log_block_product_is_stable_where_exp_underflows():
    rng = np.random.default_rng(1)
    log_a, log_b = rng.normal(size=(3, 2, 4)), rng.normal(size=(3, 4, 2))
    reference = log_block_product(tf.constant(log_a), tf.constant(log_b)).numpy()
    shifted = log_block_product(tf.constant(log_a - 1000.0), tf.constant(log_b - 500.0)).numpy()
    assert np.all(np.isfinite(shifted))
    np.testing.assert_allclose(shifted, reference - 1500.0, rtol=0, atol=1e-9)


def test_log_tanh_derivative():
    x = np.linspace(-5.0, 5.0, 21)
    got = log_tanh_derivative(tf.constant(x)).numpy()
    np.testing.assert_allclose(got, np.log(1.0 - np.tanh(x) ** 2), rtol=0, atol=1e-12)
    big = np.array([-60.0, 60.0, 400.0])  # 1 - tanh^2 underflows to 0 here
    got = log_tanh_derivative(tf.constant(big, dtype=tf.float32)).numpy()
    np.testing.assert_allclose(got, 2 * math.log(2.0) - 2 * np.abs(big), rtol=1e-6)


# ---------------------------------------------------------------------------- Jacobians


FLOW_CASES = {
    "plain_1_layer": {"layers": 1, "residual": None},
    "plain_2_layers": {"layers": 2, "residual": None},
    "gated_1_layer": {"layers": 1, "residual": "gated"},
    "gated_2_layers": {"layers": 2, "residual": "gated"},
}


@pytest.mark.parametrize("name", list(FLOW_CASES))
def test_flow_log_det_matches_autodiff_jacobian(name, float64, randomize):
    keras.utils.set_random_seed(2)
    flow = BlockFlow(4, hidden_factor=3, **FLOW_CASES[name])
    randomize(flow, seed=3, scale=0.8)
    x = _data(6, dim=4, scale=2.0)
    jacobian = _jacobian(lambda t: flow(t)[0], x)
    _, log_diagonal = flow.forward_and_log_diagonal(tf.constant(x))
    _, log_det = flow(tf.constant(x))
    # autoregressive: strict upper triangle exactly zero, diagonal positive
    assert np.all(np.triu(jacobian, k=1) == 0.0)
    diagonal = np.diagonal(jacobian, axis1=1, axis2=2)
    assert np.all(diagonal > 0)
    np.testing.assert_allclose(log_diagonal.numpy(), np.log(diagonal), rtol=0, atol=1e-10)
    sign, expected = np.linalg.slogdet(jacobian)
    assert np.all(sign == 1)
    np.testing.assert_allclose(log_det.numpy(), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("residual", [None, "gated"])
def test_model_log_det_matches_autodiff_jacobian(residual, float64, randomize):
    model = _bnaf(flows=3, residual=residual)
    randomize(model, seed=4, scale=0.6)
    x = _data(5, seed=5)
    jacobian = _jacobian(lambda t: model.transform(t)[0], x)
    z, log_det = model.transform(tf.constant(x))
    np.testing.assert_allclose(log_det.numpy(), np.linalg.slogdet(jacobian)[1], atol=1e-10)
    expected = -0.5 * np.sum(z.numpy() ** 2, axis=1) - 1.5 * math.log(2 * math.pi)
    np.testing.assert_allclose(
        model.log_prob(x).numpy(), expected + log_det.numpy(), rtol=0, atol=1e-12
    )


def test_one_dimensional_density_integrates_to_one(float64, randomize):
    model = _bnaf(event_size=1, flows=2, layers=2, hidden_factor=4)
    randomize(model, seed=6, scale=0.8)
    for flow in model.flow_layers:
        flow.gate.assign(0.0)  # a = 1/2: tails of the (1 - a) x term stay within the grid
    grid = np.linspace(-60.0, 60.0, 120001)[:, None]
    density = np.exp(model.log_prob(grid).numpy())
    assert abs(np.trapezoid(density, grid[:, 0]) - 1.0) < 1e-6


def test_preprocessing_log_det_is_part_of_log_prob(float64, randomize):
    with_pre = _bnaf(preprocessing=preprocessing_config())
    plain = _bnaf()
    randomize(with_pre, seed=7)
    randomize(plain, seed=7)
    x = tf.constant(_bounded_data(8))
    pre = with_pre.preprocessing
    assert pre.dtype == tf.float64
    expected = plain.log_prob(pre.inverse(x)) + pre.inverse_log_det_jacobian(x, event_ndims=1)
    np.testing.assert_allclose(with_pre.log_prob(x).numpy(), expected.numpy(), atol=1e-12)


def test_float32_log_prob_is_finite_when_tanh_saturates():
    model = _bnaf()
    x = np.array([[1e3, -1e3, 50.0], [0.0, 0.0, 0.0]], dtype="float32")
    assert np.all(np.isfinite(model.log_prob(x).numpy()))


# --------------------------------------------------------------------------- interface


def test_log_prob_shape_inputs_and_can_sample():
    model = _bnaf()
    x = _data(7).astype("float32")
    log_prob = model(x)
    assert log_prob.shape == (7,)
    np.testing.assert_array_equal(model({"x": x}).numpy(), log_prob.numpy())
    assert BNAF.can_sample is False and MAF.can_sample is True
    with pytest.raises(ValueError, match="tuple"):
        model((x, x))
    with pytest.raises(ValueError, match="unconditional"):
        model.log_prob(x, context=np.zeros((7, 1)))


@pytest.mark.parametrize("call", [lambda m: m.inverse(tf.zeros([2, EVENT])), lambda m: m.sample(2)])
def test_inverse_and_sample_raise(call):
    with pytest.raises(NotImplementedError, match=NO_INVERSE):
        call(_bnaf())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"context_size": 2}, "BNAF is unconditional; use MAF for class-conditional models"),
        ({"event_size": 0}, "event_size"),
        ({"flows": 0}, "flows"),
        ({"layers": 0}, "layers"),
        ({"hidden_factor": 0}, "hidden_factor"),
        ({"residual": "normal"}, "residual"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _bnaf(**kwargs)


def test_parameter_count_matches_the_model():
    model = _bnaf()
    assert model.count_params() == bnaf_parameter_count(EVENT, 3, 2, 2)
    assert bnaf_parameter_count(EVENT, 3, 2, 2, residual=None) == model.count_params() - 2
    # 3 masked layers of weight/log_scale/bias per flow, plus the gate
    assert len(model.trainable_weights) == 2 * (3 * 3 + 1)


def test_memory_refusal_names_the_figures(monkeypatch):
    need = bnaf_memory_bytes(40, 10, 2, 2)
    monkeypatch.setattr(bnaf_module, "physical_memory_bytes", lambda: need)  # 50% is too little
    expected = (
        f"BNAF with event_size=40, hidden_factor=10, layers=2, flows=2 needs about "
        f"{need / 2**30:.1f} GiB to train; this machine has {need / 2**30:.1f} GiB"
    )
    with pytest.raises(ConfigError, match=expected) as info:
        BNAF(event_size=40, hidden_factor=10, layers=2, flows=2)
    assert "lower hidden_factor/layers or use a smaller representation" in str(info.value)
    monkeypatch.setattr(bnaf_module, "physical_memory_bytes", lambda: 3 * need)
    assert BNAF(event_size=40, hidden_factor=10, layers=2, flows=2).event_size == 40


def test_memory_refusal_on_this_machine_before_allocating():
    # about (10 * 20000)^2 * 4 bytes per hidden weight: terabytes, refused at once
    with pytest.raises(ConfigError, match="event_size=20000.* GiB"):
        BNAF(event_size=20000)


def test_memory_estimate_grows_as_expected():
    small = bnaf_memory_bytes(100, 10, 2, 2)
    assert bnaf_memory_bytes(2000, 10, 2, 2) > 3.7 * bnaf_memory_bytes(1000, 10, 2, 2)  # ~D^2
    assert bnaf_memory_bytes(100, 10, 2, 2, dtype_bytes=8) == 2 * small
    # at least the weights, gradients and Adam moments of every parameter
    assert small >= 4 * 4 * bnaf_parameter_count(100, 10, 2, 2)


# ------------------------------------------------------------------------------ gradients


@pytest.mark.parametrize("residual", [None, "gated"])
def test_every_trainable_variable_gets_a_gradient(residual, randomize):
    model = _bnaf(residual=residual)
    randomize(model, seed=8, scale=0.3)
    x = _data(32).astype("float32")
    with tf.GradientTape() as tape:
        loss = model.compute_loss(x, training=True)
    grads = tape.gradient(loss, model.trainable_weights)
    for variable, grad in zip(model.trainable_weights, grads, strict=True):
        assert grad is not None, variable.path
        assert np.all(np.isfinite(grad.numpy())), variable.path
        assert np.any(grad.numpy() != 0), variable.path


# ---------------------------------------------------------------------------- save / load


def test_config_round_trip():
    model = _bnaf(residual=None, preprocessing=preprocessing_config())
    config = model.get_config()
    for key in ["event_size", "context_size", "flows", "layers", "hidden_factor", "residual"]:
        assert key in config
    assert config["layers"] == 2 and config["residual"] is None
    assert config["preprocessing"] == preprocessing_config()
    assert BNAF.from_config(config).get_config() == config


def test_save_and_load_keep_log_prob(tmp_path, randomize):
    model = _bnaf(preprocessing=preprocessing_config())
    randomize(model, seed=9, scale=0.4)
    x = _bounded_data(8).astype("float32")
    path = tmp_path / "bnaf.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded, BNAF)
    assert loaded.get_config() == model.get_config()
    np.testing.assert_array_equal(loaded.log_prob(x).numpy(), model.log_prob(x).numpy())


# ------------------------------------------------------------------------------ training


def test_fit_on_correlated_gaussian_lowers_loss_to_near_the_entropy():
    cov = np.array([[4.0, 0.9], [0.9, 0.25]])  # correlation 0.9
    entropy = 0.5 * math.log(np.linalg.det(2 * math.pi * math.e * cov))
    rng = np.random.default_rng(0)
    train = rng.multivariate_normal([1.0, -0.5], cov, size=2048).astype("float32")
    test = rng.multivariate_normal([1.0, -0.5], cov, size=2048).astype("float32")
    model = _bnaf(event_size=2, flows=1, layers=1, hidden_factor=8)
    initial = float(-model.log_prob(test).numpy().mean())
    dataset = tf.data.Dataset.from_tensor_slices(train).shuffle(2048, seed=0).batch(128)
    model.compile(optimizer=keras.optimizers.Adam(2e-2))
    history = model.fit(dataset, epochs=8, verbose=0, shuffle=False)
    final = float(-model.log_prob(test).numpy().mean())
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert "nats_per_dim" in history.history
    assert initial - final > 1.0, (initial, final)
    assert abs(final - entropy) < 0.15, (final, entropy)
