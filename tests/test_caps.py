"""End caps for compression: generated PMMA layers and caps taken from label values."""

import numpy as np
import pytest

from fesim.errors import FesimError
from fesim.synthetic.phantom import PhantomSpec, make_phantom, write_phantom
from fesim.io.vtk import read_vtu
from fesim.mesh.tetmesh import REGION_CAP_LOWER, REGION_CAP_UPPER
from fesim.pipeline import run_scan

QUICK = dict(mesh_size_mm=3.0, screw_mesh_size_mm=1.5, element_order=1, screws="none", strength="surrogate")


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    root = tmp_path_factory.mktemp("caps")
    write_phantom(make_phantom(PhantomSpec(seed=4, density_scale=0.65)), root)
    return root


def _cap_volumes(out):
    mesh, cells, _ = read_vtu(out / "compression.vtu")
    p = mesh.points[mesh.cells]
    a, b, c = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0], p[:, 3] - p[:, 0]
    vol = np.abs(np.einsum("ij,ij->i", a, np.cross(b, c))) / 6
    return [vol[mesh.region == code].sum() for code in (REGION_CAP_LOWER, REGION_CAP_UPPER)]


def test_generated_pmma_caps(scan, tmp_path):
    res = run_scan(scan / "dicom", tmp_path, caps="pmma", cap_thickness_mm=4.0, **QUICK)
    lower, upper = _cap_volumes(tmp_path)
    # phantom body: ellipse 45 x 35 mm with flat endplates -> about pi/4 * 45 * 35 * 4 mm^3 per cap
    expected = np.pi / 4 * 45 * 35 * 4.0
    for v in (lower, upper):
        assert 0.7 * expected < v < 1.3 * expected
    assert res["compression_stiffness_N_per_mm"] > 0


def test_caps_from_disc_labels(scan, tmp_path):
    run_scan(scan / "dicom", tmp_path, labels=str(scan / "labels.nii.gz"), label_values="1",
             cap_labels="4", **QUICK)
    lower, upper = _cap_volumes(tmp_path)
    assert lower > 1000 and upper > 1000


def test_cap_labels_need_a_label_map(scan, tmp_path):
    with pytest.raises(FesimError, match="label map"):
        run_scan(scan / "dicom", tmp_path, cap_labels="4", **QUICK)
