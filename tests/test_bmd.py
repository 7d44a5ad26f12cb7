"""Tests of QCT BMD measures (fesim.imaging.bmd) on the synthetic phantom."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from fesim.errors import InputError, SegmentationError
from fesim.imaging.bmd import (areal_bmd, integral_vbmd, projected_area_mm2, screw_vbmd,
                               trabecular_vbmd)
from fesim.imaging.calibration import phantom_calibration
from fesim.synthetic.phantom import PhantomSpec, make_phantom
from fesim.imaging.screwplan import ScrewPlan

RODS = (0.0, 50.0, 100.0, 200.0)


def _measure(spec):
    p = make_phantom(spec)
    bmd = phantom_calibration(p.hu, RODS).apply(p.hu)
    body = np.isin(p.regions.data, [1, 2])
    post = np.isin(p.regions.data, [3, 4, 5])
    bone = p.labels.data == 1
    lm = p.landmarks
    screw = ScrewPlan("left", lm["pedicle_left"] - 12 * lm["pedicle_axis_left"], lm["pedicle_axis_left"], 35, 6.5)
    meas = {"trabecular": trabecular_vbmd(bmd, body), "integral": integral_vbmd(bmd, body, exclude=post),
            "areal": areal_bmd(bmd, body, exclude=post), "screw": screw_vbmd(bmd, screw, bone)}
    # Ground truth: the same ROIs on the noise- and blur-free BMD field (voxel averages of the
    # analytic density, so edge voxels outside the mask still hold part of the body's mineral).
    truth = {"trabecular": trabecular_vbmd(p.bmd, body), "integral": integral_vbmd(p.bmd, body, exclude=post),
             "areal": areal_bmd(p.bmd, body, exclude=post), "screw": screw_vbmd(p.bmd, screw, bone)}
    return p, meas, truth


@pytest.fixture(scope="module")
def identity():
    return _measure(PhantomSpec(seed=4))


@pytest.fixture(scope="module")
def rotated():
    d = Rotation.from_euler("xyz", [20, -15, 30], degrees=True).as_matrix()
    return _measure(PhantomSpec(seed=5, direction=d))


@pytest.mark.parametrize("name", ["trabecular", "integral", "areal", "screw"])
def test_measures_match_ground_truth(identity, rotated, name):
    for _, meas, truth in (identity, rotated):
        assert meas[name] == pytest.approx(truth[name], rel=0.02)


def test_values_plausible(identity):
    p, meas, _ = identity
    # centre 140 mg/cm^3 with a +-15 % gradient; body mean incl. 700 mg/cm^3 cortex much higher
    assert 120 < meas["trabecular"] < 160
    assert meas["integral"] > 1.4 * meas["trabecular"]
    assert 0.3 < meas["areal"] < 1.0  # g/cm^2, K2HPO4, body only with a dense 1 mm shell


@pytest.mark.parametrize("name", ["trabecular", "integral"])
def test_identity_vs_rotated(identity, rotated, name):
    assert rotated[1][name] == pytest.approx(identity[1][name], rel=0.005)


def test_areal_and_screw_identity_vs_rotated(identity, rotated):
    # Projected area and the thin pedicle cortex are voxelised differently on each grid
    # (the ground-truth screw value itself differs ~2.5 % between the two grids).
    assert rotated[1]["areal"] == pytest.approx(identity[1]["areal"], rel=0.01)
    assert rotated[1]["screw"] / rotated[2]["screw"] == pytest.approx(identity[1]["screw"] / identity[2]["screw"], abs=0.01)


def test_projected_area_of_body(identity):
    p = identity[0]
    body = np.isin(p.regions.data, [1, 2])
    # 45 mm wide x 27 mm tall body seen from the front: 1215 mm^2
    assert projected_area_mm2(p.bmd, body, (0, 1, 0)) == pytest.approx(1215.0, rel=0.03)


def test_measures_rise_with_density_scale(identity):
    _, base, _ = identity
    _, more, _ = _measure(PhantomSpec(seed=4, density_scale=1.1))
    for name in base:
        assert more[name] > 1.05 * base[name]


def test_bad_input(identity):
    p = identity[0]
    body = np.isin(p.regions.data, [1, 2])
    with pytest.raises(SegmentationError):
        trabecular_vbmd(p.bmd, np.zeros_like(body))
    with pytest.raises(InputError):
        integral_vbmd(p.bmd, body[:-1])
    far = ScrewPlan("x", [500.0, 500.0, 500.0], [0, 0, 1])
    with pytest.raises(SegmentationError):
        screw_vbmd(p.bmd, far, body)
