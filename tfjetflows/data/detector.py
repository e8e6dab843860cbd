"""A fast parametric calorimeter: particles in, DeepFalcon jet images [N, 3, 125, 125] out.

The model is a deliberately simple, fully vectorised stand-in for a CMS-like detector, used by the
jet generators behind ``tfjf make-data``:

* **Tracks** (channel 0): the transverse momentum of each charged particle, with a small Gaussian
  resolution, in the pixel it points to.
* **ECAL** (channel 1): photons deposit all of their energy; hadrons deposit a share (a
  minimum-ionising signal, or an early shower). Each deposit is smeared with the calorimeter's
  stochastic and constant terms and spread over a ``k x k`` crystal window with an exponential
  lateral profile measured from the exact impact point.
* **HCAL** (channel 2): the rest of the hadron energy, smeared with a large stochastic term and
  spread over neighbouring 5x5-crystal towers of the 25x25 tower grid; each tower is stored as an
  equal-valued 5x5 block of the 125x125 image.

Energy smearing draws from a Gamma distribution with mean ``E`` and relative width
``sqrt(a^2 / E + c^2)``, so deposits stay positive. Every value with ``|v| < ZERO_SUPPRESSION``
is set to exactly zero, as in the public files. Coordinates are relative to the jet axis (the image
centre), in units of pseudorapidity and azimuth; one pixel is ``PIXEL_SIZE`` wide.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tfjetflows.data.schema import (
    CHANNEL_GRID,
    HCAL_TOWER,
    IMAGE_SHAPE,
    PIXEL_SIZE,
    ZERO_SUPPRESSION,
    DataError,
)

__all__ = [
    "CHARGED",
    "KINDS",
    "NEUTRAL_HADRON",
    "PHOTON",
    "Constituents",
    "DetectorConfig",
    "detector_response",
]

CHARGED = 0
PHOTON = 1
NEUTRAL_HADRON = 2
KINDS = ("charged", "photon", "neutral_hadron")

_SIDE = IMAGE_SHAPE[1]
_TOWERS = CHANNEL_GRID["hcal"]


@dataclass(frozen=True)
class Constituents:
    """Flat arrays describing the particles of many jets at once.

    Attributes:
        eta: [P] pseudorapidity relative to the jet axis.
        phi: [P] azimuth relative to the jet axis (already wrapped into [-pi, pi)).
        pt: [P] transverse momentum in GeV.
        kind: [P] ``CHARGED``, ``PHOTON`` or ``NEUTRAL_HADRON``.
        jet: [P] index of the jet (image) each particle belongs to.
    """

    eta: np.ndarray
    phi: np.ndarray
    pt: np.ndarray
    kind: np.ndarray
    jet: np.ndarray

    def __post_init__(self) -> None:
        names = ("eta", "phi", "pt", "kind", "jet")
        sizes = {name: np.shape(getattr(self, name)) for name in names}
        if len(set(sizes.values())) != 1 or len(sizes["eta"]) != 1:
            raise DataError(f"constituent arrays must be 1-D and of equal length, got {sizes}")

    def __len__(self) -> int:
        return int(np.shape(self.eta)[0])

    @classmethod
    def concatenate(cls, parts: list[Constituents]) -> Constituents:
        """Join several sets of constituents (their jet indices must already be global)."""
        return cls(
            *(
                np.concatenate([getattr(p, name) for p in parts])
                for name in ("eta", "phi", "pt", "kind", "jet")
            )
        )


@dataclass(frozen=True)
class DetectorConfig:
    """Parameters of the parametric detector (energies in GeV, lengths in crystals or towers).

    Attributes:
        track_resolution: relative Gaussian pT resolution of tracks.
        ecal_stochastic: ECAL stochastic term ``a`` (``sigma/E = a / sqrt(E)``).
        ecal_constant: ECAL constant term.
        hcal_stochastic: HCAL stochastic term.
        hcal_constant: HCAL constant term.
        ecal_kernel: side of the square crystal window an ECAL shower is spread over (odd).
        ecal_falloff: exponential lateral falloff length of ECAL showers, in crystals.
        hcal_kernel: side of the square tower window an HCAL shower is spread over (odd).
        hcal_falloff: exponential lateral falloff length of HCAL showers, in towers.
        calo_reach_pt: charged particles below this pT curl up in the magnetic field before the
            calorimeters (0.3 * 3.8 T * 1.29 m / 2 = 0.74 GeV for the CMS barrel) and leave a
            track only.
        mip: energy a hadron that does not shower early leaves in the ECAL.
        early_shower: probability that a hadron starts its shower in the ECAL.
        early_fraction: range of the energy fraction an early-showering hadron leaves in the ECAL.
    """

    track_resolution: float = 0.01
    ecal_stochastic: float = 0.05
    ecal_constant: float = 0.005
    hcal_stochastic: float = 1.0
    hcal_constant: float = 0.05
    ecal_kernel: int = 7
    ecal_falloff: float = 0.55
    hcal_kernel: int = 3
    hcal_falloff: float = 0.12
    calo_reach_pt: float = 0.74
    mip: float = 0.3
    early_shower: float = 0.4
    early_fraction: tuple[float, float] = field(default=(0.2, 0.7))

    def __post_init__(self) -> None:
        for name in ("ecal_kernel", "hcal_kernel"):
            size = getattr(self, name)
            if size < 1 or size % 2 == 0:
                raise ValueError(f"DetectorConfig.{name} must be a positive odd number, got {size}")


def _smear(
    energy: np.ndarray, stochastic: float, constant: float, rng: np.random.Generator
) -> np.ndarray:
    """Smear energies with a positive Gamma response of mean ``E`` and relative width sigma(E)."""
    safe = np.maximum(energy, 1e-12)
    rel2 = stochastic**2 / safe + constant**2
    shape = 1.0 / rel2
    return rng.gamma(shape, safe / shape) * (energy > 0)


def _spread(
    u: np.ndarray,
    v: np.ndarray,
    energy: np.ndarray,
    jet: np.ndarray,
    side: int,
    kernel: int,
    falloff: float,
    n_jets: int,
) -> np.ndarray:
    """Spread deposits at continuous grid coordinates (u, v) over a kernel x kernel window.

    Cell ``i`` covers ``[i, i + 1)``. Weights fall off as ``exp(-d / falloff)`` with the distance
    ``d`` from the impact point to each cell centre and are normalised per deposit before cells
    outside the grid are dropped (that energy leaves the image). Returns [n_jets, side, side].
    """
    half = kernel // 2
    offsets = np.arange(-half, half + 1)
    cu = np.floor(u).astype(np.int64)[:, None, None] + offsets[None, :, None]
    cv = np.floor(v).astype(np.int64)[:, None, None] + offsets[None, None, :]
    dist = np.hypot(cu + 0.5 - u[:, None, None], cv + 0.5 - v[:, None, None])
    weight = np.exp(-dist / falloff)
    weight *= (energy / weight.sum(axis=(1, 2)))[:, None, None]
    inside = (cu >= 0) & (cu < side) & (cv >= 0) & (cv < side)
    flat = (jet[:, None, None] * side + cu) * side + cv
    grid = np.bincount(flat[inside], weights=weight[inside], minlength=n_jets * side * side)
    return grid.reshape(n_jets, side, side)


def _suppress(values: np.ndarray) -> np.ndarray:
    """Set every value with ``|v| < ZERO_SUPPRESSION`` to exactly zero, in place."""
    values[np.abs(values) < ZERO_SUPPRESSION] = 0.0
    return values


def detector_response(
    particles: Constituents,
    n_jets: int,
    rng: np.random.Generator,
    *,
    config: DetectorConfig | None = None,
) -> np.ndarray:
    """Return the Tracks / ECAL / HCAL images of ``n_jets`` jets from their particles.

    Args:
        particles: flat constituent arrays; ``particles.jet`` in ``[0, n_jets)``.
        n_jets: number of images to return.
        rng: random generator for the resolutions and shower fluctuations.
        config: detector parameters; the defaults when ``None``.

    Returns:
        float64 array [n_jets, 3, 125, 125] in GeV; HCAL in equal-valued 5x5 blocks; zero
        suppressed below ``ZERO_SUPPRESSION``.
    """
    cfg = config or DetectorConfig()
    jet = np.asarray(particles.jet, dtype=np.int64)
    if len(jet) and (jet.min() < 0 or jet.max() >= n_jets):
        raise DataError(f"constituent jet index out of range [0, {n_jets})")
    pt = np.asarray(particles.pt, dtype=np.float64)
    kind = np.asarray(particles.kind)
    # Continuous pixel coordinates: pixel i covers [i, i + 1), the axis sits at 62.5.
    u = np.asarray(particles.eta, dtype=np.float64) / PIXEL_SIZE + _SIDE / 2
    v = np.asarray(particles.phi, dtype=np.float64) / PIXEL_SIZE + _SIDE / 2
    images = np.zeros((n_jets, *IMAGE_SHAPE), dtype=np.float64)

    # Tracks: charged pT with a small Gaussian resolution, in the pixel the track points to.
    charged = kind == CHARGED
    iu = np.floor(u).astype(np.int64)
    iv = np.floor(v).astype(np.int64)
    hit = charged & (iu >= 0) & (iu < _SIDE) & (iv >= 0) & (iv < _SIDE)
    track_pt = pt[hit] * (1.0 + cfg.track_resolution * rng.standard_normal(int(hit.sum())))
    flat = (jet[hit] * _SIDE + iu[hit]) * _SIDE + iv[hit]
    images[:, 0] = np.bincount(flat, weights=track_pt, minlength=n_jets * _SIDE * _SIDE).reshape(
        n_jets, _SIDE, _SIDE
    )

    # Split hadron energy between the calorimeters; photons are purely electromagnetic.
    hadron = kind != PHOTON
    lo, hi = cfg.early_fraction
    early = rng.random(len(pt)) < cfg.early_shower
    fraction = rng.uniform(lo, hi, len(pt))
    ecal_share = np.where(early, pt * fraction, np.minimum(pt, cfg.mip))
    reach = ~(charged & (pt < cfg.calo_reach_pt))
    ecal_e = np.where(hadron, ecal_share, pt) * reach
    hcal_e = np.where(hadron, pt - ecal_share, 0.0) * reach

    ecal_e = _smear(ecal_e, cfg.ecal_stochastic, cfg.ecal_constant, rng)
    keep = ecal_e > 0
    images[:, 1] = _spread(
        u[keep], v[keep], ecal_e[keep], jet[keep], _SIDE, cfg.ecal_kernel, cfg.ecal_falloff, n_jets
    )

    hcal_e = _smear(hcal_e, cfg.hcal_stochastic, cfg.hcal_constant, rng)
    keep = hcal_e > 0
    towers = _spread(
        u[keep] / HCAL_TOWER,
        v[keep] / HCAL_TOWER,
        hcal_e[keep],
        jet[keep],
        _TOWERS,
        cfg.hcal_kernel,
        cfg.hcal_falloff,
        n_jets,
    )
    _suppress(towers)
    images[:, 2] = np.repeat(np.repeat(towers, HCAL_TOWER, axis=1), HCAL_TOWER, axis=2)

    _suppress(images[:, :2])
    return images
