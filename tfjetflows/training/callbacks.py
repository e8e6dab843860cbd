"""Keras 3 training callbacks, one job each.

* :class:`NanGuard` stops at the first non-finite loss and puts back the weights (and optimizer
  state) from before the bad update. ``keras.callbacks.TerminateOnNaN`` stops too, but leaves the
  NaN update applied.
* :class:`AtomicCheckpoint` writes model + optimizer state + progress into one ``.weights.h5``
  file per checkpoint, atomically; :func:`restore_checkpoint` reads it back for a resume.
* :class:`LearningRateLogger` puts the current learning rate into the epoch logs.
* :class:`WandbLogger` logs epoch metrics and sample images to Weights & Biases, offline unless
  an API key is configured and the server is reachable.

CSV history is ``keras.callbacks.CSVLogger``. Order matters only for :class:`LearningRateLogger`:
put it before the loggers that should see ``learning_rate`` (Keras passes one logs dict along the
list).
"""

from __future__ import annotations

import contextlib
import json
import math
import netrc
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlparse

import h5py
import keras
import numpy as np
import tensorflow as tf

from tfjetflows.atomic import atomic_path

__all__ = [
    "AtomicCheckpoint",
    "CheckpointState",
    "LearningRateLogger",
    "NanGuard",
    "TrainingSpeed",
    "WandbLogger",
    "current_learning_rate",
    "read_checkpoint_state",
    "resolve_wandb_mode",
    "restore_checkpoint",
]

_STATE_ATTR = "tfjetflows_checkpoint"
_FORMAT_VERSION = 1


def _is_finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return True  # not a number (e.g. a string): nothing to check


def _build_optimizer(model: keras.Model) -> None:
    """Create the optimizer's slot variables now (fit would create them at the first step).

    They are made under the model's ``tf.distribute`` strategy, as the model's own variables.
    """
    optimizer = model.optimizer
    if optimizer is not None and not optimizer.built:
        with model.distribute_strategy.scope():
            optimizer.build(model.trainable_variables)


def _writes_files(model: keras.Model) -> bool:
    """Whether this process writes checkpoints: False on a multi-worker run's non-chief."""
    return bool(model.distribute_strategy.extended.should_checkpoint)


def current_learning_rate(model: keras.Model) -> float:
    """Return the optimizer's learning rate at its current step (schedules evaluated)."""
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


# ---- NaN guard ---------------------------------------------------------------------------------


class NanGuard(keras.callbacks.Callback):
    """Stop at the first non-finite loss and restore the weights from before the bad update.

    After every good batch the model's weights (trainable and not, e.g. batch-norm moving
    statistics) and, with ``restore_optimizer``, the optimizer's variables (step count, moments)
    are copied into backup ``tf.Variable`` s on the same device, by one compiled ``tf.function``
    of ``assign`` s: no host copies. When a watched log is NaN or inf the backup is assigned
    back, training stops, and one line is printed::

        NaN loss at epoch 3 step 1234; restored weights from step 1233

    Epochs are printed 1-based as in Keras' progress bar; steps count optimizer updates since the
    optimizer was created (``optimizer.iterations``), so step S is the bad update and step S-1
    the state restored. With ``steps_per_execution`` k > 1 Keras calls back once per k steps:
    S is then the last step of the execution that went bad and the state restored is from the
    end of the one before (step S-k).

    The cost per step is the one scalar loss read that deciding needs, plus the on-device copy
    (about 0.23 ms per step for 1e5 parameters with Adam's two moments, on 2 CPU cores).

    Args:
        monitor: log names to watch (default: the training loss).
        restore_optimizer: also restore the optimizer variables, so the state after the stop is
            the consistent state after step S-1 (Adam's moments would hold NaN otherwise).

    Attributes:
        bad_step: the global step of the bad update, or None while training was clean.
        restored_step: the global step whose state was put back, or None.
        bad_epoch: the 0-based epoch index (as Keras passes it) of the bad update, or None.
    """

    def __init__(
        self, monitor: Sequence[str] = ("loss",), *, restore_optimizer: bool = True
    ) -> None:
        super().__init__()
        self.monitor = tuple(monitor)
        self.restore_optimizer = restore_optimizer
        self.bad_step: int | None = None
        self.bad_epoch: int | None = None
        self.restored_step: int | None = None
        self._epoch = 0
        self._epoch_start_step = 0
        self._backup_step = 0
        self._save: Callable[[], None] | None = None
        self._restore: Callable[[], None] | None = None

    def _watched(self) -> list[Any]:
        variables = list(self.model.weights)
        if self.restore_optimizer and self.model.optimizer is not None:
            variables += list(self.model.optimizer.variables)
        return variables

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:  # noqa: D102
        self.bad_step = None
        self.bad_epoch = None
        self.restored_step = None
        if self.restore_optimizer:
            _build_optimizer(self.model)
        live = self._watched()
        backup = [
            tf.Variable(tf.identity(v.value), trainable=False, name="nanguard_backup") for v in live
        ]

        @tf.function(autograph=False)
        def save() -> None:
            for dst, src in zip(backup, live, strict=True):
                dst.assign(src.value)

        @tf.function(autograph=False)
        def restore() -> None:
            for dst, src in zip(live, backup, strict=True):
                dst.assign(src)

        self._save, self._restore = save, restore
        self._save()
        self._backup_step = self._global_step()

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:  # noqa: D102
        self._epoch = epoch
        self._epoch_start_step = self._global_step()  # one scalar read per epoch

    def _global_step(self) -> int:
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def on_train_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:  # noqa: D102
        logs = logs or {}
        bad = [(name, logs[name]) for name in self.monitor if name in logs]
        bad = [(name, value) for name, value in bad if not _is_finite(value)]
        if not bad:
            self._save()
            self._backup_step = self._epoch_start_step + batch + 1  # Keras passes the end step
            return
        name, value = bad[0]
        step = self._global_step()
        self._restore()
        self.bad_step, self.bad_epoch = step, self._epoch
        self.restored_step = self._backup_step
        self.model.stop_training = True
        kind = "NaN" if math.isnan(float(value)) else "inf"
        print(
            f"{kind} {name} at epoch {self._epoch + 1} step {step}; "
            f"restored weights from step {self.restored_step}",
            flush=True,
        )


