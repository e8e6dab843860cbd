"""make_data: files, row groups, schema, atomicity, reproducibility and argument checks."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from tfjetflows.data import generate
from tfjetflows.data.generate import GENERATORS, file_seed, make_data, split_counts
from tfjetflows.data.pythia import MissingExtraError, generate_pythia
from tfjetflows.data.schema import IMAGE_COLUMN, IMAGE_SHAPE, arrow_schema


def _images(path) -> np.ndarray:
    column = pq.read_table(path, columns=[IMAGE_COLUMN]).column(0).combine_chunks()
    flat = column.flatten().flatten().flatten().to_numpy()
    return flat.reshape(-1, *IMAGE_SHAPE)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("jets")
    return out, make_data(out, jets=7, seed=11, files=3)


def test_files_written_with_names(written):
    out, paths = written
    assert [p.name for p in paths] == ["jets-000.parquet", "jets-001.parquet", "jets-002.parquet"]
    assert sorted(p.name for p in out.iterdir()) == [p.name for p in paths]  # no temp files


def test_counts_and_row_groups(written):
    _, paths = written
    meta = [pq.ParquetFile(p).metadata for p in paths]
    assert [m.num_rows for m in meta] == [3, 2, 2]
    assert [m.num_row_groups for m in meta] == [3, 2, 2]


def test_schema_and_values(written):
    _, paths = written
    for path in paths:
        table = pq.read_table(path)
        assert table.schema.equals(arrow_schema())
        images = _images(path)
        pt, m0 = table.column("pt").to_numpy(), table.column("m0").to_numpy()
        assert images.shape[1:] == IMAGE_SHAPE and images.sum() > 0
        assert ((pt >= 100) & (pt <= 300)).all() and ((m0 > 0) & (m0 < pt)).all()
        assert set(table.column("y").to_numpy()) <= {0.0, 1.0}


def test_same_args_byte_identical(written, tmp_path):
    _, paths = written
    again = make_data(tmp_path, jets=7, seed=11, files=3)
    for left, right in zip(paths, again, strict=True):
        assert left.read_bytes() == right.read_bytes()


def test_files_and_seeds_differ(written, tmp_path):
    _, paths = written
    assert not np.array_equal(_images(paths[1]), _images(paths[2]))
    other = make_data(tmp_path, jets=7, seed=12, files=3)
    assert not np.array_equal(_images(paths[0]), _images(other[0]))


def test_row_group_size(tmp_path):
    (path,) = make_data(tmp_path, jets=5, seed=0, row_group_size=2)
    meta = pq.ParquetFile(path).metadata
    assert (meta.num_rows, meta.num_row_groups) == (5, 3)


def test_failure_leaves_nothing(tmp_path, monkeypatch):
    synthetic = generate._generator("synthetic")

    def broken(n, seed, *, chunk):
        yield from synthetic(1, seed, chunk=chunk)
        raise RuntimeError("generator failed")

    monkeypatch.setattr(generate, "_generator", lambda name: broken)
    with pytest.raises(RuntimeError, match="generator failed"):
        make_data(tmp_path, jets=2, seed=0)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"jets": 0}, "jets must be positive"),
        ({"jets": 3, "files": 0}, "files must be positive"),
        ({"jets": 2, "files": 3}, r"files \(3\) must not exceed jets \(2\)"),
        ({"jets": 2, "generator": "herwig"}, "unknown generator 'herwig'"),
        ({"jets": 2, "row_group_size": 0}, "row_group_size must be positive"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_data(tmp_path, seed=0, **kwargs)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("jets", "files", "counts"), [(7, 3, [3, 2, 2]), (4, 4, [1, 1, 1, 1]), (5, 1, [5])]
)
def test_split_counts(jets, files, counts):
    assert split_counts(jets, files) == counts


def test_file_seed():
    seeds = [file_seed(5, k) for k in range(4)]
    assert len(set(seeds)) == 4 and all(0 <= s < 900_000_000 for s in seeds)
    assert file_seed(5, 0) == seeds[0] != file_seed(6, 0)


def test_generators_listed():
    assert GENERATORS == ("synthetic", "pythia")


@pytest.mark.parametrize("module", ["pythia8mc", "fastjet"])
def test_pythia_missing_extra(tmp_path, monkeypatch, module):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    out = tmp_path / "out"
    with pytest.raises(MissingExtraError, match=r'pip install "tfjetflows\[pythia\]"'):
        make_data(out, jets=2, seed=0, generator="pythia")
    assert not out.exists()
    with pytest.raises(MissingExtraError, match="could not be imported") as excinfo:
        next(generate_pythia(2, seed=0))
    assert isinstance(excinfo.value.__cause__, ImportError)
    assert isinstance(excinfo.value, RuntimeError)


@pytest.fixture(scope="module")
def pythia_files(tmp_path_factory):
    pytest.importorskip("pythia8mc")
    pytest.importorskip("fastjet")
    out = tmp_path_factory.mktemp("pythia")
    return make_data(out, jets=6, seed=5, files=2, generator="pythia")


def test_pythia_jets(pythia_files):
    for path in pythia_files:
        meta = pq.ParquetFile(path).metadata
        assert (meta.num_rows, meta.num_row_groups) == (3, 3)
        table = pq.read_table(path)
        assert table.schema.equals(arrow_schema())
        images = _images(path)
        pt, m0 = table.column("pt").to_numpy(), table.column("m0").to_numpy()
        assert ((pt >= 100) & (pt <= 300)).all() and ((m0 > 0) & (m0 < pt)).all()
        assert set(table.column("y").to_numpy()) <= {0.0, 1.0}
        tracks = (images[:, 0] != 0).sum(axis=(1, 2))
        assert (tracks >= 3).all()
        small = (images != 0) & (np.abs(images) < 1e-3)
        assert not small.any()
        # Most of the image energy is near the jet axis at the centre.
        total = images.sum(axis=1)
        assert total[:, 50:75, 50:75].sum() > 0.5 * total.sum()


def test_pythia_reproducible_and_quiet(pythia_files, tmp_path):
    # A fresh process (so FastJet's first-use banner would show) writes the same files again.
    code = (
        "import sys; from tfjetflows.data.generate import make_data; "
        "make_data(sys.argv[1], jets=6, seed=5, files=2, generator='pythia')"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert run.stdout == "" and run.stderr == ""
    for path in pythia_files:
        assert (tmp_path / path.name).read_bytes() == path.read_bytes()
