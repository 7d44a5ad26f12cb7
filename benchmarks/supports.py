"""Where the real CT's lumbar levels are held and driven: the table of docs/supports.md.

Run from the project root::

    python benchmarks/supports.py [--levels L1,L2,L3,L4,L5] [--caps none|pmma] [--mesh-size 2]

For each level of the TotalSegmentator example CT (``FESIM_TEST_DATA`` or
``../shared/data/totalsegmentator``; internal calibration): mesh (tet, no screws), the
compression case's support sets and their audit (area, coverage of the footprint, axial extent,
tilt of the end plane), and the time the support search took. No FE solve.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fesim.analysis.loadcases import BodyFrame, compression_case  # noqa: E402
from fesim.imaging.segmentation import subregions  # noqa: E402
from fesim.mesh.caps import assign_cap_regions  # noqa: E402
from fesim.mesh.mesher import mesh_vertebra  # noqa: E402
from fesim.pipeline import RunOptions, calibrate, end_caps, load_image, segment  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--levels", default="L1,L2,L3,L4,L5")
    p.add_argument("--caps", default="none", choices=["none", "pmma"])
    p.add_argument("--mesh-size", type=float, default=2.0, help="mm (default 2)")
    a = p.parse_args(argv)
    env = os.environ.get("FESIM_TEST_DATA")
    data = (Path(env) if env else ROOT.parent / "shared" / "data") / "totalsegmentator"
    if not (data / "example_ct.nii.gz").is_file():
        print(f"real CT not found in {data}")
        return 1
    opts = RunOptions(labels=str(data / "example_ct_labels.nii.gz"), calibration="internal", caps=a.caps)
    bmd = calibrate(load_image(data / "example_ct.nii.gz", opts), opts)[1]
    print(f"caps {a.caps}, tet mesh {a.mesh_size:g} mm; per set: area mm^2 / coverage / axial extent mm / tilt deg")
    print(f"{'level':6s} {'held':>32s} {'driven':>32s} {'search s':>9s}")
    for level in a.levels.split(","):
        o = RunOptions(**{**opts.__dict__, "level": level})
        mask, labels = segment(bmd, o)
        regions = subregions(mask)
        cm = end_caps(mask, labels, regions, regions.meta["frame"], o)
        body = mask if cm is None else mask.with_data(((mask.data > 0) | (cm[0].data > 0) | (cm[1].data > 0))
                                                      .astype(np.uint8))
        mesh = mesh_vertebra(body, [], size_mm=a.mesh_size)
        if cm is not None:
            mesh = assign_cap_regions(mesh, *cm)
        t0 = time.perf_counter()
        case = compression_case(mesh, BodyFrame.from_regions(regions))
        dt = time.perf_counter() - t0
        cols = [f"{s['area_mm2']:6.0f} / {s['coverage']:.2f} / {s['axial_extent_mm']:4.1f} / {s['tilt_deg']:4.1f}"
                for s in (case.audit["fixed"], case.audit["driven"])]
        print(f"{level:6s} {cols[0]:>32s} {cols[1]:>32s} {dt:9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
