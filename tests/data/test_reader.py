from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tfjetflows.config import ConfigError
from tfjetflows.data import schema
from tfjetflows.data.reader import (
    JetBatch,
    ReadStats,
    iter_jet_batches,
    resolve_paths,
    validate_files,
)
from tfjetflows.data.schema import DataError

# ---------------------------------------------------------------------------------------------
# helpers that write malformed files


def _nested(values: np.ndarray) -> pa.Array:
    """A list<list<list<double>>> column from a dense [n, c, h, w] array of any shape."""
    n, c, h, w = values.shape
    flat = pa.array(values.reshape(-1).astype(np.float64))
    rows = pa.ListArray.from_arrays(np.arange(n * c * h + 1, dtype=np.int32) * w, flat)
    planes = pa.ListArray.from_arrays(np.arange(n * c + 1, dtype=np.int32) * h, rows)
    return pa.ListArray.from_arrays(np.arange(n + 1, dtype=np.int32) * c, planes)


def _write(path: Path, columns: dict[str, pa.Array]) -> Path:
    pq.write_table(pa.table(columns), path, row_group_size=1)
    return path


def _columns(jets: tuple, images: pa.Array | None = None) -> dict[str, pa.Array]:
    arrays, pt, m0, y = jets
    return {
        "X_jets": _nested(arrays) if images is None else images,
        "pt": pa.array(pt),
        "m0": pa.array(m0),
        "y": pa.array(y),
    }


def _missing(tmp_path, jets):
    return tmp_path / "absent.parquet"


def _folder(tmp_path, jets):
    (tmp_path / "folder.parquet").mkdir()
    return tmp_path / "folder.parquet"


def _csv(tmp_path, jets):
    path = tmp_path / "jets.csv"
    path.write_text("pt,m0,y\n100.0,10.0,0\n")
    return path


def _empty(tmp_path, jets):
    path = tmp_path / "empty.parquet"
    path.write_bytes(b"")
    return path


def _good(tmp_path, jets, name="good.parquet"):
    return schema.write_jets(tmp_path / name, *jets)


def _truncated(tmp_path, jets):
    data = _good(tmp_path, jets, "full.parquet").read_bytes()
    path = tmp_path / "truncated.parquet"
    path.write_bytes(data[: int(len(data) * 0.6)])
    return path


def _corrupt_pages(tmp_path, jets):
    data = bytearray(_good(tmp_path, jets, "full.parquet").read_bytes())
    data[4:504] = b"\xff" * 500  # the first page header, after the magic bytes; footer intact
    path = tmp_path / "corrupt.parquet"
    path.write_bytes(bytes(data))
    return path


def _drop(column):
    def make(tmp_path, jets):
        columns = _columns(jets)
        del columns[column]
        return _write(tmp_path / f"no_{column}.parquet", columns)

    return make


def _image_column(build):
    def make(tmp_path, jets):
        return _write(tmp_path / "image.parquet", _columns(jets, build(jets[0])))

    return make


def _ragged(images):
    """Jet 4 of 6 has [3][125][120] images, the others are fine."""
    bad = _nested(images[4:5, :, :, :120])
    return pa.concat_arrays([_nested(images[:4]), bad, _nested(images[5:])])


def _null_image(images):
    return pa.concat_arrays([_nested(images[:2]), pa.nulls(1, _nested(images[:1]).type),
                             _nested(images[3:])])


def _with_value(column, row, value):
    def make(tmp_path, jets):
        arrays, pt, m0, y = (np.array(a, copy=True) for a in jets)
        if column == "X_jets":
            arrays[row, 1, 60, 61] = value
        else:
            {"pt": pt, "m0": m0, "y": y}[column][row] = value
        return schema.write_jets(tmp_path / "values.parquet", arrays, pt, m0, y)

    return make


