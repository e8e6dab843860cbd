"""The layers MAF and IAF share: a stack of MADE blocks with batch norm between them.

:class:`AutoregressiveFlow` builds ``blocks`` :class:`~tfjetflows.flows.made.MADE` networks
(orders alternate: left-to-right for even ``k``, right-to-left for odd ``k``) and, optionally,
``blocks - 1`` :class:`~tfjetflows.flows.batchnorm.BatchNormLayer` between consecutive blocks, in
the base -> data order::

    z ~ N(0, I) -> block_0 -> BN_0 -> block_1 -> ... -> block_{K-1} -> preprocessing -> x

The subclasses decide what a block computes. In a MAF block (:class:`~tfjetflows.flows.maf.MAF`)
the MADE reads the block's data-side output, so density evaluation is one pass and sampling is
``D`` passes; in an IAF block (:class:`~tfjetflows.flows.iaf.IAF`) the MADE reads the block's
base-side input, so sampling is one pass and density evaluation is ``D`` passes. The layer names
(``made_k``, ``batch_norm_k``) and the config keys are the same for both.

References:
    [1] George Papamakarios, Theo Pavlakou, Iain Murray. Masked Autoregressive Flow for Density
        Estimation. NeurIPS 2017. arXiv:1705.07057.
    [2] Diederik P. Kingma, Tim Salimans, Rafal Jozefowicz, Xi Chen, Ilya Sutskever, Max
        Welling. Improved Variational Inference with Inverse Autoregressive Flow. NeurIPS 2016.
        arXiv:1606.04934.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tfjetflows.flows.batchnorm import BatchNormLayer
from tfjetflows.flows.density import DensityModel
from tfjetflows.flows.made import MADE

__all__ = ["AutoregressiveFlow"]

tfb = tfp.bijectors
tfd = tfp.distributions


class AutoregressiveFlow(DensityModel):
    """Base of MAF and IAF: the MADE blocks, the batch-norm layers, the base and the config.

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
    """

    def __init__(
        self,
        *,
        event_size: int,
        context_size: int = 0,
        blocks: int = 5,
        hidden_units: Sequence[int] = (256, 256),
        activation: str = "relu",
        batch_norm: bool = True,
        log_scale_clamp: float | None = 3.0,
        batch_norm_momentum: float = 0.9,
        preprocessing: Mapping | tfb.Bijector | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            event_size=event_size, context_size=context_size, preprocessing=preprocessing, **kwargs
        )
        if int(blocks) < 1:
            raise ValueError(f"{type(self).__name__}: blocks must be >= 1, got {blocks}")
        self.blocks = int(blocks)
        self.hidden_units = [int(u) for u in hidden_units]
        self.activation_name = str(activation)
        self.batch_norm = bool(batch_norm)
        self.log_scale_clamp = None if log_scale_clamp is None else float(log_scale_clamp)
        self.batch_norm_momentum = float(batch_norm_momentum)
        with keras.name_scope(self.name):
            self.mades = [
                MADE(
                    event_size=self.event_size,
                    hidden_units=self.hidden_units,
                    activation=self.activation_name,
                    context_size=self.context_size,
                    order="left-to-right" if k % 2 == 0 else "right-to-left",
                    log_scale_clamp=self.log_scale_clamp,
                    name=f"made_{k}",
                    dtype=self.dtype_policy,
                )
                for k in range(self.blocks)
            ]
            self.batch_norms = (
                [
                    BatchNormLayer(
                        self.event_size,
                        momentum=self.batch_norm_momentum,
                        name=f"batch_norm_{k}",
                        dtype=self.dtype_policy,
                    )
                    for k in range(self.blocks - 1)
                ]
                if self.batch_norm
                else []
            )
        self.built = True

    def base_distribution(self) -> tfd.Distribution:
        """The standard normal base distribution over [event_size]."""
        zero = tf.zeros([], dtype=self.compute_dtype)
        return tfd.Sample(tfd.Normal(zero, tf.ones_like(zero)), sample_shape=[self.event_size])

    def _broadcast_context(self, context: tf.Tensor | None, n: tf.Tensor) -> tf.Tensor | None:
        """Check ``context`` and broadcast [context_size] or [n, context_size] to [n, C]."""
        context = self._check_context(context)
        if context is None:
            return None
        return tf.broadcast_to(context, tf.stack([n, self.context_size]))

    def get_config(self) -> dict[str, Any]:
        """Return the constructor arguments (the YAML keys) plus Keras' name/dtype/trainable."""
        config = super().get_config()
        config.update(
            blocks=self.blocks,
            hidden_units=list(self.hidden_units),
            activation=self.activation_name,
            batch_norm=self.batch_norm,
            log_scale_clamp=self.log_scale_clamp,
            batch_norm_momentum=self.batch_norm_momentum,
        )
        return config
