"""Training steps per second on one device and mirrored over two logical CPU devices.

Splits the CPU into ``max(--devices)`` logical devices (before TensorFlow starts) and trains the
same MAF with the same global batch, seed and data under TensorFlow's default strategy (one
device) and under ``MirroredStrategy`` over N of the logical devices. The logical devices share
the same cores, so expect no speed-up on CPU (the point is correctness: the losses and final
weights are compared with the first configuration's and should agree to rounding, ~1e-11 in
the weights with ``--float64``; on GPUs the same code mirrors over real devices). Each
configuration trains ``--epochs`` epochs of ``--steps`` steps, with ``clipnorm=5`` as ``tfjf
fit`` does; the first epoch (tracing, warm-up) is not timed.

Usage:
    python bench/bench_distribute.py [--devices 1 2] [--steps 30] [--float64] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _machine() -> dict[str, object]:
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    import keras
    import tensorflow as tf

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "loadavg": list(os.getloadavg()),
        "processor": platform.processor() or platform.machine(),
    }


def measure(devices: int, args: argparse.Namespace, data: np.ndarray) -> dict[str, object]:
    """Train on ``devices`` logical devices; return steps/s per timed epoch and the losses."""
    import keras
    import tensorflow as tf

    from tfjetflows.flows.maf import MAF
    from tfjetflows.training.distribute import clip_global_gradient

    if devices == 1:
        strategy = tf.distribute.get_strategy()
    else:
        names = [d.name for d in tf.config.list_logical_devices("CPU")][:devices]
        strategy = tf.distribute.MirroredStrategy(names)
    keras.utils.set_random_seed(args.seed)
    with strategy.scope():
        model = MAF(event_size=args.dim, blocks=args.blocks, hidden_units=args.hidden)
        optimizer = keras.optimizers.Adam(args.learning_rate, clipnorm=5.0)  # as training does
        if devices > 1:
            clip_global_gradient(optimizer)
        model.compile(optimizer=optimizer)
    batches = (
        tf.data.Dataset.from_tensor_slices(data)
        .batch(args.batch_size, drop_remainder=True)
        .repeat()
        .prefetch(tf.data.AUTOTUNE)
    )
    starts: list[float] = []
    ends: list[float] = []
    timer = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: starts.append(time.perf_counter()),
        on_epoch_end=lambda epoch, logs: ends.append(time.perf_counter()),
    )
    cpu_start = time.process_time()
    history = model.fit(
        batches,
        epochs=args.epochs,
        steps_per_epoch=args.steps,
        callbacks=[timer],
        verbose=0,
        shuffle=False,
    )
    cpu_seconds = time.process_time() - cpu_start
    rates = [args.steps / (end - start) for start, end in zip(starts[1:], ends[1:], strict=True)]
    return {
        "devices": devices,
        "strategy": type(strategy).__name__,
        "replicas": strategy.num_replicas_in_sync,
        "steps_per_s_best": max(rates),
        "steps_per_s_median": float(np.median(rates)),
        "jets_per_s_best": max(rates) * args.batch_size,
        "first_epoch_s": ends[0] - starts[0],
        "cpu_seconds": cpu_seconds,
        "losses": [float(v) for v in history.history["loss"]],
        "weights": [np.asarray(w, np.float64) for w in model.weights],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--devices",
        type=int,
        nargs="+",
        default=[1, 2],
        help="logical device counts to compare (1: the default strategy)",
    )
    parser.add_argument("--dim", type=int, default=64, help="event size D")
    parser.add_argument("--blocks", type=int, default=5, help="MADE blocks")
    parser.add_argument(
        "--hidden", type=int, nargs="+", default=[256, 256], help="MADE hidden units"
    )
    parser.add_argument("--batch-size", type=int, default=256, help="global batch")
    parser.add_argument("--steps", type=int, default=30, help="steps per epoch")
    parser.add_argument("--epochs", type=int, default=3, help="epochs (the first is not timed)")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--float64",
        action="store_true",
        help="train in float64: the weights then agree to ~1e-11, showing that the float32 "
        "differences are rounding (the losses are reported in float32 either way)",
    )
    parser.add_argument("--json", dest="json_path", help="write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first is not timed)")
    if any(args.batch_size % n for n in args.devices):
        parser.error("--batch-size must be a multiple of every --devices count")

    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(max(args.devices))]
    )
    if args.float64:
        import keras

        keras.config.set_floatx("float64")
        keras.config.set_dtype_policy("float64")
    machine = _machine()
    print(
        f"cpus allowed: {machine['cpu_affinity']}   load average: "
        f"{' '.join(f'{x:.2f}' for x in machine['loadavg'])}"
    )
    print(
        f"MAF D={args.dim}, {args.blocks} blocks of {args.hidden}, "
        f"{'float64' if args.float64 else 'float32'}, global batch "
        f"{args.batch_size}, {args.steps} steps x {args.epochs - 1} timed epochs\n"
    )
    rng = np.random.default_rng(args.seed)
    mixing = rng.normal(size=(args.dim, args.dim)) / np.sqrt(args.dim)
    data = rng.normal(size=(args.batch_size * args.steps, args.dim)) @ mixing
    data = data.astype(np.float64 if args.float64 else np.float32)

    results = [measure(n, args, data) for n in args.devices]
    reference = np.array(results[0]["losses"])
    reference_weights = results[0]["weights"]
    print(
        f"{'devices':>7} {'strategy':>22} {'steps/s best':>13} {'(median)':>9} "
        f"{'jets/s':>8} {'1st epoch s':>12} {'loss rel. diff':>15} {'weight diff':>12}"
    )
    for r in results:
        r["max_rel_loss_diff_vs_first"] = float(
            np.max(np.abs(np.array(r["losses"]) - reference) / np.abs(reference))
        )
        r["max_abs_weight_diff_vs_first"] = max(
            float(np.max(np.abs(a - b)))
            for a, b in zip(r.pop("weights"), reference_weights, strict=True)
        )
        print(
            f"{r['devices']:>7} {r['strategy']:>22} {r['steps_per_s_best']:>13.2f} "
            f"{r['steps_per_s_median']:>9.2f} {r['jets_per_s_best']:>8.0f} "
            f"{r['first_epoch_s']:>12.1f} {r['max_rel_loss_diff_vs_first']:>15.2e} "
            f"{r['max_abs_weight_diff_vs_first']:>12.2e}"
        )
    print("\nlosses per epoch:")
    for r in results:
        print(f"  {r['devices']} device(s): " + ", ".join(f"{v:.6f}" for v in r["losses"]))
    report = {
        "config": {k: v for k, v in vars(args).items() if k != "json_path"},
        "machine": machine,
        "loadavg_after": list(os.getloadavg()),
        "results": results,
    }
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
