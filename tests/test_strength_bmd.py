"""Strength and stiffness of a phantom L4 rise monotonically with BMD (same mesh, BMD scaled)."""

import numpy as np
import pytest

from fesim.analysis.loadcases import BodyFrame, compression_case, pullout_case
from fesim.analysis.strength import run_strength
from fesim.synthetic.phantom import PhantomSpec, make_phantom
from fesim.imaging.planning import plan_screws
from fesim.imaging.segmentation import subregions
from fesim.mesh.materials import element_materials, map_bmd
from fesim.mesh.mesher import mesh_vertebra


@pytest.mark.slow
def test_strength_rises_with_bmd():
    ph = make_phantom(PhantomSpec(seed=1, density_scale=0.65))
    mask = ph.labels.with_data((ph.labels.data == 1).astype(np.uint8))
    regions = subregions(mask)
    screws = plan_screws(mask, regions=regions, sides=("left",))
    mesh = mesh_vertebra(mask, screws, size_mm=3.0, screw_size_mm=1.5)
    bf = BodyFrame.from_regions(regions)
    cases = [compression_case(mesh, bf), pullout_case(mesh, screws[0], 0, bf)]
    base = map_bmd(mesh, ph.bmd, mask)
    out = {c.name: [] for c in cases}
    for scale in (1.0, 1.05, 1.10):
        mat = element_materials(mesh, base * scale, ash_method="identity")
        for c in cases:
            r = run_strength(mesh, mat.E, mat.nu, c)
            out[c.name].append((r.stiffness_N_per_mm, r.strength_N, r.surrogate_strength_N))
    for name, rows in out.items():
        k, s, sur = np.array(rows).T
        assert np.all(np.diff(k) > 0), (name, k)
        assert np.all(np.diff(s) > 0), (name, s)
        assert np.all(np.diff(sur) > 0), (name, sur)
