"""Write generated jets to DeepFalcon-schema Parquet files (the API behind ``tfjf make-data``).

Jets are streamed chunk by chunk through :func:`tfjetflows.data.schema.open_jet_writer`, so memory
stays bounded by one chunk of images whatever the number of jets, and each file appears atomically
(written to a temporary file, renamed on success).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from tfjetflows.data.schema import open_jet_writer

__all__ = ["GENERATORS", "file_seed", "make_data", "split_counts"]

GENERATORS = ("synthetic", "pythia")

_CHUNK = 256

JetChunks = Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]


def _generator(name: str) -> Callable[..., JetChunks]:
    """Return the chunked generator function called ``name`` (imported lazily)."""
    if name == "synthetic":
        from tfjetflows.data.synthetic import generate_synthetic

        return generate_synthetic
    from tfjetflows.data.pythia import generate_pythia, require_extra

    require_extra()  # fail before any file is opened
    return generate_pythia


def split_counts(jets: int, files: int) -> list[int]:
    """Split ``jets`` over ``files`` as evenly as possible (the first files get one more)."""
    base, extra = divmod(jets, files)
    return [base + (k < extra) for k in range(files)]


def file_seed(seed: int, index: int) -> int:
    """Return the independent seed of file ``index`` derived from the run ``seed``.

    The value fits in ``[0, 900_000_000)``, the range Pythia's ``Random:seed`` accepts.
    """
    state = np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0]
    return int(state % 900_000_000)


def make_data(
    out_dir: str | os.PathLike,
    *,
    jets: int,
    seed: int,
    files: int = 1,
    generator: str = "synthetic",
    row_group_size: int = 1,
) -> list[Path]:
    """Generate ``jets`` jets and write them to ``out_dir/jets-{k:03d}.parquet``.

    Args:
        out_dir: output folder (created if missing).
        jets: total number of jets, split as evenly as possible over the files.
        seed: run seed; file ``k`` uses ``file_seed(seed, k)``, so the same arguments give
            byte-identical images.
        files: number of files.
        generator: one of ``GENERATORS``.
        row_group_size: rows per Parquet row group; 1 (the default) matches the public files.

    Returns:
        The paths written, in order.

    Raises:
        ValueError: on a non-positive ``jets``, ``files`` or ``row_group_size``, more files than
            jets, or an unknown generator.
        MissingExtraError: ``generator="pythia"`` without the ``pythia`` extra installed.
    """
    if generator not in GENERATORS:
        known = ", ".join(GENERATORS)
        raise ValueError(f"unknown generator {generator!r}; expected one of {known}")
    if jets <= 0:
        raise ValueError(f"jets must be positive, got {jets}")
    if files <= 0:
        raise ValueError(f"files must be positive, got {files}")
    if files > jets:
        raise ValueError(f"files ({files}) must not exceed jets ({jets}): every file needs a jet")
    if row_group_size <= 0:
        raise ValueError(f"row_group_size must be positive, got {row_group_size}")
    generate = _generator(generator)
    out = Path(out_dir)
    paths = []
    for k, count in enumerate(split_counts(jets, files)):
        path = out / f"jets-{k:03d}.parquet"
        with open_jet_writer(path, row_group_size=row_group_size) as write:
            for images, pt, m0, y in generate(count, file_seed(seed, k), chunk=_CHUNK):
                write(images, pt, m0, y)
        paths.append(path)
    return paths
