"""A default ``fesim run`` on the phantom and on a real L4: time, solves and memory per stage.

    python benchmarks/scan.py [--scans phantom real] [--data DIR] [--json out.json]

For each scan, two runs in fresh subprocesses (so that peak memory is per run):

* the default run (nonlinear strength: compression and both pullouts, outputs written);
* the same run with ``strength="surrogate"``, where each analysis is exactly one linear solve
  of the same model (assembly, solver set-up, solve): its time per analysis is the
  denominator of the "ratio to one linear solve".

Printed per stage (read ... write) and per analysis: linear solves used, wall time, ratio to
one linear solve, and each run's peak memory (``ru_maxrss``). The real scan is the L4 of the
TotalSegmentator example (located like the tests do, ``tests/conftest.py``); it is skipped
with a line when the data are absent. Quote ratios from one invocation: the machine may be
shared (the load average is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

CASES = ("compression", "pullout_left", "pullout_right")


def real_data_dir() -> Path:
    """The TotalSegmentator example folder, located as ``tests/conftest.py`` does."""
    env = os.environ.get("FESIM_TEST_DATA")
    return (Path(env) if env else ROOT.parent / "shared" / "data") / "totalsegmentator"


def worker(scan: str, labels: str | None, out: str, strength: str) -> dict:
    from fesim.pipeline import run_scan

    opts = {"strength": strength}
    if labels:
        opts["labels"] = labels
    t = time.perf_counter()
    res = run_scan(scan, out, **opts)
    wall = time.perf_counter() - t
    an = res["analyses"]
    return {"wall_s": wall, "timings_s": res["timings_s"], "n_dofs": res["n_dofs"],
            "solves": {k: an[k].get("n_solves") for k in an},
            "cg_iterations": {k: an[k].get("cg_iterations") for k in an},
            "strength_N": {k: an[k].get("strength_N") for k in an},
            "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9}


def _child(scan, labels, out, strength) -> dict:
    cmd = [sys.executable, __file__, "--worker", str(scan), str(labels or ""), str(out), strength]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["?"])[-1][:120]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def format_scan(name: str, full: dict, lin: dict) -> str:
    if "error" in full or "error" in lin:
        return f"{name}: failed: {full.get('error') or lin.get('error')}"
    lines = [f"## {name}: {full['n_dofs']:,} unknowns; default run {full['wall_s']:.1f} s wall, "
             f"peak {full['peak_gb']:.2f} GB (surrogate run {lin['wall_s']:.1f} s, {lin['peak_gb']:.2f} GB)",
             "", "| stage | s | solves (CG it) | one linear solve s (CG it) | ratio |", "|---|---|---|---|---|"]
    tot_nl = tot_lin = 0.0
    for stage, s in full["timings_s"].items():
        if stage in full["solves"]:
            one = lin["timings_s"].get(stage)
            tot_nl += s
            tot_lin += one or 0.0
            ratio = f"{s / one:.1f}x" if one else "-"
            its, its1 = full.get("cg_iterations", {}).get(stage), lin.get("cg_iterations", {}).get(stage)
            lines.append(f"| {stage} | {s:.1f} | {full['solves'][stage]} ({its}) | {one:.1f} ({its1}) | {ratio} |")
        else:
            lines.append(f"| {stage} | {s:.1f} | | | |")
    n = len(full["solves"])
    if tot_lin > 0:
        lines.append(f"| all {n} analyses | {tot_nl:.1f} | {sum(full['solves'].values())} | "
                     f"{tot_lin / n:.1f} (mean) | {tot_nl / (tot_lin / n):.1f}x |")
    lines.append("")
    lines.append("strengths (N): " + ", ".join(f"{k} {v:.0f}" for k, v in full["strength_N"].items()
                                                 if v is not None))
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scans", nargs="+", default=["phantom", "real"], choices=["phantom", "real"])
    ap.add_argument("--data", type=Path, default=None, help="TotalSegmentator example folder")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        scan, labels, out, strength = args.worker
        print(json.dumps(worker(scan, labels or None, out, strength)))
        return 0
    load = os.getloadavg()
    print(f"# fesim scan benchmark: {os.cpu_count()} cores, load average {load[0]:.1f} / {load[1]:.1f} / "
          f"{load[2]:.1f} (1 / 5 / 15 min) at the start", flush=True)
    results = {}
    with tempfile.TemporaryDirectory(prefix="fesim-scan-bench-") as tmp:
        tmp = Path(tmp)
        for name in args.scans:
            if name == "phantom":
                from fesim.synthetic.phantom import PhantomSpec, make_phantom, write_phantom

                scan, labels = write_phantom(make_phantom(PhantomSpec()), tmp / "phantom"), None
            else:
                d = args.data or real_data_dir()
                if not (Path(d) / "example_ct.nii.gz").exists():
                    print("real L4: skipped (TotalSegmentator example data not found)")
                    continue
                scan, labels = Path(d) / "example_ct.nii.gz", Path(d) / "example_ct_labels.nii.gz"
            full = _child(scan, labels, tmp / f"{name}_full", "nonlinear")
            lin = _child(scan, labels, tmp / f"{name}_lin", "surrogate")
            results[name] = {"default": full, "surrogate": lin}
            print(format_scan("phantom L4" if name == "phantom" else "real L4 (TotalSegmentator example)",
                              full, lin), flush=True)
    load = os.getloadavg()
    print(f"load average at the end: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
