"""Abaqus / CalculiX input decks (.inp): the one writer, and its reader.

Element types C3D4 / C3D10 / C3D8 (the C3D10 and C3D8 node orders equal fesim's VTK order,
:mod:`fesim.cells`). Materials are binned (:func:`fesim.io.binning.bin_materials`), or kept
exact with ``n_bins=None``; every material gets an ELSET ``MAT_k``, a *MATERIAL and a
*SOLID SECTION. Regions become ELSETs ``REGION_<code>``. Node ids are 1-based in the file
and 0-based in Python. The writer needs only ``points`` and ``cells`` (and ``region`` when
present), so the FE core's CalculiX runner (:mod:`fesim.fem.ccx`) uses it too.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from fesim.errors import InputError
from fesim.io.atomic import atomic_write_text
from fesim.io.binning import bin_materials

_ETYPE = {4: "C3D4", 10: "C3D10", 8: "C3D8"}
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,79}$")
#: Rows formatted per ``%`` operation when writing large decks (bounds temporary strings).
_ROWS = 50_000
#: Result requests: ``"frd"`` (binary-free results file), ``"dat"`` (printed to ``job.dat``,
#: parsed by :func:`fesim.fem.ccx.read_dat`).
OUTPUTS = ("frd", "dat")


def _ids(ids, per_line: int = 16) -> list[str]:
    ids = np.asarray(ids, dtype=np.int64).ravel() + 1
    return [", ".join(map(str, ids[i:i + per_line])) for i in range(0, len(ids), per_line)]


def _check_name(name: str) -> str:
    if not _NAME.match(str(name)):
        raise InputError(f"invalid set name {name!r}: use letters, digits, '_' or '-', start with a letter")
    return str(name)


def _rows(fmt: str, rows: np.ndarray) -> list[str]:
    """``fmt % row`` for every row, in chunks (one string per chunk, newline-terminated)."""
    rows = np.asarray(rows)
    return [(fmt * len(c)) % tuple(c.ravel().tolist()) for c in
            (rows[s:s + _ROWS] for s in range(0, len(rows), _ROWS))]


def write_inp(path, mesh, E, nu, node_sets: dict | None = None, n_bins: int | None = 50,
              steps: list | None = None, elem_sets: dict | None = None, digits: int = 9,
              output: str = "frd", reactions: bool = True) -> dict:
    """Write an .inp deck and return the material binning error.

    Parameters
    ----------
    path : str or Path
    mesh : mesh with ``points`` (N, 3) mm and ``cells`` (M, 4|10|8); ``region`` (M,) optional
    E, nu : array (M,)
        Young's modulus (MPa) and Poisson's ratio per element.
    node_sets : dict of name -> node ids (0-based)
    n_bins : int or None
        Maximum number of materials per distinct Poisson's ratio; None: one material per
        distinct ``(E, nu)`` (exact).
    steps : list of dict, optional
        Each ``{"name": str, "boundary": [(set_name or node id, first_dof, last_dof, value_mm)],
        "cload": [(set_name or node id, dof, force_N)]}`` becomes a linear *STATIC step that
        writes displacements and reaction forces.
    elem_sets : dict of name -> element ids (0-based), optional
    digits : significant digits of coordinates, moduli and prescribed values
    output : ``"frd"`` (*NODE FILE U, RF and *EL FILE S, E) or ``"dat"`` (*NODE PRINT of U,
        and of RF with ``reactions``, for every node)

    Returns
    -------
    dict
        ``n_materials``, ``max_rel_error``, ``mean_rel_error`` of E after binning.
    """
    points, cells = np.asarray(mesh.points, float), np.asarray(mesh.cells)
    n_nodes, n_elem = len(points), len(cells)
    region = getattr(mesh, "region", None)
    E = np.asarray(E, float)
    nu = np.asarray(nu, float)
    if E.shape != (n_elem,) or nu.shape != (n_elem,):
        raise InputError("E and nu must have one value per element")
    if output not in OUTPUTS:
        raise InputError(f"output must be one of {', '.join(OUTPUTS)}, not {output!r}")
    bin_id, table, err = bin_materials(E, nu, n_bins)
    node_sets = {_check_name(k): np.asarray(v, np.int64) for k, v in (node_sets or {}).items()}
    for k, v in node_sets.items():
        if v.size and (v.min() < 0 or v.max() >= n_nodes):
            raise InputError(f"node set {k!r} has ids outside 0..{n_nodes - 1}")
    g = f"%.{int(digits)}g"
    out = ["*HEADING\nfesim bone-screw model; units mm, N, MPa\n*NODE, NSET=NALL\n"]
    out += _rows(f"%d, {g}, {g}, {g}\n", np.column_stack([np.arange(1, n_nodes + 1), points]))
    n = cells.shape[1]
    out.append(f"*ELEMENT, TYPE={_ETYPE[n]}, ELSET=EALL\n")
    conn = np.column_stack([np.arange(1, n_elem + 1), cells.astype(np.int64) + 1])
    # keep lines short: a C3D10 row continues after the id and 8 nodes
    efmt = ", ".join(["%d"] * 9) + ",\n" + ", ".join(["%d"] * (n - 8)) + "\n" if n == 10 else \
        ", ".join(["%d"] * (n + 1)) + "\n"
    out += _rows(efmt, conn)
    lines = []
    if region is not None:
        region = np.asarray(region)
        for r in np.unique(region):
            lines.append(f"*ELSET, ELSET=REGION_{int(r)}")
            lines += _ids(np.flatnonzero(region == r))
    for name, ids_ in (elem_sets or {}).items():
        lines.append(f"*ELSET, ELSET={_check_name(name)}")
        lines += _ids(ids_)
    for name, ids_ in node_sets.items():
        lines.append(f"*NSET, NSET={name}")
        lines += _ids(ids_)
    for k, (e, v) in enumerate(table):
        lines.append(f"*ELSET, ELSET=MAT_{k}")
        lines += _ids(np.flatnonzero(bin_id == k))
        lines += [f"*MATERIAL, NAME=M{k}", "*ELASTIC", f"{e:.{digits}g}, {v:.{digits}g}",
                  f"*SOLID SECTION, ELSET=MAT_{k}, MATERIAL=M{k}"]
    for st in steps or []:
        lines += [f"** STEP {st.get('name', 'step')}", "*STEP", "*STATIC"]
        if len(st.get("boundary", ())):
            lines.append("*BOUNDARY")
            lines += [f"{_target(t, node_sets)}, {int(a)}, {int(b)}, {float(val):.{digits}g}"
                      for t, a, b, val in st["boundary"]]
        if len(st.get("cload", ())):
            lines.append("*CLOAD")
            lines += [f"{_target(t, node_sets)}, {int(dof)}, {float(val):.{digits}g}" for t, dof, val in st["cload"]]
        if output == "frd":
            lines += ["*NODE FILE", "U, RF", "*EL FILE", "S, E"]
        else:
            lines += ["*NODE PRINT, NSET=NALL", "U"]
            if reactions:
                lines += ["*NODE PRINT, NSET=NALL, TOTALS=NO", "RF"]
        lines.append("*END STEP")
    out.append("\n".join(lines) + "\n")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(path), "".join(out))
    return err


def _target(t, node_sets) -> str:
    if isinstance(t, str):
        if t not in node_sets:
            raise InputError(f"step refers to unknown node set {t!r}")
        return t
    return str(int(t) + 1)


def read_inp(path) -> dict:
    """Read a deck written by :func:`write_inp` (nodes, elements, sets, materials, steps).

    Returns
    -------
    dict
        ``mesh`` (TetMesh, region from ``REGION_<code>`` sets), ``E``, ``nu`` (per element),
        ``node_sets`` and ``elem_sets`` (0-based ids), ``steps`` (list of dicts as accepted
        by :func:`write_inp`).
    """
    from fesim.mesh.tetmesh import TetMesh  # the reader builds a mesh; the writer needs none

    path = Path(path)
    if not path.is_file():
        raise InputError(f"no such INP file: {path}")
    nodes, elems, nsets, elsets, mats, sections, steps = {}, {}, {}, {}, {}, {}, []
    mode, name, cur_mat, step, carry = None, None, None, None, ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("**"):
            continue
        if line.startswith("*"):
            kw = [p.strip() for p in line[1:].split(",")]
            key = kw[0].upper()
            opts = {p.split("=")[0].upper(): p.split("=", 1)[1] for p in kw[1:] if "=" in p}
            mode = key
            if key == "NSET":
                name = opts["NSET"]
                nsets[name] = []
            elif key == "ELSET":
                name = opts["ELSET"]
                elsets[name] = []
            elif key == "MATERIAL":
                cur_mat = opts["NAME"]
            elif key == "SOLID SECTION":
                sections[opts["ELSET"]] = opts["MATERIAL"]
            elif key == "STEP":
                step = {"name": f"step{len(steps)}", "boundary": [], "cload": []}
                steps.append(step)
            continue
        vals = [v.strip() for v in line.split(",") if v.strip()]
        if mode == "NODE":
            nodes[int(vals[0])] = [float(v) for v in vals[1:4]]
        elif mode == "ELEMENT":
            row = [int(v) for v in (carry + ",".join(vals)).split(",")] if carry else [int(v) for v in vals]
            carry = ""
            if line.endswith(","):
                carry = ",".join(vals) + ","
                continue
            elems[row[0]] = row[1:]
        elif mode == "NSET":
            nsets[name] += [int(v) for v in vals]
        elif mode == "ELSET":
            elsets[name] += [int(v) for v in vals]
        elif mode == "ELASTIC":
            mats[cur_mat] = (float(vals[0]), float(vals[1]))
        elif mode == "BOUNDARY":
            t = vals[0] if not vals[0].isdigit() else int(vals[0]) - 1
            step["boundary"].append((t, int(vals[1]), int(vals[2]), float(vals[3]) if len(vals) > 3 else 0.0))
        elif mode == "CLOAD":
            t = vals[0] if not vals[0].isdigit() else int(vals[0]) - 1
            step["cload"].append((t, int(vals[1]), float(vals[2])))
    if not nodes or not elems:
        raise InputError(f"{path} has no *NODE or *ELEMENT data")
    nid = np.array(sorted(nodes))
    if not np.array_equal(nid, np.arange(1, len(nid) + 1)):
        raise InputError(f"{path}: node ids must run 1..N")
    eid = np.array(sorted(elems))
    points = np.array([nodes[i] for i in nid])
    cells = np.array([elems[i] for i in eid], dtype=np.int64) - 1
    pos = {int(e): k for k, e in enumerate(eid)}
    region = np.zeros(len(eid), np.int32)
    E = np.full(len(eid), np.nan)
    nu = np.full(len(eid), np.nan)
    for nm, ids in elsets.items():
        idx = [pos[i] for i in ids]
        if nm.upper().startswith("REGION_"):
            region[idx] = int(nm.split("_", 1)[1])
        if nm in sections:
            E[idx], nu[idx] = mats[sections[nm]]
    plain = {k: np.array(v, np.int64) - 1 for k, v in elsets.items()
             if not k.upper().startswith(("REGION_", "MAT_")) and k.upper() != "EALL"}
    return {"mesh": TetMesh(points, cells, region), "E": E, "nu": nu,
            "node_sets": {k: np.array(v, np.int64) - 1 for k, v in nsets.items()},
            "elem_sets": plain, "steps": steps}
