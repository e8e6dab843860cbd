"""Tests of ``tfjf make-data`` and ``tfjf inspect`` through click's test runner."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import main
from tfjetflows.config import load_config
from tfjetflows.data.reader import iter_jet_batches, validate_files

DEFAULT_K = load_config().representation["hits_per_channel"]  # the default config's K


def _run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("Error:")]


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("made") / "jets"
    result = _run("make-data", out, "--jets", 40, "--files", 2, "--seed", 1)
    assert result.exit_code == 0, result.output
    return out


def test_make_data_writes_readable_files(made):
    files = sorted(made.glob("*.parquet"))
    assert [f.name for f in files] == ["jets-000.parquet", "jets-001.parquet"]
    assert validate_files(files) == [20, 20]
    assert sum(len(b) for b in iter_jet_batches(files)) == 40
    assert not [p for p in made.iterdir() if p.name.startswith(".")], "temporary files left"


def test_make_data_prints_the_paths(tmp_path):
    result = _run("make-data", tmp_path / "out", "--jets", 3, "--seed", 2)
    assert result.exit_code == 0
    assert result.output.splitlines() == [str(tmp_path / "out" / "jets-000.parquet")]


def test_make_data_same_seed_same_bytes(made, tmp_path):
    again = tmp_path / "again"
    assert _run("make-data", again, "--jets", 40, "--files", 2, "--seed", 1).exit_code == 0
    for name in ("jets-000.parquet", "jets-001.parquet"):
        assert (again / name).read_bytes() == (made / name).read_bytes()
    other = tmp_path / "other"
    assert _run("make-data", other, "--jets", 40, "--files", 2, "--seed", 2).exit_code == 0
    assert (other / "jets-000.parquet").read_bytes() != (made / "jets-000.parquet").read_bytes()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--jets", "0"], "jets must be positive, got 0"),
        (["--jets", "2", "--files", "3"], "files (3) must not exceed jets (2)"),
        (["--jets", "2", "--files", "0"], "files must be positive, got 0"),
        (["--jets", "2", "--row-group-size", "0"], "row_group_size must be positive"),
        (["--jets", "2", "--generator", "nope"], "'nope' is not one of 'synthetic', 'pythia'"),
        (["--jets", "many"], "'many' is not a valid integer"),
    ],
    ids=["no-jets", "more-files-than-jets", "no-files", "row-group", "generator", "not-int"],
)
def test_make_data_bad_arguments_fail_with_one_clear_line(tmp_path, args, message):
    out = tmp_path / "out"
    result = _run("make-data", out, *args)
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit)
    errors = _error_lines(result.output)
    assert len(errors) == 1 and message in errors[0]
    assert "Traceback" not in result.output
    assert not out.exists() or not list(out.glob("*.parquet"))


@pytest.mark.skipif(
    importlib.util.find_spec("pythia8mc") is not None, reason="pythia8mc is installed"
)
def test_make_data_pythia_without_the_extra_says_how_to_install(tmp_path):
    result = _run("make-data", tmp_path / "out", "--jets", 2, "--generator", "pythia")
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit), result.exception
    errors = _error_lines(result.output)
    assert len(errors) == 1
    assert 'pip install "tfjetflows[pythia]"' in errors[0]
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_make_data_pythia_with_the_extra_hidden_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pythia8mc", None)  # import fails as if not installed
    result = _run("make-data", tmp_path / "out", "--jets", 2, "--generator", "pythia")
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit), result.exception
    errors = _error_lines(result.output)
    assert len(errors) == 1
    assert "pythia8mc" in errors[0] and 'pip install "tfjetflows[pythia]"' in errors[0]
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


# --------------------------------------------------------------------------------------------
# inspect


def test_inspect_json(made):
    result = _run("inspect", made, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["files"] == 2
    assert summary["jets"] == 40
    assert sum(summary["labels"].values()) == 40
    assert set(summary["labels"]) == {"0", "1"}
    assert set(summary["channels"]) == {"tracks", "ecal", "hcal"}
    for figures in summary["channels"].values():
        assert set(figures) == {"hits", "energy_sum_gev"}
        assert figures["hits"]["q10"] <= figures["hits"]["q50"] <= figures["hits"]["q90"]
    assert summary["selection"]["scanned"] == 40
    assert 0 < summary["selection"]["passed"] <= 40
    # the default config's hits representation: K per channel
    coverage = summary["topk_energy_fraction"]
    assert {c: f["k"] for c, f in coverage.items()} == DEFAULT_K
    assert all(0.0 < f["q10"] <= f["q50"] <= f["q90"] <= 1.0 for f in coverage.values())
    assert summary["config"].endswith("maf_hits.yaml")


def test_inspect_overrides_change_the_selection(made):
    result = _run("inspect", made / "jets-000.parquet", "--json", "--set", "selection.labels=[0]")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["files"] == 1
    assert summary["selection"]["passed"] == int(summary["labels"]["0"])


def test_inspect_text(made):
    result = _run("inspect", made / "*.parquet")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "2 files, 40 jets (schema OK)"
    assert any(line.strip().startswith("ecal: hits q10/q50/q90") for line in lines)
    assert any(f"top-{DEFAULT_K['ecal']} hits keep" in line for line in lines)
    assert any(line.startswith("selection (") and "of 40 jets pass" in line for line in lines)


@pytest.mark.parametrize("kind", ["not-parquet", "missing", "empty-folder"])
def test_inspect_bad_path_fails_with_one_line_naming_it(tmp_path, kind):
    if kind == "not-parquet":
        target = tmp_path / "notes.parquet"
        target.write_text("this is not parquet\n")
        expected = "not a readable Parquet file"
    elif kind == "missing":
        target = tmp_path / "nowhere.parquet"
        expected = "no Parquet files match"
    else:
        target = tmp_path / "empty"
        target.mkdir()
        expected = "no Parquet files"
    result = _run("inspect", target)
    assert result.exit_code == 1
    errors = _error_lines(result.output)
    assert len(errors) == 1 and str(target) in errors[0] and expected in errors[0]
    assert len(result.output.strip().splitlines()) == 1


def test_inspect_config_with_misspelt_key_names_key_and_file(made, tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text("selection:\n  min_hit: 3\nrepresentation:\n  kind: hits\n"
                      "  hits_per_channel: {ecal: 4}\nmodel:\n  kind: maf\n")
    result = _run("inspect", made, "--config", config)
    assert result.exit_code == 1
    errors = _error_lines(result.output)
    assert len(errors) == 1
    assert "'min_hit'" in errors[0] and str(config) in errors[0]


def test_inspect_uses_the_config_representation(made, tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text("selection:\n  min_hits: 1\nrepresentation:\n  kind: hits\n"
                      "  hits_per_channel: {ecal: 4}\nmodel:\n  kind: maf\n")
    result = _run("inspect", made, "--config", config, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert list(summary["topk_energy_fraction"]) == ["ecal"]
    assert summary["topk_energy_fraction"]["ecal"]["k"] == 4
    assert summary["config"] == str(config)


def test_inspect_needs_data():
    result = _run("inspect")
    assert result.exit_code == 2
    assert "Missing argument 'DATA...'" in result.output
