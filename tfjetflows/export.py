"""SavedModel export: a trained flow as plain TensorFlow functions.

The exported folder is loaded by downstream code with ``tf.saved_model.load(path)`` alone, in a
process that never imports tfjetflows or TensorFlow Probability. Its functions:

- ``log_prob(x[, y][, pt])``: log-density of representation vectors, in the representation's
  data units (the preprocessing log-det included); ``jet_log_prob`` also subtracts the known
  density of the noise that fills empty slots, giving the log-likelihood of the jet itself.
- ``sample(n, seed)`` (flows that can sample): ``n`` decoded jets; ``seed`` is a shape-[2] int32
  tensor and the same seed gives the same jets. A conditional model draws the conditions from
  those seen in training.
- ``sample_conditional(n, seed, y[, pt])`` (conditional models): jets of class ``y`` (0 quark,
  1 gluon) and, when the model is conditioned on it, jet ``pt`` in GeV.

Samples are dictionaries: ``images`` [n, 3, 125, 125] (GeV), ``vector`` [n, D] (the decoded
representation vector) and, for the hits representation, ``hits`` [n, K, 4] rows of
(channel, eta index, phi index, energy) with empty slots zero.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from tfjetflows.atomic import staged_dir
from tfjetflows.data.pipeline import PT_REFERENCE
from tfjetflows.data.representations import Representation

__all__ = ["METADATA_FILE", "FlowModule", "export_saved_model", "read_metadata"]

METADATA_FILE = "tfjetflows.json"


class FlowModule(tf.Module):
    """A ``tf.Module`` whose ``tf.function`` methods are the SavedModel's signatures.

    ``model`` samples; ``density_model`` (default: ``model``) answers ``log_prob``. A distilled
    student samples in one pass and leaves densities to its teacher.
    """

    def __init__(
        self,
        model: Any,
        representation: Representation,
        conditions: Sequence[str],
        condition_sample: np.ndarray,
        density_model: Any = None,
    ) -> None:
        super().__init__(name="tfjetflows")
        self.model = model
        self.density_model = model if density_model is None else density_model
        self.representation = representation
        self.conditions = list(conditions)
        self.can_sample = bool(getattr(model, "can_sample", True))
        bank = np.asarray(condition_sample, np.float32).reshape(len(condition_sample), -1)
        if bank.shape[1] != len(self.conditions):
            raise ValueError(
                f"condition_sample has {bank.shape[1]} columns for conditions {self.conditions}"
            )
        self.condition_sample = tf.constant(bank)
        dim = representation.dim
        x_spec = tf.TensorSpec([None, dim], tf.float32, name="x")
        scalar_specs = [tf.TensorSpec([None], tf.float32, name=name) for name in self.conditions]
        self.log_prob = tf.function(self._log_prob, input_signature=[x_spec, *scalar_specs])
        self.jet_log_prob = tf.function(self._jet_log_prob, input_signature=[x_spec, *scalar_specs])
        n_spec = tf.TensorSpec([], tf.int32, name="n")
        seed_spec = tf.TensorSpec([2], tf.int32, name="seed")
        if self.can_sample:
            self.sample = tf.function(self._sample, input_signature=[n_spec, seed_spec])
            if self.conditions:
                condition_specs = [
                    tf.TensorSpec([], tf.float32, name=name) for name in self.conditions
                ]
                self.sample_conditional = tf.function(
                    self._sample_conditional,
                    input_signature=[n_spec, seed_spec, *condition_specs],
                )

    def _context(self, columns: Sequence[tf.Tensor]) -> tf.Tensor | None:
        if not self.conditions:
            return None
        parts = []
        for name, value in zip(self.conditions, columns, strict=True):
            if name == "pt":
                value = tf.math.log(value / PT_REFERENCE)
            parts.append(value)
        return tf.stack(parts, axis=-1)

    def _log_prob(self, x: tf.Tensor, *columns: tf.Tensor) -> tf.Tensor:
        return self.density_model.log_prob(x, context=self._context(columns), training=False)

    def _jet_log_prob(self, x: tf.Tensor, *columns: tf.Tensor) -> tf.Tensor:
        return self._log_prob(x, *columns) - self.representation.noise_log_prob(x)

    def _decoded(self, vector: tf.Tensor) -> dict[str, tf.Tensor]:
        out = {"vector": vector, "images": self.representation.decode(vector)}
        decode_hits = getattr(self.representation, "decode_hits", None)
        if decode_hits is not None:
            out["hits"] = decode_hits(vector)
        return out

    def _draw(self, n: tf.Tensor, seed: tf.Tensor, columns: list[tf.Tensor]) -> dict:
        context = self._context(columns)
        out = self._decoded(self.model.sample(n, seed=seed, context=context))
        for name, values in zip(self.conditions, columns, strict=True):
            out[name] = values
        return out

    def _sample(self, n: tf.Tensor, seed: tf.Tensor) -> dict[str, tf.Tensor]:
        columns: list[tf.Tensor] = []
        if self.conditions:
            picks = tf.random.stateless_uniform(
                [n], seed=seed[::-1], maxval=tf.shape(self.condition_sample)[0], dtype=tf.int32
            )
            drawn = tf.gather(self.condition_sample, picks)
            columns = [drawn[:, k] for k in range(len(self.conditions))]
        return self._draw(n, seed, columns)

    def _sample_conditional(
        self, n: tf.Tensor, seed: tf.Tensor, *values: tf.Tensor
    ) -> dict[str, tf.Tensor]:
        return self._draw(n, seed, [tf.fill([n], v) for v in values])


def export_saved_model(
    model: Any,
    representation: Representation,
    out_dir: str | os.PathLike,
    *,
    conditions: Sequence[str] = (),
    condition_sample: np.ndarray | None = None,
    metadata: dict[str, Any] | None = None,
    density_model: Any = None,
) -> Path:
    """Write ``model`` as a SavedModel into ``out_dir`` (atomically: staged, then renamed).

    Args:
        model: a trained flow with ``log_prob(x, context, training)`` and, if it can sample,
            ``sample(n, seed, context)``.
        representation: the representation the model was trained on (decodes samples).
        out_dir: destination folder; replaced if it exists.
        conditions: names of the conditioning columns (``y``, ``pt``), in model order.
        condition_sample: [M, len(conditions)] raw condition values seen in training (``pt``
            in GeV), drawn from by ``sample`` for conditional models.
        metadata: extra JSON-ready facts stored in ``assets/tfjetflows.json``.
        density_model: the flow that answers ``log_prob`` (default: ``model``; a distilled
            student's teacher).

    Returns:
        The SavedModel folder.
    """
    out_dir = Path(out_dir)
    if condition_sample is None:
        condition_sample = np.zeros((1, len(conditions)), np.float32)
    module = FlowModule(model, representation, conditions, condition_sample, density_model)
    facts = {
        "representation": representation.get_config(),
        "conditions": list(conditions),
        "dim": representation.dim,
        "can_sample": module.can_sample,
        "sampler": type(model).__name__,
        "density": type(module.density_model).__name__,
        **(metadata or {}),
    }
    with staged_dir(out_dir, replace=True) as staging:
        tf.saved_model.save(module, str(staging))
        assets = staging / "assets"
        assets.mkdir(exist_ok=True)
        (assets / METADATA_FILE).write_text(json.dumps(facts, indent=2))
    return out_dir


def read_metadata(saved_model: str | os.PathLike) -> dict[str, Any]:
    """Return the facts stored beside an exported model (representation, conditions, ...)."""
    path = Path(saved_model) / "assets" / METADATA_FILE
    return json.loads(path.read_text())
