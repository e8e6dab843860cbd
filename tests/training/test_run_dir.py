"""Tests of the run folder: refuse-to-overwrite, resume, lock, config/requirements, output tee."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import textwrap

import pytest
import yaml

from tfjetflows.errors import UserError
from tfjetflows.training import run_dir as run_dir_module
from tfjetflows.training.run_dir import (
    RunDirectory,
    RunDirError,
    atomic_write_text,
    installed_requirements,
)

# ---- create / resume --------------------------------------------------------------------------


@pytest.mark.parametrize("existing", ["missing", "empty"])
def test_create_makes_a_new_run_folder(tmp_path, existing):
    path = tmp_path / "runs" / "demo"
    if existing == "empty":
        path.mkdir(parents=True)
    run = RunDirectory.create(path, resume=False)
    assert run.path == path
    assert sorted(p.name for p in path.iterdir()) == ["checkpoints", "plots"]


def test_create_refuses_an_existing_run_without_resume(tmp_path):
    path = tmp_path / "demo"
    path.mkdir()
    (path / "history.csv").write_text("epoch,loss\n0,1.0\n")
    with pytest.raises(RunDirError) as info:
        RunDirectory.create(path, resume=False)
    message = str(info.value)
    assert str(path) in message
    assert "--resume" in message and "--run-dir" in message
    assert isinstance(info.value, UserError)
    assert (path / "history.csv").read_text() == "epoch,loss\n0,1.0\n"
    assert sorted(p.name for p in path.iterdir()) == ["history.csv"]  # nothing added either


def test_resume_reuses_an_existing_folder(tmp_path):
    path = tmp_path / "demo"
    path.mkdir()
    (path / "history.csv").write_text("kept")
    run = RunDirectory.create(path, resume=True)
    assert run.history_csv.read_text() == "kept"
    assert run.checkpoints_dir.is_dir() and run.plots_dir.is_dir()


def test_resume_of_a_missing_folder_is_an_error(tmp_path):
    path = tmp_path / "nowhere"
    with pytest.raises(RunDirError, match="nowhere does not exist"):
        RunDirectory.create(path, resume=True)
    assert not path.exists()


@pytest.mark.parametrize("resume", [False, True])
def test_a_file_is_not_a_run_folder(tmp_path, resume):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(RunDirError, match="is not a folder"):
        RunDirectory.create(path, resume=resume)


def test_paths(tmp_path):
    run = RunDirectory(tmp_path)
    names = {
        "config_path": "config.yaml",
        "requirements_path": "requirements.txt",
        "output_log": "output.log",
        "history_csv": "history.csv",
        "checkpoints_dir": "checkpoints",
        "plots_dir": "plots",
        "saved_model_dir": "saved_model",
        "lock_path": "run.lock",
    }
    assert {attr: getattr(run, attr) for attr in names} == {
        attr: tmp_path / name for attr, name in names.items()
    }


# ---- lock -------------------------------------------------------------------------------------


def test_a_second_fit_on_a_locked_folder_fails_at_once(tmp_path):
    run = RunDirectory.create(tmp_path / "demo", resume=False)
    with run.locked():
        assert run.lock_path.read_text().strip() == str(os.getpid())
        with pytest.raises(RunDirError) as info:
            with RunDirectory(run.path).locked():
                pass
        assert f"is locked by a running fit (pid {os.getpid()})" in str(info.value)
        assert str(run.path) in str(info.value)
    with RunDirectory(run.path).locked():  # released at the end of the block
        pass


def test_the_lock_is_released_when_the_fit_raises(tmp_path):
    run = RunDirectory.create(tmp_path / "demo", resume=False)
    with pytest.raises(ZeroDivisionError), run.locked():
        1 / 0  # noqa: B018
    with run.locked():
        pass


HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from tfjetflows.training.run_dir import RunDirectory
    with RunDirectory(sys.argv[1]).locked():
        print("locked", flush=True)
        time.sleep(120)
    """
)


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path):
    run = RunDirectory.create(tmp_path / "demo", resume=False)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(run.path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirError, match=rf"locked by a running fit \(pid {holder.pid}\)"):
            with run.locked():
                pass
    finally:
        holder.kill()  # SIGKILL: no clean-up code runs in the holder
        holder.wait(timeout=30)
        holder.stdout.close()
    assert run.lock_path.read_text().strip() == str(holder.pid)  # the stale lock file
    with run.locked():
        assert run.lock_path.read_text().strip() == str(os.getpid())


# ---- files ------------------------------------------------------------------------------------


def test_write_config_round_trips(tmp_path):
    run = RunDirectory.create(tmp_path / "demo", resume=False)
    config = {
        "seed": 3,
        "model": {"kind": "maf", "hidden_units": [64, 64]},
        "data": {"files": ["a.parquet"], "max_jets": None},
    }
    path = run.write_config(config)
    assert path == run.config_path
    assert yaml.safe_load(path.read_text()) == config
    assert list(config) == list(yaml.safe_load(path.read_text()))  # key order kept
    assert sorted(p.name for p in run.path.iterdir()) == ["checkpoints", "config.yaml", "plots"]


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    target = tmp_path / "config.yaml"
    atomic_write_text(target, "old: 1\n")

    def broken(src, dst):
        raise OSError("simulated kill before the rename")

    monkeypatch.setattr(run_dir_module.os, "replace", broken)
    with pytest.raises(OSError, match="simulated kill"):
        atomic_write_text(target, "new: 2\n")
    monkeypatch.undo()
    assert target.read_text() == "old: 1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


def test_write_requirements_lists_installed_distributions(tmp_path):
    run = RunDirectory.create(tmp_path / "demo", resume=False)
    lines = run.write_requirements().read_text().splitlines()
    assert lines == installed_requirements()
    assert lines == sorted(lines, key=lambda line: line.split("==")[0].lower())
    assert all(line.count("==") == 1 for line in lines)
    names = [line.split("==")[0].lower() for line in lines]
    assert len(names) == len(set(names))
    for dist in ("keras", "pyyaml", "numpy"):
        version = importlib.metadata.version(dist)
        assert any(line.lower() == f"{dist}=={version}".lower() for line in lines)


# ---- output tee -------------------------------------------------------------------------------


def test_tee_output_copies_console_output_to_the_log(tmp_path, capsys):
    import keras

    run = RunDirectory.create(tmp_path / "demo", resume=False)
    with run.tee_output() as log_path:
        print("hello stdout")
        sys.stderr.write("hello stderr\n")
        bar = keras.utils.Progbar(3, verbose=1)
        for step in range(3):
            bar.update(step + 1, values=[("loss", 0.5)])
    assert log_path == run.output_log
    console = capsys.readouterr()
    log = log_path.read_text()
    assert "hello stdout" in console.out and "hello stdout" in log
    assert "hello stderr" in console.err and "hello stderr" in log
    assert "3/3" in console.out and "3/3" in log and "loss: 0.5000" in log
    print("after the block")
    assert "after the block" not in log_path.read_text()


def test_tee_output_appends_and_records_a_crash(tmp_path, capsys):
    run = RunDirectory.create(tmp_path / "demo", resume=False)
    saved = sys.stdout, sys.stderr
    with run.tee_output():
        print("first run")
    with pytest.raises(RuntimeError, match="boom"), run.tee_output():
        print("second run")
        raise RuntimeError("boom")
    assert (sys.stdout, sys.stderr) == saved
    log = run.output_log.read_text()
    assert log.index("first run") < log.index("second run") < log.index("RuntimeError: boom")
    assert "Traceback" in log
