"""The mesh passed from the meshing stage to the FE model: tetrahedra (tet4, tet10) or voxel
hexahedra (hex8, :mod:`fesim.mesh.voxel`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fesim.cells import CELL_TYPES, HEX_CORNERS, HEX_QUADS, TET10_EDGES, TET_FACES
from fesim.errors import MeshError

#: Region codes stored per element in ``TetMesh.region``.
REGION_BONE = 1
#: Screw ``s`` (index into the screw plan list) has region ``REGION_SCREW0 + s``.
REGION_SCREW0 = 10
#: End caps (PMMA or disc layers) for compression: lower, upper.
REGION_CAP_LOWER = 20
REGION_CAP_UPPER = 21




def hex_volumes(points: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Signed volumes (M,) in mm^3 of trilinear hexahedra (VTK order).

    The Jacobian determinant of the trilinear map is of degree <= 2 in each reference
    coordinate, so the 2 x 2 x 2 Gauss rule integrates it exactly.
    """
    X = np.asarray(points, dtype=float)[np.asarray(cells)]  # (M, 8, 3)
    g = 1.0 / np.sqrt(3.0)
    s = HEX_CORNERS
    vol = np.zeros(len(X))
    for q in s * g:
        f = 1.0 + s * q  # (8, 3): the three linear factors of every shape function
        dN = np.stack([s[:, 0] * f[:, 1] * f[:, 2], f[:, 0] * s[:, 1] * f[:, 2],
                       f[:, 0] * f[:, 1] * s[:, 2]], axis=1) / 8.0  # dN_a/dxi_j
        J = np.einsum("mai,aj->mij", X, dN)
        vol += np.linalg.det(J)
    return vol


@dataclass
class TetMesh:
    """Linear (4-node) or quadratic (10-node) tetrahedral mesh, or linear hexahedral mesh.

    The name is historical: 8-node cells (voxel hexahedra, :mod:`fesim.mesh.voxel`) are
    held by the same class (alias :data:`Mesh`), so every stage takes either kind;
    :attr:`cell_type` tells them apart.

    Attributes
    ----------
    points : ndarray (N, 3) float64
        Node coordinates, LPS mm.
    cells : ndarray (M, 4), (M, 10) or (M, 8) int32
        Connectivity. Tet10 node order follows VTK/meshio: 4 corners then mid-edge nodes
        on edges (0,1), (1,2), (0,2), (0,3), (1,3), (2,3). Hex8 follows VTK_HEXAHEDRON
        (:data:`HEX_CORNERS`). Elements are positively oriented (positive volume).
    region : ndarray (M,) int32
        Region code per element (see ``REGION_*``).
    """

    points: np.ndarray
    cells: np.ndarray
    region: np.ndarray
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        self.points = np.ascontiguousarray(self.points, dtype=np.float64)
        self.cells = np.ascontiguousarray(self.cells, dtype=np.int32)
        self.region = np.ascontiguousarray(self.region, dtype=np.int32)
        if self.points.ndim != 2 or self.points.shape[1] != 3:
            raise ValueError("points must be (N, 3)")
        if self.cells.ndim != 2 or self.cells.shape[1] not in CELL_TYPES:
            raise ValueError("cells must be (M, 4), (M, 10) or (M, 8)")
        if self.region.shape != (self.cells.shape[0],):
            raise ValueError("region must have one entry per cell")

    @property
    def order(self) -> int:
        """Polynomial order of the shape functions: 1 (tet4, hex8) or 2 (tet10)."""
        return 2 if self.cells.shape[1] == 10 else 1

    @property
    def cell_type(self) -> str:
        """``"tet4"``, ``"tet10"`` or ``"hex8"``."""
        return CELL_TYPES[self.cells.shape[1]]

    @property
    def is_hex(self) -> bool:
        return self.cells.shape[1] == 8

    @property
    def n_corners(self) -> int:
        """Corner nodes per element (4 for tetrahedra, 8 for hexahedra)."""
        return 8 if self.is_hex else 4

    @property
    def n_nodes(self) -> int:
        return self.points.shape[0]

    @property
    def n_elements(self) -> int:
        return self.cells.shape[0]

    def corner_volumes(self) -> np.ndarray:
        """Signed volume (mm^3) of each element's straight-sided corner tetrahedron (hex8:
        of the trilinear hexahedron)."""
        if self.is_hex:
            return hex_volumes(self.points, self.cells)
        p = self.points[self.cells[:, :4]]
        a, b, c = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0], p[:, 3] - p[:, 0]
        return np.einsum("ij,ij->i", a, np.cross(b, c)) / 6.0

    def centroids(self) -> np.ndarray:
        """Mean of the corner nodes (mm): the centroid of a tetrahedron or parallelepiped."""
        return self.points[self.cells[:, :self.n_corners]].mean(axis=1)

    def is_bone(self) -> np.ndarray:
        return self.region == REGION_BONE

    def is_screw(self, s: int | None = None) -> np.ndarray:
        if s is None:
            return (self.region >= REGION_SCREW0) & (self.region < REGION_CAP_LOWER)
        return self.region == REGION_SCREW0 + s

    def nodes_of(self, mask: np.ndarray) -> np.ndarray:
        """Sorted unique node ids used by the elements selected by boolean ``mask``."""
        return np.unique(self.cells[mask])


# Kuhn subdivision of the unit cube into 6 positively oriented tetrahedra sharing the main
# diagonal 0-7; neighbouring cubes' faces match, so the mesh is conforming.
_CUBE = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0],
                  [0, 0, 1], [1, 0, 1], [0, 1, 1], [1, 1, 1]])
_KUHN = np.array([[0, 1, 3, 7], [0, 3, 2, 7], [0, 2, 6, 7],
                  [0, 6, 4, 7], [0, 4, 5, 7], [0, 5, 1, 7]])