# ---- checkpoints -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointState:
    """Progress stored in a checkpoint.

    Attributes:
        epoch: epochs completed; pass it to ``fit(initial_epoch=...)`` to resume.
        global_step: optimizer updates done (``optimizer.iterations``).
        logs: the logs of the epoch (or batch) at which it was written.
        monitor: the name of the quantity ``best`` is chosen by.
        monitor_value: its value at this checkpoint, if present.
    """

    epoch: int
    global_step: int
    logs: dict[str, float] = field(default_factory=dict)
    monitor: str | None = None
    monitor_value: float | None = None


def read_checkpoint_state(path: str | Path) -> CheckpointState:
    """Read the progress stored in a checkpoint file without loading any weights.

    Raises:
        FileNotFoundError: there is no such file.
        ValueError: the file is not an :class:`AtomicCheckpoint` checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    with h5py.File(path, "r") as handle:
        raw = handle.attrs.get(_STATE_ATTR)
    if raw is None:
        raise ValueError(
            f"{path} holds no training progress; it was not written by AtomicCheckpoint"
        )
    data = json.loads(raw)
    return CheckpointState(
        epoch=int(data["epoch"]),
        global_step=int(data["global_step"]),
        logs=dict(data.get("logs", {})),
        monitor=data.get("monitor"),
        monitor_value=data.get("monitor_value"),
    )


def restore_checkpoint(model: keras.Model, path: str | Path) -> CheckpointState:
    """Load weights and optimizer state from a checkpoint, and return its progress.

    The model must be built (called once, or made with ``keras.Input``) and compiled with the
    same optimizer as when the checkpoint was written. Then::

        state = restore_checkpoint(model, run.checkpoints_dir / "last.weights.h5")
        model.fit(..., initial_epoch=state.epoch)

    continues the run as if it had not stopped (with a deterministic, unshuffled or seeded
    dataset, exactly).

    Under ``tf.distribute``, call it outside ``strategy.scope()``: Keras' loader makes
    throwaway variables, which in a multi-worker scope would be collectives that only the
    process loading runs.

    Args:
        model: the built, compiled model.
        path: a ``.weights.h5`` file written by :class:`AtomicCheckpoint`.

    Returns:
        The stored :class:`CheckpointState`.

    Raises:
        ValueError: the model is not built.
        FileNotFoundError: there is no such file.
    """
    state = read_checkpoint_state(path)
    if not model.built:
        raise ValueError(f"cannot restore {path}: the model is not built; call it on a batch first")
    _build_optimizer(model)
    model.load_weights(path)
    return state


class AtomicCheckpoint(keras.callbacks.Callback):
    """Write model + optimizer state + progress atomically, every epoch (and every N steps).

    Each checkpoint is one file, ``last.weights.h5`` (Keras 3 ``save_weights`` of a compiled
    model includes the optimizer variables: step count, Adam moments), with the progress
    (:class:`CheckpointState`) as a JSON attribute of the same HDF5 file. It is written under a
    temporary name in the same folder, fsynced, then moved over the old one with ``os.replace``,
    so a crash at any point leaves either the previous checkpoint or the new one, complete. When
    ``monitor`` improves, ``best.weights.h5`` is written the same way.

    Nothing is written for an epoch that was cut short (``stop_training`` inside the epoch) or
    whose monitored values are not finite, so the last checkpoint is always a clean state at an
    epoch boundary (or at a step, with ``every_n_steps``). Resume with :func:`restore_checkpoint`.

    Unlike ``keras.callbacks.BackupAndRestore`` (weights and progress in two files written in
    place, deleted at the end of training), the files here are atomic and kept.

    Under ``tf.distribute`` only the chief writes (``strategy.extended.should_checkpoint``):
    in a multi-worker run the other workers keep the same state and write nothing.

    Args:
        directory: the checkpoint folder (made if missing).
        every_n_steps: also write ``last`` every this many optimizer steps. A resume from such a
            checkpoint restarts the unfinished epoch from its first batch.
        monitor: the log that chooses ``best`` (None: no ``best``).
        mode: ``"min"`` or ``"max"``: which direction of ``monitor`` is better.
        verbose: print one line per checkpoint written.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        every_n_steps: int | None = None,
        monitor: str | None = "val_loss",
        mode: str = "min",
        verbose: bool = False,
    ) -> None:
        super().__init__()
        if mode not in ("min", "max"):
            raise ValueError(f"AtomicCheckpoint: mode must be 'min' or 'max', got {mode!r}")
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"AtomicCheckpoint: every_n_steps must be >= 1, got {every_n_steps}")
        self.directory = Path(directory)
        self.every_n_steps = every_n_steps
        self.monitor = monitor
        self.mode = mode
        self.verbose = verbose
        self.best_value: float | None = None
        self._epoch = 0
        self._epoch_start_step = 0
        self._last_batch = -1
        self._last_saved_step = 0
        self._writes = True

    @property
    def last_path(self) -> Path:
        """The most recent checkpoint."""
        return self.directory / "last.weights.h5"

    @property
    def best_path(self) -> Path:
        """The checkpoint with the best ``monitor`` value so far."""
        return self.directory / "best.weights.h5"

    def _global_step(self) -> int:
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def _improved(self, value: float) -> bool:
        if self.best_value is None:
            return True
        return value < self.best_value if self.mode == "min" else value > self.best_value

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:  # noqa: D102
        self._writes = _writes_files(self.model)
        if not self._writes:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        # Temp files of a writer that was killed (SIGKILL skips its clean-up).
        for path in (self.last_path, self.best_path):
            for leftover in self.directory.glob(f".{_stem(path)}.*.weights.h5"):
                leftover.unlink(missing_ok=True)
        # A resumed run keeps competing with the best it had before.
        self.best_value = None
        if self.monitor is not None and self.best_path.is_file():
            with contextlib.suppress(ValueError, OSError):
                state = read_checkpoint_state(self.best_path)
                if state.monitor == self.monitor and state.monitor_value is not None:
                    self.best_value = float(state.monitor_value)
        if self.every_n_steps is not None:
            self._last_saved_step = self._global_step()

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:  # noqa: D102
        self._epoch = epoch
        self._last_batch = -1
        if self.every_n_steps is not None:
            self._epoch_start_step = self._global_step()

    def on_train_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:  # noqa: D102
        self._last_batch = batch
        if self.every_n_steps is None or self.model.stop_training:
            return
        step = self._epoch_start_step + batch + 1
        if step // self.every_n_steps > self._last_saved_step // self.every_n_steps:
            if all(_is_finite(v) for v in (logs or {}).values()):
                # Mid-epoch: the epoch is not complete; a resume redoes it from its start.
                self._write(self.last_path, self._epoch, step, logs or {})
                self._last_saved_step = step

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:  # noqa: D102
        logs = dict(logs or {})
        steps = self.params.get("steps") if self.params else None
        if steps is not None and self._last_batch + 1 < steps:
            print(
                f"Epoch {epoch + 1} stopped after {self._last_batch + 1} of {steps} batches; "
                "no checkpoint written",
                flush=True,
            )
            return
        bad = sorted(k for k, v in logs.items() if not _is_finite(v))
        if bad:
            print(
                f"Epoch {epoch + 1}: non-finite {', '.join(bad)}; no checkpoint written",
                flush=True,
            )
            return
        step = self._global_step()
        self._write(self.last_path, epoch + 1, step, logs)
        self._last_saved_step = step
        if self.monitor is not None and self.monitor in logs:
            value = float(logs[self.monitor])
            if self._improved(value):
                self.best_value = value
                self._write(self.best_path, epoch + 1, step, logs)

    def _write(self, path: Path, epoch: int, step: int, logs: Mapping[str, Any]) -> None:
        if not self._writes:
            return
        numeric = {k: float(v) for k, v in logs.items() if isinstance(v, int | float | np.number)}
        value = numeric.get(self.monitor) if self.monitor is not None else None
        state = {
            "format": _FORMAT_VERSION,
            "epoch": epoch,
            "global_step": step,
            "logs": numeric,
            "monitor": self.monitor,
            "monitor_value": value,
        }
        with atomic_path(path, suffix=".weights.h5") as tmp:
            self.model.save_weights(tmp, overwrite=True)
            with h5py.File(tmp, "a") as handle:
                handle.attrs[_STATE_ATTR] = json.dumps(state)
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_directory(path.parent)
        if self.verbose:
            print(f"Checkpoint {path} (epoch {epoch}, step {step})", flush=True)


