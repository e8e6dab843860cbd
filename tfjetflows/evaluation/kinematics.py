"""Jet kinematics from calorimeter images: pT and mass from pixels as massless deposits.

Each ECAL crystal and HCAL tower with |E| above threshold is a massless deposit with transverse
momentum E at its (eta, phi) pixel centre, pixel size 0.0174, image centre at the jet axis.
Tracks are left out: charged hadrons also deposit in the calorimeters, so adding the tracker
would count them twice. HCAL is read on its tower grid (one deposit per tower, not 25).
"""

from __future__ import annotations

import numpy as np

from tfjetflows.data.schema import CHANNEL_GRID, HCAL_TOWER, PIXEL_SIZE, channel_grid

__all__ = ["jet_pt_mass", "pixel_angles"]


def pixel_angles(grid: int, cell: int = 1) -> np.ndarray:
    """Return the (eta or phi) centre of each of ``grid`` cells of ``cell`` pixels."""
    centre = (CHANNEL_GRID["ecal"] - 1) / 2.0
    index = np.arange(grid) * cell + (cell - 1) / 2.0
    return (index - centre) * PIXEL_SIZE


def jet_pt_mass(images: np.ndarray, threshold: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Return jet pT and mass [N] of images [N, 3, 125, 125] from ECAL and HCAL deposits."""
    px = py = pz = energy = 0.0
    for name, cell in (("ecal", 1), ("hcal", HCAL_TOWER)):
        plane = channel_grid(np.asarray(images, np.float64), name)
        plane = np.where(np.abs(plane) >= threshold, plane, 0.0)
        angles = pixel_angles(plane.shape[-1], cell)
        eta, phi = angles[:, None], angles[None, :]
        px = px + np.sum(plane * np.cos(phi), axis=(1, 2))
        py = py + np.sum(plane * np.sin(phi), axis=(1, 2))
        pz = pz + np.sum(plane * np.sinh(eta), axis=(1, 2))
        energy = energy + np.sum(plane * np.cosh(eta), axis=(1, 2))
    pt = np.hypot(px, py)
    mass_sq = energy**2 - px**2 - py**2 - pz**2
    return pt, np.sqrt(np.maximum(mass_sq, 0.0))
