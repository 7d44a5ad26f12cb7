"""Tests of the synthetic QCT phantom (fesim/synthetic/phantom.py)."""

import json

import numpy as np
import pytest
from scipy.ndimage import binary_erosion

from fesim.errors import InputError
from fesim.synthetic.phantom import PhantomSpec, make_phantom, write_phantom


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(PhantomSpec(seed=3))


def _rot(axis, deg):
    c, s = np.cos(np.deg2rad(deg)), np.sin(np.deg2rad(deg))
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def _roi_mean(vol, center, radius):
    """Mean of the voxels whose centres lie within ``radius`` mm of ``center`` (LPS)."""
    c = vol.world_to_index(center)
    half = np.ceil(radius / vol.spacing) + 1
    lo = np.maximum(np.floor(c - half), 0).astype(int)
    hi = np.minimum(np.ceil(c + half) + 1, vol.shape).astype(int)
    ijk = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), -1).reshape(-1, 3)
    inside = np.linalg.norm(vol.index_to_world(ijk) - center, axis=1) <= radius
    return float(vol.data[tuple(ijk[inside].T)].mean())


def test_grid_and_types(phantom):
    hu = phantom.hu
    assert 120 <= hu.shape[0] <= 160 and 130 <= hu.shape[1] <= 170 and 40 <= hu.shape[2] <= 50
    assert hu.data.dtype == np.float32 and np.all(hu.data == np.round(hu.data))
    assert phantom.labels.data.dtype == np.uint8 and phantom.regions.data.dtype == np.uint8
    for v in (phantom.bmd, phantom.labels, phantom.regions):
        assert v.same_grid(hu)
    # The L4 body centre is the world origin and a voxel centre.
    ijk = hu.world_to_index(np.zeros(3))
    assert np.allclose(ijk, np.round(ijk))


def test_anatomy_sizes(phantom):
    vv = phantom.hu.voxel_volume_mm3
    reg = phantom.regions.data
    body = np.isin(reg, (1, 2)).sum() * vv
    assert body == pytest.approx(np.pi * 22.5 * 17.5 * 27.0, rel=0.05)
    for k in (3, 4, 5):
        assert (reg == k).sum() > 500
    assert (reg[:, :, :] > 0).sum() == (phantom.labels.data == 1).sum()
    # Left pedicle (label 3) lies at +x (patient left in LPS).
    pts = phantom.hu.index_to_world(np.argwhere(reg == 3))
    assert pts[:, 0].min() > 5 and pts[:, 1].mean() > 15
    assert np.isin(phantom.labels.data, (2, 3)).sum() == 0


def test_bmd_truth_and_hu_calibration(phantom):
    spec = phantom.spec
    bmd, hu, reg = phantom.bmd.data, phantom.hu.data, phantom.regions.data
    # Voxels are averages over their box: those a voxel away from the cortex are pure
    # trabecular bone, those cut by the cortex surfaces mix in between.
    trab = bmd[binary_erosion(reg == 1, iterations=2)]
    assert 100 < trab.min() and trab.max() < 185
    assert trab.mean() == pytest.approx(spec.trabecular_bmd, rel=0.1)
    cortex = bmd[reg == 2]
    assert cortex.max() == pytest.approx(spec.cortical_bmd) and cortex.min() > 100
    assert np.all(bmd[reg == 1] <= spec.cortical_bmd + 1e-3)
    assert np.all(bmd[phantom.labels.data == 0][:1000] >= 0)
    # Deep trabecular voxels follow HU = offset + slope * BMD up to noise.
    deep = binary_erosion(reg == 1, iterations=3)
    resid = hu[deep] - (spec.hu_offset + spec.hu_per_mg * bmd[deep])
    assert abs(np.median(resid)) < 2 and resid.std() == pytest.approx(spec.noise_hu, rel=0.15)
    # Partial volume: the blurred cortex reads well below its true HU.
    cortex_true = spec.hu_offset + spec.hu_per_mg * spec.cortical_bmd
    assert np.median(hu[reg == 2]) < 0.8 * cortex_true
    for rod in phantom.rods:
        mean = _roi_mean(phantom.hu, rod.center, 3.5)
        assert mean == pytest.approx(spec.hu_offset + spec.hu_per_mg * rod.bmd_mg_cm3, abs=4)


def test_tissue_landmarks(phantom):
    lm = phantom.landmarks
    truth = lm["tissue_hu"]
    assert _roi_mean(phantom.hu, lm["fat_roi_center"], lm["roi_radius_mm"]) == pytest.approx(truth["fat"], abs=4)
    assert _roi_mean(phantom.hu, lm["muscle_roi_center"], lm["roi_radius_mm"]) == pytest.approx(truth["muscle"], abs=4)
    assert _roi_mean(phantom.hu, lm["aorta_center"], 6.0) == pytest.approx(truth["blood"], abs=4)
    assert (phantom.hu.data < -950).sum() > 1000  # air outside the body contour
    for side in ("left", "right"):
        p = lm[f"pedicle_{side}"]
        assert phantom.regions.sample(p, order=0) == (3 if side == "left" else 4)
        a = lm[f"pedicle_axis_{side}"]
        assert np.linalg.norm(a) == pytest.approx(1) and a[1] < -0.9  # posterior -> anterior


