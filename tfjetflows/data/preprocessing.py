"""The preprocessing bijector: standardized space ``z`` (where the flow lives) <-> data ``x``.

Per dimension, as told by :meth:`Representation.transform_spec`:

- bounded (``lower``/``upper`` finite): ``t = (x - lower) / (upper - lower)``, ``y = logit(t)``;
- energy (``energy_scale`` finite): ``y = asinh(x / scale)`` (log-like for large ``|E|``, linear
  near zero, defined for negative track pixels);
- free: ``y = x``;

then ``z = (y - mean) / std``. Forward is ``z -> x`` and inverse is ``x -> z``, with exact
log-determinants in both directions, so a flow's ``log p(x)`` computed through this bijector is
a density in data units, comparable between preprocessings and models.

Clipping: the inverse clips ``t`` into ``[clip_eps, 1 - clip_eps]`` before the logit (and uses
the clipped ``t`` in the log-det), so that ``x`` exactly on a bound (a dequantized ``0 + u`` with
``u = 0``, or a float32 value rounded onto ``upper``) gives a finite ``z`` instead of ``±inf``.
Inside ``[lower + eps w, upper - eps w]`` (``w = upper - lower``) the bijector is exact; outside
it the inverse is constant and not invertible, a sliver of probability about ``2 eps`` per
bounded dimension under dequantization noise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfjetflows.data.schema import DataError

if TYPE_CHECKING:
    from tfjetflows.data.representations import Representation

__all__ = ["CLIP_EPS", "STD_FLOOR", "Preprocessing", "fit_preprocessing"]

CLIP_EPS = 1e-6
STD_FLOOR = 1e-6
_SPEC_KEYS = ("lower", "upper", "energy_scale")


def _spec_arrays(spec: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Validate a transform spec and return its three float64 arrays (None -> NaN)."""
    missing = [k for k in _SPEC_KEYS if k not in spec]
    if missing:
        raise ValueError(f"preprocessing spec lacks {missing}; needs {list(_SPEC_KEYS)}")
    arrays = {}
    for key in _SPEC_KEYS:
        values = spec[key]
        if not isinstance(values, np.ndarray):
            values = [np.nan if v is None else v for v in values]
        arrays[key] = np.asarray(values, dtype=np.float64).reshape(-1)
    dims = {key: a.size for key, a in arrays.items()}
    if len(set(dims.values())) != 1:
        raise ValueError(f"preprocessing spec arrays differ in length: {dims}")
    lower, upper, scale = arrays["lower"], arrays["upper"], arrays["energy_scale"]
    if np.any(np.isfinite(lower) != np.isfinite(upper)):
        raise ValueError("preprocessing spec: a dimension has only one of lower/upper finite")
    bounded = np.isfinite(lower)
    if np.any(bounded & np.isfinite(scale)):
        raise ValueError("preprocessing spec: a dimension is both bounded and an energy")
    if np.any(upper[bounded] <= lower[bounded]):
        raise ValueError("preprocessing spec: upper must exceed lower in bounded dimensions")
    if np.any(scale[np.isfinite(scale)] <= 0):
        raise ValueError("preprocessing spec: energy_scale must be positive")
    return arrays


def _plain_list(values: np.ndarray) -> list[float | None]:
    """Float array -> list of Python floats with None for NaN (JSON- and YAML-safe)."""
    return [None if np.isnan(v) else float(v) for v in np.asarray(values, dtype=np.float64)]


