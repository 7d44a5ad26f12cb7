"""Conforming tetrahedral meshing of a vertebra with bonded screws.

Method (see docs/design/meshing.md):

1. Level sets: the bone's Gaussian-smoothed, volume-preserving signed distance from the
   mask and each screw's exact cylinder distance.
2. A Kuhn lattice (6 tetrahedra per cube of edge ``size_mm``) over the bounding box, kept
   only near the domain, refined by conforming Maubach bisection towards ``screw_size_mm``
   near the screw surfaces, with a linear grading away from them.
3. Snapping: on every lattice edge cut by an interface, the end nearer the interface (if
   within ``alpha`` of the edge length) is moved onto it: exact closest point for the
   cylinders, Newton projection for the bone. Snaps that leave a kept element inverted or
   below the radius-ratio floor are undone, iteratively.
4. Cutting (:mod:`fesim.mesh.cut`): elements still crossed by a screw cylinder or by the
   bone surface after snapping are split along it (new nodes on the interface, conforming
   marching-tetrahedra stencils), so the bone-screw interface and the bone surface are made
   of element faces whose nodes lie on them, not a staircase of lattice faces.
5. Labels from the level sets at element centroids (screws first, so a screw head outside
   the bone stays screw); disconnected fragments dropped.

Screw and bone share the nodes on the cylinder surface (bonded, conforming interface).
"""

from __future__ import annotations

import time

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from fesim.cells import TET10_EDGES
from fesim.errors import MeshError
from fesim.imaging.screwplan import ScrewPlan
from fesim.imaging.volume import Volume
from fesim.mesh.cut import cut_mesh
from fesim.mesh.levelset import BoneLevelSet, bone_level_set, screw_closest_point
from fesim.mesh.quality import radius_ratio
from fesim.mesh.refine import cell_volumes, edge_key, kuhn_lattice, positive_cells, refine
from fesim.mesh.tetmesh import to_quadratic  # noqa: F401  (re-exported)
from fesim.mesh.tetmesh import REGION_BONE, REGION_SCREW0, TetMesh

#: Radius-ratio floor enforced when snapping nodes onto interfaces.
SNAP_QUALITY_FLOOR = 0.15


def _label(points, cells, bone: BoneLevelSet, screws) -> np.ndarray:
    cen = points[cells].mean(axis=1)
    lab = np.where(bone(cen) < 0, REGION_BONE, 0)
    for s in reversed(range(len(screws))):  # the first screw wins where screws overlap
        lab = np.where(screws[s].signed_distance(cen) < 0, REGION_SCREW0 + s, lab)
    return lab.astype(np.int32)


def _snap_candidates(f: np.ndarray, edges: np.ndarray, length: np.ndarray, alpha: float,
                     allowed: np.ndarray) -> np.ndarray:
    """Nodes to snap: on each cut edge, the allowed end closer (relative to the edge) to f = 0.

    An edge with one end not allowed offers its other end (up to ``alpha + 0.25``).
    """
    fa, fb = f[edges[:, 0]], f[edges[:, 1]]
    ea, eb = allowed[edges[:, 0]], allowed[edges[:, 1]]
    cut = (fa * fb < 0) & (ea | eb)
    ra, rb = np.abs(fa[cut]) / length[cut], np.abs(fb[cut]) / length[cut]
    ra, rb = np.where(ea[cut], ra, np.inf), np.where(eb[cut], rb, np.inf)
    node = np.where(ra <= rb, edges[cut, 0], edges[cut, 1])
    r = np.minimum(ra, rb)
    limit = np.where(ea[cut] & eb[cut], alpha, alpha + 0.25)
    return np.unique(node[r < limit])


