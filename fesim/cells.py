"""Cell topology shared by the mesh and the FE core: node orders, edges and faces.

One owner for the conventions of the three cell types, so that the mesher
(:mod:`fesim.mesh`) and the FE core (:mod:`fesim.fem`) agree without importing each other.

* tet4 / tet10: VTK (= meshio, CalculiX C3D4/C3D10, FEBio) node order; 4 corners, then the
  tet10 mid-edge nodes on the edges of :data:`TET10_EDGES`.
* hex8: VTK_HEXAHEDRON (= CalculiX C3D8, FEBio hex8) node order, corners at the reference
  coordinates :data:`HEX_CORNERS`.
"""

from __future__ import annotations

import numpy as np

#: Nodes per cell of each cell type.
CELL_TYPES = {4: "tet4", 10: "tet10", 8: "hex8"}

#: Corner pairs of the six tet10 mid-edge nodes (nodes 4-9), in VTK order.
TET10_EDGES = np.array([[0, 1], [1, 2], [2, 0], [0, 3], [1, 3], [2, 3]])

#: Local corners of the four faces of a positively oriented tetrahedron, each ordered so that
#: its normal (right-hand rule) points out of the element; face ``k`` is opposite corner ``k``.
TET_FACES = np.array([[1, 2, 3], [0, 3, 2], [0, 1, 3], [0, 2, 1]])

#: VTK_HEXAHEDRON corners in reference coordinates (xi, eta, zeta) in [-1, 1]^3: bottom face
#: 0-3 counter-clockwise seen from above, top face 4-7 above them.
HEX_CORNERS = np.array([[-1, -1, -1], [1, -1, -1], [1, 1, -1], [-1, 1, -1],
                        [-1, -1, 1], [1, -1, 1], [1, 1, 1], [-1, 1, 1]], dtype=float)

#: Outward quads (local corners, counter-clockwise seen from outside) of a hex8 cell.
HEX_QUADS = np.array([[0, 3, 2, 1], [4, 5, 6, 7], [0, 1, 5, 4], [2, 3, 7, 6], [0, 4, 7, 3], [1, 2, 6, 5]])
