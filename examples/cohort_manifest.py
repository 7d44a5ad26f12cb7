"""Run a small cohort from a CSV manifest, as users do with their own scans.

    python examples/cohort_manifest.py [OUT_DIR] [--quick]

The manifest lists one scan per row (patient, month, path to a DICOM folder or NIfTI file,
optionally a DXA areal BMD). Here two synthetic patients at months 0 and 12 are written
first; with your own data, write the manifest and call ``fesim cohort manifest.csv --out DIR``.
Interrupt it and run it again: finished scans are not recomputed.
"""

import csv
import sys
from pathlib import Path

from fesim.synthetic.phantom import PhantomSpec, make_phantom, write_phantom
from fesim.study.cohort import load_manifest, run_cohort
from fesim.results import KEYS
from fesim.study.report import write_report


def main(out="example_cohort", quick=False):
    out = Path(out)
    rows = []
    for patient, seed, base in (("P01", 11, 0.60), ("P02", 12, 0.72)):
        for month, gain in ((0, 1.0), (12, 1.08)):
            folder = out / "scans" / f"{patient}_m{month}"
            write_phantom(make_phantom(PhantomSpec(seed=seed, density_scale=base * gain)), folder)
            rows.append({"patient": patient, "month": month, "path": str(folder / "dicom"),
                         "dxa_abmd_g_cm2": round(0.70 * (base * gain) ** 0.5, 3)})
    manifest = out / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    options = dict(mesh_size_mm=3.0, screw_mesh_size_mm=1.5, element_order=1, screws="left",
                   strength="surrogate", write_vtk=False) if quick else {}
    results = run_cohort(load_manifest(manifest), out / "study", backend="local", options=options)
    write_report(results, out / "study")
    for r in results:
        print(f"{r['patient']} month {r['month']:>2}: screw vBMD {r[KEYS.vbmd_screw_mg_cm3]:.0f} mg/cm^3, "
              f"pullout {r[KEYS.pullout_strength_N]:.0f} N")
    return results


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    main(args[0] if args else "example_cohort", quick="--quick" in sys.argv)
