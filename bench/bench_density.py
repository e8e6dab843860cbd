"""Density benchmark: BNAF and MAF on Gaussian mixtures with a known log-density.

For each dimension (2-D and 8-D by default) a seeded mixture of Gaussians is drawn; BNAF and MAF
(the package's classes, trained with ``model.fit``) are fitted on samples of it, and their test
negative log-likelihood is compared with the true entropy, estimated by Monte Carlo on the same
test set (``-mean log p_true(x_test)``). The gap ``NLL_model - H`` is a paired estimate of
``KL(p_true || p_model) >= 0``; its standard error is reported too. Target: gap < 0.05 nats.

Run (about 40 minutes on two busy CPU cores; the 8-D runs use 400k training points)::

    nice -n 10 python bench/bench_density.py --json bench_density.json
    python bench/bench_density.py --quick          # a fast smoke run
    python bench/bench_density.py --memory         # BNAF memory estimate vs measured peak RSS

Both models see data standardised by a ``Preprocessing`` bijector (free dimensions, mean/std of
the training set), so their log-densities are in data units, like the true one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

# ------------------------------------------------------------------------------- mixtures


def make_mixture(dim: int, components: int, seed: int) -> dict:
    """A seeded Gaussian mixture: weights, means in a box, random full covariances."""
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.full(components, 5.0))
    means = rng.uniform(-3.0, 3.0, size=(components, dim))
    covs = []
    for _ in range(components):
        a = rng.normal(size=(dim, dim)) * rng.uniform(0.2, 0.7) / math.sqrt(dim)
        covs.append(a @ a.T + rng.uniform(0.05, 0.3) * np.eye(dim))
    return {"weights": weights, "means": means, "covs": np.stack(covs)}


def mixture_sample(mixture: dict, n: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``n`` points of the mixture."""
    k = rng.choice(len(mixture["weights"]), size=n, p=mixture["weights"])
    chol = np.linalg.cholesky(mixture["covs"])
    eps = rng.normal(size=(n, mixture["means"].shape[1]))
    return mixture["means"][k] + np.einsum("nij,nj->ni", chol[k], eps)


def mixture_log_prob(mixture: dict, x: np.ndarray) -> np.ndarray:
    """Exact log-density of the mixture at ``x`` [n, dim] (log-sum-exp over components)."""
    dim = x.shape[1]
    terms = []
    for w, mu, cov in zip(mixture["weights"], mixture["means"], mixture["covs"], strict=True):
        chol = np.linalg.cholesky(cov)
        sol = np.linalg.solve(chol, (x - mu).T)
        log_det = 2.0 * np.sum(np.log(np.diag(chol)))
        terms.append(
            math.log(w)
            - 0.5 * np.sum(sol**2, axis=0)
            - 0.5 * log_det
            - 0.5 * dim * math.log(2 * math.pi)
        )
    terms = np.stack(terms)
    top = terms.max(axis=0)
    return top + np.log(np.exp(terms - top).sum(axis=0))


# ---------------------------------------------------------------------------------- models


def preprocessing_config(train: np.ndarray) -> dict:
    """Standardisation of every (free) dimension, as a ``Preprocessing`` config mapping."""
    dim = train.shape[1]
    return {
        "spec": {"lower": [None] * dim, "upper": [None] * dim, "energy_scale": [None] * dim},
        "mean": [float(v) for v in train.mean(axis=0)],
        "std": [float(v) for v in train.std(axis=0)],
    }


def build(kind: str, dim: int, sizes: dict, pre: dict):
    from tfjetflows.flows.bnaf import BNAF
    from tfjetflows.flows.maf import MAF

    if kind == "bnaf":
        return BNAF(event_size=dim, preprocessing=pre, **sizes)
    return MAF(event_size=dim, preprocessing=pre, **sizes)


