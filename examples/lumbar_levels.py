"""Analyse every lumbar level of a labelled CT: strengths, supports and a table.

    python examples/lumbar_levels.py CT.nii.gz LABELS.nii.gz OUT_DIR [--levels L1,L2,...]
        [--protocol fesim|spine-benchmark] [--caps none|pmma] [--quick]

Each level is run through ``fesim.pipeline.run_scan`` (phantomless calibration, the label
map's TotalSegmentator numbering) into ``OUT_DIR/<level>/`` with its result.json, VTU files
and boundary-condition pictures (``*_bc.png``); ``OUT_DIR/levels.csv`` gathers one row per
level: strengths and stiffnesses, vBMD, and where each model is held and driven (area and
axial extent of the support sets). A level that cannot be analysed (truncated by the image
border, a screw that does not fit...) gets its one-line reason in the table instead.
``--quick`` uses tet4, 3 mm elements and screening accuracy (minutes instead of tens of
minutes per level): for a first look, not for numbers to report.
"""

import argparse
import csv
import sys
from pathlib import Path

from fesim.errors import FesimError
from fesim.pipeline import run_scan
from fesim.results import KEYS, UNSET, ScanResult

QUICK = dict(element_order=1, mesh_size_mm=3.0, screw_mesh_size_mm=1.5, strength_accuracy="screening")
RESULT_COLUMNS = [KEYS.pullout_strength_N, KEYS.pullout_stiffness_N_per_mm, KEYS.compression_strength_N,
                  KEYS.compression_stiffness_N_per_mm, KEYS.benchmark_failure_load_N,
                  KEYS.benchmark_stiffness_N_per_mm, KEYS.vbmd_trabecular_mg_cm3, KEYS.vbmd_screw_mg_cm3]
COLUMNS = ["level", *RESULT_COLUMNS, "held_area_mm2", "held_axial_extent_mm", "driven_area_mm2",
           "driven_axial_extent_mm", "supports_on", "error"]


def analyse_levels(ct, labels, out, levels=("L1", "L2", "L3", "L4", "L5"), quick=False, **options):
    """Run each level; returns the table rows (dicts with :data:`COLUMNS`) and writes levels.csv."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for level in levels:
        row = {"level": level}
        try:
            res = run_scan(ct, out / level, labels=str(labels), level=level, calibration="internal",
                           **{**(QUICK if quick else {}), **options})
        except FesimError as exc:
            row["error"] = str(exc)
            print(f"{level}: not analysed: {exc}")
            rows.append(row)
            continue
        r = ScanResult.from_dict(res)
        row.update({k: res[k] for k in RESULT_COLUMNS if k in res})
        bc = r.analyses["compression"].boundary_conditions
        row.update(held_area_mm2=bc["fixed"]["area_mm2"], held_axial_extent_mm=bc["fixed"]["axial_extent_mm"],
                   driven_area_mm2=bc["driven"]["area_mm2"], driven_axial_extent_mm=bc["driven"]["axial_extent_mm"],
                   supports_on=bc["fixed"]["on"])
        print(f"{level}: compression {r.compression_strength_N:.0f} N "
              f"({r.compression_stiffness_N_per_mm:.0f} N/mm)"
              + (f", pullout {r.pullout_strength_N:.0f} N" if r.has_screws else "")
              + (f", benchmark failure load {r.benchmark_failure_load_N:.0f} N"
                 if r.benchmark_failure_load_N is not UNSET else "")
              + f"; held on {bc['fixed']['area_mm2']:.0f} mm2 of {bc['fixed']['on']}")
        rows.append(row)
    with open(out / "levels.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ct")
    ap.add_argument("labels")
    ap.add_argument("out")
    ap.add_argument("--levels", default="L1,L2,L3,L4,L5")
    ap.add_argument("--protocol", default="fesim")
    ap.add_argument("--caps", default="none")
    ap.add_argument("--strength", default="nonlinear", choices=["nonlinear", "surrogate"])
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    return analyse_levels(a.ct, a.labels, a.out, levels=a.levels.split(","), quick=a.quick,
                          protocol=a.protocol, caps=a.caps, strength=a.strength)


if __name__ == "__main__":
    main(sys.argv[1:])
