"""Study throughput: scans per hour with 1 and 2 workers, and their ratio.

    python benchmarks/study.py [--scans 6] [--backend dask] [--settings demo|quick] [--out DIR]

Runs the same synthetic scans (the demo's cohort generator and settings by default) twice,
through ``fesim.study.runner.run_study`` with 1 and with 2 workers, each in a fresh output
folder, and prints wall time, scans/hour and the 2-worker / 1-worker ratio. The per-scan CPU
times (from each scan's ``scan.log``) and the load average are printed too: on a shared
machine the wall-clock ratio says more about the other jobs than about fesim, and the CPU
time per scan is the figure to extrapolate from.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from fesim.study.demo import DEMO_OPTIONS, write_demo_inputs
from fesim.study.manifest import Study
from fesim.study.runner import run_study

QUICK = {"mesh_size_mm": 3.0, "screw_mesh_size_mm": 1.5, "element_order": 1, "strength": "surrogate"}
_DONE = re.compile(r"scan \S+ done in ([0-9.]+) s \(CPU ([0-9.]+) s\)")


def scan_times(out: Path) -> list[tuple[float, float]]:
    """(wall s, CPU s) of every scan, read from the scans' logs."""
    times = []
    for log in sorted(out.glob("scans/*/scan.log")):
        m = _DONE.search(log.read_text(encoding="utf-8"))
        if m:
            times.append((float(m.group(1)), float(m.group(2))))
    return times


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scans", type=int, default=6, help="scans per configuration (even; default 6)")
    ap.add_argument("--backend", default="dask", choices=["processes", "dask"])
    ap.add_argument("--settings", default="demo", choices=["demo", "quick"])
    ap.add_argument("--out", help="work folder (default: a temporary one, removed)")
    a = ap.parse_args(argv)
    work = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="fesim-bench-study-"))
    opts = DEMO_OPTIONS if a.settings == "demo" else QUICK
    n_patients = max(1, a.scans // 3 + (a.scans % 3 > 0))
    scans = write_demo_inputs(work, n_patients=n_patients)[: a.scans]
    print(f"{len(scans)} scans, settings {a.settings} {opts}, backend {a.backend}, "
          f"{os.cpu_count()} CPUs")
    rate = {}
    try:
        for workers in (1, 2):
            out = work / f"w{workers}"
            shutil.rmtree(out, ignore_errors=True)
            load0 = os.getloadavg()[0]
            t0 = time.perf_counter()
            rows = run_study(Study(scans, dict(opts), {}), out, backend=a.backend,
                             n_workers=workers, report=False, progress=False)
            wall = time.perf_counter() - t0
            per = scan_times(out)
            cpu = statistics.median(c for _, c in per) if per else float("nan")
            rate[workers] = len(rows) / wall * 3600
            print(f"{workers} worker(s): {len(rows)} scans analysed ({len(scans) - len(rows)} refused, "
                  f"see {out.name}/failures.json) in {wall:.1f} s -> {rate[workers]:.0f} "
                  f"scans/hour; per scan median wall {statistics.median(w for w, _ in per):.1f} s, "
                  f"CPU {cpu:.1f} s; load average {load0:.1f} -> {os.getloadavg()[0]:.1f}")
        print(f"ratio 2 / 1 workers: {rate[2] / rate[1]:.2f}")
    finally:
        if not a.out:
            shutil.rmtree(work, ignore_errors=True)
    return rate


if __name__ == "__main__":
    main()
