import numpy as np
import pytest

from tfjetflows.evaluation.kinematics import jet_pt_mass
from tfjetflows.evaluation.metrics import basic_observables, observable_distances, wasserstein_1d


def test_w1_of_sample_with_itself_is_zero():
    x = np.random.default_rng(0).normal(size=500)
    assert wasserstein_1d(x, x) == 0.0


@pytest.mark.parametrize("shift", [0.5, 3.0])
def test_w1_of_shifted_copy_is_the_shift(shift):
    x = np.random.default_rng(1).normal(size=300)
    assert wasserstein_1d(x, x + shift) == pytest.approx(shift, rel=1e-12)


def test_w1_unequal_sizes_by_hand():
    # CDFs: a = {0} ; b = {0, 2}: area between is 0.5 * 2 = 1
    assert wasserstein_1d(np.array([0.0]), np.array([0.0, 2.0])) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="non-empty"):
        wasserstein_1d(np.array([]), np.array([1.0]))


def test_basic_observables_and_distances():
    images = np.zeros((2, 3, 125, 125), np.float32)
    images[0, 1, 60, 60] = 2.0
    images[0, 1, 61, 60] = 3.0
    images[1, 2, 0:5, 0:5] = 4.0  # one HCAL tower
    obs = basic_observables(images, ["ecal", "hcal"])
    np.testing.assert_array_equal(obs["ecal_hits"], [2, 0])
    np.testing.assert_allclose(obs["ecal_energy_sum"], [5.0, 0.0])
    np.testing.assert_array_equal(obs["hcal_hits"], [0, 1])
    np.testing.assert_allclose(obs["hcal_energy_sum"], [0.0, 4.0])
    assert observable_distances(obs, obs) == {name: 0.0 for name in obs}


def test_single_deposit_pt_and_massless():
    images = np.zeros((1, 3, 125, 125))
    images[0, 1, 62, 62] = 50.0  # image centre: eta = phi = 0
    pt, mass = jet_pt_mass(images)
    assert pt[0] == pytest.approx(50.0)
    assert mass[0] == pytest.approx(0.0, abs=1e-6)


def test_two_deposits_give_the_known_mass():
    # two massless deposits of pT 30 and 40 separated by d pixels in phi at eta = 0:
    # m^2 = 2 pT1 pT2 (cosh(d_eta) - cos(d_phi))
    images = np.zeros((1, 3, 125, 125))
    images[0, 1, 62, 52] = 30.0
    images[0, 1, 62, 72] = 40.0
    d_phi = 20 * 0.0174
    expected = np.sqrt(2 * 30.0 * 40.0 * (1 - np.cos(d_phi)))
    _, mass = jet_pt_mass(images)
    assert mass[0] == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(
    "positive, negative, expected",
    [
        ([2.0, 3.0], [0.0, 1.0], 1.0),
        ([0.0, 1.0], [2.0, 3.0], 0.0),
        ([1.0, 1.0], [1.0, 1.0], 0.5),
        ([1.0, 3.0], [2.0], 0.5),
    ],
)
def test_roc_auc_by_hand(positive, negative, expected):
    from tfjetflows.evaluation.metrics import roc_auc

    assert roc_auc(np.array(positive), np.array(negative)) == pytest.approx(expected)


def test_roc_auc_same_distribution_is_near_half():
    from tfjetflows.evaluation.metrics import roc_auc

    rng = np.random.default_rng(3)
    assert abs(roc_auc(rng.normal(size=4000), rng.normal(size=4000)) - 0.5) < 0.03
