"""Tests of the training callbacks with tiny plain Keras 3 regression models."""

from __future__ import annotations

import csv
import json
import os
import struct
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tfjetflows.training import callbacks as cb  # noqa: E402
from tfjetflows.training.callbacks import (  # noqa: E402
    AtomicCheckpoint,
    LearningRateLogger,
    NanGuard,
    WandbLogger,
    read_checkpoint_state,
    resolve_wandb_mode,
    restore_checkpoint,
)

N_ROWS, BATCH = 32, 8  # 4 steps per epoch
STEPS = N_ROWS // BATCH


def make_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N_ROWS, 3)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5]]) + 0.3).astype("float32")
    return x, y


def make_model(
    seed: int = 0,
    lr: float | keras.optimizers.schedules.LearningRateSchedule = 0.05,
    steps_per_execution: int = 1,
):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(1)]
    )
    model.compile(keras.optimizers.Adam(lr), loss="mse", steps_per_execution=steps_per_execution)
    return model


def cosine(decay_steps: int = 4 * STEPS) -> keras.optimizers.schedules.CosineDecay:
    return keras.optimizers.schedules.CosineDecay(0.05, decay_steps=decay_steps, alpha=0.1)


def snapshot(variables) -> list[np.ndarray]:
    return [np.array(keras.ops.convert_to_numpy(v)) for v in variables]


class WeightRecorder(keras.callbacks.Callback):
    """Test helper: model weights and optimizer state after every optimizer step."""

    def __init__(self):
        super().__init__()
        self.by_step: dict[int, list[np.ndarray]] = {}

    def _record(self):
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        self.by_step[step] = snapshot(self.model.weights) + snapshot(self.model.optimizer.variables)

    def on_train_begin(self, logs=None):
        self.model.optimizer.build(self.model.trainable_variables)
        self._record()

    def on_train_batch_end(self, batch, logs=None):
        self._record()


# ---- NanGuard ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad_value", "clean_epochs", "bad_row", "kind", "per_execution", "bad_step", "restored"),
    [
        (np.inf, 0, 19, "inf", 1, 3, 2),  # batch 2 of epoch 1: step 3
        (np.nan, 0, 0, "NaN", 1, 1, 0),  # the very first step: restores the initial weights
        (np.inf, 2, 31, "inf", 1, 12, 11),  # last batch of epoch 3: step 2*4 + 4 = 12
        (np.inf, 0, 19, "NaN", 2, 4, 2),  # steps 3-4 in one execution (inf, then NaN)
    ],
)
def test_nan_guard_restores_weights_from_before_the_bad_step(
    bad_value, clean_epochs, bad_row, kind, per_execution, bad_step, restored, capsys
):
    x, y = make_data()
    model = make_model(steps_per_execution=per_execution)
    if clean_epochs:
        model.fit(x, y, batch_size=BATCH, epochs=clean_epochs, shuffle=False, verbose=0)
    y_bad = y.copy()
    y_bad[bad_row] = bad_value
    recorder, guard = WeightRecorder(), NanGuard()
    history = model.fit(
        x,
        y_bad,
        batch_size=BATCH,
        epochs=clean_epochs + 3,
        initial_epoch=clean_epochs,
        shuffle=False,
        verbose=0,
        callbacks=[recorder, guard],
    )
    assert guard.bad_step == bad_step
    assert guard.restored_step == restored
    assert guard.bad_epoch == clean_epochs
    assert len(history.history["loss"]) == 1  # stopped in the first epoch of this fit
    # The recorder ran before the guard at the bad step: it saw the broken state.
    assert not all(np.isfinite(w).all() for w in recorder.by_step[bad_step])
    state = snapshot(model.weights) + snapshot(model.optimizer.variables)
    assert all(np.isfinite(w).all() for w in state)
    for got, want in zip(state, recorder.by_step[restored], strict=True):
        np.testing.assert_array_equal(got, want)
    assert int(model.optimizer.iterations) == restored
    out = capsys.readouterr().out
    assert (
        f"{kind} loss at epoch {clean_epochs + 1} step {bad_step}; "
        f"restored weights from step {restored}"
    ) in out


def test_nan_guard_leaves_clean_training_alone():
    x, y = make_data()
    guard = NanGuard()
    history = make_model().fit(
        x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, callbacks=[guard]
    )
    assert guard.bad_step is None
    assert len(history.history["loss"]) == 2
    assert history.history["loss"][1] < history.history["loss"][0]


# ---- checkpoints ------------------------------------------------------------------------------


