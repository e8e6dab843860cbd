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
``(x, y)``.) Datasets for ``fit`` yield inputs only, no targets.

References:
    [1] George Papamakarios, Theo Pavlakou, Iain Murray. Masked Autoregressive Flow for Density
        Estimation. NeurIPS 2017. arXiv:1705.07057.
    [2] Mathieu Germain, Karol Gregor, Iain Murray, Hugo Larochelle. MADE: Masked Autoencoder for
        Distribution Estimation. ICML 2015. arXiv:1502.03509.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tfjetflows.flows.batchnorm import BatchNormBijector, BatchNormLayer
from tfjetflows.flows.made import MADE
from tfjetflows.flows.metrics import LogProbStats

__all__ = ["MAF"]

tfb = tfp.bijectors
tfd = tfp.distributions


def _made_fn(made: MADE) -> Any:
    """Wrap ``made`` as a TFP ``shift_and_log_scale_fn`` taking ``conditional_input``."""

    def shift_and_log_scale(y: tf.Tensor, conditional_input: tf.Tensor | None = None) -> Any:
        return made(y, context=conditional_input)

    return shift_and_log_scale


def _build_preprocessing(
    preprocessing: Mapping | tfb.Bijector | None, dtype: str
) -> tfb.Bijector | None:
    """Return the preprocessing bijector in ``dtype`` from its config (or check the bijector)."""
    if preprocessing is None:
        return None
    if isinstance(preprocessing, tfb.Bijector):
        if preprocessing.dtype is not None and tf.as_dtype(preprocessing.dtype) != dtype:
            raise ValueError(
                f"MAF: the preprocessing bijector {preprocessing.name!r} has dtype "
                f"{tf.as_dtype(preprocessing.dtype).name}, the model {dtype}"
            )
        return preprocessing
    if not isinstance(preprocessing, Mapping):
        raise TypeError(
            "MAF: preprocessing must be None, a tfb.Bijector or the config mapping of "
            f"tfjetflows.data.preprocessing.Preprocessing, got {type(preprocessing).__name__}"
        )
    from tfjetflows.data.preprocessing import Preprocessing

    # The flow's dtype wins over the dtype recorded in the config.
    return Preprocessing.from_config({**preprocessing, "dtype": dtype})


