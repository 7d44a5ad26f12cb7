"""Peer solvers for ``benchmarks/solve.py``: NGSolve (BDDC-CG) and PETSc (GAMG-CG).

Runs under the peers' Python (``benchmarks/install_peers.sh``), never fesim's: it imports only
numpy and the peer. ``solve.py`` writes one problem folder (``.npy`` arrays) and calls

    <peer python> benchmarks/peers.py ngsolve DIR [--threads 2]
    mpiexec -n 2 <peer python> benchmarks/peers.py petsc DIR

which prints one JSON line: times (s), CG iterations, true relative residual, peak memory
(GB, summed over MPI ranks) and the relative difference to fesim's displacement.

Same problem, same stopping test: CG stops when ``||b - A x||_2 <= 1e-8 ||b||_2``, with the
unpreconditioned residual, as fesim's CG does.

* NGSolve imports the same tet mesh from arrays (its corner nodes; on these straight-sided
  elements order-2 ``VectorH1`` is the same space as fesim's tet10, in a hierarchical basis),
  assembles ``2 mu eps:eps + lam div div`` with fesim's per-element moduli, and runs CG with
  its BDDC preconditioner, wirebasket of vertices only (``wb_withedges=False``: the 3-D default
  puts every edge unknown of P2 in the coarse problem, which then is a direct solve).
  Dirichlet conditions are put on boundary faces grouped by which components fesim fixes on
  all of the face's nodes; the count of fixed unknowns is checked against fesim's.
* PETSc gets fesim's reduced matrix ``K_ff`` embedded in the full unknown set (constrained
  unknowns as identity rows scaled by the mean diagonal), so block size 3 holds on the matrix
  and every vector; GAMG (smoothed aggregation, PETSc's defaults otherwise) with the six
  rigid-body modes from the node coordinates as near-null space; the level smoothers' eigenvalue
  estimates by CG (20 steps, 10 % margin) instead of GMRES, which left the preconditioner
  indefinite at 0.3 M unknowns.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

RTOL = 1e-8


def _load(d: Path, *names, mmap=False):
    return [np.load(d / f"{n}.npy", mmap_mode="r" if mmap else None) for n in names]


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def run_ngsolve(d: Path, threads: int) -> dict:
    import ngsolve as ngs
    from netgen.meshing import FaceDescriptor, Mesh

    points, cells, E, nu, bc_dofs, bc_values, u_ref, edges = _load(
        d, "points", "cells", "E", "nu", "bc_dofs", "bc_values", "u", "edges")
    n_nodes = len(points)
    corners = np.unique(cells[:, :4])
    vid = np.full(n_nodes, -1, dtype=np.int64)
    vid[corners] = np.arange(corners.size)
    tets = vid[cells[:, :4]].astype(np.int32)
    # materials: one per distinct (E, nu)
    mats, mat_of = np.unique(np.column_stack([E, nu]), axis=0, return_inverse=True)
    mat_of = mat_of.ravel()
    fixed = np.zeros((n_nodes, 3), dtype=bool)
    fixed.reshape(-1)[bc_dofs] = True
    # boundary faces (corner triangles that belong to one tet), grouped by fixed components
    faces = np.sort(np.concatenate([tets[:, [1, 2, 3]], tets[:, [0, 2, 3]], tets[:, [0, 1, 3]],
                                    tets[:, [0, 1, 2]]]), axis=1)
    uniq, cnt = np.unique(faces, axis=0, return_counts=True)
    bfaces = uniq[cnt == 1]
    code = np.all(fixed[corners[bfaces]], axis=1) @ np.array([1, 2, 4])  # bit c: component c fixed

    t = time.perf_counter()
    m = Mesh(dim=3)
    m.AddPoints(np.ascontiguousarray(points[corners]))
    for k in range(len(mats)):
        m.SetMaterial(k + 1, f"m{k}")
    for k in range(len(mats)):
        m.AddElements(dim=3, index=k + 1, data=np.ascontiguousarray(tets[mat_of == k]), base=0)
    names = {}
    for c in np.unique(code):
        fd = m.Add(FaceDescriptor(bc=len(names) + 1, domin=1, surfnr=len(names) + 1))
        name = "bc" + "".join("xyz"[i] for i in range(3) if c >> i & 1) if c else "free"
        m.SetBCName(len(names), name)
        names[int(c)] = name
        m.AddElements(dim=2, index=fd, data=np.ascontiguousarray(bfaces[code == c]), base=0)
    mesh = ngs.Mesh(m)
    t_mesh = time.perf_counter() - t

    ngs.SetNumThreads(threads)
    out = {"threads": threads, "mesh_import_s": t_mesh}
    with ngs.TaskManager():
        t = time.perf_counter()
        dirich = ["|".join(nm for c, nm in names.items() if c >> i & 1) for i in range(3)]
        fes = ngs.VectorH1(mesh, order=2, dirichletx=dirich[0], dirichlety=dirich[1], dirichletz=dirich[2],
                           wb_withedges=False)
        _fix_stray_dofs(mesh, fes, fixed, corners, vid, cells, edges)
        u, v = fes.TnT()
        Em = ngs.CoefficientFunction([float(x) for x in mats[:, 0]])
        num = ngs.CoefficientFunction([float(x) for x in mats[:, 1]])
        mu = Em / (2 * (1 + num))
        lam = Em * num / ((1 + num) * (1 - 2 * num))
        eps_u, eps_v = ngs.Sym(ngs.Grad(u)), ngs.Sym(ngs.Grad(v))
        a = ngs.BilinearForm(fes, symmetric=True)
        a += (2 * mu * ngs.InnerProduct(eps_u, eps_v) + lam * ngs.Trace(eps_u) * ngs.Trace(eps_v)) * ngs.dx
        pre = ngs.Preconditioner(a, "bddc")
        a.Assemble()  # BDDC set-up happens here
        out["assembly_setup_s"] = time.perf_counter() - t
        nsc = fes.ndof // 3
        free = fes.FreeDofs()
        n_fixed = fes.ndof - free.NumSet()
        # prescribed values: vertex unknowns take fesim's nodal values; edge unknowns the
        # hierarchical bubble's share, zero when the values are linear along the edge
        gfu = ngs.GridFunction(fes)
        x = np.zeros(fes.ndof)
        ubc = np.zeros((n_nodes, 3))
        ubc.reshape(-1)[bc_dofs] = bc_values
        for c in range(3):
            x[c * nsc + np.arange(corners.size)] = ubc[corners, c]
        mids = cells[:, 4:].ravel()
        dev = np.abs(ubc[mids] - 0.5 * (ubc[cells[:, edges[:, 0]].ravel()]
                                         + ubc[cells[:, edges[:, 1]].ravel()]))[fixed[mids]].max(initial=0.0)
        if dev > 1e-12 * max(1.0, np.abs(bc_values).max()):
            raise SystemExit("ngsolve peer: prescribed values not linear along edges (not supported here)")
        gfu.vec.FV().NumPy()[:] = x
        A = a.mat
        proj = ngs.Projector(free, True)
        b = gfu.vec.CreateVector()
        b.data = -1.0 * (A * gfu.vec)
        b.data = proj * b
        t = time.perf_counter()
        xs, it, res = _pcg_ngsolve(A, pre.mat, proj, b)
        out["solve_s"] = time.perf_counter() - t
    gfu.vec.data += xs
    sol = gfu.vec.FV().NumPy().reshape(3, nsc)[:, :corners.size].T
    uc = u_ref.reshape(-1, 3)[corners]
    out.update(iterations=it, residual=res, ndof=fes.ndof, n_fixed=int(n_fixed),
               n_fixed_fesim=int(len(bc_dofs)), total_s=out["assembly_setup_s"] + out["solve_s"],
               rel_diff_corners=float(np.linalg.norm(sol - uc) / np.linalg.norm(uc)), peak_gb=_peak_gb())
    return out


def _fix_stray_dofs(mesh, fes, fixed, corners, vid, cells, edges):
    """Constrain the unknowns fesim fixes that lie on no fully fixed boundary face (e.g. a
    rim edge whose tets touch the plane only along that edge): clear their free bits."""
    import ngsolve as ngs

    free = fes.FreeDofs()
    nsc = fes.ndof // 3
    nv = corners.size
    for c in range(3):
        for v in np.flatnonzero(fixed[corners, c]):
            free.Clear(c * nsc + int(v))
    mids = cells[:, 4:].ravel()
    ends = cells[:, edges].reshape(-1, 2)
    mids, first = np.unique(mids, return_index=True)
    ends = vid[ends[first]]
    want = np.flatnonzero(fixed[mids].any(axis=1))
    for k in want:
        a, b = int(ends[k, 0]), int(ends[k, 1])
        for e in mesh[ngs.NodeId(ngs.VERTEX, a)].edges:
            if b in [vv.nr for vv in mesh[e].vertices]:
                for c in range(3):
                    if fixed[mids[k], c]:
                        free.Clear(c * nsc + nv + e.nr)
                break


def _pcg_ngsolve(A, P, proj, b, maxit=2000):
    """PCG stopping on the unpreconditioned residual ``||r|| <= RTOL ||b||``."""
    x, r, z, p, w = (b.CreateVector() for _ in range(5))
    x[:] = 0.0
    r.data = b
    bn = r.Norm()
    z.data = P * r
    p.data = z
    rz = r.InnerProduct(z)
    it = 0
    while r.Norm() > RTOL * bn and it < maxit:
        w.data = A * p
        w.data = proj * w
        alpha = rz / p.InnerProduct(w)
        x.data += alpha * p
        r.data -= alpha * w
        z.data = P * r
        rz_new = r.InnerProduct(z)
        p.data *= rz_new / rz
        p.data += z
        rz = rz_new
        it += 1
    w.data = A * x
    w.data = proj * w
    r.data = b - w
    return x, it, float(r.Norm() / bn)


def run_petsc(d: Path) -> dict:
    import petsc4py

    petsc4py.init(sys.argv[:1])
    from petsc4py import PETSc

    comm = PETSc.COMM_WORLD
    rank, size = comm.getRank(), comm.getSize()
    (n_dofs,) = _load(d, "n_dofs")
    N = int(n_dofs)
    data, indices, indptr, free, rhs, points, u_ref = _load(
        d, "K_data", "K_indices", "K_indptr", "free", "rhs", "points", "u", mmap=True)
    t = time.perf_counter()
    nb = N // 3  # node blocks, split evenly over the ranks
    b0 = rank * (nb // size) + min(rank, nb % size)
    b1 = b0 + nb // size + (rank < nb % size)
    r0, r1 = 3 * b0, 3 * b1
    fpos = np.full(N, -1, dtype=np.int64)
    fpos[np.asarray(free)] = np.arange(len(free))
    fl = fpos[r0:r1]
    isf = fl >= 0
    ip = np.asarray(indptr, dtype=np.int64)
    lens = np.ones(r1 - r0, dtype=np.int64)
    lens[isf] = ip[fl[isf] + 1] - ip[fl[isf]]
    lptr = np.zeros(r1 - r0 + 1, dtype=np.int64)
    np.cumsum(lens, out=lptr[1:])
    vals = np.empty(lptr[-1])
    cols = np.empty(lptr[-1], dtype=np.int32)
    fr = fl[isf]
    f0, f1 = (fr[0], fr[-1] + 1) if fr.size else (0, 0)
    src = np.arange(ip[f0], ip[f1])
    dst = np.repeat(lptr[:-1][isf] - ip[fr], ip[fr + 1] - ip[fr]) + src
    vals[dst] = data[ip[f0]:ip[f1]]
    cols[dst] = np.asarray(free)[indices[ip[f0]:ip[f1]]]
    # any positive scale gives an equivalent system; the rank's mean entry keeps it in range
    diag_scale = float(np.mean(np.abs(vals[dst]))) if dst.size else 1.0
    fixed_rows = np.flatnonzero(~isf)
    vals[lptr[fixed_rows]] = diag_scale
    cols[lptr[fixed_rows]] = r0 + fixed_rows
    A = PETSc.Mat().createAIJ(size=((r1 - r0, N), (r1 - r0, N)), bsize=3,
                              csr=(lptr.astype(PETSc.IntType), cols.astype(PETSc.IntType), vals), comm=comm)
    A.assemble()
    coords = PETSc.Vec().createWithArray(np.ascontiguousarray(points[b0:b1]).ravel(), size=(r1 - r0, N),
                                         bsize=3, comm=comm)
    A.setNearNullSpace(PETSc.NullSpace().createRigidBody(coords))
    b = A.createVecLeft()
    bl = np.zeros(r1 - r0)
    bl[isf] = np.asarray(rhs)[fr]
    b.setArray(bl)
    x = A.createVecRight()
    t_load = time.perf_counter() - t
    # GAMG's Chebyshev smoothers estimate their eigenvalue range by GMRES by default, which
    # under-estimates on these high-contrast models and made the preconditioner indefinite
    # (KSP_DIVERGED_INDEFINITE_PC at 0.3 M); CG estimates suit SPD matrices
    opts = PETSc.Options()
    opts.setValue("mg_levels_esteig_ksp_type", "cg")
    opts.setValue("mg_levels_esteig_ksp_max_it", 20)
    opts.setValue("mg_levels_ksp_chebyshev_esteig", "0,0.05,0,1.1")
    ksp = PETSc.KSP().create(comm)
    ksp.setOperators(A)
    ksp.setType("cg")
    ksp.getPC().setType("gamg")
    ksp.setNormType(PETSc.KSP.NormType.UNPRECONDITIONED)
    ksp.setTolerances(rtol=RTOL, atol=0.0, max_it=2000)
    ksp.setFromOptions()
    comm.barrier()
    t = time.perf_counter()
    ksp.setUp()
    comm.barrier()
    t_setup = time.perf_counter() - t
    t = time.perf_counter()
    ksp.solve(b, x)
    comm.barrier()
    t_solve = time.perf_counter() - t
    r = b.duplicate()
    A.mult(x, r)
    r.aypx(-1.0, b)
    res = r.norm() / b.norm()
    ul = np.array(u_ref[r0:r1])
    ul[~isf] = 0.0  # x is zero on the constrained unknowns (identity rows, zero right-hand side)
    uv = x.duplicate()
    uv.setArray(ul)
    un = uv.norm()
    uv.axpy(-1.0, x)
    mem = PETSc.Vec().createMPI((1, size), comm=comm)
    mem.setArray(np.array([_peak_gb()]))
    tot = (uv.norm(), un, mem.sum())
    if rank != 0:
        return {}
    return {"ranks": size, "load_s": t_load, "setup_s": t_setup, "solve_s": t_solve,
            "total_s": t_setup + t_solve, "iterations": ksp.getIterationNumber(),
            "reason": int(ksp.getConvergedReason()), "residual": float(res),
            "rel_diff": float(tot[0] / tot[1]), "peak_gb": float(tot[2])}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    peer, d = argv[0], Path(argv[1])
    threads = int(argv[argv.index("--threads") + 1]) if "--threads" in argv else 2
    out = run_ngsolve(d, threads) if peer == "ngsolve" else run_petsc(d)
    if out:
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
