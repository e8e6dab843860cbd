"""Physically motivated quark and gluon jets in numpy alone, imaged by the parametric detector.

A cheap stand-in for a parton shower, good enough to give jet images with the sparsity and the
quark/gluon differences of the public DeepFalcon files (Andrews et al., "End-to-end jet
classification of quarks and gluons with the CMS Open Data", NIM A 977 (2020) 164304):

* jet pT from a falling power law ``dN/dpT ~ pT^-n`` on ``[pt_min, pt_max]``;
* a label per jet (0 quark-like, 1 gluon-like, exactly balanced within each chunk);
* a Poisson number of particles growing with ``log(pT)``, about ``C_A / C_F``-fold more for gluons;
* momentum fractions from a Dirichlet draw (softer, more democratic for gluons);
* angles from the jet axis that grow for soft particles and for gluons and shrink with pT;
* particle kinds (charged hadron, photon, neutral hadron) in fixed proportions;
* a soft underlying event spread uniformly over the image.

The jet is then boosted and rotated so that its four-momentum points at the image centre and
rescaled so that its pT is exactly the drawn value; ``pt`` and ``m0`` are those of the summed
massless four-vectors of the jet particles (the underlying event is not part of the jet).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from tfjetflows.data.detector import Constituents, DetectorConfig, detector_response
from tfjetflows.data.schema import IMAGE_SHAPE, PIXEL_SIZE

__all__ = [
    "JetModel",
    "generate_synthetic",
    "jet_kinematics",
    "synthetic_chunk",
]

JetChunk = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]

_HALF_WIDTH = IMAGE_SHAPE[1] / 2 * PIXEL_SIZE


@dataclass(frozen=True)
class JetModel:
    """Parameters of the synthetic jets (momenta in GeV, angles in eta-phi units).

    Attributes:
        pt_min: lower edge of the jet pT spectrum.
        pt_max: upper edge of the jet pT spectrum.
        pt_power: spectral index ``n`` of ``dN/dpT ~ pT^-n``.
        multiplicity: mean number of jet particles at ``pt_min`` for (quark, gluon).
        multiplicity_slope: relative growth of the multiplicity per unit ``log(pT / pt_min)``.
        dirichlet: Dirichlet concentration of the momentum fractions for (quark, gluon).
        width: angular scale of a typical particle at ``pt_min`` for (quark, gluon).
        width_power: the angular scale falls as ``(pt_min / pT) ** width_power``.
        softness_power: a particle's angular scale grows as ``(z * N) ** -softness_power``.
        radius: jet radius; angles are compressed smoothly into it.
        kind_fractions: probabilities of charged hadron, photon, neutral hadron.
        ue_multiplicity: mean number of underlying-event particles per image.
        ue_mean_pt: mean pT of an underlying-event particle.
    """

    pt_min: float = 100.0
    pt_max: float = 300.0
    pt_power: float = 4.0
    multiplicity: tuple[float, float] = (22.0, 38.0)
    multiplicity_slope: float = 0.3
    dirichlet: tuple[float, float] = (0.45, 0.65)
    width: tuple[float, float] = (0.08, 0.12)
    width_power: float = 0.5
    softness_power: float = 0.4
    radius: float = 0.4
    kind_fractions: tuple[float, float, float] = (0.6, 0.3, 0.1)
    ue_multiplicity: float = 16.0
    ue_mean_pt: float = 0.6

    def __post_init__(self) -> None:
        if not 0 < self.pt_min < self.pt_max:
            bounds = f"{self.pt_min}, {self.pt_max}"
            raise ValueError(f"JetModel needs 0 < pt_min < pt_max, got {bounds}")
        if not np.isclose(sum(self.kind_fractions), 1.0):
            raise ValueError(f"JetModel.kind_fractions must sum to 1, got {self.kind_fractions}")


def jet_kinematics(
    eta: np.ndarray, phi: np.ndarray, pt: np.ndarray, jet: np.ndarray, n_jets: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sum massless four-vectors per jet.

    Args:
        eta: [P] particle pseudorapidities.
        phi: [P] particle azimuths.
        pt: [P] particle transverse momenta.
        jet: [P] jet index of each particle.
        n_jets: number of jets.

    Returns:
        ``(pt, mass, rapidity, phi)`` of each jet, arrays [n_jets].
    """

    def total(values: np.ndarray) -> np.ndarray:
        return np.bincount(jet, weights=values, minlength=n_jets)

    px, py = total(pt * np.cos(phi)), total(pt * np.sin(phi))
    pz, energy = total(pt * np.sinh(eta)), total(pt * np.cosh(eta))
    jet_pt = np.hypot(px, py)
    mass = np.sqrt(np.maximum(energy**2 - px**2 - py**2 - pz**2, 0.0))
    rapidity = 0.5 * np.log((energy + pz) / np.maximum(energy - pz, 1e-300))
    return jet_pt, mass, rapidity, np.arctan2(py, px)


def _power_law(rng: np.random.Generator, n: int, lo: float, hi: float, power: float) -> np.ndarray:
    """Draw ``n`` values from ``dN/dx ~ x^-power`` on ``[lo, hi]`` by inverting the CDF."""
    u = rng.random(n)
    if np.isclose(power, 1.0):
        return lo * (hi / lo) ** u
    a, b = lo ** (1 - power), hi ** (1 - power)
    return (a + u * (b - a)) ** (1 / (1 - power))


