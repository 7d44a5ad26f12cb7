"""Cost of the nonlinear strength analyses relative to one linear solve, on the phantom L4.

    python benchmarks/strength.py [--mesh-size 2.0] [--screw-mesh-size 1.0] [--order 2]
                                  [--accuracy standard|screening] [--correction-rtol 0.5]
                                  [--set NAME=VALUE ...] [--reference] [--trace] [--timings]
                                  [--no-linear] [--cases compression,pullout_left,...]

Builds the phantom L4 (osteoporotic, density scale 0.65) with planned screws at the given
mesh sizes, times one complete linear solve (pattern, assembly, solver set-up, solve) of each
load case, then the whole secant strength analysis of each, and prints one table: linear
solves and CG iterations used, wall time, ratio to one linear solve, strength and surrogate.
``--set`` changes single :class:`~fesim.analysis.strength.StrengthSettings` (e.g.
``--set extrapolate=False``); ``--reference`` also runs fixed steps without extrapolation
(the ``standard`` preset up to commit a5d6f08) and prints the change of each peak.
``--trace`` prints every solve of each analysis (step, displacement / delta_q, force, CG
iterations, yielded volume); ``--no-linear`` skips the timed linear solves when only solve
counts and strengths are wanted.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from fesim.analysis.loadcases import BodyFrame, compression_case, pullout_case
from fesim.analysis.strength import ACCURACY, run_strength
from fesim.fem.assembly import Assembler
from fesim.fem.model import Model, StaticProblem
from fesim.synthetic.phantom import PhantomSpec, make_phantom
from fesim.imaging.planning import plan_screws
from fesim.imaging.segmentation import subregions
from fesim.mesh.materials import element_materials, map_bmd
from fesim.mesh.mesher import mesh_vertebra
from fesim.mesh.tetmesh import to_quadratic


def build(mesh_size, screw_size, order):
    ph = make_phantom(PhantomSpec(seed=0, density_scale=0.65))
    mask = ph.labels.with_data((ph.labels.data == 1).astype(np.uint8))
    regions = subregions(mask)
    screws = plan_screws(mask, regions=regions)
    mesh = mesh_vertebra(mask, screws, size_mm=mesh_size, screw_size_mm=screw_size)
    if order == 2:
        mesh = to_quadratic(mesh)
    mat = element_materials(mesh, map_bmd(mesh, ph.bmd, mask), ash_method="identity")
    bf = BodyFrame.from_regions(regions)
    cases = [compression_case(mesh, bf)] + [pullout_case(mesh, s, i, bf) for i, s in enumerate(screws)]
    return mesh, mat, cases


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mesh-size", type=float, default=2.0)
    ap.add_argument("--screw-mesh-size", type=float, default=1.0)
    ap.add_argument("--order", type=int, default=2, choices=[1, 2])
    ap.add_argument("--accuracy", default="standard", choices=ACCURACY.names())
    ap.add_argument("--solver", default="auto")
    ap.add_argument("--correction-rtol", type=float, default=None,
                    help="residual reduction of the warm-started secant solves (default: run_strength's)")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="one strength setting (value as JSON: 0.2, true, ...)")
    ap.add_argument("--trace", action="store_true",
                    help="print every solve: step, displacement / delta_q, force, CG iterations, yielded volume")
    ap.add_argument("--no-linear", action="store_true",
                    help="skip the timed linear solve of each case (solve counts and strengths only)")
    ap.add_argument("--timings", action="store_true", help="print each analysis's timing breakdown (s)")
    ap.add_argument("--cases", default=None, help="comma-separated case names (default: all)")
    ap.add_argument("--reference", action="store_true",
                    help="also run fixed 0.1 steps without extrapolation and print the peak change")
    args = ap.parse_args(argv)
    changes = {k: json.loads(v) for k, v in (a.split("=", 1) for a in args.set)}
    settings = ACCURACY[args.accuracy].settings.replace(solver=args.solver, **changes)
    mesh, mat, cases = build(args.mesh_size, args.screw_mesh_size, args.order)
    print(f"phantom L4, {mesh.n_elements} elements, {3 * mesh.n_nodes} unknowns, tet{4 if args.order == 1 else 10}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    head = f"{'case':<15}{'linear s':>10}{'nonlinear s':>13}{'ratio':>8}{'solves':>8}{'CG it':>7}{'steps':>7}" \
           f"{'conv':>6}{'strength N':>12}{'surrogate N':>13}" + (f"{'ref solves':>11}{'ref N':>9}{'change':>8}"
                                                                 if args.reference else "")
    print(head)
    print("-" * len(head))
    tot_lin = tot_nl = 0.0
    if args.cases:
        cases = [c for c in cases if c.name in args.cases.split(",")]
    traces, timings = {}, {}
    for case in cases:
        t = time.perf_counter()
        if not args.no_linear:
            m = Model(mesh, mat.E, mat.nu)
            case.apply(m)
            StaticProblem(m, solver=args.solver, rtol=1e-8).solve()
        t_lin = time.perf_counter() - t if not args.no_linear else float("nan")
        t = time.perf_counter()
        extra = {} if args.correction_rtol is None else {"correction_rtol": args.correction_rtol}
        traces[case.name] = tr = []
        r = run_strength(mesh, mat.E, mat.nu, case, settings=settings, assembler=Assembler(mesh.points, mesh.cells),
                         trace=tr, **extra)
        t_nl = time.perf_counter() - t
        timings[case.name] = r.timings_s
        tot_lin, tot_nl = tot_lin + t_lin, tot_nl + t_nl
        ref = ""
        if args.reference:
            fixed = settings.replace(step_fraction=0.1, min_step_fraction=None, max_step_fraction=None,
                                     extrapolate=False)
            r0 = run_strength(mesh, mat.E, mat.nu, case, settings=fixed, assembler=Assembler(mesh.points, mesh.cells), **extra)
            ref = f"{r0.n_solves:>11}{r0.strength_N:>9.1f}{100 * (r.strength_N / r0.strength_N - 1):>7.2f}%"
        print(f"{case.name:<15}{t_lin:>10.2f}{t_nl:>13.2f}{t_nl / t_lin:>8.1f}{r.n_solves:>8}{r.cg_iterations:>7}"
              f"{r.n_steps:>7}{r.converged_steps:>6}{r.strength_N:>12.1f}{r.surrogate_strength_N:>13.0f}{ref}")
    if args.timings:
        for name, tm in timings.items():
            print(name, " ".join(f"{k} {v:.2f}" for k, v in tm.items()))
    if args.trace:
        for name, tr in traces.items():
            print(f"\n{name}: {'solve':>5}{'step':>5}{'delta/dq':>9}{'force N':>10}{'CG':>4}{'yielded %':>10}")
            for e in tr:
                print(f"{'':<{len(name) + 2}}{e['solve']:>5}{e['step']:>5}{e['delta']:>9.3f}{e['force']:>10.1f}"
                      f"{e['cg']:>4}{100 * e['yielded']:>10.3f}")
    n_lin = tot_lin / len(cases)
    print(f"all {len(cases)} analyses: {tot_nl:.1f} s = {tot_nl / n_lin:.1f} x one linear solve "
          f"(compression + one pullout: {(tot_nl / len(cases) * 2) / n_lin:.1f} x, averaged)")


if __name__ == "__main__":
    main()
