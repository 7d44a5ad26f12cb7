"""Tet model against voxel (hex8) model of the same scan: compression stiffness and strength.

Run from the project root::

    python benchmarks/tet_vs_voxel.py [--levels phantom,L1,L2,L3,L4,L5] [--accuracy screening]
                                      [--voxel-size 1.0] [--strength nonlinear] [--out DIR]

``phantom`` is the synthetic QCT phantom (:mod:`fesim.synthetic.phantom`, phantom calibration);
``L1``-``L5`` are lumbar levels of the TotalSegmentator example CT (``FESIM_TEST_DATA``, or where
``tests/conftest.py`` finds the tests' data) with its label map and internal calibration. Every case
uses PMMA caps and no screws; the tet model has fesim's default mesh (tet10, 2 mm), the voxel
model one hex8 per voxel of ``--voxel-size`` (default: the pipeline's, 1 mm for these
images). A level that cannot be run is skipped with a one-line reason.

The two models share calibration, segmentation, caps, material law, boundary conditions,
solver and strength analysis; they differ in the geometry (smoothed conforming surface
against voxel staircase) and in how the BMD reaches the elements (mass-conserving
quadrature against the voxel value). Cross-check target: stiffness within 10 %, strength
within 15 %.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fesim.errors import FesimError  # noqa: E402
from fesim.mesh.tetmesh import REGION_BONE  # noqa: E402
from fesim.pipeline import run_scan  # noqa: E402
from fesim.results import ScanResult  # noqa: E402


def _data_dir() -> Path:
    env = os.environ.get("FESIM_TEST_DATA")
    return (Path(env) if env else ROOT.parent / "shared" / "data") / "totalsegmentator"


def _scan(level: str, work: Path):
    """(scan path, options) of one level, or raise FesimError/FileNotFoundError with the reason."""
    common = dict(caps="pmma", screws="none", write_vtk=False)
    if level == "phantom":
        from fesim.synthetic.phantom import PhantomSpec, make_phantom, write_phantom

        d = work / "phantom"
        if not (d / "dicom").is_dir():
            write_phantom(make_phantom(PhantomSpec(seed=3, density_scale=0.65)), d)
        return d / "dicom", common
    data = _data_dir()
    ct, labels = data / "example_ct.nii.gz", data / "example_ct_labels.nii.gz"
    if not (ct.is_file() and labels.is_file()):
        raise FileNotFoundError(f"real CT not found in {data}")
    return ct, dict(common, labels=str(labels), level=level, calibration="internal")


def run_level(level: str, work: Path, accuracy: str, voxel_size, strength: str) -> dict:
    scan, opts = _scan(level, work)
    opts = dict(opts, strength_accuracy=accuracy, strength=strength)
    out = {}
    for kind, extra in (("tet", {}), ("voxel", dict(mesh="voxel", voxel_size_mm=voxel_size))):
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = run_scan(scan, work / f"{level}_{kind}", **opts, **extra)
        r = ScanResult.from_dict(res)
        out[kind] = dict(k=r.compression_stiffness_N_per_mm, F=r.compression_strength_N,
                         n=r.n_elements, t=time.perf_counter() - t, type=r.mesh_type,
                         bone=r.mesh_quality["volume_per_region_mm3"].get(REGION_BONE, float("nan")))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--levels", default="phantom,L1,L2,L3,L4,L5", help="comma-separated: phantom, L1..L5")
    p.add_argument("--accuracy", default="standard", choices=["standard", "screening"])
    p.add_argument("--strength", default="nonlinear", choices=["nonlinear", "surrogate"])
    p.add_argument("--voxel-size", type=float, default=None, help="voxel edge, mm (default: pipeline's)")
    p.add_argument("--out", help="work folder (default: a temporary one)")
    a = p.parse_args(argv)
    work = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="tet_vs_voxel_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"accuracy {a.accuracy}, strength {a.strength}, voxel size {a.voxel_size or 'default'}, work {work}")
    hdr = (f"{'level':8s} {'k_tet':>9s} {'k_vox':>9s} {'ratio':>6s} {'F_tet':>8s} {'F_vox':>8s} {'ratio':>6s} "
           f"{'V_tet':>8s} {'V_vox':>8s} {'n_tet':>8s} {'n_vox':>8s} {'t_tet':>6s} {'t_vox':>6s}")
    print(hdr)
    print("-" * len(hdr))
    for level in [v.strip() for v in a.levels.split(",") if v.strip()]:
        try:
            r = run_level(level, work, a.accuracy, a.voxel_size, a.strength)
        except (FesimError, FileNotFoundError) as exc:
            print(f"{level:8s} skipped: {exc}")
            continue
        t, v = r["tet"], r["voxel"]
        print(f"{level:8s} {t['k']:9.0f} {v['k']:9.0f} {v['k'] / t['k']:6.3f} {t['F']:8.0f} {v['F']:8.0f} "
              f"{v['F'] / t['F']:6.3f} {t['bone']:8.0f} {v['bone']:8.0f} {t['n']:8d} {v['n']:8d} "
              f"{t['t']:6.0f} {v['t']:6.0f}", flush=True)
    print("k: compression stiffness N/mm; F: compression strength N; V: bone volume mm^3; "
          "n: elements; t: wall time s (whole run_scan); ratio = voxel / tet")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
