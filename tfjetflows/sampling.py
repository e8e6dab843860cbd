"""Generate jets from an exported SavedModel into DeepFalcon Parquet files.

Only TensorFlow is needed to run the model (``tf.saved_model.load``); this module adds the
checks a user needs (is it a SavedModel, can it sample, does it take these conditions), the
batching that keeps memory flat for any ``n``, the jet-level columns (``pt``, ``m0`` from the
generated images, ``y`` from the condition, or :data:`NO_LABEL` for an unconditional model) and
the atomic Parquet write.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tfjetflows.errors import ModelError

__all__ = ["NO_LABEL", "load_exported", "sample_batches", "sample_to_parquet"]

_INT32_MAX = 2**31 - 1

# The ``y`` written for jets of an unconditional model: not a class (quark 0, gluon 1), and
# finite, so the files read back (the reader refuses NaN labels) and no label selection keeps
# them.
NO_LABEL = -1.0


def load_exported(path: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
    """Load a tfjetflows SavedModel and its metadata, with clear errors for wrong paths."""
    import tensorflow as tf

    from tfjetflows.export import METADATA_FILE, read_metadata

    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such SavedModel folder")
    if not (path / "saved_model.pb").is_file():
        hint = ""
        if (path / "saved_model" / "saved_model.pb").is_file():
            hint = f" (a run folder? its model is {path / 'saved_model'})"
        raise ModelError(f"{path}: not a SavedModel folder, no saved_model.pb{hint}")
    if not (path / "assets" / METADATA_FILE).is_file():
        raise ModelError(f"{path}: a SavedModel, but not one exported by tfjetflows")
    return tf.saved_model.load(str(path)), read_metadata(path)


def _check_request(meta: dict[str, Any], path: Path, y: float | None, pt: float | None) -> None:
    conditions = meta.get("conditions", [])
    if not meta.get("can_sample", True):
        raise ModelError(
            f"{path}: this model only scores jets (density estimation, e.g. BNAF) and cannot "
            "sample; train a MAF to generate jets"
        )
    if (y is not None or pt is not None) and not conditions:
        raise ModelError(
            f"{path}: the model is unconditional; drop --label/--pt (or train with "
            "data.conditions=[y] or [y, pt])"
        )
    if pt is not None and "pt" not in conditions:
        raise ModelError(f"{path}: the model is conditioned on {conditions}, not on pt; drop --pt")
    asked = {"y": y, "pt": pt}
    given = [name for name in conditions if asked[name] is not None]
    if given and len(given) != len(conditions):
        missing = [name for name in conditions if asked[name] is None]
        flags = {"y": "--label", "pt": "--pt"}
        raise ModelError(
            f"{path}: the model is conditioned on {conditions}; also give "
            f"{', '.join(flags[m] for m in missing)}"
        )


def sample_batches(
    module: Any,
    meta: dict[str, Any],
    *,
    n: int,
    seed: int,
    y: float | None = None,
    pt: float | None = None,
    batch_size: int = 1000,
) -> Any:
    """Yield dicts of numpy arrays (``images``, ``vector``, and conditions) batch by batch.

    Batch ``k`` uses the stateless seed ``[seed, k]``, so the jets depend only on ``seed`` and
    ``batch_size``.
    """
    import tensorflow as tf

    if not 0 <= seed <= _INT32_MAX:
        raise ModelError(f"seed must be in [0, {_INT32_MAX}], got {seed}")
    conditional = y is not None or pt is not None
    values = {"y": y, "pt": pt}
    done = 0
    k = 0
    while done < n:
        size = min(batch_size, n - done)
        seed_k = tf.constant([seed, k], tf.int32)
        if conditional:
            args = [tf.constant(values[name], tf.float32) for name in meta["conditions"]]
            out = module.sample_conditional(tf.constant(size, tf.int32), seed_k, *args)
            extra = {name: np.full(size, values[name], np.float32) for name in meta["conditions"]}
        else:
            out = module.sample(tf.constant(size, tf.int32), seed_k)
            extra = {}
        batch = {key: value.numpy() for key, value in out.items()}
        batch.update(extra)
        yield batch
        done += size
        k += 1


def _real_jets(paths: Sequence[str], meta: dict[str, Any], n: int) -> np.ndarray | None:
    """Up to ``n`` real jets from ``paths`` or, if empty, the model's training data."""
    from tfjetflows.data.reader import iter_jet_batches, resolve_paths

    files = list(paths) or list(meta.get("config", {}).get("data", {}).get("files", []))
    try:
        if files:
            resolved = resolve_paths(files)
        else:
            from tfjetflows.data.builtin import builtin_data

            resolved = resolve_paths([builtin_data()])
        for batch in iter_jet_batches(resolved, batch_size=n):
            return batch.images[:n]
    except Exception as err:  # noqa: BLE001 - the picture is optional; say why it lacks real jets
        print(f"no real jets in the picture: {err}")
    return None


def sample_to_parquet(
    saved_model: str | os.PathLike,
    out: str | os.PathLike,
    *,
    n: int,
    seed: int = 0,
    y: float | None = None,
    pt: float | None = None,
    batch_size: int = 1000,
    png: str | os.PathLike | None = None,
    real: Sequence[str] = (),
) -> dict[str, Any]:
    """Sample ``n`` jets and write them to ``out`` (atomically), plus an optional picture.

    Returns:
        ``{"jets": n, "seconds": ..., "jets_per_second": ...}`` (sampling and writing).
    """
    from tfjetflows.data.schema import open_jet_writer
    from tfjetflows.evaluation.kinematics import jet_pt_mass

    if n <= 0:
        raise ModelError(f"n must be positive, got {n}")
    path = Path(saved_model)
    module, meta = load_exported(path)
    _check_request(meta, path, y, pt)
    threshold = float(meta.get("representation", {}).get("threshold", 1e-3))
    shown: np.ndarray | None = None
    start = time.perf_counter()
    with open_jet_writer(out, row_group_size=batch_size) as write:
        for batch in sample_batches(
            module, meta, n=n, seed=seed, y=y, pt=pt, batch_size=batch_size
        ):
            images = batch["images"]
            jet_pt, jet_mass = jet_pt_mass(images, threshold)
            labels = batch.get("y", np.full(len(images), NO_LABEL))
            write(images, jet_pt, jet_mass, labels)
            if shown is None:
                shown = images[:4]
    seconds = time.perf_counter() - start
    if png is not None and shown is not None:
        from tfjetflows.evaluation.plots import plot_jet_grid

        plot_jet_grid(png, shown, _real_jets(real, meta, 4), threshold=threshold)
    return {"jets": n, "seconds": seconds, "jets_per_second": n / max(seconds, 1e-9)}
