"""Files written for each load case: VTU at peak, ParaView load-step series, curve CSV and PNG."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..fem.post import element_fields
from ..io.vtk import write_pvd, write_vtu
from ..mesh.tetmesh import TetMesh
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


def write_curve(path_csv: Path, res: StrengthResult, png: bool = True) -> None:
    """Force-displacement curve as CSV (mm, N) and, optionally, a PNG plot."""
    with open(path_csv, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["displacement_mm", "force_N"])
        w.writerows(zip(res.curve_displacement_mm, res.curve_force_N))
    if png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=110)
        ax.plot(res.curve_displacement_mm, res.curve_force_N, "o-", ms=3)
        ax.axhline(res.strength_N, color="C3", lw=0.8, ls="--", label=f"peak {res.strength_N:.0f} N")
        ax.axhline(res.surrogate_strength_N, color="C2", lw=0.8, ls=":",
                   label=f"linear surrogate {res.surrogate_strength_N:.0f} N")
        ax.set_xlabel("displacement (mm)")
        ax.set_ylabel("force (N)")
        ax.set_title(res.name)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path_csv.with_suffix(".png"))
        plt.close(fig)


def write_case_outputs(out: Path, mesh: TetMesh, mat, bmd, res: StrengthResult, vtk: bool = True) -> None:
    """Write ``<case>.vtu`` (state at peak), ``<case>_steps.pvd`` and ``<case>_curve.csv/.png``."""
    out = Path(out)
    write_curve(out / f"{res.name}_curve.csv", res)
    if not vtk:
        return
    cells, points = _state_fields(mesh, mat, bmd, res.u_peak, res.factor_peak, res.ratio_peak)
    write_vtu(out / f"{res.name}.vtu", mesh, cells, points)
    entries = []
    for k, (delta, u, factor) in enumerate(res.snapshots):
        p = out / "steps" / f"{res.name}_{k:03d}.vtu"
        c, pt = _state_fields(mesh, mat, bmd, u, factor)
        write_vtu(p, mesh, c, pt)
        entries.append((delta, p))
    if entries:
        write_pvd(out / f"{res.name}_steps.pvd", entries)
