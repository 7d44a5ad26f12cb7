"""Benchmark of the FE core on vertebra-like compression models, against CalculiX.

Each (order, size) runs in its own subprocess so that peak memory (ru_maxrss) is per size.
Phases: assembly (pattern + element matrices + scatter + CSR + elimination of constrained
unknowns, as StaticProblem does), solver set-up, CG solve to relative residual 1e-8.
Wall and CPU times are both reported: on a shared machine CPU time is the steadier figure.

    .venv/bin/python benchmarks/solve.py [--sizes 1e5 3e5 1e6 3e6] [--orders 2 1]
                                         [--solver pmg] [--no-ccx] [--quick] [--json out.json]
                                         [--ccx-timeout 900] [--ccx-mem-gb 14] [--ccx-max-dofs 1.2e6]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))


def _clock():
    return time.perf_counter(), time.process_time()


def _since(t0):
    w, c = _clock()
    return w - t0[0], c - t0[1]


def worker(order: int, size: float, solver: str, ccx: bool, ccx_timeout: float, ccx_mem_gb: float,
           ccx_max_dofs: float = np.inf) -> dict:
    """Build, assemble and solve one model; optionally run CalculiX on it. Returns a row dict."""
    from fesim.fem.assembly import Assembler, partition
    from fesim.fem.model import check_supported, rigid_body_modes
    from fesim.fem.solvers import make_solver
    from vertebra import vertebra_model

    model = vertebra_model(size, order)
    check_supported(model)
    mesh = model.mesh
    row = {"order": order, "target": size, "dofs": model.n_dofs, "elements": mesh.n_elements,
           "materials": int(len(np.unique(model.E)))}
    t = _clock()
    asm = Assembler(mesh.points, mesh.cells)
    K = asm.assemble(model.E, model.nu).tocsr()
    free = np.setdiff1d(np.arange(model.n_dofs), model.bc_dofs)
    nnz = int(K.nnz)
    K_ff, K_fc, _ = partition(K, free, model.bc_dofs, overwrite=True)  # as StaticProblem does
    del K
    row["assembly_s"], row["assembly_cpu_s"] = _since(t)
    row["nnz"] = nnz
    t = _clock()
    kw = {"cells": mesh.cells, "free": free, "n_nodes": mesh.n_nodes} if solver == "pmg" else {}
    B = rigid_body_modes(mesh.points)[free]
    s = make_solver(K_ff, solver, rtol=1e-8, near_null=B, **kw)
    row["setup_s"], row["setup_cpu_s"] = _since(t)
    rhs = model.forces[free] - K_fc @ model.bc_values
    t = _clock()
    uf, info = s.solve(rhs)
    row["solve_s"], row["solve_cpu_s"] = _since(t)
    row["iterations"], row["residual"] = int(info.iterations), float(info.residual)
    row["peak_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    row["fesim_s"] = row["assembly_s"] + row["setup_s"] + row["solve_s"]
    row["fesim_cpu_s"] = row["assembly_cpu_s"] + row["setup_cpu_s"] + row["solve_cpu_s"]
    if ccx:
        from fesim.errors import SolverError
        from fesim.fem.ccx import ccx_executable, run_ccx

        if ccx_executable() is None:
            row["ccx"] = "not installed"
        elif model.n_dofs > ccx_max_dofs:
            row["ccx"] = f"not run (> {ccx_max_dofs:.0e} unknowns)"
        else:
            u = np.empty(model.n_dofs)
            u[free], u[model.bc_dofs] = uf, model.bc_values
            del K_ff, K_fc, s, asm
            try:
                res = run_ccx(model, timeout=ccx_timeout, reactions=False, max_memory_bytes=ccx_mem_gb * 1e9)
                row["ccx_s"] = res.wall_s
                row["ccx_peak_gb"] = res.info["peak_rss_bytes"] / 1e9
                row["ccx_rel_diff"] = float(np.linalg.norm(u - res.u.ravel()) / np.linalg.norm(res.u))
            except SolverError as exc:
                row["ccx"] = str(exc)[:80]
    return row


def _run_child(args, order, size) -> dict:
    cmd = [sys.executable, __file__, "--worker", str(order), str(size), "--solver", args.solver,
           "--ccx-timeout", str(args.ccx_timeout), "--ccx-mem-gb", str(args.ccx_mem_gb),
           "--ccx-max-dofs", str(args.ccx_max_dofs)]
    if args.no_ccx:
        cmd.append("--no-ccx")
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        return {"order": order, "target": size, "error": (p.stderr.strip().splitlines() or ["?"])[-1][:100]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def growth_exponent(rows) -> float | None:
    """Least-squares slope of log(fesim wall time) against log(unknowns)."""
    ok = [r for r in rows if "fesim_s" in r]
    if len(ok) < 2:
        return None
    return float(np.polyfit(np.log([r["dofs"] for r in ok]), np.log([r["fesim_s"] for r in ok]), 1)[0])


def format_table(rows) -> str:
    head = ("| elem | unknowns | asm s | setup s | solve s | iters | fesim s (cpu) | peak GB "
            "| ccx s | ccx/fesim | rel. diff |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        name = "tet10" if r["order"] == 2 else "tet4"
        if "error" in r:
            lines.append(f"| {name} | ~{r['target']:.0e} | failed: {r['error']} |" + " |" * 8)
            continue
        if "ccx_s" in r:
            ccx = f"{r['ccx_s']:.1f} | {r['ccx_s'] / r['fesim_s']:.1f}x | {r['ccx_rel_diff']:.1e}"
        else:
            ccx = f"{r.get('ccx', 'skipped')} | - | -"
        lines.append(
            f"| {name} | {r['dofs']:,} | {r['assembly_s']:.1f} | {r['setup_s']:.1f} | {r['solve_s']:.1f} "
            f"| {r['iterations']} | {r['fesim_s']:.1f} ({r['fesim_cpu_s']:.1f}) | {r['peak_gb']:.2f} | {ccx} |")
    for order in sorted({r["order"] for r in rows}, reverse=True):
        g = growth_exponent([r for r in rows if r["order"] == order])
        if g is not None:
            lines.append(f"\nfesim time growth ({'tet10' if order == 2 else 'tet4'}): ~N^{g:.2f}")
    return "\n".join(lines)


def machine() -> str:
    load = os.getloadavg()
    return (f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, "
            f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
            f"python {platform.python_version()}, load avg {load[0]:.1f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[1e5, 3e5, 1e6, 3e6])
    ap.add_argument("--orders", type=int, nargs="+", default=[2, 1], choices=[1, 2])
    ap.add_argument("--solver", default="pmg")
    ap.add_argument("--no-ccx", action="store_true")
    ap.add_argument("--quick", action="store_true", help="sizes 3e4 and 1e5 only")
    ap.add_argument("--ccx-timeout", type=float, default=900.0)
    ap.add_argument("--ccx-mem-gb", type=float, default=14.0)
    ap.add_argument("--ccx-max-dofs", type=float, default=1.2e6,
                    help="do not start CalculiX above this many unknowns (SPOOLES memory)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        row = worker(int(args.worker[0]), float(args.worker[1]), args.solver, not args.no_ccx,
                     args.ccx_timeout, args.ccx_mem_gb, args.ccx_max_dofs)
        print(json.dumps(row))
        return 0
    sizes = [3e4, 1e5] if args.quick else args.sizes
    print(f"# fesim solve benchmark ({args.solver}), {machine()}", flush=True)
    rows = []
    for order in args.orders:
        for size in sizes:
            rows.append(_run_child(args, order, size))
            r = rows[-1]
            print(f"  done order={order} size={size:.0e}: "
                  + (r.get("error") or f"{r['fesim_s']:.1f} s, {r['iterations']} it, ccx {r.get('ccx_s', r.get('ccx'))}"),
                  flush=True)
    print(format_table(rows))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
