"""Synthetic jets and the parametric detector: schema, sparsity, quark/gluon physics, seeds."""

from __future__ import annotations

import numpy as np
import pytest

from tfjetflows.data.detector import (
    CHARGED,
    NEUTRAL_HADRON,
    PHOTON,
    Constituents,
    DetectorConfig,
    detector_response,
)
from tfjetflows.data.schema import (
    HCAL_TOWER,
    IMAGE_SHAPE,
    PIXEL_SIZE,
    ZERO_SUPPRESSION,
    DataError,
    channel_grid,
)
from tfjetflows.data.synthetic import JetModel, generate_synthetic, jet_kinematics

N_JETS = 400


@pytest.fixture(scope="module")
def jets() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    chunks = list(generate_synthetic(N_JETS, seed=7, chunk=200))
    return tuple(np.concatenate([c[i] for c in chunks]) for i in range(4))


def _nonzero(images: np.ndarray, channel: str) -> np.ndarray:
    return (channel_grid(images, channel) != 0).sum(axis=(1, 2))


def _girth(images: np.ndarray) -> np.ndarray:
    axis = (np.arange(IMAGE_SHAPE[1]) + 0.5 - IMAGE_SHAPE[1] / 2) * PIXEL_SIZE
    radius = np.hypot(axis[:, None], axis[None, :])
    total = images.sum(axis=1)
    return (total * radius).sum(axis=(1, 2)) / total.sum(axis=(1, 2))


def test_shapes_and_dtypes(jets):
    images, pt, m0, y = jets
    assert images.shape == (N_JETS, *IMAGE_SHAPE)
    assert images.dtype == pt.dtype == m0.dtype == y.dtype == np.float64
    assert pt.shape == m0.shape == y.shape == (N_JETS,)


def test_labels_balanced(jets):
    y = jets[3]
    assert set(np.unique(y)) == {0.0, 1.0}
    assert y.sum() == N_JETS // 2  # chunks of 200 are balanced exactly


def test_kinematics_in_range(jets):
    _, pt, m0, _ = jets
    assert pt.min() >= 100.0 - 1e-9 and pt.max() <= 300.0 + 1e-9
    assert np.median(pt) < 200.0  # falling spectrum
    assert (m0 > 0).all() and (m0 < pt).all()


@pytest.mark.parametrize(
    ("channel", "low", "high"),
    [("tracks", 20, 45), ("ecal", 300, 900), ("hcal", 20, 50)],
)
def test_sparsity_like_real_jets(jets, channel, low, high):
    assert low <= np.median(_nonzero(jets[0], channel)) <= high


@pytest.mark.parametrize("channel", ["tracks", "ecal", "hcal"])
def test_gluons_have_more_hits(jets, channel):
    images, _, _, y = jets
    counts = _nonzero(images, channel)
    assert np.median(counts[y == 1]) > np.median(counts[y == 0])


def test_gluons_are_broader_and_heavier(jets):
    images, pt, m0, y = jets
    girth = _girth(images)
    assert np.median(girth[y == 1]) > 1.1 * np.median(girth[y == 0])
    ratio = m0 / pt
    assert np.median(ratio[y == 1]) > 1.2 * np.median(ratio[y == 0])


def test_energy_is_centred(jets):
    total = jets[0].sum(axis=(0, 1))
    centre = IMAGE_SHAPE[1] // 2
    core = total[centre - 12 : centre + 13, centre - 12 : centre + 13].sum()
    assert core > 0.7 * total.sum()


def test_hcal_is_equal_valued_blocks(jets):
    n, side = N_JETS, IMAGE_SHAPE[1] // HCAL_TOWER
    blocks = jets[0][:, 2].reshape(n, side, HCAL_TOWER, side, HCAL_TOWER)
    corner = blocks[:, :, :1, :, :1]
    np.testing.assert_array_equal(blocks, np.broadcast_to(corner, blocks.shape))
    assert np.count_nonzero(corner) > 0


def test_zero_suppression_and_sign(jets):
    images = jets[0]
    small = (images != 0) & (np.abs(images) < ZERO_SUPPRESSION)
    assert not small.any()
    assert (images >= 0).all()


def test_same_seed_same_jets():
    a = next(generate_synthetic(8, seed=3))
    b = next(generate_synthetic(8, seed=3))
    for left, right in zip(a, b, strict=True):
        np.testing.assert_array_equal(left, right)


