"""Tests of HU -> BMD calibration (fesim.imaging.calibration)."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from fesim.errors import CalibrationError
from fesim.imaging.calibration import (
    Calibration, find_rods, internal_calibration, k2hpo4_sensitivity,
    mindways_calibration, phantom_calibration, tissue_reference)
from fesim.synthetic.phantom import PhantomSpec, make_phantom
from fesim.imaging.volume import Volume

RODS = (0.0, 50.0, 100.0, 200.0)


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(PhantomSpec(seed=1))


@pytest.fixture(scope="module")
def rotated():
    d = Rotation.from_euler("xyz", [20, -15, 30], degrees=True).as_matrix()
    return make_phantom(PhantomSpec(seed=2, direction=d))


def _check_line(cal, spec):
    assert cal.slope == pytest.approx(1.0 / spec.hu_per_mg, rel=0.01)
    # intercept in mg/cm^3: true -hu_offset / hu_per_mg = 1.67; 1 mg/cm^3 = 1 % at 100 mg/cm^3
    assert cal.intercept == pytest.approx(-spec.hu_offset / spec.hu_per_mg, abs=1.0)


def test_find_rods_positions(phantom):
    rods = find_rods(phantom.hu, n_expected=4)
    truth = sorted(phantom.rods, key=lambda r: r.bmd_mg_cm3)
    for (c, r, m), t in zip(rods, truth):
        assert np.allclose(c[:2], t.center[:2], atol=0.5)
        assert r == pytest.approx(t.radius_mm, abs=1.2)
        assert m == pytest.approx(phantom.spec.hu_offset + phantom.spec.hu_per_mg * t.bmd_mg_cm3, abs=1.5)


def test_phantom_calibration_recovers_true_line(phantom):
    cal = phantom_calibration(phantom.hu, RODS)
    _check_line(cal, phantom.spec)
    assert cal.r2 > 0.999 and cal.method == "phantom"
    d = cal.to_dict()
    assert d["material"] == "K2HPO4" and len(d["points"]) == 4


@pytest.mark.parametrize("direction", [np.array([[0, 1, 0], [-1, 0, 0], [0, 0, -1.0]]), None])
def test_phantom_calibration_other_grids(direction):
    spec = PhantomSpec(seed=3, direction=direction, hu_per_mg=1.35, hu_offset=6.0)
    _check_line(phantom_calibration(make_phantom(spec).hu, RODS), spec)


def test_phantom_calibration_rotated(rotated):
    _check_line(phantom_calibration(rotated.hu, RODS), rotated.spec)


def test_rods_given_as_positions(phantom):
    rods = [(r.center, r.radius_mm) for r in phantom.rods]
    _check_line(phantom_calibration(phantom.hu, RODS, rods=rods), phantom.spec)


def test_too_few_rods_and_bad_fit_raise(phantom):
    with pytest.raises(CalibrationError, match="at least 3"):
        phantom_calibration(phantom.hu, RODS[:2], rods=[(r.center, r.radius_mm) for r in phantom.rods[:2]])
    # Densities that do not match the rods (not linear in HU) give a poor fit.
    with pytest.raises(CalibrationError, match="R\\^2"):
        phantom_calibration(phantom.hu, (0.0, 1.0, 2.0, 800.0))
    with pytest.raises(CalibrationError):
        phantom_calibration(make_phantom(PhantomSpec(rods_mg_cm3=None)).hu, RODS)


def test_mindways_hand_example():
    # Model 3 certificate-like rod values (water and K2HPO4, mg/cm^3). HU built by hand from
    # sigma_CT = 1.25, beta_CT = -10: sigma_ref = 1.25 + 0.2174 = 1.4674,
    # beta_ref = -10 - 999.6 = -1009.6, HU = water + 1.4674 * K + (-1009.6).
    water = np.array([923.20, 1119.52, 1103.57, 1056.95, 1012.25])
    k = np.array([375.83, 157.05, 58.88, -53.40, -51.83])
    hu = water + 1.4674 * k - 1009.6
    # e.g. rod 1: 923.20 + 551.4929 - 1009.6 = 465.0929 HU
    assert hu[0] == pytest.approx(465.092942)
    cal = mindways_calibration(hu, water, k)
    assert cal.details["sigma_ref"] == pytest.approx(1.4674)
    assert cal.details["beta_ct"] == pytest.approx(-10.0)
    assert cal.slope == pytest.approx(1 / 1.25) and cal.intercept == pytest.approx(8.0)
    # rho = (HU - beta_CT) / sigma_CT: a voxel of 190 HU is (190 + 10) / 1.25 = 160 mg/cm^3
    assert cal.bmd(190.0) == pytest.approx(160.0)
    assert cal.r2 == pytest.approx(1.0)


def test_mindways_matches_ogo_example():
    # Published test data of Bonelab/Ogo's MindwaysCalibration (independent implementation).
    water = [923.20, 1119.52, 1103.57, 1056.95, 1012.25]
    k = [375.83, 157.05, 58.88, -53.40, -51.83]
    hu = [462.93637565619906, 345.73809215407005, 176.71197512467555, -35.378190313384316, -69.54917011727602]
    cal = mindways_calibration(hu, water, k)
    assert cal.details["sigma_ct"] == pytest.approx(1.24955849554)
    assert cal.details["beta_ct"] == pytest.approx(-10.1500468666)


def test_mindways_bad_input():
    with pytest.raises(CalibrationError):
        mindways_calibration([1, 2], [1000, 1000], [0, 100])
    with pytest.raises(CalibrationError):
        mindways_calibration([1, 2, 3], [1000, 1000], [0, 100, 200])


def test_internal_within_5_percent_of_phantom(phantom):
    cal_p = phantom_calibration(phantom.hu, RODS)
    bone = (phantom.labels.data >= 1) & (phantom.labels.data <= 3)
    cal_i = internal_calibration(phantom.hu, mask_bone=bone)
    assert set(cal_i.details["tissues"]) == {"air", "fat", "muscle"}
    assert cal_i.r2 > 0.99 and np.isfinite(cal_p.r2)
    lm = phantom.landmarks
    cal_b = internal_calibration(phantom.hu, mask_bone=bone,
                                 tissue_rois={"blood": (lm["aorta_center"], 8.0)})
    assert cal_b.details["measured_hu"]["blood"] == pytest.approx(40.0, abs=2.0)
    for bmd in (100.0, 150.0, 200.0):
        h = phantom.spec.hu_offset + phantom.spec.hu_per_mg * bmd
        for cal in (cal_i, cal_b):
            assert cal.bmd(h) == pytest.approx(cal_p.bmd(h), rel=0.05)


def test_internal_needs_air():
    data = np.full((30, 30, 10), 50.0) + np.random.default_rng(0).normal(0, 5, (30, 30, 10))
    with pytest.raises(CalibrationError, match="air"):
        internal_calibration(Volume(data.round(), (1, 1, 1)))


def test_reference_constants_physics():
    # NIST: K2HPO4 attenuates more than water per gram below ~100 keV; sensitivity falls with energy.
    assert k2hpo4_sensitivity(60) > k2hpo4_sensitivity(75) > k2hpo4_sensitivity(90) > 0.5
    ref = tissue_reference(75.0)
    assert ref["air"]["hu"] == pytest.approx(-999, abs=1.0)
    assert ref["fat"]["hu"] < 0 < ref["muscle"]["hu"] < ref["blood"]["hu"]


def test_apply_records_bmd_material(phantom):
    cal = Calibration(slope=0.8, intercept=2.0, method="phantom")
    v = cal.apply(phantom.hu)
    assert v.data.dtype == np.float32 and v.same_grid(phantom.hu)
    assert v.data[0, 0, 0] == pytest.approx(0.8 * phantom.hu.data[0, 0, 0] + 2.0, rel=1e-5)
    assert v.meta["bmd_material"] == "K2HPO4"
    assert Calibration(slope=1.0, intercept=0.0, material="HA").apply(phantom.hu).meta["bmd_material"] == "HA"
    with pytest.raises(CalibrationError):
        Calibration(slope=1.0, intercept=0.0, material="CaCO3")
