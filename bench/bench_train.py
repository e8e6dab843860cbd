"""Training speed of the default MAF: Keras ``model.fit`` steps per second.

Three measurements, all with the architecture of ``configs/maf_hits.yaml`` (5 MADE blocks of
[256, 256], batch norm between blocks, batch 256, Adam with cosine decay from 1e-3 and clipnorm 5,
compiled as ``tfjetflows.training.fit`` compiles it):

``pipeline``
    ``tfjf fit``'s training path without the run folder: the built-in jets (or ``--data``),
    ``scan_split``, the fitted preprocessing, ``build_flow``, ``build_datasets`` (Parquet read,
    selection, hits encoding, shuffle buffer, prefetch) and ``model.fit`` on the training
    dataset. One warm-up epoch (tracing), then ``--epochs`` timed epochs: steps/s per epoch.
``in-memory``
    The same model fed from a tensor in memory (no input pipeline, no preprocessing bijector), at
    D = 16 and 256 (standard-normal data) and D = 807 (the encoded training jets of the pipeline
    run mapped through the preprocessing to standardised vectors, when the pipeline ran;
    standard normal otherwise): the figure to set beside a peer library fed the same way
    (``peer_zuko.py``, which ``run_all.py`` gives the same vectors through ``--export-vectors``).
``fit``
    ``tfjetflows.training.fit.fit`` itself (run folder, callbacks, evaluation, export) with
    ``training.epochs=2`` and ``training.evaluation_samples=0``; its steps/s come from
    ``result.metrics["training_speed"]["steps_per_second"]`` when ``fit`` reports it (otherwise the
    row says so and only the whole call's wall time is recorded). Off with ``--quick``.

The built-in jets are generated into ``$TFJF_CACHE`` on first use (about 15 s).

Usage:
    python bench/bench_train.py [--quick] [--json out.json] [--export-vectors z807.npy]
        [--skip pipeline in-memory fit] [--dims 16 256 807]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (  # noqa: E402
    Row,
    machine_info,
    markdown_table,
    rate_row,
    skipped_row,
    write_json,
)

__all__ = ["PARTS", "build_parser", "main", "run"]

PARTS = ("pipeline", "in-memory", "fit")
REPO = Path(__file__).resolve().parent.parent
FULL = {
    "epochs": 3,
    "steps": {16: 60, 256: 40, 807: 30},
    "quick_jets": None,
    "dims": [16, 256, 807],
}
QUICK = {"epochs": 2, "steps": {16: 10, 256: 5, 807: 4}, "quick_jets": 800, "dims": [16, 807]}


class EpochTimer:
    """Keras callback factory: wall time of every epoch (``seconds``)."""

    @staticmethod
    def make() -> Any:
        """Return a new ``keras.callbacks.Callback`` recording epoch wall times."""
        import keras

        class _Timer(keras.callbacks.Callback):
            def __init__(self) -> None:
                super().__init__()
                self.seconds: list[float] = []
                self._start = 0.0

            def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
                self._start = time.perf_counter()

            def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
                self.seconds.append(time.perf_counter() - self._start)

        return _Timer()


def _compile(model: Any, config: Any, total_steps: int) -> None:
    """Compile ``model`` as ``tfjetflows.training.fit`` does for ``config``."""
    import keras

    training = config.training
    rate: Any = training.learning_rate
    if training.lr_schedule == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(rate, decay_steps=max(total_steps, 1))
    optimizer = keras.optimizers.Adam(
        learning_rate=rate, clipnorm=training.clipnorm, amsgrad=training.amsgrad
    )
    model.compile(
        optimizer=optimizer,
        jit_compile=training.jit_compile,
        steps_per_execution=training.steps_per_execution,
    )


def _timed_fit(model: Any, dataset: Any, steps: int, epochs: int) -> dict[str, Any]:
    """``model.fit`` one warm-up epoch then ``epochs`` timed ones of ``steps`` steps."""
    timer = EpochTimer.make()
    history = model.fit(
        dataset,
        epochs=epochs + 1,
        steps_per_epoch=steps,
        callbacks=[timer],
        verbose=0,
        shuffle=False,
    )
    timed = timer.seconds[1:]
    return {
        "seconds": timed,
        "median_s": statistics.median(timed),
        "min_s": min(timed),
        "max_s": max(timed),
        "first_s": timer.seconds[0],
        "last_loss": float(history.history["loss"][-1]),
    }


def _load_config(overrides: list[str]) -> Any:
    from tfjetflows.config import load_config

    return load_config(REPO / "configs" / "maf_hits.yaml", overrides)


def _model_for(config: Any, dim: int, preprocessing: Any) -> Any:
    from tfjetflows.training.fit import build_flow

    return build_flow(config, event_size=dim, context_size=0, preprocessing=preprocessing)


def bench_pipeline(config: Any, epochs: int, export_vectors: str | None) -> tuple[Row, Any]:
    """Steps/s of ``model.fit`` on the real input pipeline; also return standardised vectors."""
    import keras
    import numpy as np

    from tfjetflows.data.pipeline import build_datasets, scan_split
    from tfjetflows.data.preprocessing import fit_preprocessing
    from tfjetflows.training.fit import build_representation, resolve_data

    keras.utils.set_random_seed(config.seed)
    start = time.perf_counter()
    paths = resolve_data(config.data.files)
    representation = build_representation(config)
    split = scan_split(paths, config.selection, representation, config.data, config.seed)
    scan_s = time.perf_counter() - start
    preprocessing = fit_preprocessing(representation, split.sample)
    model = _model_for(config, representation.dim, preprocessing.get_config())
    datasets = build_datasets(
        paths, config.selection, representation, config.data, config.seed, split=split
    )
    _compile(model, config, (epochs + 1) * datasets.train_steps)
    model(split.sample[:2])
    train = datasets.train.map(lambda batch: batch["x"])
    timing = _timed_fit(model, train, datasets.train_steps, epochs)
    dim = representation.dim
    row = rate_row(
        f"train keras fit pipeline D={dim}",
        datasets.train_steps,
        timing,
        "steps/s",
        key=f"keras.pipeline.D{dim}",
        peer_key=f"zuko.train.D{dim}",
        note="Parquet read+select+encode in the loop; peer fed from memory",
    )
    row["detail"].update(
        files=len(paths),
        train_jets=split.train,
        batch_size=config.data.batch_size,
        scan_seconds=scan_s,
        jets_per_s=datasets.train_steps * config.data.batch_size / timing["median_s"],
    )
    print(f"{row['name']}: {row['value']:.1f} steps/s", flush=True)
    z = preprocessing.inverse(split.sample.astype("float32")).numpy().astype("float32")
    if export_vectors:
        np.save(export_vectors, z, allow_pickle=False)
        row["detail"]["exported_vectors"] = export_vectors
    return row, z


def bench_in_memory(config: Any, dim: int, data: Any, source: str, steps: int, epochs: int) -> Row:
    """Steps/s of ``model.fit`` fed from memory (no preprocessing) at dimension ``dim``."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(config.seed)
    model = _model_for(config, dim, None)
    _compile(model, config, (epochs + 1) * steps)
    model(data[:2])
    batch = config.data.batch_size
    dataset = (
        tf.data.Dataset.from_tensor_slices(data)
        .repeat()
        .shuffle(4096, seed=0)
        .batch(batch, drop_remainder=True)
        .prefetch(2)
    )
    timing = _timed_fit(model, dataset, steps, epochs)
    row = rate_row(
        f"train keras in-memory D={dim}",
        steps,
        timing,
        "steps/s",
        key=f"keras.in_memory.D{dim}",
        peer_key=f"zuko.train.D{dim}",
        note=f"data: {source}",
    )
    row["detail"].update(batch_size=batch, parameters=int(model.count_params()))
    print(f"{row['name']}: {row['value']:.1f} steps/s ({source})", flush=True)
    return row


