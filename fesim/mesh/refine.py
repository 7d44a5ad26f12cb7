"""Kuhn (Freudenthal) lattice and conforming local refinement by Maubach bisection.

Every cube of a regular lattice is split into the six "path" tetrahedra that share its main
diagonal. Maubach's tagged bisection of such a mesh keeps it conforming and produces only
three similarity classes of tetrahedra, so graded meshes keep the lattice's quality
(Maubach, SIAM J Sci Comput 16:210, 1995). Vertex order in :class:`Lattice` is the
bisection order, not the positive orientation; :func:`positive_cells` fixes that at the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import permutations

import numpy as np

from fesim.cells import TET10_EDGES

_SHIFT = np.int64(32)


@dataclass
class Lattice:
    """A tetrahedral mesh under bisection refinement.

    Attributes
    ----------
    points : ndarray (N, 3) float64, LPS mm
    cells : ndarray (M, 4) int64, vertices in Maubach order
    tags : ndarray (M,) int8, Maubach tag (refinement edge is vertex 0 to vertex ``tag``)
    split_keys, split_mid : ndarray int64
        Sorted keys of every edge bisected so far and the id of its midpoint node.
    """

    points: np.ndarray
    cells: np.ndarray
    tags: np.ndarray
    split_keys: np.ndarray
    split_mid: np.ndarray


def edge_key(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Order-independent int64 key of the edges (a, b)."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    return (np.minimum(a, b) << _SHIFT) | np.maximum(a, b)


def kuhn_lattice(lo: np.ndarray, h: float, shape: tuple, keep: np.ndarray | None = None) -> Lattice:
    """Six Kuhn tetrahedra per kept cube of a regular lattice.

    Parameters
    ----------
    lo : ndarray (3,)
        LPS position (mm) of the lattice corner.
    h : float
        Cube edge (mm).
    shape : tuple of 3 int
        Number of cubes along x, y, z.
    keep : ndarray of bool, shape ``shape``, optional
        Cubes to triangulate (default all).
    """
    shape = tuple(int(s) for s in shape)
    cubes = np.argwhere(np.ones(shape, bool) if keep is None else keep).astype(np.int64)
    ns = np.array(shape, dtype=np.int64) + 1
    eye = np.eye(3, dtype=np.int64)
    cells = []
    for p in permutations(range(3)):
        offs = np.cumsum(np.vstack([np.zeros(3, np.int64), eye[list(p)]]), axis=0)
        v = cubes[:, None, :] + offs[None]
        cells.append((v[..., 0] * ns[1] + v[..., 1]) * ns[2] + v[..., 2])
    cells = np.concatenate(cells)
    used, cells = np.unique(cells, return_inverse=True)
    cells = cells.reshape(-1, 4)
    ijk = np.stack(np.unravel_index(used, tuple(ns)), axis=1)
    points = np.asarray(lo, float) + h * ijk
    empty = np.zeros(0, np.int64)
    return Lattice(points, cells, np.full(len(cells), 3, np.int8), empty, empty.copy())


def _bisect(lat: Lattice, sel: np.ndarray) -> np.ndarray:
    """Bisect the selected cells in place; returns the node ids of the bisected edges' ends."""
    cells, tags = lat.cells[sel], lat.tags[sel]
    rows = np.arange(len(cells))
    a, b = cells[:, 0], cells[rows, tags]
    keys = edge_key(a, b)
    if len(lat.split_keys):
        pos = np.minimum(np.searchsorted(lat.split_keys, keys), len(lat.split_keys) - 1)
        found = lat.split_keys[pos] == keys
    else:
        found = np.zeros(len(keys), bool)
    new_keys, first = np.unique(keys[~found], return_index=True)
    na, nb = a[~found][first], b[~found][first]
    new_ids = len(lat.points) + np.arange(len(new_keys), dtype=np.int64)
    lat.points = np.vstack([lat.points, 0.5 * (lat.points[na] + lat.points[nb])])
    all_keys = np.concatenate([lat.split_keys, new_keys])
    all_mid = np.concatenate([lat.split_mid, new_ids])
    order = np.argsort(all_keys, kind="stable")
    lat.split_keys, lat.split_mid = all_keys[order], all_mid[order]
    mid = lat.split_mid[np.searchsorted(lat.split_keys, keys)]
    kids1, kids2 = np.empty_like(cells), np.empty_like(cells)
    for k in (1, 2, 3):
        g = tags == k
        c, z = cells[g], mid[g]
        # Child 1 replaces x_k by z; child 2 drops x_0, shifts x_1..x_k down, puts z at k.
        c1 = c.copy()
        c1[:, k] = z
        c2 = c.copy()
        c2[:, :k] = c[:, 1:k + 1]
        c2[:, k] = z
        kids1[g], kids2[g] = c1, c2
    new_tags = np.where(tags == 1, 3, tags - 1).astype(np.int8)
    keep = ~sel
    lat.cells = np.concatenate([lat.cells[keep], kids1, kids2])
    lat.tags = np.concatenate([lat.tags[keep], new_tags, new_tags])
    return np.concatenate([a, b])


def _hanging(lat: Lattice, touched: np.ndarray) -> np.ndarray:
    """Cells having an edge that has been bisected (a hanging midpoint)."""
    flag = np.zeros(len(lat.points), bool)
    flag[touched] = True
    cand = np.flatnonzero(flag[lat.cells].sum(axis=1) >= 2)
    out = np.zeros(len(lat.cells), bool)
    if len(cand) == 0 or len(lat.split_keys) == 0:
        return out
    c = lat.cells[cand]
    keys = edge_key(c[:, TET10_EDGES[:, 0]], c[:, TET10_EDGES[:, 1]])
    pos = np.minimum(np.searchsorted(lat.split_keys, keys), len(lat.split_keys) - 1)
    out[cand] = (lat.split_keys[pos] == keys).any(axis=1)
    return out


def refine(lat: Lattice, marked: np.ndarray, max_closure: int = 200) -> None:
    """Bisect the marked cells once and then every cell needed to restore conformity."""
    touched = _bisect(lat, marked)
    for _ in range(max_closure):
        hang = _hanging(lat, touched)
        if not hang.any():
            return
        touched = _bisect(lat, hang)
    raise RuntimeError("bisection closure did not terminate")


def cell_volumes(points: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Signed volumes (mm^3) of tetrahedra given by the first four vertices of ``cells``."""
    p = points[cells[:, :4]]
    a, b, c = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0], p[:, 3] - p[:, 0]
    return np.einsum("ij,ij->i", a, np.cross(b, c)) / 6.0


def positive_cells(points: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Copy of ``cells`` with vertices 1 and 2 swapped where the signed volume is negative."""
    out = np.array(cells, copy=True)
    neg = cell_volumes(points, out) < 0
    out[neg, 1], out[neg, 2] = cells[neg, 2], cells[neg, 1]
    return out
