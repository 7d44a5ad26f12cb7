"""Per-element materials of a mesh: region codes mapped onto :mod:`fesim.material`.

The material model (density chain, laws, failure constants, screw and cap materials) is
owned by :mod:`fesim.material`; this module only knows which region codes are bone, screws
and caps. Element BMD: :mod:`fesim.mesh.bmdmap`.
"""

from __future__ import annotations

import numpy as np

from fesim.errors import MeshError
from fesim.material import LAWS, PMMA, TITANIUM, Materials, SolidMaterial, apply_law, assign_materials  # noqa: F401
from fesim.mesh.bmdmap import map_bmd  # noqa: F401  (re-exported for the pipeline)
from fesim.mesh.tetmesh import REGION_BONE, REGION_CAP_LOWER, REGION_SCREW0


def element_materials(mesh, bmd_elem: np.ndarray, law: str = "keyak", nu_bone: float = 0.3,
                      e_floor_mpa: float = 1.0, cortical_law: str | None = None,
                      cortical_threshold_mg_cm3: float = 350.0, ash_method: str = "keyak",
                      bmd_material: str = "K2HPO4", strength_law: str | None = None,
                      screws=None, screw_material: SolidMaterial = TITANIUM,
                      cap_material: SolidMaterial = PMMA) -> Materials:
    """Materials of every element: bone from the laws, screws and caps from their solids.

    Only ``mesh.region`` is read (any mesh with region codes: tetrahedral or voxel).

    Parameters
    ----------
    mesh : object with ``region`` (M,) int
        Region codes ``REGION_BONE``, ``REGION_SCREW0 + s``, ``REGION_CAP_*``.
    bmd_elem : ndarray (M,)
        Element BMD (mg/cm^3 of ``bmd_material``), e.g. from :func:`map_bmd`.
    law : str
        Density-modulus law, key of :data:`fesim.material.LAWS`.
    nu_bone : float
        Poisson's ratio of bone.
    e_floor_mpa : float
        Lower bound on bone E (MPa) so the stiffness matrix stays well conditioned.
    cortical_law : str, optional
        Law used instead for bone elements with BMD >= ``cortical_threshold_mg_cm3``.
    ash_method : str
        QCT -> ash equation, key of :data:`fesim.material.ASH_EQUATIONS`.
    bmd_material : {"K2HPO4", "HA"}
        Calibration material of the BMD (the BMD volume's ``meta["bmd_material"]``,
        :func:`fesim.material.bmd_material_of`).
    strength_law : str, optional
        Density-strength law of bone yield stress, key of :data:`fesim.material.STRENGTH_LAWS`
        (default: the one published with ``law``).
    screws : sequence, optional
        Screw plans by screw index (their ``material``); default ``screw_material`` for all.
    screw_material, cap_material : SolidMaterial
        Materials of screws and end caps (default titanium and PMMA).

    Raises
    ------
    MeshError
        ``bmd_elem`` not one value per element, or unknown region codes.
    MaterialError
        Unknown law or equation, non-finite BMD, or BMD of a material a law or equation is not
        defined for.
    """
    region = np.asarray(mesh.region)
    bmd_elem = np.asarray(bmd_elem, dtype=float)
    if bmd_elem.shape != region.shape:
        raise MeshError(f"bmd_elem has shape {bmd_elem.shape}, expected {region.shape}")
    bone = region == REGION_BONE
    screw = (region >= REGION_SCREW0) & (region < REGION_CAP_LOWER)
    cap = region >= REGION_CAP_LOWER
    unknown = ~(bone | screw | cap)
    if unknown.any():
        raise MeshError(f"unknown region codes {np.unique(region[unknown]).tolist()}")
    if screws is None:
        solids = [(screw, screw_material)]
    else:
        solids = [(region == REGION_SCREW0 + s, sc.material) for s, sc in enumerate(screws)]
        extra = screw & (region >= REGION_SCREW0 + len(solids))
        if extra.any():
            raise MeshError(f"screw regions {np.unique(region[extra]).tolist()} have no screw plan "
                            f"({len(solids)} given)")
    return assign_materials(bmd_elem, bone, solids + [(cap, cap_material)], nu_bone=nu_bone, law=law,
                            strength_law=strength_law, bmd_material=bmd_material, ash_method=ash_method,
                            e_floor_mpa=e_floor_mpa, cortical_law=cortical_law,
                            cortical_threshold_mg_cm3=cortical_threshold_mg_cm3)
