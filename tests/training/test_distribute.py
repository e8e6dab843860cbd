"""Distributed training with ``tf.distribute``: strategy choice, and equality with one device.

The multi-device checks need two logical CPU devices, which must be configured before
TensorFlow initialises its devices; so they run in a child process: this file is also the child
program (``python test_distribute.py equivalence SETTINGS FOLDER OUT``), which runs every
scenario in one process (one TensorFlow start) and writes its measurements as JSON for the tests
to check.
The multi-worker test starts two ``tfjf fit`` workers on free localhost ports with ``TF_CONFIG``.

Tolerances: in float64 a mirrored run equals the one-device run to rounding (weights within
1.8e-11 after 16 Adam steps with gradient clipping acting, measured; asserted below 1e-9; the
loss itself is reported in float32, so losses within 1e-6 relative). The fit-level runs are
float32: summation order differs between one batch and two half batches, and Adam magnifies
such differences where it divides a near-zero gradient by a near-zero second moment. Measured:
training losses within 1.4e-7 relative, validation losses within 1.7e-5 (their mean is
dominated by a few badly modelled jets, very sensitive to the weights); asserted: 1e-5 and 2e-4,
well above those and far below the 1.6e-2 that per-replica (unsynchronised) batch norm gives.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tfjetflows.config import ConfigError, load_config
from tfjetflows.training.distribute import (
    ClusterRole,
    check_global_batch,
    cluster_role,
    strategy_kind,
    training_role,
)

CHILD_TIMEOUT = 300  # seconds; the child takes about 40 s on 2 busy cores
WORKER_TIMEOUT = 240


# ---- in process: configuration ---------------------------------------------------------------


def test_unknown_strategy_is_a_config_error_naming_key_and_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "model: {kind: maf}\nrepresentation: {kind: hits}\ndistribute: {strategy: mirored}\n"
    )
    config = load_config(path)
    with pytest.raises(ConfigError, match=r"run\.yaml.*'distribute'.*'strategy'.*'mirored'"):
        strategy_kind(config)


def test_unknown_distribute_key_is_a_config_error():
    with pytest.raises(ConfigError, match="section 'distribute': unknown key 'devices'"):
        load_config(overrides=["distribute.devices=2"])


@pytest.mark.parametrize(
    ("tf_config", "expected"),
    [
        (None, ClusterRole()),
        (
            {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}},
            ClusterRole("worker", 1, 2, False),
        ),
        (
            {
                "cluster": {"chief": ["a:1"], "worker": ["b:2"]},
                "task": {"type": "worker", "index": 0},
            },
            ClusterRole("worker", 0, 2, True),
        ),
    ],
)
def test_cluster_role_reads_tf_config(tf_config, expected):
    environ = {} if tf_config is None else {"TF_CONFIG": json.dumps(tf_config)}
    assert cluster_role(environ) == expected


@pytest.mark.parametrize(
    ("role", "is_chief"),
    [
        (ClusterRole(), True),
        (ClusterRole("worker", 0, 2, False), True),  # worker 0 leads when there is no chief
        (ClusterRole("worker", 1, 2, False), False),
        (ClusterRole("worker", 0, 2, True), False),
        (ClusterRole("chief", 0, 2, True), True),
    ],
)
def test_chief_is_the_chief_task_or_worker_zero(role, is_chief):
    assert role.is_chief is is_chief


def test_bad_tf_config_is_a_config_error():
    with pytest.raises(ConfigError, match="TF_CONFIG"):
        cluster_role({"TF_CONFIG": "{not json"})


@pytest.mark.parametrize(
    ("name", "workers", "gpus", "kind"),
    [
        ("auto", 1, 0, "one_device"),
        ("auto", 1, 1, "one_device"),
        ("auto", 1, 2, "mirrored"),
        ("auto", 2, 0, "multi_worker"),
        ("one_device", 2, 4, "one_device"),
        ("mirrored", 1, 0, "mirrored"),
        ("multi_worker", 1, 0, "multi_worker"),
    ],
)
def test_strategy_kind(name, workers, gpus, kind):
    config = load_config(overrides=[f"distribute.strategy={name}"])
    role = ClusterRole("worker", 0, workers) if workers > 1 else ClusterRole()
    assert strategy_kind(config, role=role, gpus=gpus) == kind


def test_tf_config_is_ignored_unless_training_is_multi_worker(monkeypatch):
    spec = {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(spec))
    assert training_role(load_config(overrides=["distribute.strategy=one_device"])).is_chief
    assert not training_role(load_config(overrides=["distribute.strategy=auto"])).is_chief


def test_global_batch_must_split_evenly():
    config = load_config(overrides=["data.batch_size=33"])
    two = SimpleNamespace(num_replicas_in_sync=2)
    with pytest.raises(ConfigError, match="'batch_size' \\(33\\).*multiple of the 2 replicas"):
        check_global_batch(config, two)
    check_global_batch(config, SimpleNamespace(num_replicas_in_sync=1))
    config = load_config(overrides=["data.batch_size=32"])
    check_global_batch(config, two, validation_jets=45)  # a full first batch, then 13
    with pytest.raises(ValueError, match="27 validation jets"):
        check_global_batch(config, two, validation_jets=27)


def test_datasets_shard_by_data(jet_data):
    import tensorflow as tf

    from tfjetflows.data.pipeline import build_datasets
    from tfjetflows.training.fit import build_representation, resolve_data

    config = load_config(overrides=[f"data.files=['{jet_data}']", "data.batch_size=32"])
    datasets = build_datasets(
        resolve_data(config.data.files),
        config.selection,
        build_representation(config),
        config.data,
        config.seed,
    )
    policy = tf.data.experimental.AutoShardPolicy.DATA
    for dataset in (datasets.train, datasets.validation):
        assert dataset.options().experimental_distribute.auto_shard_policy == policy


# ---- child process: two logical CPU devices --------------------------------------------------


@pytest.fixture(scope="module")
def equivalence(tiny_settings, tmp_path_factory, subprocess_env):
    """Run every two-device scenario in one child process; return its measurements."""
    folder = tmp_path_factory.mktemp("distribute")
    out = folder / "result.json"
    settings = json.dumps(tiny_settings)
    proc = subprocess.run(
        [sys.executable, __file__, "equivalence", settings, str(folder), str(out)],
        env=subprocess_env,
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads(out.read_text())


def test_two_logical_devices(equivalence):
    assert equivalence["replicas"] == 2


def test_batch_norm_statistics_are_those_of_the_global_batch(equivalence):
    # an uneven split (5 + 3 rows): both replicas normalise with the 8-row statistics
    bn = equivalence["batch_norm"]
    for replica in bn["replicas"]:
        np.testing.assert_allclose(replica["mean"], bn["expected_mean"], rtol=1e-12, atol=1e-12)
        # (sum of squares minus squared mean: a little cancellation where the spread is small)
        np.testing.assert_allclose(replica["variance"], bn["expected_variance"], rtol=1e-9)
    np.testing.assert_allclose(bn["moving_mean"], bn["expected_mean"], rtol=1e-12, atol=1e-12)


def test_loss_gradient_is_that_of_the_global_batch(equivalence):
    # an uneven split again: the replicas' summed gradients equal one device's on all 8 rows
    grads = equivalence["gradients"]
    np.testing.assert_allclose(grads["mirrored"], grads["one_device"], rtol=1e-9, atol=1e-12)
    # (the loss value itself is float32)
    np.testing.assert_allclose(grads["reported_loss"], grads["one_device_loss"], rtol=1e-6)


def test_mirrored_training_equals_one_device_in_float64(equivalence):
    runs = equivalence["float64"]
    np.testing.assert_allclose(runs["mirrored"]["loss"], runs["one_device"]["loss"], rtol=1e-6)
    assert runs["max_weight_difference"] < 1e-9


# float32 rounding (see the module docstring): measured up to 1.4e-7 (loss) and 1.7e-5 (val_loss,
# whose mean is dominated by a few badly modelled jets) relative; unsynchronised batch norm: 1.6e-2
RTOL = {"loss": 1e-5, "val_loss": 2e-4}


def _assert_same_losses(run: dict, reference: dict, epochs: slice = slice(None)) -> None:
    for key, rtol in RTOL.items():
        np.testing.assert_allclose(run[key][epochs], reference[key][epochs], rtol=rtol, err_msg=key)


def test_fit_mirrored_equals_one_device(equivalence):
    fits = equivalence["fits"]
    assert fits["mirrored"]["strategy"].startswith("MirroredStrategy: 2 replica")
    assert fits["one_device"]["strategy"].startswith("one device")
    _assert_same_losses(fits["mirrored"], fits["one_device"])


@pytest.mark.parametrize(
    ("name", "first"),
    [("one_device_then_mirrored", "one_device"), ("mirrored_then_one_device", "mirrored")],
)
def test_resume_across_strategies(equivalence, name, first):
    fits = equivalence["fits"]
    resumed = fits[name]
    assert resumed["epochs"] == [0, 1]
    assert resumed["checkpoint_epoch"] == 2
    _assert_same_losses(resumed, fits[first], slice(0, 1))  # the first epoch's row is kept
    # the second epoch is the same whichever strategy wrote the checkpoint or resumed it
    _assert_same_losses(resumed, fits["one_device_then_mirrored"])


# ---- multi-worker: two tfjf fit processes ------------------------------------------------------


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _run_workers(args: list[str], folder: Path, env: dict[str, str], tag: str) -> list[str]:
    """Run ``tfjf fit ARGS`` as a two-worker cluster; return the workers' outputs."""
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{port}" for port in ports]}
    procs, logs = [], []
    try:
        for index in range(2):
            log = open(folder / f"{tag}-worker{index}.log", "w+")
            logs.append(log)
            worker_env = {
                **env,
                "TF_CONFIG": json.dumps(
                    {"cluster": cluster, "task": {"type": "worker", "index": index}}
                ),
            }
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-c",
                        "import sys; from cli.main import main; sys.exit(main())",
                        "fit",
                        *args,
                    ],
                    env=worker_env,
                    cwd=folder,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        for proc in procs:
            proc.wait(timeout=WORKER_TIMEOUT)
        outputs = []
        for log in logs:
            log.seek(0)
            outputs.append(log.read())
        for proc, output in zip(procs, outputs, strict=True):
            assert proc.returncode == 0, output[-5000:]
        return outputs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()


