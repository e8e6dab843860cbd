"""Per-jet physics observables of calorimeter jet images, for comparing generated and real jets.

Per channel (tracks, ECAL, HCAL; HCAL on its 25x25 tower grid, one deposit per tower): hit
multiplicity, energy sum, leading-deposit energy fraction and girth. Per jet, from the ECAL and
HCAL deposits as in :mod:`tfjetflows.evaluation.kinematics` (massless deposits, pixel size
0.0174, image centre = jet axis, tracks left out so charged hadrons are not counted twice): pT,
mass and the N-subjettiness ratio tau21.

N-subjettiness [1] is computed with *leading-pixel axes*: the axis of tau1 is the hardest deposit,
the axes of tau2 are the two hardest deposits (ties go to the lower flat index: ECAL before HCAL,
then row-major). This is cheaper than exclusive-kT axes and exact for well-separated prongs;
it overestimates tau2 where a prong's energy is spread over several pixels. With
``dR`` the (eta, phi) distance,

    tau_N = sum_i pT_i min_k dR(i, axis_k) / sum_i pT_i,   tau21 = tau2 / tau1 (0 where tau1 = 0).

Weights are |E| of the pixels with |E| >= threshold (generated images can carry small negative
pixels; jet pT and mass keep the signed values, as in ``jet_pt_mass``).

References:
    [1] J. Thaler and K. Van Tilburg, "Identifying Boosted Objects with N-subjettiness",
        JHEP 03 (2011) 015, arXiv:1011.2268.
"""

from __future__ import annotations

from numbers import Integral

import numpy as np

from tfjetflows.data.schema import (
    CHANNEL_GRID,
    CHANNELS,
    HCAL_TOWER,
    IMAGE_SHAPE,
    PIXEL_SIZE,
    DataError,
    channel_grid,
    channel_index,
)
from tfjetflows.data.selection import energy_sums, hit_counts
from tfjetflows.evaluation.kinematics import jet_pt_mass, pixel_angles

__all__ = ["OBSERVABLE_LABELS", "compute_observables", "radial_profile"]

OBSERVABLE_LABELS: dict[str, str] = {
    "tracks_hits": "Track pixels with |pT| >= threshold",
    "tracks_energy_sum": r"Track $\sum p_T$ [GeV]",
    "tracks_leading_fraction": r"Track leading-pixel $p_T$ fraction",
    "tracks_girth": r"Track girth $g$ [rad]",
    "ecal_hits": "ECAL crystals with |E| >= threshold",
    "ecal_energy_sum": r"ECAL $\sum E$ [GeV]",
    "ecal_leading_fraction": "ECAL leading-crystal energy fraction",
    "ecal_girth": r"ECAL girth $g$ [rad]",
    "hcal_hits": "HCAL towers with |E| >= threshold",
    "hcal_energy_sum": r"HCAL $\sum E$ [GeV]",
    "hcal_leading_fraction": "HCAL leading-tower energy fraction",
    "hcal_girth": r"HCAL girth $g$ [rad]",
    "jet_pt": r"Jet $p_T$ (ECAL+HCAL) [GeV]",
    "jet_mass": r"Jet mass $m$ (ECAL+HCAL) [GeV]",
    "jet_tau21": r"$\tau_{21}$ (leading-pixel axes)",
}

# Image half-width in (eta, phi): the default outer edge of the radial profile.
_HALF_WIDTH = CHANNEL_GRID["ecal"] / 2.0 * PIXEL_SIZE
# Jets per chunk in the tau21 computation: bounds memory to ~chunk x 16250 doubles per array.
_TAU_CHUNK = 256


def _check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or tuple(images.shape[1:]) != IMAGE_SHAPE:
        raise DataError(
            f"jet images must have shape [N, {', '.join(map(str, IMAGE_SHAPE))}], "
            f"got {list(images.shape)}"
        )
    return images


def _check_threshold(threshold: float) -> float:
    if not np.isfinite(threshold) or threshold < 0:
        raise ValueError(f"threshold must be a finite number >= 0, got {threshold!r}")
    return float(threshold)


def _cell(name: str) -> int:
    return HCAL_TOWER if name == "hcal" else 1


def _radius(name: str) -> np.ndarray:
    """Return the [grid * grid] distance of each cell centre of ``name`` to the image centre."""
    angles = pixel_angles(CHANNEL_GRID[name], _cell(name))
    return np.hypot(angles[:, None], angles[None, :]).ravel()


def _weights(images: np.ndarray, name: str, threshold: float) -> np.ndarray:
    """Return the [N, cells] |E| of ``name`` on its grid, zero below ``threshold``."""
    plane = np.abs(channel_grid(np.asarray(images, np.float64), name))
    plane = plane.reshape(plane.shape[0], -1)
    return np.where(plane >= threshold, plane, 0.0)