def _jet_particles(
    rng: np.random.Generator, model: JetModel, target_pt: np.ndarray, label: np.ndarray
) -> tuple[Constituents, np.ndarray, np.ndarray]:
    """Generate the particles of each jet; return them with the jets' ``pt`` and ``m0``."""
    n = len(target_pt)
    log_pt = np.log(target_pt / model.pt_min)
    mean_mult = np.asarray(model.multiplicity)[label] * (1 + model.multiplicity_slope * log_pt)
    mult = rng.poisson(mean_mult) + 2
    jet = np.repeat(np.arange(n), mult)

    # Momentum fractions: Dirichlet via normalised Gamma draws.
    gam = rng.gamma(np.asarray(model.dirichlet)[label][jet])
    gam = np.maximum(gam, 1e-12)
    z = gam / np.bincount(jet, weights=gam, minlength=n)[jet]

    # Angles: soft particles and gluon jets spread wider; everything narrows with pT.
    scale = np.asarray(model.width)[label] * (model.pt_min / target_pt) ** model.width_power
    sigma = scale[jet] * (z * mult[jet]) ** -model.softness_power
    r = sigma * np.sqrt(-2.0 * np.log1p(-rng.random(len(z))))
    r = model.radius * np.tanh(r / model.radius)
    angle = rng.uniform(-np.pi, np.pi, len(z))
    eta, phi = r * np.cos(angle), r * np.sin(angle)
    pt = z * target_pt[jet]

    # Point the jet four-momentum at the image centre (boost along z, rotate in phi) and fix pT.
    jet_pt, _, rapidity, jet_phi = jet_kinematics(eta, phi, pt, jet, n)
    eta = eta - rapidity[jet]
    phi = phi - jet_phi[jet]
    pt = pt * (target_pt / jet_pt)[jet]
    jet_pt, mass, _, _ = jet_kinematics(eta, phi, pt, jet, n)

    kind = rng.choice(3, size=len(z), p=np.asarray(model.kind_fractions))
    return Constituents(eta=eta, phi=phi, pt=pt, kind=kind, jet=jet), jet_pt, mass


def _underlying_event(rng: np.random.Generator, model: JetModel, n: int) -> Constituents:
    """Soft particles spread uniformly over each image."""
    mult = rng.poisson(model.ue_multiplicity, n)
    size = int(mult.sum())
    return Constituents(
        eta=rng.uniform(-_HALF_WIDTH, _HALF_WIDTH, size),
        phi=rng.uniform(-_HALF_WIDTH, _HALF_WIDTH, size),
        pt=rng.exponential(model.ue_mean_pt, size),
        kind=rng.choice(3, size=size, p=np.asarray(model.kind_fractions)),
        jet=np.repeat(np.arange(n), mult),
    )


def synthetic_chunk(
    n: int,
    rng: np.random.Generator,
    *,
    model: JetModel | None = None,
    detector: DetectorConfig | None = None,
) -> JetChunk:
    """Generate one chunk of ``n`` synthetic jets.

    Args:
        n: number of jets.
        rng: random generator (advanced by the call).
        model: jet parameters; the defaults when ``None``.
        detector: detector parameters; the defaults when ``None``.

    Returns:
        ``(images [n, 3, 125, 125], pt [n], m0 [n], y [n])``, float64.
    """
    model = model or JetModel()
    label = rng.permutation(np.arange(n) % 2)
    target_pt = _power_law(rng, n, model.pt_min, model.pt_max, model.pt_power)
    particles, pt, m0 = _jet_particles(rng, model, target_pt, label)
    everything = Constituents.concatenate([particles, _underlying_event(rng, model, n)])
    images = detector_response(everything, n, rng, config=detector)
    return images, pt, m0, label.astype(np.float64)


def generate_synthetic(
    n: int,
    seed: int,
    *,
    chunk: int = 256,
    model: JetModel | None = None,
    detector: DetectorConfig | None = None,
) -> Iterator[JetChunk]:
    """Yield ``n`` synthetic jets in chunks of at most ``chunk``.

    The same ``(n, seed, chunk)`` gives identical arrays; the class labels are balanced within
    each chunk (an odd chunk has one extra quark or gluon).

    Args:
        n: total number of jets.
        seed: seed of the numpy random generator.
        chunk: jets per yielded chunk (bounds memory: 256 jets of images are about 96 MB).
        model: jet parameters; the defaults when ``None``.
        detector: detector parameters; the defaults when ``None``.

    Yields:
        ``(images [m, 3, 125, 125], pt [m], m0 [m], y [m])`` with ``m <= chunk``.

    Example:
        >>> images, pt, m0, y = next(generate_synthetic(4, seed=0))
        >>> images.shape, bool((m0 < pt).all())
        ((4, 3, 125, 125), True)
    """
    if n <= 0:
        raise ValueError(f"number of jets must be positive, got {n}")
    if chunk <= 0:
        raise ValueError(f"chunk must be positive, got {chunk}")
    rng = np.random.default_rng(seed)
    for start in range(0, n, chunk):
        yield synthetic_chunk(min(chunk, n - start), rng, model=model, detector=detector)
