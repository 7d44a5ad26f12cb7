"""FEBio input files (.feb, spec 4.0) for bone-screw tetrahedral models.

Elements are grouped into parts ``R<region>_M<k>`` by region and material bin, one
"isotropic elastic" material per bin. Element ids are the 1-based fesim element indices, so
a round trip restores the element order. FEBio's tet10 and hex8 node orders equal fesim's.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from fesim.errors import InputError
from fesim.io.atomic import atomic_write_text
from fesim.io.binning import bin_materials
from fesim.mesh.tetmesh import TetMesh

_TYPE = {4: "tet4", 10: "tet10", 8: "hex8"}


def write_feb(path, mesh: TetMesh, E, nu, node_sets: dict | None = None, n_bins: int = 50) -> dict:
    """Write a FEBio 4.0 model (mesh, materials, node sets) and return the binning error.

    Parameters
    ----------
    path : str or Path
    mesh : TetMesh
    E, nu : array (M,)
        Young's modulus (MPa) and Poisson's ratio per element.
    node_sets : dict of name -> node ids (0-based)
    n_bins : int
        Maximum number of materials per distinct Poisson's ratio.
    """
    E = np.asarray(E, float)
    nu = np.asarray(nu, float)
    if E.shape != (mesh.n_elements,) or nu.shape != (mesh.n_elements,):
        raise InputError("E and nu must have one value per element")
    bin_id, table, err = bin_materials(E, nu, n_bins)
    out = ['<?xml version="1.0" encoding="ISO-8859-1"?>', '<febio_spec version="4.0">',
           '  <Module type="solid"/>', "  <Material>"]
    for k, (e, v) in enumerate(table):
        out += [f'    <material id="{k + 1}" name="M{k}" type="isotropic elastic">',
                f"      <density>1</density>", f"      <E>{e:.9g}</E>", f"      <v>{v:.9g}</v>",
                "    </material>"]
    out += ["  </Material>", "  <Mesh>", '    <Nodes name="all">']
    out += [f'      <node id="{i + 1}">{x:.9g},{y:.9g},{z:.9g}</node>' for i, (x, y, z) in enumerate(mesh.points)]
    out.append("    </Nodes>")
    parts = []
    etype = _TYPE[mesh.cells.shape[1]]
    for r in np.unique(mesh.region):
        for k in np.unique(bin_id[mesh.region == r]):
            ids = np.flatnonzero((mesh.region == r) & (bin_id == k))
            name = f"R{int(r)}_M{int(k)}"
            parts.append((name, k))
            out.append(f'    <Elements type="{etype}" name="{name}">')
            conn = mesh.cells[ids].astype(np.int64) + 1
            out += [f'      <elem id="{i + 1}">{",".join(map(str, c))}</elem>' for i, c in zip(ids, conn)]
            out.append("    </Elements>")
    for name, ids in (node_sets or {}).items():
        ids = np.asarray(ids, np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= mesh.n_nodes):
            raise InputError(f"node set {name!r} has ids outside 0..{mesh.n_nodes - 1}")
        out.append(f'    <NodeSet name="{name}">{",".join(map(str, ids + 1))}</NodeSet>')
    out += ["  </Mesh>", "  <MeshDomains>"]
    out += [f'    <SolidDomain name="{n}" mat="M{k}"/>' for n, k in parts]
    out += ["  </MeshDomains>", "</febio_spec>", ""]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(path), "\n".join(out))
    return err


def read_feb(path) -> dict:
    """Parse a .feb written by :func:`write_feb`.

    Returns
    -------
    dict
        ``mesh`` (TetMesh, region from the part names), ``E``, ``nu`` (per element),
        ``node_sets`` (0-based ids).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no such FEBio file: {path}")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise InputError(f"cannot parse FEBio file {path}: {exc}") from exc
    if root.tag != "febio_spec":
        raise InputError(f"{path} is not a FEBio file (root <{root.tag}>)")
    mats = {m.get("name"): (float(m.findtext("E")), float(m.findtext("v")))
            for m in root.iter("material")}
    dom = {d.get("name"): d.get("mat") for d in root.iter("SolidDomain")}
    nodes = root.find("Mesh/Nodes")
    nid = np.array([int(n.get("id")) for n in nodes], np.int64)
    pts = np.array([[float(v) for v in n.text.split(",")] for n in nodes])
    points = np.empty_like(pts)
    points[nid - 1] = pts
    ids, conn, reg, E, nu = [], [], [], [], []
    for part in root.iter("Elements"):
        name = part.get("name")
        region = int(name.split("_")[0][1:])
        e, v = mats[dom[name]]
        for el in part:
            ids.append(int(el.get("id")))
            conn.append([int(c) for c in el.text.split(",")])
            reg.append(region)
            E.append(e)
            nu.append(v)
    order = np.argsort(ids)
    cells = np.array(conn, np.int64)[order] - 1
    sets = {s.get("name"): np.array([int(v) for v in s.text.split(",")], np.int64) - 1
            for s in root.iter("NodeSet") if s.text}
    return {"mesh": TetMesh(points, cells, np.array(reg)[order]), "E": np.array(E)[order],
            "nu": np.array(nu)[order], "node_sets": sets}
