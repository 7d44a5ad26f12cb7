"""Files written for each load case: VTU at peak, ParaView load-step series, curve CSV and PNG."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from ..fem.post import element_fields
from ..io.atomic import atomic_path, atomic_write_text
from ..io.vtk import write_pvd, write_vtu
from ..mesh.tetmesh import TetMesh
from .loadcases import LoadCase, boundary_faces
from .strength import StrengthResult


def _state_fields(mesh: TetMesh, mat, bmd, u, factor, ratio=None) -> tuple[dict, dict]:
    E = mat.E * factor
    f = element_fields(mesh.points, mesh.cells, u, E, mat.nu)
    cells = {
        "bmd_mg_cm3": bmd, "E_MPa": mat.E, "E_secant_MPa": E, "damage": 1.0 - factor,
        "von_mises_MPa": f.von_mises, "sed_MPa": f.sed,
        "min_principal_strain": f.principal_strain[:, 0], "max_principal_strain": f.principal_strain[:, 2],
        "yielded": (factor < 1.0 - 1e-9).astype(np.int8),
    }
    if ratio is not None:
        cells["yield_ratio"] = ratio
    return cells, {"displacement_mm": u}


def _figure(size, dpi):
    """A matplotlib figure on its own Agg canvas: no pyplot, no global backend change."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def write_curve(path_csv: Path, res: StrengthResult, png: bool = True) -> None:
    """Force-displacement curve as CSV (mm, N) and, optionally, a PNG plot."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["displacement_mm", "force_N"])
    w.writerows(zip(res.curve_displacement_mm, res.curve_force_N))
    atomic_write_text(path_csv, buf.getvalue())
    if png:
        fig = _figure((4.5, 3.2), 110)
        ax = fig.subplots()
        ax.plot(res.curve_displacement_mm, res.curve_force_N, "o-", ms=3)
        ax.axhline(res.strength_N, color="C3", lw=0.8, ls="--", label=f"peak {res.strength_N:.0f} N")
        ax.axhline(res.surrogate_strength_N, color="C2", lw=0.8, ls=":",
                   label=f"linear surrogate {res.surrogate_strength_N:.0f} N")
        ax.set_xlabel("displacement (mm)")
        ax.set_ylabel("force (N)")
        ax.set_title(res.name)
        ax.legend(fontsize=7)
        fig.tight_layout()
        with atomic_path(path_csv.with_suffix(".png")) as tmp:
            fig.savefig(tmp)


def bc_point_data(mesh: TetMesh, case: LoadCase) -> dict:
    """Point data marking where ``case`` holds (``bc_fixed``) and drives (``bc_driven``) the model."""
    fixed = np.zeros(mesh.n_nodes, np.int8)
    fixed[case.fixed] = 1
    for nodes, _ in case.extra_fixed:
        fixed[nodes] = 1
    driven = np.zeros(mesh.n_nodes, np.int8)
    driven[case.driven] = 1
    return {"bc_fixed": fixed, "bc_driven": driven}


def plot_boundary_conditions(path: Path, mesh: TetMesh, case: LoadCase, frame) -> None:
    """PNG of the vertebra's surface nodes seen from the side and from the front, with the held
    (blue) and driven (red) nodes of ``case`` marked and their audit in the legend.

    ``frame`` is a :class:`~fesim.analysis.loadcases.BodyFrame` (views in its axes, mm).
    """
    faces, _ = boundary_faces(mesh)
    surf = np.unique(faces)
    rel = mesh.points - frame.center
    s, ml, ap = rel @ frame.axis, rel @ frame.ml_axis, rel @ frame.ap_axis
    fixed = np.union1d(case.fixed, np.concatenate([n for n, _ in case.extra_fixed]) if case.extra_fixed
                       else np.zeros(0, np.int64)).astype(np.int64)

    def label(kind):
        keys = [k for k in case.audit if k.startswith(kind)]
        parts = []
        for k in keys:
            a = case.audit[k]
            if "area_mm2" in a:
                parts.append(f"{a['area_mm2']:.0f} mm² on {a['on']}, {a['axial_extent_mm']:.1f} mm axial")
            else:
                parts.append(f"{a.get('on', '')}")
        n = fixed.size if kind == "fixed" else case.driven.size
        return f"{'held' if kind == 'fixed' else 'driven'}: {n} nodes" + (f" ({'; '.join(parts)})" if parts else "")

    fig = _figure((10, 4.6), 100)
    axes = fig.subplots(1, 2)
    for ax, (x, xl) in zip(axes, ((ap, "posterior -> anterior (mm)"), (ml, "right -> left (mm)"))):
        order = np.argsort(-x[surf] if xl.startswith("right") else x[surf])
        ax.scatter(x[surf][order], s[surf][order], s=1.5, c="0.78", lw=0, label="surface")
        ax.scatter(x[fixed], s[fixed], s=4, c="tab:blue", lw=0, label=label("fixed"))
        ax.scatter(x[case.driven], s[case.driven], s=4, c="tab:red", lw=0, label=label("driven"))
        ax.set_xlabel(xl)
        ax.set_ylabel("body axis, inferior -> superior (mm)")
        ax.set_aspect("equal")
    axes[0].set_title(f"{case.name}: side view")
    axes[1].set_title("front view")
    h, lab = axes[0].get_legend_handles_labels()
    fig.legend(h[1:], lab[1:], loc="lower center", fontsize=7, ncol=1, markerscale=3)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    with atomic_path(path) as tmp:
        fig.savefig(tmp)


def write_case_outputs(out: Path, mesh: TetMesh, mat, bmd, res: StrengthResult, vtk: bool = True,
                       case: LoadCase | None = None, frame=None) -> None:
    """Write ``<case>.vtu`` (state at peak), ``<case>_steps.pvd``, ``<case>_curve.csv/.png`` and,
    given the load ``case`` and its body ``frame``, ``<case>_bc.png`` and the BC point data."""
    out = Path(out)
    write_curve(out / f"{res.name}_curve.csv", res)
    bc = {}
    if case is not None:
        bc = bc_point_data(mesh, case)
        if frame is not None:
            plot_boundary_conditions(out / f"{res.name}_bc.png", mesh, case, frame)
    if not vtk:
        return
    cells, points = _state_fields(mesh, mat, bmd, res.u_peak, res.factor_peak, res.ratio_peak)
    points.update(bc)
    write_vtu(out / f"{res.name}.vtu", mesh, cells, points)
    entries = []
    for k, (delta, u, factor) in enumerate(res.snapshots):
        p = out / "steps" / f"{res.name}_{k:03d}.vtu"
        c, pt = _state_fields(mesh, mat, bmd, u, factor)
        write_vtu(p, mesh, c, pt)
        entries.append((delta, p))
    if entries:
        write_pvd(out / f"{res.name}_steps.pvd", entries)
