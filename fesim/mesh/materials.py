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
