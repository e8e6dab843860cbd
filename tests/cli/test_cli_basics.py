import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import main
from tfjetflows import __version__


def test_version_and_help():
    runner = CliRunner()
    result = runner.invoke(main, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ("make-data", "inspect"):
        assert command in result.output


def test_help_does_not_import_tensorflow():
    code = (
        "import sys; from click.testing import CliRunner; from cli.main import main; "
        "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0; "
        "print('tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _installed_tfjf():
    candidate = Path(sys.executable).parent / "tfjf"
    return str(candidate) if candidate.exists() else shutil.which("tfjf")


@pytest.mark.skipif(_installed_tfjf() is None, reason="tfjf script not installed")
def test_installed_script_answers_version():
    out = subprocess.run([_installed_tfjf(), "--version"], capture_output=True, text=True)
    assert out.returncode == 0
    assert out.stdout.strip() == f"tfjf, version {__version__}"
