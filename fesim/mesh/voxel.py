"""Voxel (hex8) meshes: one trilinear hexahedron per bone voxel.

This is how the voxel-based vertebral FE tools build their models (Bonelab's Ogo and the
spineFE benchmark, Walle, Matheson & Boyd, GigaScience 2025, with 1 mm isotropic voxels;
FAIM; VirtuOst): every voxel of the segmented bone becomes an element, its modulus from that
voxel's BMD. No surface smoothing and no mesh generation step, so the model is an
independent cross-check of the conforming tetrahedral mesher (:mod:`fesim.mesh.mesher`).

Grid
    The elements lie on a grid aligned with the image axes (its direction cosines), of
    isotropic edge ``voxel_mm``. When ``voxel_mm`` equals the image spacing (isotropic
    image) the grid *is* the image grid and the mask is used as is; otherwise the mask and
    the cap masks are resampled (trilinear interpolation of the 0/1 mask, >= 0.5 inside) at
    the centres of the new voxels. Default (:func:`default_voxel_size`): the image spacing
    when the image is isotropic and no coarser than 1 mm, else 1 mm (the published spine
    benchmark's resolution).

Regions
    Screw ``s`` takes every voxel whose centre lies inside its solid (cylinder and round or
    flat tip, :meth:`fesim.imaging.screwplan.ScrewPlan.signed_distance`), also outside the
    bone, so the head can be gripped; then the cap masks (lower, upper); then bone. Only the
    largest face-connected component is kept (floating voxels dropped, counted in ``info``).
"""

from __future__ import annotations

import time

import numpy as np
from scipy.ndimage import label, map_coordinates

from fesim.errors import MeshError
from fesim.imaging.screwplan import ScrewPlan
from fesim.imaging.volume import Volume
from fesim.mesh.tetmesh import (HEX_CORNERS, REGION_BONE, REGION_CAP_LOWER, REGION_CAP_UPPER,
                                REGION_SCREW0, TetMesh, box_grid)

#: Voxel edge (mm) used when the image is anisotropic or coarser: the spineFE benchmark's.
DEFAULT_VOXEL_MM = 1.0

