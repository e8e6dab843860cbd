"""Bijector contract, MADE masks, the autoregressive property, and batch norm in both modes."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tfjetflows.flows.batchnorm import BatchNormBijector, BatchNormLayer
from tfjetflows.flows.made import MADE, hidden_degrees, input_degrees, masks, reversed_order

tfb = tfp.bijectors

EVENT = 4
BATCH = 5
CONTEXT = 2


# ------------------------------------------------------------------------------ constructors


def _maf_block(randomize, order="left-to-right", context_size=0):
    keras.utils.set_random_seed(1)
    made = MADE(EVENT, hidden_units=(16, 16), context_size=context_size, order=order)
    randomize(made, seed=2)
    kwargs = {}
    if context_size:
        context = np.random.default_rng(3).normal(size=(BATCH, context_size))
        kwargs = {"conditional_input": tf.constant(context)}

    def fn(y, conditional_input=None):
        return made(y, context=conditional_input)

    return tfb.MaskedAutoregressiveFlow(shift_and_log_scale_fn=fn), kwargs


def _batch_norm_eval(randomize):
    layer = BatchNormLayer(EVENT, momentum=0.5)
    randomize(layer, seed=4)
    return BatchNormBijector(layer, training=False), {}


def _preprocessing(randomize):
    from tfjetflows.data.preprocessing import Preprocessing

    nan = float("nan")
    spec = {
        "lower": [0.0, nan, nan, -1.0],
        "upper": [2.0, nan, nan, 3.0],
        "energy_scale": [nan, 0.5, nan, nan],
    }
    return Preprocessing(spec, [0.1, 0.5, -0.3, 0.2], [0.8, 1.5, 2.0, 0.6], dtype=tf.float64), {}


BIJECTORS = {
    "maf_left_to_right": lambda r: _maf_block(r),
    "maf_right_to_left": lambda r: _maf_block(r, order="right-to-left"),
    "maf_permuted": lambda r: _maf_block(r, order=[2, 0, 3, 1]),
    "maf_conditional": lambda r: _maf_block(r, context_size=CONTEXT),
    "batch_norm_eval": _batch_norm_eval,
    "preprocessing": _preprocessing,
}


def _fresh(t):
    """A new tensor with the same values: defeats TFP's bijector cache (keyed on the tensor)."""
    return tf.constant(np.asarray(t))


@pytest.mark.parametrize("name", list(BIJECTORS))
def test_bijector_contract(name, float64, randomize):
    bijector, kwargs = BIJECTORS[name](randomize)
    x = tf.constant(0.8 * np.random.default_rng(5).normal(size=(BATCH, EVENT)))

    with tf.GradientTape() as tape:
        tape.watch(x)
        y = bijector.forward(x, **kwargs)
    jacobian = tape.batch_jacobian(y, x).numpy()
    assert y.shape == x.shape
    assert np.all(np.isfinite(y.numpy()))
    assert not np.allclose(y.numpy(), x.numpy(), atol=1e-3)  # not the identity

    x_back = bijector.inverse(_fresh(y), **kwargs)
    np.testing.assert_allclose(x_back.numpy(), x.numpy(), rtol=0, atol=1e-10)

    fldj = bijector.forward_log_det_jacobian(_fresh(x), event_ndims=1, **kwargs).numpy()
    assert fldj.shape == (BATCH,)
    _, logabsdet = np.linalg.slogdet(jacobian)
    np.testing.assert_allclose(fldj, logabsdet, rtol=0, atol=1e-10)

    ildj = bijector.inverse_log_det_jacobian(_fresh(y), event_ndims=1, **kwargs).numpy()
    np.testing.assert_allclose(ildj, -fldj, rtol=0, atol=1e-10)


# ------------------------------------------------------------------------------- MADE masks


def test_masks_left_to_right_literal():
    first, last = masks(3, [4], "left-to-right")
    np.testing.assert_array_equal(first, [[1, 1, 1, 1], [0, 1, 0, 1], [0, 0, 0, 0]])
    np.testing.assert_array_equal(last, [[0, 1, 1], [0, 0, 1], [0, 1, 1], [0, 0, 1]])


