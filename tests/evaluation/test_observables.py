import numpy as np
import pytest

from tfjetflows.data.schema import CHANNELS, PIXEL_SIZE, DataError
from tfjetflows.evaluation.observables import (
    OBSERVABLE_LABELS,
    compute_observables,
    radial_profile,
)

CENTRE = 62  # the image-centre pixel: eta = phi = 0


def blank(n=1):
    return np.zeros((n, 3, 125, 125))


def test_keys_match_labels_and_shapes():
    obs = compute_observables(blank(4))
    assert set(obs) == set(OBSERVABLE_LABELS)
    assert {c: obs[f"{c}_hits"].shape for c in CHANNELS} == {c: (4,) for c in CHANNELS}
    # empty jets: zeros, not NaN
    assert all(np.array_equal(value, np.zeros(4)) for value in obs.values())


def test_single_ecal_deposit():
    images = blank()
    images[0, 1, CENTRE + 3, CENTRE + 4] = 50.0  # 5 pixels from the centre
    obs = compute_observables(images)
    assert obs["ecal_hits"][0] == 1
    assert obs["ecal_energy_sum"][0] == pytest.approx(50.0)
    assert obs["ecal_leading_fraction"][0] == pytest.approx(1.0)
    assert obs["ecal_girth"][0] == pytest.approx(5 * PIXEL_SIZE, rel=1e-12)
    assert obs["jet_mass"][0] == pytest.approx(0.0, abs=1e-6)
    assert obs["jet_tau21"][0] == 0.0
    assert obs["tracks_hits"][0] == obs["hcal_hits"][0] == 0


def test_deposit_at_centre_gives_pt():
    images = blank()
    images[0, 1, CENTRE, CENTRE] = 42.0
    obs = compute_observables(images)
    assert obs["jet_pt"][0] == pytest.approx(42.0)
    assert obs["ecal_girth"][0] == 0.0


def test_two_deposits_known_mass_and_fractions():
    images = blank()
    images[0, 1, CENTRE, CENTRE - 10] = 30.0
    images[0, 1, CENTRE + 20, CENTRE + 10] = 40.0
    d_eta, d_phi = 20 * PIXEL_SIZE, 20 * PIXEL_SIZE
    obs = compute_observables(images)
    expected = np.sqrt(2 * 30.0 * 40.0 * (np.cosh(d_eta) - np.cos(d_phi)))
    assert obs["jet_mass"][0] == pytest.approx(expected, rel=1e-9)
    assert obs["ecal_leading_fraction"][0] == pytest.approx(40.0 / 70.0)
    girth = (30.0 * 10 + 40.0 * np.hypot(20, 10)) * PIXEL_SIZE / 70.0
    assert obs["ecal_girth"][0] == pytest.approx(girth, rel=1e-12)


def test_tau21_three_deposits_by_hand():
    # pT 50 at the centre (axis 1), 30 at 10 px in phi (axis 2), 20 at 10 px in eta.
    # tau1 = (30 + 20) d / 100, tau2 = 20 d / 100 (the eta deposit is nearer axis 1) -> 0.4
    images = blank(2)
    images[:, 1, CENTRE, CENTRE] = 50.0
    images[:, 1, CENTRE, CENTRE + 10] = 30.0
    images[:, 1, CENTRE + 10, CENTRE] = 20.0
    images[1, 1, CENTRE + 10, CENTRE] = 0.0  # two prongs only: tau2 = 0
    tau21 = compute_observables(images)["jet_tau21"]
    np.testing.assert_allclose(tau21, [0.4, 0.0], atol=1e-12)


def test_tau21_uses_hcal_towers_as_deposits():
    # the hardest deposit is an HCAL tower (tower 12, 12 = the centre), ECAL 10 px away in phi
    images = blank()
    images[0, 2, 60:65, 60:65] = 60.0
    images[0, 1, CENTRE, CENTRE + 10] = 20.0
    images[0, 1, CENTRE, CENTRE - 10] = 20.0
    # tau1 = (20 + 20) d / 100; tau2 axes: the tower and one ECAL deposit; the other ECAL
    # deposit is d from the tower (2d from the ECAL axis): tau2 = 20 d / 100 -> tau21 = 0.5
    assert compute_observables(images)["jet_tau21"][0] == pytest.approx(0.5, rel=1e-12)


