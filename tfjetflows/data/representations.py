"""Representations: jet images <-> fixed-size continuous vectors ``x`` in data units.

A representation maps a batch of jet images ``[N, 3, 125, 125]`` (float32, GeV, the DeepFalcon
layout of :mod:`tfjetflows.data.schema`) to a vector ``x`` of fixed size ``D`` on which a flow can
put a density, and decodes ``x`` back into images:

- :class:`HitsRepresentation` (``kind: hits``): per channel the hits (pixels with
  ``|E| >= threshold``) sorted by ``|E|``, top ``K``, each as (eta index, phi index, energy), led
  by the hit multiplicity ``n``. Integer coordinates and ``n`` are dequantized with ``U[0, 1)``
  and empty slots are filled with a known noise density, never zeros, so that ``x`` has no
  delta-like dimensions.
- :class:`ImageRepresentation` (``kind: image``): sum-pooled coarse images, entries below
  threshold filled with known noise.
- :class:`FeaturesRepresentation` (``kind: features``): named per-jet scalar columns.

``encode`` runs in numpy (it is part of the input pipeline). ``decode`` and ``noise_log_prob``
are TensorFlow ops so that they can live inside an exported SavedModel; TensorFlow is imported
inside them, so a numpy-only user of ``encode`` does not pay for the TensorFlow import.

The log-likelihood of a jet is reported as ``log p_flow(x) - noise_log_prob(x)``: the density of
the fill noise is known and is not a property of the jet. :meth:`Representation.transform_spec`
tells the preprocessing bijector (:mod:`tfjetflows.data.preprocessing`) which dimensions are
bounded (logit-transformed), which are energies (``asinh(E / scale)``) and which are free.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from tfjetflows.config import ConfigError, build_from_section
from tfjetflows.data.schema import (
    CHANNEL_GRID,
    CHANNELS,
    HCAL_TOWER,
    IMAGE_SHAPE,
    DataError,
    channel_index,
)

if TYPE_CHECKING:
    import tensorflow as tf

__all__ = [
    "REPRESENTATIONS",
    "FeaturesRepresentation",
    "HitsRepresentation",
    "ImageRepresentation",
    "Representation",
    "top_hit_indices",
    "representation_from_config",
]


class Representation(ABC):
    """A map between jet images ``[N, 3, 125, 125]`` and continuous vectors ``x`` ``[N, dim]``.

    Subclasses take keyword-only constructor arguments, which are the YAML keys of the
    ``representation`` config section (``kind`` chooses the subclass).
    """

    kind: ClassVar[str]
    decodes_images: ClassVar[bool] = True

    @property
    @abstractmethod
    def dim(self) -> int:
        """The size ``D`` of the vector ``x``."""

    @abstractmethod
    def dim_names(self) -> list[str]:
        """Return one readable name per dimension of ``x`` (length ``dim``)."""

    @abstractmethod
    def get_config(self) -> dict[str, Any]:
        """Return ``kind`` plus the constructor arguments, as plain YAML-safe types."""

    def encode(
        self,
        images: np.ndarray,
        scalars: Mapping[str, np.ndarray],
        rng: np.random.Generator,
    ) -> np.ndarray:
        """Encode a batch of jets into continuous vectors: :meth:`extract`, then add noise.

        Args:
            images: [N, 3, 125, 125] jet images in GeV.
            scalars: per-jet columns (``pt``, ``m0``, ``y``, ...), each of shape [N].
            rng: source of the dequantization and fill noise.

        Returns:
            float32 array [N, dim].
        """
        return self.encode_extracted(self.extract(images, scalars), rng)

    @abstractmethod
    def extract(
        self, images: np.ndarray, scalars: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """Return what encoding keeps of each jet, before any noise: arrays with first axis N.

        Deterministic and compact (the top-K hits, the pooled grid, the columns), so the input
        pipeline can hold every jet of a data set in memory and draw fresh dequantization noise
        each epoch with :meth:`encode_extracted`.
        """

    @abstractmethod
    def encode_extracted(
        self, parts: Mapping[str, np.ndarray], rng: np.random.Generator
    ) -> np.ndarray:
        """Turn :meth:`extract` output (any rows of it) into vectors float32 [N, dim]."""

    @abstractmethod
    def decode(self, x: Any) -> tf.Tensor:
        """Decode vectors ``x`` [N, dim] into jet images: float32 tensor [N, 3, 125, 125]."""

    @abstractmethod
    def noise_log_prob(self, x: Any) -> tf.Tensor:
        """Return the log-density [N] of the known fill noise in ``x`` (dtype follows ``x``)."""

    @abstractmethod
    def transform_spec(self) -> dict[str, np.ndarray]:
        """Return per-dimension ``lower``, ``upper`` and ``energy_scale`` (float64, length dim).

        ``lower``/``upper`` are finite for bounded dimensions and NaN otherwise; ``energy_scale``
        is finite for energy dimensions and NaN otherwise. Other dimensions are free.
        """

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Representation:
        """Build a representation from :meth:`get_config` output (any kind)."""
        return representation_from_config(config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "kind")
        return f"{type(self).__name__}({args})"


# --------------------------------------------------------------------------------------------
# helpers


def _check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE:
        raise DataError(f"images must have shape [N, 3, 125, 125], got {list(images.shape)}")
    return images


def _check_channels(channels: Sequence[str], where: str) -> list[str]:
    """Return ``channels`` in the canonical order tracks, ecal, hcal; reject unknown/repeated."""
    if isinstance(channels, str):
        channels = [channels]
    channels = list(channels)
    unknown = [c for c in channels if c not in CHANNELS]
    if unknown:
        raise ConfigError(
            f"{where}: unknown channel {unknown[0]!r}; expected some of {', '.join(CHANNELS)}"
        )
    if len(set(channels)) != len(channels):
        raise ConfigError(f"{where}: channel listed twice in {channels}")
    if not channels:
        raise ConfigError(f"{where}: no channel given")
    return [c for c in CHANNELS if c in channels]


def _check_threshold(threshold: float) -> float:
    threshold = float(threshold)
    if not (math.isfinite(threshold) and threshold > 0):
        raise ConfigError(f"threshold must be a positive number, got {threshold}")
    return threshold


def _natural_plane(images: np.ndarray, name: str) -> np.ndarray:
    """One channel on its natural grid, like :func:`schema.channel_grid`, but exact for HCAL.

    The HCAL tower value is the block mean accumulated in float64, so that for an equal-valued
    float32 block the result is exactly the stored value (a float32 mean of 25 equal numbers
    may be off by an ulp).
    """
    plane = images[:, channel_index(name)]
    if name != "hcal":
        return plane
    n = plane.shape[0]
    g = CHANNEL_GRID["hcal"]
    # rows of each block, then columns (faster than one mean over two axes), in float64
    rows = plane.reshape(n, g, HCAL_TOWER, g * HCAL_TOWER).sum(axis=2, dtype=np.float64)
    towers = rows.reshape(n, g, g, HCAL_TOWER).sum(axis=3) / HCAL_TOWER**2
    return towers.astype(images.dtype if images.dtype.kind == "f" else np.float64)


def _below(limit: np.ndarray | float) -> np.ndarray:
    """The largest float32 strictly below ``limit`` (elementwise)."""
    limit = np.asarray(limit, dtype=np.float32)
    return np.nextafter(limit, np.float32(-np.inf))


def _dequantize(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Integers ``k`` -> float32 ``k + u``, ``u ~ U[0, 1)``, kept strictly below ``k + 1``.

    Adding in float64 and rounding to float32 can round ``k + u`` up to ``k + 1`` when ``u`` is
    within float32 spacing of 1; such values are moved to the largest float32 below ``k + 1``,
    so that ``floor`` always gives back ``k``.
    """
    values = np.asarray(values, dtype=np.float64)
    out = (values + rng.random(values.shape)).astype(np.float32)
    return np.minimum(out, _below(values + 1.0))