def _safe_ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Return numerator / denominator, 0 where the denominator is 0."""
    out = np.zeros_like(numerator, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def _channel_observables(
    images: np.ndarray, name: str, threshold: float
) -> dict[str, np.ndarray]:
    weights = _weights(images, name, threshold)
    total = weights.sum(axis=1)
    return {
        f"{name}_hits": hit_counts(images, [name], threshold).astype(np.float64),
        f"{name}_energy_sum": energy_sums(images, [name]),
        f"{name}_leading_fraction": _safe_ratio(weights.max(axis=1), total),
        f"{name}_girth": _safe_ratio(weights @ _radius(name), total),
    }


def _deposit_positions() -> tuple[np.ndarray, np.ndarray]:
    """Return the (eta, phi) [D] of the ECAL crystals followed by the HCAL towers."""
    etas, phis = [], []
    for name in ("ecal", "hcal"):
        angles = pixel_angles(CHANNEL_GRID[name], _cell(name))
        eta, phi = np.meshgrid(angles, angles, indexing="ij")
        etas.append(eta.ravel())
        phis.append(phi.ravel())
    return np.concatenate(etas), np.concatenate(phis)


def _tau21(images: np.ndarray, threshold: float) -> np.ndarray:
    """Return tau2 / tau1 [N] with leading-pixel axes (see the module docstring)."""
    eta, phi = _deposit_positions()
    out = np.zeros(images.shape[0])
    for start in range(0, images.shape[0], _TAU_CHUNK):
        chunk = images[start : start + _TAU_CHUNK]
        pt = np.concatenate(
            [_weights(chunk, "ecal", threshold), _weights(chunk, "hcal", threshold)], axis=1
        )
        rows = np.arange(pt.shape[0])
        first = np.argmax(pt, axis=1)
        masked = pt.copy()
        masked[rows, first] = -np.inf
        second = np.argmax(masked, axis=1)
        dr1 = np.hypot(eta - eta[first, None], phi - phi[first, None])
        dr2 = np.hypot(eta - eta[second, None], phi - phi[second, None])
        total = pt.sum(axis=1)
        tau1 = _safe_ratio(np.sum(pt * dr1, axis=1), total)
        tau2 = _safe_ratio(np.sum(pt * np.minimum(dr1, dr2), axis=1), total)
        out[start : start + len(chunk)] = _safe_ratio(tau2, tau1)
    return out


def compute_observables(images: np.ndarray, threshold: float = 1e-3) -> dict[str, np.ndarray]:
    """Return per-jet observables of ``images``; the keys are those of :data:`OBSERVABLE_LABELS`.

    Args:
        images: [N, 3, 125, 125] jet images (tracks, ECAL, HCAL; GeV).
        threshold: a pixel (HCAL: tower) is a hit and enters the fractions, girth and jet
            observables when ``|E| >= threshold``. Energy sums use every pixel, as stored.

    Returns:
        ``{c}_hits``, ``{c}_energy_sum``, ``{c}_leading_fraction`` (largest |E| / sum |E|, 0 for an
        empty channel) and ``{c}_girth`` (|E|-weighted mean (eta, phi) distance to the image
        centre, 0 for an empty channel) for each channel c; ``jet_pt``, ``jet_mass``,
        ``jet_tau21``. Every value is a float64 array [N].

    Raises:
        DataError: ``images`` is not [N, 3, 125, 125].
        ValueError: ``threshold`` is negative or not finite.
    """
    images = _check_images(images)
    threshold = _check_threshold(threshold)
    out: dict[str, np.ndarray] = {}
    for name in CHANNELS:
        out.update(_channel_observables(images, name, threshold))
    out["jet_pt"], out["jet_mass"] = jet_pt_mass(images, threshold)
    out["jet_tau21"] = _tau21(images, threshold)
    return out


def radial_profile(
    images: np.ndarray,
    channel: str,
    bins: int = 10,
    r_max: float = _HALF_WIDTH,
    threshold: float = 1e-3,
) -> np.ndarray:
    """Return the fraction of each jet's |E| in ``bins`` equal annuli around the image centre.

    Annulus k holds the cells (HCAL: towers) whose centre lies at a distance in
    ``[k, k + 1) * r_max / bins`` from the centre; cells beyond ``r_max`` (the image corners, by
    default ``r_max`` = the image half-width 62.5 x 0.0174) go into the last annulus, so a
    non-empty jet's row sums to 1. An empty jet (no |E| >= threshold) gets a row of zeros.

    Args:
        images: [N, 3, 125, 125] jet images.
        channel: ``tracks``, ``ecal`` or ``hcal``.
        bins: number of annuli (>= 1).
        r_max: outer radius of the last regular annulus, in (eta, phi) units (> 0).
        threshold: cells with ``|E| < threshold`` are left out.

    Returns:
        [N, bins] float64 energy fractions.

    Raises:
        DataError: bad image shape or unknown channel.
        ValueError: ``bins``, ``r_max`` or ``threshold`` out of range.
    """
    images = _check_images(images)
    channel_index(channel)
    if isinstance(bins, bool) or not isinstance(bins, Integral) or bins < 1:
        raise ValueError(f"radial_profile: bins must be an integer >= 1, got {bins!r}")
    if not np.isfinite(r_max) or r_max <= 0:
        raise ValueError(f"radial_profile: r_max must be a finite number > 0, got {r_max!r}")
    weights = _weights(images, channel, _check_threshold(threshold))
    index = np.minimum((_radius(channel) / r_max * bins).astype(np.int64), bins - 1)
    onehot = np.zeros((index.size, bins))
    onehot[np.arange(index.size), index] = 1.0
    return _safe_ratio(weights @ onehot, weights.sum(axis=1, keepdims=True))
