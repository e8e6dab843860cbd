from __future__ import annotations

import threading

import numpy as np
import pytest

from tfjetflows.config import ConfigError, SelectionConfig
from tfjetflows.data import schema
from tfjetflows.data.reader import ReadStats
from tfjetflows.data.schema import CHANNELS, DataError
from tfjetflows.data.selection import (
    SelectionStats,
    describe_selection,
    energy_sums,
    hit_counts,
    iter_selected,
    selection_mask,
)


@pytest.fixture
def varied_jets(jet_arrays):
    """40 jets whose multiplicities vary jet to jet (float32, as the reader yields them)."""
    rng = np.random.default_rng(7)
    parts = [
        jet_arrays(1, seed=100 + i, tracks=int(rng.integers(1, 30)), ecal=int(rng.integers(5, 80)),
                  towers=int(rng.integers(1, 12)))
        for i in range(40)
    ]
    images = np.concatenate([p[0] for p in parts]).astype(np.float32)
    y = (np.arange(40) % 2).astype(np.float32)
    return images, y


def reference_mask(images, y, selection):
    """Brute force, one jet at a time; HCAL read as one corner pixel per 5x5 tower block."""
    keep = []
    for image, label in zip(images, y, strict=True):
        hits, energy = 0, 0.0
        for name in selection.channels:
            plane = image[CHANNELS.index(name)].astype(np.float64)
            if name == "hcal":
                plane = plane[::5, ::5]
            hits += int(np.sum(np.abs(plane) >= selection.threshold))
            energy += float(plane.sum())
        ok = hits >= selection.min_hits
        ok = ok and (selection.max_hits is None or hits <= selection.max_hits)
        ok = ok and (selection.energy_min is None or energy >= selection.energy_min)
        ok = ok and (selection.energy_max is None or energy <= selection.energy_max)
        ok = ok and (selection.labels is None or int(label) in selection.labels)
        keep.append(ok)
    return np.array(keep)


SELECTIONS = {
    "default-keeps-all": SelectionConfig(),
    "ecal-hits-window": SelectionConfig(channels=["ecal"], min_hits=25, max_hits=60),
    "tracks+hcal-min-hits": SelectionConfig(channels=["tracks", "hcal"], min_hits=20),
    "hcal-energy-window": SelectionConfig(channels=["hcal"], energy_min=8.0, energy_max=20.0),
    "all-channels-cuts-gluons": SelectionConfig(
        channels=["tracks", "ecal", "hcal"], min_hits=40, max_hits=120, energy_min=30.0,
        labels=[1],
    ),
    "high-threshold": SelectionConfig(channels=["ecal", "tracks"], min_hits=15, threshold=1.0),
    "energy-max-only": SelectionConfig(channels=["ecal"], energy_max=30.0),
    "labels-quark": SelectionConfig(labels=[0]),
}


@pytest.mark.parametrize("name", list(SELECTIONS))
def test_selection_mask_matches_brute_force(varied_jets, name):
    images, y = varied_jets
    selection = SELECTIONS[name]
    expected = reference_mask(images, y, selection)
    got = selection_mask(images, y, selection)
    assert got.dtype == bool and got.shape == (40,)
    np.testing.assert_array_equal(got, expected)
    if name != "default-keeps-all":
        assert 0 < got.sum() < 40  # the cut really cuts


@pytest.mark.parametrize("channels", [["tracks"], ["ecal"], ["hcal"], ["tracks", "ecal", "hcal"]])
def test_hit_counts_and_energy_sums_match_brute_force(varied_jets, channels):
    images, y = varied_jets
    threshold = 0.5
    hits, energy = [], []
    for image in images:
        planes = [image[CHANNELS.index(c)].astype(np.float64) for c in channels]
        planes = [p[::5, ::5] if c == "hcal" else p for p, c in zip(planes, channels, strict=True)]
        hits.append(sum(int((np.abs(p) >= threshold).sum()) for p in planes))
        energy.append(sum(float(p.sum()) for p in planes))
    got_hits = hit_counts(images, channels, threshold)
    assert got_hits.dtype == np.int64
    np.testing.assert_array_equal(got_hits, hits)
    np.testing.assert_allclose(energy_sums(images, channels), energy, rtol=1e-6)