def _propose(new, edges, length, bone, screws, alpha, movable):
    """Target positions of the nodes to snap this round: (node ids, positions)."""
    nodes_all, targets = [], []
    free = movable.copy()
    sd = np.full(len(new), np.inf)
    for s in screws:
        f = s.signed_distance(new)
        sd = np.minimum(sd, f)
        nodes = _snap_candidates(f, edges, length, alpha, free)
        nodes_all.append(nodes)
        targets.append(screw_closest_point(s, new[nodes]))
        free[nodes] = False
    # The bone surface matters only outside the screws.
    nodes = _snap_candidates(bone(new), edges, length, alpha, free & (sd >= 0))
    proj = bone.project(new[nodes])
    ok = np.abs(bone(proj)) < 0.05 * length.min()
    nodes_all.append(nodes[ok])
    targets.append(proj[ok])
    return np.concatenate(nodes_all), np.concatenate(targets)


def _snap(points, cells, bone, screws, alpha, quality_floor, rounds: int = 3):
    """Snap nodes onto the interfaces, undoing snaps that spoil kept elements.

    Round 1 snaps the nearer end of each cut edge (within ``alpha``); a snap that leaves a
    kept element inverted or below ``quality_floor`` is undone and that node is not moved
    again. Later rounds offer the other end of the edges still cut, so an interface face
    blocked by one bad snap can still land on the surface.
    """
    keys = np.unique(edge_key(cells[:, TET10_EDGES[:, 0]], cells[:, TET10_EDGES[:, 1]]).ravel())
    edges = np.stack([keys >> np.int64(32), keys & np.int64(0xFFFFFFFF)], axis=1)
    length = np.linalg.norm(points[edges[:, 0]] - points[edges[:, 1]], axis=1)
    new = points.copy()
    snapped = np.zeros(len(points), bool)
    banned = np.zeros(len(points), bool)
    lab = _label(points, cells, bone, screws)
    sign0 = np.sign(cell_volumes(points, cells))
    for rnd in range(rounds):
        nodes, target = _propose(new, edges, length, bone, screws, alpha, ~snapped & ~banned)
        if len(nodes) == 0:
            break
        new[nodes] = target
        snapped[nodes] = True
        # Only cells touching a node just moved can change shape or label.
        flag = np.zeros(len(points), bool)
        flag[nodes] = True
        todo = np.flatnonzero(flag[cells].any(axis=1))
        disp = np.linalg.norm(new - points, axis=1)
        for _ in range(500):
            c = cells[todo]
            lab[todo] = _label(new, c, bone, screws)
            # Elements outside the domain count too: cutting (cut_mesh) may keep parts of them.
            bad = ((cell_volumes(new, c) * sign0[todo] <= 0)
                   | (radius_ratio(new, c) * sign0[todo] < quality_floor))
            # Undo one snap per bad cell: the longest move, which usually flattened it.
            cb = c[bad]
            moved = np.where(snapped[cb], disp[cb], -1.0)
            pick = cb[np.arange(len(cb)), np.argmax(moved, axis=1)]
            bad_nodes = np.unique(pick[snapped[pick]])
            if len(bad_nodes) == 0:
                break
            new[bad_nodes] = points[bad_nodes]
            snapped[bad_nodes] = False
            banned[bad_nodes] = True
            disp[bad_nodes] = 0.0
            reverted = np.zeros(len(points), bool)
            reverted[bad_nodes] = True
            todo = np.flatnonzero(reverted[cells].any(axis=1))
        else:
            raise MeshError("could not snap the mesh onto the interfaces without poor elements")
    return new, lab, int(snapped.sum())


def _largest_component(cells: np.ndarray, vol: np.ndarray) -> np.ndarray:
    """Boolean mask of the face-connected component with the largest volume."""
    faces = np.sort(cells[:, [[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]]], axis=2).reshape(-1, 3)
    owner = np.repeat(np.arange(len(cells)), 4)
    n = np.int64(faces.max() + 1)
    if n < 2**21:  # one int64 key per face
        f = faces.astype(np.int64)
        _, inv = np.unique((f[:, 0] * n + f[:, 1]) * n + f[:, 2], return_inverse=True)
    else:
        _, inv = np.unique(faces, axis=0, return_inverse=True)
    inv = inv.ravel()
    order = np.argsort(inv, kind="stable")
    same = inv[order][1:] == inv[order][:-1]
    a, b = owner[order][:-1][same], owner[order][1:][same]
    g = coo_matrix((np.ones(len(a)), (a, b)), shape=(len(cells), len(cells)))
    n, comp = connected_components(g, directed=False)
    return comp == np.argmax(np.bincount(comp, weights=vol, minlength=n))


