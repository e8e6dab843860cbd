"""The base class of errors caused by user input (files, configs, options).

The CLI turns any :class:`UserError` into one clear line and a non-zero exit; anything else is
a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["ModelError", "UserError"]


class UserError(Exception):
    """An error in what the user gave us; the message names what is wrong and where."""


class ModelError(UserError):
    """A model path or request that cannot be served (missing, wrong kind, wrong conditions)."""
