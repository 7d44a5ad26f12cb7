"""Element quality measures and checks for tetrahedral meshes.

Thresholds (documented defaults of :func:`check_quality`): every element must have positive
volume, a minimum dihedral angle of at least 2 degrees and a normalised radius ratio of at
least 0.02 (1 = regular tetrahedron). The mesher's snapping floor is stricter (radius ratio
0.15); cutting the elements still crossed by an interface (:mod:`fesim.mesh.cut`) then makes
some thinner ones: measured minima 0.03-0.11 (radius ratio) and 4.3-8 degrees on the test
bodies and the phantom vertebra at 1.3-3 mm (1st percentile of the radius ratio ~0.27).
"""

from __future__ import annotations

import numpy as np

from fesim.errors import MeshError
from fesim.mesh.tetmesh import TetMesh

MIN_DIHEDRAL_DEG = 2.0
MIN_RADIUS_RATIO = 0.02


def _corners(points: np.ndarray, cells: np.ndarray):
    p = np.asarray(points, float)[np.asarray(cells)[:, :4]]
    return p[:, 0], p[:, 1], p[:, 2], p[:, 3]


def signed_volume(points: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Signed volume (mm^3) of each element's corner tetrahedron."""
    p0, p1, p2, p3 = _corners(points, cells)
    return np.einsum("ij,ij->i", p1 - p0, np.cross(p2 - p0, p3 - p0)) / 6.0


def radius_ratio(points: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Normalised radius ratio ``3 r_in / R_circ`` (1 regular, 0 degenerate), signed by volume."""
    p0, p1, p2, p3 = _corners(points, cells)
    a, b, c = p1 - p0, p2 - p0, p3 - p0
    six_v = np.einsum("ij,ij->i", a, np.cross(b, c))
    num = (np.einsum("ij,ij->i", a, a)[:, None] * np.cross(b, c)
           + np.einsum("ij,ij->i", b, b)[:, None] * np.cross(c, a)
           + np.einsum("ij,ij->i", c, c)[:, None] * np.cross(a, b))
    with np.errstate(divide="ignore", invalid="ignore"):
        r_circ = np.linalg.norm(num, axis=1) / (2.0 * np.abs(six_v))
        areas = 0.5 * (np.linalg.norm(np.cross(b, c), axis=1) + np.linalg.norm(np.cross(a, b), axis=1)
                       + np.linalg.norm(np.cross(c, a), axis=1)
                       + np.linalg.norm(np.cross(p2 - p1, p3 - p1), axis=1))
        r_in = 0.5 * six_v / areas  # 3 V / A, with V = six_v / 6
        q = 3.0 * r_in / r_circ
    return np.nan_to_num(q, nan=0.0, posinf=0.0, neginf=0.0)


def dihedral_angles(points: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Interior dihedral angles (degrees), shape (M, 6), at edges (0,1),(1,2),(0,2),(0,3),(1,3),(2,3)."""
    p = np.stack(_corners(points, cells), axis=1)
    faces = np.array([(1, 2, 3), (0, 2, 3), (0, 1, 3), (0, 1, 2)])  # face i is opposite vertex i
    n = np.cross(p[:, faces[:, 1]] - p[:, faces[:, 0]], p[:, faces[:, 2]] - p[:, faces[:, 0]])
    # Orient every normal away from its opposite vertex.
    s = np.einsum("mfi,mfi->mf", n, p - p[:, faces[:, 0]])
    n = n * np.where(s > 0, -1.0, 1.0)[..., None]
    n /= np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-300)
    # The edge (i, j) is shared by the faces opposite the two other vertices.
    others = np.array([(2, 3), (0, 3), (1, 3), (1, 2), (0, 2), (0, 1)])
    cosang = np.einsum("mei,mei->me", n[:, others[:, 0]], n[:, others[:, 1]])
    return np.degrees(np.pi - np.arccos(np.clip(cosang, -1.0, 1.0)))


def min_dihedral(points: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Smallest dihedral angle (degrees) of each element."""
    return dihedral_angles(points, cells).min(axis=1)


def quality_report(mesh: TetMesh) -> dict:
    """Summary of element quality and regions.

    Returns
    -------
    dict
        ``n_nodes``, ``n_elements``, ``min_volume_mm3``, ``n_inverted`` (volume <= 0),
        ``min_dihedral_deg``, ``dihedral_p1_deg`` (1st percentile), ``radius_ratio_min`` and
        ``radius_ratio_p1/p5/p50``, ``count_per_region`` and ``volume_per_region_mm3``
        (keys are region codes as ints). Hex8 (voxel) meshes: ``cell_type``, ``n_nodes``,
        ``n_elements``, ``voxel_size_mm``, ``min_volume_mm3``, ``n_inverted``,
        ``count_per_region`` and ``volume_per_region_mm3`` (angles are those of the grid).
    """
    if mesh.is_hex:
        return _hex_report(mesh)
    vol = signed_volume(mesh.points, mesh.cells)
    dih = min_dihedral(mesh.points, mesh.cells)
    rr = radius_ratio(mesh.points, mesh.cells)
    regions, counts = np.unique(mesh.region, return_counts=True)
    return {
        "n_nodes": int(mesh.n_nodes),
        "n_elements": int(mesh.n_elements),
        "min_volume_mm3": float(vol.min()),
        "n_inverted": int((vol <= 0).sum()),
        "min_dihedral_deg": float(dih.min()),
        "dihedral_p1_deg": float(np.percentile(dih, 1)),
        "radius_ratio_min": float(rr.min()),
        "radius_ratio_p1": float(np.percentile(rr, 1)),
        "radius_ratio_p5": float(np.percentile(rr, 5)),
        "radius_ratio_p50": float(np.percentile(rr, 50)),
        "count_per_region": {int(r): int(c) for r, c in zip(regions, counts)},
        "volume_per_region_mm3": {int(r): float(vol[mesh.region == r].sum()) for r in regions},
    }


def _hex_report(mesh: TetMesh) -> dict:
    vol = mesh.corner_volumes()
    regions, counts = np.unique(mesh.region, return_counts=True)
    return {
        "cell_type": mesh.cell_type,
        "n_nodes": int(mesh.n_nodes),
        "n_elements": int(mesh.n_elements),
        "voxel_size_mm": mesh.info.get("voxel_size_mm"),
        "min_volume_mm3": float(vol.min()),
        "n_inverted": int((vol <= 0).sum()),
        "count_per_region": {int(r): int(c) for r, c in zip(regions, counts)},
        "volume_per_region_mm3": {int(r): float(vol[mesh.region == r].sum()) for r in regions},
    }


def check_quality(mesh: TetMesh, min_dihedral_deg: float = MIN_DIHEDRAL_DEG,
                  min_radius_ratio: float = MIN_RADIUS_RATIO) -> dict:
    """Raise :class:`MeshError` for inverted, zero-volume or poor elements; else return the report."""
    if mesh.n_elements == 0:
        raise MeshError("the mesh has no elements")
    rep = quality_report(mesh)
    if rep["n_inverted"]:
        raise MeshError(f"{rep['n_inverted']} inverted or zero-volume elements "
                        f"(min volume {rep['min_volume_mm3']:.3g} mm^3)")
    if mesh.is_hex:
        return rep
    if rep["min_dihedral_deg"] < min_dihedral_deg:
        raise MeshError(f"min dihedral angle {rep['min_dihedral_deg']:.2f} deg is below "
                        f"{min_dihedral_deg} deg")
    if rep["radius_ratio_min"] < min_radius_ratio:
        raise MeshError(f"min radius ratio {rep['radius_ratio_min']:.3f} is below {min_radius_ratio}")
    return rep