def test_hcal_is_counted_and_summed_in_towers():
    images = np.zeros((2, *schema.IMAGE_SHAPE), dtype=np.float32)
    for row, col, value in ((0, 0, 2.0), (3, 7, 0.5), (24, 24, 4.0)):
        images[0, 2, 5 * row : 5 * row + 5, 5 * col : 5 * col + 5] = value
    images[1, 1, 60, 60] = 3.0  # one ECAL crystal, no HCAL
    np.testing.assert_array_equal(hit_counts(images, ["hcal"], 1e-3), [3, 0])
    np.testing.assert_allclose(energy_sums(images, ["hcal"]), [6.5, 0.0])
    np.testing.assert_array_equal(hit_counts(images, ["ecal", "hcal"], 1e-3), [3, 1])
    np.testing.assert_allclose(energy_sums(images, ["ecal", "hcal"]), [6.5, 3.0])
    # 25x too many if the 125x125 HCAL plane were counted pixel by pixel
    assert (np.abs(images[0, 2]) >= 1e-3).sum() == 75


def test_hits_use_absolute_energy_and_sums_keep_the_sign():
    images = np.zeros((1, *schema.IMAGE_SHAPE), dtype=np.float32)
    images[0, 0, 1, 1] = -2.0
    images[0, 0, 2, 2] = 0.5
    images[0, 0, 3, 3] = 1e-4  # below the threshold
    np.testing.assert_array_equal(hit_counts(images, ["tracks"], 0.1), [2])
    np.testing.assert_allclose(energy_sums(images, ["tracks"]), [-1.4999], rtol=1e-6)


def test_label_filter():
    images = np.zeros((4, *schema.IMAGE_SHAPE), dtype=np.float32)
    y = np.array([0, 1, 0, 1], dtype=np.float32)
    mask = selection_mask(images, y, SelectionConfig(labels=[1]))
    np.testing.assert_array_equal(mask, [False, True, False, True])
    assert not selection_mask(images, y, SelectionConfig(labels=[2])).any()


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"channels": ["muon"]}, "unknown channel 'muon'"),
        ({"channels": []}, "selection.channels must be a non-empty list"),
        ({"channels": "ecal"}, "selection.channels must be a non-empty list"),
        ({"channels": ["ecal", "ecal"]}, "selection.channels lists a channel twice"),
        ({"threshold": -1.0}, "selection.threshold"),
        ({"threshold": float("nan")}, "selection.threshold"),
        ({"min_hits": -1}, "selection.min_hits"),
        ({"min_hits": 1.5}, "selection.min_hits"),
        ({"min_hits": 10, "max_hits": 5}, "min_hits (10) is greater than selection.max_hits (5)"),
        ({"max_hits": "many"}, "selection.max_hits"),
        ({"energy_min": 5.0, "energy_max": 1.0}, "energy_min (5.0) is greater than"),
        ({"energy_min": float("inf")}, "selection.energy_min"),
        ({"labels": []}, "selection.labels must be a non-empty list"),
        ({"labels": [0.5]}, "selection.labels: 0.5 is not an integer"),
    ],
)
def test_invalid_selection_names_the_key(varied_jets, changes, fragment):
    images, y = varied_jets
    with pytest.raises(ConfigError) as info:
        selection_mask(images[:2], y[:2], SelectionConfig(**changes))
    assert fragment in str(info.value)


def test_unknown_channel_in_helpers():
    images = np.zeros((1, *schema.IMAGE_SHAPE), dtype=np.float32)
    with pytest.raises(ConfigError, match="unknown channel 'ECAL'"):
        hit_counts(images, ["ECAL"], 1e-3)
    with pytest.raises(ConfigError, match="unknown channel 'hcl'"):
        energy_sums(images, ["hcl"])