def test_multi_worker_resumes_a_checkpoint(equivalence, tmp_path, subprocess_env):
    """Two ``tfjf fit --resume`` workers continue a one-device run's checkpoint, in step.

    Only the chief reads the checkpoint; the other worker receives its weights and optimizer
    state. Epoch 2 then matches the same checkpoint resumed on two local devices (it would not
    if the second worker trained from its own initial weights).
    """
    import keras

    from tfjetflows.training.callbacks import read_checkpoint_state, restore_checkpoint
    from tfjetflows.training.export_run import load_run_model

    run_dir = Path(equivalence["folder"]) / "one_for_workers"
    args = [
        "--run-dir",
        str(run_dir),
        "--resume",
        "--epochs",
        "2",
        "--set",
        "distribute.strategy=multi_worker",
    ]
    outputs = _run_workers(args, tmp_path, subprocess_env, "resume")
    assert "distribute: MultiWorkerMirroredStrategy: 2 replica(s) over 2 workers" in outputs[0]
    assert "sharded by data" in outputs[0]
    # the chief wrote the run; the other worker wrote nothing there, and removed its scratch
    assert f"run folder: {run_dir}   devices" in outputs[0]
    scratch = outputs[1].split("run folder: ", 1)[1].split()[0]
    assert "tfjf-worker-1-" in scratch and not Path(scratch).exists()
    checkpoint = run_dir / "checkpoints" / "last.weights.h5"
    state = read_checkpoint_state(checkpoint)
    assert (state.epoch, state.global_step) == (2, 2 * (272 // 32))
    with open(run_dir / "history.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["epoch"]) for row in rows] == [0, 1]
    history = {key: [float(row[key]) for row in rows] for key in RTOL}
    _assert_same_losses(history, equivalence["fits"]["one_device_then_mirrored"])

    # the chief's checkpoint loads, into the architecture of the model it exported
    model = load_run_model(run_dir)
    x = np.asarray(model.preprocessing.forward(np.zeros((4, model.event_size), np.float32)))
    exported = np.asarray(model.log_prob(x))
    model.compile(optimizer=keras.optimizers.Adam())
    restore_checkpoint(model, checkpoint)
    np.testing.assert_allclose(np.asarray(model.log_prob(x)), exported, rtol=1e-5)


# ---- the child program ------------------------------------------------------------------------


def _child_equivalence(settings: list[str], folder: Path, out: Path) -> None:
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )
    import keras

    from tfjetflows.training.distribute import make_strategy

    result: dict = {}
    one = tf.distribute.OneDeviceStrategy("/cpu:0")
    two = make_strategy("mirrored")  # the one fit uses: one strategy per process
    result["replicas"] = two.num_replicas_in_sync

    seconds = {}
    start = time.perf_counter()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    try:
        result["batch_norm"] = _child_batch_norm(two)
        result["gradients"] = _child_gradients(one, two)
        seconds["units"] = time.perf_counter() - start
        result["float64"] = _child_model_fit(one, two)
        seconds["float64"] = time.perf_counter() - start - seconds["units"]
    finally:
        keras.config.set_floatx("float32")
        keras.config.set_dtype_policy("float32")
    start = time.perf_counter()
    result["fits"] = _child_fits(settings, folder)
    seconds["fits"] = time.perf_counter() - start
    result["seconds"] = seconds
    result["folder"] = str(folder)
    out.write_text(json.dumps(result))


def _split(strategy, rows: np.ndarray, first: int):
    """Distribute ``rows`` as ``rows[:first]`` on replica 0 and the rest on replica 1."""
    import tensorflow as tf

    def part(context):
        if context.replica_id_in_sync_group == 0:
            return tf.constant(rows[:first])
        return tf.constant(rows[first:])

    return strategy.experimental_distribute_values_from_function(part)


def _child_batch_norm(two) -> dict:
    import tensorflow as tf

    from tfjetflows.flows.batchnorm import BatchNormLayer

    rows = np.random.default_rng(3).normal(size=(8, 3)) * [1.0, 3.0, 0.2] + [0.5, -2.0, 7.0]
    with two.scope():
        layer = BatchNormLayer(3, momentum=0.0)

    @tf.function
    def stats(x):
        return two.run(lambda v: layer.statistics(v, training=True), args=(x,))

    means, variances = stats(_split(two, rows, 5))
    return {
        "replicas": [
            {"mean": m.numpy().tolist(), "variance": v.numpy().tolist()}
            for m, v in zip(
                two.experimental_local_results(means),
                two.experimental_local_results(variances),
                strict=True,
            )
        ],
        "moving_mean": np.asarray(layer.moving_mean).tolist(),
        "expected_mean": rows.mean(axis=0).tolist(),
        "expected_variance": rows.var(axis=0).tolist(),
    }


def _tiny_maf():
    from tfjetflows.flows.maf import MAF

    return MAF(event_size=4, blocks=3, hidden_units=(8, 8))


def _child_gradients(one, two) -> dict:
    import keras
    import tensorflow as tf

    rows = np.random.default_rng(4).normal(size=(8, 4))
    keras.utils.set_random_seed(5)
    with one.scope():
        model = _tiny_maf()
    with tf.GradientTape() as tape:
        loss = model.compute_loss(rows, y_pred=model(rows, training=True))
    one_grads = tape.gradient(loss, model.trainable_variables)
    variables = model.trainable_variables
    weights = [v.numpy() for v in model.weights]
    with two.scope():
        mirrored = _tiny_maf()
    for variable, value in zip(mirrored.weights, weights, strict=True):
        variable.assign(value)

    @tf.function
    def step(x):
        def replica(v):
            with tf.GradientTape() as tape:
                loss = mirrored.compute_loss(v, y_pred=mirrored(v, training=True))
            grads = tape.gradient(loss, mirrored.trainable_variables)
            context = tf.distribute.get_replica_context()
            return context.all_reduce("sum", grads), loss

        return two.run(replica, args=(x,))

    grads, losses = step(_split(two, rows, 5))
    mirrored_grads = two.experimental_local_results(grads)[0]
    # what Keras' loss tracker reports: each replica's value times R, weighted by its rows
    reported = (
        sum(
            float(v) * 2 * n
            for v, n in zip(two.experimental_local_results(losses), (5, 3), strict=True)
        )
        / 8
    )
    assert len(variables) == len(mirrored_grads)
    return {
        "one_device": np.concatenate([np.ravel(g) for g in one_grads]).tolist(),
        "mirrored": np.concatenate([np.ravel(g.numpy()) for g in mirrored_grads]).tolist(),
        "one_device_loss": float(loss),
        "reported_loss": reported,
    }


def _child_model_fit(one, two) -> dict:
    import keras
    import tensorflow as tf

    rng = np.random.default_rng(0)
    data = rng.normal(size=(256, 4)) @ rng.normal(size=(4, 4))
    runs = {}

    def train(strategy, clipnorm=0.5):  # small: clipping acts on most variables
        keras.utils.set_random_seed(1)
        with strategy.scope():
            model = _tiny_maf()
            optimizer = keras.optimizers.Adam(1e-2, clipnorm=clipnorm)
            if strategy.num_replicas_in_sync > 1:
                clip_global_gradient(optimizer)
            model.compile(optimizer=optimizer)
        batches = tf.data.Dataset.from_tensor_slices(data).batch(32, drop_remainder=True)
        history = model.fit(batches, epochs=2, verbose=0, shuffle=False)
        return {"loss": history.history["loss"]}, [np.asarray(w) for w in model.weights]

    from tfjetflows.training.distribute import clip_global_gradient

    runs["one_device"], one_weights = train(one)
    runs["mirrored"], two_weights = train(two)
    runs["max_weight_difference"] = max(
        float(np.max(np.abs(a - b))) for a, b in zip(one_weights, two_weights, strict=True)
    )
    return runs


def _child_fits(settings: list[str], folder: Path) -> dict:
    import tfjetflows.evaluation.plots as plots
    import tfjetflows.training.export_run as export_run
    import tfjetflows.training.fit as fit_module
    from tfjetflows.config import load_config
    from tfjetflows.training.callbacks import read_checkpoint_state
    from tfjetflows.training.fit import fit

    # What follows training (held-out figures, pictures, SavedModel) is tested in test_fit.py
    # and has nothing distributed in it: skipped here, it would double this child's time.
    fit_module.evaluate_split = lambda *args, **kwargs: {}
    fit_module.gaussian_baseline = lambda *args, **kwargs: {}
    plots.plot_jet_grid = lambda path, *args, **kwargs: path
    plots.plot_training_curves = lambda csv_path, path: path
    export_run.export_run = lambda run_dir, out: Path(out)

    def run(name: str, strategy: str, epochs: int, resume: bool = False) -> dict:
        config = load_config(
            overrides=[
                *settings,
                f"distribute.strategy={strategy}",
                f"training.epochs={epochs}",
                "training.lr_schedule=constant",
            ]
        )
        run_dir = folder / name
        fit(config, run_dir=run_dir, resume=resume, saved_models_dir=None, verbose=0)
        with open(run_dir / "history.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        log = (run_dir / "output.log").read_text()
        return {
            "epochs": [int(r["epoch"]) for r in rows],
            "loss": [float(r["loss"]) for r in rows],
            "val_loss": [float(r["val_loss"]) for r in rows],
            "checkpoint_epoch": read_checkpoint_state(
                run_dir / "checkpoints" / "last.weights.h5"
            ).epoch,
            "strategy": log.rsplit("distribute: ", 1)[1].splitlines()[0],
        }

    fits = {"one_device": run("one", "one_device", 1), "mirrored": run("two", "mirrored", 1)}
    # a copy of the one-device checkpoint, for the multi-worker test to resume
    shutil.copytree(folder / "one", folder / "one_for_workers")
    fits["one_device_then_mirrored"] = run("one", "mirrored", 2, resume=True)
    fits["mirrored_then_one_device"] = run("two", "one_device", 2, resume=True)
    return fits


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if sys.argv[1] == "equivalence":
        _child_equivalence(json.loads(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
