"""Bone materials: density-modulus-strength laws (element BMD: :mod:`fesim.mesh.bmdmap`).

Densities: BMD in mg/cm^3 K2HPO4-equivalent; ash and apparent density in g/cm^3. BMD -> ash
uses :func:`fesim.imaging.calibration.qct_to_ash` (Keyak: 1.22 rho_K + 0.0523 by default);
ash -> apparent divides by 0.6 (Schileo et al. 2008).
Sources and equations: /work/shared/reference/domain.md sections 2 and 3.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from fesim.errors import MeshError
from fesim.imaging.calibration import ASH_APPARENT_RATIO as ASH_TO_APPARENT
from fesim.imaging.calibration import qct_to_ash
from fesim.mesh.bmdmap import map_bmd  # noqa: F401  (re-exported for the pipeline)
from fesim.mesh.tetmesh import REGION_BONE, REGION_CAP_LOWER, REGION_SCREW0, TetMesh

#: Titanium tensile yield (MPa, Ti-6Al-4V) and PMMA cap constants (Bonelab spine FE).
SCREW_YIELD_MPA = 880.0
CAP_E_MPA, CAP_NU, CAP_YIELD_MPA = 2500.0, 0.3, 70.0
#: Compressive yield strain of vertebral trabecular bone (Kopperdahl & Keaveny 1998), used
#: for laws that give no strength: sigma_y = E * strain.
YIELD_STRAIN = 0.0084
NO_YIELD = 1.0e20

# ----------------------------------------------------------------------------------------
# Density-modulus-strength laws
# ----------------------------------------------------------------------------------------

def _keyak(rho):
    e = np.where(rho <= 0.27, 33900.0 * rho**2.20,
                 np.where(rho < 0.6, 5307.0 * rho + 469.0, 10200.0 * rho**2.01))
    e = np.where(rho <= 0, 0.001, e)
    s = np.where(rho <= 0.2, NO_YIELD, np.where(rho < 0.317, 137.0 * rho**1.88, 114.0 * rho**1.72))
    return e, s


def _morgan(rho):
    e = 4730.0 * rho**1.56
    return e, YIELD_STRAIN * e


def _kopperdahl(rho):
    return 2980.0 * rho**1.05, 37.4 * rho**1.39


def _keller(rho):
    return 1890.0 * rho**1.92, np.where(rho <= 0.2, NO_YIELD, 284.0 * rho**2.27)


@dataclass(frozen=True)
class Law:
    """A density-elasticity-strength law: ``func(rho) -> (E MPa, yield MPa)``."""

    name: str
    density: str  # "ash", "apparent" or "qct" (K2HPO4 g/cm^3), all g/cm^3
    func: Callable
    source: str


LAWS = {
    "keyak": Law("keyak", "ash", _keyak,
                 "Keyak piecewise law, PMC6069821 Table 1 (J Orthop Surg Res 2018;13:192)"),
    "morgan": Law("morgan", "apparent", _morgan,
                  "Morgan, Bayraktar & Keaveny 2003 J Biomech 36:897, vertebral; yield = E x 0.84 %"),
    "kopperdahl": Law("kopperdahl", "qct", _kopperdahl,
                      "Kopperdahl & Keaveny 1998 / Crawford 2003 QCT power laws (Bonelab spine FE)"),
    "keller": Law("keller", "ash", _keller, "Keller 1994, vertebra (PMC6069821 Table 1)"),
}


@dataclass
class Materials:
    """Per-element material arrays, each (M,): E and yield stress in MPa, densities in g/cm^3."""

    E: np.ndarray
    nu: np.ndarray
    yield_stress: np.ndarray
    rho_ash: np.ndarray
    rho_app: np.ndarray


def apply_law(law: str, bmd_mg_cm3, ash_method: str = "keyak") -> tuple[np.ndarray, np.ndarray]:
    """E (MPa) and yield stress (MPa) of bone with the given BMD under a named law."""
    if law not in LAWS:
        raise MeshError(f"unknown material law {law!r}; choose from {sorted(LAWS)}")
    lw = LAWS[law]
    bmd = np.asarray(bmd_mg_cm3, dtype=float)
    ash = qct_to_ash(bmd, method=ash_method)
    rho = {"ash": ash, "apparent": ash / ASH_TO_APPARENT,
           "qct": np.maximum(bmd, 0.0) / 1000.0}[lw.density]
    e, s = lw.func(np.asarray(rho, dtype=float))
    return np.asarray(e, float), np.asarray(s, float)


def element_materials(mesh: TetMesh, bmd_elem: np.ndarray, law: str = "keyak", nu_bone: float = 0.3,
                      e_floor_mpa: float = 1.0, cortical_law: str | None = None,
                      cortical_threshold_mg_cm3: float = 350.0, screw_E: float = 110000.0,
                      screw_nu: float = 0.3, ash_method: str = "keyak") -> Materials:
    """Materials of every element: bone from ``law``, screws titanium, caps PMMA.

    Parameters
    ----------
    mesh : TetMesh
    bmd_elem : ndarray (M,)
        Element BMD (mg/cm^3), e.g. from :func:`map_bmd`.
    law : str
        Key of :data:`LAWS` for bone.
    e_floor_mpa : float
        Lower bound on bone E (MPa) so the stiffness matrix stays well conditioned.
    cortical_law : str, optional
        Law used instead for bone elements with BMD >= ``cortical_threshold_mg_cm3``.
    screw_E, screw_nu : float
        Screw elastic constants (MPa, -).
    ash_method : str
        BMD -> ash equation of :func:`fesim.imaging.calibration.qct_to_ash`.
    """
    bmd_elem = np.asarray(bmd_elem, dtype=float)
    if bmd_elem.shape != (mesh.n_elements,):
        raise MeshError(f"bmd_elem has shape {bmd_elem.shape}, expected ({mesh.n_elements},)")
    if not np.all(np.isfinite(bmd_elem)):
        raise MeshError("element BMD contains NaN or infinite values")
    bone = mesh.region == REGION_BONE
    ash = np.where(bone, qct_to_ash(bmd_elem, method=ash_method), 0.0)
    E, sy = apply_law(law, bmd_elem, ash_method)
    if cortical_law is not None:
        ec, sc = apply_law(cortical_law, bmd_elem, ash_method)
        cort = bmd_elem >= cortical_threshold_mg_cm3
        E, sy = np.where(cort, ec, E), np.where(cort, sc, sy)
    E = np.where(bone, np.maximum(E, e_floor_mpa), 0.0)
    sy = np.where(bone, sy, 0.0)
    nu = np.where(bone, nu_bone, 0.0)
    screw = (mesh.region >= REGION_SCREW0) & (mesh.region < REGION_CAP_LOWER)
    cap = mesh.region >= REGION_CAP_LOWER
    E = np.where(screw, screw_E, np.where(cap, CAP_E_MPA, E))
    nu = np.where(screw, screw_nu, np.where(cap, CAP_NU, nu))
    sy = np.where(screw, SCREW_YIELD_MPA, np.where(cap, CAP_YIELD_MPA, sy))
    unknown = ~(bone | screw | cap)
    if unknown.any():
        raise MeshError(f"unknown region codes {np.unique(mesh.region[unknown]).tolist()}")
    return Materials(E.astype(float), nu.astype(float), sy.astype(float), ash,
                     ash / ASH_TO_APPARENT)


def bin_materials(E: np.ndarray, nu: np.ndarray, n_bins: int = 50) -> tuple[np.ndarray, np.ndarray, dict]:
    """Group elements into at most ``n_bins`` materials per Poisson's ratio (log-spaced E bins).

    Returns
    -------
    bin_id : ndarray (M,) int
        Material index of every element (0-based, dense).
    table : ndarray (K, 2)
        (E, nu) of each material; E is the mean of its elements' E (MPa).
    error : dict
        ``n_materials``, ``max_rel_error`` and ``mean_rel_error`` of E after binning.
    """
    E = np.asarray(E, float)
    nu = np.asarray(nu, float)
    if n_bins < 1:
        raise MeshError("n_bins must be at least 1")
    if np.any(E <= 0):
        raise MeshError("all Young's moduli must be positive to bin materials")
    keys = np.zeros(len(E), np.int64)
    _, nu_id = np.unique(nu, return_inverse=True)
    for g in np.unique(nu_id):
        sel = nu_id == g
        le = np.log(E[sel])
        uniq = np.unique(E[sel])
        if len(uniq) <= n_bins:
            k = np.searchsorted(uniq, E[sel])
        else:
            edges = np.linspace(le.min(), le.max(), n_bins + 1)
            k = np.clip(np.searchsorted(edges, le, side="right") - 1, 0, n_bins - 1)
        keys[sel] = g * (n_bins + 1) + k
    _, bin_id = np.unique(keys, return_inverse=True)
    bin_id = bin_id.ravel()
    k = bin_id.max() + 1
    cnt = np.bincount(bin_id, minlength=k)
    e_bin = np.bincount(bin_id, weights=E, minlength=k) / cnt
    nu_bin = np.bincount(bin_id, weights=nu, minlength=k) / cnt
    rel = np.abs(e_bin[bin_id] - E) / E
    err = {"n_materials": int(k), "max_rel_error": float(rel.max()), "mean_rel_error": float(rel.mean())}
    return bin_id, np.column_stack([e_bin, nu_bin]), err
