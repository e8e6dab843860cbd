"""Tests of the tf.data pipeline: split, counts, epochs, resume, conditions, errors, built-in data.

Jets are identified through a ``features`` representation of ``(pt, m0)``, which are unique per
jet in the generated files, so the tests can say exactly which (file, row) ended up where.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from tfjetflows.config import ConfigError, DataConfig, SelectionConfig
from tfjetflows.data import builtin, generate
from tfjetflows.data.generate import make_data
from tfjetflows.data.pipeline import (
    PT_REFERENCE,
    build_datasets,
    encode_conditions,
    iter_encoded,
    scan_split,
)
from tfjetflows.data.reader import iter_jet_batches
from tfjetflows.data.representations import FeaturesRepresentation, HitsRepresentation
from tfjetflows.data.schema import DataError

JETS = 240
FILES = 3
FRACTION = 0.25
ALL = SelectionConfig(min_hits=1)  # every generated jet has hundreds of ECAL hits
NONE = SelectionConfig(min_hits=10**6)
IDENTITY = FeaturesRepresentation(columns=["pt", "m0"])
HITS = HitsRepresentation(hits_per_channel={"tracks": 2, "ecal": 4, "hcal": 2})


@dataclass
class Jets:
    """Every generated jet, in file order, with its (file, row) and a (pt, m0) -> key index."""

    paths: list[Path]
    keys: list[tuple[int, int]]
    ecal_hits: np.ndarray
    pt: np.ndarray
    y: np.ndarray
    index: dict[tuple[float, float], tuple[int, int]]


@pytest.fixture(scope="session")
def jets(tmp_path_factory: pytest.TempPathFactory) -> Jets:
    paths = make_data(tmp_path_factory.mktemp("pipeline"), jets=JETS, seed=5, files=FILES)
    keys, hits, pt, m0, y = [], [], [], [], []
    for batch in iter_jet_batches(paths):
        keys += [(paths.index(batch.file), int(r)) for r in batch.rows]
        hits.append((np.abs(batch.images[:, 1]) >= 1e-3).sum(axis=(1, 2)))
        pt.append(batch.pt)
        m0.append(batch.m0)
        y.append(batch.y)
    pt_all, m0_all = np.concatenate(pt), np.concatenate(m0)
    index = dict(zip(zip(pt_all.tolist(), m0_all.tolist(), strict=True), keys, strict=True))
    assert len(index) == JETS, "(pt, m0) must identify the jets"
    return Jets(paths, keys, np.concatenate(hits), pt_all, np.concatenate(y), index)


def _data(**kwargs: object) -> DataConfig:
    """Streaming from Parquet every epoch unless ``cache_max_mb`` is given (see the cache tests)."""
    settings = {
        "batch_size": 16,
        "validation_fraction": FRACTION,
        "shuffle_buffer": 64,
        "cache_max_mb": 0,
    }
    settings.update(kwargs)
    return DataConfig(**settings)  # type: ignore[arg-type]


def _keys(jets: Jets, split, selection, data, seed, *, epoch, batch_size):
    """The (file, row) of each jet an epoch yields, in order (identity representation)."""
    out = []
    for batch in iter_encoded(
        split, selection, IDENTITY, data, seed, [], epoch=epoch, batch_size=batch_size
    ):
        out += [jets.index[tuple(row)] for row in batch["x"].tolist()]
    return out


def _sides(jets: Jets, selection, seed, batch_size=1, **data_kwargs):
    """Return (split, training keys of epoch 0, validation keys); batch 1 drops no jet."""
    data = _data(batch_size=batch_size, **data_kwargs)
    split = scan_split(jets.paths, selection, IDENTITY, data, seed)
    train = _keys(jets, split, selection, data, seed, epoch=0, batch_size=batch_size)
    validation = _keys(jets, split, selection, data, seed, epoch=None, batch_size=batch_size)
    return split, train, validation


@pytest.fixture(scope="module")
def sides(jets):
    """The split of every jet with selection ALL and seed 3: (split, train keys, validation)."""
    return _sides(jets, ALL, seed=3)


def _tf_batches(dataset, n):
    return [{k: v.numpy() for k, v in batch.items()} for batch in dataset.take(n)]


def _same_batches(a, b) -> bool:
    return len(a) == len(b) and all(
        np.array_equal(x["x"], y["x"]) and np.array_equal(x["context"], y["context"])
        for x, y in zip(a, b, strict=True)
    )


# --------------------------------------------------------------------------------------------
# the train/validation split


def test_split_is_disjoint_covers_every_kept_jet_and_has_the_fraction(jets, sides):
    split, train, validation = sides
    assert len(train) == len(set(train)) == split.train
    assert len(validation) == len(set(validation)) == split.validation
    assert not set(train) & set(validation)
    assert set(train) | set(validation) == set(jets.keys)
    assert split.kept == split.train + split.validation == JETS
    assert abs(split.validation / JETS - FRACTION) < 0.08
    # validation comes in file order, every time
    assert validation == sorted(validation)


def test_split_is_reproducible_for_a_seed_and_changes_with_it(jets, sides):
    _, train_a, validation_a = sides
    _, train_b, validation_b = _sides(jets, ALL, seed=3)
    _, _, validation_c = _sides(jets, ALL, seed=4)
    assert validation_a == validation_b
    assert set(train_a) == set(train_b)
    assert set(validation_c) != set(validation_a)


@pytest.mark.parametrize("batch_size", [5, 64])
def test_split_does_not_depend_on_batch_size(jets, sides, batch_size):
    _, train_1, validation_1 = sides
    split, _, validation = _sides(jets, ALL, seed=3, batch_size=batch_size)
    assert validation == validation_1
    assert split.train == len(train_1)


def test_split_of_a_jet_does_not_depend_on_which_other_jets_pass(jets, sides):
    cut = int(np.median(jets.ecal_hits))
    strict = SelectionConfig(min_hits=cut)
    passing = {k for k, h in zip(jets.keys, jets.ecal_hits, strict=True) if h >= cut}
    assert 0 < len(passing) < JETS
    _, train_all, validation_all = sides
    split, train, validation = _sides(jets, strict, seed=3)
    assert set(validation) == set(validation_all) & passing
    assert set(train) == set(train_all) & passing
    assert split.kept == len(passing)


@pytest.mark.parametrize(
    "selection, expected",
    [
        (ALL, lambda j: np.ones(JETS, bool)),
        (SelectionConfig(labels=[1]), lambda j: j.y == 1),
        (SelectionConfig(min_hits=600), lambda j: j.ecal_hits >= 600),
        (SelectionConfig(min_hits=400, max_hits=700), lambda j: (j.ecal_hits >= 400)
         & (j.ecal_hits <= 700)),
    ],
    ids=["all", "gluons", "min_hits", "hit_window"],
)
def test_scan_split_counts_equal_a_brute_force_count(jets, selection, expected):
    kept = int(expected(jets).sum())
    assert 0 < kept
    split = scan_split(jets.paths, selection, HITS, _data(), seed=3)
    assert (split.scanned, split.kept) == (JETS, kept)
    assert split.train + split.validation == kept
    assert split.rows_per_file == [80, 80, 80]
    assert split.sample.shape == (split.train, HITS.dim)
    assert split.sample.dtype == np.float32


# --------------------------------------------------------------------------------------------
# epochs, batches, resume


@pytest.fixture(scope="module")
def hits_datasets(jets):
    data = _data(batch_size=16)
    return data, build_datasets(jets.paths, ALL, HITS, data, seed=3)


def test_one_training_epoch_is_exactly_train_steps_full_batches(jets, hits_datasets):
    data, ds = hits_datasets
    assert ds.train_steps == ds.split.train // 16 > 0
    assert ds.split.train % 16, "the test needs a remainder to drop"
    epoch = list(
        iter_encoded(ds.split, ALL, HITS, data, 3, [], epoch=0, batch_size=16)
    )
    assert len(epoch) == ds.train_steps
    assert {b["x"].shape for b in epoch} == {(16, HITS.dim)}
    assert {b["context"].shape for b in epoch} == {(16, 0)}
    # the repeating tf.data stream is epoch 0, then epoch 1, ...
    epoch_1 = list(iter_encoded(ds.split, ALL, HITS, data, 3, [], epoch=1, batch_size=16))
    assert _same_batches(_tf_batches(ds.train, 2 * ds.train_steps), epoch + epoch_1)


def test_validation_yields_every_validation_jet_once_then_the_same_again(jets, hits_datasets):
    _, ds = hits_datasets
    first = _tf_batches(ds.validation, 10**6)
    second = _tf_batches(ds.validation, 10**6)
    assert len(first) == ds.validation_steps == -(-ds.split.validation // 16)
    sizes = [len(b["x"]) for b in first]
    assert sum(sizes) == ds.split.validation
    assert ds.split.validation % 16, "the test needs a partial last batch"
    assert sizes[:-1] == [16] * (len(sizes) - 1) and sizes[-1] == ds.split.validation % 16
    assert _same_batches(first, second)


@pytest.mark.parametrize("initial_epoch", [1, 2])
def test_a_resumed_dataset_yields_the_batches_of_an_uninterrupted_one(
    jets, hits_datasets, initial_epoch
):
    data, ds = hits_datasets
    steps = ds.train_steps
    resumed = build_datasets(jets.paths, ALL, HITS, data, 3, initial_epoch=initial_epoch,
                             split=ds.split)
    assert resumed.train_steps == steps
    uninterrupted = _tf_batches(ds.train.skip(initial_epoch * steps), steps)
    assert _same_batches(_tf_batches(resumed.train, steps), uninterrupted)


def test_epochs_are_shuffled_differently_over_the_same_jets(jets):
    data = _data(batch_size=1)
    split = scan_split(jets.paths, ALL, IDENTITY, data, 3)
    epoch_0 = _keys(jets, split, ALL, data, 3, epoch=0, batch_size=1)
    epoch_1 = _keys(jets, split, ALL, data, 3, epoch=1, batch_size=1)
    assert sorted(epoch_0) == sorted(epoch_1)
    assert epoch_0 != epoch_1
    # shuffled across files, not file by file in order
    assert epoch_0 != sorted(epoch_0)
    assert len({f for f, _ in epoch_0[:32]}) > 1


def test_hits_batches_of_different_epochs_differ(jets, hits_datasets):
    data, ds = hits_datasets
    epochs = [
        list(iter_encoded(ds.split, ALL, HITS, data, 3, [], epoch=e, batch_size=16))
        for e in (0, 1)
    ]
    assert not np.array_equal(epochs[0][0]["x"], epochs[1][0]["x"])


# --------------------------------------------------------------------------------------------
# conditions


def test_conditions_y_and_pt_give_label_and_log_pt(jets):
    data = _data(batch_size=32, conditions=["y", "pt"])
    ds = build_datasets(jets.paths, ALL, IDENTITY, data, seed=3)
    assert ds.conditions == ["y", "pt"]
    for batch in _tf_batches(ds.train, 2) + _tf_batches(ds.validation, 1):
        x, context = batch["x"], batch["context"]
        assert context.shape == (len(x), 2) and context.dtype == np.float32
        labels = [jets.y[jets.keys.index(jets.index[tuple(r)])] for r in x.tolist()]
        np.testing.assert_array_equal(context[:, 0], labels)
        assert set(np.unique(context[:, 0])) <= {0.0, 1.0}
        log_pt = np.log(x[:, 0].astype(np.float64) / PT_REFERENCE)
        np.testing.assert_allclose(context[:, 1], log_pt, rtol=1e-6, atol=1e-7)


def test_unknown_condition_is_a_config_error(jets):
    with pytest.raises(ConfigError, match=r"data.conditions.*'eta'"):
        build_datasets(jets.paths, ALL, HITS, _data(conditions=["y", "eta"]), seed=3)


@pytest.mark.parametrize(
    "names, expected",
    [
        (["y", "pt"], [[0.0, 0.0], [1.0, 1.0], [1.0, np.log(0.5)]]),
        (["pt"], [[0.0], [1.0], [np.log(0.5)]]),
        (["pt", "y"], [[0.0, 0.0], [1.0, 1.0], [np.log(0.5), 1.0]]),
        ([], np.zeros((3, 0))),
    ],
)
def test_encode_conditions_by_hand(names, expected):
    columns = {"y": np.array([0.0, 1.0, 1.0]), "pt": np.array([100.0, 100.0 * np.e, 50.0])}
    out = encode_conditions(columns, names)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, np.asarray(expected).reshape(3, len(names)), rtol=1e-6)


# --------------------------------------------------------------------------------------------
# errors and max_jets


def _finishes(call, timeout: float = 30.0) -> BaseException | None:
    """Run ``call`` in a thread; return what it raised, failing if it does not end in time."""
    raised: list[BaseException] = []

    def target() -> None:
        try:
            call()
        except BaseException as err:  # noqa: BLE001 - handed back to the test
            raised.append(err)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "the call did not terminate"
    return raised[0] if raised else None


def test_no_jet_passing_the_selection_is_a_data_error_and_terminates(jets):
    err = _finishes(lambda: build_datasets(jets.paths, NONE, HITS, _data(), seed=3))
    assert isinstance(err, DataError)
    assert "no jet passes the selection" in str(err)
    assert f"scanned {JETS} jets in {FILES} files" in str(err)


def test_fewer_training_jets_than_a_batch_is_a_data_error_naming_batch_size(jets):
    with pytest.raises(DataError, match=r"fewer than one batch of 1000.*data\.batch_size"):
        build_datasets(jets.paths, ALL, HITS, _data(batch_size=1000), seed=3)


def test_all_jets_in_validation_is_a_data_error(jets):
    with pytest.raises(DataError, match="no training jets"):
        scan_split(jets.paths, ALL, HITS, _data(validation_fraction=0.999999), seed=3)


@pytest.mark.parametrize("max_jets", [7, 50, 100, 161])
def test_max_jets_caps_the_jets_used_to_the_same_first_jets_every_epoch(jets, sides, max_jets):
    data = _data(batch_size=1, max_jets=max_jets)
    split = scan_split(jets.paths, ALL, IDENTITY, data, 3)
    assert split.train + split.validation == max_jets
    train = [
        _keys(jets, split, ALL, data, 3, epoch=e, batch_size=1) for e in range(2)
    ]
    validation = _keys(jets, split, ALL, data, 3, epoch=None, batch_size=1)
    assert len(train[0]) == split.train and len(validation) == split.validation
    assert set(train[0]) == set(train[1])
    # the first max_jets kept jets in file order, split as without the cap
    assert set(train[0]) | set(validation) == set(jets.keys[:max_jets])
    _, _, validation_all = sides
    assert validation == [k for k in validation_all if k in set(jets.keys[:max_jets])]
    assert len(split.sample) == split.train


def test_max_jets_above_the_kept_count_changes_nothing(jets):
    split = scan_split(jets.paths, ALL, HITS, _data(max_jets=10**6), seed=3)
    assert split.train + split.validation == JETS
    assert split.row_limits is None


def test_max_jets_must_be_positive(jets):
    with pytest.raises(ConfigError, match="max_jets"):
        scan_split(jets.paths, ALL, HITS, _data(max_jets=0), seed=3)


# --------------------------------------------------------------------------------------------
# built-in data


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("TFJF_CACHE", str(root))
    calls = []
    real = generate.make_data

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(generate, "make_data", counting)
    return root, calls


def _snapshot(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir())}


def test_cache_root_prefers_tfjf_cache_then_xdg(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("TFJF_CACHE", raising=False)
    assert builtin.cache_root() == tmp_path / "xdg" / "tfjetflows"
    monkeypatch.setenv("TFJF_CACHE", str(tmp_path / "mine"))
    assert builtin.cache_root() == tmp_path / "mine"


def test_builtin_data_is_generated_once_then_reused(cache):
    root, calls = cache
    first = builtin.builtin_data(jets=6, files=2, seed=1)
    assert first.parent == root and first.is_dir()
    files = sorted(first.glob("*.parquet"))
    assert len(files) == 2
    assert sum(len(b) for b in iter_jet_batches(files)) == 6
    before = _snapshot(first)
    second = builtin.builtin_data(jets=6, files=2, seed=1)
    assert second == first
    assert _snapshot(second) == before
    assert len(calls) == 1
    assert [p.name for p in root.iterdir()] == [first.name], "staging folder left behind"


def test_builtin_data_names_its_folder_after_the_arguments(cache):
    root, calls = cache
    a = builtin.builtin_data(jets=4, files=1, seed=1)
    b = builtin.builtin_data(jets=4, files=1, seed=2)
    assert a != b and len(calls) == 2
    assert sorted(p.name for p in root.iterdir()) == sorted([a.name, b.name])


def test_failed_generation_leaves_nothing_behind(cache, monkeypatch):
    root, _ = cache

    def broken(out_dir, **kwargs):
        Path(out_dir, "jets-000.parquet").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(generate, "make_data", broken)
    with pytest.raises(KeyboardInterrupt):
        builtin.builtin_data(jets=4, files=1, seed=1)
    assert list(root.iterdir()) == []


def test_another_process_finishing_first_is_used(cache, monkeypatch):
    root, _ = cache
    real = generate.make_data

    def racing(out_dir, **kwargs):
        paths = real(out_dir, **kwargs)
        other = root / "synthetic-4jets-1files-seed1"
        other.mkdir()
        (other / "marker").write_text("theirs")
        return paths

    monkeypatch.setattr(generate, "make_data", racing)
    target = builtin.builtin_data(jets=4, files=1, seed=1)
    assert (target / "marker").read_text() == "theirs"
    assert [p.name for p in root.iterdir()] == [target.name]


def test_jets_keep_their_side_when_another_data_config_key_changes(jets):
    """shuffle_buffer and batch size shape the stream, never the split."""
    base = _data(batch_size=1)
    other = replace(base, shuffle_buffer=7)
    split_a = scan_split(jets.paths, ALL, IDENTITY, base, 3)
    split_b = scan_split(jets.paths, ALL, IDENTITY, other, 3)
    a = _keys(jets, split_a, ALL, base, 3, epoch=0, batch_size=1)
    b = _keys(jets, split_b, ALL, other, 3, epoch=0, batch_size=1)
    assert set(a) == set(b) and a != b


# --------------------------------------------------------------------------------------------
# the in-memory cache of compact jets


def test_a_cached_epoch_yields_the_jets_a_streamed_epoch_yields(jets, sides):
    _, streamed_train, streamed_validation = sides
    data = _data(batch_size=1, cache_max_mb=64)
    split = scan_split(jets.paths, ALL, IDENTITY, data, 3)
    assert split.cache is not None
    train = _keys(jets, split, ALL, data, 3, epoch=0, batch_size=1)
    assert sorted(train) == sorted(streamed_train) and train != streamed_train
    assert _keys(jets, split, ALL, data, 3, epoch=None, batch_size=1) == streamed_validation
    epoch_1 = _keys(jets, split, ALL, data, 3, epoch=1, batch_size=1)
    assert sorted(epoch_1) == sorted(train) and epoch_1 != train


def test_cached_hits_batches_are_full_and_resume_like_an_uninterrupted_run(jets):
    data = _data(batch_size=16, cache_max_mb=64)
    ds = build_datasets(jets.paths, ALL, HITS, data, seed=3)
    assert ds.split.cache is not None
    steps = ds.train_steps
    epochs = _tf_batches(ds.train, 3 * steps)
    assert {b["x"].shape for b in epochs} == {(16, HITS.dim)}
    resumed = build_datasets(jets.paths, ALL, HITS, data, 3, initial_epoch=2, split=ds.split)
    assert _same_batches(_tf_batches(resumed.train, steps), epochs[2 * steps :])
    assert not np.array_equal(epochs[0]["x"], epochs[steps]["x"])
    validation = _tf_batches(ds.validation, 10**6)
    assert sum(len(b["x"]) for b in validation) == ds.split.validation
    assert _same_batches(validation, _tf_batches(ds.validation, 10**6))


def test_the_cache_holds_only_the_max_jets_cap(jets):
    data = _data(batch_size=1, cache_max_mb=64, max_jets=50)
    split = scan_split(jets.paths, ALL, IDENTITY, data, 3)
    assert len(split.cache.in_validation) == split.train + split.validation == 50


def test_jets_over_the_cache_limit_stream_from_parquet(jets, caplog):
    data = _data(batch_size=1, cache_max_mb=1)
    big = HitsRepresentation(hits_per_channel={"ecal": 2000})  # 16 kB per jet: 240 jets > 1 MB
    with caplog.at_level("INFO", logger="tfjetflows.data"):
        split = scan_split(jets.paths, ALL, big, data, 3)
    assert split.cache is None
    assert "cache_max_mb=1" in caplog.text
    batches = list(iter_encoded(split, ALL, big, data, 3, [], epoch=0, batch_size=16))
    assert len(batches) == split.train // 16


def test_cache_max_mb_must_not_be_negative(jets):
    with pytest.raises(ConfigError, match="cache_max_mb"):
        scan_split(jets.paths, ALL, IDENTITY, _data(cache_max_mb=-1), 3)