def box_grid(n, size, origin=(0.0, 0.0, 0.0), corners=_CUBE) -> tuple[np.ndarray, np.ndarray]:
    """Nodes of a structured grid of ``n = (nx, ny, nz)`` cubes over a box of ``size`` mm, and
    the node ids (C, 8) of every cube's corners at the unit offsets ``corners`` (8, 3)."""
    n = np.asarray(n, dtype=int)
    size = np.asarray(size, dtype=float)
    axes = [np.linspace(0, s, k + 1) for s, k in zip(size, n)]
    X, Y, Z = np.meshgrid(*axes, indexing="ij")
    points = np.column_stack([X.ravel(), Y.ravel(), Z.ravel()]) + np.asarray(origin, dtype=float)
    base = np.stack(np.meshgrid(*[np.arange(k) for k in n], indexing="ij"), -1).reshape(-1, 3)
    c = base[:, None, :] + np.asarray(corners)[None]  # (C, 8, 3)
    return points, (c[..., 0] * (n[1] + 1) + c[..., 1]) * (n[2] + 1) + c[..., 2]


def box_mesh(n, size, origin=(0.0, 0.0, 0.0), region: int = REGION_BONE) -> TetMesh:
    """Structured tet4 mesh of a box: ``n = (nx, ny, nz)`` cubes, ``size`` in mm, 6 tets per cube."""
    points, ids = box_grid(n, size, origin)
    cells = ids[:, _KUHN].reshape(-1, 4)
    mesh = TetMesh(points, cells, np.full(len(cells), region))
    vol = mesh.corner_volumes()
    flip = vol < 0
    mesh.cells[flip] = mesh.cells[flip][:, [0, 2, 1, 3]]
    return mesh


#: The class holds any of the cell types; ``Mesh`` is the neutral name for new code.
Mesh = TetMesh


def boundary_faces(cells: np.ndarray, with_extra: bool = False):
    """Boundary triangles of a mesh: corner node ids (F, 3), outward, and owning element (F,).

    A face is on the boundary when exactly one element has it. Hex8: each boundary quad
    (:data:`~fesim.cells.HEX_QUADS`) gives two outward triangles (a, b, c), (a, c, d).
    ``with_extra=True`` also returns the other nodes on each face, (F, k) int64, that a
    support on the face must hold too: the three mid-edge nodes of a tet10 face (on the
    edges (a, b), (b, c), (c, a)), the fourth corner of a hex8 quad (k = 0 for tet4).
    Faces come in element order.
    """
    cells = np.asarray(cells)
    hexa = cells.shape[1] == 8
    local = HEX_QUADS if hexa else TET_FACES
    faces = cells[:, :8 if hexa else 4].astype(np.int64)[:, local].reshape(-1, local.shape[1])
    once = _once(np.sort(faces, axis=1))
    owner = np.repeat(np.arange(len(cells)), len(local))[once]
    faces = faces[once]
    if hexa:
        tri = np.concatenate([faces[:, [0, 1, 2]], faces[:, [0, 2, 3]]])
        owner = np.concatenate([owner, owner])
        if with_extra:
            return tri, owner, np.concatenate([faces[:, [3]], faces[:, [1]]])
        return tri, owner
    if not with_extra:
        return faces, owner
    if cells.shape[1] == 4:
        return faces, owner, np.zeros((len(faces), 0), np.int64)
    return faces, owner, _mid_edge_nodes(cells, faces, owner)


def _once(keys: np.ndarray) -> np.ndarray:
    """Rows of sorted ``keys`` (F, k) that occur exactly once."""
    n = np.int64(keys.max() + 1) if keys.size else np.int64(1)
    if keys.shape[1] == 3 and n < 2**21:  # one int64 per face: much faster than unique rows
        keys = (keys[:, 0] * n + keys[:, 1]) * n + keys[:, 2]
        _, inv, cnt = np.unique(keys, return_inverse=True, return_counts=True)
    else:
        _, inv, cnt = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    return cnt[inv.ravel()] == 1


def _mid_edge_nodes(cells: np.ndarray, faces: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """Mid-edge nodes (F, 3) of tet10 faces given by their corners, from their owning elements."""
    cells = cells[owner].astype(np.int64)
    corners = cells[:, TET10_EDGES]  # (F, 6, 2) global corner ids of each element edge
    out = np.empty((len(faces), 3), np.int64)
    for k, (i, j) in enumerate(((0, 1), (1, 2), (2, 0))):
        a, b = faces[:, i:i + 1], faces[:, j:j + 1]
        hit = ((corners[:, :, 0] == a) & (corners[:, :, 1] == b)) | ((corners[:, :, 0] == b) & (corners[:, :, 1] == a))
        out[:, k] = cells[np.arange(len(faces)), 4 + np.argmax(hit, axis=1)]
    return out


def to_quadratic(mesh: TetMesh) -> TetMesh:
    """Tet10 mesh with straight edges: one shared mid-edge node per unique edge."""
    if mesh.is_hex:
        raise MeshError("to_quadratic takes a tetrahedral mesh; hex8 (voxel) meshes stay linear")
    if mesh.order == 2:
        return mesh
    c = mesh.cells.astype(np.int64)
    e = np.sort(c[:, TET10_EDGES].reshape(-1, 2), axis=1)
    uniq, inv = np.unique(e, axis=0, return_inverse=True)
    mid = 0.5 * (mesh.points[uniq[:, 0]] + mesh.points[uniq[:, 1]])
    cells10 = np.hstack([c, mesh.n_nodes + inv.reshape(-1, 6)])
    return TetMesh(np.vstack([mesh.points, mid]), cells10, mesh.region, dict(mesh.info))
