"""VTK unstructured-grid (.vtu) files and ParaView time series (.pvd) for tetrahedral and
hexahedral (VTK type 12) meshes."""

from __future__ import annotations

import os
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np

from fesim.errors import InputError
from fesim.io.atomic import atomic_path, atomic_write_text
from fesim.mesh.tetmesh import TetMesh

_VTK_TYPE = {4: "tetra", 10: "tetra10", 8: "hexahedron"}


def write_vtu(path, mesh: TetMesh, cell_data: dict | None = None, point_data: dict | None = None) -> Path:
    """Write ``mesh`` (tet4, tet10 or hex8) to a binary .vtu with ``region`` and extra fields.

    Parameters
    ----------
    path : str or Path
    mesh : TetMesh
    cell_data : dict of name -> array (M,) or (M, k)
    point_data : dict of name -> array (N,) or (N, k)
    """
    import meshio

    path = Path(path)
    cd = {"region": [mesh.region]}
    for k, v in (cell_data or {}).items():
        v = np.asarray(v)
        if v.shape[0] != mesh.n_elements:
            raise InputError(f"cell field {k!r} has {v.shape[0]} rows, mesh has {mesh.n_elements} elements")
        cd[k] = [v]
    pd = {}
    for k, v in (point_data or {}).items():
        v = np.asarray(v)
        if v.shape[0] != mesh.n_nodes:
            raise InputError(f"point field {k!r} has {v.shape[0]} rows, mesh has {mesh.n_nodes} nodes")
        pd[k] = v
    m = meshio.Mesh(mesh.points, [(_VTK_TYPE[mesh.cells.shape[1]], mesh.cells)], point_data=pd, cell_data=cd)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        meshio.write(tmp, m, file_format="vtu", binary=True, compression="zlib")
    return path


def read_vtu(path) -> tuple[TetMesh, dict, dict]:
    """Read a .vtu written by :func:`write_vtu`: returns (mesh, cell_data, point_data)."""
    import meshio

    path = Path(path)
    if not path.is_file():
        raise InputError(f"no such VTU file: {path}")
    try:
        m = meshio.read(path)
    except Exception as exc:  # meshio raises several types for malformed files
        raise InputError(f"cannot read VTU file {path}: {exc}") from exc
    blocks = [i for i, c in enumerate(m.cells) if c.type in ("tetra", "tetra10", "hexahedron")]
    if len(blocks) != 1:
        raise InputError(f"{path} must hold exactly one tetrahedral or hexahedral cell block")
    i = blocks[0]
    cells = m.cells[i].data
    cd = {k: np.asarray(v[i]) for k, v in m.cell_data.items()}
    region = cd.pop("region", np.ones(len(cells), np.int32))
    return TetMesh(m.points, cells, region), cd, dict(m.point_data)


def write_pvd(path, entries) -> Path:
    """Write a ParaView collection of (time, vtu_path) pairs; paths are stored relative to it."""
    path = Path(path)
    lines = ['<?xml version="1.0"?>',
             '<VTKFile type="Collection" version="0.1" byte_order="LittleEndian">', "  <Collection>"]
    for t, f in entries:
        f = Path(f)
        try:  # relative, also to a sibling folder ("../scans/..."), so the tree can be moved
            rel = Path(os.path.relpath(f.resolve(), path.resolve().parent)).as_posix()
        except ValueError:  # another drive (Windows)
            rel = f
        lines.append(f'    <DataSet timestep="{float(t):.9g}" group="" part="0" file={quoteattr(str(rel))}/>')
    lines += ["  </Collection>", "</VTKFile>", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n".join(lines))
    return path
