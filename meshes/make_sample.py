"""Regenerate meshes/L4_phantom_screw.vtu: the synthetic L4 phantom with one left screw.

Run from the project root: ``python meshes/make_sample.py``.
"""

from pathlib import Path

import numpy as np

from fesim.synthetic.phantom import PhantomSpec, make_phantom
from fesim.imaging.screwplan import ScrewPlan
from fesim.io.vtk import write_vtu
from fesim.mesh.materials import map_bmd
from fesim.mesh.mesher import mesh_vertebra
from fesim.mesh.quality import quality_report

ph = make_phantom(PhantomSpec(rods_mg_cm3=None))
mask = ph.labels.with_data((ph.labels.data == 1).astype(np.uint8))
lm = ph.landmarks
axis = np.asarray(lm["pedicle_axis_left"], float)
screw = ScrewPlan("left", entry=np.asarray(lm["pedicle_left"]) - 15.0 * axis, direction=axis)
mesh = mesh_vertebra(mask, [screw])
bmd = map_bmd(mesh, ph.bmd, mask)
out = write_vtu(Path(__file__).with_name("L4_phantom_screw.vtu"), mesh, cell_data={"bmd_mg_cm3": bmd})
print(out, quality_report(mesh))
