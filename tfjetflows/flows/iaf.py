"""Inverse Autoregressive Flow: the one-pass sampler that a MAF teacher is distilled into.

An IAF block reads its *base-side* input with the MADE, so the whole map base -> data is one
network pass per block (a MAF block reads its data-side output and needs ``D`` passes)::

    y = u * exp(log_scale(u)) + shift(u)        # u: block input (base side), y: block output

With the same alternating orders and batch-norm layers as :class:`~tfjetflows.flows.maf.MAF`,
IAF block ``k`` can represent MAF block ``k`` exactly (both make output ``i`` a function of inputs
``<= i`` in the block's order), which is what distillation (:mod:`tfjetflows.flows.distillation`)
trains it to do. The price is paid on the other side: ``log_prob`` inverts every block one
dimension at a time (``D`` MADE passes per block, TFP's ``MaskedAutoregressiveFlow`` loop), so it
is exact but slow; an exported student answers ``log_prob`` with its teacher instead.

Batch norm in an IAF is only ever used with its moving statistics (a fixed affine map): a
distilled student copies them from its teacher and keeps them frozen.

References:
    [1] Diederik P. Kingma, Tim Salimans, Rafal Jozefowicz, Xi Chen, Ilya Sutskever, Max
        Welling. Improved Variational Inference with Inverse Autoregressive Flow. NeurIPS 2016.
        arXiv:1606.04934.
    [2] Claudius Krause, David Shih. CaloFlow II: Even Faster and Still Accurate Generation of
        Calorimeter Showers with Normalizing Flows. arXiv:2110.11377 (2021).
"""

from __future__ import annotations

from typing import Any, ClassVar

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tfjetflows.flows.autoregressive import AutoregressiveFlow
from tfjetflows.flows.made import MADE

__all__ = ["IAF"]

tfb = tfp.bijectors


def _inverse_block_fn(made: MADE) -> Any:
    """The ``shift_and_log_scale_fn`` whose TFP MAF *forward* inverts the IAF block of ``made``.

    TFP's MAF forward solves ``u = y * exp(a(u)) + b(u)`` one dimension at a time; with
    ``a = -log_scale(u)`` and ``b = -shift(u) * exp(-log_scale(u))`` the solution is
    ``u = (y - shift(u)) * exp(-log_scale(u))``, the inverse of the IAF block.
    """

    def shift_and_log_scale(u: tf.Tensor, conditional_input: tf.Tensor | None = None) -> Any:
        shift, log_scale = made(u, context=conditional_input)
        return -shift * tf.exp(-log_scale), -log_scale

    return shift_and_log_scale


@keras.saving.register_keras_serializable(package="tfjetflows")
class IAF(AutoregressiveFlow):
    """Inverse Autoregressive Flow (Kingma et al. 2016): one network pass per block to sample.

    The constructor arguments are those of :class:`~tfjetflows.flows.maf.MAF` (a student built
    with its teacher's arguments has the same layers).

    Args:
        event_size: dimension D of the data vector.
        context_size: width C of the conditioning vector (0: unconditional).
        blocks: number of MADE blocks K.
        hidden_units: hidden layer widths of every MADE.
        activation: Keras activation of the MADE hidden layers.
        batch_norm: put a (moving-statistics) batch-norm layer between consecutive blocks.
        log_scale_clamp: soft bound of every MADE log-scale (None: no clamp).
        batch_norm_momentum: kept for config symmetry with MAF (an IAF never updates its
            batch-norm statistics).
        preprocessing: None, the config mapping of
            :class:`tfjetflows.data.preprocessing.Preprocessing`, or a ``tfb.Bijector`` with
            forward = standardised -> data.
        **kwargs: passed to :class:`keras.Model` (``name``, ``dtype``).

    Example:
        >>> import tensorflow as tf
        >>> model = IAF(event_size=3, blocks=2, hidden_units=(8,))
        >>> x = model.sample(4, seed=tf.constant([1, 2]))
        >>> x.shape, model.log_prob(x).shape
        (TensorShape([4, 3]), TensorShape([4]))
    """

    can_sample: ClassVar[bool] = True

    def block_forward(
        self, k: int, u: tf.Tensor, context: tf.Tensor | None = None
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Apply IAF block ``k`` (before its batch norm): one MADE pass.

        Returns:
            ``(y, shift, log_scale)``, each [batch, D], with ``y = u * exp(log_scale) + shift``.
        """
        shift, log_scale = self.mades[k](u, context=context)
        return u * tf.exp(log_scale) + shift, shift, log_scale

    def batch_norm_forward(self, k: int, y: tf.Tensor) -> tf.Tensor:
        """Apply batch norm ``k`` base -> data with its moving statistics (identity if none)."""
        if k >= len(self.batch_norms):
            return y
        layer = self.batch_norms[k]
        return layer.denormalize(y, layer.moving_mean, layer.moving_variance)

    def standardized_sample(self, z: tf.Tensor, context: tf.Tensor | None = None) -> tf.Tensor:
        """Map base draws ``z`` [batch, D] to the standardised space: one MADE pass per block."""
        y = tf.cast(z, self.compute_dtype)
        for k in range(self.blocks):
            y, _, _ = self.block_forward(k, y, context)
            y = self.batch_norm_forward(k, y)
        return y

    def sample(
        self, n: int | tf.Tensor, seed: tf.Tensor, context: tf.Tensor | None = None
    ) -> tf.Tensor:
        """Draw ``n`` samples in data units, shape [n, event_size], in one pass per block.

        Args:
            n: number of samples (Python int or int scalar tensor).
            seed: shape-[2] int32 tensor (stateless: same seed, same samples).
            context: [n, context_size] or [context_size]; conditional models only.
        """
        n = tf.convert_to_tensor(n, dtype=tf.int32)
        context = self._broadcast_context(context, n)
        y = self.standardized_sample(self.base_distribution().sample(n, seed=seed), context)
        if self._preprocessing is not None:
            y = self._preprocessing.forward(y)
        return y

    def log_prob(
        self, x: tf.Tensor, context: tf.Tensor | None = None, training: bool = False
    ) -> tf.Tensor:
        """Return the exact log p(x | context) in data units, shape [batch]: ``D`` passes per block.

        ``training`` is accepted for the common interface and ignored (batch norm always uses
        its moving statistics in an IAF).
        """
        del training
        x = tf.cast(x, self.compute_dtype)
        context = self._check_context(context)
        kwargs = {} if context is None else {"conditional_input": context}
        y, ildj = self._preprocess(x)
        for k in reversed(range(self.blocks)):
            if k < len(self.batch_norms):
                layer = self.batch_norms[k]
                ildj += layer.inverse_log_det(tf.convert_to_tensor(layer.moving_variance))
                y = layer.normalize(y, layer.moving_mean, layer.moving_variance)
            invert = tfb.MaskedAutoregressiveFlow(
                shift_and_log_scale_fn=_inverse_block_fn(self.mades[k])
            )
            y = invert.forward(y, **kwargs)
            _, log_scale = self.mades[k](y, context=context)
            ildj -= tf.reduce_sum(log_scale, axis=-1)
        return self.base_distribution().log_prob(y) + ildj