def test_density_scale_and_no_rods():
    p = make_phantom(PhantomSpec(density_scale=0.7, rods_mg_cm3=None, noise_hu=0))
    base = make_phantom(PhantomSpec(noise_hu=0))
    reg = p.regions.data == 1
    assert p.bmd.data[reg].mean() == pytest.approx(0.7 * base.bmd.data[reg].mean(), rel=1e-4)
    assert p.rods == [] and base.bmd.data.max() == pytest.approx(700)


def test_neighbours():
    p = make_phantom(PhantomSpec(neighbours=True, noise_hu=0))
    lab = p.labels.data
    z = p.hu.index_to_world(np.argwhere(lab > 0))[:, 2]
    zl = z[lab[lab > 0] == 2]
    assert np.sum(lab == 2) == np.sum(lab == 1) == np.sum(lab == 3)
    assert zl.min() > 13.5 and p.hu.shape[2] > 100
    # Discs of ~9 mm between L3-L4 and L4-L5.
    disc_z = np.unique(np.round(z[lab[lab > 0] == 4]))
    assert {-18.0, 18.0} <= set(disc_z.tolist())


@pytest.mark.parametrize("direction", [
    _rot(2, 90) @ np.diag([1.0, -1.0, -1.0]),                       # permuted + flipped
    np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], float),             # sagittal-like slices
    _rot(2, 20) @ _rot(0, 10),                                       # oblique
])
def test_direction_keeps_anatomy(phantom, direction):
    spec = PhantomSpec(seed=3, direction=direction)
    rot = make_phantom(spec)
    assert np.allclose(rot.hu.direction, direction)
    vv = rot.hu.voxel_volume_mm3
    ref_body = np.isin(phantom.regions.data, (1, 2)).sum() * phantom.hu.voxel_volume_mm3
    assert np.isin(rot.regions.data, (1, 2)).sum() * vv == pytest.approx(ref_body, rel=0.03)
    # (away from the rim, whose voxels share their box with the cortex)
    trab = rot.bmd.data[binary_erosion(rot.regions.data == 1, iterations=2)].mean()
    ref = phantom.bmd.data[binary_erosion(phantom.regions.data == 1, iterations=2)].mean()
    assert trab == pytest.approx(ref, rel=0.01)
    for side, k in (("left", 3), ("right", 4)):
        assert rot.regions.sample(phantom.landmarks[f"pedicle_{side}"], order=0) == k
    rod = phantom.rods[-1]
    assert _roi_mean(rot.hu, rod.center, 3.5) == pytest.approx(_roi_mean(phantom.hu, rod.center, 3.5), abs=5)


def test_bad_input():
    with pytest.raises(InputError, match="orthonormal"):
        make_phantom(PhantomSpec(direction=np.diag([1.0, 2.0, 1.0])))
    with pytest.raises(InputError, match="too many calibration rods"):
        make_phantom(PhantomSpec(rods_mg_cm3=tuple(range(0, 450, 50))))


def test_seven_rods_fit_the_field():
    p = make_phantom(PhantomSpec(rods_mg_cm3=(0, 25, 50, 75, 100, 150, 200), noise_hu=0, blur_mm=0))
    for rod in p.rods:
        assert np.all(np.abs(rod.center[:2]) + rod.radius_mm < [55, 75])
        assert p.bmd.sample(rod.center, order=0) == rod.bmd_mg_cm3
        assert p.hu.sample(rod.center, order=0) == round(p.spec.hu_offset + p.spec.hu_per_mg * rod.bmd_mg_cm3)


def test_write_phantom_files(tmp_path, phantom):
    import nibabel as nib

    out = write_phantom(phantom, tmp_path / "ph")
    files = sorted((out / "dicom").iterdir())
    assert len(files) == phantom.hu.shape[2]
    truth = json.loads((out / "truth.json").read_text())
    assert truth["calibration"]["hu_per_mg"] == phantom.spec.hu_per_mg
    assert len(truth["rods"]) == 4 and truth["landmarks"]["tissue_hu"]["fat"] == -100
    img = nib.load(str(out / "labels.nii.gz"))
    assert np.array_equal(np.asarray(img.dataobj), phantom.labels.data)
    # RAS affine: LPS x and y negated.
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ img.affine
    assert np.allclose(lps, phantom.labels.affine)