def _uniform_fill(
    shape: tuple[int, ...], low: float, high: float, rng: np.random.Generator
) -> np.ndarray:
    """float32 draws from ``U[low, high)``, kept strictly below ``high`` after rounding."""
    out = rng.uniform(low, high, size=shape).astype(np.float32)
    return np.minimum(out, _below(high))


def _symmetric_fill(
    shape: tuple[int, ...], threshold: float, rng: np.random.Generator
) -> np.ndarray:
    """float32 draws from ``U(-threshold, threshold)`` with ``|value| < float32(threshold)``."""
    bound = _below(threshold)
    out = rng.uniform(-threshold, threshold, size=shape).astype(np.float32)
    return np.clip(out, -bound, bound)


def top_hit_indices(
    magnitude: np.ndarray, k: int, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Return the flat indices of the ``k`` largest hits per row and the number of hits kept.

    Hits are entries with ``magnitude >= threshold``. They are ordered by magnitude (compared in
    float32), largest first, ties broken by ascending flat index. Vectorised over rows and
    sparse: each hit becomes one unique 64-bit integer key (row, then the inverted float32 bit
    pattern of its magnitude, which orders like the value for non-negative floats, then its
    index), and a single sort of the keys orders every row at once.

    Args:
        magnitude: [N, P] non-negative values (``|E|``).
        k: slots per row.
        threshold: the hit threshold.

    Returns:
        ``(indices [N, k] int64, n [N] int64)`` with ``n = min(#hits, k)``; ``indices[:, j]``
        for ``j >= n`` are 0 and meaningless.
    """
    n_rows, size = magnitude.shape
    col_bits = max(1, (size - 1).bit_length())
    row_bits = 64 - 31 - col_bits
    if row_bits < 1:
        raise ValueError(f"top_hit_indices: rows of {size} entries are too long")
    chunk = 1 << row_bits
    if n_rows > chunk:  # more rows than the key can number: do it in pieces
        parts = [
            top_hit_indices(magnitude[i : i + chunk], k, threshold) for i in range(0, n_rows, chunk)
        ]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    magnitude = np.asarray(magnitude, dtype=np.float32)
    rows, cols = np.nonzero(magnitude >= np.float32(threshold))
    bits = magnitude[rows, cols].view(np.uint32)  # < 2**31: non-negative, not NaN
    key = (
        (rows.astype(np.uint64) << np.uint64(31 + col_bits))
        | ((np.uint32(0x7FFFFFFF) - bits).astype(np.uint64) << np.uint64(col_bits))
        | cols.astype(np.uint64)
    )
    key.sort()
    rows = (key >> np.uint64(31 + col_bits)).astype(np.int64)
    cols = (key & np.uint64((1 << col_bits) - 1)).astype(np.int64)
    counts = np.bincount(rows, minlength=n_rows)
    starts = np.cumsum(counts) - counts
    slot = np.arange(rows.size) - starts[rows]
    keep = slot < k
    indices = np.zeros((n_rows, k), dtype=np.int64)
    indices[rows[keep], slot[keep]] = cols[keep]
    return indices, np.minimum(counts, k).astype(np.int64)


def _as_float_tensor(x: Any) -> tf.Tensor:
    import tensorflow as tf

    x = tf.convert_to_tensor(x)
    if not x.dtype.is_floating:
        x = tf.cast(x, tf.float32)
    return x


def _assemble(planes: Mapping[str, tf.Tensor], batch: tf.Tensor) -> tf.Tensor:
    """Stack full-resolution float32 planes [N, 125, 125] into images, zeros for missing ones."""
    import tensorflow as tf

    side = IMAGE_SHAPE[1]
    zeros = tf.zeros(tf.stack([batch, side, side]), dtype=tf.float32)
    return tf.stack([planes.get(c, zeros) for c in CHANNELS], axis=1)


def _upsample(plane: tf.Tensor, factor: int) -> tf.Tensor:
    """Repeat each entry of [N, g, g] as a ``factor`` x ``factor`` block."""
    import tensorflow as tf

    if factor == 1:
        return plane
    return tf.repeat(tf.repeat(plane, factor, axis=1), factor, axis=2)


# --------------------------------------------------------------------------------------------
# hits


class HitsRepresentation(Representation):
    """Per channel, the top-``K`` hits sorted by ``|E|``, with a dequantized multiplicity.

    Layout of ``x``: one block per channel, in the order tracks, ecal, hcal (only those given),
    each ``[n, eta_0, phi_0, E_0, ..., eta_{K-1}, phi_{K-1}, E_{K-1}]``, so ``dim = sum(1 + 3K)``.
    ``eta``/``phi`` are the row/column index of the pixel on the channel's natural grid (125 for
    tracks and ECAL, the 25x25 tower grid for HCAL, :data:`schema.CHANNEL_GRID`).

    Encoding: hits are pixels with ``|E| >= threshold`` (track pixels can be negative), sorted
    by ``|E|`` descending, ties by flat pixel index; ``n = min(#hits, K)``. ``n`` and the
    coordinates are dequantized (``+ u``, ``u ~ U[0, 1)``); energies are kept as they are. Empty
    slots (``k >= n``) hold noise: coordinates ``~ U[0, grid)``, energy ``~ U(-threshold,
    threshold)``, log-density ``-2 log(grid) - log(2 threshold)`` per slot.

    Decoding keeps the first ``clip(floor(n), 0, K)`` slots, puts each at pixel
    ``clip(floor(coordinate), 0, grid - 1)`` and adds up hits that land on the same pixel; HCAL
    towers are written as 5x5 blocks of the tower value. Energies are kept as sampled, including
    ``|E| < threshold`` values in kept slots (a model may sample them; they are not
    zero-suppressed). Slots with a non-finite coordinate or energy are dropped.

    Args:
        hits_per_channel: ``K`` per channel name, e.g. ``{"tracks": 24, "ecal": 96, "hcal": 16}``.
        threshold: hit threshold on ``|E|`` in GeV.
    """

    kind: ClassVar[str] = "hits"

    def __init__(self, *, hits_per_channel: Mapping[str, int], threshold: float = 1e-3) -> None:
        if not isinstance(hits_per_channel, Mapping):
            raise ConfigError(
                "hits_per_channel must map channel names to hit counts, e.g. {ecal: 96}, "
                f"got {hits_per_channel!r}"
            )
        channels = _check_channels(list(hits_per_channel), "hits_per_channel")
        self.hits_per_channel: dict[str, int] = {}
        for c in channels:
            k = hits_per_channel[c]
            if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
                raise ConfigError(f"hits_per_channel[{c!r}] must be a positive integer, got {k!r}")
            self.hits_per_channel[c] = int(k)
        self.threshold = _check_threshold(threshold)
        self._offsets: dict[str, int] = {}
        offset = 0
        for c, k in self.hits_per_channel.items():
            self._offsets[c] = offset
            offset += 1 + 3 * k
        self._dim = offset

    @property
    def dim(self) -> int:
        """The size of ``x``: ``sum(1 + 3 K)`` over channels."""
        return self._dim

    @property
    def channels(self) -> list[str]:
        """The channels, in the order of their blocks in ``x``."""
        return list(self.hits_per_channel)

    def slot_log_density(self, channel: str) -> float:
        """Log-density of one empty slot of ``channel``: ``-2 log(grid) - log(2 threshold)``."""
        return -2.0 * math.log(CHANNEL_GRID[channel]) - math.log(2.0 * self.threshold)

    def dim_names(self) -> list[str]:
        """Return ``ecal/n, ecal/eta_0, ecal/phi_0, ecal/E_0, ...``."""
        names = []
        for c, k in self.hits_per_channel.items():
            names.append(f"{c}/n")
            for j in range(k):
                names += [f"{c}/eta_{j}", f"{c}/phi_{j}", f"{c}/E_{j}"]
        return names

    def get_config(self) -> dict[str, Any]:
        """Return ``{"kind": "hits", "hits_per_channel": {...}, "threshold": ...}``."""
        return {
            "kind": self.kind,
            "hits_per_channel": dict(self.hits_per_channel),
            "threshold": self.threshold,
        }

    def extract(
        self, images: np.ndarray, scalars: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """Return the top-K hits of each channel ``c``, before noise.

        Keys ``c/index`` [N, K] flat pixel indices (int32), ``c/energy`` [N, K] (float32) and
        ``c/n`` [N] (int32, hits kept).
        """
        del scalars
        images = _check_images(images)
        parts = {}
        for c, k in self.hits_per_channel.items():
            plane = _natural_plane(images, c)
            n_jets, grid, _ = plane.shape
            flat = plane.reshape(n_jets, grid * grid)
            indices, n = top_hit_indices(np.abs(flat), k, self.threshold)
            parts[f"{c}/energy"] = np.take_along_axis(flat, indices, axis=1).astype(np.float32)
            parts[f"{c}/index"] = indices.astype(np.int32)
            parts[f"{c}/n"] = n.astype(np.int32)
        return parts

    def encode_extracted(
        self, parts: Mapping[str, np.ndarray], rng: np.random.Generator
    ) -> np.ndarray:
        """Dequantize and fill the empty slots; ``[N, dim]`` float32 (layout: class docstring)."""
        blocks = []
        for c, k in self.hits_per_channel.items():
            grid = CHANNEL_GRID[c]
            indices, n, energy = parts[f"{c}/index"], parts[f"{c}/n"], parts[f"{c}/energy"]
            n_jets = len(n)
            eta, phi = np.divmod(indices.astype(np.int64), grid)
            real = np.arange(k)[None, :] < n[:, None]
            slots = np.stack(
                [
                    np.where(real, _dequantize(eta, rng), _uniform_fill(eta.shape, 0, grid, rng)),
                    np.where(real, _dequantize(phi, rng), _uniform_fill(phi.shape, 0, grid, rng)),
                    np.where(real, energy, _symmetric_fill(energy.shape, self.threshold, rng)),
                ],
                axis=-1,
            )
            blocks += [_dequantize(n, rng)[:, None], slots.reshape(n_jets, 3 * k)]
        return np.concatenate(blocks, axis=1).astype(np.float32)

    def _split(self, x: tf.Tensor, channel: str) -> tuple[tf.Tensor, tf.Tensor]:
        """Return ``(n [N], slots [N, K, 3])`` of ``channel``'s block."""
        import tensorflow as tf

        k = self.hits_per_channel[channel]
        start = self._offsets[channel]
        n = x[:, start]
        slots = tf.reshape(x[:, start + 1 : start + 1 + 3 * k], [-1, k, 3])
        return n, slots

    def _kept(self, n: tf.Tensor, channel: str) -> tf.Tensor:
        """Number of real slots, ``clip(floor(n), 0, K)``, in the dtype of ``n``."""
        import tensorflow as tf

        k = self.hits_per_channel[channel]
        n = tf.where(tf.math.is_finite(n), n, tf.zeros_like(n))
        return tf.clip_by_value(tf.floor(n), 0.0, float(k))

    def decode(self, x: Any) -> tf.Tensor:
        """Decode ``x`` [N, dim] into float32 images [N, 3, 125, 125] (scatter-add of kept hits)."""
        import tensorflow as tf

        x = _as_float_tensor(x)
        batch = tf.shape(x)[0]
        planes = {}
        for c, k in self.hits_per_channel.items():
            grid = CHANNEL_GRID[c]
            n, slots = self._split(x, c)
            kept = tf.range(k, dtype=x.dtype)[None, :] < self._kept(n, c)[:, None]
            coords, energy = slots[..., :2], slots[..., 2]
            finite = tf.reduce_all(tf.math.is_finite(slots), axis=-1)
            use = tf.logical_and(kept, finite)
            safe = tf.where(use[..., None], coords, tf.zeros_like(coords))
            pixel = tf.cast(tf.clip_by_value(tf.floor(safe), 0.0, grid - 1.0), tf.int32)
            flat = pixel[..., 0] * grid + pixel[..., 1]
            jet = tf.range(batch, dtype=tf.int32)[:, None] * (grid * grid)
            values = tf.where(use, tf.cast(energy, tf.float32), tf.zeros_like(energy, tf.float32))
            summed = tf.math.unsorted_segment_sum(
                tf.reshape(values, [-1]), tf.reshape(jet + flat, [-1]), batch * grid * grid
            )
            plane = tf.reshape(summed, tf.stack([batch, grid, grid]))
            planes[c] = _upsample(plane, IMAGE_SHAPE[1] // grid)
        return _assemble(planes, batch)

    def decode_hits(self, x: Any) -> tf.Tensor:
        """Decode ``x`` [N, dim] into hit rows [N, sum K, 4]: (channel, eta, phi, energy).

        ``channel`` is the image channel index (0 Tracks, 1 ECAL, 2 HCAL), ``eta``/``phi`` the
        integer pixel (HCAL: tower) indices on the channel's grid; rows of empty slots are all
        zero. Channels follow each other in the order of their blocks in ``x``.
        """
        import tensorflow as tf

        x = _as_float_tensor(x)
        rows = []
        for c, k in self.hits_per_channel.items():
            grid = CHANNEL_GRID[c]
            n, slots = self._split(x, c)
            kept = tf.range(k, dtype=x.dtype)[None, :] < self._kept(n, c)[:, None]
            use = tf.logical_and(kept, tf.reduce_all(tf.math.is_finite(slots), axis=-1))
            coords = tf.clip_by_value(tf.floor(slots[..., :2]), 0.0, grid - 1.0)
            channel = tf.fill(tf.shape(slots[..., :1]), tf.cast(channel_index(c), x.dtype))
            row = tf.concat([channel, coords, slots[..., 2:]], axis=-1)
            rows.append(tf.where(use[..., None], row, tf.zeros_like(row)))
        return tf.cast(tf.concat(rows, axis=1), tf.float32)

    def noise_log_prob(self, x: Any) -> tf.Tensor:
        """Sum over empty slots (found from ``floor(n)``) of the per-slot fill log-density."""
        import tensorflow as tf

        x = _as_float_tensor(x)
        total = tf.zeros_like(x[:, 0])
        for c, k in self.hits_per_channel.items():
            n, _ = self._split(x, c)
            empty = float(k) - self._kept(n, c)
            total += empty * tf.constant(self.slot_log_density(c), dtype=x.dtype)
        return total

    def transform_spec(self) -> dict[str, np.ndarray]:
        """Bounded: ``n`` in [0, K+1], coordinates in [0, grid]; energies: scale ``threshold``."""
        lower, upper, scale = [], [], []
        nan = math.nan
        for c, k in self.hits_per_channel.items():
            grid = float(CHANNEL_GRID[c])
            lower += [0.0] + [0.0, 0.0, nan] * k
            upper += [k + 1.0] + [grid, grid, nan] * k
            scale += [nan] + [nan, nan, self.threshold] * k
        return {
            "lower": np.asarray(lower, dtype=np.float64),
            "upper": np.asarray(upper, dtype=np.float64),
            "energy_scale": np.asarray(scale, dtype=np.float64),
        }


# --------------------------------------------------------------------------------------------
# image


class ImageRepresentation(Representation):
    """Sum-pooled coarse images of the chosen channels, below-threshold entries filled with noise.

    Each channel's 125x125 plane is sum-pooled over ``pool`` x ``pool`` pixels to a
    ``(125 / pool)``-sided grid. HCAL is counted in towers: a pooled HCAL entry is the sum of the
    tower values it covers (with ``pool = 5``, the tower value itself, not 25 times it), so HCAL
    needs ``pool`` to be a multiple of 5. Entries with ``|v| < threshold`` are replaced by draws
    from ``U(-threshold, threshold)`` (log-density ``-log(2 threshold)`` each). All dimensions
    are energies with scale ``threshold``. Layout: channel by channel (tracks, ecal, hcal order),
    row-major over the coarse grid.

    Decoding zeroes entries with ``|x| < threshold`` and spreads each other value uniformly over
    its pool (``value / pool**2`` per pixel; HCAL: ``value / (pool / 5)**2`` per tower, written in
    every pixel of the tower), so that encoding the decoded image gives the same values.

    Args:
        pool: pooling factor; must divide 125.
        channels: channel names to keep.
        threshold: fill-noise threshold in GeV.
    """

    kind: ClassVar[str] = "image"

    def __init__(
        self,
        *,
        pool: int = 5,
        channels: Sequence[str] = ("tracks", "ecal", "hcal"),
        threshold: float = 1e-3,
    ) -> None:
        side = IMAGE_SHAPE[1]
        if isinstance(pool, bool) or not isinstance(pool, (int, np.integer)) or pool < 1:
            raise ConfigError(f"pool must be a positive integer dividing {side}, got {pool!r}")
        if side % pool:
            raise ConfigError(f"pool must divide {side} (1, 5, 25 or 125), got {pool}")
        self.pool = int(pool)
        self.channels = _check_channels(channels, "channels")
        if "hcal" in self.channels and self.pool % HCAL_TOWER:
            raise ConfigError(
                f"pool={self.pool} splits HCAL towers ({HCAL_TOWER}x{HCAL_TOWER} pixels); use a "
                f"multiple of {HCAL_TOWER} (5, 25 or 125) or drop hcal from channels"
            )
        self.threshold = _check_threshold(threshold)
        self.grid = side // self.pool

    @property
    def dim(self) -> int:
        """The size of ``x``: ``len(channels) * (125 / pool)**2``."""
        return len(self.channels) * self.grid * self.grid

    def _per_pixel(self, channel: str) -> float:
        """Factor from a pooled value to the value written in each full-resolution pixel."""
        pixels = self.pool * self.pool
        return HCAL_TOWER * HCAL_TOWER / pixels if channel == "hcal" else 1.0 / pixels

    def dim_names(self) -> list[str]:
        """Return ``ecal[i,j]`` names, channel by channel, row-major."""
        g = self.grid
        return [f"{c}[{i},{j}]" for c in self.channels for i in range(g) for j in range(g)]

    def get_config(self) -> dict[str, Any]:
        """Return ``{"kind": "image", "pool": ..., "channels": [...], "threshold": ...}``."""
        return {
            "kind": self.kind,
            "pool": self.pool,
            "channels": list(self.channels),
            "threshold": self.threshold,
        }

    def extract(
        self, images: np.ndarray, scalars: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """``pooled`` [N, dim] float32: each channel sum-pooled (HCAL per crystal of a tower)."""
        del scalars
        images = _check_images(images)
        n, g, p = images.shape[0], self.grid, self.pool
        blocks = []
        for c in self.channels:
            plane = images[:, channel_index(c)].reshape(n, g, p, g, p)
            pooled = plane.sum(axis=(2, 4), dtype=np.float64)
            if c == "hcal":
                pooled = pooled / (HCAL_TOWER * HCAL_TOWER)
            blocks.append(pooled.reshape(n, g * g).astype(np.float32))
        return {"pooled": np.concatenate(blocks, axis=1)}

    def encode_extracted(
        self, parts: Mapping[str, np.ndarray], rng: np.random.Generator
    ) -> np.ndarray:
        """Fill ``|v| < threshold`` with noise; float32 [N, dim]."""
        x = parts["pooled"]
        empty = np.abs(x) < np.float32(self.threshold)
        return np.where(empty, _symmetric_fill(x.shape, self.threshold, rng), x)

    def decode(self, x: Any) -> tf.Tensor:
        """Zero ``|x| < threshold``, spread each pooled value over its pool; float32 images."""
        import tensorflow as tf

        x = _as_float_tensor(x)
        batch = tf.shape(x)[0]
        g = self.grid
        kept = tf.where(tf.abs(x) < tf.cast(self.threshold, x.dtype), tf.zeros_like(x), x)
        kept = tf.cast(kept, tf.float32)
        planes = {}
        for i, c in enumerate(self.channels):
            block = tf.reshape(kept[:, i * g * g : (i + 1) * g * g], tf.stack([batch, g, g]))
            planes[c] = _upsample(block * self._per_pixel(c), self.pool)
        return _assemble(planes, batch)

    def noise_log_prob(self, x: Any) -> tf.Tensor:
        """``-log(2 threshold)`` times the number of entries with ``|x| < threshold``."""
        import tensorflow as tf

        x = _as_float_tensor(x)
        empty = tf.cast(tf.abs(x) < tf.cast(self.threshold, x.dtype), x.dtype)
        return tf.reduce_sum(empty, axis=1) * tf.constant(
            -math.log(2.0 * self.threshold), dtype=x.dtype
        )

    def transform_spec(self) -> dict[str, np.ndarray]:
        """Every dimension is an energy with scale ``threshold``."""
        nan = np.full(self.dim, np.nan)
        return {
            "lower": nan.copy(),
            "upper": nan.copy(),
            "energy_scale": np.full(self.dim, self.threshold),
        }


# --------------------------------------------------------------------------------------------
# features


class FeaturesRepresentation(Representation):
    """Named per-jet scalar columns (``pt``, ``m0``, ...) as free dimensions; no image decode.

    Args:
        columns: the column names, in the order of the dimensions of ``x``.
    """

    kind: ClassVar[str] = "features"
    decodes_images: ClassVar[bool] = False

    def __init__(self, *, columns: Sequence[str]) -> None:
        if isinstance(columns, str):
            columns = [columns]
        columns = list(columns)
        if not columns or not all(isinstance(c, str) and c for c in columns):
            raise ConfigError(f"columns must be a non-empty list of column names, got {columns!r}")
        if len(set(columns)) != len(columns):
            raise ConfigError(f"columns: a column is listed twice in {columns}")
        self.columns = columns

    @property
    def dim(self) -> int:
        """The number of columns."""
        return len(self.columns)

    def dim_names(self) -> list[str]:
        """Return the column names."""
        return list(self.columns)

    def get_config(self) -> dict[str, Any]:
        """Return ``{"kind": "features", "columns": [...]}``."""
        return {"kind": self.kind, "columns": list(self.columns)}

    def extract(
        self, images: np.ndarray | None, scalars: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """``x``: the named columns of ``scalars`` stacked into float32 [N, dim]."""
        del images
        out = []
        for c in self.columns:
            if c not in scalars:
                known = ", ".join(sorted(scalars)) or "none"
                raise DataError(f"column {c!r} is missing from the jet data (columns: {known})")
            out.append(np.asarray(scalars[c], dtype=np.float32).reshape(-1))
        sizes = {v.shape[0] for v in out}
        if len(sizes) != 1:
            lengths = {c: v.shape[0] for c, v in zip(self.columns, out, strict=True)}
            raise DataError(f"columns have different lengths: {lengths}")
        return {"x": np.stack(out, axis=1)}

    def encode_extracted(
        self, parts: Mapping[str, np.ndarray], rng: np.random.Generator
    ) -> np.ndarray:
        """The columns as they are (no noise); float32 [N, dim]."""
        del rng
        return parts["x"]

    def decode(self, x: Any) -> tf.Tensor:
        """Not available: features do not determine an image."""
        raise NotImplementedError(
            "the 'features' representation has no image decode: its vectors are per-jet "
            f"columns ({', '.join(self.columns)}), not images; use kind 'hits' or 'image' to "
            "sample jet images"
        )

    def noise_log_prob(self, x: Any) -> tf.Tensor:
        """Zero: no fill noise."""
        import tensorflow as tf

        x = _as_float_tensor(x)
        return tf.zeros_like(x[:, 0])

    def transform_spec(self) -> dict[str, np.ndarray]:
        """All dimensions are free."""
        nan = np.full(self.dim, np.nan)
        return {"lower": nan.copy(), "upper": nan.copy(), "energy_scale": nan.copy()}


REPRESENTATIONS: dict[str, type[Representation]] = {
    "hits": HitsRepresentation,
    "image": ImageRepresentation,
    "features": FeaturesRepresentation,
}


def representation_from_config(
    config: Mapping[str, Any], where: str = "representation"
) -> Representation:
    """Build a representation from a config section (``kind`` plus constructor keys).

    Raises:
        ConfigError: unknown ``kind``, unknown key, or an invalid value, naming ``where``.
    """
    return build_from_section(REPRESENTATIONS, config, where)