def _check_request(mask, size_mm, screw_size_mm, order, allow_truncated) -> bool:
    """Refuse what :func:`mesh_vertebra` cannot mesh; returns whether the mask is truncated."""
    if not isinstance(mask, Volume):
        raise MeshError("mask must be a Volume")
    if not (size_mm > 0 and screw_size_mm > 0):
        raise MeshError(f"element sizes must be positive, got {size_mm} and {screw_size_mm} mm")
    if order not in (1, 2):
        raise MeshError(f"element order must be 1 or 2, got {order}")
    truncated = bool(mask.meta.get("truncated", False))
    if truncated and not allow_truncated:
        faces = ", ".join(mask.meta.get("truncated_faces") or []) or "image border"
        raise MeshError(f"the vertebra is cut by the image border ({faces}); a truncated "
                        "vertebra gives a wrong model (pass allow_truncated=True to mesh it anyway)")
    return truncated


def _lattice(bone: BoneLevelSet, screws, h: float):
    """Kuhn lattice of cube edge ``h`` (mm) over the bone and the screws, cubes near them only."""
    g = bone.grid
    inside = np.argwhere(g.data < 0)
    if len(inside) == 0:
        raise MeshError("the smoothed bone level set is empty; the mask is too thin")
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], float)
    box = g.index_to_world(inside.min(0) + corners * (inside.max(0) - inside.min(0)))
    pts = [box] + [np.vstack([s.entry, s.tip]) for s in screws]
    pts = np.vstack(pts)
    rpad = max([s.radius_mm for s in screws], default=0.0) + h
    lo, hi = pts.min(0) - rpad, pts.max(0) + rpad
    shape = np.ceil((hi - lo) / h).astype(int)
    ci = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    centres = lo + h * (ci + 0.5)
    near = bone(centres) < h
    for s in screws:
        near |= s.signed_distance(centres) < h
    return kuhn_lattice(lo, h, tuple(shape), near.reshape(tuple(shape)))


def _grade_to_screws(lat, screws, h: float, screw_size_mm: float, grading: float) -> int:
    """Bisect ``lat`` in place towards the screw surfaces; returns the refinement levels."""
    n_levels = 0
    while screws and n_levels < 30:
        vol = np.abs(cell_volumes(lat.points, lat.cells))
        size = np.cbrt(6.0 * vol)
        cen = lat.points[lat.cells].mean(axis=1)
        d = np.min([np.abs(s.signed_distance(cen)) for s in screws], axis=0)
        target = np.minimum(h, screw_size_mm + grading * np.maximum(d - size, 0.0))
        marked = size > 1.01 * target
        if not marked.any():
            break
        refine(lat, marked)
        n_levels += 1
    return n_levels


def _kept_mesh(points, cells, lab, screws) -> tuple[TetMesh, int]:
    """The labelled elements' largest connected part as a positively oriented mesh, and the
    number of fragment elements dropped; every screw must be part of it."""
    kept = lab > 0
    cells, lab = cells[kept], lab[kept]
    vol = np.abs(cell_volumes(points, cells))
    comp = _largest_component(cells, vol)
    n_fragment = int((~comp).sum())
    cells, lab = cells[comp], lab[comp]
    for s in range(len(screws)):
        if not (lab == REGION_SCREW0 + s).any():
            raise MeshError(f"screw {s} ({screws[s].side}) is not connected to the bone mesh")
    used, cells = np.unique(cells, return_inverse=True)
    cells = positive_cells(points[used], cells.reshape(-1, 4))
    return TetMesh(points[used], cells, lab), n_fragment


