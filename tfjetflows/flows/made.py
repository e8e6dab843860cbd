"""MADE: a masked autoencoder that outputs an autoregressive shift and log-scale per dimension.

Keras 3 layers (TFP 0.25's ``tfb.AutoregressiveNetwork`` is a tf_keras object whose weights a
Keras 3 model neither tracks nor trains). The masks are numpy constants built in ``__init__`` by
the pure functions :func:`input_degrees`, :func:`hidden_degrees` and :func:`masks`, so they can be
tested against literal matrices.

Degrees follow Germain et al.: input ``i`` has degree ``d(i)`` in ``1..D`` (its position in the
autoregressive order); hidden units get degrees in ``1..D-1``; a hidden unit of degree ``k`` sees
inputs of degree ``<= k``; output ``j`` sees hidden units of degree ``< d(j)``. So output ``j``
depends only on inputs earlier than ``j`` in the order, and the product of the masks is strictly
triangular in that order.

References:
    [1] Mathieu Germain, Karol Gregor, Iain Murray, Hugo Larochelle. MADE: Masked Autoencoder for
        Distribution Estimation. ICML 2015. arXiv:1502.03509.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import ops

__all__ = [
    "MADE",
    "MaskedDense",
    "hidden_degrees",
    "input_degrees",
    "masks",
    "reversed_order",
]

Order = str | Sequence[int]


def input_degrees(event_size: int, order: Order = "left-to-right") -> np.ndarray:
    """Return the degree (1-based position in the autoregressive order) of every input.

    Args:
        event_size: number of inputs D.
        order: ``"left-to-right"`` (x0 first), ``"right-to-left"`` (x[D-1] first), or an explicit
            permutation of ``0..D-1`` listing the dimensions in the order they are generated
            (``[2, 0, 1]``: x2 first, then x0 given x2, then x1 given both).

    Returns:
        Integer array of shape [D]; entry ``i`` is the degree of input ``i``.

    Raises:
        ValueError: unknown order name, or a sequence that is not a permutation of ``0..D-1``.
    """
    if event_size < 1:
        raise ValueError(f"MADE: event_size must be >= 1, got {event_size}")
    if isinstance(order, str):
        if order == "left-to-right":
            return np.arange(1, event_size + 1)
        if order == "right-to-left":
            return np.arange(event_size, 0, -1)
        raise ValueError(
            f"MADE: unknown order {order!r}; use 'left-to-right', 'right-to-left' or a "
            "permutation of the dimensions"
        )
    perm = [int(i) for i in order]
    if sorted(perm) != list(range(event_size)):
        raise ValueError(f"MADE: order {list(order)!r} is not a permutation of 0..{event_size - 1}")
    degrees = np.empty(event_size, dtype=np.int64)
    degrees[perm] = np.arange(1, event_size + 1)
    return degrees


def reversed_order(order: Order, event_size: int) -> list[int]:
    """Return the permutation (dimensions in generation order) that reverses ``order``."""
    degrees = input_degrees(event_size, order)
    return [int(i) for i in np.argsort(degrees)[::-1]]


def hidden_degrees(units: int, event_size: int) -> np.ndarray:
    """Return the degrees of ``units`` hidden units: ``1..D-1`` cycled (all 1 when D = 1)."""
    top = max(1, event_size - 1)
    return np.arange(units) % top + 1


def masks(
    event_size: int, hidden_units: Sequence[int], order: Order = "left-to-right"
) -> list[np.ndarray]:
    """Build the MADE masks, one per layer, each of shape [fan_in, fan_out] with 0/1 entries.

    Args:
        event_size: number of inputs D.
        hidden_units: widths of the hidden layers (may be empty: one strictly masked layer).
        order: see :func:`input_degrees`.

    Returns:
        ``len(hidden_units) + 1`` float arrays; the last has D columns (one per output dimension).

    Example:
        >>> first, last = masks(3, [4])
        >>> first.astype(int).tolist()
        [[1, 1, 1, 1], [0, 1, 0, 1], [0, 0, 0, 0]]
        >>> (first @ last > 0).astype(int).tolist()  # input i reaches output j iff i < j
        [[0, 1, 1], [0, 0, 1], [0, 0, 0]]
    """
    degrees = [input_degrees(event_size, order)]
    for units in hidden_units:
        degrees.append(hidden_degrees(int(units), event_size))
    out = []
    for d_in, d_out in zip(degrees[:-1], degrees[1:], strict=True):
        out.append((d_out[None, :] >= d_in[:, None]).astype(np.float64))
    out.append((degrees[0][None, :] > degrees[-1][:, None]).astype(np.float64))
    return out


class MaskedDense(keras.layers.Layer):
    """A dense layer whose kernel is multiplied by a fixed 0/1 mask, plus an unmasked context term.

    ``y = x @ (kernel * mask) + context @ context_kernel + bias``. Weights are created in
    ``__init__`` because every shape is known there.

    Args:
        mask: numpy array [fan_in, units] of zeros and ones.
        context_size: width of the conditioning input (0: none).
        kernel_initializer: initializer of the masked kernel (and of the context kernel).
        **kwargs: passed to :class:`keras.layers.Layer` (``name``, ``dtype``).
    """

    def __init__(
        self,
        mask: np.ndarray,
        context_size: int = 0,
        kernel_initializer: str | keras.initializers.Initializer = "glorot_uniform",
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        self._mask = np.asarray(mask, dtype=np.float64)
        fan_in, units = self._mask.shape
        self.units = int(units)
        self.context_size = int(context_size)
        self.kernel = self.add_weight(
            shape=(fan_in, units), initializer=kernel_initializer, name="kernel"
        )
        self.context_kernel = (
            self.add_weight(
                shape=(self.context_size, units),
                initializer=kernel_initializer,
                name="context_kernel",
            )
            if self.context_size
            else None
        )
        self.bias = self.add_weight(shape=(units,), initializer="zeros", name="bias")
        self.built = True

    @property
    def kernel_mask(self) -> np.ndarray:
        """The fixed 0/1 mask, [fan_in, units]."""
        return self._mask

    def call(self, inputs: object, context: object = None) -> object:
        """Apply the masked affine map; ``context`` is [batch, context_size] or None."""
        kernel = self.kernel * ops.cast(self._mask, self.kernel.dtype)
        out = ops.matmul(inputs, kernel) + self.bias
        if self.context_kernel is not None:
            if context is None:
                raise ValueError(
                    f"{self.name}: this layer was built with context_size="
                    f"{self.context_size} and needs a context"
                )
            out = out + ops.matmul(context, self.context_kernel)
        return out


@keras.saving.register_keras_serializable(package="tfjetflows")
class MADE(keras.layers.Layer):
    """Autoregressive network returning ``(shift, log_scale)``, each [..., event_size].

    Output ``j`` depends only on inputs that precede ``j`` in ``order`` and on the (unmasked)
    context, which is fed to every layer. The log-scale is soft-clamped to
    ``(-log_scale_clamp, log_scale_clamp)`` by ``clamp * tanh(raw / clamp)``. The output layer
    starts near zero, so a flow block starts close to the identity.

    Args:
        event_size: number of dimensions D.
        hidden_units: widths of the hidden layers.
        activation: Keras activation name of the hidden layers.
        context_size: width of the conditioning input (0: unconditional).
        order: ``"left-to-right"``, ``"right-to-left"`` or a permutation (see
            :func:`input_degrees`).
        log_scale_clamp: bound of the soft clamp; None disables clamping.
        output_init_scale: standard deviation of the output kernel's initial values.
        **kwargs: passed to :class:`keras.layers.Layer` (``name``, ``dtype``).
    """

    def __init__(
        self,
        event_size: int,
        hidden_units: Sequence[int] = (256, 256),
        activation: str = "relu",
        context_size: int = 0,
        order: Order = "left-to-right",
        log_scale_clamp: float | None = 3.0,
        output_init_scale: float = 1e-2,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        if log_scale_clamp is not None and log_scale_clamp <= 0:
            raise ValueError(f"MADE: log_scale_clamp must be > 0 or None, got {log_scale_clamp}")
        self.event_size = int(event_size)
        self.hidden_units = [int(u) for u in hidden_units]
        self.activation_name = activation
        self.activation = keras.activations.get(activation)
        self.context_size = int(context_size)
        self.order = order if isinstance(order, str) else [int(i) for i in order]
        self.log_scale_clamp = None if log_scale_clamp is None else float(log_scale_clamp)
        self.output_init_scale = float(output_init_scale)
        layer_masks = masks(self.event_size, self.hidden_units, self.order)
        # Create the sublayers' weights now, under this layer's name: made_0/hidden_0/kernel.
        with keras.name_scope(self.name):
            self.hidden_layers = [
                MaskedDense(mask, self.context_size, name=f"hidden_{i}", dtype=self.dtype_policy)
                for i, mask in enumerate(layer_masks[:-1])
            ]
            # One output layer for (shift, log_scale): the output mask tiled twice.
            self.output_layer = MaskedDense(
                np.concatenate([layer_masks[-1], layer_masks[-1]], axis=1),
                self.context_size,
                kernel_initializer=keras.initializers.RandomNormal(stddev=self.output_init_scale),
                name="output",
                dtype=self.dtype_policy,
            )
        self.built = True

    def call(self, inputs: object, context: object = None) -> tuple[object, object]:
        """Return ``(shift, log_scale)`` for ``inputs`` [..., D] and ``context`` [..., C]."""
        h = inputs
        for layer in self.hidden_layers:
            h = self.activation(layer(h, context=context))
        out = self.output_layer(h, context=context)
        shift = out[..., : self.event_size]
        log_scale = out[..., self.event_size :]
        if self.log_scale_clamp is not None:
            c = self.log_scale_clamp
            log_scale = c * ops.tanh(log_scale / c)
        return shift, log_scale

    def get_config(self) -> dict:
        """Return the constructor arguments (plus Keras' name/dtype/trainable)."""
        config = super().get_config()
        config.update(
            event_size=self.event_size,
            hidden_units=list(self.hidden_units),
            activation=self.activation_name,
            context_size=self.context_size,
            order=self.order,
            log_scale_clamp=self.log_scale_clamp,
            output_init_scale=self.output_init_scale,
        )
        return config
