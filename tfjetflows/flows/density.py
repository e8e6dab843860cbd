"""The shared base of the flow models: a Keras 3 model whose output is ``log p(x)``.

:class:`DensityModel` holds what MAF and BNAF have in common, so that training, export and the
CLI can treat them alike:

- inputs: the tensor ``x`` [batch, D] of an unconditional model, or the dict
  ``{"x": [batch, D], "context": [batch, C]}`` of a conditional one (a tuple is refused: Keras
  would read it as ``(x, y)``); datasets for ``fit`` yield inputs only, no targets;
- ``call`` returns ``log_prob``; ``compute_loss`` is the mean negative log-likelihood (weighted
  by ``sample_weight``) plus ``self.losses``; ``compute_metrics`` updates
  :class:`~tfjetflows.flows.metrics.LogProbStats`;
- an optional data-side ``preprocessing`` bijector (forward = standardised -> data), built from
  the config mapping of :class:`tfjetflows.data.preprocessing.Preprocessing`, whose inverse
  log-det subclasses add to ``log_prob`` so that likelihoods are in data units;
- ``get_config`` with ``event_size``, ``context_size`` and ``preprocessing`` (subclasses add their
  own constructor arguments: config keys = constructor arguments);
- ``can_sample``: whether the model can draw samples (MAF) or only scores data (BNAF).

Subclasses implement :meth:`DensityModel.log_prob` and set ``self.built = True`` once their
layers exist.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tfjetflows.flows.metrics import LogProbStats

__all__ = ["DensityModel", "build_preprocessing"]

tfb = tfp.bijectors


def build_preprocessing(
    preprocessing: Mapping | tfb.Bijector | None, dtype: str, owner: str = "model"
) -> tfb.Bijector | None:
    """Return the preprocessing bijector in ``dtype`` from its config mapping (or check it).

    Args:
        preprocessing: None, the config mapping of
            :class:`tfjetflows.data.preprocessing.Preprocessing`, or a ``tfb.Bijector``.
        dtype: the model's compute dtype; it overrides the dtype recorded in a config.
        owner: name used in error messages (the model class).

    Returns:
        The bijector, or None.

    Raises:
        TypeError: ``preprocessing`` is of another type.
        ValueError: a given bijector has another dtype than the model.
    """
    if preprocessing is None:
        return None
    if isinstance(preprocessing, tfb.Bijector):
        if preprocessing.dtype is not None and tf.as_dtype(preprocessing.dtype) != dtype:
            raise ValueError(
                f"{owner}: the preprocessing bijector {preprocessing.name!r} has dtype "
                f"{tf.as_dtype(preprocessing.dtype).name}, the model {dtype}"
            )
        return preprocessing
    if not isinstance(preprocessing, Mapping):
        raise TypeError(
            f"{owner}: preprocessing must be None, a tfb.Bijector or the config mapping of "
            f"tfjetflows.data.preprocessing.Preprocessing, got {type(preprocessing).__name__}"
        )
    from tfjetflows.data.preprocessing import Preprocessing

    # The flow's dtype wins over the dtype recorded in the config.
    return Preprocessing.from_config({**preprocessing, "dtype": dtype})


def _across_workers() -> bool:
    """Whether Keras reduces step logs across workers (its own test, in its TF trainer)."""
    strategy = tf.distribute.get_strategy()
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    in_multi_worker_mode = getattr(strategy.extended, "_in_multi_worker_mode", None)
    return bool(in_multi_worker_mode()) if in_multi_worker_mode is not None else False


class DensityModel(keras.Model):
    """Base of the flow models: inputs, loss, metrics, preprocessing and config.

    Args:
        event_size: dimension D of the data vector.
        context_size: width C of the conditioning vector (0: unconditional).
        preprocessing: None, the config mapping of
            :class:`tfjetflows.data.preprocessing.Preprocessing`, or a ``tfb.Bijector`` with
            forward = standardised -> data (a bijector without ``get_config`` cannot be saved).
        **kwargs: passed to :class:`keras.Model` (``name``, ``dtype``).

    Attributes:
        can_sample: class attribute; True where the model can draw samples.
    """

    can_sample: ClassVar[bool] = False

    def __init__(
        self,
        *,
        event_size: int,
        context_size: int = 0,
        preprocessing: Mapping | tfb.Bijector | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        kind = type(self).__name__
        if int(event_size) < 1:
            raise ValueError(f"{kind}: event_size must be >= 1, got {event_size}")
        if int(context_size) < 0:
            raise ValueError(f"{kind}: context_size must be >= 0, got {context_size}")
        self.event_size = int(event_size)
        self.context_size = int(context_size)
        self._preprocessing = build_preprocessing(preprocessing, self.compute_dtype, kind)
        self._preprocessing_config = (
            dict(preprocessing)
            if isinstance(preprocessing, Mapping)
            else (
                self._preprocessing.get_config()
                if self._preprocessing is not None and hasattr(self._preprocessing, "get_config")
                else None
            )
        )
        self.log_prob_stats = LogProbStats(self.event_size)

    # ------------------------------------------------------------------------- preprocessing

    @property
    def preprocessing(self) -> tfb.Bijector | None:
        """The data-side preprocessing bijector, or None."""
        return self._preprocessing

    def _preprocess(self, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Map data ``x`` to the standardised space; return it and the inverse log-det [batch]."""
        ildj = tf.zeros(tf.shape(x)[:-1], dtype=x.dtype)
        if self._preprocessing is None:
            return x, ildj
        ildj += self._preprocessing.inverse_log_det_jacobian(x, event_ndims=1)
        return self._preprocessing.inverse(x), ildj

    # ---------------------------------------------------------------------------- densities

    def _check_context(self, context: tf.Tensor | None) -> tf.Tensor | None:
        """Return ``context`` cast to the compute dtype, or raise if it is (not) expected."""
        kind = type(self).__name__
        if self.context_size == 0:
            if context is not None:
                raise ValueError(f"{self.name}: context given to an unconditional {kind}")
            return None
        if context is None:
            raise ValueError(
                f"{self.name}: this {kind} has context_size={self.context_size} and needs a context"
            )
        return tf.cast(context, self.compute_dtype)

    def log_prob(
        self, x: tf.Tensor, context: tf.Tensor | None = None, training: bool = False
    ) -> tf.Tensor:
        """Return log p(x | context) in data units, shape [batch] (implemented by subclasses)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement log_prob")

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

    # ------------------------------------------------------------------------------ training

    def compute_loss(
        self,
        x: Any = None,
        y: Any = None,
        y_pred: tf.Tensor | None = None,
        sample_weight: tf.Tensor | None = None,
        training: bool = True,
    ) -> tf.Tensor:
        """Mean negative log-likelihood (weighted by ``sample_weight``) plus ``self.losses``.

        Under a ``tf.distribute`` strategy with R > 1 replicas this runs once per replica on
        its share of the global batch, and Keras sums the replicas' gradients. So that the sum
        is the gradient of the (weighted) mean over the *global* batch, as on one device, the
        replica's loss has the gradient of ``sum(w * nll) / W``, where ``W`` is the weight of
        the global batch (one ``all_reduce``; exact also when the replicas' shares differ).
        Its *value* is Keras' own convention, the replica's mean divided by R (Keras'
        ``scale_loss_for_distribution``), which Keras' loss tracker multiplies back by R and
        averages with the replicas' batch sizes: the reported loss is the global-batch mean.
        The two agree whenever the replicas' shares are equal. ``self.losses`` are divided by R
        (every replica adds them), as Keras does.
        """
        del y
        if y_pred is None:
            y_pred = self(x, training=training)
        nll = -tf.cast(y_pred, tf.float32)
        if sample_weight is None:
            w = tf.ones_like(nll)
        else:
            w = tf.cast(tf.reshape(sample_weight, tf.shape(nll)), tf.float32)
        total, weight = tf.reduce_sum(w * nll), tf.reduce_sum(w)
        loss = tf.math.divide_no_nan(total, weight)
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync if context is not None else 1
        if replicas > 1:
            global_weight = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.stop_gradient(weight))
            exact = tf.math.divide_no_nan(total, global_weight)
            loss = exact + tf.stop_gradient(loss / replicas - exact)
        for extra in self.losses:
            loss += tf.cast(tf.reduce_sum(extra), tf.float32) / replicas
        return loss

    def compute_metrics(
        self, x: Any, y: Any, y_pred: tf.Tensor, sample_weight: tf.Tensor | None = None
    ) -> dict[str, Any]:
        """Update :class:`LogProbStats` (log p mean/std, nats/dim, bits/dim) and the loss.

        Across several workers (``MultiWorkerMirroredStrategy``) the figures are returned with
        shape [1]: Keras 3.15 averages step logs across workers with ``reduce(MEAN, axis=0)``,
        which fails on scalars (tensorflow/tensorflow#72388) and turns [1] into a scalar.
        """
        del x, y, sample_weight
        self.log_prob_stats.update_state(y_pred)
        results = self.get_metrics_result()
        if _across_workers():
            results = {k: tf.reshape(tf.convert_to_tensor(v), [1]) for k, v in results.items()}
        return results

    # ---------------------------------------------------------------------------- config

    def get_config(self) -> dict[str, Any]:
        """Return ``event_size``, ``context_size``, ``preprocessing`` and Keras' own keys."""
        if self._preprocessing is not None and self._preprocessing_config is None:
            raise NotImplementedError(
                f"{self.name}: the preprocessing bijector {self._preprocessing.name!r} has no "
                "get_config, so this model cannot be serialised"
            )
        config = super().get_config()
        config.update(
            event_size=self.event_size,
            context_size=self.context_size,
            preprocessing=self._preprocessing_config,
        )
        return config