# (case id, file maker, message fragments, detectable from the footer alone)
BAD_INPUTS = [
    ("missing-file", _missing, ["file not found"], True),
    ("folder", _folder, ["is a folder"], True),
    ("csv-text", _csv, ["not a readable Parquet file"], True),
    ("empty-file", _empty, ["not a readable Parquet file"], True),
    ("truncated", _truncated, ["not a readable Parquet file", "truncated"], True),
    ("corrupt-pages", _corrupt_pages, ["corrupt Parquet data", "row 0"], False),
    ("no-X_jets", _drop("X_jets"), ["missing column 'X_jets'"], True),
    ("no-pt", _drop("pt"), ["missing column 'pt'"], True),
    ("no-m0", _drop("m0"), ["missing column 'm0'"], True),
    ("no-y", _drop("y"), ["missing column 'y'"], True),
    ("X_jets-strings", _image_column(lambda im: pa.array(["jet"] * len(im))),
     ["column 'X_jets' has type string"], True),
    ("X_jets-2-levels", _image_column(lambda im: pa.array([[[1.0]]] * len(im))),
     ["column 'X_jets' has type list<", "expected list<list<list<double>>>"], True),
    ("shape-3x100x100", _image_column(lambda im: _nested(im[:, :, :100, :100])),
     ["row 0", "image shape [3][100]", "expected [3][125][125]"], False),
    ("shape-2-channels", _image_column(lambda im: _nested(im[:, :2])),
     ["row 0", "image shape [2]", "expected [3][125][125]"], False),
    ("shape-3x125x124", _image_column(lambda im: _nested(im[:, :, :, :124])),
     ["row 0", "image shape [3][125][124]"], False),
    ("shape-ragged-row-4", _image_column(_ragged), ["row 4", "image shape [3][125][120]"], False),
    ("null-image", _image_column(_null_image), ["row 2", "column 'X_jets' is null"], False),
    ("nan-pixel", _with_value("X_jets", 3, np.nan), ["row 3", "column 'X_jets'", "NaN or inf"],
     False),
    ("inf-pixel", _with_value("X_jets", 5, -np.inf), ["row 5", "column 'X_jets'"], False),
    ("nan-pt", _with_value("pt", 1, np.nan), ["row 1", "column 'pt'"], False),
]


@pytest.fixture
def jets(jet_arrays):
    return jet_arrays(6, seed=3)


# ---------------------------------------------------------------------------------------------
# reading


def test_reads_back_written_jets(jet_file, jet_arrays):
    path = jet_file("a.parquet", n=7, seed=1)
    images, pt, m0, y = jet_arrays(7, seed=1)
    stats = ReadStats()
    batches = list(iter_jet_batches([path], batch_size=3, stats=stats))
    assert [len(b) for b in batches] == [3, 3, 1]
    got = JetBatch(
        *(np.concatenate([getattr(b, k) for b in batches]) for k in ("images", "pt", "m0", "y")),
        file=path,
        rows=np.concatenate([b.rows for b in batches]),
    )
    assert got.images.dtype == np.float32 and got.images.shape == (7, 3, 125, 125)
    assert {got.pt.dtype, got.m0.dtype, got.y.dtype} == {np.dtype(np.float32)}
    assert got.rows.dtype == np.int64
    np.testing.assert_array_equal(got.images, images.astype(np.float32))
    np.testing.assert_allclose(got.pt, pt, rtol=1e-6)
    np.testing.assert_allclose(got.m0, m0, rtol=1e-6)
    np.testing.assert_array_equal(got.y, y)
    np.testing.assert_array_equal(got.rows, np.arange(7))
    assert all(b.file == path for b in batches)
    assert (stats.files, stats.jets_read, stats.bad_jets_skipped) == (1, 7, 0)


def test_batches_across_files_keep_row_indices(jet_file, jet_arrays):
    first = jet_file("first.parquet", n=5, seed=10)
    second = jet_file("second.parquet", n=4, seed=11)
    stats = ReadStats()
    batches = list(iter_jet_batches([first, second], batch_size=3, stats=stats))
    assert [(b.file.name, b.rows.tolist()) for b in batches] == [
        ("first.parquet", [0, 1, 2]),
        ("first.parquet", [3, 4]),
        ("second.parquet", [0, 1, 2]),
        ("second.parquet", [3]),
    ]
    sources = {first: jet_arrays(5, seed=10)[0], second: jet_arrays(4, seed=11)[0]}
    for batch in batches:
        np.testing.assert_array_equal(batch.images, sources[batch.file][batch.rows].astype("f4"))
    assert (stats.files, stats.jets_read) == (2, 9)


def test_float32_pixel_and_large_list_types_are_accepted(tmp_path, jets):
    images, pt, m0, y = jets
    column = _nested(images)
    leaf = pa.large_list(pa.large_list(pa.large_list(pa.float32())))
    path = _write(tmp_path / "f32.parquet", _columns(jets, column.cast(leaf)))
    (batch,) = iter_jet_batches([path], batch_size=16)
    np.testing.assert_array_equal(batch.images, images.astype(np.float32))


@pytest.mark.parametrize(
    ("make", "fragments"),
    [pytest.param(make, fragments, id=case) for case, make, fragments, _ in BAD_INPUTS],
)
def test_bad_input_is_one_clear_data_error(tmp_path, jets, make, fragments):
    path = make(tmp_path, jets)
    with pytest.raises(DataError) as info:
        for _ in iter_jet_batches([path], batch_size=4):
            pass
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    for fragment in fragments:
        assert fragment in message
    assert "\n" not in message
    assert info.value.__context__ is None or info.value.__suppress_context__  # no raw pyarrow


@pytest.mark.parametrize(
    ("make", "fragments"),
    [pytest.param(make, fragments, id=case) for case, make, fragments, meta in BAD_INPUTS if meta],
)
def test_validate_files_catches_footer_problems(tmp_path, jets, make, fragments):
    good = _good(tmp_path, jets)
    path = make(tmp_path, jets)
    with pytest.raises(DataError) as info:
        validate_files([good, path])
    assert str(info.value).startswith(f"{path}: ")
    assert fragments[0] in str(info.value)


