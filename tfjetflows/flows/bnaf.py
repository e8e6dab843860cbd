"""Block Neural Autoregressive Flow (BNAF) as a Keras 3 density model.

One BNAF flow is a monotone, triangular map ``y = f(x)`` of ``R^D`` built from masked linear
layers and tanh. Every hidden layer has ``D`` blocks of ``hidden_factor`` units; the weight matrix
of a layer with ``D x D`` blocks of shape ``(b, a)`` (``b`` outputs, ``a`` inputs per dimension)
is block lower-triangular: the diagonal blocks are positive (``exp`` of a free parameter), the
blocks below the diagonal are free, the blocks above are zero. With weight normalisation (per
output row ``i``: ``W_i = exp(log g_i) V_i / ||V_i||``) the layer reads::

    h = x W^T + bias,  W = [D*b, D*a]

Output ``d`` of a flow then depends only on inputs ``<= d`` and increases with input ``d``, so
the Jacobian is lower triangular with a positive diagonal, and

    log |det J| = sum_d log dy_d/dx_d.

Each ``dy_d/dx_d`` is a product of the diagonal blocks of the layers and of the tanh
derivatives. All its factors are positive, so it is accumulated in log space: the log diagonal
blocks (computed directly as ``log g + V_diag - log ||V||``) are combined by a log-space matrix
product (:func:`log_block_product`, a ``logsumexp``), and the tanh term is
``log(1 - tanh^2 x) = 2 (log 2 - x - softplus(-2x))``. Nothing is exponentiated and logged back,
so saturated units cost no precision.

The optional gated residual connection of the paper, ``y = a f(x) + (1 - a) x`` with
``a = sigmoid(alpha)`` and a learned scalar ``alpha`` per flow, has ``dy_d/dx_d = a f'_d + 1 - a``,
whose log is a ``logsumexp`` of the two terms. Several flows are stacked with the order of the
dimensions reversed between them; the base distribution is a standard normal.

BNAF has no closed-form inverse: this model gives exact log-densities (jet scoring, anomaly
scores) and cannot sample; use :class:`~tfjetflows.flows.maf.MAF` to generate.

Memory: the masked weights are stored dense, ``O(D^2 a b)`` numbers per layer (the hidden layers
are ``(hidden_factor * D)^2``). The constructor estimates the memory of training
(:func:`bnaf_memory_bytes`) and refuses a model that would not fit with a
:class:`~tfjetflows.config.ConfigError` that names the figures.

References:
    [1] Nicola De Cao, Wilker Aziz, Ivan Titov. Block Neural Autoregressive Flow. UAI 2019.
        arXiv:1904.04676.
    [2] Tim Salimans, Diederik P. Kingma. Weight Normalization: A Simple Reparameterization to
        Accelerate Training of Deep Neural Networks. NeurIPS 2016. arXiv:1602.07868.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from itertools import pairwise
from typing import Any, ClassVar

import keras
import numpy as np
import tensorflow as tf

from tfjetflows.config import ConfigError
from tfjetflows.flows.density import DensityModel

__all__ = [
    "BNAF",
    "MEMORY_FRACTION",
    "NO_INVERSE_MESSAGE",
    "BlockFlow",
    "MaskedWeight",
    "bnaf_memory_bytes",
    "bnaf_parameter_count",
    "block_ids",
    "diagonal_block_mask",
    "log_block_product",
    "log_tanh_derivative",
    "lower_block_mask",
    "physical_memory_bytes",
]

NO_INVERSE_MESSAGE = (
    "BNAF has no closed-form inverse: it scores jets (density, anomaly scores); use a MAF to sample"
)
#: Share of the machine's physical memory a BNAF may plan to use for training.
MEMORY_FRACTION = 0.5
#: Training-time copies of every dense weight matrix besides weights, gradients and Adam's two
#: moments: the weight-normalisation intermediates kept for the backward pass. Calibrated by
#: peak-RSS measurement of ``model.fit`` on CPU (see ``bench/bench_density.py --memory``).
WEIGHT_TEMPORARIES = 6
#: Batch size of the activation term of the memory estimate.
MEMORY_BATCH = 256
_RESIDUALS = (None, "gated")
_GIB = 1024**3


# ------------------------------------------------------------------------------------ masks


def block_ids(blocks: int, size: int) -> np.ndarray:
    """Return the block index of every unit: ``[0]*size + [1]*size + ... + [blocks-1]*size``."""
    if blocks < 1 or size < 1:
        raise ValueError(f"BNAF: blocks and block size must be >= 1, got {blocks} and {size}")
    return np.repeat(np.arange(blocks), size)


def diagonal_block_mask(blocks: int, out_size: int, in_size: int) -> np.ndarray:
    """Return the 0/1 mask of the diagonal blocks, shape [blocks*out_size, blocks*in_size].

    Example:
        >>> diagonal_block_mask(2, 1, 2)
        array([[1., 1., 0., 0.],
               [0., 0., 1., 1.]])
    """
    rows, cols = block_ids(blocks, out_size), block_ids(blocks, in_size)
    return (rows[:, None] == cols[None, :]).astype(np.float64)


def lower_block_mask(blocks: int, out_size: int, in_size: int) -> np.ndarray:
    """Return the 0/1 mask of the blocks strictly below the diagonal, same shape.

    Example:
        >>> lower_block_mask(2, 1, 2)
        array([[0., 0., 0., 0.],
               [1., 1., 0., 0.]])
    """
    rows, cols = block_ids(blocks, out_size), block_ids(blocks, in_size)
    return (rows[:, None] > cols[None, :]).astype(np.float64)


# --------------------------------------------------------------------- log-space helpers


def log_block_product(log_a: tf.Tensor, log_b: tf.Tensor) -> tf.Tensor:
    """Return ``log(exp(log_a) @ exp(log_b))`` over the last two axes, by ``logsumexp``.

    Used for the diagonal Jacobian blocks of a BNAF, which are positive: the block of dimension
    ``d`` of a composition is the product of the layers' blocks of ``d``.

    Args:
        log_a: [..., n, m] logs of positive matrices.
        log_b: [..., m, k] logs of positive matrices; leading axes broadcast against ``log_a``.

    Returns:
        [..., n, k] logs of the matrix products.
    """
    return tf.reduce_logsumexp(log_a[..., :, :, None] + log_b[..., None, :, :], axis=-2)


def log_tanh_derivative(x: tf.Tensor) -> tf.Tensor:
    """Return ``log(1 - tanh(x)^2) = 2 (log 2 - x - softplus(-2x))``, stable for large ``|x|``."""
    return 2.0 * (math.log(2.0) - x - tf.math.softplus(-2.0 * x))


# ------------------------------------------------------------------------------------ memory


def _widths(event_size: int, hidden_factor: int, layers: int) -> list[int]:
    return [event_size] + [hidden_factor * event_size] * layers + [event_size]


def bnaf_parameter_count(
    event_size: int, hidden_factor: int, layers: int, flows: int, residual: str | None = "gated"
) -> int:
    """Return the number of numbers a BNAF stores (dense masked weights, scales, biases, gates)."""
    widths = _widths(event_size, hidden_factor, layers)
    per_flow = sum(n_out * n_in + 2 * n_out for n_in, n_out in pairwise(widths))
    return flows * (per_flow + (1 if residual == "gated" else 0))


def bnaf_memory_bytes(
    event_size: int,
    hidden_factor: int,
    layers: int,
    flows: int,
    *,
    batch_size: int = MEMORY_BATCH,
    dtype_bytes: int = 4,
) -> int:
    """Estimate the memory (bytes) of training a BNAF with Adam.

    The sum of: the parameters four times (weights, gradients, Adam's two moments);
    :data:`WEIGHT_TEMPORARIES` more copies of every dense weight matrix (the weight
    normalisation's intermediates kept for the backward pass); and the activations of a batch
    (a few copies of every layer's output, and the ``[batch, D, b, a]`` intermediates of the
    log-space Jacobian product).

    Args:
        event_size: D.
        hidden_factor: hidden units per dimension.
        layers: hidden layers per flow.
        flows: stacked flows.
        batch_size: training batch size.
        dtype_bytes: bytes per number (4 for float32).

    Returns:
        The estimate in bytes.
    """
    widths = _widths(event_size, hidden_factor, layers)
    blocks = [1] + [hidden_factor] * layers + [1]
    weights = sum(n_out * n_in for n_in, n_out in pairwise(widths))
    activations = sum(
        4 * n_out + 3 * event_size * b_out * b_in
        for n_out, (b_in, b_out) in zip(widths[1:], pairwise(blocks), strict=True)
    )
    numbers = (
        4 * bnaf_parameter_count(event_size, hidden_factor, layers, flows)
        + flows * WEIGHT_TEMPORARIES * weights
        + flows * batch_size * activations
    )
    return int(numbers * dtype_bytes)


def physical_memory_bytes() -> int:
    """Return the machine's physical memory in bytes (0 where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


# ------------------------------------------------------------------------------------ layers


def _block_uniform(blocks: int, out_size: int, in_size: int) -> Any:
    """Initializer of the free weights: Glorot-uniform per row block, zero above the diagonal.

    Row block ``d`` sees ``(d + 1) * in_size`` inputs, so its limit is
    ``sqrt(6 / ((d + 1) * in_size + out_size))`` (as in the reference implementation).
    """
    rows, cols = block_ids(blocks, out_size), block_ids(blocks, in_size)
    limits = np.sqrt(6.0 / ((rows + 1) * in_size + out_size))

    def initializer(shape: Any, dtype: Any = None) -> Any:
        draw = keras.random.uniform(shape, minval=-1.0, maxval=1.0, dtype=dtype)
        draw = draw * keras.ops.cast(limits[:, None], draw.dtype)
        keep = keras.ops.convert_to_tensor(rows[:, None] >= cols[None, :])
        return keras.ops.where(keep, draw, keras.ops.zeros_like(draw))

    return initializer


def _log_uniform(shape: Any, dtype: Any = None) -> Any:
    """Initializer of the weight-norm log-scales: ``log u``, ``u ~ U(0.01, 1)``."""
    return keras.ops.log(keras.random.uniform(shape, minval=0.01, maxval=1.0, dtype=dtype))


@keras.saving.register_keras_serializable(package="tfjetflows")
class MaskedWeight(keras.layers.Layer):
    """Block lower-triangular, weight-normalised linear layer with positive diagonal blocks.

    ``D x D`` blocks of shape ``(out_size, in_size)``; returns ``y = x W^T + bias`` [batch,
    D*out_size] and the log of the diagonal blocks [D, out_size, in_size].

    Args:
        blocks: number of blocks D (the event size of the flow).
        in_size: inputs per block ``a``.
        out_size: outputs per block ``b``.
        **kwargs: passed to :class:`keras.layers.Layer` (``name``, ``dtype``).
    """

    def __init__(self, blocks: int, in_size: int, out_size: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.blocks = int(blocks)
        self.in_size = int(in_size)
        self.out_size = int(out_size)
        d, a, b = self.blocks, self.in_size, self.out_size
        # Small index vectors only: the [D*b, D*a] masks are rebuilt from them when called, so
        # no weight-sized constant ends up in a traced graph or an exported SavedModel.
        self._rows = block_ids(d, b).astype(np.int32)
        self._cols = block_ids(d, a).astype(np.int32)
        self._diagonal_columns = (np.arange(d)[:, None] * a + np.arange(a)[None, :]).astype(
            np.int32
        )
        self.weight = self.add_weight(
            shape=(d * b, d * a), initializer=_block_uniform(d, b, a), name="weight"
        )
        self.log_scale = self.add_weight(shape=(d * b,), initializer=_log_uniform, name="log_scale")
        bound = 1.0 / math.sqrt(d * b)
        self.bias = self.add_weight(
            shape=(d * b,),
            initializer=keras.initializers.RandomUniform(-bound, bound),
            name="bias",
        )
        self.built = True

    def masks(self) -> tuple[tf.Tensor, tf.Tensor]:
        """Return the boolean (diagonal, strictly lower) block masks, [D*b, D*a] each."""
        rows = tf.constant(self._rows)[:, None]
        cols = tf.constant(self._cols)[None, :]
        return tf.equal(rows, cols), tf.greater(rows, cols)

    def weight_and_log_diagonal(self) -> tuple[tf.Tensor, tf.Tensor]:
        """Return the normalised weight [D*b, D*a] and its log diagonal blocks [D, b, a]."""
        v = tf.convert_to_tensor(self.weight)
        diagonal, lower = self.masks()
        zero = tf.zeros_like(v)
        # exp only where it is used: an overflowing exp elsewhere would give NaN gradients.
        w = tf.where(diagonal, tf.exp(tf.where(diagonal, v, zero)), tf.where(lower, v, zero))
        log_norm = 0.5 * tf.math.log(tf.reduce_sum(tf.square(w), axis=1))  # [D*b]
        log_row_scale = tf.convert_to_tensor(self.log_scale) - log_norm
        weight = w * tf.exp(log_row_scale)[:, None]
        d, a, b = self.blocks, self.in_size, self.out_size
        v_diagonal = tf.gather(
            tf.reshape(v, [d, b, d * a]), tf.constant(self._diagonal_columns), axis=2, batch_dims=1
        )  # [D, b, a]
        log_diagonal = v_diagonal + tf.reshape(log_row_scale, [d, b, 1])
        return weight, log_diagonal

    def call(self, inputs: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Return ``(x W^T + bias, log diagonal blocks [D, b, a])`` for ``inputs`` [batch, D*a]."""
        weight, log_diagonal = self.weight_and_log_diagonal()
        outputs = tf.matmul(inputs, weight, transpose_b=True) + self.bias
        return outputs, log_diagonal

    def get_config(self) -> dict[str, Any]:
        """Return the constructor arguments (plus Keras' name/dtype/trainable)."""
        config = super().get_config()
        config.update(blocks=self.blocks, in_size=self.in_size, out_size=self.out_size)
        return config


@keras.saving.register_keras_serializable(package="tfjetflows")
class BlockFlow(keras.layers.Layer):
    """One BNAF flow ``R^D -> R^D``: masked layers with tanh between them, optional gated residual.

    Layer sizes per dimension: ``1 -> hidden_factor -> ... -> hidden_factor -> 1`` with ``layers``
    hidden layers (so ``layers + 1`` :class:`MaskedWeight` layers and ``layers`` tanh).

    Args:
        event_size: D.
        hidden_factor: hidden units per dimension.
        layers: hidden layers (>= 1).
        residual: None or ``"gated"``.
        **kwargs: passed to :class:`keras.layers.Layer` (``name``, ``dtype``).
    """

    def __init__(
        self,
        event_size: int,
        hidden_factor: int = 10,
        layers: int = 2,
        residual: str | None = "gated",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if residual not in _RESIDUALS:
            raise ValueError(f"BNAF: residual must be None or 'gated', got {residual!r}")
        self.event_size = int(event_size)
        self.hidden_factor = int(hidden_factor)
        self.num_layers = int(layers)
        self.residual = residual
        sizes = [1] + [self.hidden_factor] * self.num_layers + [1]
        with keras.name_scope(self.name):
            self.linears = [
                MaskedWeight(
                    self.event_size, a, b, name=f"masked_weight_{i}", dtype=self.dtype_policy
                )
                for i, (a, b) in enumerate(pairwise(sizes))
            ]
        self.gate = (
            self.add_weight(
                shape=(), initializer=keras.initializers.RandomNormal(stddev=1.0), name="gate"
            )
            if residual == "gated"
            else None
        )
        self.built = True

    def forward_and_log_diagonal(self, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Return ``y = f(x)`` [batch, D] and ``log dy_d/dx_d`` [batch, D]."""
        d = self.event_size
        h = x
        log_jacobian = None  # [batch, D, b, 1]: log dh_(d, i) / dx_d, one column per dimension
        for i, layer in enumerate(self.linears):
            h, log_w = layer(h)
            if log_jacobian is None:
                log_jacobian = log_w[None]  # the first layer has a = 1
            else:
                log_jacobian = log_block_product(log_w, log_jacobian)
            if i < len(self.linears) - 1:
                log_jacobian += tf.reshape(log_tanh_derivative(h), [-1, d, layer.out_size, 1])
                h = tf.tanh(h)
        log_diagonal = tf.reshape(log_jacobian, [-1, d])
        if self.gate is None:
            return h, log_diagonal
        gate = tf.convert_to_tensor(self.gate)
        a = tf.sigmoid(gate)
        y = a * h + (1.0 - a) * x
        log_diagonal = tf.reduce_logsumexp(
            tf.stack(
                [
                    tf.math.log_sigmoid(gate) + log_diagonal,
                    tf.broadcast_to(tf.math.log_sigmoid(-gate), tf.shape(log_diagonal)),
                ]
            ),
            axis=0,
        )
        return y, log_diagonal

    def call(self, inputs: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Return ``y = f(x)`` [batch, D] and ``log |det df/dx|`` [batch]."""
        y, log_diagonal = self.forward_and_log_diagonal(inputs)
        return y, tf.reduce_sum(log_diagonal, axis=-1)

    def get_config(self) -> dict[str, Any]:
        """Return the constructor arguments (plus Keras' name/dtype/trainable)."""
        config = super().get_config()
        config.update(
            event_size=self.event_size,
            hidden_factor=self.hidden_factor,
            layers=self.num_layers,
            residual=self.residual,
        )
        return config


# ------------------------------------------------------------------------------------- model


@keras.saving.register_keras_serializable(package="tfjetflows")
class BNAF(DensityModel):
    """Block Neural Autoregressive Flow (De Cao et al. 2019): exact density, no sampling.

    The map data -> base is ``preprocessing^-1``, then ``flows`` :class:`BlockFlow` with the
    dimensions reversed between consecutive flows; the base is a standard normal.

    Args:
        event_size: dimension D of the data vector.
        context_size: must be 0 (BNAF is unconditional here).
        flows: number of stacked BNAF flows.
        layers: hidden layers per flow.
        hidden_factor: hidden units per dimension (hidden width = ``hidden_factor * D``).
        residual: None or ``"gated"`` (the paper's gated residual connection).
        preprocessing: None, the config mapping of
            :class:`tfjetflows.data.preprocessing.Preprocessing`, or a ``tfb.Bijector`` with
            forward = standardised -> data.
        **kwargs: passed to :class:`keras.Model` (``name``, ``dtype``).

    Raises:
        ValueError: ``context_size`` is not 0, or a size is not positive, or an unknown residual.
        ConfigError: training would need more than :data:`MEMORY_FRACTION` of the machine's
            physical memory (the message gives the figures).

    Example:
        >>> import tensorflow as tf
        >>> model = BNAF(event_size=2, flows=1, layers=1, hidden_factor=4)
        >>> model.log_prob(tf.zeros([5, 2])).shape
        TensorShape([5])
    """

    can_sample: ClassVar[bool] = False

    def __init__(
        self,
        *,
        event_size: int,
        context_size: int = 0,
        flows: int = 2,
        layers: int = 2,
        hidden_factor: int = 10,
        residual: str | None = "gated",
        preprocessing: Mapping | None = None,
        **kwargs: Any,
    ) -> None:
        if int(context_size) != 0:
            raise ValueError("BNAF is unconditional; use MAF for class-conditional models")
        for key, value in (("flows", flows), ("layers", layers), ("hidden_factor", hidden_factor)):
            if int(value) < 1:
                raise ValueError(f"BNAF: {key} must be >= 1, got {value}")
        if residual not in _RESIDUALS:
            raise ValueError(f"BNAF: residual must be None or 'gated', got {residual!r}")
        super().__init__(
            event_size=event_size, context_size=0, preprocessing=preprocessing, **kwargs
        )
        self.flows = int(flows)
        self.num_layers = int(layers)
        self.hidden_factor = int(hidden_factor)
        self.residual = residual
        self._check_memory()
        with keras.name_scope(self.name):
            self.flow_layers = [
                BlockFlow(
                    self.event_size,
                    hidden_factor=self.hidden_factor,
                    layers=self.num_layers,
                    residual=self.residual,
                    name=f"flow_{k}",
                    dtype=self.dtype_policy,
                )
                for k in range(self.flows)
            ]
        self.built = True

    def _check_memory(self) -> None:
        """Raise :class:`ConfigError` if training would not fit in the machine's memory."""
        need = bnaf_memory_bytes(
            self.event_size,
            self.hidden_factor,
            self.num_layers,
            self.flows,
            dtype_bytes=np.dtype(self.variable_dtype).itemsize,
        )
        have = physical_memory_bytes()
        if have and need > MEMORY_FRACTION * have:
            raise ConfigError(
                f"BNAF with event_size={self.event_size}, hidden_factor={self.hidden_factor}, "
                f"layers={self.num_layers}, flows={self.flows} needs about {need / _GIB:.1f} GiB "
                f"to train; this machine has {have / _GIB:.1f} GiB (a BNAF may use "
                f"{MEMORY_FRACTION:.0%}): lower hidden_factor/layers or use a smaller "
                "representation"
            )

    # ---------------------------------------------------------------------------- densities

    def transform(self, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Map standardised data ``y`` [batch, D] to the base: ``(z, log |det dz/dy|)``."""
        log_det = tf.zeros(tf.shape(y)[:-1], dtype=y.dtype)
        for k, flow in enumerate(self.flow_layers):
            if k > 0:
                y = tf.reverse(y, axis=[-1])
            y, flow_log_det = flow(y)
            log_det += flow_log_det
        return y, log_det

    def base_log_prob(self, z: tf.Tensor) -> tf.Tensor:
        """Standard normal log-density of ``z`` [batch, D], shape [batch]."""
        return -0.5 * tf.reduce_sum(tf.square(z), axis=-1) - 0.5 * self.event_size * math.log(
            2.0 * math.pi
        )

    def log_prob(
        self, x: tf.Tensor, context: tf.Tensor | None = None, training: bool = False
    ) -> tf.Tensor:
        """Return log p(x) in data units, shape [batch].

        Args:
            x: data [batch, event_size].
            context: must be None (BNAF is unconditional).
            training: unused (BNAF has no batch statistics); kept for the common interface.
        """
        del training
        x = tf.cast(x, self.compute_dtype)
        self._check_context(context)
        y, ildj = self._preprocess(x)
        z, log_det = self.transform(y)
        return self.base_log_prob(z) + log_det + ildj

    def inverse(self, z: tf.Tensor) -> tf.Tensor:
        """Not available: BNAF has no closed-form inverse.

        Raises:
            NotImplementedError: always.
        """
        raise NotImplementedError(NO_INVERSE_MESSAGE)

    def sample(
        self, n: int | tf.Tensor, seed: tf.Tensor | None = None, context: tf.Tensor | None = None
    ) -> tf.Tensor:
        """Not available: BNAF cannot sample (no closed-form inverse).

        Raises:
            NotImplementedError: always.
        """
        raise NotImplementedError(NO_INVERSE_MESSAGE)

    # ---------------------------------------------------------------------------- config

    def get_config(self) -> dict[str, Any]:
        """Return the constructor arguments (the YAML keys) plus Keras' name/dtype/trainable."""
        config = super().get_config()
        config.update(
            flows=self.flows,
            layers=self.num_layers,
            hidden_factor=self.hidden_factor,
            residual=self.residual,
        )
        return config
