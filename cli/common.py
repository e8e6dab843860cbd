"""Shared pieces of the CLI commands: error handling and JSON output."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import click

__all__ = ["echo_json", "user_errors"]


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn :class:`tfjetflows.errors.UserError` into one clear line and exit status 1."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from tfjetflows.errors import UserError

        try:
            return command(*args, **kwargs)
        except UserError as err:
            raise click.ClickException(str(err)) from None

    return wrapper


def echo_json(payload: Any) -> None:
    """Print ``payload`` as indented JSON on stdout."""
    click.echo(json.dumps(payload, indent=2))