def test_hcal_counted_in_towers():
    images = blank()
    images[0, 2, 0:5, 0:5] = 4.0  # one tower, 25 image pixels
    obs = compute_observables(images)
    assert obs["hcal_hits"][0] == 1
    assert obs["hcal_energy_sum"][0] == pytest.approx(4.0)
    assert obs["hcal_leading_fraction"][0] == pytest.approx(1.0)
    assert obs["hcal_girth"][0] == pytest.approx(np.hypot(60, 60) * PIXEL_SIZE, rel=1e-12)
    assert obs["jet_pt"][0] > 0


def test_threshold_drops_small_pixels():
    images = blank()
    images[0, 0, CENTRE, CENTRE] = 5.0
    images[0, 0, CENTRE, CENTRE + 1] = 5e-4  # below 1e-3
    obs = compute_observables(images)
    assert obs["tracks_hits"][0] == 1
    assert obs["tracks_leading_fraction"][0] == 1.0


def test_negative_pixels_weighted_by_magnitude():
    images = blank()
    images[0, 0, CENTRE, CENTRE] = -3.0
    images[0, 0, CENTRE, CENTRE + 2] = 1.0
    obs = compute_observables(images)
    assert obs["tracks_leading_fraction"][0] == pytest.approx(0.75)
    assert obs["tracks_energy_sum"][0] == pytest.approx(-2.0)


def test_many_jets_match_one_by_one():
    rng = np.random.default_rng(0)
    images = rng.exponential(size=(3, 3, 125, 125)) * (rng.random((3, 3, 125, 125)) < 0.01)
    images[:, 2] = np.repeat(np.repeat(images[:, 2, ::5, ::5], 5, axis=1), 5, axis=2)
    together = compute_observables(images)
    for i in range(3):
        alone = compute_observables(images[i : i + 1])
        for name, value in together.items():
            assert value[i] == pytest.approx(alone[name][0], rel=1e-12), name


@pytest.mark.parametrize("channel", CHANNELS)
def test_radial_profile_sums_to_one(channel):
    rng = np.random.default_rng(1)
    images = rng.exponential(size=(2, 3, 125, 125))
    profile = radial_profile(images, channel, bins=7)
    assert profile.shape == (2, 7)
    np.testing.assert_allclose(profile.sum(axis=1), 1.0, rtol=1e-12)
    assert (profile >= 0).all()


def test_radial_profile_by_hand():
    images = blank(2)
    images[0, 1, CENTRE, CENTRE] = 1.0  # r = 0: bin 0
    images[0, 1, CENTRE, CENTRE + 26] = 3.0  # r = 26 px = 0.416 r_max (62.5 px): bin 4
    images[0, 1, 0, 0] = 4.0  # a corner beyond r_max: the last bin
    profile = radial_profile(images, "ecal", bins=10)
    expected = np.zeros(10)
    expected[[0, 4, 9]] = [0.125, 0.375, 0.5]
    np.testing.assert_allclose(profile[0], expected)
    np.testing.assert_array_equal(profile[1], np.zeros(10))  # empty jet


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: compute_observables(np.zeros((1, 3, 125))), DataError, "shape"),
        (lambda: compute_observables(np.zeros((1, 3, 125, 125)), threshold=-1), ValueError,
         "threshold"),
        (lambda: radial_profile(np.zeros((1, 3, 125, 125)), "muons"), DataError, "muons"),
        (lambda: radial_profile(np.zeros((1, 3, 125, 125)), "ecal", bins=0), ValueError,
         "bins"),
        (lambda: radial_profile(np.zeros((1, 3, 125, 125)), "ecal", r_max=0.0), ValueError,
         "r_max"),
    ],
)
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()
