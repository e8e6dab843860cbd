"""Tests of the figures behind ``tfjf inspect``, on jets built by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tfjetflows.config import SelectionConfig
from tfjetflows.data.schema import HCAL_TOWER, IMAGE_SHAPE, DataError, write_jets
from tfjetflows.data.summary import QUANTILES, summarize_files, topk_energy_fraction

BELOW = 0.0005  # under the 1e-3 threshold: not a hit


def _tower(image: np.ndarray, row: int, col: int, value: float) -> None:
    t = HCAL_TOWER
    image[2, row * t : (row + 1) * t, col * t : (col + 1) * t] = value


def _hand_jets() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Three jets with known hits: see the expectations in :data:`EXPECTED`."""
    images = np.zeros((3, *IMAGE_SHAPE))
    # jet 0: tracks 2 hits (one negative) + one below threshold; ECAL 5 hits; HCAL 2 towers
    images[0, 0, 0, 0], images[0, 0, 1, 1], images[0, 0, 2, 2] = 2.0, -1.0, BELOW
    for k, value in enumerate([4.0, 3.0, 2.0, 1.0, 0.5]):
        images[0, 1, 60, 60 + k] = value
    _tower(images[0], 0, 0, 3.0)
    _tower(images[0], 3, 4, 1.0)
    # jet 1: one track hit, one ECAL hit and one below threshold, one HCAL tower
    images[1, 0, 10, 10] = 0.5
    images[1, 1, 62, 62], images[1, 1, 0, 0] = 10.0, BELOW
    _tower(images[1], 12, 12, 2.0)
    # jet 2: empty
    pt = np.array([120.0, 200.0, 90.0])
    m0 = np.array([10.0, 20.0, 5.0])
    y = np.array([0.0, 1.0, 1.0])
    return images, pt, m0, y


EXPECTED = {
    "tracks": {"hits": [2, 1, 0], "energy": [1.0 + BELOW, 0.5, 0.0]},
    "ecal": {"hits": [5, 1, 0], "energy": [10.5, 10.0 + BELOW, 0.0]},
    "hcal": {"hits": [2, 1, 0], "energy": [4.0, 2.0, 0.0]},
}


def _quantiles(values) -> dict[str, float]:
    return {f"q{int(q * 100)}": float(np.quantile(values, q)) for q in QUANTILES}


@pytest.fixture
def hand_files(tmp_path: Path) -> list[Path]:
    images, pt, m0, y = _hand_jets()
    return [
        write_jets(tmp_path / "a.parquet", images[:2], pt[:2], m0[:2], y[:2]),
        write_jets(tmp_path / "b.parquet", images[2:], pt[2:], m0[2:], y[2:]),
    ]


def test_counts_labels_and_files(hand_files):
    summary = summarize_files(hand_files, SelectionConfig())
    assert summary["files"] == 2
    assert summary["jets"] == 3
    assert summary["jets_per_file"] == {str(hand_files[0]): 2, str(hand_files[1]): 1}
    assert summary["labels"] == {"0": 1, "1": 2}
    assert summary["bad_jets_skipped"] == 0
    assert summary["selection"] == {"passed": 3, "scanned": 3}
    assert "topk_energy_fraction" not in summary
    json.dumps(summary)  # JSON-ready


@pytest.mark.parametrize("channel", ["tracks", "ecal", "hcal"])
def test_hits_and_energy_quantiles_per_channel(hand_files, channel):
    figures = summarize_files(hand_files, SelectionConfig())["channels"][channel]
    assert figures["hits"] == pytest.approx(_quantiles(EXPECTED[channel]["hits"]))
    assert figures["energy_sum_gev"] == pytest.approx(
        _quantiles(EXPECTED[channel]["energy"]), abs=1e-5
    )


def test_negative_track_pixels_are_counted(hand_files):
    summary = summarize_files(hand_files, SelectionConfig())
    assert summary["tracks_negative_pixels"] == pytest.approx(_quantiles([1, 0, 0]))


@pytest.mark.parametrize(
    "selection, passed",
    [
        (SelectionConfig(channels=["ecal"], min_hits=1), 2),
        (SelectionConfig(channels=["ecal"], min_hits=2), 1),
        # HCAL in towers: jet 1 has one tower (25 equal pixels), which is one hit
        (SelectionConfig(channels=["hcal"], min_hits=2), 1),
        (SelectionConfig(channels=["hcal"], min_hits=1, max_hits=1), 1),
        # ... and its energy is counted once (2 GeV), not 25 times
        (SelectionConfig(channels=["hcal"], energy_min=3.0), 1),
        (SelectionConfig(channels=["tracks", "ecal"], min_hits=6, max_hits=7), 1),
        (SelectionConfig(labels=[1]), 2),
        (SelectionConfig(min_hits=100), 0),
    ],
    ids=[
        "ecal>=1", "ecal>=2", "hcal-towers>=2", "hcal-towers==1", "hcal-energy", "two-channels",
        "gluons", "none",
    ],
)
def test_selection_pass_count(hand_files, selection, passed):
    assert summarize_files(hand_files, selection)["selection"] == {
        "passed": passed,
        "scanned": 3,
    }


def test_topk_energy_fraction_in_the_summary(hand_files):
    summary = summarize_files(
        hand_files, SelectionConfig(), hits_per_channel={"ecal": 2, "hcal": 1}
    )
    coverage = summary["topk_energy_fraction"]
    assert set(coverage) == {"ecal", "hcal"}
    assert coverage["ecal"] == pytest.approx({"k": 2, **_quantiles([7.0 / 10.5, 1.0, 1.0])})
    # HCAL on the tower grid: the top tower holds 3 of 4 GeV
    assert coverage["hcal"] == pytest.approx({"k": 1, **_quantiles([0.75, 1.0, 1.0])})


@pytest.mark.parametrize(
    "k, expected",
    [(0, [0.0, 0.0]), (1, [0.5, 1.0]), (2, [0.8, 1.0]), (3, [1.0, 1.0]), (10, [1.0, 1.0])],
)
def test_topk_energy_fraction_by_hand(k, expected):
    grid = np.array(
        [
            [[5.0, -3.0], [2.0, BELOW]],  # |E| 5, 3, 2 above threshold (total 10)
            [[0.0, 0.0], [0.0, BELOW]],  # nothing above threshold: fraction 1
        ]
    )
    np.testing.assert_allclose(topk_energy_fraction(grid, k, 1e-3), expected)


def test_bad_jets_are_an_error_or_skipped_and_counted(tmp_path, hand_files):
    images, pt, m0, y = _hand_jets()
    images[1, 1, 5, 5] = np.nan
    bad = write_jets(tmp_path / "bad.parquet", images, pt, m0, y)
    with pytest.raises(DataError, match=r"bad\.parquet: row 1: column 'X_jets'"):
        summarize_files([bad], SelectionConfig())
    summary = summarize_files([bad], SelectionConfig(), on_bad_jet="skip")
    assert summary["jets"] == 3
    assert summary["bad_jets_skipped"] == 1
    assert summary["selection"] == {"passed": 2, "scanned": 2}
    assert summary["labels"] == {"0": 1, "1": 1}


def test_batch_size_does_not_change_the_figures(hand_files):
    selection = SelectionConfig(min_hits=1)
    assert summarize_files(hand_files, selection, batch_size=1) == summarize_files(
        hand_files, selection, batch_size=256
    )
