"""The built-in default data: synthetic jets generated once into a cache folder.

``tfjf fit`` with no ``--data`` trains on these, so a fresh machine needs no download. The cache
lives in ``$TFJF_CACHE`` or ``$XDG_CACHE_HOME/tfjetflows`` (default ``~/.cache/tfjetflows``) and
is written to a temporary folder first, then renamed, so an interrupted generation never leaves
a half data set behind.
"""

from __future__ import annotations

import os
from pathlib import Path

from tfjetflows.atomic import staged_dir

__all__ = ["BUILTIN_FILES", "BUILTIN_JETS", "BUILTIN_SEED", "builtin_data", "cache_root"]

BUILTIN_JETS = 12_000
BUILTIN_FILES = 4
BUILTIN_SEED = 2021


def cache_root() -> Path:
    """Return the folder that holds tfjetflows' caches."""
    if os.environ.get("TFJF_CACHE"):
        return Path(os.environ["TFJF_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tfjetflows"


def builtin_data(
    *, jets: int = BUILTIN_JETS, files: int = BUILTIN_FILES, seed: int = BUILTIN_SEED
) -> Path:
    """Return the folder of the built-in synthetic jets, generating it on first use."""
    from tfjetflows.data.generate import make_data

    target = cache_root() / f"synthetic-{jets}jets-{files}files-seed{seed}"
    if target.is_dir():
        return target
    # two processes may generate at once: the first to finish wins, the other uses its copy
    with staged_dir(target, replace=False) as staging:
        make_data(staging, jets=jets, seed=seed, files=files)
    return target