def mesh_vertebra(mask: Volume, screws: list[ScrewPlan] | None = None, size_mm: float = 2.0,
                  screw_size_mm: float = 0.7, order: int = 1, smooth: bool = True,
                  grading: float = 0.4, alpha: float = 0.4,
                  smooth_sigma_mm: float | None = None, allow_truncated: bool = False,
                  cut: bool = True) -> TetMesh:
    """Conforming tetrahedral mesh of a bone mask with bonded cylindrical screws.

    Parameters
    ----------
    mask : Volume
        Bone mask (non-zero = bone) on any LPS grid.
    screws : list of ScrewPlan
        Screw ``s`` becomes region ``REGION_SCREW0 + s``; the whole cylinder is meshed,
        also where it sticks out of the bone.
    size_mm : float
        Lattice cube edge (mm) in the bone away from the screws.
    screw_size_mm : float
        Target element size (mm, cube-equivalent ``(6 V)^(1/3)``) at the screw surfaces.
    order : int
        1 for 4-node, 2 for 10-node tetrahedra.
    smooth : bool
        Smooth the bone level set (Gaussian of sigma ``smooth_sigma_mm``, default half the
        largest voxel size, volume-preserving).
    grading : float
        Growth of the target size with distance from a screw surface (mm per mm).
    alpha : float
        Snap a node if its level set is below ``alpha`` x the cut edge's length.
    cut : bool
        After snapping, split the elements still crossed by a screw cylinder or the bone
        surface (:func:`fesim.mesh.cut.cut_mesh`), so that every bone-screw face and every
        bone surface face has its nodes on the interface (no staircase).
    allow_truncated : bool
        Mesh a mask flagged ``meta["truncated"]`` (cut by the image border, see
        :func:`fesim.imaging.segmentation.mask_from_labels`) instead of refusing it; the mesh
        is then flagged ``info["truncated"] = True``.

    Returns
    -------
    TetMesh
        Positively oriented elements, ``region`` 1 for bone and ``10 + s`` for screws;
        ``info`` holds sizes, counts, volumes, timing and level-set smoothing diagnostics.

    Raises
    ------
    MeshError
        Empty or too thin mask, bad sizes or order, a screw not connected to the bone, or a
        truncated mask without ``allow_truncated``.
    """
    t0 = time.perf_counter()
    screws = list(screws or [])
    truncated = _check_request(mask, size_mm, screw_size_mm, order, allow_truncated)
    sigma = 0.0 if not smooth else smooth_sigma_mm
    bone = bone_level_set(mask, sigma, pad_mm=2 * size_mm + 2)
    t_levelset = time.perf_counter() - t0
    h = float(size_mm)
    lat = _lattice(bone, screws, h)
    n_levels = _grade_to_screws(lat, screws, h, screw_size_mm, grading)
    t_lattice = time.perf_counter() - t0 - t_levelset

    points, cells = lat.points, lat.cells
    t1 = time.perf_counter()
    new, lab, n_snapped = _snap(points, cells, bone, screws, alpha, SNAP_QUALITY_FLOOR)
    t_snap = time.perf_counter() - t1
    n_before_cut = len(cells)
    if cut:
        t1 = time.perf_counter()
        for sc in screws:
            new, cells, _ = cut_mesh(new, cells, sc.signed_distance)
        new, cells, _ = cut_mesh(new, cells, bone)
        lab = _label(new, cells, bone, screws)
    t_cut = time.perf_counter() - t1 if cut else 0.0
    t1 = time.perf_counter()
    mesh, n_fragment = _kept_mesh(new, cells, lab, screws)
    vols, lab = mesh.corner_volumes(), mesh.region
    mesh.info = {
        "size_mm": h, "screw_size_mm": float(screw_size_mm), "truncated": truncated,
        "n_refinement_levels": n_levels,
        "n_snapped_nodes": n_snapped, "n_fragment_elements_dropped": n_fragment,
        "n_elements_before_cutting": int(n_before_cut),
        "bone_level_set": bone.info,
        "volume_per_region_mm3": {int(r): float(vols[lab == r].sum()) for r in np.unique(lab)},
        "time_level_set_s": t_levelset, "time_lattice_s": t_lattice, "time_snap_s": t_snap, "time_cut_s": t_cut,
        "time_label_s": time.perf_counter() - t1, "time_total_s": time.perf_counter() - t0,
    }
    if order == 2:
        mesh = to_quadratic(mesh)
    mesh.info["time_total_s"] = time.perf_counter() - t0
    return mesh


