"""Tests for tfjetflows.data.representations: encode/decode round trips, fill noise, specs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import tensorflow as tf
import yaml

from tfjetflows.config import ConfigError
from tfjetflows.data import representations as reps
from tfjetflows.data.representations import (
    REPRESENTATIONS,
    FeaturesRepresentation,
    HitsRepresentation,
    ImageRepresentation,
    Representation,
    representation_from_config,
    top_hit_indices,
)
from tfjetflows.data.schema import CHANNEL_GRID, CHANNELS, DataError

THRESHOLD = 1e-3
SIDE = 125
TOWER = 5


def make_jets(n: int = 4, seed: int = 0) -> np.ndarray:
    """Sparse float32 jets: signed track pixels, ECAL pixels, HCAL towers as 5x5 blocks.

    Jet 0 has an exact energy tie in ECAL (3.5 GeV at two pixels) and sub-threshold values
    (which are not hits); the last jet has no track pixel at all.
    """
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 3, SIDE, SIDE), dtype=np.float32)
    for i in range(n):
        tracks = rng.choice(SIDE * SIDE, size=9, replace=False)
        signs = rng.choice([-1.0, 1.0], 9)
        images[i, 0].flat[tracks] = signs * (rng.exponential(2.0, 9) + 2e-3)
        ecal = rng.choice(SIDE * SIDE, size=30, replace=False)
        images[i, 1].flat[ecal] = rng.exponential(1.0, 30) + 2e-3
        towers = np.zeros(25 * 25, dtype=np.float32)
        towers[rng.choice(25 * 25, size=6, replace=False)] = rng.exponential(3.0, 6) + 2e-3
        images[i, 2] = np.kron(towers.reshape(25, 25), np.ones((TOWER, TOWER), np.float32))
    images[0, 1, 7, 8] = images[0, 1, 9, 1] = 3.5
    images[0, 1, 0, 0] = 5e-4
    images[0, 0, 1, 1] = -5e-4
    images[-1, 0] = 0.0
    return images


@pytest.fixture(scope="module")
def jets() -> np.ndarray:
    return make_jets()


def natural(images: np.ndarray, channel: str) -> np.ndarray:
    plane = images[:, CHANNELS.index(channel)].astype(np.float64)
    if channel == "hcal":
        plane = plane[:, ::TOWER, ::TOWER]
    return plane


def expected_top_k(images: np.ndarray, hits_per_channel: dict[str, int]) -> np.ndarray:
    """Reference: a plain per-jet loop keeping the top-K hits by |E| (ties by flat index)."""
    out = np.zeros_like(images)
    for c, k in hits_per_channel.items():
        plane = natural(images, c)
        grid = plane.shape[-1]
        for i in range(images.shape[0]):
            flat = plane[i].reshape(-1)
            hits = [j for j in range(flat.size) if abs(flat[j]) >= THRESHOLD]
            hits.sort(key=lambda j, f=flat: (-abs(f[j]), j))
            kept = np.zeros(grid * grid, dtype=np.float32)
            kept[hits[:k]] = flat[hits[:k]]
            kept = kept.reshape(grid, grid)
            if c == "hcal":
                kept = np.kron(kept, np.ones((TOWER, TOWER), np.float32))
            out[i, CHANNELS.index(c)] = kept
    return out


def n_hits(images: np.ndarray, channel: str) -> np.ndarray:
    return (np.abs(natural(images, channel)) >= THRESHOLD).sum(axis=(1, 2))


SCALARS = {"pt": np.array([100.0, 200.0, 300.0, 400.0]), "m0": np.array([10.0, 20.0, 5.0, 7.0])}

CASES = {
    "hits": lambda: HitsRepresentation(hits_per_channel={"tracks": 4, "ecal": 12, "hcal": 3}),
    "image": lambda: ImageRepresentation(pool=25),
    "features": lambda: FeaturesRepresentation(columns=["pt", "m0"]),
}


# ---- hits --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hits_per_channel",
    [
        {"tracks": 3, "ecal": 10, "hcal": 2},  # fewer slots than hits: top K only
        {"ecal": 1},
        {"tracks": 40, "ecal": 64, "hcal": 25},  # K >= #hits: whole channels recovered
        {"hcal": 6},  # exactly as many slots as towers
    ],
)
def test_hits_decode_encode_gives_top_k_hits(jets, hits_per_channel):
    rep = HitsRepresentation(hits_per_channel=hits_per_channel)
    x = rep.encode(jets, {}, np.random.default_rng(1))
    decoded = rep.decode(x).numpy()
    assert decoded.dtype == np.float32 and decoded.shape == jets.shape
    np.testing.assert_array_equal(decoded, expected_top_k(jets, hits_per_channel))


def test_hits_large_k_recovers_whole_channels_and_negative_tracks(jets):
    rep = HitsRepresentation(hits_per_channel={"tracks": 40, "ecal": 64, "hcal": 25})
    decoded = rep.decode(rep.encode(jets, {}, np.random.default_rng(2))).numpy()
    clean = np.where(np.abs(jets) >= THRESHOLD, jets, 0.0)
    np.testing.assert_array_equal(decoded, clean)
    assert (decoded[:, 0] < -THRESHOLD).sum() == (jets[:, 0] < -THRESHOLD).sum() > 0
    blocks = decoded[:, 2].reshape(-1, 25, TOWER, 25, TOWER)
    np.testing.assert_array_equal(blocks, np.broadcast_to(blocks[:, :, :1, :, :1], blocks.shape))


def test_hits_tie_broken_by_flat_index():
    images = np.zeros((1, 3, SIDE, SIDE), dtype=np.float32)
    images[0, 1, 9, 1] = 3.5  # flat index 1126
    images[0, 1, 7, 8] = 3.5  # flat index 883: wins the tie
    images[0, 1, 0, 0] = 1.0
    rep = HitsRepresentation(hits_per_channel={"ecal": 1})
    x = rep.encode(images, {}, np.random.default_rng(0))
    assert math.floor(x[0, 1]) == 7 and math.floor(x[0, 2]) == 8 and x[0, 3] == 3.5


@pytest.mark.parametrize("ties", [True, False])
def test_top_hit_indices_matches_sorted_reference(ties):
    rng = np.random.default_rng(3)
    values = rng.integers(1, 4, (5, 50)) if ties else rng.lognormal(0.0, 3.0, (5, 50))
    magnitude = np.where(rng.random((5, 50)) < 0.3, values, 0.0).astype(np.float32)
    magnitude[0, :3] = [5e-4, 1e-3, np.nextafter(np.float32(1e-3), 0)]  # only 1e-3 is a hit
    magnitude[1] = 0.0
    magnitude[1, 7:10] = [5e-4, 1e-3, np.nextafter(np.float32(1e-3), 0)]
    indices, n = top_hit_indices(magnitude, 6, THRESHOLD)
    assert n[1] == 1 and indices[1, 0] == 8
    for row in range(5):
        hits = np.flatnonzero(magnitude[row] >= np.float32(THRESHOLD))
        ref = sorted(hits, key=lambda j, r=row: (-magnitude[r, j], j))
        assert n[row] == min(len(ref), 6)
        np.testing.assert_array_equal(indices[row, : n[row]], ref[:6])


def test_hits_layout_and_dequantization(jets):
    k = {"tracks": 4, "ecal": 40, "hcal": 8}  # every channel has empty slots somewhere
    rep = HitsRepresentation(hits_per_channel=k)
    x = rep.encode(jets, {}, np.random.default_rng(4))
    assert x.dtype == np.float32 and x.shape == (4, rep.dim) and rep.dim == 13 + 121 + 25
    names = rep.dim_names()
    assert len(names) == rep.dim and names[:5] == [
        "tracks/n",
        "tracks/eta_0",
        "tracks/phi_0",
        "tracks/E_0",
        "tracks/eta_1",
    ]
    offset = 0
    for c, kc in k.items():
        n = x[:, offset]
        np.testing.assert_array_equal(np.floor(n), np.minimum(n_hits(jets, c), kc))
        assert np.all(n - np.floor(n) > 0)  # dequantized: not integers
        slots = x[:, offset + 1 : offset + 1 + 3 * kc].reshape(4, kc, 3)
        assert np.all((slots[..., :2] >= 0) & (slots[..., :2] < CHANNEL_GRID[c]))
        assert np.all(slots[..., :2] != np.floor(slots[..., :2]))
        empty = np.arange(kc)[None, :] >= np.floor(n)[:, None]
        assert empty.any()
        assert np.all(np.abs(slots[..., 2][empty]) < THRESHOLD)
        assert np.all(np.abs(slots[..., 2][~empty]) >= THRESHOLD)
        offset += 1 + 3 * kc
    assert not np.any(x == 0.0)  # empty slots hold noise, never zeros


def test_hits_encode_is_seeded(jets):
    rep = HitsRepresentation(hits_per_channel={"ecal": 8})
    a = rep.encode(jets, {}, np.random.default_rng(5))
    b = rep.encode(jets, {}, np.random.default_rng(5))
    c = rep.encode(jets, {}, np.random.default_rng(6))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(rep.decode(a).numpy(), rep.decode(c).numpy())


class _AlmostOne:
    """An rng stub whose uniforms are the largest doubles below 1."""

    def random(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.full(shape, np.nextafter(1.0, 0.0))


def test_dequantize_never_rounds_up_to_next_integer():
    k = np.array([0, 1, 24, 124, 200])
    out = reps._dequantize(k, _AlmostOne())
    assert out.dtype == np.float32
    np.testing.assert_array_equal(np.floor(out), k)


def test_hits_noise_log_prob_counts_empty_slots(jets):
    k = {"tracks": 4, "ecal": 40, "hcal": 3}
    rep = HitsRepresentation(hits_per_channel=k)
    x = rep.encode(jets, {}, np.random.default_rng(7))
    expected = np.zeros(4)
    for c, kc in k.items():
        empty = kc - np.minimum(n_hits(jets, c), kc)
        expected += empty * (-2 * math.log(CHANNEL_GRID[c]) - math.log(2 * THRESHOLD))
    assert np.any(expected != 0)
    lp = rep.noise_log_prob(x)
    assert lp.dtype == tf.float32 and lp.shape == (4,)
    np.testing.assert_allclose(lp.numpy(), expected, rtol=1e-6)
    lp64 = rep.noise_log_prob(x.astype(np.float64))
    assert lp64.dtype == tf.float64
    np.testing.assert_allclose(lp64.numpy(), expected, rtol=1e-12)


def test_hits_decode_clips_n_and_coordinates_and_sums_collisions():
    rep = HitsRepresentation(hits_per_channel={"ecal": 3, "hcal": 1})
    x = np.array(
        [
            # ecal: n = 3.9 -> 3 hits, two on pixel (2, 3), one outside the grid -> (124, 0)
            [3.9, 2.1, 3.7, 1.0, 2.9, 3.2, 0.5, 130.0, -4.0, 2.0]
            + [-0.3, 1.5, 1.5, 9.0],  # hcal: n < 0 -> nothing kept
            [7.0, 0.2, 0.2, 4.0, 1.0, 1.0, 5.0, 2.0, 2.0, 6.0]  # n > K: clipped to K = 3
            + [1.2, 24.99, 0.0, 2.5],  # hcal tower (24, 0) -> pixels [120:125, 0:5]
        ],
        dtype=np.float32,
    )
    images = rep.decode(x).numpy()
    ecal, hcal = images[:, 1], images[:, 2]
    assert ecal[0, 2, 3] == 1.5 and ecal[0, 124, 0] == 2.0
    assert np.count_nonzero(ecal[0]) == 2 and np.count_nonzero(hcal[0]) == 0
    assert ecal[1, 0, 0] == 4.0 and ecal[1, 1, 1] == 5.0 and ecal[1, 2, 2] == 6.0
    np.testing.assert_array_equal(hcal[1, 120:, :5], np.full((5, 5), 2.5))
    assert np.count_nonzero(hcal[1]) == 25 and not images[:, 0].any()
    np.testing.assert_allclose(
        rep.noise_log_prob(x).numpy(),
        [-2 * math.log(25) - math.log(2e-3), 0.0],
        rtol=1e-6,
    )


def test_decode_inside_tf_function_matches_eager(jets):
    rep = HitsRepresentation(hits_per_channel={"tracks": 5, "ecal": 9, "hcal": 4})
    x = rep.encode(jets, {}, np.random.default_rng(8))
    fn = tf.function(rep.decode, input_signature=[tf.TensorSpec([None, rep.dim], tf.float32)])
    np.testing.assert_array_equal(fn(tf.constant(x)).numpy(), rep.decode(x).numpy())
    np.testing.assert_array_equal(fn(tf.constant(x[:1])).numpy(), rep.decode(x[:1]).numpy())


# ---- image --------------------------------------------------------------------------------


def test_image_pools_sums_and_hcal_towers(jets):
    rep = ImageRepresentation(pool=5)
    x = rep.encode(jets, {}, np.random.default_rng(9))
    assert x.shape == (4, 3 * 625) and x.dtype == np.float32
    x = x.reshape(4, 3, 25, 25)
    ecal = jets[:, 1].astype(np.float64).reshape(4, 25, 5, 25, 5).sum(axis=(2, 4))
    towers = jets[:, 2, ::5, ::5]
    for got, want in ((x[:, 1], ecal), (x[:, 2], towers)):
        data = np.abs(want) >= THRESHOLD
        np.testing.assert_allclose(got[data], want[data], rtol=1e-6)
        assert np.all(np.abs(got[~data]) < THRESHOLD) and not np.any(got[~data] == 0)


@pytest.mark.parametrize(
    ("pool", "channels"), [(5, ("tracks", "ecal", "hcal")), (25, ("hcal",)), (1, ("ecal",))]
)
def test_image_decode_then_encode_is_stable(jets, pool, channels):
    rep = ImageRepresentation(pool=pool, channels=channels)
    x = rep.encode(jets, {}, np.random.default_rng(10))
    decoded = rep.decode(x).numpy()
    assert decoded.shape == jets.shape and decoded.dtype == np.float32
    x2 = rep.encode(decoded, {}, np.random.default_rng(11))
    data = np.abs(x) >= THRESHOLD
    np.testing.assert_array_equal(np.abs(x2) >= THRESHOLD, data)
    np.testing.assert_allclose(x2[data], x[data], rtol=1e-5)


def test_image_pool_5_decodes_hcal_towers_and_pool_1_ecal_exactly(jets):
    x = ImageRepresentation(pool=5, channels=["hcal"]).encode(jets, {}, np.random.default_rng(12))
    decoded = ImageRepresentation(pool=5, channels=["hcal"]).decode(x).numpy()
    np.testing.assert_array_equal(decoded[:, 2], jets[:, 2])
    assert not decoded[:, :2].any()
    rep = ImageRepresentation(pool=1, channels=["ecal"])
    decoded = rep.decode(rep.encode(jets, {}, np.random.default_rng(13))).numpy()
    np.testing.assert_array_equal(decoded[:, 1], np.where(jets[:, 1] >= THRESHOLD, jets[:, 1], 0))


def test_image_noise_log_prob(jets):
    rep = ImageRepresentation(pool=25, channels=["tracks", "ecal"])
    x = rep.encode(jets, {}, np.random.default_rng(14))
    empty = (np.abs(x) < THRESHOLD).sum(axis=1)
    assert empty.max() > 0
    np.testing.assert_allclose(
        rep.noise_log_prob(x).numpy(), -empty * math.log(2 * THRESHOLD), rtol=1e-6
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pool": 4}, "must divide 125"),
        ({"pool": 1}, "splits HCAL towers"),
        ({"pool": 0}, "positive integer"),
        ({"channels": ["ecal", "muon"]}, "unknown channel 'muon'"),
        ({"channels": ["ecal", "ecal"]}, "twice"),
        ({"threshold": -1.0}, "threshold"),
    ],
)
def test_image_bad_arguments(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ImageRepresentation(**kwargs)


# ---- features ------------------------------------------------------------------------------


def test_features_encode_and_no_decode(jets):
    rep = FeaturesRepresentation(columns=["m0", "pt"])
    x = rep.encode(jets, SCALARS, np.random.default_rng(0))
    np.testing.assert_array_equal(x, np.stack([SCALARS["m0"], SCALARS["pt"]], 1).astype("f4"))
    assert rep.dim_names() == ["m0", "pt"] and not rep.decodes_images
    np.testing.assert_array_equal(rep.noise_log_prob(x).numpy(), np.zeros(4))
    with pytest.raises(NotImplementedError, match="no image decode"):
        rep.decode(x)


def test_features_missing_column_names_it(jets):
    rep = FeaturesRepresentation(columns=["pt", "eta"])
    with pytest.raises(DataError, match="'eta' is missing"):
        rep.encode(jets, SCALARS, np.random.default_rng(0))


# ---- common contract -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_transform_spec_contract(jets, name):
    rep = CASES[name]()
    spec = rep.transform_spec()
    assert set(spec) == {"lower", "upper", "energy_scale"}
    assert all(v.shape == (rep.dim,) for v in spec.values())
    bounded = np.isfinite(spec["lower"])
    energy = np.isfinite(spec["energy_scale"])
    np.testing.assert_array_equal(np.isfinite(spec["upper"]), bounded)
    assert not np.any(bounded & energy)
    assert np.all(spec["energy_scale"][energy] == THRESHOLD)
    x = rep.encode(jets, SCALARS, np.random.default_rng(15))
    assert x.shape == (4, rep.dim) and len(rep.dim_names()) == rep.dim
    assert np.all(x[:, bounded] >= spec["lower"][bounded])
    assert np.all(x[:, bounded] < spec["upper"][bounded])
    expected_bounded = {"hits": 3 + 2 * (4 + 12 + 3), "image": 0, "features": 0}[name]
    assert bounded.sum() == expected_bounded


@pytest.mark.parametrize("name", sorted(CASES))
def test_config_round_trip(jets, name):
    rep = CASES[name]()
    config = rep.get_config()
    assert config["kind"] == name and REPRESENTATIONS[name] is type(rep)
    config = yaml.safe_load(yaml.safe_dump(json.loads(json.dumps(config))))
    rebuilt = representation_from_config(config)
    assert isinstance(rebuilt, Representation) and rebuilt.get_config() == rep.get_config()
    a = rep.encode(jets, SCALARS, np.random.default_rng(16))
    b = Representation.from_config(config).encode(jets, SCALARS, np.random.default_rng(16))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"kind": "pixels"}, "unknown kind 'pixels'"),
        ({"kind": "hits", "hits_per_channel": {"ecal": 8}, "k": 3}, "unknown key 'k'"),
        ({"kind": "hits", "hits_per_channel": {"ecal": 0}}, r"hits_per_channel\['ecal'\]"),
        ({"kind": "hits", "hits_per_channel": {"muon": 4}}, "unknown channel 'muon'"),
    ],
)
def test_bad_config(config, match):
    with pytest.raises(ConfigError, match=match):
        representation_from_config(config)


def test_hits_channel_order_is_canonical():
    rep = HitsRepresentation(hits_per_channel={"hcal": 2, "tracks": 1})
    assert rep.channels == ["tracks", "hcal"]
    assert rep.dim_names()[0] == "tracks/n" and rep.dim_names()[4] == "hcal/n"


@pytest.mark.parametrize("shape", [(2, 125, 125), (2, 3, 25, 25)])
def test_bad_image_shape(shape):
    rep = HitsRepresentation(hits_per_channel={"ecal": 2})
    with pytest.raises(DataError, match=r"\[N, 3, 125, 125\]"):
        rep.encode(np.zeros(shape, np.float32), {}, np.random.default_rng(0))


def test_decode_hits_rows_match_decoded_image():
    rep = HitsRepresentation(hits_per_channel={"tracks": 3, "hcal": 2})
    images = np.zeros((2, 3, 125, 125), np.float32)
    images[0, 0, 10, 20] = 5.0
    images[0, 0, 11, 21] = -2.0
    images[0, 2, 5:10, 15:20] = 7.0  # one HCAL tower (1, 3)
    images[1, 0, 60, 60] = 1.0
    x = rep.encode(images, {}, np.random.default_rng(0))
    hits = rep.decode_hits(x).numpy()
    assert hits.shape == (2, 5, 4)
    np.testing.assert_array_equal(hits[0, 0], [0, 10, 20, 5.0])
    np.testing.assert_array_equal(hits[0, 1], [0, 11, 21, -2.0])
    np.testing.assert_array_equal(hits[0, 2], 0.0)  # third track slot is empty
    np.testing.assert_array_equal(hits[0, 3], [2, 1, 3, 7.0])
    np.testing.assert_array_equal(hits[0, 4], 0.0)
    np.testing.assert_array_equal(hits[1, 0], [0, 60, 60, 1.0])
    np.testing.assert_array_equal(hits[1, 1:], 0.0)
