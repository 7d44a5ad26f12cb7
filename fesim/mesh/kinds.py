"""The kinds of finite-element mesh a scan can be turned into (``--mesh``).

Each kind is registered once in :data:`MESHES` with its builder; the CLI and
:class:`fesim.pipeline.RunOptions` take the names and descriptions from there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from fesim.registry import Registry


@dataclass(frozen=True)
class MeshKind:
    """A mesh kind: ``build(mask, screws, caps, size_mm=, screw_size_mm=, order=, voxel_mm=)``
    returns the mesh (:class:`fesim.mesh.tetmesh.TetMesh`) of the vertebra mask (Volume),
    screw plans and ``(lower, upper)`` cap masks (or None); sizes in mm, ``order`` 1 or 2."""

    name: str
    description: str
    build: Callable


#: Mesh kinds by name; the first is the default.
MESHES = Registry("mesh")


def tet_mesh(mask, screws, caps=None, *, size_mm=2.0, screw_size_mm=1.0, order=2, voxel_mm=None):
    """Conforming tetrahedra (:func:`fesim.mesh.mesher.mesh_vertebra`): vertebra and caps meshed
    as one body, the caps labelled afterwards; tet10 when ``order`` is 2."""
    from fesim.mesh.caps import assign_cap_regions
    from fesim.mesh.mesher import mesh_vertebra
    from fesim.mesh.tetmesh import to_quadratic

    body = mask
    if caps is not None:
        body = mask.with_data(((mask.data > 0) | (caps[0].data > 0) | (caps[1].data > 0)).astype(np.uint8))
    mesh = mesh_vertebra(body, screws, size_mm=size_mm, screw_size_mm=screw_size_mm)
    if caps is not None:
        mesh = assign_cap_regions(mesh, *caps)
    return to_quadratic(mesh) if order == 2 else mesh


def hex_mesh(mask, screws, caps=None, *, size_mm=None, screw_size_mm=None, order=None, voxel_mm=None):
    """One hex8 per voxel (:func:`fesim.mesh.voxel.voxel_mesh`); sizes and order do not apply."""
    from fesim.mesh.voxel import voxel_mesh

    return voxel_mesh(mask, screws, caps=caps, voxel_mm=voxel_mm)


MESHES.add(MeshKind("tet", "conforming tetrahedra with smoothed surface (default)", tet_mesh))
MESHES.add(MeshKind(
    "voxel", "one hexahedron (hex8) per bone voxel, as the voxel-based spine FE tools build models "
    "(an independent cross-check; --mesh-size, --screw-mesh-size and --order do not apply)", hex_mesh))