@keras.saving.register_keras_serializable(package="tfjetflows")
class MAF(keras.Model):
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
        super().__init__(**kwargs)
        if int(event_size) < 1:
            raise ValueError(f"MAF: event_size must be >= 1, got {event_size}")
        if int(context_size) < 0:
            raise ValueError(f"MAF: context_size must be >= 0, got {context_size}")
        if int(blocks) < 1:
            raise ValueError(f"MAF: blocks must be >= 1, got {blocks}")
        self.event_size = int(event_size)
        self.context_size = int(context_size)
        self.blocks = int(blocks)
        self.hidden_units = [int(u) for u in hidden_units]
        self.activation_name = str(activation)
        self.batch_norm = bool(batch_norm)
        self.log_scale_clamp = None if log_scale_clamp is None else float(log_scale_clamp)
        self.batch_norm_momentum = float(batch_norm_momentum)
        self._preprocessing = _build_preprocessing(preprocessing, self.compute_dtype)
        self._preprocessing_config = (
            dict(preprocessing)
            if isinstance(preprocessing, Mapping)
            else (
                self._preprocessing.get_config()
                if self._preprocessing is not None and hasattr(self._preprocessing, "get_config")
                else None
            )
        )
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
        self.log_prob_stats = LogProbStats(self.event_size)
        self.built = True

    # ----------------------------------------------------------------------------- structure

    @property
    def preprocessing(self) -> tfb.Bijector | None:
        """The data-side preprocessing bijector, or None."""
        return self._preprocessing

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

    def base_distribution(self) -> tfd.Distribution:
        """The standard normal base distribution over [event_size]."""
        zero = tf.zeros([], dtype=self.compute_dtype)
        return tfd.Sample(tfd.Normal(zero, tf.ones_like(zero)), sample_shape=[self.event_size])

    # ---------------------------------------------------------------------------- densities

    def _check_context(self, context: tf.Tensor | None) -> tf.Tensor | None:
        if self.context_size == 0:
            if context is not None:
                raise ValueError(f"{self.name}: context given to an unconditional MAF")
            return None
        if context is None:
            raise ValueError(
                f"{self.name}: this MAF has context_size={self.context_size} and needs a context"
            )
        return tf.cast(context, self.compute_dtype)

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
        y = x
        ildj = tf.zeros(tf.shape(x)[:-1], dtype=x.dtype)
        if self._preprocessing is not None:
            ildj += self._preprocessing.inverse_log_det_jacobian(y, event_ndims=1)
            y = self._preprocessing.inverse(y)
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

    def _split_inputs(self, inputs: Any) -> tuple[tf.Tensor, tf.Tensor | None]:
        if isinstance(inputs, Mapping):
            unknown = set(inputs) - {"x", "context"}
            if "x" not in inputs or unknown:
                raise ValueError(
                    f"{self.name}: dict inputs need the key 'x' (and 'context' for a conditional "
                    f"model); got keys {sorted(inputs)}"
                )
            return inputs["x"], inputs.get("context")
        if isinstance(inputs, (tuple, list)):
            raise ValueError(
                f"{self.name}: pass x as a tensor, or {{'x': x, 'context': c}} for a conditional "
                "model (a tuple would be read by Keras as (x, y))"
            )
        return inputs, None

    def call(self, inputs: Any, training: bool | None = None) -> tf.Tensor:
        """Return ``log_prob``; ``inputs`` is ``x`` or ``{"x": x, "context": c}``."""
        x, context = self._split_inputs(inputs)
        return self.log_prob(x, context=context, training=bool(training))

    def compute_loss(
        self,
        x: Any = None,
        y: Any = None,
        y_pred: tf.Tensor | None = None,
        sample_weight: tf.Tensor | None = None,
        training: bool = True,
    ) -> tf.Tensor:
        """Mean negative log-likelihood (weighted by ``sample_weight``) plus ``self.losses``."""
        del y
        if y_pred is None:
            y_pred = self(x, training=training)
        nll = -tf.cast(y_pred, tf.float32)
        if sample_weight is None:
            loss = tf.reduce_mean(nll)
        else:
            w = tf.cast(tf.reshape(sample_weight, tf.shape(nll)), tf.float32)
            loss = tf.math.divide_no_nan(tf.reduce_sum(w * nll), tf.reduce_sum(w))
        for extra in self.losses:
            loss += tf.cast(tf.reduce_sum(extra), tf.float32)
        return loss

    def compute_metrics(
        self, x: Any, y: Any, y_pred: tf.Tensor, sample_weight: tf.Tensor | None = None
    ) -> dict[str, Any]:
        """Update :class:`LogProbStats` (log p mean/std, nats/dim, bits/dim) and the loss."""
        del x, y, sample_weight
        self.log_prob_stats.update_state(y_pred)
        return self.get_metrics_result()

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
        context = self._check_context(context)
        kwargs = {}
        if context is not None:
            context = tf.broadcast_to(context, tf.stack([n, self.context_size]))
            kwargs = {"conditional_input": context}
        y = self.base_distribution().sample(n, seed=seed)
        for bijector in self.bijectors(training=False):
            if isinstance(bijector, tfb.MaskedAutoregressiveFlow):
                y = bijector.forward(y, **kwargs)
            else:
                y = bijector.forward(y)
        return y

    # ---------------------------------------------------------------------------- config

    def get_config(self) -> dict[str, Any]:
        """Return the constructor arguments (the YAML keys) plus Keras' name/dtype/trainable."""
        if self._preprocessing is not None and self._preprocessing_config is None:
            raise NotImplementedError(
                f"{self.name}: the preprocessing bijector {self._preprocessing.name!r} has no "
                "get_config, so this model cannot be serialised"
            )
        config = super().get_config()
        config.update(
            event_size=self.event_size,
            context_size=self.context_size,
            blocks=self.blocks,
            hidden_units=list(self.hidden_units),
            activation=self.activation_name,
            batch_norm=self.batch_norm,
            log_scale_clamp=self.log_scale_clamp,
            batch_norm_momentum=self.batch_norm_momentum,
            preprocessing=self._preprocessing_config,
        )
        return config
