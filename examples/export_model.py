"""Mesh a vertebra with a screw and export it for CalculiX/Abaqus, FEBio and ParaView.

    python examples/export_model.py [OUT_DIR]

Uses the synthetic phantom's ground-truth mask and density; with real data, take the mask
from ``fesim.imaging.segmentation`` and the BMD volume from ``fesim.imaging.calibration``.
"""

import sys
from pathlib import Path

import numpy as np

from fesim.synthetic.phantom import PhantomSpec, make_phantom
from fesim.imaging.planning import plan_screws
from fesim.imaging.segmentation import subregions
from fesim.io.abaqus import write_inp
from fesim.io.febio import write_feb
from fesim.io.vtk import write_vtu
from fesim.mesh.materials import element_materials, map_bmd
from fesim.mesh.mesher import mesh_vertebra
from fesim.mesh.quality import quality_report


def main(out="example_export"):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ph = make_phantom(PhantomSpec(seed=2))
    mask = ph.labels.with_data((ph.labels.data == 1).astype(np.uint8))
    screws = plan_screws(mask, regions=subregions(mask), sides=("right",))
    mesh = mesh_vertebra(mask, screws, size_mm=2.5, screw_size_mm=1.0)
    bmd = map_bmd(mesh, ph.bmd, mask)
    mat = element_materials(mesh, bmd, law="keyak", ash_method="identity")
    q = quality_report(mesh)
    print(f"{mesh.n_elements} tetrahedra, {mesh.n_nodes} nodes, min dihedral {q['min_dihedral_deg']:.1f} deg")
    write_vtu(out / "model.vtu", mesh, {"bmd_mg_cm3": bmd, "E_MPa": mat.E})
    err_inp = write_inp(out / "model.inp", mesh, mat.E, mat.nu, n_bins=40)
    err_feb = write_feb(out / "model.feb", mesh, mat.E, mat.nu, n_bins=40)
    print(f"written model.vtu, model.inp (binning error {err_inp}), model.feb")
    return mesh


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "example_export")
