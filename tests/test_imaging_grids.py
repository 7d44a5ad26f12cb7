"""`fesim inspect` listing, and label maps landing on the DICOM voxels for any grid direction."""

import numpy as np
import pytest

from fesim.cli import main
from fesim.errors import NiftiError
from fesim.imaging.dicom import list_series, read_dicom_series
from fesim.imaging.dicom_write import write_dicom_series
from fesim.imaging.nifti import (check_same_grid, labels_on_grid, read_nifti, reorder_to_grid,
                                 write_nifti)
from fesim.synthetic.phantom import PhantomSpec, dicom_grid, make_phantom, write_phantom
from fesim.imaging.volume import Volume

SWAP_XY = np.array([[0.0, 1, 0], [1, 0, 0], [0, 0, 1]])       # left-handed permutation
SAGITTAL = np.array([[0.0, 0, 1], [1, 0, 0], [0, 1, 0]])       # right-handed permutation
FLIP_Z = np.diag([1.0, 1, -1])                                 # left-handed flip


def test_inspect_lists_two_series_and_marks_chosen(tmp_path, capsys):
    rng = np.random.default_rng(0)
    big = Volume(rng.integers(-1000, 1500, (24, 20, 12)).astype(np.float32), [0.7, 0.7, 1.25],
                 [-8.0, -7.0, 20.0])
    small = Volume(rng.integers(-1000, 1500, (16, 18, 5)).astype(np.float32), [0.9, 0.9, 3.0],
                   [0.0, 0.0, 0.0], SAGITTAL)
    write_dicom_series(big, tmp_path / "a", uid_key="big", series_description="axial")
    write_dicom_series(small, tmp_path / "b", uid_key="small", series_description="sagittal")
    infos = list_series(tmp_path)
    assert main(["inspect", str(tmp_path)]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert len(lines) == 2
    by_uid = {i.uid: ln for i in infos for ln in lines if i.uid in ln}
    assert len(by_uid) == 2
    chosen = [ln for ln in lines if "chosen" in ln]
    assert len(chosen) == 1 and chosen[0].startswith("*") and chosen[0] == by_uid[infos[0].uid]
    axial, sag = by_uid[infos[0].uid], by_uid[infos[1].uid]
    # size i x j x k, spacing along i, j, k (mm), orientation codes and raw IOP
    assert "CT" in axial and "24 x 20 x 12" in axial and "0.7 x 0.7 x 1.25 mm" in axial
    assert "LPS [1,0,0,0,1,0]" in axial and "'axial'" in axial
    assert "16 x 18 x 5" in sag and "0.9 x 0.9 x 3 mm" in sag and "PSL" in sag
    assert not sag.startswith("*") and "chosen" not in sag
    assert infos[0].describe() == axial


@pytest.mark.parametrize("direction", [None, FLIP_Z, SWAP_XY, SAGITTAL],
                         ids=["identity", "flip_z", "swap_xy", "sagittal"])
def test_phantom_labels_land_on_dicom_voxels(tmp_path, direction):
    ph = make_phantom(PhantomSpec(seed=1, direction=direction, noise_hu=4.0, rods_mg_cm3=None))
    out = write_phantom(ph, tmp_path / "ph")
    ct = read_dicom_series(out / "dicom")
    lab = read_nifti(out / "labels.nii.gz", kind="labels")
    check_same_grid(ct, lab)
    assert labels_on_grid(ct, lab) is lab
    expected = reorder_to_grid(ph.labels, ct)
    assert expected is not None and np.array_equal(lab.data, expected.data)
    if direction is None:
        assert np.array_equal(lab.data, ph.labels.data)
    # The CT voxels are the phantom's own, reordered the same way.
    hu = reorder_to_grid(ph.hu, ct)
    assert np.abs(ct.data - hu.data).max() <= 1.0
    # World check independent of reorder_to_grid: each labelled voxel's centre maps to a
    # phantom voxel with the same label.
    idx = np.argwhere(lab.data > 0)[::7]
    back = np.round(ph.labels.world_to_index(ct.index_to_world(idx))).astype(int)
    assert np.array_equal(ph.labels.data[tuple(back.T)], lab.data[tuple(idx.T)])
    # L4 sits on bone in the CT: mean HU well above soft tissue.
    assert ct.data[lab.data == 1].mean() > 150.0
    assert lab.meta["label_names"][1] == "L4"


def test_left_handed_label_file_is_reordered(tmp_path):
    ph = make_phantom(PhantomSpec(seed=2, direction=SWAP_XY, noise_hu=0.0, rods_mg_cm3=None))
    ct = dicom_grid(ph.hu)  # the grid read_dicom_series returns (tested above)
    # A label map stored on the original left-handed grid (negative qfac), as a converter
    # keeping the acquisition slice order would write it.
    path = write_nifti(ph.labels, tmp_path / "lh.nii.gz")
    lab = read_nifti(path, kind="labels")
    assert np.linalg.det(lab.direction) < 0
    with pytest.raises(NiftiError, match="grid differs"):
        check_same_grid(ct, lab)
    moved = labels_on_grid(ct, lab)
    check_same_grid(ct, moved)
    assert np.array_equal(moved.data, ph.labels.data[:, :, ::-1])
    # Another lattice (shifted by half a voxel) is refused, not resampled silently.
    shifted = Volume(lab.data, lab.spacing, lab.origin + 0.4, lab.direction)
    with pytest.raises(NiftiError, match="grid differs"):
        labels_on_grid(ct, shifted)
    assert reorder_to_grid(shifted, ct) is None
