"""Run every benchmark of tfjetflows in one go; print a Markdown table and write JSON.

Benches, in order (``--skip NAME`` leaves one out; part names skip a part of a bench):

``data``
    ``bench_data.py`` in a subprocess pinned to one core: jets/s of read + select + encode and
    of one training-pipeline epoch, on synthetic jets written one row per row group.
``train``
    ``bench_train.py`` (parts ``pipeline``, ``in-memory``, ``fit``): Keras ``model.fit``
    steps/s of the default MAF, with the zuko peer's figure at the same D beside it.
``peers``
    ``peer_zuko.py`` in a subprocess (so torch's and TensorFlow's threads do not compete): the
    same MAF architecture in zuko (PyTorch, CPU), training steps/s at D = 16, 256, 807 and
    sampling jets/s at D = 807; skipped with a message when torch or zuko are missing
    (``pip install -r bench/requirements-peers.txt``; ``--peer-python`` runs it with another
    interpreter, e.g. of a separate bench environment).
``sampling``
    ``bench_sampling.py`` (parts ``teacher``, ``student``, ``bnaf``): jets/s of the MAF teacher,
    the distilled IAF student (skipped when it cannot be imported), decoding, BNAF log-prob.
``pythia``
    ``bench_pythia.py``: jets/s of ``tfjf make-data --generator pythia`` on one core (skipped
    without the ``pythia`` extra).

``ours/peer`` is always ours divided by the peer's figure (above 1: we are faster). Each row
records the 1-minute load average when it was measured: on a shared machine, figures taken at a
load above the core count are slowed by other processes.

Usage:
    python bench/run_all.py [--quick] [--json out.json] [--markdown out.md] [--skip NAME ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from benchlib import (  # noqa: E402
    Row,
    fill_ratios,
    machine_info,
    markdown_table,
    skipped_row,
    usable_cores,
    write_json,
)

__all__ = ["BENCHES", "PARTS", "main", "peer_rows", "run_all"]

BENCHES = ("data", "train", "peers", "sampling", "pythia")
PARTS = {"train": ("pipeline", "in-memory", "fit"), "sampling": ("teacher", "student", "bnaf")}
FULL = {"data_jets": 4000, "data_repeats": 3, "peer_steps": 20, "peer_repeats": 3}
QUICK = {"data_jets": 300, "data_repeats": 1, "peer_steps": 3, "peer_repeats": 3}


def _pin_one_core() -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})


def bench_data(quick: bool) -> list[Row]:
    """``bench_data.py`` on one core: read+select+encode and a pipeline epoch, batch 256."""
    sizes = QUICK if quick else FULL
    with tempfile.TemporaryDirectory(prefix="tfjf-bench-data-") as tmp:
        out = Path(tmp) / "data.json"
        command = [
            sys.executable, str(HERE / "bench_data.py"), "--jets", str(sizes["data_jets"]),
            "--files", "2", "--data", str(Path(tmp) / "jets"), "--batch-sizes", "256",
            "--stages", "read+select+encode", "pipeline epoch",
            "--repeats", str(sizes["data_repeats"]), "--json", str(out),
        ]  # fmt: skip
        load = os.getloadavg()[0]
        done = subprocess.run(
            command, capture_output=True, text=True, preexec_fn=_pin_one_core, check=False
        )
        if done.returncode != 0:
            return [skipped_row("data pipeline", f"bench_data.py failed: {done.stderr[-300:]}")]
        report = json.loads(out.read_text())
    rows = []
    for result in report["results"]:
        rows.append({
            **skipped_row(f"data {result['stage']} (1 core, batch {result['batch_size']})", ""),
            "value": result["median"],
            "unit": "jets/s",
            "note": f"best {result['best']:.0f}, {result['cpu']:.0f} per CPU-s; "
                    f"{result['jets']} jets, one row per row group",
            "load": load,
            "key": f"data.{result['stage']}",
            "detail": {**result, "representation": report.get("representation")},
        })  # fmt: skip
    return rows


def bench_peers(
    quick: bool, python: str, teacher_n: list[int], vectors: Path | None, threads: int = 0
) -> tuple[list[Row], dict[str, tuple[str, float | None]], dict[str, Any]]:
    """Run ``peer_zuko.py`` in a subprocess; return its rows, the peer figures and its report."""
    sizes = QUICK if quick else FULL
    command = [
        python, str(HERE / "peer_zuko.py"), "--train-dims", *(["16", "807"] if quick else
                                                             ["16", "256", "807"]),
        "--sample-dims", "807", "--sample-n", *map(str, teacher_n),
        "--steps", str(sizes["peer_steps"]), "--repeats", str(sizes["peer_repeats"]),
        "--warmup-steps", "2" if quick else "5", "--sample-repeats", "1" if quick else "2",
        "--sample-warmup", "0",
        "--threads", str(threads or usable_cores()),
    ]  # fmt: skip
    if vectors is not None and vectors.is_file():
        command += ["--data", f"807={vectors}"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    try:
        report = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        reason = f"peer_zuko.py failed ({done.returncode}): {done.stderr.strip()[-300:]}"
        return [skipped_row("peer zuko", reason)], {}, {"available": False, "reason": reason}
    rows, peers = peer_rows(report)
    return rows, peers, report


def peer_rows(report: dict[str, Any]) -> tuple[list[Row], dict[str, tuple[str, float | None]]]:
    """Rows and peer figures (``zuko.train.D{dim}``, ``zuko.sample.D{dim}.n{n}``) of a report."""
    if not report.get("available"):
        reason = report.get("reason", "peer not available")
        print(f"peers: skipped ({reason})", flush=True)
        return [skipped_row("peer zuko (PyTorch CPU)", reason)], {}
    label = (
        f"zuko {report.get('zuko')}, torch {report.get('torch')}, {report.get('threads')} threads"
        f" (OMP_WAIT_POLICY {report.get('omp_wait_policy') or 'default'})"
    )
    rows, peers = [], {}
    for item in report.get("train", []):
        key = f"zuko.train.D{item['dim']}"
        peers[key] = ("zuko", item["steps_per_s"])
        rows.append({
            **skipped_row(f"peer zuko train D={item['dim']}", "", "steps/s"),
            "value": item["steps_per_s"],
            "spread": item.get("spread"),
            "load": item.get("loadavg", [None])[0],
            "note": f"{label}; data: {item.get('data')}",
            "key": key,
            "detail": item,
        })  # fmt: skip
    for item in report.get("sample", []):
        key = f"zuko.sample.D{item['dim']}.n{item['n']}"
        peers[key] = ("zuko", item["jets_per_s"])
        rows.append({
            **skipped_row(f"peer zuko sampling D={item['dim']} n={item['n']}", "", "jets/s"),
            "value": item["jets_per_s"],
            "spread": item.get("spread"),
            "load": item.get("loadavg", [None])[0],
            "note": label,
            "key": key,
            "detail": item,
        })  # fmt: skip
    return rows, peers


def _link_sampling_peers(rows: list[Row], peers: dict[str, Any] | None = None) -> None:
    """Teacher vector rows compare with zuko sampling at the same D and n (where measured)."""
    for row in rows:
        key = str(row.get("key", ""))
        if key.startswith("MAF teacher.vectors.n"):
            n = key.split(".n", 1)[1].split(".")[0]
            if peers is None or f"zuko.sample.D807.n{n}" in peers:
                row["peer_key"] = f"zuko.sample.D807.n{n}"


def _versus_full_simulation(rows: list[Row]) -> list[Row]:
    """Decoded-jet sampling rates over Pythia's per-core rate (rows named ``... / pythia``)."""
    by_key = {r.get("key"): r for r in rows if r.get("value") is not None}
    pythia = by_key.get("pythia.marginal") or by_key.get("pythia.whole")
    if pythia is None:
        return []
    out = []
    for row in rows:
        key = str(row.get("key", ""))
        if ".images." in key and not key.startswith("decode") and row.get("value") is not None:
            out.append({
                **skipped_row(f"{row['name']} / full simulation", "", "x"),
                "value": row["value"] / pythia["value"],
                "note": f"ours on {usable_cores()} cores vs Pythia on 1 core (decoded images)",
                "key": f"{key}.over_pythia",
            })  # fmt: skip
    return out


