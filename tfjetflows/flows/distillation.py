"""Teacher-student distillation of a MAF into a one-pass IAF sampler (CaloFlow II recipe).

A trained :class:`~tfjetflows.flows.maf.MAF` (the teacher, frozen, batch norm in eval mode)
evaluates densities in one pass per block but samples in ``D`` passes; an
:class:`~tfjetflows.flows.iaf.IAF` (the student) with the same blocks samples in one pass.
Following Krause & Shih (CaloFlow II), the student is trained to reproduce the teacher's maps
by regression, both directions being one pass per block:

- **data path**: a training jet ``x`` goes through the teacher, data -> base, recording every
  block boundary ``t_K = standardise(x), ..., t_0 = z``; the student maps ``t_0`` back to
  ``x_hat`` (loss ``data``: mean squared error of ``x_hat`` vs ``t_K``);
- **latent path**: a fresh base draw ``z`` goes through the student, base -> data, then back
  through the teacher (loss ``latent``: mean squared error of the teacher's latent vs ``z``);
- **block by block** (teacher forcing): every student block is fed the teacher's input of that
  block ``t_k`` and must give the teacher's block output (loss ``block``) and the teacher's MADE
  outputs, shift and log-scale (loss ``params``). A MAF block ``a = u * exp(s(a)) + m(a)`` and an
  IAF block ``a = u * exp(s'(u)) + m'(u)`` agree exactly when ``s'(u) = s(a)`` and
  ``m'(u) = m(a)``.

All distances are taken in the teacher's standardised space (after the preprocessing bijector,
which the student shares), where every dimension is of order one. The block-by-block terms are
weighted by the non-trainable variable ``block_weight``: the distillation recipe first matches
blocks (weight 1), then fine-tunes the whole chain on the data (weight 0; see
:class:`~tfjetflows.training.distill.BlockwisePhase`). Validation loss is ``data + latent``
only, so it means the same in both phases.

The student's batch-norm layers are copies of the teacher's moving statistics and affine
parameters, frozen (:func:`copy_batch_norms`).

References:
    [1] Claudius Krause, David Shih. CaloFlow II: Even Faster and Still Accurate Generation of
        Calorimeter Showers with Normalizing Flows. arXiv:2110.11377 (2021).
    [2] Aaron van den Oord et al. Parallel WaveNet: Fast High-Fidelity Speech Synthesis.
        ICML 2018. arXiv:1711.10433.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras
import tensorflow as tf

from tfjetflows.flows.iaf import IAF
from tfjetflows.flows.maf import MAF

__all__ = ["LOSS_TERMS", "Distillation", "copy_batch_norms", "teacher_walk"]

LOSS_TERMS = ("data", "latent", "block", "params")


def copy_batch_norms(teacher: MAF, student: IAF) -> None:
    """Copy the teacher's batch-norm variables into the student's and freeze them."""
    if len(teacher.batch_norms) != len(student.batch_norms):
        raise ValueError(
            f"student has {len(student.batch_norms)} batch-norm layers, the teacher "
            f"{len(teacher.batch_norms)}: give the student the teacher's blocks and batch_norm"
        )
    for source, target in zip(teacher.batch_norms, student.batch_norms, strict=True):
        for name in ("log_gamma", "beta", "moving_mean", "moving_variance"):
            getattr(target, name).assign(getattr(source, name))
        target.trainable = False


def teacher_walk(
    teacher: MAF, y: tf.Tensor, context: tf.Tensor | None
) -> tuple[list[tf.Tensor], list[tuple[tf.Tensor, tf.Tensor, tf.Tensor]]]:
    """Run the teacher data -> base in eval mode from the standardised ``y``.

    Returns:
        ``inputs``: ``inputs[k]`` is the base-side input of block ``k`` (``inputs[0]`` is the
        latent ``z``); ``outputs[k] = (a_k, shift_k, log_scale_k)``: block ``k``'s output before
        its batch norm and the teacher MADE's outputs at it.
    """
    inputs: list[tf.Tensor] = [tf.zeros_like(y)] * teacher.blocks
    outputs: list[Any] = [None] * teacher.blocks
    for k in reversed(range(teacher.blocks)):
        if k < len(teacher.batch_norms):
            layer = teacher.batch_norms[k]
            y = layer.normalize(y, layer.moving_mean, layer.moving_variance)
        shift, log_scale = teacher.mades[k](y, context=context)
        outputs[k] = (y, shift, log_scale)
        y = (y - shift) * tf.exp(-log_scale)
        inputs[k] = y
    return inputs, outputs


def _mse(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """Mean squared error per example, [batch], in float32."""
    return tf.reduce_mean(tf.square(tf.cast(a, tf.float32) - tf.cast(b, tf.float32)), axis=-1)


class Distillation(keras.Model):
    """A Keras model whose loss distils ``teacher`` (frozen) into ``student``.

    Inputs are those of the flows (``x`` or ``{"x": x, "context": c}``); ``call`` returns the
    per-example loss terms ``{"data", "latent", "block", "params"}`` ([batch] each), and
    ``compute_loss`` their weighted mean. Train it with ``fit`` and the usual callbacks.

    Args:
        teacher: a trained MAF (its weights are frozen here).
        student: an IAF with the teacher's event size, context size, blocks and preprocessing.
        data_weight: weight of the data-path loss.
        latent_weight: weight of the latent-path loss.
        params_weight: weight of the MADE-output loss, relative to the block loss (both scaled by
            ``block_weight``).
        seed: seed of the latent-path base draws.
        **kwargs: passed to :class:`keras.Model`.
    """

    def __init__(
        self,
        teacher: MAF,
        student: IAF,
        *,
        data_weight: float = 1.0,
        latent_weight: float = 1.0,
        params_weight: float = 1.0,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        for what in ("event_size", "context_size", "blocks"):
            if getattr(teacher, what) != getattr(student, what):
                raise ValueError(
                    f"student {what}={getattr(student, what)} differs from the teacher's "
                    f"{getattr(teacher, what)}"
                )
        if student.batch_norm != teacher.batch_norm:
            raise ValueError("the student needs batch_norm equal to the teacher's")
        self.teacher = teacher
        self.student = student
        self.teacher.trainable = False
        self.data_weight = float(data_weight)
        self.latent_weight = float(latent_weight)
        self.params_weight = float(params_weight)
        self.block_weight = self.add_weight(
            shape=(), initializer="ones", trainable=False, name="block_weight", dtype="float32"
        )
        self.seed = int(seed)
        # Latent-path draws are stateless, keyed by (seed, draws); the counter is a weight, so
        # checkpoints carry it and a resumed run draws what an uninterrupted one would.
        self.draws = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="draws", dtype="int64"
        )
        self.trackers = {name: keras.metrics.Mean(name=f"{name}_mse") for name in LOSS_TERMS}
        self.built = True

    def _split_inputs(self, inputs: Any) -> tuple[tf.Tensor, tf.Tensor | None]:
        if isinstance(inputs, Mapping):
            return inputs["x"], inputs.get("context") if self.student.context_size else None
        return inputs, None

    def call(self, inputs: Any, training: bool | None = None) -> dict[str, tf.Tensor]:
        """Return the per-example loss terms for a batch of data (see the module docstring)."""
        del training
        x, context = self._split_inputs(inputs)
        student = self.student
        x = tf.cast(x, student.compute_dtype)
        if context is not None:
            context = tf.cast(context, student.compute_dtype)
        y, _ = self.teacher._preprocess(x)
        inputs_k, outputs_k = teacher_walk(self.teacher, y, context)
        n = tf.shape(y)[0]
        key = tf.stack([tf.constant(self.seed, tf.int64), tf.convert_to_tensor(self.draws)])
        self.draws.assign_add(1)
        z = tf.random.stateless_normal(tf.shape(y), seed=key, dtype=student.compute_dtype)
        # Data and latent paths share one student pass over [z_teacher(x); z].
        both_context = None if context is None else tf.concat([context, context], axis=0)
        generated = student.standardized_sample(tf.concat([inputs_k[0], z], axis=0), both_context)
        from_data, from_latent = generated[:n], generated[n:]
        latent_back, _ = teacher_walk(self.teacher, from_latent, context)
        block = tf.zeros([n], tf.float32)
        params = tf.zeros([n], tf.float32)
        for k in range(student.blocks):
            a, shift, log_scale = outputs_k[k]
            a_student, shift_s, log_scale_s = student.block_forward(k, inputs_k[k], context)
            block += _mse(a_student, a)
            params += _mse(shift_s, shift) + _mse(log_scale_s, log_scale)
        return {
            "data": _mse(from_data, y),
            "latent": _mse(latent_back[0], z),
            "block": block / student.blocks,
            "params": params / student.blocks,
        }

    def compute_loss(
        self,
        x: Any = None,
        y: Any = None,
        y_pred: dict[str, tf.Tensor] | None = None,
        sample_weight: tf.Tensor | None = None,
        training: bool = True,
    ) -> tf.Tensor:
        """Weighted mean of the terms; the block terms count in training only."""
        del y, sample_weight
        if y_pred is None:
            y_pred = self(x, training=training)
        loss = self.data_weight * tf.reduce_mean(y_pred["data"])
        loss += self.latent_weight * tf.reduce_mean(y_pred["latent"])
        if training:
            blockwise = tf.reduce_mean(y_pred["block"])
            blockwise += self.params_weight * tf.reduce_mean(y_pred["params"])
            loss += self.block_weight * blockwise
        return loss

    def compute_metrics(
        self, x: Any, y: Any, y_pred: dict[str, tf.Tensor], sample_weight: tf.Tensor | None = None
    ) -> dict[str, Any]:
        """Track the mean of every term (``data_mse``, ``latent_mse``, ...) and the loss."""
        del x, y, sample_weight
        for name, tracker in self.trackers.items():
            tracker.update_state(y_pred[name])
        return self.get_metrics_result()