def test_resumed_training_equals_uninterrupted_training(tmp_path):
    x, y = make_data()
    fit_kwargs = {"batch_size": BATCH, "shuffle": False, "verbose": 0}
    straight = make_model(lr=cosine())
    full = straight.fit(x, y, epochs=4, validation_data=(x[:8], y[:8]), **fit_kwargs)

    first = make_model(lr=cosine())
    first.fit(
        x,
        y,
        epochs=2,
        validation_data=(x[:8], y[:8]),
        callbacks=[AtomicCheckpoint(tmp_path)],
        **fit_kwargs,
    )
    del first
    keras.backend.clear_session()  # as a new process would start

    resumed = make_model(seed=123, lr=cosine())  # different initial weights: restore must win
    state = restore_checkpoint(resumed, tmp_path / "last.weights.h5")
    assert (state.epoch, state.global_step) == (2, 2 * STEPS)
    assert int(resumed.optimizer.iterations) == 2 * STEPS
    rest = resumed.fit(
        x,
        y,
        epochs=4,
        initial_epoch=state.epoch,
        validation_data=(x[:8], y[:8]),
        callbacks=[AtomicCheckpoint(tmp_path)],
        **fit_kwargs,
    )
    np.testing.assert_allclose(rest.history["loss"], full.history["loss"][2:], rtol=1e-6)
    for got, want in zip(snapshot(resumed.weights), snapshot(straight.weights), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    last = read_checkpoint_state(tmp_path / "last.weights.h5")
    assert (last.epoch, last.global_step) == (4, 4 * STEPS)
    # best follows val_loss across the interruption
    best = read_checkpoint_state(tmp_path / "best.weights.h5")
    val = full.history["val_loss"]
    assert best.monitor == "val_loss"
    assert best.monitor_value == pytest.approx(min(val), rel=1e-6)
    assert best.epoch == int(np.argmin(val)) + 1


def test_restore_brings_back_the_optimizer_state(tmp_path):
    x, y = make_data()
    model = make_model()
    model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=3,
        shuffle=False,
        verbose=0,
        callbacks=[AtomicCheckpoint(tmp_path, monitor=None)],
    )
    other = make_model(seed=7)
    assert int(other.optimizer.iterations) == 0
    restore_checkpoint(other, tmp_path / "last.weights.h5")
    assert int(other.optimizer.iterations) == 3 * STEPS
    names = [v.path for v in other.optimizer.variables]
    assert any("momentum" in n for n in names) and any("velocity" in n for n in names)
    for got, want in zip(
        snapshot(other.optimizer.variables), snapshot(model.optimizer.variables), strict=True
    ):
        np.testing.assert_array_equal(got, want)
    assert not (tmp_path / "best.weights.h5").exists()


def _fail_after_save_weights(monkeypatch):
    original = keras.Model.save_weights

    def broken(self, filepath, *args, **kwargs):
        original(self, filepath, *args, **kwargs)
        raise OSError("simulated kill while writing the checkpoint")

    monkeypatch.setattr(keras.Model, "save_weights", broken)


def _fail_at_replace(monkeypatch):
    def broken(src, dst):
        raise OSError("simulated kill before the rename")

    monkeypatch.setattr(cb.os, "replace", broken)


@pytest.mark.parametrize("break_write", [_fail_after_save_weights, _fail_at_replace])
def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch, break_write):
    x, y = make_data()
    model = make_model()
    fit_kwargs = {"batch_size": BATCH, "shuffle": False, "verbose": 0}
    model.fit(x, y, epochs=1, callbacks=[AtomicCheckpoint(tmp_path, monitor=None)], **fit_kwargs)
    after_epoch_1 = snapshot(model.weights)

    break_write(monkeypatch)
    with pytest.raises(OSError, match="simulated kill"):
        model.fit(
            x,
            y,
            epochs=2,
            initial_epoch=1,
            callbacks=[AtomicCheckpoint(tmp_path, monitor=None)],
            **fit_kwargs,
        )
    monkeypatch.undo()

    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.weights.h5"]  # no temp files
    fresh = make_model(seed=99)
    state = restore_checkpoint(fresh, tmp_path / "last.weights.h5")
    assert (state.epoch, state.global_step) == (1, STEPS)
    for got, want in zip(snapshot(fresh.weights), after_epoch_1, strict=True):
        np.testing.assert_array_equal(got, want)