def _namespace(module: Any, argv: list[str]) -> argparse.Namespace:
    return module.build_parser().parse_args(argv)


def _run_bench(
    bench: str,
    args: argparse.Namespace,
    skip: set[str],
    vectors: Path,
    peers: dict[str, tuple[str, float | None]],
    report: dict[str, Any],
) -> list[Row]:
    """Run one bench; peer figures go into ``peers``, the peer's report into ``report``."""
    quick = ["--quick"] if args.quick else []
    if bench == "data":
        return bench_data(args.quick)
    if bench == "train":
        import bench_train

        parts = [p for p in PARTS["train"] if p in skip]
        argv = [*quick, "--export-vectors", str(vectors), "--skip", *parts]
        return bench_train.run(_namespace(bench_train, argv))
    if bench == "peers":
        import bench_sampling

        sizes = bench_sampling.QUICK if args.quick else bench_sampling.FULL
        rows, new_peers, peer_report = bench_peers(
            args.quick, args.peer_python, sizes["teacher_n"][:1], vectors, args.peer_threads
        )
        peers.update(new_peers)
        report["peer"] = {k: v for k, v in peer_report.items() if k != "machine"}
        return rows
    if bench == "sampling":
        import bench_sampling

        parts = [p for p in PARTS["sampling"] if p in skip]
        return bench_sampling.run(_namespace(bench_sampling, [*quick, "--skip", *parts]))
    if bench == "pythia":
        import bench_pythia

        return bench_pythia.run(bench_pythia.QUICK_JETS if args.quick else bench_pythia.FULL_JETS)
    raise ValueError(f"unknown bench {bench!r}")


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benches of ``args``; return the report (machine, rows, timings, peers)."""
    machine = machine_info()
    skip = set(args.skip)
    rows: list[Row] = []
    peers: dict[str, tuple[str, float | None]] = {}
    seconds: dict[str, float] = {}
    report: dict[str, Any] = {"quick": args.quick, "machine": machine, "skipped": sorted(skip)}
    with tempfile.TemporaryDirectory(prefix="tfjf-bench-all-") as tmp:
        vectors = Path(tmp) / "z807.npy"
        for bench in BENCHES:
            if bench in skip:
                print(f"== {bench}: skipped (--skip)", flush=True)
                continue
            print(f"== {bench} (load {os.getloadavg()[0]:.1f})", flush=True)
            start = time.perf_counter()
            try:
                rows += _run_bench(bench, args, skip, vectors, peers, report)
            except Exception as err:  # noqa: BLE001 - one failing bench must not end the suite
                print(f"== {bench} failed: {type(err).__name__}: {err}", flush=True)
                rows.append(skipped_row(bench, f"failed: {type(err).__name__}: {err}"[:300]))
            seconds[bench] = time.perf_counter() - start
    _link_sampling_peers(rows, peers if peers else None)
    fill_ratios(rows, peers)
    rows += _versus_full_simulation(rows)
    if "sampling" not in skip or "train" not in skip:
        import tensorflow as tf

        report["devices"] = [f"{d.device_type}:{d.name}" for d in tf.config.list_physical_devices()]
    else:
        report["devices"] = "not queried (no TensorFlow bench ran)"
    report.update(rows=rows, seconds=seconds, loadavg_after=list(os.getloadavg()))
    return report


def markdown_report(report: dict[str, Any]) -> str:
    """The table with a header naming the machine, the date, the load and the run's duration."""
    machine = report["machine"]
    packages = ", ".join(f"{k} {v}" for k, v in machine["packages"].items() if v)
    total = sum(report.get("seconds", {}).values())
    load = ", ".join(f"{x:.2f}" for x in machine["loadavg"])
    return (
        f"Benchmarks ({'quick smoke run' if report['quick'] else 'full run'}), "
        f"{machine['date']}: {machine['cpu_model']}, {machine['usable_cores']} usable cores of "
        f"{machine['cpu_count']}; devices: {report.get('devices')}; load average at start "
        f"{load}; {total:.0f} s in all.\n{packages}.\n\n" + markdown_table(report["rows"])
    )


def build_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run (< 3 min)")
    parser.add_argument("--json", dest="json_path", help="write the report to this JSON file")
    parser.add_argument("--markdown", help="write the Markdown table to this file")
    names = [*BENCHES, *(p for parts in PARTS.values() for p in parts)]
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=names,
        metavar="NAME",
        help=f"benches or parts to leave out: {', '.join(names)}",
    )
    parser.add_argument(
        "--peer-python",
        default=sys.executable,
        help="Python of the peer environment (torch + zuko)",
    )
    parser.add_argument(
        "--peer-threads", type=int, default=0, help="torch threads of the peer (default: the cores)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command line: run, print the table, write JSON and Markdown."""
    args = build_parser().parse_args(argv)
    report = run_all(args)
    text = markdown_report(report)
    print("\n" + text)
    if args.json_path:
        write_json(args.json_path, report)
        print(f"wrote {args.json_path}")
    if args.markdown:
        from tfjetflows.atomic import atomic_write_text

        atomic_write_text(args.markdown, text)
        print(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
