"""Distillation of a MAF teacher into an IAF student: the walk, the loss, and that it trains."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfjetflows.flows.distillation import Distillation, copy_batch_norms, teacher_walk
from tfjetflows.flows.iaf import IAF
from tfjetflows.flows.maf import MAF

SEED = tf.constant([3, 4], dtype=tf.int32)


def test_teacher_walk_returns_the_base_draw_of_a_teacher_sample(float64, randomize):
    keras.utils.set_random_seed(0)
    teacher = MAF(event_size=3, blocks=3, hidden_units=(8,))
    randomize(teacher, seed=1, scale=0.4)
    x = teacher.sample(5, SEED)
    z = teacher.base_distribution().sample(5, seed=SEED)
    inputs, outputs = teacher_walk(teacher, x, None)
    np.testing.assert_allclose(inputs[0].numpy(), z.numpy(), atol=1e-9)
    assert len(inputs) == len(outputs) == 3


def _linear_pair():
    """A 2-D, one-block MAF with a linear MADE, and the IAF student that equals it exactly.

    Teacher: ``a0 = u0 e^{b2} + b0``, ``a1 = u1 e^{K03 a0 + b3} + K01 a0 + b1``. Substituting
    ``a0`` gives the student's weights: ``K' = K e^{b2}``, ``b'1 = K01 b0 + b1``,
    ``b'3 = K03 b0 + b3`` (``b'0 = b0``, ``b'2 = b2``).
    """
    keras.utils.set_random_seed(0)
    args = {"event_size": 2, "blocks": 1, "hidden_units": (), "log_scale_clamp": None}
    teacher, student = MAF(**args), IAF(**args)
    kernel = np.zeros((2, 4))
    kernel[0, 1], kernel[0, 3] = 0.7, -0.4
    bias = np.array([0.3, -0.2, 0.5, 0.1])
    layer = teacher.mades[0].output_layer
    layer.kernel.assign(kernel)
    layer.bias.assign(bias)
    student_bias = bias.copy()
    student_bias[1] = kernel[0, 1] * bias[0] + bias[1]
    student_bias[3] = kernel[0, 3] * bias[0] + bias[3]
    student.mades[0].output_layer.kernel.assign(kernel * np.exp(bias[2]))
    student.mades[0].output_layer.bias.assign(student_bias)
    return teacher, student


def test_loss_vanishes_for_a_student_equal_to_the_teacher_and_not_otherwise(float64):
    teacher, student = _linear_pair()
    model = Distillation(teacher, student)
    x = np.random.default_rng(0).normal(size=(64, 2))
    terms = {k: float(tf.reduce_max(v)) for k, v in model(x).items()}
    assert max(terms.values()) < 1e-20, terms
    student.mades[0].output_layer.bias.assign(student.mades[0].output_layer.bias + 0.05)
    terms = {k: float(tf.reduce_mean(v)) for k, v in model(x).items()}
    assert min(terms.values()) > 1e-4, terms


def test_copy_batch_norms_copies_and_freezes(randomize):
    keras.utils.set_random_seed(0)
    teacher = MAF(event_size=3, blocks=3, hidden_units=(8,))
    student = IAF(event_size=3, blocks=3, hidden_units=(8,))
    randomize(teacher, seed=2)
    copy_batch_norms(teacher, student)
    for source, target in zip(teacher.batch_norms, student.batch_norms, strict=True):
        np.testing.assert_array_equal(target.moving_variance.numpy(), source.moving_variance)
        np.testing.assert_array_equal(target.log_gamma.numpy(), source.log_gamma)
        assert not target.trainable_weights
    with pytest.raises(ValueError, match="batch-norm layers"):
        copy_batch_norms(teacher, IAF(event_size=3, blocks=3, batch_norm=False))
    with pytest.raises(ValueError, match="blocks"):
        Distillation(teacher, IAF(event_size=3, blocks=2))


def test_training_makes_the_student_reproduce_the_teacher(randomize):
    """A few hundred steps bring the student's samples close to the teacher's for the same z."""
    keras.utils.set_random_seed(0)
    teacher = MAF(event_size=3, blocks=2, hidden_units=(16,), context_size=1)
    randomize(teacher, seed=3, scale=0.2)
    student = IAF(event_size=3, blocks=2, hidden_units=(16,), context_size=1)
    copy_batch_norms(teacher, student)
    model = Distillation(teacher, student, seed=1)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    rng = np.random.default_rng(0)
    context = rng.normal(size=(256, 1)).astype("float32")
    x = teacher.sample(256, SEED, context=context).numpy()
    teacher_weights = [w.numpy() for w in teacher.weights]

    def gap() -> float:
        c = tf.constant(context[:128])
        return float(
            tf.reduce_mean(
                tf.square(teacher.sample(128, SEED, context=c) - student.sample(128, SEED, c))
            )
        )

    before = gap()
    history = model.fit(
        {"x": x, "context": context}, batch_size=64, epochs=12, verbose=0, shuffle=False
    )
    assert history.history["loss"][-1] < 0.1 * history.history["loss"][0]
    assert gap() < 0.1 * before, (before, gap())
    for weight, value in zip(teacher.weights, teacher_weights, strict=True):
        np.testing.assert_array_equal(weight.numpy(), value)  # the teacher is frozen
