"""Peer benchmark: the default MAF architecture in zuko (PyTorch, CPU); prints one JSON object.

zuko's ``MAF(features=D, transforms=5, hidden_features=(256, 256))`` (affine MADE transforms,
feature order reversed between transforms, standard normal base) is the same architecture as
``configs/maf_hits.yaml``'s MAF except that ours has a batch-norm bijector between blocks and a
soft clamp of the log-scale. Training: Adam (lr 1e-3), mean negative log-likelihood, batch 256,
on standard-normal data or on the vectors of a ``.npy`` file (``--data D=PATH``). Sampling:
``flow().sample((n,))`` under ``torch.no_grad()``.

Runs in its own process (``run_all.py`` starts it with ``subprocess``), so torch's and
TensorFlow's thread pools do not compete; torch uses as many threads as the process has cores,
with ``OMP_WAIT_POLICY=PASSIVE`` unless the environment sets it (``--omp-wait-policy ''`` keeps
OpenMP's default): with spinning OpenMP threads, a machine busy with other work (load 2.5-3 on
2 cores) slowed zuko 15-20 times and made its figures jump between calls (D = 16: 3.3 steps/s,
range 2.9-63, against 50, range 49-51, passive; D = 807 sampling: 0.15 against 1.7 jets/s).
torch and zuko live in the optional bench environment (``bench/requirements-peers.txt``), never
in the package's dependencies. Without them the script prints
``{"available": false, "reason": ...}`` and exits 0. ``TFJF_BENCH_HIDE=torch,zuko`` makes it
behave as if those modules were absent (for tests).

Usage:
    python bench/peer_zuko.py [--train-dims 16 256 807] [--sample-dims 807] [--sample-n 1000]
        [--data 807=vectors.npy] [--steps 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import machine_info, time_calls, usable_cores  # noqa: E402

__all__ = ["load_peer", "main"]

HIDE_ENV = "TFJF_BENCH_HIDE"


def load_peer(
    importer: Callable[[str], ModuleType] = importlib.import_module,
) -> tuple[dict[str, ModuleType] | None, str]:
    """Import torch and zuko; return ``(modules, "")`` or ``(None, reason)`` if one is missing.

    Modules named in the ``TFJF_BENCH_HIDE`` environment variable (comma-separated) are treated
    as not installed.
    """
    hidden = {name.strip() for name in os.environ.get(HIDE_ENV, "").split(",") if name.strip()}
    modules = {}
    for name in ("torch", "zuko"):
        try:
            if name in hidden:
                raise ImportError(f"No module named {name!r} (hidden by {HIDE_ENV})")
            modules[name] = importer(name)
        except ImportError as err:
            return None, (
                f"{name} is not installed ({err}); the peer needs the optional bench "
                "environment: pip install -r bench/requirements-peers.txt"
            )
    return modules, ""


def _flow(zuko: ModuleType, dim: int, args: argparse.Namespace) -> Any:
    return zuko.flows.MAF(
        features=dim, context=0, transforms=args.blocks, hidden_features=tuple(args.hidden)
    )


def _data(np_module: Any, dim: int, paths: dict[int, str]) -> tuple[Any, str]:
    if dim in paths:
        x = np_module.load(paths[dim], allow_pickle=False).astype("float32")
        if x.ndim != 2 or x.shape[1] != dim:
            raise SystemExit(f"--data {dim}={paths[dim]}: expected [N, {dim}], got {x.shape}")
        return x, f"vectors from {paths[dim]} ({len(x)} rows)"
    rng = np_module.random.default_rng(0)
    return rng.standard_normal((8192, dim)).astype("float32"), "standard normal (8192 rows)"


def bench_train(mods: dict[str, ModuleType], dim: int, args: argparse.Namespace) -> dict:
    """Training steps/s: ``--steps`` Adam steps per timed call, after ``--warmup-steps``."""
    import numpy as np

    torch, zuko = mods["torch"], mods["zuko"]
    torch.manual_seed(0)
    flow = _flow(zuko, dim, args)
    optimizer = torch.optim.Adam(flow.parameters(), lr=args.lr)
    data, source = _data(np, dim, args.data)
    x_all = torch.from_numpy(data)
    generator = torch.Generator().manual_seed(0)
    losses: list[float] = []

    def step() -> None:
        index = torch.randint(0, len(x_all), (args.batch_size,), generator=generator)
        loss = -flow().log_prob(x_all[index]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))

    for _ in range(args.warmup_steps):
        step()

    def steps() -> None:
        for _ in range(args.steps):
            step()

    timing = time_calls(steps, args.repeats, warmup=0)
    return {
        "dim": dim,
        "batch_size": args.batch_size,
        "steps_per_call": args.steps,
        "steps_per_s": args.steps / timing["median_s"],
        "spread": [args.steps / timing["max_s"], args.steps / timing["min_s"]],
        "parameters": sum(p.numel() for p in flow.parameters()),
        "data": source,
        "last_loss": losses[-1] if losses else None,
        "loadavg": list(os.getloadavg()),
        **timing,
    }


def bench_sample(mods: dict[str, ModuleType], dim: int, n: int, args: argparse.Namespace) -> dict:
    """Sampling jets/s of a freshly built flow (speed does not depend on the weights)."""
    torch, zuko = mods["torch"], mods["zuko"]
    torch.manual_seed(0)
    flow = _flow(zuko, dim, args)

    def draw() -> None:
        with torch.no_grad():
            flow().sample((n,))

    timing = time_calls(draw, args.sample_repeats, warmup=args.sample_warmup)
    return {
        "dim": dim,
        "n": n,
        "jets_per_s": n / timing["median_s"],
        "spread": [n / timing["max_s"], n / timing["min_s"]],
        "loadavg": list(os.getloadavg()),
        **timing,
    }


def _parse_data(items: list[str]) -> dict[int, str]:
    out = {}
    for item in items:
        dim, _, path = item.partition("=")
        if not path:
            raise SystemExit(f"--data expects DIM=PATH, got {item!r}")
        out[int(dim)] = path
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the peer benches and print the JSON report on stdout (progress goes to stderr)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-dims", type=int, nargs="*", default=[16, 256, 807])
    parser.add_argument("--sample-dims", type=int, nargs="*", default=[807])
    parser.add_argument("--sample-n", type=int, nargs="+", default=[1000])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20, help="training steps per timed call")
    parser.add_argument("--warmup-steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls of --steps steps")
    parser.add_argument("--sample-repeats", type=int, default=2)
    parser.add_argument("--sample-warmup", type=int, default=1, help="untimed sampling calls")
    parser.add_argument("--blocks", type=int, default=5)
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: the cores)")
    parser.add_argument("--data", nargs="*", default=[], help="DIM=PATH.npy training vectors")
    parser.add_argument(
        "--omp-wait-policy",
        default="PASSIVE",
        help="OMP_WAIT_POLICY for torch's OpenMP threads unless the environment sets one "
        "('' leaves OpenMP's default)",
    )
    args = parser.parse_args(argv)
    args.data = _parse_data(args.data)
    if args.omp_wait_policy:
        # read by OpenMP when torch loads: must be set before the import
        os.environ.setdefault("OMP_WAIT_POLICY", args.omp_wait_policy)

    report: dict[str, Any] = {"peer": "zuko", "machine": machine_info()}
    mods, reason = load_peer()
    if mods is None:
        report.update(available=False, reason=reason)
        print(json.dumps(report))
        return 0
    torch = mods["torch"]
    threads = args.threads or usable_cores()
    torch.set_num_threads(threads)
    report.update(
        available=True,
        torch=torch.__version__,
        zuko=getattr(mods["zuko"], "__version__", None),
        threads=torch.get_num_threads(),
        omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"),
        architecture={"transforms": args.blocks, "hidden_features": args.hidden, "lr": args.lr},
        train=[],
        sample=[],
    )
    start = time.perf_counter()
    for dim in args.train_dims:
        row = bench_train(mods, dim, args)
        report["train"].append(row)
        print(f"zuko train D={dim}: {row['steps_per_s']:.1f} steps/s", file=sys.stderr, flush=True)
    for dim in args.sample_dims:
        for n in args.sample_n:
            row = bench_sample(mods, dim, n, args)
            report["sample"].append(row)
            print(
                f"zuko sample D={dim} n={n}: {row['jets_per_s']:.1f} jets/s",
                file=sys.stderr,
                flush=True,
            )
    report["seconds"] = time.perf_counter() - start
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