def bench_fit(overrides: list[str]) -> Row:
    """Run ``tfjetflows.training.fit.fit`` for 2 epochs; its reported training speed."""
    from tfjetflows.training.fit import fit

    config = _load_config(
        ["training.epochs=2", "training.evaluation_samples=0", "wandb.enabled=false", *overrides]
    )
    name = "train tfjf fit() D=807"
    with tempfile.TemporaryDirectory(prefix="tfjf-bench-fit-") as tmp:
        start = time.perf_counter()
        try:
            result = fit(config, run_dir=Path(tmp) / "run", saved_models_dir=None, verbose=0)
        except Exception as err:  # noqa: BLE001 - a failing fit() is reported, not fatal
            print(f"{name}: fit() failed: {type(err).__name__}: {err}", flush=True)
            return skipped_row(name, f"fit() failed: {type(err).__name__}: {err}"[:300])
        wall = time.perf_counter() - start
    speed = result.metrics.get("training_speed")
    if not speed or speed.get("steps_per_second") is None:
        row = skipped_row(name, "this version of fit() reports no training_speed", "steps/s")
    else:
        value = float(speed["steps_per_second"])
        row = {
            **skipped_row(name, "", "steps/s"),
            "value": value,
            "note": "from FitResult.metrics['training_speed']",
            "peer_key": "zuko.train.D807",
            "key": "keras.fit.D807",
        }
    row["detail"] = {"fit_wall_seconds": wall, "training_speed": speed, "overrides": overrides}
    print(f"{name}: {row['value']} steps/s (fit() took {wall:.0f} s)", flush=True)
    return row


