"""Per-element material arrays from element BMD and element groups (bone, screws, caps).

Only the per-element BMD and which elements are bone or which solid they are made of are
used: no element geometry, so tetrahedral and voxel meshes share it
(:func:`fesim.mesh.materials.element_materials` maps region codes onto it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fesim.errors import MaterialError
from fesim.material.density import ash_to_apparent, check_ash_equation, qct_to_ash
from fesim.material.laws import LAWS, STRENGTH_LAWS, apply_law
from fesim.material.solids import SolidMaterial


@dataclass
class Materials:
    """Per-element material arrays, each (M,): E and yield stress in MPa, densities in g/cm^3.

    ``yield_stress`` is the compressive yield stress of the density-strength law for bone
    (:data:`fesim.material.NO_YIELD` where the law gives none) and the solid's yield
    stress for screws and caps; ``rho_ash``/``rho_app`` are 0 outside bone.
    """

    E: np.ndarray
    nu: np.ndarray
    yield_stress: np.ndarray
    rho_ash: np.ndarray
    rho_app: np.ndarray


@dataclass
class BoneProperties:
    """E and compressive yield stress (MPa) and ash/apparent density (g/cm^3) of bone, each (M,)."""

    E: np.ndarray
    yield_stress: np.ndarray
    rho_ash: np.ndarray
    rho_app: np.ndarray


def bone_properties(bmd_mg_cm3, law: str = "keyak", *, strength_law: str | None = None,
                    bmd_material: str = "K2HPO4", ash_method: str = "keyak", e_floor_mpa: float = 1.0,
                    cortical_law: str | None = None, cortical_threshold_mg_cm3: float = 350.0) -> BoneProperties:
    """Bone properties of BMD values under the chosen laws.

    Parameters
    ----------
    bmd_mg_cm3 : ndarray (M,)
        BMD (mg/cm^3) of ``bmd_material``; must be finite.
    law : str
        Key of :data:`~fesim.material.laws.LAWS` (density-modulus).
    strength_law : str, optional
        Key of :data:`~fesim.material.laws.STRENGTH_LAWS`; default: the one published with ``law``.
    bmd_material : {"K2HPO4", "HA"}
        Calibration material of the BMD; ``ash_method`` and QCT laws must be defined for it.
    ash_method : str
        Key of :data:`~fesim.material.density.ASH_EQUATIONS`.
    e_floor_mpa : float
        Lower bound on E (MPa) so the stiffness matrix stays well conditioned.
    cortical_law : str, optional
        Modulus law (with its own strength law) used instead where BMD >= ``cortical_threshold_mg_cm3``.

    Raises
    ------
    MaterialError
        Unknown law or equation, non-finite BMD, or a BMD material a law or equation is not defined for.
    """
    bmd = np.asarray(bmd_mg_cm3, dtype=float)
    if not np.all(np.isfinite(bmd)):
        raise MaterialError("element BMD contains NaN or infinite values")
    check_ash_equation(ash_method, bmd_material)
    LAWS.get_or_raise(law)
    if strength_law is not None:
        STRENGTH_LAWS.get_or_raise(strength_law)
    ash = np.asarray(qct_to_ash(bmd, bmd_material, ash_method), dtype=float)
    E, sy = apply_law(law, bmd, ash_method, bmd_material, strength_law)
    if cortical_law is not None:
        ec, sc = apply_law(cortical_law, bmd, ash_method, bmd_material)
        cort = bmd >= cortical_threshold_mg_cm3
        E, sy = np.where(cort, ec, E), np.where(cort, sc, sy)
    return BoneProperties(np.maximum(E, e_floor_mpa), sy, ash, np.asarray(ash_to_apparent(ash), dtype=float))


def assign_materials(bmd_mg_cm3, bone: np.ndarray, solids: list[tuple[np.ndarray, SolidMaterial]],
                     nu_bone: float = 0.3, **bone_options) -> Materials:
    """Materials of every element: bone where ``bone``, else the solid of its group.

    Parameters
    ----------
    bmd_mg_cm3 : ndarray (M,)
        Element BMD (mg/cm^3); only read for bone elements' properties.
    bone : ndarray of bool (M,)
    solids : list of (ndarray of bool (M,), SolidMaterial)
        Element groups made of a homogeneous solid (screws, caps); groups and bone must
        cover every element.
    nu_bone : float
    **bone_options
        Passed to :func:`bone_properties` (``law``, ``strength_law``, ``bmd_material``, ...).
    """
    bmd = np.asarray(bmd_mg_cm3, dtype=float)
    bone = np.asarray(bone, dtype=bool)
    if bmd.shape != bone.shape:
        raise MaterialError(f"element BMD has shape {bmd.shape}, expected {bone.shape}")
    bp = bone_properties(bmd, **bone_options)
    E = np.where(bone, bp.E, 0.0)
    nu = np.where(bone, nu_bone, 0.0)
    sy = np.where(bone, bp.yield_stress, 0.0)
    ash = np.where(bone, bp.rho_ash, 0.0)
    covered = bone.copy()
    for sel, m in solids:
        sel = np.asarray(sel, dtype=bool) & ~bone
        E, nu, sy = np.where(sel, m.E_mpa, E), np.where(sel, m.nu, nu), np.where(sel, m.yield_mpa, sy)
        covered |= sel
    if not covered.all():
        raise MaterialError(f"{int((~covered).sum())} element(s) are neither bone nor a solid")
    return Materials(E.astype(float), nu.astype(float), sy.astype(float), ash,
                     np.asarray(ash_to_apparent(ash), dtype=float))
