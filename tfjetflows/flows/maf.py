"""Masked Autoregressive Flow as a Keras 3 model with exact ``log_prob`` and stateless ``sample``.

The flow, base -> data (the bijectors' forward direction)::

    z ~ N(0, I) -> MAF_0 -> BN_0 -> MAF_1 -> ... -> BN_{K-2} -> MAF_{K-1} -> preprocessing -> x

Each ``MAF_k`` is a ``tfb.MaskedAutoregressiveFlow`` whose shift and log-scale come from a Keras 3
:class:`~tfjetflows.flows.made.MADE`; orders alternate (left-to-right for even ``k``,
right-to-left for odd ``k``). ``BN_k`` are batch-norm bijectors (optional). ``preprocessing`` is an
optional data-side bijector (forward = standardised -> data) whose log-det is part of ``log_prob``,
so likelihoods are in data units.

``log_prob`` walks the chain data -> base itself and sums the inverse log-dets: in training mode
batch norm normalises with batch statistics, and ``tfd.TransformedDistribution.log_prob`` would take
the batch-norm log-det from the moving statistics instead (a wrong loss). Each MADE is evaluated
once per block in this walk. ``sample`` runs the TFP bijectors forward in eval mode (``D`` MADE
passes per block, in a ``tf.while_loop``), so call it inside ``tf.function``.

Inputs of ``call``/``fit``: an unconditional model takes the tensor ``x`` [batch, D]; a conditional
model takes a dict ``{"x": [batch, D], "context": [batch, C]}``. (A tuple would be read by Keras as
``(x, y)``.) Datasets for ``fit`` yield inputs only, no targets. Inputs, loss, metrics,
preprocessing and config are shared with BNAF in :class:`~tfjetflows.flows.density.DensityModel`.

References:
    [1] George Papamakarios, Theo Pavlakou, Iain Murray. Masked Autoregressive Flow for Density
        Estimation. NeurIPS 2017. arXiv:1705.07057.
    [2] Mathieu Germain, Karol Gregor, Iain Murray, Hugo Larochelle. MADE: Masked Autoencoder for
        Distribution Estimation. ICML 2015. arXiv:1502.03509.
"""

from __future__ import annotations

from typing import Any, ClassVar

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tfjetflows.flows.autoregressive import AutoregressiveFlow
from tfjetflows.flows.batchnorm import BatchNormBijector
from tfjetflows.flows.made import MADE

__all__ = ["MAF"]

tfb = tfp.bijectors
tfd = tfp.distributions


def _made_fn(made: MADE) -> Any:
    """Wrap ``made`` as a TFP ``shift_and_log_scale_fn`` taking ``conditional_input``."""

    def shift_and_log_scale(y: tf.Tensor, conditional_input: tf.Tensor | None = None) -> Any:
        return made(y, context=conditional_input)

    return shift_and_log_scale


@keras.saving.register_keras_serializable(package="tfjetflows")
class MAF(AutoregressiveFlow):
    """Masked Autoregressive Flow (Papamakarios et al. 2017) with optional conditioning.

    Args:
        event_size: dimension D of the data vector.
        context_size: width C of the conditioning vector (0: unconditional).
        blocks: number of MADE blocks K.
        hidden_units: hidden layer widths of every MADE.
        activation: Keras activation of the MADE hidden layers.
        batch_norm: put a batch-norm bijector between consecutive blocks.
        log_scale_clamp: soft bound of every MADE log-scale (None: no clamp).
        batch_norm_momentum: momentum of the batch-norm moving statistics.
        preprocessing: None, the config mapping of
            :class:`tfjetflows.data.preprocessing.Preprocessing`, or a ``tfb.Bijector`` with
            forward = standardised -> data (a bijector without ``get_config`` cannot be saved).
        **kwargs: passed to :class:`keras.Model` (``name``, ``dtype``).

    Example:
        >>> import tensorflow as tf
        >>> model = MAF(event_size=2, blocks=2, hidden_units=(8, 8))
        >>> model.log_prob(tf.zeros([5, 2])).shape
        TensorShape([5])
        >>> model.sample(3, seed=tf.constant([1, 2])).shape
        TensorShape([3, 2])
    """

    can_sample: ClassVar[bool] = True

    # ----------------------------------------------------------------------------- structure

    def bijectors(self, training: bool = False) -> list[tfb.Bijector]:
        """Return the bijectors in forward (base -> data) order.

        Names are ``maf_k``, ``batch_norm_k`` and ``preprocessing``; a conditional model needs
        ``conditional_input=context`` for every ``maf_k`` (in a ``tfb.Chain``:
        ``bijector_kwargs={"maf_k": {"conditional_input": context}, ...}``).
        """
        out: list[tfb.Bijector] = []
        for k, made in enumerate(self.mades):
            out.append(
                tfb.MaskedAutoregressiveFlow(shift_and_log_scale_fn=_made_fn(made), name=f"maf_{k}")
            )
            if k < len(self.batch_norms):
                out.append(
                    BatchNormBijector(
                        self.batch_norms[k], training=training, name=f"batch_norm_{k}"
                    )
                )
        if self._preprocessing is not None:
            out.append(self._preprocessing)
        return out

    # ---------------------------------------------------------------------------- densities

    def log_prob(
        self, x: tf.Tensor, context: tf.Tensor | None = None, training: bool = False
    ) -> tf.Tensor:
        """Return log p(x | context) in data units, shape [batch].

        Args:
            x: data [batch, event_size].
            context: conditioning [batch, context_size] (conditional models only).
            training: normalise with batch statistics and update the moving ones.
        """
        x = tf.cast(x, self.compute_dtype)
        context = self._check_context(context)
        y, ildj = self._preprocess(x)
        for k in reversed(range(self.blocks)):
            if k < len(self.batch_norms):
                layer = self.batch_norms[k]
                mean, variance = layer.statistics(y, training=training)
                ildj += layer.inverse_log_det(variance)
                y = layer.normalize(y, mean, variance)
            # Inverse of the MAF block: u = (y - shift(y)) * exp(-log_scale(y)).
            shift, log_scale = self.mades[k](y, context=context)
            ildj -= tf.reduce_sum(log_scale, axis=-1)
            y = (y - shift) * tf.exp(-log_scale)
        return self.base_distribution().log_prob(y) + ildj

    # ----------------------------------------------------------------------------- sampling

    def sample(
        self, n: int | tf.Tensor, seed: tf.Tensor, context: tf.Tensor | None = None
    ) -> tf.Tensor:
        """Draw ``n`` samples in data units, shape [n, event_size] (eval-mode batch norm).

        Args:
            n: number of samples (a Python int or an int scalar tensor; dynamic inside
                ``tf.function``).
            seed: shape-[2] int32 tensor; sampling is stateless, so the same seed gives the same
                samples.
            context: [n, context_size] or [context_size] (broadcast to all samples);
                conditional models only.
        """
        n = tf.convert_to_tensor(n, dtype=tf.int32)
        context = self._broadcast_context(context, n)
        kwargs = {} if context is None else {"conditional_input": context}
        y = self.base_distribution().sample(n, seed=seed)
        for bijector in self.bijectors(training=False):
            if isinstance(bijector, tfb.MaskedAutoregressiveFlow):
                y = bijector.forward(y, **kwargs)
            else:
                y = bijector.forward(y)
        return y
