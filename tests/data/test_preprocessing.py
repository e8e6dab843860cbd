"""Tests for tfjetflows.data.preprocessing: the bijector contract, in float64, for every spec."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tfjetflows.data.preprocessing import CLIP_EPS, Preprocessing, fit_preprocessing
from tfjetflows.data.representations import (
    FeaturesRepresentation,
    HitsRepresentation,
    ImageRepresentation,
)
from tfjetflows.data.schema import DataError

SIDE = 125


def make_jets(n: int = 6, seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Sparse float32 jets (signed tracks, ECAL, HCAL towers as 5x5 blocks) and scalars."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 3, SIDE, SIDE), dtype=np.float32)
    for i in range(n):
        tracks = rng.choice(SIDE * SIDE, size=6, replace=False)
        images[i, 0].flat[tracks] = rng.choice([-1.0, 1.0], 6) * (rng.exponential(2.0, 6) + 2e-3)
        ecal = rng.choice(SIDE * SIDE, size=20 + 3 * i, replace=False)
        images[i, 1].flat[ecal] = rng.exponential(1.0, ecal.size) + 2e-3
        towers = np.zeros(25 * 25, dtype=np.float32)
        towers[rng.choice(25 * 25, size=4 + i, replace=False)] = rng.exponential(3.0, 4 + i)
        images[i, 2] = np.kron(towers.reshape(25, 25), np.ones((5, 5), np.float32))
    scalars = {"pt": rng.uniform(70, 300, n), "m0": rng.uniform(5, 50, n), "y": np.arange(n) % 2}
    return images, scalars


REPRESENTATIONS = {
    "hits": lambda: HitsRepresentation(hits_per_channel={"tracks": 3, "ecal": 24, "hcal": 5}),
    "image": lambda: ImageRepresentation(pool=25),
    "features": lambda: FeaturesRepresentation(columns=["pt", "m0", "y"]),
}


@pytest.fixture(scope="module", params=sorted(REPRESENTATIONS))
def case(request):
    """(name, representation, x float64 [N, D], fitted float64 Preprocessing)."""
    rep = REPRESENTATIONS[request.param]()
    images, scalars = make_jets()
    x = rep.encode(images, scalars, np.random.default_rng(1)).astype(np.float64)
    return request.param, rep, x, fit_preprocessing(rep, x, dtype=tf.float64)


def test_shapes_and_dtypes(case):
    _, rep, x, pre = case
    z = pre.inverse(tf.constant(x))
    assert z.shape == x.shape and z.dtype == tf.float64 and pre.dim == rep.dim
    assert pre.inverse_log_det_jacobian(tf.constant(x), event_ndims=1).shape == (x.shape[0],)
    assert pre.forward_log_det_jacobian(z, event_ndims=1).shape == (x.shape[0],)
    assert np.all(np.isfinite(z.numpy()))


def test_inverse_of_forward_and_forward_of_inverse(case):
    _, _, x, pre = case
    # round trips through numpy, so that the bijector cache cannot answer
    z = pre.inverse(tf.constant(x)).numpy()
    assert not np.allclose(z, x)
    np.testing.assert_allclose(pre.forward(tf.constant(z)).numpy(), x, rtol=1e-10, atol=1e-12)
    z_rand = np.random.default_rng(2).normal(size=z.shape)
    x_rand = pre.forward(tf.constant(z_rand)).numpy()
    np.testing.assert_allclose(pre.inverse(tf.constant(x_rand)).numpy(), z_rand, atol=1e-8)


def test_inverse_log_det_matches_autodiff_jacobian(case):
    _, _, x, pre = case
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        z = pre.inverse(xt)
    jacobian = tape.batch_jacobian(z, xt).numpy()
    sign, logdet = np.linalg.slogdet(jacobian)
    assert np.all(sign != 0)
    ildj = pre.inverse_log_det_jacobian(tf.identity(xt), event_ndims=1).numpy()
    np.testing.assert_allclose(ildj, logdet, rtol=1e-10, atol=1e-8)


def test_forward_log_det_is_minus_inverse_log_det(case):
    _, _, x, pre = case
    z = pre.inverse(tf.constant(x)).numpy()
    fldj = pre.forward_log_det_jacobian(tf.constant(z), event_ndims=1).numpy()
    ildj = pre.inverse_log_det_jacobian(tf.constant(x), event_ndims=1).numpy()
    np.testing.assert_allclose(fldj, -ildj, rtol=1e-10, atol=1e-8)
    # also away from the data, where sigmoid/sinh are far in their tails
    z_far = np.random.default_rng(3).normal(scale=4.0, size=z.shape)
    with tf.GradientTape() as tape:
        zt = tf.constant(z_far)
        tape.watch(zt)
        xt = pre.forward(zt)
    _, logdet = np.linalg.slogdet(tape.batch_jacobian(xt, zt).numpy())
    fldj_far = pre.forward_log_det_jacobian(tf.constant(z_far), event_ndims=1).numpy()
    # looser here: autodiff of sigmoid forms 1 - sigmoid(y), which loses digits in the tails
    np.testing.assert_allclose(fldj_far, logdet, rtol=1e-7, atol=1e-6)


def test_fit_standardizes_its_own_sample(case):
    name, _, x, pre = case
    z = pre.inverse(tf.constant(x)).numpy()
    varying = pre.std > 1e-6
    assert varying.sum() > 0
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-9)
    np.testing.assert_allclose(z[:, varying].std(axis=0), 1.0, rtol=1e-9)
    if name == "features":  # free dims: plain standardization
        np.testing.assert_allclose(pre.mean, x.mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(pre.std, x.std(axis=0), rtol=1e-12)


def test_transformed_distribution_log_prob_in_data_units(case):
    _, rep, x, pre = case
    base = tfp.distributions.MultivariateNormalDiag(tf.zeros(rep.dim, tf.float64))
    dist = tfp.distributions.TransformedDistribution(base, pre)
    z = pre.inverse(tf.constant(x)).numpy()
    ildj = pre.inverse_log_det_jacobian(tf.constant(x), event_ndims=1).numpy()
    expected = base.log_prob(z).numpy() + ildj
    np.testing.assert_allclose(dist.log_prob(tf.constant(x)).numpy(), expected, rtol=1e-12)


def test_config_round_trip(case):
    _, _, x, pre = case
    config = json.loads(json.dumps(pre.get_config()))  # plain types only (NaN written as None)
    rebuilt = Preprocessing.from_config(config)
    assert rebuilt.dtype == tf.float64
    np.testing.assert_array_equal(
        rebuilt.inverse(tf.constant(x)).numpy(), pre.inverse(tf.constant(x)).numpy()
    )


def test_known_transforms_by_hand():
    spec = {
        "lower": np.array([0.0, np.nan, np.nan]),
        "upper": np.array([4.0, np.nan, np.nan]),
        "energy_scale": np.array([np.nan, 1e-3, np.nan]),
    }
    pre = Preprocessing(spec, [0.5, 1.0, -2.0], [2.0, 3.0, 0.5], dtype=tf.float64)
    x = np.array([[1.0, 50.0, 7.0]])
    t = 0.25
    z = [(np.log(t / (1 - t)) - 0.5) / 2.0, (np.arcsinh(5e4) - 1.0) / 3.0, (7.0 + 2.0) / 0.5]
    np.testing.assert_allclose(pre.inverse(tf.constant(x)).numpy()[0], z, rtol=1e-12)
    ildj = -np.log(4.0 * t * (1 - t)) - np.log(1e-3 * np.sqrt(1 + 5e4**2)) - np.log(2.0 * 3.0 * 0.5)
    np.testing.assert_allclose(
        pre.inverse_log_det_jacobian(tf.constant(x), event_ndims=1).numpy(), [ildj], rtol=1e-12
    )


def test_bounds_are_clipped_to_finite_values():
    spec = {"lower": np.zeros(2), "upper": np.full(2, 5.0), "energy_scale": np.full(2, np.nan)}
    pre = Preprocessing(spec, np.zeros(2), np.ones(2), dtype=tf.float32)
    x = tf.constant([[0.0, 5.0], [-1.0, 6.0]])
    z = pre.inverse(x).numpy()
    logit = np.log(CLIP_EPS / (1 - CLIP_EPS))
    np.testing.assert_allclose(z, [[logit, -logit], [logit, -logit]], rtol=1e-3)
    assert np.all(np.isfinite(pre.inverse_log_det_jacobian(x, event_ndims=1).numpy()))
    # float32 forward saturates onto the bounds, never beyond them
    x_far = pre.forward(tf.constant([[-100.0, 100.0]])).numpy()
    np.testing.assert_array_equal(x_far, [[0.0, 5.0]])


def test_energy_log_det_does_not_overflow():
    spec = {"lower": [None], "upper": [None], "energy_scale": [1e-3]}
    pre = Preprocessing(spec, [0.0], [1.0], dtype=tf.float32)
    x = tf.constant([[1e36], [-1e36]])
    ildj = pre.inverse_log_det_jacobian(x, event_ndims=1).numpy()
    np.testing.assert_allclose(ildj, -np.log(1e36) * np.ones(2), rtol=1e-5)


@pytest.mark.parametrize(
    ("spec", "mean", "std", "match"),
    [
        ({"lower": [0.0], "upper": [1.0]}, [0.0], [1.0], "lacks"),
        ({"lower": [0.0], "upper": [np.nan], "energy_scale": [np.nan]}, [0.0], [1.0], "only one"),
        ({"lower": [0.0], "upper": [1.0], "energy_scale": [1.0]}, [0.0], [1.0], "both"),
        ({"lower": [1.0], "upper": [1.0], "energy_scale": [np.nan]}, [0.0], [1.0], "exceed"),
        ({"lower": [0.0], "upper": [1.0], "energy_scale": [np.nan]}, [0.0, 1.0], [1.0], "length"),
        ({"lower": [0.0], "upper": [1.0], "energy_scale": [np.nan]}, [0.0], [0.0], "positive"),
    ],
)
def test_bad_preprocessing_arguments(spec, mean, std, match):
    with pytest.raises(ValueError, match=match):
        Preprocessing(spec, mean, std)


def test_fit_rejects_bad_samples():
    rep = FeaturesRepresentation(columns=["pt", "m0"])
    with pytest.raises(DataError, match=r"\[M, 2\]"):
        fit_preprocessing(rep, np.zeros((3, 3)))
    x = np.ones((3, 2))
    x[1, 1] = np.nan
    with pytest.raises(DataError, match="non-finite values in dimension.*m0"):
        fit_preprocessing(rep, x)


def test_fit_floors_constant_dimensions():
    rep = FeaturesRepresentation(columns=["pt", "m0"])
    x = np.stack([np.arange(5.0), np.full(5, 3.0)], axis=1)
    pre = fit_preprocessing(rep, x, dtype=tf.float64)
    assert pre.std[1] == 1e-6
    np.testing.assert_array_equal(pre.inverse(tf.constant(x)).numpy()[:, 1], np.zeros(5))
