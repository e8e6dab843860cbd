"""The run folder (``runs/NAME/``) that holds everything about one training run.

Layout::

    runs/NAME/
        config.yaml          the resolved config (written atomically)
        requirements.txt     installed distributions, ``name==version``
        output.log           everything printed to stdout/stderr during the run
        history.csv          per-epoch metrics (``keras.callbacks.CSVLogger``)
        checkpoints/         ``last.weights.h5`` / ``best.weights.h5``
        plots/               figures
        saved_model/         the exported SavedModel
        run.lock             held (``fcntl.flock``) while a fit runs

A new run never overwrites an existing, non-empty folder; continuing one needs ``resume=True``.
This module does not import TensorFlow.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import os
import sys
import threading
import traceback
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import yaml

from tfjetflows.atomic import atomic_write_text
from tfjetflows.errors import UserError

__all__ = [
    "RunDirError",
    "RunDirectory",
    "installed_requirements",
]


class RunDirError(UserError):
    """The run folder cannot be used: it exists, is missing, or is locked by another fit."""


def installed_requirements() -> list[str]:
    """Return the installed distributions as sorted ``name==version`` lines (like pip freeze)."""
    seen: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if not name:
            continue
        # The first one found on sys.path wins, as it does for imports.
        seen.setdefault(name.lower(), f"{name}=={dist.version}")
    return [seen[key] for key in sorted(seen)]


class _Tee:
    """A text stream that writes to the console stream and to a log file."""

    def __init__(self, console: IO[str], log: IO[str], lock: threading.Lock) -> None:
        self._console = console
        self._log = log
        self._lock = lock

    def write(self, text: str) -> int:
        with self._lock:
            self._console.write(text)
            if not self._log.closed:
                self._log.write(text)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        with self._lock:
            self._console.flush()
            if not self._log.closed:
                self._log.flush()

    def isatty(self) -> bool:
        return self._console.isatty()

    def __getattr__(self, name: str) -> Any:
        # encoding, errors, fileno, ... come from the console stream.
        return getattr(self._console, name)


class RunDirectory:
    """One run folder and the paths inside it.

    Use :meth:`create` to make (or, with ``resume=True``, reopen) a folder; the constructor
    alone only names it.

    Example:
        >>> import tempfile
        >>> run = RunDirectory.create(tempfile.mkdtemp() + "/runs/demo", resume=False)
        >>> run.checkpoints_dir.is_dir()
        True
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def create(cls, path: str | Path, *, resume: bool) -> RunDirectory:
        """Make a new run folder, or reopen an existing one to resume it.

        Args:
            path: the run folder, e.g. ``runs/NAME``.
            resume: reuse an existing folder (which must exist) instead of making a new one.

        Returns:
            The :class:`RunDirectory`, with ``checkpoints/`` and ``plots/`` present.

        Raises:
            RunDirError: a new run asked for an existing non-empty folder (never overwritten),
                a resume asked for a missing folder, or the path is not a folder.
        """
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise RunDirError(f"run folder {path} exists and is not a folder")
        if resume:
            if not path.is_dir():
                raise RunDirError(
                    f"run folder {path} does not exist, so there is nothing to resume; "
                    "drop --resume to start a new run there"
                )
        elif path.is_dir() and any(path.iterdir()):
            raise RunDirError(
                f"run folder {path} already exists and is not empty; use --resume to continue "
                "that run, or choose another --run-dir (nothing is overwritten)"
            )
        run = cls(path)
        for folder in (run.path, run.checkpoints_dir, run.plots_dir):
            folder.mkdir(parents=True, exist_ok=True)
        return run

    # ---- paths -------------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        """``config.yaml``: the resolved config."""
        return self.path / "config.yaml"

    @property
    def requirements_path(self) -> Path:
        """``requirements.txt``: the installed distributions."""
        return self.path / "requirements.txt"

    @property
    def output_log(self) -> Path:
        """``output.log``: the console output of the run."""
        return self.path / "output.log"

    @property
    def history_csv(self) -> Path:
        """``history.csv``: per-epoch metrics, for ``keras.callbacks.CSVLogger``."""
        return self.path / "history.csv"

    @property
    def checkpoints_dir(self) -> Path:
        """``checkpoints/``: training checkpoints."""
        return self.path / "checkpoints"

    @property
    def plots_dir(self) -> Path:
        """``plots/``: figures."""
        return self.path / "plots"

    @property
    def saved_model_dir(self) -> Path:
        """``saved_model/``: the exported SavedModel (made by the exporter, not here)."""
        return self.path / "saved_model"

    @property
    def lock_path(self) -> Path:
        """``run.lock``: the lock file held while a fit runs."""
        return self.path / "run.lock"

    # ---- lock --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[RunDirectory]:
        """Hold the run folder's lock for the duration of the ``with`` block.

        The lock is ``fcntl.flock`` on ``run.lock``, taken without waiting. The kernel drops it
        when the holder exits, however it exits, so a lock file left by a killed process does not
        block the next fit.

        Yields:
            This run directory.

        Raises:
            RunDirError: another process (or another ``locked`` block) holds the lock; the
                message names the folder and the holder's pid.
        """
        handle = open(self.lock_path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise RunDirError(
                f"run folder {self.path} is locked by a running fit (pid {holder}); wait for "
                "it to finish or choose another --run-dir"
            ) from None
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            yield self
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            handle.close()

    # ---- files -------------------------------------------------------------------------------

    def write_config(self, config: Mapping[str, Any]) -> Path:
        """Write the resolved config to ``config.yaml`` (``yaml.safe_dump``, atomically).

        Args:
            config: plain data (dicts, lists, strings, numbers), e.g. from
                :func:`tfjetflows.config.config_to_dict`.

        Returns:
            The path written.
        """
        text = yaml.safe_dump(dict(config), sort_keys=False, default_flow_style=False)
        return atomic_write_text(self.config_path, text)

    def write_requirements(self) -> Path:
        """Write the installed distributions to ``requirements.txt`` (``name==version``, sorted).

        Returns:
            The path written.
        """
        return atomic_write_text(self.requirements_path, "\n".join(installed_requirements()) + "\n")

    @contextlib.contextmanager
    def tee_output(self) -> Iterator[Path]:
        """Copy everything written to ``sys.stdout``/``sys.stderr`` into ``output.log``.

        The console still shows it all. Python-level only: Keras progress bars, prints and
        warnings are captured; output that C++ writes straight to the file descriptors is not.
        The log is appended to (a resumed run continues it). An exception leaving the block is
        written to the log as a traceback.

        Yields:
            The log file path.
        """
        log = open(self.output_log, "a", encoding="utf-8")
        lock = threading.Lock()
        saved = sys.stdout, sys.stderr
        sys.stdout = _Tee(saved[0], log, lock)  # type: ignore[assignment]
        sys.stderr = _Tee(saved[1], log, lock)  # type: ignore[assignment]
        try:
            yield self.output_log
        except BaseException as err:
            log.write("".join(traceback.format_exception(err)))
            raise
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            sys.stdout, sys.stderr = saved
            log.close()
