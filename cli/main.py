"""The ``tfjf`` command group.

Commands parse options, load the config and call the tfjetflows API. TensorFlow is imported
inside the commands that need it, so ``tfjf --help`` and ``tfjf --version`` stay instant.
"""

from __future__ import annotations

import os

import click

from cli import data_commands, eval_commands, model_commands
from tfjetflows import __version__

__all__ = ["main"]

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tfjf")
def main() -> None:
    """Normalizing flows (MAF, BNAF) as fast detector simulation of calorimeter jet images."""


for _command in (*data_commands.COMMANDS, *model_commands.COMMANDS, *eval_commands.COMMANDS):
    main.add_command(_command)