def test_masks_right_to_left_literal():
    first, last = masks(3, [4], "right-to-left")
    np.testing.assert_array_equal(first, [[0, 0, 0, 0], [0, 1, 0, 1], [1, 1, 1, 1]])
    np.testing.assert_array_equal(last, [[1, 1, 0], [1, 0, 0], [1, 1, 0], [1, 0, 0]])


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        ("left-to-right", [1, 2, 3, 4]),
        ("right-to-left", [4, 3, 2, 1]),
        ([2, 0, 3, 1], [2, 4, 1, 3]),
    ],
)
def test_input_degrees(order, expected):
    np.testing.assert_array_equal(input_degrees(4, order), expected)


def test_hidden_degrees_cycle_and_single_dimension():
    np.testing.assert_array_equal(hidden_degrees(5, 3), [1, 2, 1, 2, 1])
    np.testing.assert_array_equal(hidden_degrees(3, 1), [1, 1, 1])


@pytest.mark.parametrize("order", ["left-to-right", "right-to-left", [2, 0, 3, 1]])
def test_reversed_order_reverses_degrees(order):
    forward = input_degrees(4, order)
    backward = input_degrees(4, reversed_order(order, 4))
    np.testing.assert_array_equal(forward + backward, 5)


@pytest.mark.parametrize("order", ["diagonal", [0, 0, 1, 2], [0, 1, 2]])
def test_bad_order_is_rejected(order):
    with pytest.raises(ValueError, match="MADE: "):
        input_degrees(4, order)


@pytest.mark.parametrize("hidden", [[3], [8, 8], [5, 7, 6]])
@pytest.mark.parametrize("order", ["left-to-right", "right-to-left", [2, 0, 3, 1]])
def test_mask_product_is_strictly_triangular_in_the_order(order, hidden):
    connectivity = np.linalg.multi_dot(masks(4, hidden, order))
    degrees = input_degrees(4, order)
    # Input i can reach output j exactly when i precedes j (hidden widths >= D - 1).
    np.testing.assert_array_equal(connectivity > 0, degrees[:, None] < degrees[None, :])


# ------------------------------------------------------------------------------ MADE layer


def test_made_outputs_start_near_zero_and_clamp():
    keras.utils.set_random_seed(0)
    made = MADE(3, hidden_units=(16,), log_scale_clamp=2.0)
    x = tf.random.normal([6, 3])
    shift, log_scale = made(x)
    assert shift.shape == log_scale.shape == (6, 3)
    assert 0 < np.abs(log_scale.numpy()).max() < 0.2
    made.output_layer.kernel.assign(100.0 * tf.ones_like(made.output_layer.kernel))
    _, log_scale = made(x)
    assert log_scale.dtype == tf.float32
    assert 1.5 < np.abs(log_scale.numpy()).max() <= 2.0


def test_made_needs_its_context():
    made = MADE(3, hidden_units=(8,), context_size=2)
    with pytest.raises(ValueError, match="needs a context"):
        made(tf.zeros([2, 3]))


def test_made_config_round_trip():
    made = MADE(3, hidden_units=(8, 4), activation="tanh", context_size=2, order=[1, 2, 0])
    clone = MADE.from_config(made.get_config())
    assert clone.get_config() == made.get_config()
    layers = made.hidden_layers + [made.output_layer]
    clones = clone.hidden_layers + [clone.output_layer]
    for a, b in zip(layers, clones, strict=True):
        np.testing.assert_array_equal(a.kernel_mask, b.kernel_mask)


# ------------------------------------------------------------------ autoregressive property


ORDERS = {"left-to-right": [0, 1, 2, 3], "right-to-left": [3, 2, 1, 0], "permuted": [2, 0, 3, 1]}


def _direction(bijector, direction):
    return bijector.forward if direction == "forward" else bijector.inverse


@pytest.mark.parametrize("direction", ["forward", "inverse"])
@pytest.mark.parametrize("order_name", list(ORDERS))
def test_maf_block_jacobian_is_triangular_in_its_order(order_name, direction, float64, randomize):
    perm = ORDERS[order_name]
    bijector, _ = _maf_block(randomize, order=perm)
    x = tf.constant(np.random.default_rng(6).normal(size=(BATCH, EVENT)))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = _direction(bijector, direction)(x)
    jacobian = tape.batch_jacobian(y, x).numpy()[:, perm][:, :, perm]  # rows/cols in the order
    upper = np.triu(np.ones((EVENT, EVENT), dtype=bool), k=1)
    assert np.all(jacobian[:, upper] == 0.0)
    assert np.all(np.abs(jacobian[:, upper.T]).max(axis=0) > 1e-3)  # every lower entry is used
    assert np.all(np.abs(np.diagonal(jacobian, axis1=1, axis2=2)) > 0)


