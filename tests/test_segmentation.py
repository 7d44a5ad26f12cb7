"""Vertebra masks from labels and from thresholded QCT, sub-regions and frame (phantom + real CT)."""


import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from fesim.errors import SegmentationError
from fesim.imaging.nifti import read_nifti
from fesim.synthetic.phantom import PhantomSpec, make_phantom
from fesim.imaging.segmentation import (dice, mask_from_labels, segment_vertebra, subregions,
                                        vertebra_frame)
from fesim.imaging.volume import Volume


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(PhantomSpec(neighbours=True))


@pytest.fixture(scope="module")
def rotated():
    rot = Rotation.from_euler("xyz", [20, -15, 30], degrees=True).as_matrix()
    return make_phantom(PhantomSpec(neighbours=True, direction=rot))


from conftest import real_data_dir as _data_dir  # noqa: E402


def test_mask_from_labels_components_and_truncation():
    lab = np.zeros((20, 20, 20), np.uint8)
    lab[5:10, 5:10, 5:10] = 3
    lab[14:16, 14:16, 14:16] = 3  # a stray fragment
    lab[8:12, 8:12, 15:20] = 4    # touches the last slice
    v = Volume(lab, [1, 1, 1])
    m = mask_from_labels(v, {3})
    assert m.data.sum() == 125 and m.meta["n_components"] == 2
    assert m.meta["discarded_ml"] == pytest.approx(0.008) and not m.meta["truncated"]
    t = mask_from_labels(v, {4})
    assert t.meta["truncated"] and t.meta["truncated_faces"] == ["k_max"]
    both = mask_from_labels(v, {3, 4})
    assert both.meta["label_values"] == [3, 4]
    with pytest.raises(SegmentationError, match="not found"):
        mask_from_labels(v, {9})


def test_real_labels_lumbar_components_and_t12_truncated():
    d = _data_dir()
    lab = read_nifti(d / "example_ct_labels.nii.gz", kind="labels")
    for value in range(27, 32):
        m = mask_from_labels(lab, {value})
        assert m.meta["n_components"] == 1, value
        assert 57.0 <= m.meta["volume_ml"] <= 67.0, (value, m.meta["volume_ml"])  # "about 58-66 ml"
        assert not m.meta["truncated"]
    t12 = mask_from_labels(lab, {32})
    assert t12.meta["truncated"] and "k_max" in t12.meta["truncated_faces"]
    frame = vertebra_frame(mask_from_labels(lab, {28}))
    assert frame["body_axis"][2] > 0.95 and frame["ap_axis"][1] < -0.95  # anterior = LPS -y
    assert 25.0 < frame["body_height_mm"] < 40.0


@pytest.mark.parametrize("which", ["phantom", "rotated"])
def test_segment_phantom_with_neighbours(which, request):
    p = request.getfixturevalue(which)
    seg = segment_vertebra(p.hu)
    assert dice(seg, p.labels.data == 1) > 0.9
    # the neighbours (labels 2, 3) are not included
    assert np.logical_and(seg.data > 0, np.isin(p.labels.data, (2, 3))).sum() < 0.01 * seg.data.sum()


def test_segment_density_image_and_seed(phantom):
    seg = segment_vertebra(phantom.bmd, seed_lps=[0.0, 0.0, 0.0])
    assert dice(seg, phantom.labels.data == 1) > 0.9
    l3 = segment_vertebra(phantom.hu, seed_lps=[0.0, 0.0, 36.0])
    assert dice(l3, phantom.labels.data == 2) > 0.85
    with pytest.raises(SegmentationError):
        segment_vertebra(phantom.hu, threshold=5000.0)


@pytest.mark.parametrize("which", ["phantom", "rotated"])
def test_subregions_and_frame_match_truth(which, request):
    p = request.getfixturevalue(which)
    mask = p.labels.with_data((p.labels.data == 1).astype(np.uint8))
    reg = subregions(mask)
    truth = p.regions.data
    d = {c: dice(reg.data == c, truth == c) for c in range(1, 6)}
    assert d[1] > 0.95 and d[2] > 0.85 and d[5] > 0.9
    assert d[3] > 0.7 and d[4] > 0.7
    f = reg.meta["frame"]
    assert np.linalg.norm(f["body_center"] - p.landmarks["body_center"]) < 1.0
    assert f["body_axis"] @ p.landmarks["body_axis"] > 0.995
    assert f["ap_axis"] @ np.array([0, -1.0, 0]) > 0.995 and f["ml_axis"][0] > 0.995
    assert f["upper_endplate"] == pytest.approx(p.landmarks["upper_endplate_z"], abs=1.0)
    assert f["lower_endplate"] == pytest.approx(p.landmarks["lower_endplate_z"], abs=1.0)
    # left pedicle (code 3) on the patient's left (+x)
    left = reg.index_to_world(np.argwhere(reg.data == 3)).mean(axis=0)
    assert np.linalg.norm(left - p.landmarks["pedicle_left"]) < 3.0


