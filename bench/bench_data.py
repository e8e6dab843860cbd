"""Throughput of the data path: read, read + select, read + select + encode, in jets per second.

Generates (or reuses, ``--data DIR``) synthetic jets in the public layout (one row per row group)
and times full passes over them with the default config's selection and representation
(``configs/maf_hits.yaml``), for several reader batch sizes, plus one epoch of the training
pipeline (:func:`tfjetflows.data.pipeline.iter_encoded`) for the same training batch sizes.
Runs on the current process only; pin it to one core with ``taskset -c 0`` (see README.md).

Usage:
    taskset -c 0 python bench/bench_data.py [--jets 4000] [--data DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tfjetflows.config import load_config
from tfjetflows.data.generate import make_data
from tfjetflows.data.pipeline import iter_encoded, scan_split
from tfjetflows.data.reader import iter_jet_batches, resolve_paths
from tfjetflows.data.selection import SelectionStats, iter_selected
from tfjetflows.training.fit import build_representation

BATCH_SIZES = (64, 128, 256)
STAGES = ("read", "read+select", "read+select+encode", "pipeline epoch")


def _scalars(batch) -> dict[str, np.ndarray]:
    return {"pt": batch.pt, "m0": batch.m0, "y": batch.y}


def stage_pass(stage: str, paths, config, representation, batch_size: int) -> Callable[[], int]:
    """Return a function doing one full pass of ``stage``; it returns the jets it read."""
    selection, data = config.selection, config.data

    def read() -> int:
        return sum(len(b) for b in iter_jet_batches(paths, batch_size=batch_size))

    def read_select() -> int:
        stats = SelectionStats()
        for _ in iter_selected(paths, selection, batch_size=batch_size, stats=stats):
            pass
        return stats.scanned

    def read_select_encode() -> int:
        stats = SelectionStats()
        rng = np.random.default_rng(0)
        for b in iter_selected(paths, selection, batch_size=batch_size, stats=stats):
            representation.encode(b.images, _scalars(b), rng)
        return stats.scanned

    split = scan_split(paths, selection, representation, data, config.seed, sample_size=1)

    def pipeline_epoch() -> int:
        # the reader batch is the pipeline's (256); batch_size is the training batch here
        for _ in iter_encoded(
            split, selection, representation, data, config.seed, list(data.conditions),
            epoch=0, batch_size=batch_size,
        ):
            pass
        return split.train  # jets of one training epoch (validation jets are read, not used)

    return {
        "read": read,
        "read+select": read_select,
        "read+select+encode": read_select_encode,
        "pipeline epoch": pipeline_epoch,
    }[stage]


def measure(run: Callable[[], int], repeats: int) -> dict[str, float]:
    """Jets/s over ``repeats`` full passes (one warm-up pass first).

    ``best`` and ``median`` are wall-clock rates; ``cpu`` is jets per CPU-second of this
    process (all its threads), best of the passes: on a shared core it is the figure that
    other processes disturb least.
    """
    run()
    rates, cpu_rates = [], []
    jets = 0
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        jets = run()
        rates.append(jets / (time.perf_counter() - start))
        cpu_rates.append(jets / (time.process_time() - cpu_start))
    return {
        "jets": jets,
        "best": max(rates),
        "median": float(np.median(rates)),
        "cpu": max(cpu_rates),
    }


def profile(run: Callable[[], int], top: int) -> str:
    """cProfile one pass of ``run``; return the ``top`` entries by internal time."""
    profiler = cProfile.Profile()
    profiler.runcall(run)
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def _data_files(args: argparse.Namespace, scratch: Path) -> list[Path]:
    folder = Path(args.data) if args.data else scratch
    existing = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    if existing:
        print(f"reusing {len(existing)} files in {folder}")
        return resolve_paths([folder])
    start = time.perf_counter()
    paths = make_data(folder, jets=args.jets, seed=args.seed, files=args.files, row_group_size=1)
    print(f"generated {args.jets} jets in {len(paths)} files in {folder} "
          f"({time.perf_counter() - start:.1f} s)")
    return paths


def _machine() -> dict[str, object]:
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    import pyarrow

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pyarrow": pyarrow.__version__,
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "loadavg": list(os.getloadavg()),
        "processor": platform.processor() or platform.machine(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jets", type=int, default=4000, help="jets to generate")
    parser.add_argument("--files", type=int, default=4, help="files to generate")
    parser.add_argument("--seed", type=int, default=0, help="generator seed")
    parser.add_argument("--data", help="folder of Parquet files to reuse (generated if empty)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per measurement")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(BATCH_SIZES))
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--json", dest="json_path", help="write the figures to this JSON file")
    parser.add_argument("--profile", action="store_true",
                        help="also cProfile read+select+encode at the largest batch size")
    args = parser.parse_args(argv)

    config = load_config()
    representation = build_representation(config)
    with tempfile.TemporaryDirectory(prefix="tfjf-bench-") as scratch:
        paths = _data_files(args, Path(scratch))
        machine = _machine()
        print(f"cpus allowed: {machine['cpu_affinity']}   load average: "
              f"{' '.join(f'{x:.2f}' for x in machine['loadavg'])}")
        print(f"representation: {representation!r} (dim {representation.dim})")
        results = []
        header = f"{'stage':<20}" + "".join(f"{f'batch {b}':>22}" for b in args.batch_sizes)
        print(f"\njets/s: wall best of {args.repeats} (wall median) [per CPU-second]\n{header}")
        for stage in args.stages:
            cells = []
            for batch_size in args.batch_sizes:
                run = stage_pass(stage, paths, config, representation, batch_size)
                figures = measure(run, args.repeats)
                results.append({"stage": stage, "batch_size": batch_size, **figures})
                cells.append(
                f"{figures['best']:>6.0f} ({figures['median']:>5.0f}) [{figures['cpu']:>5.0f}]"
            )
            print(f"{stage:<20}" + "".join(f"{c:>22}" for c in cells))
        report: dict[str, object] = {
            "jets": sum(int(r["jets"]) for r in results[:1]),
            "files": [str(p) for p in paths],
            "selection": vars(config.selection),
            "representation": representation.get_config(),
            "machine": machine,
            "loadavg_after": list(os.getloadavg()),
            "results": results,
        }
        if args.profile:
            run = stage_pass(
                "read+select+encode", paths, config, representation, max(args.batch_sizes)
            )
            text = profile(run, 25)
            print(f"\ncProfile of read+select+encode (batch {max(args.batch_sizes)}):\n{text}")
            report["profile"] = text
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
