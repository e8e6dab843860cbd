"""The ``tf.data`` input pipeline: stream, select, split, encode, shuffle and batch jets.

Jets stream from Parquet through the selection and the representation's ``encode`` inside a
Python generator; batches are formed there in numpy and handed to ``tf.data`` with prefetch.

Reproducibility is by construction, not by luck:

- the train/validation split of a jet depends only on ``(seed, file position, row)``, never on
  batch sizes or on which other jets passed the selection;
- epoch ``e`` uses its own generator ``(seed, e)`` for the file order, the shuffle buffer and
  the dequantization noise, and ends on a batch boundary, so a run resumed at epoch ``e`` sees
  exactly the batches an uninterrupted run would have seen;
- steps per epoch are known before training: one counting pass over the files (the selection
  is applied while streaming, and no pixel data is kept);
- ``data.max_jets`` keeps the first ``max_jets`` selected jets in file order, the same jets in
  every epoch (training and validation together never exceed it).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tfjetflows.config import ConfigError, DataConfig, SelectionConfig
from tfjetflows.data.cache import JetCache
from tfjetflows.data.reader import ReadStats, validate_files
from tfjetflows.data.representations import Representation
from tfjetflows.data.schema import DataError
from tfjetflows.data.selection import SelectionStats, iter_selected

__all__ = [
    "CONDITIONS",
    "PT_REFERENCE",
    "DataSplit",
    "JetDatasets",
    "build_datasets",
    "encode_conditions",
    "iter_encoded",
    "scan_split",
]

log = logging.getLogger("tfjetflows.data")

CONDITIONS = ("y", "pt")
PT_REFERENCE = 100.0


def encode_conditions(columns: Mapping[str, np.ndarray], names: Sequence[str]) -> np.ndarray:
    """Return the conditioning vector [N, len(names)] of each jet.

    ``y`` is used as is (0 quark, 1 gluon); ``pt`` as ``log(pt / 100 GeV)`` so it is of order
    one. The exported model applies the same transform (:data:`PT_REFERENCE`).
    """
    n = len(columns["y"])
    parts = [
        np.log(np.asarray(columns[name], np.float64) / PT_REFERENCE)
        if name == "pt"
        else np.asarray(columns[name], np.float64)
        for name in names
    ]
    if not parts:
        return np.zeros((n, 0), np.float32)
    return np.stack(parts, axis=-1).astype(np.float32)


def _check_conditions(names: Sequence[str]) -> None:
    for name in names:
        if name not in CONDITIONS:
            raise ConfigError(
                f"data.conditions: unknown condition {name!r}; known: {', '.join(CONDITIONS)}"
            )


def _validation_flags(seed: int, file_position: int, n_rows: int, fraction: float) -> np.ndarray:
    """Return which rows of one file belong to the validation split."""
    rng = np.random.default_rng([seed, 7919, file_position])
    return rng.random(n_rows) < fraction


@dataclass
class DataSplit:
    """What one counting pass over the files found."""

    paths: list[Path]
    rows_per_file: list[int]
    scanned: int = 0
    kept: int = 0
    train: int = 0
    validation: int = 0
    sample: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    scalars: dict[str, np.ndarray] = field(default_factory=dict)
    bad_jets_skipped: int = 0
    row_limits: list[int] | None = None
    """With ``data.max_jets``: per file, only rows below this are used (None: all rows)."""
    cache: JetCache | None = None
    """Every kept jet in compact form, when they fit in ``data.cache_max_mb`` (else None)."""

    def condition_context(self, names: Sequence[str]) -> np.ndarray:
        """Encoded conditions [M, len(names)] of the sampled training jets (model inputs)."""
        if not names:
            return np.zeros((len(self.sample), 0), np.float32)
        return encode_conditions(self.scalars, names)

    def condition_sample(self, names: Sequence[str]) -> np.ndarray:
        """Raw condition values [M, len(names)] of the sampled training jets (pt in GeV)."""
        if not names:
            return np.zeros((len(self.sample), 0), np.float32)
        return np.stack([self.scalars[name] for name in names], axis=-1).astype(np.float32)


def _selected_with_split(
    paths: Sequence[Path],
    rows_per_file: Sequence[int],
    selection: SelectionConfig,
    data: DataConfig,
    seed: int,
    *,
    want_validation: bool,
    file_order: Sequence[int] | None = None,
    stats: SelectionStats | None = None,
    read_stats: ReadStats | None = None,
    row_limits: Sequence[int] | None = None,
) -> Iterator[Any]:
    """Yield selected batches restricted to one side of the train/validation split.

    ``row_limits`` (see :attr:`DataSplit.row_limits`) restricts each file to its first rows.
    """
    position = {path: k for k, path in enumerate(paths)}
    order = list(file_order) if file_order is not None else list(range(len(paths)))
    if row_limits is not None:
        order = [k for k in order if row_limits[k] > 0]
    flags = {
        k: _validation_flags(seed, k, rows_per_file[k], data.validation_fraction) for k in order
    }
    ordered = [paths[k] for k in order]
    for batch in iter_selected(
        ordered,
        selection,
        on_bad_jet=data.on_bad_jet,
        stats=stats,
        read_stats=read_stats,
    ):
        k = position[batch.file]
        in_validation = flags[k][batch.rows]
        keep = in_validation if want_validation else ~in_validation
        if row_limits is not None:
            keep &= batch.rows < row_limits[k]
        if keep.any():
            yield batch, keep


def _take(batch: Any, keep: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    scalars = {"pt": batch.pt[keep], "m0": batch.m0[keep], "y": batch.y[keep]}
    return batch.images[keep], scalars


def scan_split(
    paths: Sequence[Path],
    selection: SelectionConfig,
    representation: Representation,
    data: DataConfig,
    seed: int,
    *,
    sample_size: int = 4096,
) -> DataSplit:
    """Count the kept jets of each split and encode a sample of training jets.

    The sample feeds the preprocessing's standardization. Raises ``DataError`` when no jet
    passes the selection (a full pass is made, then it stops: it never loops forever).
    """
    if data.max_jets is not None and data.max_jets < 1:
        raise ConfigError(f"data.max_jets must be a positive integer or null, got {data.max_jets}")
    if data.cache_max_mb < 0:
        raise ConfigError(f"data.cache_max_mb must be >= 0, got {data.cache_max_mb}")
    rows = validate_files(paths)
    split = DataSplit(paths=list(paths), rows_per_file=list(rows))
    cache = JetCache(max_bytes=data.cache_max_mb * 2**20) if data.cache_max_mb else None
    stats, read_stats = SelectionStats(), ReadStats()
    rng = np.random.default_rng([seed, 104729])
    samples: list[np.ndarray] = []
    scalar_samples: list[dict[str, np.ndarray]] = []
    collected = 0
    position = {path: k for k, path in enumerate(paths)}
    flags = [
        _validation_flags(seed, k, rows[k], data.validation_fraction) for k in range(len(paths))
    ]
    for batch in iter_selected(
        list(paths), selection, on_bad_jet=data.on_bad_jet, stats=stats, read_stats=read_stats
    ):
        in_validation = flags[position[batch.file]][batch.rows]
        room = None if data.max_jets is None else data.max_jets - split.train - split.validation
        if room is not None and len(batch) >= room:  # the cap is reached in this batch
            last = position[batch.file]
            split.row_limits = [
                n if k < last else int(batch.rows[room - 1]) + 1 if k == last else 0
                for k, n in enumerate(rows)
            ]
            batch = batch.take(np.arange(len(batch)) < room)
            in_validation = in_validation[:room]
        split.validation += int(in_validation.sum())
        train = ~in_validation
        split.train += int(train.sum())
        parts = None
        if cache is not None:
            images, scalars = _take(batch, np.ones(len(batch), bool))
            parts = representation.extract(images, scalars)
            if not cache.add(parts, scalars, in_validation):
                log.info(
                    "data: the selected jets need more than data.cache_max_mb=%d MB in memory; "
                    "every epoch streams from Parquet",
                    data.cache_max_mb,
                )
                cache = None
        if collected < sample_size and train.any():
            images, scalars = _take(batch, train)
            if parts is not None:
                encoded = representation.encode_extracted(
                    {k: v[train] for k, v in parts.items()}, rng
                )
            else:
                encoded = representation.encode(images, scalars, rng)
            samples.append(encoded[: sample_size - collected])
            scalar_samples.append({k: v[: len(samples[-1])] for k, v in scalars.items()})
            collected += len(samples[-1])
        if split.row_limits is not None:
            break
    split.scanned, split.kept = stats.scanned, stats.kept
    split.cache = cache.finish() if cache is not None else None
    split.bad_jets_skipped = read_stats.bad_jets_skipped
    if split.train == 0:
        raise DataError(
            f"no training jets: {split.kept} jets passed the selection in {len(paths)} files "
            f"and all went to validation (validation_fraction={data.validation_fraction})"
        )
    split.sample = np.concatenate(samples).astype(np.float32)
    split.scalars = {
        key: np.concatenate([part[key] for part in scalar_samples]) for key in scalar_samples[0]
    }
    return split


def iter_encoded(
    split: DataSplit,
    selection: SelectionConfig,
    representation: Representation,
    data: DataConfig,
    seed: int,
    conditions: Sequence[str],
    *,
    epoch: int | None,
    batch_size: int,
) -> Iterator[dict[str, np.ndarray]]:
    """Yield batches ``{"x": [B, D], "context": [B, C]}`` for one epoch of one split.

    ``epoch=None`` means validation: all validation jets in file order, last batch partial,
    the same every time. Otherwise training for that epoch: files in a shuffled order, a
    shuffle buffer of ``data.shuffle_buffer`` jets, and exactly ``train // batch_size`` full
    batches (the remainder is dropped so epochs end on a batch boundary).
    """
    if split.cache is not None:
        yield from _iter_cached(split.cache, representation, seed, conditions, epoch, batch_size)
        return
    training = epoch is not None
    rng = np.random.default_rng([seed, 15485863, 0 if epoch is None else epoch + 1])
    order = rng.permutation(len(split.paths)) if training else np.arange(len(split.paths))
    limit = split.train if training else split.validation
    steps = limit // batch_size if training else -(-limit // batch_size)
    buffer_x: list[np.ndarray] = []
    buffer_c: list[np.ndarray] = []
    buffered = emitted_steps = seen = 0
    capacity = max(data.shuffle_buffer, batch_size) if training else batch_size

    def drain(final: bool) -> Iterator[dict[str, np.ndarray]]:
        nonlocal buffer_x, buffer_c, buffered, emitted_steps
        x = np.concatenate(buffer_x)
        c = np.concatenate(buffer_c)
        if training:
            perm = rng.permutation(len(x))
            x, c = x[perm], c[perm]
        full = len(x) // batch_size
        for k in range(full):
            if emitted_steps >= steps:
                break
            sl = slice(k * batch_size, (k + 1) * batch_size)
            emitted_steps += 1
            yield {"x": x[sl], "context": c[sl]}
        rest = slice(full * batch_size, None)
        buffer_x, buffer_c = [x[rest]], [c[rest]]
        buffered = len(buffer_x[0])
        if final and not training and buffered and emitted_steps < steps:
            emitted_steps += 1
            yield {"x": buffer_x[0], "context": buffer_c[0]}

    for batch, keep in _selected_with_split(
        split.paths,
        split.rows_per_file,
        selection,
        data,
        seed,
        want_validation=not training,
        file_order=order,
        row_limits=split.row_limits,
    ):
        images, scalars = _take(batch, keep)
        if seen + len(images) > limit:
            cut = limit - seen
            images = images[:cut]
            scalars = {k: v[:cut] for k, v in scalars.items()}
        seen += len(images)
        buffer_x.append(representation.encode(images, scalars, rng))
        buffer_c.append(encode_conditions(scalars, conditions))
        buffered += len(images)
        if buffered >= capacity:
            yield from drain(final=False)
        if emitted_steps >= steps or seen >= limit:
            break
    if buffered:
        yield from drain(final=True)


def _iter_cached(
    cache: JetCache,
    representation: Representation,
    seed: int,
    conditions: Sequence[str],
    epoch: int | None,
    batch_size: int,
) -> Iterator[dict[str, np.ndarray]]:
    """:func:`iter_encoded` from the in-memory cache: a full shuffle per training epoch."""
    rng = np.random.default_rng([seed, 15485863, 0 if epoch is None else epoch + 1])
    rows = cache.indices(validation=epoch is None)
    if epoch is not None:
        rows = rng.permutation(rows)[: len(rows) // batch_size * batch_size]
    for start in range(0, len(rows), batch_size):
        parts, scalars = cache.take(rows[start : start + batch_size])
        yield {
            "x": representation.encode_extracted(parts, rng),
            "context": encode_conditions(scalars, conditions),
        }


@dataclass
class JetDatasets:
    """Training and validation datasets with their known step counts."""

    train: Any
    validation: Any | None
    train_steps: int
    validation_steps: int
    split: DataSplit
    conditions: list[str]
    dim: int

    def summary(self) -> dict[str, int]:
        """Counts of scanned, kept, training and validation jets."""
        return {
            "files": len(self.split.paths),
            "scanned": self.split.scanned,
            "kept": self.split.kept,
            "train": self.split.train,
            "validation": self.split.validation,
            "bad_jets_skipped": self.split.bad_jets_skipped,
        }


def build_datasets(
    paths: Sequence[Path],
    selection: SelectionConfig,
    representation: Representation,
    data: DataConfig,
    seed: int,
    *,
    initial_epoch: int = 0,
    split: DataSplit | None = None,
) -> JetDatasets:
    """Build the ``tf.data`` training (repeating) and validation (finite) datasets.

    Args:
        paths: Parquet files (already resolved).
        selection: which jets to keep.
        representation: how a jet becomes a vector.
        data: batching, split and shuffle settings.
        seed: the run's seed.
        initial_epoch: the first epoch the training dataset yields (for resumed runs).
        split: a previous :func:`scan_split` result, to skip the counting pass.

    Returns:
        The datasets, their steps per epoch and the counting pass's figures.
    """
    import tensorflow as tf

    _check_conditions(data.conditions)
    if data.batch_size <= 0:
        raise ConfigError(f"data.batch_size must be positive, got {data.batch_size}")
    if not 0.0 <= data.validation_fraction < 1.0:
        raise ConfigError(
            f"data.validation_fraction must be in [0, 1), got {data.validation_fraction}"
        )
    if split is None:
        split = scan_split(paths, selection, representation, data, seed)
    batch_size = data.batch_size
    if split.train < batch_size:
        raise DataError(
            f"only {split.train} training jets pass the selection, fewer than one batch of "
            f"{batch_size}; lower data.batch_size or use more data"
        )
    conditions = list(data.conditions)
    signature = {
        "x": tf.TensorSpec((None, representation.dim), tf.float32),
        "context": tf.TensorSpec((None, len(conditions)), tf.float32),
    }

    def train_batches() -> Iterator[dict[str, np.ndarray]]:
        epoch = initial_epoch
        while True:
            yield from iter_encoded(
                split, selection, representation, data, seed, conditions,
                epoch=epoch, batch_size=batch_size,
            )
            epoch += 1

    def validation_batches() -> Iterator[dict[str, np.ndarray]]:
        yield from iter_encoded(
            split, selection, representation, data, seed, conditions,
            epoch=None, batch_size=batch_size,
        )

    from tfjetflows.training.distribute import dataset_options

    # Generator datasets cannot be sharded by file: multi-worker training shards by data.
    options = dataset_options()
    train = tf.data.Dataset.from_generator(train_batches, output_signature=signature)
    train = train.prefetch(tf.data.AUTOTUNE).with_options(options)
    validation = None
    validation_steps = 0
    if split.validation > 0:
        validation = (
            tf.data.Dataset.from_generator(validation_batches, output_signature=signature)
            .prefetch(tf.data.AUTOTUNE)
            .with_options(options)
        )
        validation_steps = -(-split.validation // batch_size)
    log.info(
        "data: %d files, %d jets scanned, %d kept (%d train, %d validation)",
        len(split.paths), split.scanned, split.kept, split.train, split.validation,
    )
    return JetDatasets(
        train=train,
        validation=validation,
        train_steps=split.train // batch_size,
        validation_steps=validation_steps,
        split=split,
        conditions=conditions,
        dim=representation.dim,
    )