def test_segmented_volume_same_bone_across_density_and_pose():
    """The demo cohort's P03 (thinnest body cortex, 0.76 mm, beside dense posterior elements):
    its follow-ups were segmented 12 and 20 % smaller than its baseline, as a threshold tied to
    the densest bone cut its faint cortex; the registration check (±10 %) then refused them.

    The same anatomy at the baseline and month-24 density (trabecular +21 %, cortical +6 %),
    in the same pose and noise and in the month-24 pose and noise, through the demo's
    calibration and segmentation. Tolerance 3 %: the voxelised true volume of one anatomy
    itself varies by up to 3 % between poses at these 1 x 1 x 1.5 mm voxels (P18 of the same
    cohort), and 3 % is well inside the registration check's 10 %; measured over the whole
    cohort (docs/study.md) the visits of a patient differ by at most 2.8 %.
    """
    from dataclasses import replace

    from fesim.pipeline import RunOptions, calibrate
    from fesim.synthetic.cohort import SCAN_RODS_MG_CM3, SCAN_SPACING_MM, synthetic_cohort

    p03 = [s for s in synthetic_cohort(21, (0, 12, 24), seed=0) if s.patient == "P03"]
    base, m24 = p03[0], p03[-1]
    assert (base.month, m24.month) == (0, 24) and m24.bone.trabecular > 1.2 * base.bone.trabecular
    opts = RunOptions(rod_densities=SCAN_RODS_MG_CM3, calibration="phantom")
    vols, truth = [], []
    for spec in (base, replace(base, bone=m24.bone), m24):
        ph = spec.make_image(SCAN_SPACING_MM)
        mask = segment_vertebra(calibrate(ph.hu, opts)[1])
        vols.append(mask.meta["volume_ml"])
        truth.append(float((ph.labels.data == 1).sum()) * ph.labels.voxel_volume_mm3 / 1000.0)
    assert max(vols) - min(vols) <= 0.03 * vols[0], vols
    # consistent and close to the true volume (the surface of a cortex thinner than the blur
    # is placed a little outside it: +3.8 % here, -0.9 to +5.8 % over the cohort)
    assert all(abs(v / t - 1.0) < 0.07 for v, t in zip(vols, truth)), (vols, truth)


def _partial_volume_body(scale=1.0, offset=0.0, seed=0):
    """A 3 mm image of an ellipsoidal body (1.2 mm cortex of 900 HU, marrow 180, soft tissue
    40) made by averaging a 0.5 mm one, with noise, and each coarse voxel's bone fraction."""
    n, coarse_shape = 6, (20, 20, 16)
    shape = np.array(coarse_shape) * n
    g = (np.indices(shape).reshape(3, -1).T + 0.5) * 0.5
    c, r = shape * 0.25, np.array([22.0, 18.0, 15.0])
    q = np.sqrt((((g - c) / r) ** 2).sum(1)).reshape(shape)
    q_in = np.sqrt((((g - c) / (r - 1.2)) ** 2).sum(1)).reshape(shape)
    fine = np.where(q <= 1, np.where(q_in <= 1, 180.0, 900.0), 40.0)

    def block(a):
        return a.reshape(coarse_shape[0], n, coarse_shape[1], n, coarse_shape[2], n).mean(axis=(1, 3, 5))

    img = block(fine) + np.random.default_rng(seed).normal(0.0, 15.0, coarse_shape)
    return Volume(scale * img + offset, [3.0, 3.0, 3.0]), block((q <= 1).astype(float))


def test_refine_surface_one_rule_whatever_drew_the_mask():
    """A label-map-like mask keeping every partial-volume voxel (bone fraction >= 0.15) and a
    threshold-like one dropping the faint rim (>= 0.7) differ by 232 voxels (of ~1000) at
    3 mm; refined by the one rule they agree within 1.5 % of the voxels; an affine rescaling
    of the image (HU -> mg/cm^3) gives the very same mask; other bone is never grown into."""
    from fesim.imaging.segmentation import refine_surface

    img, frac = _partial_volume_body()
    wide, narrow = frac >= 0.15, frac >= 0.7
    assert (wide ^ narrow).sum() > 200
    rw = refine_surface(img, img.with_data(wide.astype(np.uint8)))
    rn = refine_surface(img, img.with_data(narrow.astype(np.uint8)))
    a, b = rw.data > 0, rn.data > 0
    assert (a ^ b).sum() <= 0.015 * a.sum(), ((a ^ b).sum(), a.sum())
    assert rw.meta["surface_rule"]["removed"] > 0 and rn.meta["surface_rule"]["added"] > 0
    # the rule keeps the partial-volumed cortex: at least the voxels half bone
    assert np.all(a[frac >= 0.5])
    dens, _ = _partial_volume_body(scale=0.8, offset=-20.0)
    assert np.array_equal(refine_surface(dens, dens.with_data(wide.astype(np.uint8))).data > 0, a)
    other = np.zeros_like(wide)
    other[:, :, 12:] = True  # a "neighbour" over the top slices: not grown into
    ro = refine_surface(img, img.with_data(narrow.astype(np.uint8)), other_bone=other)
    assert not np.any((ro.data > 0) & other & ~narrow)
    with pytest.raises(SegmentationError):
        refine_surface(img, img.with_data(np.zeros(img.shape, np.uint8)))
