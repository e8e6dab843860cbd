"""Training metrics of a density model, computed from its per-jet log-probabilities.

One metric object reports four numbers so Keras' progress bar, the CSV history and W&B all see
them: the mean and standard deviation of log p(x) (nats per jet), and the negative
log-likelihood per dimension in nats and in bits (``nats_per_dim / ln 2``).
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops

__all__ = ["LogProbStats"]


@keras.saving.register_keras_serializable(package="tfjetflows")
class LogProbStats(keras.metrics.Metric):
    """Running mean/std of log p(x) and NLL per dimension (nats and bits).

    Args:
        event_size: dimension D of the modelled vector (for the per-dimension figures).
        name: the metric's name (its results are named ``log_prob_mean``, ``log_prob_std``,
            ``nats_per_dim`` and ``bits_per_dim``).

    Example:
        >>> stats = LogProbStats(event_size=2)
        >>> stats.update_state(ops.convert_to_tensor([-1.0, -3.0]))
        >>> {k: round(float(v), 3) for k, v in stats.result().items()}
        {'log_prob_mean': -2.0, 'log_prob_std': 1.0, 'nats_per_dim': 1.0, 'bits_per_dim': 1.443}
    """

    def __init__(self, event_size: int, name: str = "log_prob_stats", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.event_size = int(event_size)
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.total_sq = self.add_variable(shape=(), initializer="zeros", name="total_sq")

    def update_state(self, log_prob: Any, sample_weight: Any = None) -> None:
        """Accumulate a batch of log-probabilities [batch]."""
        del sample_weight
        values = ops.cast(ops.reshape(log_prob, [-1]), self.dtype)
        self.count.assign_add(ops.cast(ops.shape(values)[0], self.dtype))
        self.total.assign_add(ops.sum(values))
        self.total_sq.assign_add(ops.sum(values * values))

    def result(self) -> dict[str, Any]:
        """Return the four figures as a dict of scalars."""
        count = ops.maximum(self.count, 1.0)
        mean = self.total / count
        variance = ops.maximum(self.total_sq / count - mean * mean, 0.0)
        nats = -mean / self.event_size
        return {
            "log_prob_mean": mean,
            "log_prob_std": ops.sqrt(variance),
            "nats_per_dim": nats,
            "bits_per_dim": nats / math.log(2.0),
        }

    def reset_state(self) -> None:
        """Forget everything accumulated."""
        for variable in (self.count, self.total, self.total_sq):
            variable.assign(0.0)

    def get_config(self) -> dict[str, Any]:
        """Return the constructor arguments."""
        return {**super().get_config(), "event_size": self.event_size}