class Preprocessing(tfp.bijectors.Bijector):
    """Standardized ``z`` -> data ``x`` (forward) with logit, asinh or identity per dimension.

    Args:
        spec: ``lower``, ``upper``, ``energy_scale`` arrays of length ``D`` (see
            :meth:`Representation.transform_spec`).
        mean: [D] mean of the transformed ``y`` (before standardization).
        std: [D] standard deviation of ``y``; must be positive.
        clip_eps: clipping of ``t`` in bounded dimensions (module docstring).
        dtype: float dtype of ``x`` and ``z``.
        validate_args: passed to :class:`tfp.bijectors.Bijector`.
        name: bijector name.
    """

    def __init__(
        self,
        spec: Mapping[str, Any],
        mean: np.ndarray,
        std: np.ndarray,
        *,
        clip_eps: float = CLIP_EPS,
        dtype: tf.DType = tf.float32,
        validate_args: bool = False,
        name: str = "preprocessing",
    ) -> None:
        parameters = dict(locals())
        arrays = _spec_arrays(spec)
        dim = arrays["lower"].size
        mean = np.asarray(mean, dtype=np.float64).reshape(-1)
        std = np.asarray(std, dtype=np.float64).reshape(-1)
        if mean.size != dim or std.size != dim:
            raise ValueError(
                f"preprocessing: mean ({mean.size}) and std ({std.size}) must have the spec's "
                f"length {dim}"
            )
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
            raise ValueError("preprocessing: mean must be finite and std finite and positive")
        if not 0.0 < clip_eps < 0.5:
            raise ValueError(f"preprocessing: clip_eps must be in (0, 0.5), got {clip_eps}")
        self._spec = arrays
        self._mean = mean
        self._std = std
        self._clip_eps = float(clip_eps)
        self._dim = dim
        bounded = np.isfinite(arrays["lower"])
        energy = np.isfinite(arrays["energy_scale"])
        self._bounded = np.flatnonzero(bounded)
        self._energy = np.flatnonzero(energy)
        self._free = np.flatnonzero(~bounded & ~energy)
        # concat([bounded, energy, free])[..., self._restore] is in the original order
        self._restore = np.argsort(np.concatenate([self._bounded, self._energy, self._free]))
        super().__init__(
            forward_min_event_ndims=1,
            validate_args=validate_args,
            dtype=tf.as_dtype(dtype),
            parameters=parameters,
            name=name,
        )

    @classmethod
    def _parameter_properties(cls, dtype: Any) -> dict[str, Any]:
        return {}  # constants only, nothing batched or trainable

    @property
    def dim(self) -> int:
        """The event size ``D``."""
        return self._dim

    @property
    def spec(self) -> dict[str, np.ndarray]:
        """Copies of the ``lower``, ``upper`` and ``energy_scale`` arrays."""
        return {k: v.copy() for k, v in self._spec.items()}

    @property
    def mean(self) -> np.ndarray:
        """The standardization mean (copy)."""
        return self._mean.copy()

    @property
    def std(self) -> np.ndarray:
        """The standardization std (copy)."""
        return self._std.copy()

    # ---- helpers ---------------------------------------------------------------------------

    def _const(self, values: np.ndarray) -> tf.Tensor:
        return tf.constant(values, dtype=self.dtype)

    def _parts(self, v: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Split the last axis into the (bounded, energy, free) groups."""
        return (
            tf.gather(v, self._bounded, axis=-1),
            tf.gather(v, self._energy, axis=-1),
            tf.gather(v, self._free, axis=-1),
        )

    def _join(self, bounded: tf.Tensor, energy: tf.Tensor, free: tf.Tensor) -> tf.Tensor:
        return tf.gather(tf.concat([bounded, energy, free], axis=-1), self._restore, axis=-1)

    def _bounds(self) -> tuple[tf.Tensor, tf.Tensor]:
        lower = self._spec["lower"][self._bounded]
        width = self._spec["upper"][self._bounded] - lower
        return self._const(lower), self._const(width)

    def _scale(self) -> tf.Tensor:
        return self._const(self._spec["energy_scale"][self._energy])

    def _clipped_t(self, xb: tf.Tensor) -> tf.Tensor:
        lower, width = self._bounds()
        eps = self._clip_eps
        return tf.clip_by_value((xb - lower) / width, eps, 1.0 - eps)

    # ---- TFP contract ------------------------------------------------------------------------

    def _forward(self, z: tf.Tensor) -> tf.Tensor:
        y = z * self._const(self._std) + self._const(self._mean)
        yb, ye, yf = self._parts(y)
        lower, width = self._bounds()
        return self._join(lower + width * tf.sigmoid(yb), self._scale() * tf.sinh(ye), yf)

    def _inverse(self, x: tf.Tensor) -> tf.Tensor:
        xb, xe, xf = self._parts(x)
        t = self._clipped_t(xb)
        y = self._join(tf.math.log(t) - tf.math.log1p(-t), tf.asinh(xe / self._scale()), xf)
        return (y - self._const(self._mean)) / self._const(self._std)

    def _inverse_log_det_jacobian(self, x: tf.Tensor) -> tf.Tensor:
        xb, xe, _ = self._parts(x)
        _, width = self._bounds()
        t = self._clipped_t(xb)
        # d logit(t)/dx = 1 / (width t (1 - t))
        bounded = -tf.math.log(width) - tf.math.log(t) - tf.math.log1p(-t)
        # d asinh(x/s)/dx = 1 / sqrt(s^2 + x^2) = 1 / (m sqrt(1 + r^2)), m = max(|x|, s),
        # r = min(|x|, s) / m: no overflow of x / s for huge |x|
        scale = self._scale()
        abs_x = tf.abs(xe)
        big = tf.maximum(abs_x, scale)
        ratio = tf.minimum(abs_x, scale) / big
        energy = -tf.math.log(big) - 0.5 * tf.math.log1p(tf.square(ratio))
        constant = -float(np.sum(np.log(self._std)))
        return (
            tf.reduce_sum(bounded, axis=-1)
            + tf.reduce_sum(energy, axis=-1)
            + tf.constant(constant, dtype=self.dtype)
        )

    def _forward_log_det_jacobian(self, z: tf.Tensor) -> tf.Tensor:
        y = z * self._const(self._std) + self._const(self._mean)
        yb, ye, _ = self._parts(y)
        _, width = self._bounds()
        # d sigmoid(y)/dy = sigmoid(y) sigmoid(-y): log = -softplus(-y) - softplus(y)
        bounded = tf.math.log(width) - tf.math.softplus(-yb) - tf.math.softplus(yb)
        # d (s sinh y)/dy = s cosh y; log cosh y = |y| + softplus(-2|y|) - log 2
        abs_y = tf.abs(ye)
        energy = (
            tf.math.log(self._scale()) + abs_y + tf.math.softplus(-2.0 * abs_y) - float(np.log(2.0))
        )
        constant = float(np.sum(np.log(self._std)))
        return (
            tf.reduce_sum(bounded, axis=-1)
            + tf.reduce_sum(energy, axis=-1)
            + tf.constant(constant, dtype=self.dtype)
        )

    # ---- config --------------------------------------------------------------------------------

    def get_config(self) -> dict[str, Any]:
        """Return the constructor arguments as plain lists and scalars (NaN written as None)."""
        return {
            "spec": {k: _plain_list(v) for k, v in self._spec.items()},
            "mean": [float(v) for v in self._mean],
            "std": [float(v) for v in self._std],
            "clip_eps": self._clip_eps,
            "dtype": self.dtype.name,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Preprocessing:
        """Rebuild a :class:`Preprocessing` from :meth:`get_config` output."""
        config = dict(config)
        spec = config.pop("spec")
        mean = config.pop("mean")
        std = config.pop("std")
        if "dtype" in config:
            config["dtype"] = tf.as_dtype(config["dtype"])
        return cls(spec, mean, std, **config)


def fit_preprocessing(
    representation: Representation,
    x_sample: np.ndarray,
    *,
    clip_eps: float = CLIP_EPS,
    std_floor: float = STD_FLOOR,
    dtype: tf.DType = tf.float32,
) -> Preprocessing:
    """Fit the standardization of a representation's preprocessing to a sample of ``x``.

    The per-dimension transform (logit, asinh, identity) comes from
    ``representation.transform_spec()``; the mean and std of the transformed ``y`` are computed
    over ``x_sample`` in float64, the std floored at ``std_floor``.

    Args:
        representation: the representation whose vectors are preprocessed.
        x_sample: [M, D] encoded vectors (``representation.encode`` output).
        clip_eps: see :class:`Preprocessing`.
        std_floor: lower bound for the std (a constant dimension would otherwise divide by 0).
        dtype: dtype of the returned bijector.

    Raises:
        DataError: ``x_sample`` has the wrong shape or holds non-finite values.
    """
    spec = representation.transform_spec()
    dim = representation.dim
    x = np.asarray(x_sample, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != dim or x.shape[0] < 1:
        raise DataError(
            f"x_sample for the {representation.kind!r} preprocessing must have shape [M, {dim}], "
            f"got {list(x.shape)}"
        )
    bad = np.flatnonzero(~np.all(np.isfinite(x), axis=0))
    if bad.size:
        names = representation.dim_names()
        listed = ", ".join(names[i] for i in bad[:5])
        raise DataError(f"x_sample holds non-finite values in dimension(s) {listed}")
    unit = Preprocessing(
        spec, np.zeros(dim), np.ones(dim), clip_eps=clip_eps, dtype=tf.float64, name="fit"
    )
    y = unit.inverse(tf.constant(x)).numpy()
    mean = y.mean(axis=0)
    std = np.maximum(y.std(axis=0), std_floor)
    return Preprocessing(spec, mean, std, clip_eps=clip_eps, dtype=dtype)