# Corner offsets (di, dj, dk) of a voxel in VTK_HEXAHEDRON order.
_CORNERS = ((HEX_CORNERS + 1) // 2).astype(np.int64)
# The same hexahedron mirrored in i: positive orientation on a left-handed image grid.
_MIRROR_I = np.array([1, 0, 3, 2, 5, 4, 7, 6])


def default_voxel_size(mask: Volume) -> float:
    """The voxel edge (mm) :func:`voxel_mesh` uses when none is given.

    The image spacing if the image is isotropic (within 0.1 %) and no coarser than
    :data:`DEFAULT_VOXEL_MM`, else :data:`DEFAULT_VOXEL_MM`.
    """
    sp = np.asarray(mask.spacing, dtype=float)
    if np.ptp(sp) <= 1e-3 * sp.max() and sp.max() <= DEFAULT_VOXEL_MM * (1 + 1e-3):
        return float(sp.mean())
    return DEFAULT_VOXEL_MM


def _grid_box(mask: Volume, masks, screws) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper corners (fractional image indices, voxel faces) of everything to mesh."""
    lo, hi = [], []
    for m in masks:
        nz = np.argwhere(np.asarray(m.data) != 0)
        if len(nz):
            ijk = mask.world_to_index(m.index_to_world(np.vstack([nz.min(0), nz.max(0)]).astype(float)))
            lo.append(ijk.min(0) - 0.5)
            hi.append(ijk.max(0) + 0.5)
    for s in screws:
        ends = mask.world_to_index(np.vstack([s.entry, s.tip]))
        r = s.radius_mm / mask.spacing
        lo.append(ends.min(0) - r)
        hi.append(ends.max(0) + r)
    return np.min(lo, axis=0), np.max(hi, axis=0)


def _sample_mask(m: Volume, xyz: np.ndarray) -> np.ndarray:
    """Trilinear value of the 0/1 mask ``m`` at LPS points >= 0.5 (exact at voxel centres)."""
    ijk = m.world_to_index(xyz)
    r = np.round(ijk)
    ijk = np.where(np.abs(ijk - r) < 1e-6, r, ijk)  # grid-coincident points: the voxel itself
    data = (np.asarray(m.data) != 0).astype(np.float32)
    return map_coordinates(data, ijk.T, order=1, mode="constant", cval=0.0) >= 0.5


def voxel_mesh(mask: Volume, screws=(), caps=None, voxel_mm: float | None = None) -> TetMesh:
    """Hex8 mesh with one element per voxel of bone, screw and cap.

    Parameters
    ----------
    mask : Volume
        Bone mask (non-zero = bone), any LPS grid; its axes orient the voxel grid.
    screws : sequence of ScrewPlan
        Screw ``s`` becomes region ``REGION_SCREW0 + s`` (voxel centres inside its solid).
    caps : (Volume, Volume), optional
        Lower and upper cap masks (regions 20, 21), on any grid.
    voxel_mm : float, optional
        Isotropic voxel edge (mm); default :func:`default_voxel_size`.

    Returns
    -------
    TetMesh
        ``cells`` (M, 8) int32 in VTK_HEXAHEDRON order, positively oriented; ``info`` has
        ``voxel_size_mm``, ``resampled``, ``grid_shape``, ``n_voxels_per_region``,
        ``n_floating_voxels_dropped``, ``screw_volume_mm3`` (voxelised and exact per screw)
        and ``time_total_s``.

    Raises
    ------
    MeshError
        Empty mask, non-positive voxel size, a truncated mask, or a screw that ends up
        disconnected from the bone.
    """
    t0 = time.perf_counter()
    screws = list(screws or [])
    if not isinstance(mask, Volume):
        raise MeshError("mask must be a Volume")
    if mask.meta.get("truncated"):
        faces = ", ".join(mask.meta.get("truncated_faces") or []) or "image border"
        raise MeshError(f"the vertebra is cut by the image border ({faces}); a truncated "
                        "vertebra gives a wrong model")
    if not np.any(np.asarray(mask.data) != 0):
        raise MeshError("the bone mask is empty")
    h = default_voxel_size(mask) if voxel_mm is None else float(voxel_mm)
    if not (np.isfinite(h) and h > 0):
        raise MeshError(f"voxel size must be positive, got {voxel_mm} mm")
    caps = tuple(caps) if caps is not None else ()
    if len(caps) not in (0, 2):
        raise MeshError("caps must be a (lower, upper) pair of masks")

    # New grid in image index space: voxel m along axis a is centred at lo_a + (m + 1/2) r_a,
    # r = h / spacing; with r = 1 and lo on a voxel face its centres are the image's.
    resampled = not np.allclose(mask.spacing, h, rtol=1e-6, atol=0.0)
    r = h / mask.spacing
    lo, hi = _grid_box(mask, (mask,) + caps, screws)
    if not resampled:
        lo, hi = np.floor(lo + 0.5) - 0.5, np.ceil(hi - 0.5) + 0.5  # on the image's voxel faces
    shape = np.maximum(np.ceil((hi - lo) / r - 1e-9).astype(int), 1)
    axes = [lo[a] + (np.arange(shape[a]) + 0.5) * r[a] for a in range(3)]
    ijk = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    centres = mask.index_to_world(ijk)

    lab = np.where(_sample_mask(mask, centres), REGION_BONE, 0).astype(np.int32)
    for m, code in zip(caps, (REGION_CAP_LOWER, REGION_CAP_UPPER)):
        lab = np.where(_sample_mask(m, centres), code, lab)
    exact, voxelised = [], []
    for s in reversed(range(len(screws))):  # the first screw wins where screws overlap
        lab = np.where(screws[s].signed_distance(centres) < 0, REGION_SCREW0 + s, lab)
    lab = lab.reshape(tuple(shape))

    comps, n_comp = label(lab > 0)  # face (6-) connectivity
    if n_comp == 0:
        raise MeshError("no voxel lies inside the mask at this voxel size")
    sizes = np.bincount(comps.ravel())
    sizes[0] = 0
    keep = comps == np.argmax(sizes)
    n_dropped = int((lab > 0).sum() - keep.sum())
    lab = np.where(keep, lab, 0)
    for s, sc in enumerate(screws):
        n = int((lab == REGION_SCREW0 + s).sum())
        if n == 0:
            raise MeshError(f"screw {s} ({sc.side}) is not connected to the bone voxels")
        voxelised.append(n * h**3)
        exact.append(sc.volume_mm3)

    vox = np.argwhere(lab > 0)  # (M, 3) voxel indices, C order
    region = lab[tuple(vox.T)].astype(np.int32)
    corner = (vox[:, None, :] + _CORNERS[None]).reshape(-1, 3)  # node lattice indices
    n1 = shape + 1
    key = (corner[:, 0] * n1[1] + corner[:, 1]) * n1[2] + corner[:, 2]
    used, inv = np.unique(key, return_inverse=True)
    cells = inv.reshape(-1, 8).astype(np.int32)
    node_ijk = np.stack(np.unravel_index(used, tuple(n1)), axis=1).astype(float)
    points = mask.index_to_world(lo + node_ijk * r)
    if np.linalg.det(mask.direction) < 0:  # left-handed grid: mirror to keep volumes positive
        cells = cells[:, _MIRROR_I]
    mesh = TetMesh(points, cells, region)
    codes, counts = np.unique(region, return_counts=True)
    mesh.info = {
        "kind": "voxel", "voxel_size_mm": h, "resampled": bool(resampled),
        "image_spacing_mm": [float(v) for v in mask.spacing], "grid_shape": [int(v) for v in shape],
        "n_voxels_per_region": {int(c): int(n) for c, n in zip(codes, counts)},
        "volume_per_region_mm3": {int(c): float(n * h**3) for c, n in zip(codes, counts)},
        "n_floating_voxels_dropped": n_dropped,
        "screw_volume_mm3": [{"voxelised": v, "exact": e, "ratio": v / e} for v, e in zip(voxelised, exact)],
        "time_total_s": time.perf_counter() - t0,
    }
    return mesh


def voxel_bmd(mesh: TetMesh, bmd: Volume, bone_mask: Volume, bone_only: bool = True) -> np.ndarray:
    """Element BMD (mg/cm^3) of a voxel mesh: the BMD at each element's centre.

    On the image grid this is the voxel's own value. On a resampled grid it is the
    normalised trilinear interpolant ``I(BMD x mask) / I(mask)`` at the centre, so bone
    voxels at the surface are not diluted by the soft tissue around the bone; an element
    whose centre sees no bone voxel at all takes the nearest bone voxel's BMD.

    Parameters
    ----------
    mesh : TetMesh (hex8, from :func:`voxel_mesh`)
    bmd : Volume
        Calibrated BMD, mg/cm^3.
    bone_mask : Volume
        Non-zero = bone, on the grid of ``bmd``.
    bone_only : bool
        Return 0 for screw and cap elements (their materials do not use BMD).

    Returns
    -------
    ndarray (M,)
    """
    if not bmd.same_grid(bone_mask):
        raise MeshError("BMD volume and bone mask are not on the same grid")
    sel = mesh.is_bone() if bone_only else np.ones(mesh.n_elements, bool)
    out = np.zeros(mesh.n_elements)
    if not sel.any():
        return out
    ijk = bmd.world_to_index(mesh.centroids()[sel])
    rnd = np.round(ijk)
    ijk = np.where(np.abs(ijk - rnd) < 1e-6, rnd, ijk)
    w = (np.asarray(bone_mask.data) != 0).astype(np.float64)
    g = np.asarray(bmd.data, dtype=np.float64) * w
    num = map_coordinates(g, ijk.T, order=1, mode="constant", cval=0.0)
    den = map_coordinates(w, ijk.T, order=1, mode="constant", cval=0.0)
    vals = np.where(den > 1e-6, num / np.maximum(den, 1e-300), np.nan)
    empty = ~np.isfinite(vals)
    if empty.any():
        from scipy.ndimage import distance_transform_edt

        idx = distance_transform_edt(w == 0, return_distances=False, return_indices=True)
        near = np.clip(np.round(ijk[empty]).astype(int), 0, np.array(w.shape) - 1)
        vals[empty] = g[tuple(idx[(slice(None),) + tuple(near.T)])]
    out[sel] = vals
    return out


def hex_box(n, size, origin=(0.0, 0.0, 0.0), region: int = REGION_BONE) -> TetMesh:
    """Structured hex8 mesh of a box: ``n = (nx, ny, nz)`` voxels, ``size`` in mm."""
    points, cells = box_grid(n, size, origin, corners=_CORNERS)
    return TetMesh(points, cells, np.full(len(cells), region))
