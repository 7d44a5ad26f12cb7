"""The tetrahedral mesh passed from the meshing stage to the FE model."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Region codes stored per element in ``TetMesh.region``.
REGION_BONE = 1
#: Screw ``s`` (index into the screw plan list) has region ``REGION_SCREW0 + s``.
REGION_SCREW0 = 10
#: End caps (PMMA or disc layers) for compression: lower, upper.
REGION_CAP_LOWER = 20
REGION_CAP_UPPER = 21


@dataclass
class TetMesh:
    """Linear (4-node) or quadratic (10-node) tetrahedral mesh.

    Attributes
    ----------
    points : ndarray (N, 3) float64
        Node coordinates, LPS mm.
    cells : ndarray (M, 4) or (M, 10) int32
        Connectivity. Tet10 node order follows VTK/meshio: 4 corners then mid-edge nodes
        on edges (0,1), (1,2), (0,2), (0,3), (1,3), (2,3). Corners are positively oriented
        (positive signed volume).
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
        if self.cells.ndim != 2 or self.cells.shape[1] not in (4, 10):
            raise ValueError("cells must be (M, 4) or (M, 10)")
        if self.region.shape != (self.cells.shape[0],):
            raise ValueError("region must have one entry per cell")

    @property
    def order(self) -> int:
        return 1 if self.cells.shape[1] == 4 else 2

    @property
    def n_nodes(self) -> int:
        return self.points.shape[0]

    @property
    def n_elements(self) -> int:
        return self.cells.shape[0]

    def corner_volumes(self) -> np.ndarray:
        """Signed volume (mm^3) of each element's straight-sided corner tetrahedron."""
        p = self.points[self.cells[:, :4]]
        a, b, c = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0], p[:, 3] - p[:, 0]
        return np.einsum("ij,ij->i", a, np.cross(b, c)) / 6.0

    def centroids(self) -> np.ndarray:
        return self.points[self.cells[:, :4]].mean(axis=1)

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


def box_mesh(n, size, origin=(0.0, 0.0, 0.0), region: int = REGION_BONE) -> TetMesh:
    """Structured tet4 mesh of a box: ``n = (nx, ny, nz)`` cubes, ``size`` in mm, 6 tets per cube."""
    n = np.asarray(n, dtype=int)
    size = np.asarray(size, dtype=float)
    axes = [np.linspace(0, s, k + 1) for s, k in zip(size, n)]
    X, Y, Z = np.meshgrid(*axes, indexing="ij")
    points = np.column_stack([X.ravel(), Y.ravel(), Z.ravel()]) + np.asarray(origin, dtype=float)
    ii, jj, kk = np.meshgrid(*[np.arange(k) for k in n], indexing="ij")
    base = np.stack([ii.ravel(), jj.ravel(), kk.ravel()], axis=1)
    corners = base[:, None, :] + _CUBE[None]  # (C, 8, 3)
    ids = (corners[..., 0] * (n[1] + 1) + corners[..., 1]) * (n[2] + 1) + corners[..., 2]
    cells = ids[:, _KUHN].reshape(-1, 4)
    mesh = TetMesh(points, cells, np.full(len(cells), region))
    vol = mesh.corner_volumes()
    flip = vol < 0
    mesh.cells[flip] = mesh.cells[flip][:, [0, 2, 1, 3]]
    return mesh


TET10_EDGES = np.array([[0, 1], [1, 2], [2, 0], [0, 3], [1, 3], [2, 3]])


def to_quadratic(mesh: TetMesh) -> TetMesh:
    """Tet10 mesh with straight edges: one shared mid-edge node per unique edge."""
    if mesh.order == 2:
        return mesh
    c = mesh.cells.astype(np.int64)
    e = np.sort(c[:, TET10_EDGES].reshape(-1, 2), axis=1)
    uniq, inv = np.unique(e, axis=0, return_inverse=True)
    mid = 0.5 * (mesh.points[uniq[:, 0]] + mesh.points[uniq[:, 1]])
    cells10 = np.hstack([c, mesh.n_nodes + inv.reshape(-1, 6)])
    return TetMesh(np.vstack([mesh.points, mid]), cells10, mesh.region, dict(mesh.info))
