"""Benchmark of the FE core on vertebra-like compression models, against NGSolve, PETSc and CalculiX.

Each (order, size) runs in its own subprocess so that peak memory (ru_maxrss) is per size.
Phases: assembly (pattern + element matrices + scatter + CSR + elimination of constrained
unknowns, as StaticProblem does), solver set-up, CG solve to relative residual 1e-8.
Wall and CPU times are both reported: on a shared machine CPU time is the steadier figure.

Peers in the same run (tet10 sizes; ``--peers``, see ``benchmarks/peers.py``), each in its own
process after fesim's solve of the same model: NGSolve (same mesh from arrays, order-2
``VectorH1``, BDDC-CG, 2 threads) and PETSc GAMG-CG on fesim's matrix (2 MPI ranks). They run
under the peers' Python (``benchmarks/install_peers.sh``: a separate venv, default
``../bench-venv`` beside the repository, or ``--peer-python``); a peer that is not installed
is skipped with a line saying so. Ratios are fesim / peer time within this one invocation.

    .venv/bin/python benchmarks/solve.py [--sizes 1e5 3e5 1e6] [--orders 2 1]
                                         [--solver pmg] [--no-ccx] [--quick] [--json out.json]
                                         [--peers ngsolve petsc | --no-peers] [--peer-python PY]
                                         [--ccx-timeout 900] [--ccx-mem-gb 14] [--ccx-max-dofs 1.2e6]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PEERS = ("ngsolve", "petsc")
PEER_NAMES = {"ngsolve": "NGSolve", "petsc": "PETSc GAMG"}
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))


def _clock():
    return time.perf_counter(), time.process_time()


def _since(t0):
    w, c = _clock()
    return w - t0[0], c - t0[1]


def peer_python(arg: str | None) -> str:
    """The peers' interpreter: ``--peer-python``, $FESIM_PEER_PYTHON, or ../bench-venv."""
    return arg or os.environ.get("FESIM_PEER_PYTHON") or str(HERE.parent.parent / "bench-venv" / "bin" / "python")


def peer_missing(py: str, peer: str) -> str | None:
    """Why ``peer`` cannot run under ``py`` (None when it can)."""
    mod = {"ngsolve": "ngsolve", "petsc": "petsc4py"}[peer]
    if not Path(py).exists():
        return f"peer Python {py} not found (run benchmarks/install_peers.sh)"
    p = subprocess.run([py, "-c", f"import {mod}"], capture_output=True, text=True)
    if p.returncode != 0:
        return f"{mod} not installed for {py} (run benchmarks/install_peers.sh)"
    if peer == "petsc" and shutil.which("mpiexec") is None:
        return "mpiexec not found"
    return None


def write_problem(d: Path, model, K_ff, free, rhs, u) -> None:
    """The model and fesim's reduced system as .npy files for benchmarks/peers.py."""
    from fesim.cells import TET10_EDGES

    d.mkdir(parents=True, exist_ok=True)
    arrays = {"points": model.mesh.points, "cells": model.mesh.cells, "E": model.E, "nu": model.nu,
              "bc_dofs": model.bc_dofs, "bc_values": model.bc_values, "u": u, "free": free,
              "rhs": rhs, "n_dofs": np.array(model.n_dofs), "K_data": K_ff.data,
              "K_indices": K_ff.indices, "K_indptr": K_ff.indptr, "edges": TET10_EDGES}
    for k, v in arrays.items():
        np.save(d / f"{k}.npy", np.asarray(v))


