"""Quark- and gluon-enriched jets from Pythia 8, imaged by the parametric detector.

Needs the optional extra ``pip install "tfjetflows[pythia]"`` (``pythia8mc`` with its
``nextBatch`` Awkward interface, ``fastjet`` and ``awkward``). Two Pythia instances generate 13 TeV
proton-proton QCD events from leading-order subprocesses whose outgoing partons are all quarks
(``qq' -> qq'``, ``qqbar -> q'qbar'``: label 0) or all gluons (``gg -> gg``, ``qqbar -> gg``:
label 1). The visible final-state particles are clustered with anti-kT (Cacciari, Salam, Soyez,
JHEP 04 (2008) 063), R = 0.4; the leading jet is kept when its pT lies in the requested range and
``|eta|`` inside the barrel. Every visible particle inside the image window around the jet axis
(underlying event included) is passed to :func:`tfjetflows.data.detector.detector_response`; ``pt``
and ``m0`` are those of the anti-kT jet.

Reference: C. Bierlich et al., "A comprehensive guide to the physics and usage of PYTHIA 8.3",
SciPost Phys. Codebases 8 (2022).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from tfjetflows.data.detector import (
    CHARGED,
    NEUTRAL_HADRON,
    PHOTON,
    Constituents,
    DetectorConfig,
    detector_response,
)
from tfjetflows.data.schema import IMAGE_SHAPE, PIXEL_SIZE

__all__ = ["PROCESSES", "MissingExtraError", "PythiaConfig", "generate_pythia", "require_extra"]

PROCESSES = {
    0: ("HardQCD:qq2qq = on", "HardQCD:qqbar2qqbarNew = on"),
    1: ("HardQCD:gg2gg = on", "HardQCD:qqbar2gg = on"),
}

JetChunk = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]

_HALF_WIDTH = IMAGE_SHAPE[1] / 2 * PIXEL_SIZE
_NEUTRINOS = (12, 14, 16)


class MissingExtraError(RuntimeError):
    """An optional dependency (an install extra) is not installed."""


def require_extra() -> tuple[ModuleType, ModuleType, ModuleType]:
    """Import and return ``pythia8mc``, ``fastjet`` and ``awkward``.

    Raises:
        MissingExtraError: one of them is not installed; the message says how to install it.
    """
    try:
        import pythia8mc  # noqa: I001 - the order decides which missing package is named
        import fastjet
        import awkward
    except ImportError as err:
        raise MissingExtraError(
            f"the pythia generator needs the optional packages pythia8mc and fastjet "
            f"({err.name or err} could not be imported); install them with: "
            f'pip install "tfjetflows[pythia]"'
        ) from err
    return pythia8mc, fastjet, awkward


@dataclass(frozen=True)
class PythiaConfig:
    """Event generation and jet selection settings.

    Attributes:
        pt_min: lowest leading-jet pT kept, GeV.
        pt_max: highest leading-jet pT kept, GeV.
        max_abs_eta: largest leading-jet ``|eta|`` kept (the image must fit the barrel).
        ecm: proton-proton centre-of-mass energy, GeV.
        radius: anti-kT radius.
        batch: events generated per ``nextBatch`` call.
        max_batches: batches tried per requested chunk before giving up.
    """

    pt_min: float = 100.0
    pt_max: float = 300.0
    max_abs_eta: float = 1.4
    ecm: float = 13000.0
    radius: float = 0.4
    batch: int = 32
    max_batches: int = 1000

    def settings(self, label: int, seed: int) -> list[str]:
        """Return the Pythia settings for the subprocesses of ``label`` with ``seed``."""
        return [
            "Print:quiet = on",
            "Next:numberCount = 0",
            f"Beams:eCM = {self.ecm}",
            *PROCESSES[label],
            # The leading jet pT is close to the hard pT; a margin feeds both edges of the range.
            f"PhaseSpace:pTHatMin = {0.8 * self.pt_min}",
            f"PhaseSpace:pTHatMax = {1.1 * self.pt_max}",
            "Random:setSeed = on",
            f"Random:seed = {seed}",
        ]


@dataclass
class _Jets:
    """Selected jets of one class, buffered until a chunk needs them."""

    particles: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
    pt: list[float]
    m0: list[float]


class _JetSource:
    """One Pythia instance generating leading jets of one class."""

    def __init__(self, label: int, seed: int, config: PythiaConfig, modules: tuple) -> None:
        pythia8mc, self._fastjet, self._ak = modules
        self._config = config
        self._pythia = pythia8mc.Pythia("", False)
        for line in config.settings(label, seed):
            if not self._pythia.readString(line):
                raise RuntimeError(f"Pythia rejected the setting {line!r}")
        if not self._pythia.init():
            raise RuntimeError(f"Pythia failed to initialise for label {label}")
        # Silence the FastJet banner (printed on first use; shared by the awkward interface).
        self._fastjet._swig.ClusterSequence.set_fastjet_banner_stream(None)
        self._jet_def = self._fastjet.JetDefinition(self._fastjet.antikt_algorithm, config.radius)
        self._charge: dict[int, float] = {}
        self._buffer = _Jets([], [], [])

    def _charges(self, ids: np.ndarray) -> np.ndarray:
        """Return the electric charge of each particle id (looked up once per id)."""
        unique, inverse = np.unique(ids, return_inverse=True)
        for pid in unique.tolist():
            if pid not in self._charge:
                self._charge[pid] = float(self._pythia.particleData.charge(pid))
        return np.array([self._charge[pid] for pid in unique.tolist()])[inverse]

    def _fill(self) -> None:
        """Generate one batch of events and buffer the leading jets that pass the selection."""
        ak, cfg = self._ak, self._config
        events = self._pythia.nextBatch(cfg.batch)
        prt = events.prt
        absid = abs(prt.id)
        keep = prt.status > 0
        for neutrino in _NEUTRINOS:
            keep = keep & (absid != neutrino)
        prt = prt[keep]
        four = ak.zip(
            {"px": prt.p.px, "py": prt.p.py, "pz": prt.p.pz, "E": prt.p.e}, with_name="Momentum4D"
        )
        sequence = self._fastjet.ClusterSequence(four, self._jet_def)
        jets = sequence.inclusive_jets(min_pt=0.5 * cfg.pt_min)
        jet_pt = np.hypot(jets.px, jets.py)
        lead = ak.argmax(jet_pt, axis=1, keepdims=True)
        leading = ak.firsts(jets[lead])
        has = ~ak.is_none(leading)
        leading = leading[has]
        prt = prt[has]

        px, py, pz, e = (ak.to_numpy(getattr(leading, k)) for k in ("px", "py", "pz", "E"))
        pt = np.hypot(px, py)
        eta = np.arcsinh(pz / np.maximum(pt, 1e-12))
        phi = np.arctan2(py, px)
        m0 = np.sqrt(np.maximum(e**2 - px**2 - py**2 - pz**2, 0.0))
        good = (pt >= cfg.pt_min) & (pt <= cfg.pt_max) & (np.abs(eta) <= cfg.max_abs_eta)

        counts = ak.to_numpy(ak.num(prt.id))
        event = np.repeat(np.arange(len(counts)), counts)
        ids = ak.to_numpy(ak.flatten(prt.id))
        ppx, ppy, ppz = (ak.to_numpy(ak.flatten(getattr(prt.p, k))) for k in ("px", "py", "pz"))
        ppt = np.hypot(ppx, ppy)
        moving = ppt > 1e-9
        deta = np.where(moving, np.arcsinh(ppz / np.where(moving, ppt, 1.0)), np.inf) - eta[event]
        dphi = (np.arctan2(ppy, ppx) - phi[event] + np.pi) % (2 * np.pi) - np.pi
        window = good[event] & (np.abs(deta) < _HALF_WIDTH) & (np.abs(dphi) < _HALF_WIDTH)
        kind = np.where(ids == 22, PHOTON, NEUTRAL_HADRON)
        kind = np.where(self._charges(ids) != 0, CHARGED, kind)
        inside = np.flatnonzero(window)  # sorted by event
        for k in np.flatnonzero(good):
            lo, hi = np.searchsorted(event[inside], [k, k + 1])
            sel = inside[lo:hi]
            self._buffer.particles.append((deta[sel], dphi[sel], ppt[sel], kind[sel]))
            self._buffer.pt.append(float(pt[k]))
            self._buffer.m0.append(float(m0[k]))

    def take(self, n: int) -> _Jets:
        """Return the next ``n`` selected jets, generating events as needed."""
        tries = 0
        while len(self._buffer.pt) < n:
            if tries >= self._config.max_batches:
                raise RuntimeError(
                    f"Pythia produced {len(self._buffer.pt)} of {n} jets in "
                    f"{tries * self._config.batch} events; widen the pT or eta range"
                )
            self._fill()
            tries += 1
        b = self._buffer
        out = _Jets(b.particles[:n], b.pt[:n], b.m0[:n])
        self._buffer = _Jets(b.particles[n:], b.pt[n:], b.m0[n:])
        return out


def _class_seed(seed: int, label: int) -> int:
    """Return the Pythia seed (in ``[1, 900_000_000)``) of the ``label`` instance."""
    state = np.random.SeedSequence([seed, label]).generate_state(1, dtype=np.uint64)[0]
    return int(state % 899_999_999) + 1


def generate_pythia(
    n: int,
    seed: int,
    *,
    chunk: int = 256,
    config: PythiaConfig | None = None,
    detector: DetectorConfig | None = None,
) -> Iterator[JetChunk]:
    """Yield ``n`` Pythia jets (half quark-, half gluon-enriched) in chunks of at most ``chunk``.

    Args:
        n: total number of jets.
        seed: seed of the Pythia instances and of the detector response.
        chunk: jets per yielded chunk.
        config: event generation and selection settings; the defaults when ``None``.
        detector: detector parameters; the defaults when ``None``.

    Yields:
        ``(images [m, 3, 125, 125], pt [m], m0 [m], y [m])`` with ``m <= chunk``.

    Raises:
        MissingExtraError: ``pythia8mc``, ``fastjet`` or ``awkward`` is not installed.
    """
    if n <= 0:
        raise ValueError(f"number of jets must be positive, got {n}")
    if chunk <= 0:
        raise ValueError(f"chunk must be positive, got {chunk}")
    modules = require_extra()
    cfg = config or PythiaConfig()
    rng = np.random.default_rng(seed)
    sources = [_JetSource(label, _class_seed(seed, label), cfg, modules) for label in (0, 1)]
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        label = rng.permutation(np.arange(m) % 2)
        pulled = [sources[c].take(int((label == c).sum())) for c in (0, 1)]
        order = [iter(range(len(p.pt))) for p in pulled]
        parts: list[Constituents] = []
        pt, m0 = np.empty(m), np.empty(m)
        for slot, c in enumerate(label.tolist()):
            k = next(order[c])
            eta, phi, ppt, kind = pulled[c].particles[k]
            parts.append(Constituents(eta, phi, ppt, kind, np.full(len(eta), slot)))
            pt[slot], m0[slot] = pulled[c].pt[k], pulled[c].m0[k]
        images = detector_response(Constituents.concatenate(parts), m, rng, config=detector)
        yield images, pt, m0, label.astype(np.float64)
