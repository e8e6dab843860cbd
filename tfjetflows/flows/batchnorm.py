"""Batch normalisation as a bijector, over Keras 3 variables.

The flow layer of Dinh et al. (Real NVP) and Papamakarios et al. (MAF): in the data -> base
direction (the bijector's *inverse*, as in TFP's MAF chains)

    z = (x - mean) / sqrt(var + eps) * exp(log_gamma) + beta,

with batch statistics in training mode (which also update the moving statistics) and the moving
statistics in eval mode. The log-determinant is exact in both modes:
``ildj = sum(log_gamma - 0.5 * log(var + eps))`` with the statistics that normalised the batch.

TFP 0.25's ``tfb.BatchNormalization`` holds a tf_keras layer whose variables a Keras 3 model does
not track, so the variables live in :class:`BatchNormLayer` (a Keras 3 layer) and
:class:`BatchNormBijector` is a thin ``tfb.Bijector`` view of it in one mode.

References:
    [1] Laurent Dinh, Jascha Sohl-Dickstein, Samy Bengio. Density estimation using Real NVP.
        ICLR 2017. arXiv:1605.08803.
    [2] George Papamakarios, Theo Pavlakou, Iain Murray. Masked Autoregressive Flow for Density
        Estimation. NeurIPS 2017. arXiv:1705.07057.
"""

from __future__ import annotations

import keras
import tensorflow as tf
import tensorflow_probability as tfp

__all__ = ["BatchNormBijector", "BatchNormLayer"]

tfb = tfp.bijectors