def _stem(path: Path) -> str:
    """``last`` for ``last.weights.h5``."""
    return path.name[: -len(".weights.h5")]


def _fsync_directory(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every filesystem allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ---- learning rate -----------------------------------------------------------------------------


class LearningRateLogger(keras.callbacks.Callback):
    """Put the optimizer's current learning rate into the epoch logs as ``learning_rate``.

    Place it before ``CSVLogger``/:class:`WandbLogger` in the callback list so they record it;
    Keras' ``History`` and progress bar come last and see it anyway.
    """

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:  # noqa: D102
        if logs is not None:
            logs["learning_rate"] = current_learning_rate(self.model)


# ---- Weights & Biases --------------------------------------------------------------------------

_WANDB_MODES = ("auto", "online", "offline", "disabled")


def _wandb_api_key_configured() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return bool(host and netrc.netrc().authenticators(host))
    except (OSError, netrc.NetrcParseError):
        return False


def _wandb_reachable(timeout: float = 1.0) -> bool:
    """Whether the W&B server accepts a TCP connection within ``timeout`` seconds (DNS too)."""
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    host = url.hostname or "api.wandb.ai"
    port = url.port or (80 if url.scheme == "http" else 443)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    # A thread, because name resolution ignores the socket timeout.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def resolve_wandb_mode(mode: str = "auto") -> str:
    """Turn a configured W&B mode into the one ``wandb.init`` gets.

    ``"auto"`` is ``WANDB_MODE`` when that is set; otherwise ``"online"`` only when an API key is
    configured (``WANDB_API_KEY`` or a ``wandb login`` entry in ``~/.netrc``) and the server
    answers within a second, else ``"offline"``. Nothing waits on the network without a key.

    Raises:
        ValueError: an unknown mode.
    """
    if mode not in _WANDB_MODES:
        raise ValueError(f"wandb mode must be one of {', '.join(_WANDB_MODES)}; got {mode!r}")
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env in ("online", "offline", "disabled"):
        return env
    if env == "dryrun":
        return "offline"
    if _wandb_api_key_configured() and _wandb_reachable():
        return "online"
    return "offline"


class WandbLogger(keras.callbacks.Callback):
    """Log epoch metrics, the learning rate and sample images to Weights & Biases.

    ``wandb`` is imported only when a run starts. The run starts at the beginning of ``fit``
    (unless already started) and finishes at its end; to finish it also when ``fit`` raises, use
    the logger as a context manager::

        with WandbLogger(project="tfjetflows", run_dir=run.path, config=cfg) as wb:
            model.fit(..., callbacks=[wb])

    Args:
        project: the W&B project.
        config: the run config shown in W&B.
        run_dir: the folder W&B writes into (``run_dir/wandb/...``).
        mode: ``"auto"``, ``"online"``, ``"offline"`` or ``"disabled"`` (see
            :func:`resolve_wandb_mode`).
        name: the run's display name.
        sample_images_fn: called once per epoch; returns an image array (``(H, W)``,
            ``(H, W, C)``, or a batch ``(N, H, W[, C])`` logged as N images) or a matplotlib
            figure (closed after logging). Logged as ``samples``.
        console: W&B's console capture; ``"off"`` by default since the run folder's
            ``output.log`` already holds the console.
    """

    def __init__(
        self,
        project: str,
        *,
        config: Mapping[str, Any] | None = None,
        run_dir: str | Path | None = None,
        mode: str = "auto",
        name: str | None = None,
        sample_images_fn: Callable[[], Any] | None = None,
        console: str = "off",
    ) -> None:
        super().__init__()
        if mode not in _WANDB_MODES:
            raise ValueError(f"wandb mode must be one of {', '.join(_WANDB_MODES)}; got {mode!r}")
        self.project = project
        self.config = dict(config or {})
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.mode = mode
        self.name = name
        self.sample_images_fn = sample_images_fn
        self.console = console
        self.run: Any = None

    def start(self) -> Any:
        """Start the W&B run if it is not running; return it."""
        if self.run is not None:
            return self.run
        import wandb

        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=self.project,
            config=self.config,
            dir=str(self.run_dir) if self.run_dir is not None else None,
            mode=resolve_wandb_mode(self.mode),
            name=self.name,
            settings=wandb.Settings(console=self.console),
        )
        return self.run

    def finish(self, exit_code: int = 0) -> None:
        """Finish the W&B run (if one is running)."""
        if self.run is not None:
            run, self.run = self.run, None
            run.finish(exit_code=exit_code)

    def __enter__(self) -> WandbLogger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.finish(exit_code=0 if exc_type is None else 1)

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:  # noqa: D102
        self.start()

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:  # noqa: D102
        import wandb

        record: dict[str, Any] = {
            k: float(v) for k, v in (logs or {}).items() if isinstance(v, int | float | np.number)
        }
        record.setdefault("learning_rate", current_learning_rate(self.model))
        record["epoch"] = epoch + 1
        if self.sample_images_fn is not None:
            record["samples"] = _to_wandb_images(wandb, self.sample_images_fn())
        self.run.log(record, step=epoch + 1)

    def on_train_end(self, logs: Mapping[str, Any] | None = None) -> None:  # noqa: D102
        self.finish()