@pytest.mark.parametrize(
    "make",
    [pytest.param(make, id=case) for case, make, _, meta in BAD_INPUTS if not meta],
)
def test_validate_files_reads_no_pixels(tmp_path, jets, make):
    """Problems only the pixels show pass the footer check; the row count still comes back."""
    path = make(tmp_path, jets)
    assert validate_files([path]) == [6]


def test_validate_files_returns_row_counts(jet_file):
    paths = [jet_file("a.parquet", n=3), jet_file("b.parquet", n=5, seed=1)]
    assert validate_files(paths) == [3, 5]
    assert pq.ParquetFile(paths[1]).metadata.num_row_groups == 5


# ---------------------------------------------------------------------------------------------
# bad jets


def test_skip_mode_drops_counts_and_logs_once_per_file(tmp_path, jets, caplog):
    images, pt, m0, y = (np.array(a, copy=True) for a in jets)
    images[1, 0, 3, 4] = np.nan
    images[4, 2, 10, 10] = np.inf
    m0[5] = np.nan
    bad = schema.write_jets(tmp_path / "bad.parquet", images, pt, m0, y)
    clean = schema.write_jets(tmp_path / "clean.parquet", *jets)
    stats = ReadStats()
    with caplog.at_level(logging.WARNING, logger="tfjetflows.data"):
        batches = list(iter_jet_batches([bad, clean], batch_size=2, on_bad_jet="skip",
                                        stats=stats))
    kept = [(b.file.name, b.rows.tolist()) for b in batches]
    assert kept == [
        ("bad.parquet", [0]),
        ("bad.parquet", [2, 3]),
        ("clean.parquet", [0, 1]),
        ("clean.parquet", [2, 3]),
        ("clean.parquet", [4, 5]),
    ]  # rows 4 and 5 formed one batch, both bad: no empty batch is yielded
    np.testing.assert_array_equal(batches[1].images, images[[2, 3]].astype(np.float32))
    assert (stats.files, stats.jets_read, stats.bad_jets_skipped) == (2, 9, 3)
    records = [r for r in caplog.records if r.name == "tfjetflows.data"]
    assert len(records) == 1
    assert str(bad) in records[0].getMessage()
    assert "skipped 3 jets" in records[0].getMessage()
    assert "first at row 1" in records[0].getMessage()


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"on_bad_jet": "drop"}, "'error', 'skip'"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 2.5}, "batch_size"),
    ],
)
def test_bad_options_fail_at_the_call(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        iter_jet_batches(["never-opened.parquet"], **kwargs)  # no next(): fails before reading


# ---------------------------------------------------------------------------------------------
# resolve_paths


@pytest.fixture
def tree(tmp_path, monkeypatch, jet_file):
    monkeypatch.chdir(tmp_path)
    for name in ("d/b.parquet", "d/a.parquet", "d/sub/x.parquet", "e/c.parquet"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        jet_file(name, n=1)
    (tmp_path / "d/notes.txt").write_text("not data")
    (tmp_path / "empty").mkdir()
    return tmp_path


@pytest.mark.parametrize(
    ("patterns", "expected"),
    [
        (["d/b.parquet"], ["d/b.parquet"]),
        (["d/*.parquet"], ["d/a.parquet", "d/b.parquet"]),
        (["d/?.parquet"], ["d/a.parquet", "d/b.parquet"]),
        (["d/[b]*.parquet"], ["d/b.parquet"]),
        (["d"], ["d/a.parquet", "d/b.parquet"]),
        (["d/**/*.parquet"], ["d/a.parquet", "d/b.parquet", "d/sub/x.parquet"]),
        (["e", "d/b.parquet", "d"], ["e/c.parquet", "d/b.parquet", "d/a.parquet"]),
        (["d/a.parquet", "d/./a.parquet", "d/*.parquet", "d"], ["d/a.parquet", "d/b.parquet"]),
    ],
)
def test_resolve_paths(tree, patterns, expected):
    assert resolve_paths(patterns) == [Path(p) for p in expected]


@pytest.mark.parametrize(
    ("patterns", "message"),
    [
        (["d/a.parquet", "nope.parquet"], "no Parquet files match 'nope.parquet'"),
        (["d/*.h5"], "no Parquet files match 'd/*.h5'"),
        (["empty"], "no Parquet files (*.parquet) in folder 'empty'"),
    ],
)
def test_resolve_paths_errors(tree, patterns, message):
    with pytest.raises(DataError) as info:
        resolve_paths(patterns)
    assert str(info.value) == message


def test_write_jets_layout_is_one_row_per_row_group(jet_file):
    """The fixture reproduces the public layout the reader is tuned for."""
    path = jet_file(n=4)
    assert pq.ParquetFile(path).metadata.num_row_groups == 4