def test_different_seed_different_jets():
    a = next(generate_synthetic(8, seed=3))
    b = next(generate_synthetic(8, seed=4))
    assert not np.array_equal(a[0], b[0])
    assert not np.array_equal(a[1], b[1])


@pytest.mark.parametrize(("n", "chunk", "sizes"), [(5, 2, [2, 2, 1]), (3, 256, [3])])
def test_chunking(n, chunk, sizes):
    assert [len(c[1]) for c in generate_synthetic(n, seed=0, chunk=chunk)] == sizes


@pytest.mark.parametrize(("n", "chunk"), [(0, 4), (4, 0)])
def test_bad_sizes_raise(n, chunk):
    with pytest.raises(ValueError, match="positive"):
        next(generate_synthetic(n, seed=0, chunk=chunk))


def test_jet_model_validates():
    with pytest.raises(ValueError, match="pt_min"):
        JetModel(pt_min=300.0, pt_max=100.0)


def test_jet_kinematics_two_photons():
    # Two massless particles of pT 50 at eta = +-0.1: m^2 = 2 pt1 pt2 (cosh(deta) - cos(dphi)).
    eta = np.array([0.1, -0.1])
    jet = np.zeros(2, dtype=int)
    pt, mass, rapidity, phi = jet_kinematics(eta, np.zeros(2), np.full(2, 50.0), jet, 1)
    np.testing.assert_allclose(pt, [100.0])
    np.testing.assert_allclose(mass, [np.sqrt(2 * 50 * 50 * (np.cosh(0.2) - 1))])
    np.testing.assert_allclose([rapidity[0], phi[0]], [0.0, 0.0], atol=1e-12)


def _particles(kind: int, pt: float = 10.0, eta: float = 0.0, phi: float = 0.0) -> Constituents:
    return Constituents(
        eta=np.array([eta]),
        phi=np.array([phi]),
        pt=np.array([pt]),
        kind=np.array([kind]),
        jet=np.array([0]),
    )


def test_detector_track_in_its_pixel():
    # The axis sits at pixel coordinate 62.5: (2.6, -1.4) pixels away is pixel (65, 61).
    particles = _particles(CHARGED, eta=2.6 * PIXEL_SIZE, phi=-1.4 * PIXEL_SIZE)
    images = detector_response(particles, 1, np.random.default_rng(0))
    tracks = images[0, 0]
    assert np.count_nonzero(tracks) == 1
    assert tracks[65, 61] == pytest.approx(10.0, rel=0.05)


def test_detector_photon_is_ecal_only_and_energy_conserving():
    images = detector_response(_particles(PHOTON, pt=20.0), 1, np.random.default_rng(0))
    assert images[0, 0].sum() == 0 and images[0, 2].sum() == 0
    ecal = images[0, 1]
    assert ecal.sum() == pytest.approx(20.0, rel=0.05)
    assert 1 < np.count_nonzero(ecal) <= 49  # spread over the 7x7 shower window
    assert ecal[62, 62] == ecal.max()


def test_detector_neutral_hadron_fills_hcal():
    rng = np.random.default_rng(1)
    n = 200
    particles = Constituents(
        eta=np.zeros(n),
        phi=np.zeros(n),
        pt=np.full(n, 50.0),
        kind=np.full(n, NEUTRAL_HADRON),
        jet=np.arange(n),
    )
    images = detector_response(particles, n, rng)
    assert images[:, 0].sum() == 0
    total = images[:, 1].sum(axis=(1, 2)) + channel_grid(images, "hcal").sum(axis=(1, 2))
    assert np.mean(total) == pytest.approx(50.0, rel=0.05)  # unbiased on average
    assert np.std(total) > 1.0  # with a hadronic resolution


def test_detector_soft_charged_leaves_only_a_track():
    images = detector_response(
        _particles(CHARGED, pt=0.5), 1, np.random.default_rng(0), config=DetectorConfig()
    )
    assert images[0, 0].sum() > 0
    assert images[0, 1:].sum() == 0


def test_detector_rejects_bad_input():
    with pytest.raises(DataError, match="out of range"):
        detector_response(_particles(PHOTON), 0, np.random.default_rng(0))
    with pytest.raises(DataError, match="equal length"):
        Constituents(
            eta=np.zeros(2), phi=np.zeros(1), pt=np.zeros(2), kind=np.zeros(2), jet=np.zeros(2)
        )
    with pytest.raises(ValueError, match="odd"):
        DetectorConfig(ecal_kernel=4)