def _to_wandb_images(wandb: Any, images: Any) -> Any:
    """Wrap an array (one image or a batch) or a matplotlib figure as ``wandb.Image`` (s)."""
    if hasattr(images, "savefig"):
        import matplotlib.pyplot as plt

        try:
            return wandb.Image(images)
        finally:
            plt.close(images)
    array = np.asarray(images)
    if array.ndim == 4 or (array.ndim == 3 and array.shape[-1] not in (1, 3, 4)):
        return [wandb.Image(image) for image in array]
    return wandb.Image(array)


class TrainingSpeed(keras.callbacks.Callback):
    """Measure training steps per second, epoch by epoch, without per-step work.

    An epoch's training time runs from ``on_epoch_begin`` to the start of its validation (or to
    its end without validation), so validation is not counted. The first epoch of a process
    includes tracing and compilation; :meth:`summary` reports the median of the later epochs
    when there are any.
    """

    def __init__(self) -> None:
        super().__init__()
        self.epoch_seconds: list[float] = []
        self._start: float | None = None

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:  # noqa: D102
        self._start = time.perf_counter()

    def _stop(self) -> None:
        if self._start is not None:
            self.epoch_seconds.append(time.perf_counter() - self._start)
            self._start = None

    def on_test_begin(self, logs: Mapping[str, Any] | None = None) -> None:  # noqa: D102
        self._stop()

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:  # noqa: D102
        self._stop()

    def summary(self, steps_per_epoch: int, batch_size: int) -> dict[str, Any]:
        """Steps/s and jets/s (median over epochs after the first, if any) and epoch times."""
        if not self.epoch_seconds:
            return {}
        timed = self.epoch_seconds[1:] or self.epoch_seconds
        seconds = float(np.median(timed))
        return {
            "steps_per_second": steps_per_epoch / seconds,
            "jets_per_second": steps_per_epoch * batch_size / seconds,
            "steps_per_epoch": steps_per_epoch,
            "batch_size": batch_size,
            "epoch_seconds": self.epoch_seconds,
            "includes_tracing": len(self.epoch_seconds) == 1,
        }