@pytest.mark.parametrize("direction", ["forward", "inverse"])
@pytest.mark.parametrize("position", range(EVENT))
def test_perturbing_one_input_moves_no_earlier_output(position, direction, float64, randomize):
    perm = ORDERS["permuted"]
    bijector, _ = _maf_block(randomize, order=perm)
    run = _direction(bijector, direction)
    x = np.random.default_rng(7).normal(size=(BATCH, EVENT))
    dim = perm[position]
    x_moved = x.copy()
    x_moved[:, dim] += 0.7
    delta = np.abs(run(tf.constant(x_moved)).numpy() - run(tf.constant(x)).numpy())
    earlier, later = perm[:position], perm[position:]
    assert np.all(delta[:, earlier] == 0.0)
    assert np.all(delta[:, dim] > 1e-6)
    assert delta[:, later].max() > 1e-3


# ------------------------------------------------------------------------------ batch norm


def _bn_layer(randomize, momentum):
    layer = BatchNormLayer(EVENT, momentum=momentum, epsilon=1e-3)
    randomize(layer, seed=8)
    return layer


@pytest.mark.parametrize("momentum", [0.0, 0.3])
def test_batch_norm_training_mode_matches_formula_and_updates(momentum, float64, randomize):
    layer = _bn_layer(randomize, momentum)
    log_gamma, beta = layer.log_gamma.numpy(), layer.beta.numpy()
    old_mean, old_var = layer.moving_mean.numpy(), layer.moving_variance.numpy()
    x = np.random.default_rng(9).normal(loc=2.0, scale=3.0, size=(16, EVENT))
    mean, var = x.mean(axis=0), x.var(axis=0)
    expected_z = (x - mean) / np.sqrt(var + 1e-3) * np.exp(log_gamma) + beta
    expected_ildj = np.sum(log_gamma - 0.5 * np.log(var + 1e-3))

    bijector = BatchNormBijector(layer, training=True)
    ildj = bijector.inverse_log_det_jacobian(tf.constant(x), event_ndims=1).numpy()
    np.testing.assert_array_equal(layer.moving_mean.numpy(), old_mean)  # ildj does not update
    z = bijector.inverse(tf.constant(x)).numpy()

    np.testing.assert_allclose(z, expected_z, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ildj, np.full(16, expected_ildj), rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        layer.moving_mean.numpy(), momentum * old_mean + (1 - momentum) * mean
    )
    np.testing.assert_allclose(
        layer.moving_variance.numpy(), momentum * old_var + (1 - momentum) * var
    )
    with pytest.raises(NotImplementedError, match="training mode"):
        bijector.forward(tf.constant(z))


def test_batch_norm_eval_mode_uses_moving_statistics(float64, randomize):
    layer = _bn_layer(randomize, 0.3)
    mean, var = layer.moving_mean.numpy(), layer.moving_variance.numpy()
    log_gamma, beta = layer.log_gamma.numpy(), layer.beta.numpy()
    x = np.random.default_rng(10).normal(size=(7, EVENT))
    z = BatchNormBijector(layer, training=False).inverse(tf.constant(x)).numpy()
    np.testing.assert_allclose(
        z, (x - mean) / np.sqrt(var + 1e-3) * np.exp(log_gamma) + beta, rtol=0, atol=1e-12
    )
    np.testing.assert_array_equal(layer.moving_mean.numpy(), mean)  # eval mode does not update


def test_batch_norm_momentum_zero_makes_modes_agree(float64, randomize):
    layer = _bn_layer(randomize, 0.0)
    x = tf.constant(np.random.default_rng(11).normal(loc=-1.0, scale=2.0, size=(32, EVENT)))
    z_train = layer(x, training=True).numpy()
    z_eval = layer(x, training=False).numpy()
    np.testing.assert_allclose(z_eval, z_train, rtol=0, atol=1e-12)


def test_batch_norm_layer_variables_are_tracked():
    layer = BatchNormLayer(3)
    assert sorted(v.name for v in layer.trainable_weights) == ["beta", "log_gamma"]
    assert sorted(v.name for v in layer.non_trainable_weights) == [
        "moving_mean",
        "moving_variance",
    ]
    assert BatchNormLayer.from_config(layer.get_config()).get_config() == layer.get_config()
