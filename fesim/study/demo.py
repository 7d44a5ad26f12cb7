"""``fesim demo``: a synthetic denosumab cohort run through the whole chain.

Each simulated visit is written as a real CT DICOM series (with fake patient identifiers,
so the outputs' de-identification is exercised), then analysed by the same cohort runner
users call on their own scans, and summarised in ``summary.md``.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..imaging.phantom import PhantomSpec, make_phantom, write_phantom
from .cohort import run_cohort
from .report import write_report
from .synthetic import SIMULATION_NOTE, synthetic_cohort


def write_demo_inputs(out: Path, n_patients: int = 4, months=(0, 12, 24), seed: int = 0) -> list[dict]:
    """Write one DICOM series per simulated visit under ``out/inputs``; returns the scan list.

    Series already written (a previous, interrupted demo) are reused.
    """
    scans = []
    for spec in synthetic_cohort(n_patients, months, seed=seed):
        folder = out / "inputs" / f"{spec.patient}_m{spec.month:02d}"
        done = folder / ".complete"
        if not done.exists():
            ph = make_phantom(PhantomSpec(seed=spec.phantom_seed, density_scale=spec.density_scale))
            write_phantom(ph, folder)
            done.touch()
        scan = spec.as_scan(str(folder / "dicom"))
        for k in ("density_scale", "phantom_seed"):
            scan.pop(k, None)
        scans.append(scan)
    return scans


def run_demo(out_dir="demo_out", n_patients: int = 4, backend: str = "processes", n_workers: int | None = 2,
             options: dict | None = None) -> list[dict]:
    """Simulate, analyse and report a cohort of ``n_patients`` x months 0, 12, 24."""
    out = Path(out_dir)
    t0 = time.perf_counter()
    scans = write_demo_inputs(out, n_patients)
    print(f"[demo] {len(scans)} synthetic QCT series ready in {time.perf_counter() - t0:.1f} s")
    rows = run_cohort(scans, out, backend=backend, n_workers=n_workers, options=options or {})
    write_report(rows, out, notes=[SIMULATION_NOTE])
    print(f"[demo] {len(rows)}/{len(scans)} scans analysed in {time.perf_counter() - t0:.1f} s; "
          f"results: {out / 'results.csv'}, report: {out / 'summary.md'}")
    return rows
