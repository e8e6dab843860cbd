"""The benchmark suite's plumbing: rows, ratios, table, JSON and the peer-absent skip path.

No benchmark is timed here: the one subprocess runs ``run_all.py`` with every bench skipped but
the peer, whose torch and zuko are hidden, so it only checks the skip message end to end.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import bench_sampling  # noqa: E402
import benchlib  # noqa: E402
import peer_zuko  # noqa: E402
import run_all  # noqa: E402


def _row(name: str, value: float | None, key: str = "", **extra: object) -> dict:
    row = benchlib.skipped_row(name, "test") if value is None else {
        **benchlib.skipped_row(name, ""), "value": value, "unit": "jets/s", "note": ""
    }  # fmt: skip
    if key:
        row["key"] = key
    row.update(extra)
    return row


def test_time_calls_warms_up_then_times_each_call() -> None:
    calls = []
    timing = benchlib.time_calls(lambda: calls.append(1), repeats=3, warmup=2)
    assert len(calls) == 5
    assert len(timing["seconds"]) == 3
    assert timing["min_s"] <= timing["median_s"] <= timing["max_s"]
    assert timing["first_s"] is not None


def test_rate_row_is_units_over_median_time() -> None:
    timing = {"seconds": [1.0, 2.0, 4.0], "median_s": 2.0, "min_s": 1.0, "max_s": 4.0}
    row = benchlib.rate_row("x", 100, timing, "jets/s", key="k")
    assert row["value"] == 50.0
    assert row["spread"] == [25.0, 100.0]
    assert row["key"] == "k"


def test_fill_ratios_is_ours_over_peer_and_notes_missing_peers() -> None:
    rows = [
        _row("ours", 30.0, peer_key="zuko.train.D16"),
        _row("ours missing", 30.0, peer_key="zuko.train.D999"),
        _row("skipped", None, peer_key="zuko.train.D16"),
    ]
    benchlib.fill_ratios(rows, {"zuko.train.D16": ("zuko", 60.0)})
    assert rows[0]["ratio"] == 0.5 and rows[0]["peer"] == 60.0 and rows[0]["peer_name"] == "zuko"
    assert rows[1]["ratio"] is None and "peer not measured" in rows[1]["note"]
    assert rows[2]["ratio"] is None and rows[2]["peer"] == 60.0


def test_markdown_table_lists_every_row_with_skips(tmp_path: Path) -> None:
    rows = [_row("fast | thing", 1234.5, spread=[1000.0, 1500.0]), _row("absent", None)]
    benchlib.fill_ratios(rows, {})
    table = benchlib.markdown_table(rows)
    lines = table.strip().splitlines()
    assert lines[0].startswith("| bench | figure")
    assert len(lines) == 4
    assert "1,234 (1,000-1,500)" in lines[2]
    assert "| fast / thing |" in lines[2] and lines[2].count("|") == 8
    assert "skipped: test" in lines[3]


def test_write_json_is_strict_json(tmp_path: Path) -> None:
    path = benchlib.write_json(tmp_path / "out.json", {"a": math.nan, "b": [math.inf, 1.5]})
    assert json.loads(path.read_text()) == {"a": None, "b": [None, 1.5]}


def test_load_peer_reports_a_missing_module() -> None:
    def importer(name: str) -> object:
        if name == "zuko":
            raise ImportError("No module named 'zuko'")
        return object()

    modules, reason = peer_zuko.load_peer(importer)
    assert modules is None
    assert "zuko is not installed" in reason
    assert "requirements-peers.txt" in reason


def test_load_peer_hides_modules_named_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(peer_zuko.HIDE_ENV, "torch")
    modules, reason = peer_zuko.load_peer(lambda name: object())
    assert modules is None and "torch is not installed" in reason
    monkeypatch.delenv(peer_zuko.HIDE_ENV)
    modules, reason = peer_zuko.load_peer(lambda name: object())
    assert set(modules) == {"torch", "zuko"} and reason == ""


def test_peer_rows_give_peer_figures_by_key() -> None:
    report = {
        "available": True,
        "zuko": "1.6.0",
        "torch": "2.13.0",
        "threads": 2,
        "train": [{"dim": 16, "steps_per_s": 90.0, "spread": [80.0, 95.0], "data": "normal"}],
        "sample": [{"dim": 807, "n": 100, "jets_per_s": 5.0, "spread": [4.0, 6.0]}],
    }
    rows, peers = run_all.peer_rows(report)
    assert peers == {"zuko.train.D16": ("zuko", 90.0), "zuko.sample.D807.n100": ("zuko", 5.0)}
    assert [r["value"] for r in rows] == [90.0, 5.0]
    rows, peers = run_all.peer_rows({"available": False, "reason": "no torch"})
    assert peers == {} and rows[0]["value"] is None and "no torch" in rows[0]["note"]


def test_teacher_links_to_zuko_and_derived_decoding_rates() -> None:
    rows = [
        _row("teacher", 10.0, key="MAF teacher.vectors.n100"),
        _row("teacher xla", 12.0, key="MAF teacher.vectors.n100.xla"),
        _row("decode", 90.0, key="decode.images.n100"),
        _row("student", 1000.0, key="IAF student.vectors.n100"),
        _row("student big", 5000.0, key="IAF student.vectors.n1000"),
    ]
    rows += bench_sampling._derived_rows("MAF teacher", rows, [100])
    derived = [r for r in rows if r.get("key") == "MAF teacher.images.n100"]
    assert len(derived) == 1 and derived[0]["value"] == pytest.approx(9.0)
    assert derived[0]["note"].startswith("derived")
    summary = bench_sampling._student_vs_teacher(rows)
    assert summary[0]["value"] == pytest.approx(5000.0 / 10.0)
    student = rows[3]
    assert student["peer_name"] == "MAF teacher" and student["ratio"] == pytest.approx(100.0)
    run_all._link_sampling_peers(rows)
    assert rows[0]["peer_key"] == "zuko.sample.D807.n100"
    assert rows[1]["peer_key"] == "zuko.sample.D807.n100"


def test_versus_full_simulation_divides_decoded_rates_by_pythia() -> None:
    rows = [
        _row("teacher images", 9.0, key="MAF teacher.images.n100"),
        _row("decode only", 90.0, key="decode.images.n100"),
        _row("pythia", 3.0, key="pythia.marginal"),
    ]
    out = run_all._versus_full_simulation(rows)
    assert [r["value"] for r in out] == [3.0]
    assert run_all._versus_full_simulation(rows[:2]) == []


def test_run_all_skips_an_absent_peer_cleanly(tmp_path: Path) -> None:
    out_json, out_md = tmp_path / "bench.json", tmp_path / "bench.md"
    done = subprocess.run(
        [
            sys.executable, str(BENCH / "run_all.py"), "--quick",
            "--skip", "data", "train", "sampling", "pythia",
            "--json", str(out_json), "--markdown", str(out_md),
        ],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, peer_zuko.HIDE_ENV: "torch,zuko"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(out_json.read_text())
    assert report["quick"] is True
    assert report["machine"]["cpu_count"] >= 1 and len(report["machine"]["loadavg"]) == 3
    (row,) = report["rows"]
    assert row["value"] is None and "torch is not installed" in row["note"]
    assert report["peer"]["available"] is False
    text = out_md.read_text()
    assert "quick smoke run" in text and "skipped: torch is not installed" in text


def test_make_data_seconds_runs_the_cli_pinned_to_one_core(tmp_path: Path) -> None:
    import bench_pythia

    core = sorted(os.sched_getaffinity(0))[0]
    result = bench_pythia.make_data_seconds(2, tmp_path / "jets", core, generator="synthetic")
    assert result["jets"] == 2 and result["wall_s"] > 0 and result["cpu_s"] > 0
    assert len(list((tmp_path / "jets").glob("*.parquet"))) == 1


@pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("torch", "zuko")),
    reason="the optional peer environment (torch, zuko) is not installed",
)
def test_peer_zuko_reports_train_and_sample_figures(tmp_path: Path) -> None:
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(0).normal(size=(64, 4)).astype("float32"))
    done = subprocess.run(
        [
            sys.executable, str(BENCH / "peer_zuko.py"), "--train-dims", "3", "4",
            "--sample-dims", "4", "--sample-n", "5", "--steps", "2", "--repeats", "1",
            "--warmup-steps", "1", "--sample-repeats", "1", "--blocks", "2",
            "--hidden", "8", "8", "--batch-size", "16", "--data", f"4={data}", "--threads", "1",
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["available"] is True and report["threads"] == 1
    assert [t["dim"] for t in report["train"]] == [3, 4]
    assert report["train"][0]["data"].startswith("standard normal")
    assert report["train"][1]["data"].startswith(f"vectors from {data}")
    assert all(t["steps_per_s"] > 0 and math.isfinite(t["last_loss"]) for t in report["train"])
    assert report["sample"][0]["n"] == 5 and report["sample"][0]["jets_per_s"] > 0


def test_fill_ratios_leaves_rows_that_already_have_a_peer() -> None:
    row = _row("student", 100.0, peer_key="MAF teacher.vectors.n100")
    benchlib.fill_ratios([row], {"MAF teacher.vectors.n100": ("MAF teacher", 4.0)})
    benchlib.fill_ratios([row], {"zuko.train.D16": ("zuko", 60.0)})
    assert row["peer_name"] == "MAF teacher" and row["ratio"] == 25.0
    assert "peer not measured" not in row["note"]