def test_temp_files_of_a_killed_writer_are_cleaned_up(tmp_path):
    leftover = tmp_path / ".last.0123abcd.weights.h5"  # as a SIGKILL mid-write leaves it
    leftover.write_bytes(b"partial")
    keep = tmp_path / "notes.txt"
    keep.write_text("mine")
    x, y = make_data()
    make_model().fit(
        x,
        y,
        batch_size=BATCH,
        epochs=1,
        verbose=0,
        callbacks=[AtomicCheckpoint(tmp_path, monitor=None)],
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.weights.h5", "notes.txt"]


def test_every_n_steps_writes_mid_epoch_checkpoints(tmp_path, monkeypatch):
    writes: list[tuple[int, int]] = []
    original = AtomicCheckpoint._write

    def spy(self, path, epoch, step, logs):
        original(self, path, epoch, step, logs)
        writes.append((epoch, step))

    monkeypatch.setattr(AtomicCheckpoint, "_write", spy)
    x, y = make_data()
    make_model().fit(
        x,
        y,
        batch_size=BATCH,
        epochs=2,
        shuffle=False,
        verbose=0,
        callbacks=[AtomicCheckpoint(tmp_path, every_n_steps=3, monitor=None)],
    )
    # (epochs completed, global step): mid-epoch at steps 3 and 6, epoch ends at 4 and 8.
    assert writes == [(0, 3), (1, 4), (1, 6), (2, 8)]
    assert read_checkpoint_state(tmp_path / "last.weights.h5").global_step == 8


def test_no_checkpoint_of_an_epoch_that_blew_up(tmp_path, capsys):
    x, y = make_data()
    model = make_model()
    fit_kwargs = {"batch_size": BATCH, "shuffle": False, "verbose": 0}
    model.fit(
        x,
        y,
        epochs=1,
        callbacks=[NanGuard(), AtomicCheckpoint(tmp_path, monitor=None)],
        **fit_kwargs,
    )
    y_bad = y.copy()
    y_bad[20] = np.inf
    guard = NanGuard()
    model.fit(
        x,
        y_bad,
        epochs=3,
        initial_epoch=1,
        callbacks=[AtomicCheckpoint(tmp_path, monitor=None), guard],
        **fit_kwargs,
    )
    assert guard.bad_step == STEPS + 3
    state = read_checkpoint_state(tmp_path / "last.weights.h5")
    assert (state.epoch, state.global_step) == (1, STEPS)
    assert np.isfinite(state.logs["loss"])
    assert "Epoch 2 stopped after 3 of 4 batches; no checkpoint written" in capsys.readouterr().out


def test_read_checkpoint_state_rejects_foreign_files(tmp_path):
    model = make_model()
    plain = tmp_path / "plain.weights.h5"
    model.save_weights(plain)
    with pytest.raises(ValueError, match="not written by AtomicCheckpoint"):
        read_checkpoint_state(plain)
    with pytest.raises(FileNotFoundError, match="missing.weights.h5"):
        read_checkpoint_state(tmp_path / "missing.weights.h5")


# ---- learning rate ----------------------------------------------------------------------------


def test_learning_rate_logger_feeds_csv_and_history(tmp_path):
    x, y = make_data()
    schedule = cosine()
    csv_path = tmp_path / "history.csv"
    history = make_model(lr=schedule).fit(
        x,
        y,
        batch_size=BATCH,
        epochs=3,
        shuffle=False,
        verbose=0,
        callbacks=[LearningRateLogger(), keras.callbacks.CSVLogger(str(csv_path))],
    )
    want = [float(schedule((epoch + 1) * STEPS)) for epoch in range(3)]
    assert want[0] > want[1] > want[2]
    np.testing.assert_allclose(history.history["learning_rate"], want, rtol=1e-6)
    with csv_path.open() as handle:
        rows = list(csv.DictReader(handle))
    np.testing.assert_allclose([float(r["learning_rate"]) for r in rows], want, rtol=1e-6)


# ---- Weights & Biases -------------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test if the W&B reachability probe is called."""

    def forbidden(timeout: float = 1.0) -> bool:
        raise AssertionError("the network was probed")

    monkeypatch.setattr(cb, "_wandb_reachable", forbidden)


@pytest.mark.parametrize(
    ("mode", "env", "want"),
    [
        ("offline", {"WANDB_API_KEY": "k" * 40}, "offline"),
        ("disabled", {}, "disabled"),
        ("online", {}, "online"),
        ("auto", {}, "offline"),  # no key: offline, without touching the network
        ("auto", {"WANDB_API_KEY": "k" * 40, "WANDB_MODE": "offline"}, "offline"),
        ("auto", {"WANDB_MODE": "disabled"}, "disabled"),
    ],
)
def test_wandb_mode_needs_no_network(monkeypatch, tmp_path, no_network, mode, env, want):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    for key in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert resolve_wandb_mode(mode) == want


@pytest.mark.parametrize(("reachable", "want"), [(True, "online"), (False, "offline")])
def test_wandb_auto_mode_with_a_key_depends_on_the_server(monkeypatch, reachable, want):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    monkeypatch.setattr(cb, "_wandb_reachable", lambda timeout=1.0: reachable)
    assert resolve_wandb_mode("auto") == want


def test_wandb_mode_rejects_unknown_modes():
    with pytest.raises(ValueError, match="'sometimes'"):
        resolve_wandb_mode("sometimes")


@pytest.fixture
def wandb_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return tmp_path


def read_wandb_records(run_folder: Path) -> list:
    """Decode an offline run's ``.wandb`` file (a LevelDB-style log of protobuf records)."""
    from wandb.proto import wandb_internal_pb2

    (path,) = run_folder.glob("run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, chunk, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        if kind == 0 and length == 0:
            pos += left - 7
            continue
        chunk += data[pos : pos + length]
        pos += length
        if kind in (1, 4):  # FULL or LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def wandb_history(records) -> list[dict]:
    rows = []
    for record in records:
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in record.history.item
                }
            )
    return rows


