import math

import numpy as np
import pytest

from tfjetflows.evaluation.two_sample import (
    classifier_auc,
    fpd_with_floor,
    frechet_distance,
    w1_with_floor,
)


def test_w1_of_sample_with_itself_is_zero():
    x = np.random.default_rng(0).normal(size=400)
    result = w1_with_floor(x, x, np.random.default_rng(1))
    assert result["w1"] == 0.0
    assert result["ratio"] == 0.0
    assert set(result) == {"w1", "w1_err", "floor", "floor_err", "ratio"}


@pytest.mark.parametrize("shift", [0.3, 2.0])
def test_w1_of_shifted_copy_is_the_shift(shift):
    x = np.random.default_rng(2).normal(size=400)
    result = w1_with_floor(x + shift, x, np.random.default_rng(3))
    assert result["w1"] == pytest.approx(shift, rel=1e-12)
    assert result["ratio"] == pytest.approx(shift / result["floor"])
    assert 0 < result["w1_err"] < 0.2


def test_floor_shrinks_with_sample_size():
    rng = np.random.default_rng(4)
    small = w1_with_floor(rng.normal(size=100), rng.normal(size=100), rng)
    large = w1_with_floor(rng.normal(size=20000), rng.normal(size=20000), rng)
    # W1 between two halves of N normal values scales ~ 1/sqrt(N): ~0.016 at N = 20000
    assert large["floor"] < 0.03
    assert large["floor"] < small["floor"] / 5
    assert large["floor_err"] < large["floor"]
    assert large["ratio"] < 3


def test_ratio_is_inf_safe():
    constant = np.ones(10)
    assert w1_with_floor(constant + 1, constant, np.random.default_rng(0))["ratio"] == math.inf
    assert w1_with_floor(constant, constant, np.random.default_rng(0))["ratio"] == 1.0


def test_w1_bad_input():
    with pytest.raises(ValueError, match="2 real"):
        w1_with_floor(np.ones(3), np.ones(1), np.random.default_rng(0))


def test_frechet_of_sample_with_itself_is_zero():
    x = np.random.default_rng(5).normal(size=(300, 6)) @ np.random.default_rng(6).normal(
        size=(6, 6)
    )
    assert abs(frechet_distance(x, x)) < 1e-6


@pytest.mark.parametrize("shift", [[1.0, 0.0, 0.0], [0.5, -2.0, 3.0]])
def test_frechet_of_shifted_copy_is_squared_shift(shift):
    x = np.random.default_rng(7).normal(size=(200, 3))
    shift = np.array(shift)
    assert frechet_distance(x, x + shift) == pytest.approx(np.sum(shift**2), abs=1e-6)


def test_frechet_one_dimensional_gaussians_by_hand():
    rng = np.random.default_rng(8)
    a, b = rng.normal(1.0, 2.0, size=500), rng.normal(-0.5, 0.7, size=800)
    expected = (a.mean() - b.mean()) ** 2 + (a.std(ddof=1) - b.std(ddof=1)) ** 2
    assert frechet_distance(a[:, None], b[:, None]) == pytest.approx(expected, rel=1e-10)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-10)  # 1-D = one feature


def test_frechet_two_dimensional_diagonal_by_hand():
    # diagonal covariances commute: the distance adds per dimension
    rng = np.random.default_rng(9)
    a = rng.normal(size=(4000, 2)) * [1.0, 3.0]
    b = rng.normal(size=(4000, 2)) * [2.0, 1.0] + [1.0, 0.0]
    assert frechet_distance(a, b) == pytest.approx(1.0 + 1.0 + 4.0, rel=0.1)


def test_frechet_feature_mismatch():
    with pytest.raises(ValueError, match="features"):
        frechet_distance(np.zeros((5, 2)), np.zeros((5, 3)))


def test_fpd_of_shifted_copy_in_standardised_units():
    rng = np.random.default_rng(10)
    real = rng.normal(size=(600, 3)) * [1.0, 5.0, 0.1] + [0.0, 10.0, -3.0]
    shift = np.array([0.5, 5.0, 0.2])
    result = fpd_with_floor(real + shift, real, np.random.default_rng(11))
    expected = np.sum((shift / real.std(axis=0)) ** 2)
    assert result["fpd"] == pytest.approx(expected, rel=1e-9)
    assert 0 < result["floor"] < 0.1


def test_fpd_of_sample_with_itself():
    real = np.random.default_rng(12).normal(size=(200, 4))
    result = fpd_with_floor(real, real, np.random.default_rng(13))
    assert abs(result["fpd"]) < 1e-6
    assert result["floor"] > 0


@pytest.fixture(scope="module")
def features():
    rng = np.random.default_rng(14)
    return rng.normal(size=(1000, 10))


def test_classifier_auc_same_distribution(features):
    result = classifier_auc(features[:500], features[500:], seed=0)
    assert abs(result["auc"] - 0.5) < 0.1
    assert 0 < result["auc_err"] < 0.1


def test_classifier_auc_different_distributions(features):
    shifted = features[500:] + np.linspace(0.5, 1.5, 10)
    result = classifier_auc(features[:500], shifted, seed=0)
    assert result["auc"] > 0.95


def test_classifier_auc_balances_and_is_seeded(features):
    a, b = features[:100, :3], features[100:400, :3] + 1.0  # b is subsampled to 100
    first = classifier_auc(a, b, folds=3, seed=1, epochs=3)
    again = classifier_auc(a, b, folds=3, seed=1, epochs=3)
    assert first == again
    assert first["auc"] > 0.8


def test_classifier_auc_bad_input():
    with pytest.raises(ValueError, match="fewer than 5 folds"):
        classifier_auc(np.zeros((3, 2)), np.zeros((10, 2)))
