"""Tests of the multi-level spine phantom (fesim/synthetic/spine.py)."""

import json
import time

import numpy as np
import pytest
from scipy import ndimage as ndi

from fesim.errors import InputError
from fesim.imaging.labels import CONVENTIONS, normalize_level
from fesim.imaging.nifti import read_nifti
from fesim.synthetic.spine import TS_VALUES, SpineSpec, make_spine, write_spine

VERTEBRAE = ["T12", "L1", "L2", "L3", "L4", "L5", "S1"]


@pytest.fixture(scope="module")
def spine():
    t0 = time.perf_counter()
    ph = make_spine(SpineSpec(seed=1))
    ph.build_s = time.perf_counter() - t0
    return ph


def _centroid(vol, mask):
    return vol.index_to_world(np.argwhere(mask)).mean(axis=0)


def test_builds_in_seconds_at_1mm(spine):
    assert np.allclose(spine.hu.spacing, 1.0)
    assert spine.hu.shape[2] > 250  # T12 top to well into the sacrum
    assert spine.build_s < 30.0, f"spine phantom took {spine.build_s:.1f} s"
    assert spine.hu.data.dtype == np.float32 and np.all(spine.hu.data == np.round(spine.hu.data))
    for v in (spine.bmd, spine.labels, spine.discs):
        assert v.same_grid(spine.hu)


def test_each_level_one_component_in_order_along_the_spine(spine):
    lab = spine.labels.data
    names = spine.labels.meta["label_names"]
    assert set(names.values()) == set(TS_VALUES)
    tv2 = CONVENTIONS["totalseg_v2"]
    z = []
    for lv in VERTEBRAE:
        value = TS_VALUES[f"vertebrae_{lv}"]
        assert tv2[value] == lv  # the same numbering as the label convention table
        mask = lab == value
        _, n = ndi.label(mask, structure=np.ones((3, 3, 3)))
        assert n == 1, f"{lv} has {n} components"
        z.append(_centroid(spine.labels, mask)[2])
        assert normalize_level(names[value]) == lv
    assert np.all(np.diff(z) < -25.0), z  # cranial to caudal, a level apart
    # Lordosis: the column bows anteriorly (towards -y) around L4.
    y = [spine.poses[lv]["center"][1] for lv in VERTEBRAE]
    assert np.argmin(y) == VERTEBRAE.index("L4") and y[0] > 20 and y[-1] > 5
    sacrum = lab == TS_VALUES["sacrum"]
    assert _centroid(spine.labels, sacrum)[2] < z[-1]
    # Plausible level volumes (ml), growing caudally through the lumbar spine.
    ml = [(lab == TS_VALUES[f"vertebrae_{lv}"]).sum() / 1000.0 for lv in VERTEBRAE[:-1]]
    assert all(20 < v < 70 for v in ml) and np.all(np.diff(ml) > 0), ml


def test_ribs_pelvis_and_discs(spine):
    lab, vol = spine.labels.data, spine.labels
    t12 = _centroid(vol, lab == TS_VALUES["vertebrae_T12"])
    for name, sign in (("rib_left_12", 1), ("rib_right_12", -1)):
        c = _centroid(vol, lab == TS_VALUES[name])
        assert sign * c[0] > 50 and abs(c[2] - t12[2]) < 35
        # The rib head lies next to T12 (a joint), not fused to it: no shared voxel.
        near = ndi.binary_dilation(lab == TS_VALUES[name], iterations=3)
        assert np.any(near & (lab == TS_VALUES["vertebrae_T12"]))
    for name, sign in (("hip_left", 1), ("hip_right", -1)):
        mask = lab == TS_VALUES[name]
        assert sign * _centroid(vol, mask)[0] > 50
        touching = ndi.binary_dilation(mask) & np.isin(lab, (TS_VALUES["sacrum"], TS_VALUES["vertebrae_S1"]))
        assert touching.any()  # sacroiliac joints: the wings meet the sacrum
    # One disc between each pair of consecutive levels, at soft-tissue density.
    names = spine.discs.meta["label_names"]
    assert list(names.values()) == [f"{a}-{b}" for a, b in zip(VERTEBRAE[:-1], VERTEBRAE[1:])]
    for k in names:
        disc = spine.discs.data == k
        core = ndi.binary_erosion(disc & (lab == 0), iterations=2)
        assert core.sum() > 2000
        assert spine.hu.data[core].mean() == pytest.approx(85.0, abs=10.0)
    # Bone follows the calibration, soft tissue does not carry BMD.
    assert spine.bmd.data[lab == 0].max() < spine.spec.cortical_bmd * 0.5 + 1
    body = ndi.binary_erosion(lab == TS_VALUES["vertebrae_L3"], iterations=4)
    assert spine.bmd.data[body].mean() == pytest.approx(spine.spec.trabecular_bmd, rel=0.15)


def test_write_read_round_trip(spine, tmp_path, capsys):
    from fesim.cli import main

    out = tmp_path / "spine"
    assert main(["phantom", "--spine", "--seed", "1", "--out", str(out)]) == 0
    assert "TotalSegmentator v2" in capsys.readouterr().out
    ct = read_nifti(out / "ct.nii.gz")
    labels = read_nifti(out / "labels.nii.gz", kind="labels")
    discs = read_nifti(out / "discs.nii.gz", kind="labels")
    assert ct.same_grid(spine.hu) and labels.same_grid(spine.hu)
    assert np.array_equal(ct.data, spine.hu.data)
    assert np.array_equal(labels.data, spine.labels.data)
    assert np.array_equal(discs.data, spine.discs.data)
    assert labels.meta["label_names"] == spine.labels.meta["label_names"]
    truth = json.loads((out / "truth.json").read_text())
    assert truth["labels"]["convention"] == "totalseg_v2"
    assert truth["labels"]["names"]["28"] == "vertebrae_L4"
    # Without names: the bare values only (for convention detection from values).
    small = make_spine(SpineSpec(levels=("L4", "L5"), spacing_mm=(3.0, 3.0, 3.0)))
    bare = write_spine(small, tmp_path / "bare", label_names=False, dicom=True)
    assert "label_names" not in read_nifti(bare / "labels.nii.gz", kind="labels").meta
    from fesim.imaging.dicom import read_dicom_series

    series = read_dicom_series(bare / "dicom")
    assert series.same_grid(small.hu) and np.array_equal(series.data, small.hu.data)


def test_subset_without_landmarks_and_bad_specs():
    ph = make_spine(SpineSpec(levels=("L2", "L3", "L4"), sacrum=False, pelvis=False,
                              spacing_mm=(2.0, 2.0, 2.0)))
    present = set(np.unique(ph.labels.data).tolist()) - {0}
    assert present == {TS_VALUES[f"vertebrae_{lv}"] for lv in ("L2", "L3", "L4")}
    assert list(ph.discs.meta["label_names"].values()) == ["L2-L3", "L3-L4"]
    # No lordosis: every level's axis is +z and the centres lie on the z axis.
    flat = make_spine(SpineSpec(levels=("L4", "L5"), lordosis_deg=0.0, ribs=False,
                                spacing_mm=(2.0, 2.0, 2.0)))
    assert all(np.allclose(p["axis"], (0, 0, 1)) and abs(p["center"][1]) < 1e-9 for p in flat.poses.values())
    for bad in (dict(levels=("L2", "L4")), dict(levels=("L6",)), dict(levels=()),
                dict(spacing_mm=(1.0, 0.0, 1.0)), dict(lordosis_deg=120.0)):
        with pytest.raises(InputError):
            make_spine(SpineSpec(**bad))