# ---------------------------------------------------------------------------------------------
# streaming


@pytest.fixture
def two_files(jet_file):
    return [jet_file("a.parquet", n=5, seed=1), jet_file("b.parquet", n=4, seed=2)]


def test_iter_selected_yields_exactly_the_kept_jets(two_files):
    selection = SelectionConfig(labels=[1])  # make_jets labels alternate 0, 1, 0, ...
    stats, read_stats = SelectionStats(), ReadStats()
    batches = list(iter_selected(two_files, selection, batch_size=2, stats=stats,
                                 read_stats=read_stats))
    assert [(b.file.name, b.rows.tolist()) for b in batches] == [
        ("a.parquet", [1]),
        ("a.parquet", [3]),
        ("b.parquet", [1]),
        ("b.parquet", [3]),
    ]  # the batches holding only row 0 (a), row 2 and row 4 (a) and 0, 2 (b) are dropped
    assert all(np.all(b.y == 1) and len(b.images) == len(b.rows) for b in batches)
    assert (stats.scanned, stats.kept) == (9, 4)
    assert read_stats.jets_read == 9


def _run_with_deadline(function, seconds=20.0):
    """Run ``function`` in a thread; return its exception, failing if it does not finish."""
    outcome = {}

    def target():
        try:
            function()
        except Exception as err:  # handed back to the test
            outcome["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "iter_selected did not terminate"
    return outcome.get("error")


@pytest.mark.parametrize(
    "selection",
    [
        SelectionConfig(channels=["ecal"], min_hits=10_000),
        SelectionConfig(labels=[7]),
        SelectionConfig(channels=["hcal"], energy_min=1e6),
    ],
    ids=["hits", "labels", "energy"],
)
def test_no_jet_passes_raises_after_one_pass(two_files, selection):
    stats = SelectionStats()
    error = _run_with_deadline(lambda: list(iter_selected(two_files, selection, stats=stats)))
    assert isinstance(error, DataError)
    assert str(error) == (
        f"no jet passes the selection: scanned 9 jets in 2 files "
        f"(selection: {describe_selection(selection)})"
    )
    assert (stats.scanned, stats.kept) == (9, 0)


def test_no_jet_message_counts_skipped_bad_jets(tmp_path, jet_arrays):
    images, pt, m0, y = jet_arrays(4, seed=5)
    images[2, 1, 0, 0] = np.nan
    path = schema.write_jets(tmp_path / "bad.parquet", images, pt, m0, y)
    read_stats = ReadStats()
    with pytest.raises(DataError, match=r"scanned 3 jets in 1 files; 1 more skipped for NaN/inf"):
        list(iter_selected([path], SelectionConfig(labels=[5]), on_bad_jet="skip",
                           read_stats=read_stats))
    assert read_stats.bad_jets_skipped == 1


def test_stopping_early_is_not_an_error(two_files):
    batches = iter_selected(two_files, SelectionConfig(labels=[1]), batch_size=2)
    first = next(batches)
    batches.close()
    assert first.rows.tolist() == [1]


@pytest.mark.parametrize(
    ("selection", "kwargs", "error"),
    [
        (SelectionConfig(channels=["muon"]), {}, ConfigError),
        (SelectionConfig(), {"on_bad_jet": "ignore"}, ConfigError),
    ],
)
def test_iter_selected_checks_arguments_at_the_call(selection, kwargs, error):
    with pytest.raises(error):
        iter_selected(["never-opened.parquet"], selection, **kwargs)  # no next()


def test_describe_selection():
    text = describe_selection(
        SelectionConfig(channels=["ecal", "hcal"], min_hits=384, max_hits=768, energy_min=10.0,
                        labels=[0])
    )
    assert text == (
        "channels ecal+hcal, |E| >= 0.001, hits in [384, 768], energy in [10, inf], labels [0]"
    )
