"""``fesim demo``: a Tani-sized synthetic denosumab study (21 patients x months 0, 12, 24).

The cohort is :func:`fesim.synthetic.cohort.synthetic_cohort`: patients differing in anatomy,
density pattern and treatment response, every scan in a new pose, DXA simulated from the
patient model, a same-day repositioned repeat for a third of the patients (precision).

Each simulated visit is written as a real CT DICOM series (with fake patient identifiers, so
the outputs' de-identification is exercised), then analysed by the same study runner users
call on their own scans, and reported (``report.html``, ``summary.md``, ``stats.csv``).

The cohort generator is swappable: any callable ``cohort(n_patients, months, seed)`` returning
visit specs with ``patient``, ``month``, ``dxa_abmd_g_cm2`` and ``as_scan(path)`` works; a spec
with a ``write_image(folder) -> path`` method writes its own image, otherwise the phantom of
its ``phantom_seed`` and ``density_scale`` is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import logging
import math
import shutil
import time
from pathlib import Path

from ..results import KEYS
from .manifest import Study
from .runner import run_study
from ..synthetic.cohort import (SCAN_RODS_MG_CM3, SIMULATION_NOTE, mean_dxa_gain_percent,
                                synthetic_cohort)

log = logging.getLogger(__name__)

#: Demo settings (70 scans estimated at about 9.5 minutes on 2 idle cores, docs/study.md): tet4 elements,
#: 3 mm bulk / 1.5 mm screw-interface size, 'screening' secant accuracy (peaks ~5-10 % high),
#: no VTU files (``fesim demo --vtk`` writes them, and the per-patient ParaView series),
#: images of 1.0 x 1.0 x 1.5 mm voxels. Screening-grade numbers, not converged ones.
DEMO_OPTIONS = {"mesh_size_mm": 3.0, "screw_mesh_size_mm": 1.5, "element_order": 1,
                "strength_accuracy": "screening", "write_vtk": False,
                "rod_densities": SCAN_RODS_MG_CM3}
DEMO_SPACING_MM = (1.0, 1.0, 1.5)
#: Longitudinal-consistency mode of the demo: "mesh" (each follow-up registered to the
#: patient's baseline, analysed with the baseline's screws and mesh and its own densities),
#: the mode ``tests/test_longitudinal.py`` verifies; set explicitly, not left to the default.
DEMO_LONGITUDINAL = "mesh"
DEMO_NOTE = ("Demo settings (chosen to run 70 scans in about 10 minutes on 2 cores; follow-ups "
             "add a registration to their baseline): tet4 elements, "
             "3 mm bulk and 1.5 mm screw-interface element size, 'screening' secant accuracy, no "
             "VTU output, synthetic images of 1.0 x 1.0 x 1.5 mm voxels. These are screening-grade "
             "settings: tet4 is stiffer than the converged tet10 default and screening peaks run "
             "~5-10 % high.")


def _write_image(spec, folder: Path, spacing_mm) -> str:
    if hasattr(spec, "write_image"):
        try:
            params = inspect.signature(spec.write_image).parameters
        except (TypeError, ValueError):
            params = {}
        kw = {"spacing_mm": tuple(spacing_mm)} if "spacing_mm" in params else {}
        return str(spec.write_image(folder, **kw))
    from ..synthetic.phantom import PhantomSpec, make_phantom, write_phantom

    ph = make_phantom(PhantomSpec(seed=spec.phantom_seed, density_scale=spec.density_scale,
                                  spacing_mm=tuple(spacing_mm)))
    write_phantom(ph, folder)
    return str(folder / "dicom")


def _image_key(spec, spacing_mm) -> dict:
    """What one visit's image depends on: the fesim build (the generator is fesim code), the
    voxel size and, for a dataclass spec (whose repr is its fields), the spec."""
    from fesim.provenance import build_record

    key = {"fesim": build_record(), "spacing_mm": [float(v) for v in spacing_mm]}
    if dataclasses.is_dataclass(spec):
        key["spec_sha256"] = hashlib.sha256(repr(spec).encode("utf-8")).hexdigest()
    return key


def _prepare(spec, folder: Path, spacing_mm) -> dict:
    """Write one visit's image (unless a previous run wrote it with the same key) and return
    its scan dict.

    ``folder/.complete`` records the scan dict and :func:`_image_key` (JSON) once the image is
    written; an image of another fesim build, voxel size or spec is written anew.
    """
    done, key = folder / ".complete", _image_key(spec, spacing_mm)
    if done.exists():
        try:
            rec = json.loads(done.read_text(encoding="utf-8"))
        except ValueError:  # an older demo folder: the path only
            rec = None
        if isinstance(rec, dict) and rec.get("key") == key:
            return rec["scan"]
        shutil.rmtree(folder)
    path = _write_image(spec, folder, spacing_mm)
    scan = spec.as_scan(path)
    for k in ("density_scale", "phantom_seed"):
        scan.pop(k, None)
    done.write_text(json.dumps({"scan": scan, "key": key}), encoding="utf-8")
    return scan


def write_demo_inputs(out: Path, n_patients: int = 21, months=(0, 12, 24), seed: int = 0,
                      cohort=synthetic_cohort, spacing_mm=DEMO_SPACING_MM,
                      progress=None, n_workers: int = 1) -> list[dict]:
    """Write one image per simulated visit under ``out/inputs``; returns the scan list.

    Images already written by the same fesim build with the same spec and voxel size (a
    previous, interrupted demo) are reused; others are written anew. With ``n_workers > 1``
    the images (and the simulated DXA exams) are made in that many processes.
    """
    from fesim.progress import Progress

    specs = cohort(n_patients, months, seed=seed)
    folders = [Path(out) / "inputs" / (f"{s.patient}_m{s.month:02d}"
                                       + (f"_r{s.repeat}" if getattr(s, "repeat", 1) != 1 else ""))
               for s in specs]
    bar = Progress(len(specs), "demo inputs", "series", enabled=progress)
    scans = [None] * len(specs)
    if n_workers and n_workers > 1 and len(specs) > 1:
        from concurrent.futures import as_completed

        from ..resources import process_pool

        with process_pool(n_workers) as pool:
            futs = {pool.submit(_prepare, s, f, spacing_mm): i
                    for i, (s, f) in enumerate(zip(specs, folders))}
            for fut in as_completed(futs):
                scans[futs[fut]] = fut.result()
                bar.update()
    else:
        for i, (s, f) in enumerate(zip(specs, folders)):
            scans[i] = _prepare(s, f, spacing_mm)
            bar.update()
    bar.close()
    return scans


def demo_findings(rows) -> str:
    """What the demo found: per visit, r(pullout, screw vBMD) and r(pullout, DXA aBMD) with
    95 % CIs, the largest correlation among the BMD measures, and the mean DXA aBMD change."""
    from .stats import change_from_baseline, correlation
    from .tables import BMD_MEASURES, DXA_ABMD, POS, primary_rows

    rows = primary_rows(rows)
    months = sorted({int(r["month"]) for r in rows})
    measures = [m for m in (*BMD_MEASURES, KEYS.vbmd_integral_mg_cm3)
                if any(r.get(m) not in (None, "") for r in rows)]
    parts = []
    base = {r["patient"]: r for r in rows if int(r["month"]) == months[0]} if months else {}
    for m in months:
        mr = [r for r in rows if int(r["month"]) == m]
        col = lambda k: [r.get(k) for r in mr]  # noqa: E731
        txt = [f"month {m} (n={len(mr)}):"]
        for x, name in ((KEYS.vbmd_screw_mg_cm3, "screw vBMD"), (DXA_ABMD, "DXA aBMD")):
            c = correlation(col(x), col(POS))
            if math.isfinite(c.r) and math.isfinite(c.ci_low):
                txt.append(f"r(pullout, {name}) = {c.r:.2f} [{c.ci_low:.2f}, {c.ci_high:.2f}]")
        pairs = [(abs(r), a, b) for i, a in enumerate(measures) for b in measures[i + 1:]
                 if math.isfinite(r := correlation(col(a), col(b)).r)]
        if pairs:
            r, a, b = max(pairs)
            txt.append(f"largest |r| among the BMD measures {r:.2f} ({a} vs {b})")
        if m != months[0]:
            both = [(base[r["patient"]], r) for r in mr if r["patient"] in base]
            ch = change_from_baseline([b.get(DXA_ABMD) for b, _ in both],
                                      [f.get(DXA_ABMD) for _, f in both])
            if math.isfinite(ch.mean_pct):
                txt.append(f"simulated DXA aBMD change {ch.mean_pct:+.1f} % (FREEDOM mean "
                           f"{float(mean_dxa_gain_percent(m)):+.1f} %)")
        parts.append(txt[0] + " " + ", ".join(txt[1:]))
    return "Found in this synthetic cohort: " + "; ".join(parts) + "."


def run_demo(out_dir="demo_out", n_patients: int = 21, backend: str = "dask",
             n_workers: int | None = 2, options: dict | None = None, months=(0, 12, 24),
             seed: int = 0, cohort=synthetic_cohort, progress=None, run_one=None,
             longitudinal: str | None = DEMO_LONGITUDINAL) -> dict:
    """Simulate, analyse and report a cohort of ``n_patients`` x ``months``.

    ``longitudinal`` is the study's longitudinal-consistency mode ("off", "plan", "mesh";
    None: :func:`fesim.study.runner.run_study`'s default); the report states it. Returns a dict with the rows, the number of scans and the
    times (s) of the two phases.
    """
    from .cohort import load_results_csv
    from .report import write_report

    out = Path(out_dir)
    t0 = time.perf_counter()
    scans = write_demo_inputs(out, n_patients, months, seed, cohort, progress=progress,
                              n_workers=1 if backend == "local" else (n_workers or 1))
    t_inputs = time.perf_counter() - t0
    log.info("demo: %d synthetic QCT series ready in %.1f s", len(scans), t_inputs)
    opts = {**DEMO_OPTIONS, **(options or {})}
    notes = [SIMULATION_NOTE] + ([DEMO_NOTE] if opts == DEMO_OPTIONS else [])
    rows = run_study(Study(scans, opts, {}), out, backend=backend, n_workers=n_workers,
                     progress=progress, run_one=run_one, report=False, longitudinal=longitudinal)
    if rows:
        config = json.loads((out / "study.json").read_text(encoding="utf-8"))
        config.pop("n_scans", None)
        table = load_results_csv(out / "results.csv")
        write_report(table, out, notes=[*notes, demo_findings(table)], config=config)
    return {"rows": rows, "n_scans": len(scans), "inputs_s": t_inputs,
            "total_s": time.perf_counter() - t0}