@keras.saving.register_keras_serializable(package="tfjetflows")
class BatchNormLayer(keras.layers.Layer):
    """Holds the batch-norm variables and does the arithmetic; ``call`` normalises (data -> base).

    Variables (shape [event_size]): ``log_gamma`` and ``beta`` (trainable), ``moving_mean`` and
    ``moving_variance`` (non-trainable). A training-mode call updates the moving statistics:
    ``moving = momentum * moving + (1 - momentum) * batch`` (so momentum 0 copies the batch
    statistics). Batch variances are the biased (population) ones, as used for normalising.

    Args:
        event_size: number of dimensions D.
        momentum: moving-average momentum in [0, 1).
        epsilon: added to the variance before the square root.
        **kwargs: passed to :class:`keras.layers.Layer` (``name``, ``dtype``).
    """

    def __init__(
        self, event_size: int, momentum: float = 0.9, epsilon: float = 1e-5, **kwargs: object
    ) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"BatchNormLayer: momentum must be in [0, 1), got {momentum}")
        if epsilon <= 0:
            raise ValueError(f"BatchNormLayer: epsilon must be > 0, got {epsilon}")
        self.event_size = int(event_size)
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        shape = (self.event_size,)
        self.log_gamma = self.add_weight(shape=shape, initializer="zeros", name="log_gamma")
        self.beta = self.add_weight(shape=shape, initializer="zeros", name="beta")
        self.moving_mean = self.add_weight(
            shape=shape, initializer="zeros", trainable=False, name="moving_mean"
        )
        self.moving_variance = self.add_weight(
            shape=shape, initializer="ones", trainable=False, name="moving_variance"
        )
        self.built = True

    def statistics(self, x: tf.Tensor, training: bool) -> tuple[tf.Tensor, tf.Tensor]:
        """Return ``(mean, variance)`` to normalise ``x`` [..., D] with.

        Training mode returns the batch statistics (over all axes but the last) and updates the
        moving statistics; eval mode returns the moving statistics.
        """
        if not training:
            return (
                tf.convert_to_tensor(self.moving_mean),
                tf.convert_to_tensor(self.moving_variance),
            )
        mean, variance = self.batch_moments(x)
        m = tf.cast(self.momentum, x.dtype)
        self.moving_mean.assign(m * self.moving_mean + (1.0 - m) * tf.stop_gradient(mean))
        self.moving_variance.assign(
            m * self.moving_variance + (1.0 - m) * tf.stop_gradient(variance)
        )
        return mean, variance

    def batch_moments(self, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Return the batch ``(mean, variance)`` of ``x`` [..., D] over all axes but the last.

        Synchronised across replicas: inside a ``tf.distribute`` replica context with more than
        one replica, each replica's count, sum and sum of squares (shifted by the moving mean,
        the same on every replica, for precision) are summed by one ``all_reduce``, so every
        replica normalises with the statistics of the global batch, as one device would with
        that batch. Gradients flow through the ``all_reduce`` (its gradient is an ``all_reduce``
        of the gradients), so they are those of the global batch too. Elsewhere (one device, or
        cross-replica context) this is ``tf.nn.moments``.
        """
        axes = list(range(x.shape.rank - 1))
        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return tf.nn.moments(x, axes=axes)
        shift = tf.stop_gradient(tf.cast(self.moving_mean, x.dtype))
        centred = x - shift
        count = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), x.dtype)
        packed = tf.concat(
            [
                tf.reshape(count, [1]),
                tf.reduce_sum(centred, axis=axes),
                tf.reduce_sum(tf.square(centred), axis=axes),
            ],
            axis=0,
        )
        total = context.all_reduce(tf.distribute.ReduceOp.SUM, packed)
        count, sums, squares = tf.split(total, [1, self.event_size, self.event_size])
        count = tf.maximum(count, 1.0)
        mean_shifted = sums / count
        variance = tf.maximum(squares / count - tf.square(mean_shifted), 0.0)
        return shift + mean_shifted, variance

    def normalize(self, x: tf.Tensor, mean: tf.Tensor, variance: tf.Tensor) -> tf.Tensor:
        """Data -> base: ``(x - mean) / sqrt(variance + eps) * exp(log_gamma) + beta``."""
        return (x - mean) * tf.math.rsqrt(variance + self.epsilon) * tf.exp(
            self.log_gamma
        ) + self.beta

    def denormalize(self, z: tf.Tensor, mean: tf.Tensor, variance: tf.Tensor) -> tf.Tensor:
        """Base -> data: the inverse of :meth:`normalize`."""
        return (z - self.beta) * tf.exp(-self.log_gamma) * tf.sqrt(variance + self.epsilon) + mean

    def inverse_log_det(self, variance: tf.Tensor) -> tf.Tensor:
        """Log |det| of :meth:`normalize` per event (a scalar)."""
        return tf.reduce_sum(self.log_gamma - 0.5 * tf.math.log(variance + self.epsilon))

    def call(self, inputs: tf.Tensor, training: bool = False) -> tf.Tensor:
        """Normalise ``inputs`` (data -> base) with batch or moving statistics."""
        mean, variance = self.statistics(inputs, bool(training))
        return self.normalize(inputs, mean, variance)

    def get_config(self) -> dict:
        """Return the constructor arguments (plus Keras' name/dtype/trainable)."""
        config = super().get_config()
        config.update(event_size=self.event_size, momentum=self.momentum, epsilon=self.epsilon)
        return config


class BatchNormBijector(tfb.Bijector):
    """A ``tfb.Bijector`` view of a :class:`BatchNormLayer` in one mode.

    Forward is base -> data (de-normalise), inverse is data -> base (normalise). In eval mode both
    directions use the moving statistics and the Jacobian is constant. In training mode only the
    inverse direction is defined (it normalises with, and updates from, the statistics of its
    input batch); the forward direction raises, because batch statistics of the output are not
    available before the output exists. Sample in eval mode.

    Args:
        layer: the layer holding the variables.
        training: use batch statistics (and update the moving ones) in the inverse direction.
        validate_args: passed to ``tfb.Bijector``.
        name: bijector name.
    """

    def __init__(
        self,
        layer: BatchNormLayer,
        training: bool = False,
        validate_args: bool = False,
        name: str = "batch_norm",
    ) -> None:
        parameters = dict(locals())
        self._layer = layer
        self._training = bool(training)
        super().__init__(
            forward_min_event_ndims=1,
            is_constant_jacobian=not self._training,
            validate_args=validate_args,
            dtype=tf.as_dtype(layer.variable_dtype),
            parameters=parameters,
            name=name,
        )

    @classmethod
    def _parameter_properties(cls, dtype: object) -> dict:
        return {}

    @property
    def layer(self) -> BatchNormLayer:
        """The layer holding the variables."""
        return self._layer

    @property
    def training(self) -> bool:
        """Whether the inverse uses (and updates) batch statistics."""
        return self._training

    def _eval_only(self, what: str) -> None:
        if self._training:
            raise NotImplementedError(
                f"{self.name}: {what} is not defined in training mode (batch statistics exist "
                "only for the data -> base direction); use training=False to sample"
            )

    def _batch_ones(self, x: tf.Tensor) -> tf.Tensor:
        return tf.ones(tf.shape(x)[:-1], dtype=x.dtype)

    def _forward(self, x: tf.Tensor) -> tf.Tensor:
        self._eval_only("forward")
        mean, variance = self._layer.statistics(x, training=False)
        return self._layer.denormalize(x, mean, variance)

    def _inverse(self, y: tf.Tensor) -> tf.Tensor:
        mean, variance = self._layer.statistics(y, training=self._training)
        return self._layer.normalize(y, mean, variance)

    def _inverse_log_det_jacobian(self, y: tf.Tensor) -> tf.Tensor:
        if self._training:
            _, variance = self._layer.batch_moments(y)
        else:
            variance = tf.convert_to_tensor(self._layer.moving_variance)
        return self._layer.inverse_log_det(variance) * self._batch_ones(y)

    def _forward_log_det_jacobian(self, x: tf.Tensor) -> tf.Tensor:
        self._eval_only("the forward log-det")
        variance = tf.convert_to_tensor(self._layer.moving_variance)
        return -self._layer.inverse_log_det(variance) * self._batch_ones(x)