def array_images():
    counter = {"n": 0}

    def make() -> np.ndarray:
        counter["n"] += 1
        image = np.zeros((2, 6, 6), dtype=np.uint8)  # a batch of two different images
        image[0, counter["n"], :] = 255
        image[1, :, counter["n"]] = 255
        return image

    return make, 2, "images/separated"


def figure_images():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def make():
        fig, ax = plt.subplots(figsize=(1, 1), dpi=20)
        ax.plot([0, 1], [0, 1])
        return fig

    return make, 1, "image-file"


@pytest.mark.parametrize("images", [array_images, figure_images])
def test_wandb_logger_offline_run_holds_the_history(wandb_offline, images):
    sample_fn, per_epoch, wandb_type = images()
    x, y = make_data()
    logger = WandbLogger(
        "tfjf-test",
        config={"model": {"kind": "dense"}, "seed": 0},
        run_dir=wandb_offline / "run",
        mode="auto",
        sample_images_fn=sample_fn,
    )
    history = make_model(lr=cosine()).fit(
        x,
        y,
        batch_size=BATCH,
        epochs=3,
        shuffle=False,
        verbose=0,
        callbacks=[LearningRateLogger(), logger],
    )
    assert logger.run is None  # finished at train end
    (run_folder,) = (wandb_offline / "run" / "wandb").glob("offline-run-*")
    rows = wandb_history(read_wandb_records(run_folder))
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    np.testing.assert_allclose([row["loss"] for row in rows], history.history["loss"], rtol=1e-6)
    np.testing.assert_allclose(
        [row["learning_rate"] for row in rows], history.history["learning_rate"], rtol=1e-6
    )
    assert [row["samples/_type"] for row in rows] == [wandb_type] * 3
    images_logged = list((run_folder / "files" / "media" / "images").glob("samples_*.png"))
    assert len(images_logged) == 3 * per_epoch
    if images is figure_images:
        import matplotlib.pyplot as plt

        assert plt.get_fignums() == []  # figures are closed after logging


class Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise RuntimeError("interrupted")


def test_wandb_logger_finishes_the_run_on_an_exception(wandb_offline):
    x, y = make_data()
    with (
        pytest.raises(RuntimeError, match="interrupted"),
        WandbLogger("tfjf-test", run_dir=wandb_offline, mode="offline") as logger,
    ):
        make_model().fit(
            x, y, batch_size=BATCH, epochs=4, verbose=0, callbacks=[logger, Interrupt()]
        )
    assert logger.run is None
    (run_folder,) = (wandb_offline / "wandb").glob("offline-run-*")
    records = read_wandb_records(run_folder)
    exits = [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"]
    assert exits == [1]
    assert [row["epoch"] for row in wandb_history(records)] == [1, 2]


def test_training_speed_times_training_only_and_skips_the_first_epoch(monkeypatch):
    """Epoch times exclude validation; the first (tracing) epoch is left out of the median."""
    from tfjetflows.training import callbacks as module

    clock = iter([0.0, 10.0, 20.0, 22.0, 30.0, 33.0])
    monkeypatch.setattr(module.time, "perf_counter", lambda: next(clock))
    speed = module.TrainingSpeed()
    speed.on_epoch_begin(0)
    speed.on_test_begin()  # validation starts at t=10: the epoch trained 10 s
    speed.on_epoch_end(0)  # no second stop for the same epoch
    speed.on_epoch_begin(1)
    speed.on_epoch_end(1)  # no validation: 2 s
    speed.on_epoch_begin(2)
    speed.on_epoch_end(2)  # 3 s
    summary = speed.summary(steps_per_epoch=10, batch_size=4)
    assert summary["epoch_seconds"] == [10.0, 2.0, 3.0]
    assert summary["steps_per_second"] == pytest.approx(10 / 2.5)
    assert summary["jets_per_second"] == pytest.approx(40 / 2.5)
    assert summary["includes_tracing"] is False
    assert module.TrainingSpeed().summary(10, 4) == {}