def run_peer(peer: str, py: str, d: Path, threads: int, timeout: float) -> dict:
    cmd = [py, str(HERE / "peers.py"), peer, str(d), "--threads", str(threads)]
    env = dict(os.environ)
    if peer == "petsc":
        cmd = ["mpiexec", "-n", str(threads), "--oversubscribe", "--bind-to", "none"] + cmd
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)  # the peers' Python, not fesim's
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s"}
    lines = [ln for ln in p.stdout.strip().splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        return {"error": ((p.stderr or p.stdout).strip().splitlines() or ["?"])[-1][:100]}
    return json.loads(lines[-1])


def worker(order: int, size: float, solver: str, ccx: bool, ccx_timeout: float, ccx_mem_gb: float,
           ccx_max_dofs: float = np.inf, peers=(), peer_py: str | None = None, threads: int = 2,
           peer_timeout: float = 900.0) -> dict:
    """Build, assemble and solve one model; optionally run CalculiX on it. Returns a row dict."""
    from fesim.fem.assembly import Assembler
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
    free = np.setdiff1d(np.arange(model.n_dofs), model.bc_dofs)
    K_ff, K_fc, K_c = asm.assemble_reduced(model.E, model.nu, free, model.bc_dofs)  # as StaticProblem does
    nnz = int(K_ff.nnz + K_fc.nnz + K_c.nnz)
    row["assembly_s"], row["assembly_cpu_s"] = _since(t)
    row["nnz"] = nnz
    t = _clock()
    kw = {"cells": mesh.cells, "free": free, "n_nodes": mesh.n_nodes,  # as StaticProblem passes them
          "coarse_matrix": lambda d: asm.corner_matrix(model.E, model.nu, d)} if solver == "pmg" else {}
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
    if peers and order == 2:
        u = np.empty(model.n_dofs)
        u[free], u[model.bc_dofs] = uf, model.bc_values
        py = peer_python(peer_py)
        with tempfile.TemporaryDirectory(prefix="fesim-peers-") as tmp:
            write_problem(Path(tmp), model, K_ff, free, rhs, u)
            del s
            for peer in peers:
                why = peer_missing(py, peer)
                row[peer] = {"skipped": why} if why else run_peer(peer, py, Path(tmp), threads, peer_timeout)
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
            del K_ff, K_fc, asm
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
    if args.no_peers:
        cmd.append("--no-peers")
    else:
        cmd += ["--peers", *args.peers, "--threads", str(args.threads), "--peer-timeout", str(args.peer_timeout)]
        if args.peer_python:
            cmd += ["--peer-python", args.peer_python]
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


def _peer_cell(r, peer) -> tuple[str, float | None]:
    """Table cell of one peer and its total time (s) as compared with fesim's."""
    p = r.get(peer)
    if p is None:
        return "not run", None
    if "skipped" in p:
        return "skipped", None
    if "error" in p:
        return f"failed: {p['error'][:60]}", None
    if p.get("reason", 1) < 0 or p.get("residual", 0.0) > 1e-7:  # KSPConvergedReason < 0: diverged
        return (f"not converged (reason {p.get('reason')}, residual {p['residual']:.0e} after "
                f"{p['iterations']} it)"), None
    if peer == "ngsolve":
        tot = p["assembly_setup_s"] + p["solve_s"]
        return (f"{tot:.1f} ({p['assembly_setup_s']:.1f} + {p['solve_s']:.1f}), {p['iterations']} it, "
                f"{p['peak_gb']:.2f} GB, diff {p['rel_diff_corners']:.0e}"), tot
    # PETSc solves fesim's matrix: its total includes fesim's assembly
    tot = r["assembly_s"] + p["setup_s"] + p["solve_s"]
    return (f"{tot:.1f} ({r['assembly_s']:.1f} + {p['setup_s']:.1f} + {p['solve_s']:.1f}), {p['iterations']} it, "
            f"{p['peak_gb']:.2f} GB, diff {p['rel_diff']:.0e}"), tot


def format_peers(rows) -> str:
    """fesim against its peers per size: total time (s) and fesim / peer."""
    ok = [r for r in rows if "fesim_s" in r and any(k in r for k in PEERS)]
    if not ok:
        return ""
    lines = ["| unknowns | fesim s (asm + setup + solve), it, GB | NGSolve BDDC-CG s (asm & setup + solve) "
             "| PETSc GAMG-CG s (fesim asm + setup + solve) | fesim / NGSolve | fesim / PETSc |",
             "|---|---|---|---|---|---|"]
    skipped = {}
    for r in ok:
        cells, ratios = [], []
        for peer in PEERS:
            cell, tot = _peer_cell(r, peer)
            cells.append(cell)
            ratios.append(f"{r['fesim_s'] / tot:.2f}" if tot else "-")
            if "skipped" in r.get(peer, {}):
                skipped[peer] = r[peer]["skipped"]
        lines.append(f"| {r['dofs']:,} | {r['fesim_s']:.1f} ({r['assembly_s']:.1f} + {r['setup_s']:.1f} + "
                     f"{r['solve_s']:.1f}), {r['iterations']} it, {r['peak_gb']:.2f} | {cells[0]} | {cells[1]} "
                     f"| {ratios[0]} | {ratios[1]} |")
    for peer, why in skipped.items():
        lines.append(f"\n{PEER_NAMES[peer]}: skipped: {why}")
    return "\n".join(lines)


def machine() -> str:
    load = os.getloadavg()
    return (f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, "
            f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
            f"python {platform.python_version()}, load avg {load[0]:.1f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[1e5, 3e5, 1e6])
    ap.add_argument("--orders", type=int, nargs="+", default=[2], choices=[1, 2])
    ap.add_argument("--solver", default="pmg")
    ap.add_argument("--no-ccx", action="store_true")
    ap.add_argument("--quick", action="store_true", help="sizes 3e4 and 1e5 only")
    ap.add_argument("--ccx-timeout", type=float, default=900.0)
    ap.add_argument("--ccx-mem-gb", type=float, default=14.0)
    ap.add_argument("--ccx-max-dofs", type=float, default=1.2e6,
                    help="do not start CalculiX above this many unknowns (SPOOLES memory)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--peers", nargs="+", default=list(PEERS), choices=PEERS)
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--peer-python", default=None, help="Python with the peers (default ../bench-venv)")
    ap.add_argument("--threads", type=int, default=2, help="NGSolve threads / PETSc MPI ranks")
    ap.add_argument("--peer-timeout", type=float, default=900.0)
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        row = worker(int(args.worker[0]), float(args.worker[1]), args.solver, not args.no_ccx,
                     args.ccx_timeout, args.ccx_mem_gb, args.ccx_max_dofs,
                     peers=() if args.no_peers else args.peers, peer_py=args.peer_python,
                     threads=args.threads, peer_timeout=args.peer_timeout)
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
                  + (r.get("error") or f"{r['fesim_s']:.1f} s, {r['iterations']} it, ccx {r.get('ccx_s', r.get('ccx'))}"
                     + "".join(f", {PEER_NAMES[p]} {_peer_cell(r, p)[0]}" for p in PEERS if p in r)),
                  flush=True)
    print(format_table(rows))
    peers = format_peers(rows)
    if peers:
        print("\nPeers (same model, same tolerance; fesim / peer < 1: fesim faster):\n")
        print(peers)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
