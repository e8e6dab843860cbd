"""Full-simulation reference: jets per second of ``tfjf make-data --generator pythia`` on one core.

Runs the real command (Pythia 8 + FastJet + the parametric detector, written to Parquet) in a
subprocess pinned to one core (``os.sched_setaffinity``), for two jet counts. The *marginal*
rate ``(n2 - n1) / (t2 - t1)`` leaves out the start-up (Python, imports, Pythia initialisation of
two instances); the *whole command* rate ``n2 / t2`` includes it. Each is also given per
CPU-second of the child (``getrusage``), which other processes on the core disturb less.
Needs the ``pythia`` extra (``pythia8mc``, ``fastjet``, ``awkward``); without it the rows are
skipped with the reason.

Usage:
    python bench/bench_pythia.py [--jets 50 250] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import Row, machine_info, markdown_table, skipped_row, write_json  # noqa: E402

__all__ = ["main", "pythia_available", "run"]

REPO = Path(__file__).resolve().parent.parent
FULL_JETS = [50, 250]
QUICK_JETS = [16, 64]
_CLI = "from cli.main import main; main()"


def pythia_available() -> tuple[bool, str]:
    """Whether the ``pythia`` extra imports; the reason when it does not."""
    try:
        from tfjetflows.data.pythia import MissingExtraError, require_extra
    except ImportError as err:  # pragma: no cover - the package itself is missing
        return False, f"tfjetflows does not import: {err}"
    try:
        require_extra()
    except MissingExtraError as err:
        return False, str(err)
    return True, ""


def _one_core() -> int:
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    return allowed[0]


def make_data_seconds(
    jets: int, out: Path, core: int | None, generator: str = "pythia"
) -> dict[str, Any]:
    """Run ``tfjf make-data --generator GENERATOR`` for ``jets`` jets; wall and CPU seconds."""

    def pin() -> None:
        if core is not None and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {core})

    command = [sys.executable, "-c", _CLI, "make-data", str(out), "--generator", generator,
               "--jets", str(jets), "--seed", "0"]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, preexec_fn=pin, check=False
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"make-data failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"jets": jets, "wall_s": wall, "cpu_s": cpu}


def run(jet_counts: list[int], core: int | None = None) -> list[Row]:
    """Time two ``make-data`` runs; return the marginal and whole-command rows."""
    name = "full simulation: tfjf make-data --generator pythia, 1 core"
    ok, reason = pythia_available()
    if not ok:
        print(f"pythia: skipped ({reason})", flush=True)
        return [skipped_row(name, reason, "jets/s")]
    core = _one_core() if core is None else core
    small, large = sorted(jet_counts)[:2]
    with tempfile.TemporaryDirectory(prefix="tfjf-bench-pythia-") as tmp:
        runs = [make_data_seconds(n, Path(tmp) / f"n{n}", core) for n in (small, large)]
    a, b = runs
    load = os.getloadavg()[0]
    detail = {"core": core, "runs": runs}
    rows: list[Row] = []
    if b["wall_s"] > a["wall_s"]:
        marginal = (large - small) / (b["wall_s"] - a["wall_s"])
        marginal_cpu = (large - small) / max(b["cpu_s"] - a["cpu_s"], 1e-9)
        rows.append({
            **skipped_row(f"{name} (marginal)", "", "jets/s"),
            "value": marginal,
            "note": f"({large}-{small}) jets / time difference; {marginal_cpu:.2f} per CPU-s",
            "load": load,
            "key": "pythia.marginal",
            "detail": {**detail, "per_cpu_second": marginal_cpu},
        })  # fmt: skip
    rows.append({
        **skipped_row(f"{name} (whole command, {large} jets)", "", "jets/s"),
        "value": large / b["wall_s"],
        "note": f"start-up included; {large / b['cpu_s']:.2f} per CPU-s",
        "load": load,
        "key": "pythia.whole",
        "detail": {**detail, "per_cpu_second": large / b["cpu_s"]},
    })  # fmt: skip
    for row in rows:
        print(f"{row['name']}: {row['value']:.2f} jets/s", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Command line: run, print the table, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jets", type=int, nargs=2, help="the two jet counts")
    parser.add_argument("--quick", action="store_true", help=f"jets {QUICK_JETS}")
    parser.add_argument("--core", type=int, help="the core to pin to (default: the first allowed)")
    parser.add_argument("--json", dest="json_path", help="write rows and machine to this file")
    args = parser.parse_args(argv)
    machine = machine_info()
    rows = run(args.jets or (QUICK_JETS if args.quick else FULL_JETS), args.core)
    print("\n" + markdown_table(rows))
    if args.json_path:
        write_json(args.json_path, {"bench": "pythia", "machine": machine, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