def run(args: argparse.Namespace) -> list[Row]:
    """Run the training benches of ``args``; return the rows."""
    import numpy as np

    sizes = QUICK if args.quick else FULL
    epochs = args.epochs or sizes["epochs"]
    overrides = list(args.set)
    rows: list[Row] = []
    z = None
    with tempfile.TemporaryDirectory(prefix="tfjf-bench-train-") as tmp:
        if args.data:
            overrides.append(f"data.files=[{args.data}]")
        elif sizes["quick_jets"]:
            from tfjetflows.data.generate import make_data

            make_data(tmp, jets=sizes["quick_jets"], seed=1, files=2)
            overrides.append(f"data.files=[{tmp}]")
        config = _load_config(overrides)
        if "pipeline" not in args.skip:
            row, z = bench_pipeline(config, epochs, args.export_vectors)
            rows.append(row)
        if "in-memory" not in args.skip:
            rng = np.random.default_rng(0)
            for dim in args.dims or sizes["dims"]:
                steps = args.steps or sizes["steps"].get(dim, 20)
                if z is not None and z.shape[1] == dim:
                    data, source = z, f"{len(z)} encoded training jets, standardised"
                else:
                    data = rng.standard_normal((8192, dim)).astype("float32")
                    source = "standard normal"
                rows.append(bench_in_memory(config, dim, data, source, steps, epochs))
        if "fit" not in args.skip:
            if args.quick:
                rows.append(skipped_row("train tfjf fit() D=807", "--quick", "steps/s"))
            else:
                rows.append(bench_fit(overrides))
    return rows


def build_parser() -> argparse.ArgumentParser:
    """The command-line options (``run_all.py`` builds its arguments with it too)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke run)")
    parser.add_argument("--skip", nargs="*", default=[], choices=PARTS)
    parser.add_argument("--dims", type=int, nargs="+", help="in-memory dims (16 256 807)")
    parser.add_argument("--epochs", type=int, help="timed epochs (after one warm-up epoch)")
    parser.add_argument("--steps", type=int, help="steps per in-memory epoch")
    parser.add_argument("--data", help="Parquet folder instead of the built-in jets")
    parser.add_argument("--set", action="append", default=[], help="config override key=value")
    parser.add_argument("--export-vectors", help="save the standardised D=807 vectors (.npy)")
    parser.add_argument("--json", dest="json_path", help="write rows and machine to this file")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command line: run the benches, print the table, write JSON."""
    args = build_parser().parse_args(argv)
    machine = machine_info()
    start = time.perf_counter()
    rows = run(args)
    print("\n" + markdown_table(rows))
    if args.json_path:
        import tensorflow as tf

        write_json(
            args.json_path,
            {
                "bench": "train",
                "machine": machine,
                "devices": [d.name for d in tf.config.list_physical_devices()],
                "quick": args.quick,
                "seconds": time.perf_counter() - start,
                "loadavg_after": list(os.getloadavg()),
                "rows": rows,
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
