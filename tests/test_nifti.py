"""NIfTI reading/writing, RAS<->LPS, label tables and label conventions."""

import warnings

import nibabel as nib
import numpy as np
import pytest

from fesim.errors import NiftiError
from fesim.imaging.labels import LabelError, parse_label_values, resolve_level, level_name
from fesim.imaging.nifti import check_same_grid, read_nifti, write_nifti
from fesim.imaging.volume import Volume


from conftest import real_data_dir as _data_dir  # noqa: E402


def test_ras_file_reads_as_lps(tmp_path):
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4) - 1000
    ras = np.diag([2.0, 3.0, 4.0, 1.0])
    ras[:3, 3] = [10.0, 20.0, 30.0]
    nib.save(nib.Nifti1Image(data, ras), tmp_path / "a.nii.gz")
    v = read_nifti(tmp_path / "a.nii.gz")
    assert np.allclose(v.spacing, [2, 3, 4])
    assert np.allclose(v.direction, np.diag([-1.0, -1.0, 1.0]))
    assert np.allclose(v.origin, [-10.0, -20.0, 30.0])
    assert np.array_equal(v.data, data)  # voxels untouched
    # voxel (1, 2, 3): RAS (12, 26, 42) -> LPS (-12, -26, 42)
    assert np.allclose(v.index_to_world([1, 2, 3]), [-12.0, -26.0, 42.0])
    assert v.meta["orientation"] == "RAS" and v.meta["units"] == "HU"


def test_round_trip_oblique_and_labels(tmp_path):
    c, s = np.cos(0.3), np.sin(0.3)
    direction = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    lab = np.zeros((5, 6, 7), np.uint8)
    lab[1:3, 2:5, 3:6] = 28
    v = Volume(lab, [0.8, 0.9, 1.5], [1.0, -2.0, 3.0], direction,
               {"label_names": {28: "vertebrae_L4", 27: "vertebrae_L5"}})
    path = write_nifti(v, tmp_path / "l.nii.gz")
    w = read_nifti(path, kind="labels")
    assert w.same_grid(v, tol=1e-5) and np.array_equal(w.data, lab)
    assert w.meta["label_names"] == {27: "vertebrae_L5", 28: "vertebrae_L4"}
    # RAS on disk
    assert np.allclose(nib.load(path).affine[:2, 3], [-1.0, 2.0])


def test_density_and_bad_inputs(tmp_path):
    aff = np.eye(4)
    nib.save(nib.Nifti1Image(np.full((3, 3, 3), 120.0, np.float32), aff), tmp_path / "d.nii")
    d = read_nifti(tmp_path / "d.nii", kind="density", density_units="HA")
    assert d.meta["units"] == "mg/cm^3 HA"
    with pytest.warns(UserWarning, match="-200 HU"):
        read_nifti(tmp_path / "d.nii", kind="ct")
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3, 2), np.float32), aff), tmp_path / "4d.nii")
    with pytest.raises(NiftiError, match="3-D"):
        read_nifti(tmp_path / "4d.nii")
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3, 1), np.float32) - 1000, aff), tmp_path / "4d1.nii")
    assert read_nifti(tmp_path / "4d1.nii").shape == (3, 3, 3)
    bad = aff.copy()
    bad[0, 0] = np.nan
    img = nib.Nifti1Image(np.zeros((3, 3, 3), np.float32), None)
    img.header.set_qform(None, code=0)
    img.header.set_sform(bad, code=1)
    nib.save(img, tmp_path / "nan.nii")
    with pytest.raises(NiftiError):
        read_nifti(tmp_path / "nan.nii")
    nib.save(nib.Nifti1Image(np.full((3, 3, 3), 1.5, np.float32), aff), tmp_path / "frac.nii")
    with pytest.raises(NiftiError, match="integers"):
        read_nifti(tmp_path / "frac.nii", kind="labels")
    with pytest.raises(NiftiError, match="not found"):
        read_nifti(tmp_path / "missing.nii.gz")
    (tmp_path / "junk.nii").write_bytes(b"not a nifti")
    with pytest.raises(NiftiError):
        read_nifti(tmp_path / "junk.nii")


def test_check_same_grid():
    a = Volume(np.zeros((4, 4, 4)), [1, 1, 1])
    check_same_grid(a, Volume(np.zeros((4, 4, 4), np.uint8), [1, 1, 1]))
    with pytest.raises(NiftiError, match="shape"):
        check_same_grid(a, Volume(np.zeros((4, 4, 5)), [1, 1, 1]))
    with pytest.raises(NiftiError, match="grid"):
        check_same_grid(a, Volume(np.zeros((4, 4, 4)), [1, 1, 1], origin=[0, 0, 0.5]))


def test_level_resolution_per_convention():
    assert resolve_level("L4") == {28}
    assert resolve_level("vertebrae_L5", "total") == {27}
    assert resolve_level("T12", "totalseg_v2") == {32} and resolve_level("S1") == {26}
    assert resolve_level("L4", "totalseg_v1") == {19} and resolve_level("T12", "totalseg_v1") == {23}
    assert resolve_level("L1", "verse") == {20} and resolve_level("L6", "verse") == {25}
    assert resolve_level("T13", "verse") == {28} and resolve_level("C1", "verse") == {1}
    assert resolve_level("T12", "bodies_per_level") == {19}
    assert resolve_level("L4", "bodies_per_level") == {23}
    assert resolve_level("1,2,3,4") == {1, 2, 3, 4} == parse_label_values("1-4")
    assert resolve_level([5, 6]) == {5, 6}
    # names from the file win over the convention
    assert resolve_level("L4", "totalseg_v2", {7: "vertebrae_L4", 1: "spleen"}) == {7}
    assert level_name(28) == "L4"
    for bad in ("X9", "L4", "0,1"):
        with pytest.raises(LabelError):
            resolve_level(bad, "nonsense" if bad == "L4" else "verse")
    with pytest.raises(LabelError, match="not in"):
        resolve_level("L6", "totalseg_v2")


def test_real_label_map_shares_ct_grid_and_names():
    d = _data_dir()
    ct = read_nifti(d / "example_ct.nii.gz")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lab = read_nifti(d / "example_ct_labels.nii.gz", kind="labels")
    check_same_grid(ct, lab)
    names = lab.meta["label_names"]
    assert names[28] == "vertebrae_L4" and names[32] == "vertebrae_T12"
    for level, value in (("L1", 31), ("L4", 28), ("L5", 27), ("S1", 26)):
        assert resolve_level(level, names_from_file=names) == {value}
    # LPS: patient left (+x) is at low i in this RAS file; superior at high k
    assert ct.direction[0, 0] == -1 and ct.direction[2, 2] == 1
    bodies = read_nifti(d / "example_ct_bodies_per_level.nii.gz", kind="labels")
    check_same_grid(ct, bodies)
    l4 = lab.data == 28
    l4_body = bodies.data == resolve_level("L4", "bodies_per_level", bodies.meta.get("label_names")).pop()
    # the body of L4 in the per-level map lies inside the L4 of the vertebra map
    assert (l4 & l4_body).sum() > 0.8 * l4_body.sum()
    # L4 is above L5 (LPS z grows superiorly)
    z = lambda m: ct.index_to_world(np.argwhere(m).mean(axis=0))[2]
    assert z(lab.data == 28) > z(lab.data == 27)
    assert np.median(ct.data[:, :, 50][:5]) < -900  # air at the image edge, in HU