def train_and_score(kind: str, dim: int, sizes: dict, data: dict, args: argparse.Namespace) -> dict:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(args.seed)
    train, valid, test = data["train"], data["valid"], data["test"]
    model = build(kind, dim, sizes, preprocessing_config(train))
    steps = args.epochs * math.ceil(len(train) / args.batch_size)
    lr = args.lr_bnaf if kind == "bnaf" else args.lr_maf
    schedule = keras.optimizers.schedules.CosineDecay(lr, steps, alpha=0.01)
    model.compile(optimizer=keras.optimizers.Adam(schedule, clipnorm=5.0), jit_compile=args.jit)
    dataset = (
        tf.data.Dataset.from_tensor_slices(train.astype("float32"))
        .shuffle(len(train), seed=args.seed)
        .batch(args.batch_size)
        .prefetch(2)
    )
    log_prob = tf.function(lambda x: model.log_prob(x), jit_compile=args.jit)

    def nll(x: np.ndarray) -> np.ndarray:
        out = [
            log_prob(tf.constant(x[i : i + 4096], tf.float32)).numpy()
            for i in range(0, len(x), 4096)
        ]
        return -np.concatenate(out).astype(np.float64)

    best = {"valid": math.inf, "weights": None, "epoch": 0}

    class KeepBest(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            value = float(nll(valid).mean())
            if args.verbose:
                print(f"  {kind} D={dim} epoch {epoch + 1}: validation NLL {value:.4f}", flush=True)
            if value < best["valid"]:
                best.update(valid=value, weights=model.get_weights(), epoch=epoch + 1)

    start = time.perf_counter()
    history = model.fit(dataset, epochs=args.epochs, verbose=0, callbacks=[KeepBest()])
    seconds = time.perf_counter() - start
    if best["weights"] is not None:
        model.set_weights(best["weights"])
    model_nll = nll(test)
    gap = model_nll - data["test_true_nll"]
    return {
        "model": kind,
        "dim": dim,
        "sizes": sizes,
        "parameters": int(model.count_params()),
        "train_points": len(train),
        "epochs": args.epochs,
        "learning_rate": lr,
        "best_epoch": best["epoch"],
        "train_seconds": round(seconds, 1),
        "train_loss_last_epoch": float(history.history["loss"][-1]),
        "validation_nll": best["valid"],
        "test_nll": float(model_nll.mean()),
        "entropy": float(data["test_true_nll"].mean()),
        "entropy_se": float(data["test_true_nll"].std() / math.sqrt(len(test))),
        "gap": float(gap.mean()),
        "gap_se": float(gap.std() / math.sqrt(len(test))),
        "finite": bool(np.all(np.isfinite(model_nll))),
    }


SIZES = {
    2: {
        "bnaf": {"flows": 3, "layers": 2, "hidden_factor": 32},
        "maf": {"blocks": 8, "hidden_units": [128, 128]},
    },
    8: {
        "bnaf": {"flows": 5, "layers": 1, "hidden_factor": 32},
        "maf": {"blocks": 5, "hidden_units": [128, 128]},
    },
}
COMPONENTS = {2: 6, 8: 6}
#: Training points per dimension (``--train`` overrides): 8-D needs more data to come within
#: 0.05 nats (with 200k points BNAF's gap was 0.067-0.079, MAF's 0.048).
TRAIN = {2: 200_000, 8: 400_000}


def run_density(args: argparse.Namespace) -> list[dict]:
    rows = []
    for dim in args.dims:
        mixture = make_mixture(dim, COMPONENTS.get(dim, 6), seed=args.seed + dim)
        rng = np.random.default_rng(args.seed + 100 + dim)
        data = {
            "train": mixture_sample(mixture, args.train or TRAIN.get(dim, 400_000), rng),
            "valid": mixture_sample(mixture, args.test // 2, rng),
            "test": mixture_sample(mixture, args.test, rng),
        }
        data["test_true_nll"] = -mixture_log_prob(mixture, data["test"])
        for kind in args.models:
            sizes = {**SIZES.get(dim, SIZES[8])[kind], **args.sizes.get(kind, {})}
            row = train_and_score(kind, dim, sizes, data, args)
            rows.append(row)
            print(
                f"{kind:5s} D={dim:2d}  test NLL {row['test_nll']:8.4f}  entropy "
                f"{row['entropy']:8.4f}  gap {row['gap']:+.4f} ± {row['gap_se']:.4f}  "
                f"({row['train_seconds']:.0f} s, best epoch {row['best_epoch']}/{args.epochs})",
                flush=True,
            )
    return rows


# ---------------------------------------------------------------------------------- memory

_MEMORY_CHILD = """
import os, resource, sys, json
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import numpy as np
from tfjetflows.flows.bnaf import BNAF, bnaf_memory_bytes
d, h, l, f = map(int, sys.argv[1:5])
x = np.random.default_rng(0).normal(size=(768, d)).astype("float32")
warm = BNAF(event_size=2, flows=1, layers=1, hidden_factor=2)
warm.compile(optimizer="adam")
warm.fit(x[:, :2], batch_size=256, epochs=1, verbose=0)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
model = BNAF(event_size=d, flows=f, layers=l, hidden_factor=h)
model.compile(optimizer="adam")
model.fit(x, batch_size=256, epochs=2, verbose=0)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"measured": peak - base, "estimate": bnaf_memory_bytes(d, h, l, f)}))
"""


def run_memory() -> list[dict]:
    """Peak RSS of ``model.fit`` (batch 256, Adam) above a warmed-up baseline vs the estimate."""
    rows = []
    for d, h, layers, flows in [(200, 10, 2, 2), (300, 10, 2, 2), (400, 10, 2, 2), (600, 4, 1, 3)]:
        out = subprocess.run(
            [sys.executable, "-c", _MEMORY_CHILD, str(d), str(h), str(layers), str(flows)],
            capture_output=True,
            text=True,
            check=True,
        )
        row = {"event_size": d, "hidden_factor": h, "layers": layers, "flows": flows}
        row.update(json.loads(out.stdout.strip().splitlines()[-1]))
        rows.append(row)
        print(
            f"D={d} factor={h} layers={layers} flows={flows}: measured "
            f"{row['measured'] / 2**20:.0f} MiB, estimate {row['estimate'] / 2**20:.0f} MiB",
            flush=True,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--models", nargs="+", default=["bnaf", "maf"], choices=["bnaf", "maf"])
    parser.add_argument("--train", type=int, help="training points (default: 200k 2-D, 400k 8-D)")
    parser.add_argument("--test", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr-bnaf", type=float, default=3e-2, help="BNAF peak learning rate")
    parser.add_argument("--lr-maf", type=float, default=2e-3, help="MAF peak learning rate")
    parser.add_argument(
        "--sizes", type=json.loads, default={}, help='overrides, e.g. \'{"bnaf": {"flows": 3}}\''
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jit", action="store_true", help="XLA-compile training steps")
    parser.add_argument("--verbose", action="store_true", help="validation NLL every epoch")
    parser.add_argument("--quick", action="store_true", help="small data, few epochs (smoke run)")
    parser.add_argument("--memory", action="store_true", help="BNAF memory estimate vs measured")
    parser.add_argument("--json", help="write the results to this JSON file")
    args = parser.parse_args()
    if args.quick:
        args.train, args.test, args.epochs = 4000, 2000, 3
    start = time.perf_counter()
    if args.memory:
        result = {"memory": run_memory()}
    else:
        result = {"density": run_density(args), "args": vars(args)}
        print("\n| model | D | params | test NLL | entropy (MC) | gap (nats) | ± se | s |")
        print("|---|---|---|---|---|---|---|---|")
        for r in result["density"]:
            print(
                f"| {r['model']} | {r['dim']} | {r['parameters']} | {r['test_nll']:.4f} | "
                f"{r['entropy']:.4f} ± {r['entropy_se']:.4f} | {r['gap']:+.4f} | "
                f"{r['gap_se']:.4f} | {r['train_seconds']:.0f} |"
            )
    result["seconds"] = round(time.perf_counter() - start, 1)
    result["max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
