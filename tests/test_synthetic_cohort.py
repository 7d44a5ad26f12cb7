"""The realistic synthetic cohort: anatomy, posed scans, DXA from the patient model (fesim.synthetic)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from fesim import pipeline as pl
from fesim.errors import InputError, ScrewPlanError
from fesim.imaging.segmentation import subregions
from fesim.synthetic.anatomy import Anatomy, BoneState, Plaque, draw_anatomy
from fesim.synthetic.cohort import (CORTICAL_GAIN_PERCENT, SCAN_RODS_MG_CM3, TRABECULAR_GAIN_PERCENT,
                                    synthetic_cohort)
from fesim.synthetic.dxa import TSCORE_REFERENCE, simulate_dxa
from fesim.synthetic.scan import Pose, make_scan

OPTS = pl.RunOptions.from_dict({"rod_densities": SCAN_RODS_MG_CM3})


def bmd_measures(phantom, known_rods: bool = False) -> dict:
    """The pipeline's BMD measures of a scan, without meshing or FE (the measure-only path).

    ``known_rods``: calibrate at the rods' true positions instead of detecting them.
    """
    if known_rods:
        from fesim.imaging.calibration import phantom_calibration

        calib = phantom_calibration(phantom.hu, SCAN_RODS_MG_CM3,
                                    rods=[(r.center, r.radius_mm) for r in phantom.rods])
        bmd = calib.apply(phantom.hu)
    else:
        calib, bmd = pl.calibrate(phantom.hu, OPTS)
    mask, _ = pl.segment(bmd, OPTS)
    regions = subregions(mask)
    screws = pl.plan(mask, regions, OPTS)
    out = pl.bmd_measures(bmd, mask, regions, regions.meta["frame"], screws, OPTS)
    out.pop("vbmd_screw_per_screw_mg_cm3")
    return {"calibration": calib.method, "mask": mask.data, "bmd": bmd.data,
            "screws": [s.to_dict() for s in screws], **{k: float(v) for k, v in out.items()}}


def test_cohort_design_anatomy_poses_repeats_and_response():
    specs = synthetic_cohort(n_patients=120, months=(0, 12, 24), seed=3)
    assert specs == synthetic_cohort(n_patients=120, months=(24, 0, 12), seed=3)
    first = [s for s in specs if s.repeat == 1]
    assert len(first) == 360 and first[0].patient == "P001"
    repeats = [s for s in specs if s.repeat == 2]
    assert len(repeats) == 40 and all(s.month == 0 for s in repeats)
    by = {(s.patient, s.month, s.repeat): s for s in specs}
    for r in repeats:  # same day: same bone, new pose, new noise, new DXA positioning
        s = by[(r.patient, 0, 1)]
        assert r.bone == s.bone and r.anatomy == s.anatomy
        assert r.pose != s.pose and r.noise_seed != s.noise_seed and r.dxa_positioning != s.dxa_positioning
    anat = np.array([[s.anatomy.body_a, s.anatomy.body_h, s.anatomy.pedicle_half_w,
                      s.anatomy.pedicle_angle_deg, s.anatomy.cortex_mm, s.anatomy.central_loss]
                     for s in first]).reshape(120, 3, 6)
    assert np.all(anat == anat[:, :1])                       # anatomy fixed per patient
    assert np.all(anat[:, 0].std(axis=0) > 0.02 * np.abs(anat[:, 0].mean(axis=0)))  # varies between
    angles = np.array([s.pose.angle_deg for s in specs])
    shifts = np.array([np.linalg.norm(s.pose.t) for s in specs])
    assert angles.max() <= 15.0 + 1e-6 and angles.mean() > 5.0 and shifts.max() <= 20.0 + 1e-6
    assert len({s.pose for s in specs}) == len(specs)
    tb = np.array([s.bone.trabecular for s in first]).reshape(120, 3)
    cb = np.array([s.bone.cortical for s in first]).reshape(120, 3)
    gain_t = 100 * (tb[:, 1:] / tb[:, :1] - 1)
    gain_c = 100 * (cb[:, 1:] / cb[:, :1] - 1)
    assert gain_t.mean(0) == pytest.approx(TRABECULAR_GAIN_PERCENT[1:3], abs=1.5)
    assert gain_c.mean(0) == pytest.approx(CORTICAL_GAIN_PERCENT[1:3], abs=1.0)
    assert 2.0 < gain_t[:, 1].std(ddof=1) < 7.0              # responders differ
    assert 50.0 <= tb[:, 0].min() and tb[:, 0].max() <= 135.0
    with pytest.raises(InputError):
        synthetic_cohort(n_patients=0)
    with pytest.raises(InputError):
        synthetic_cohort(months=(12, 24))
    with pytest.raises(InputError):
        synthetic_cohort(2, repeat_fraction=1.5)


def test_posed_scan_places_the_same_anatomy():
    an = draw_anatomy(np.random.default_rng(7))
    bone = BoneState(90.0, 450.0)
    R = np.array([[np.cos(0.2), -np.sin(0.2), 0.0], [np.sin(0.2), np.cos(0.2), 0.0], [0.0, 0.0, 1.0]])
    pose = Pose(tuple(map(tuple, R)), (12.0, -8.0, 5.0))
    a = make_scan(an, bone, Pose(), seed=1)
    b = make_scan(an, bone, pose, seed=2)
    va, vb = (float((p.labels.data == 1).sum()) * p.hu.voxel_volume_mm3 for p in (a, b))
    assert vb == pytest.approx(va, rel=0.02)
    # the bone's centroid moves by the shift, its mineral content stays
    ca = a.bmd.index_to_world(np.argwhere(a.labels.data == 1).mean(axis=0))
    cb = b.bmd.index_to_world(np.argwhere(b.labels.data == 1).mean(axis=0))
    assert cb == pytest.approx(R @ ca + pose.t, abs=0.5)
    ma, mb = (float(p.bmd.data[p.labels.data == 1].sum()) * p.hu.voxel_volume_mm3 for p in (a, b))
    assert mb == pytest.approx(ma, rel=0.02)
    assert np.allclose(b.landmarks["body_axis"], R[:, 2])
    assert all(abs(r.center[1] - 62.0 - pose.t[1]) < 1e-9 for r in b.rods)  # the table moved


def test_aortic_calcification_changes_dxa_and_nothing_else():
    plaques = (Plaque(-90.0, 0.0, 12.0, 10.0, 1.5, 800.0), Plaque(-120.0, -6.0, 8.0, 6.0, 1.2, 600.0))
    an = replace(draw_anatomy(np.random.default_rng(11)), plaques=plaques)
    clean = replace(an, plaques=())
    bone = BoneState(85.0, 470.0)
    pose = Pose(shift_mm=(4.0, -3.0, 2.0))
    from fesim.synthetic.phantom import PhantomSpec

    spec = PhantomSpec(spacing_mm=(1.0, 1.0, 1.5), rods_mg_cm3=SCAN_RODS_MG_CM3)
    scans = make_scan(an, bone, pose, spec, seed=5), make_scan(clean, bone, pose, spec, seed=5)
    assert not np.array_equal(scans[0].hu.data, scans[1].hu.data)   # the plaques are in the image
    with_cal, without = (bmd_measures(p, known_rods=True) for p in scans)
    keys = ("vbmd_trabecular_mg_cm3", "vbmd_integral_mg_cm3", "abmd_g_cm2", "vbmd_screw_mg_cm3")
    for k in keys:
        assert with_cal[k] == without[k], k
    # with detected rods the calibration is a function of the whole image: it moves by < 0.3 %
    auto = [bmd_measures(p) for p in scans]
    assert auto[0]["calibration"] == auto[1]["calibration"] == "phantom"
    for k in keys:
        assert auto[0][k] == pytest.approx(auto[1][k], rel=3e-3), k
    assert np.array_equal(with_cal["mask"], without["mask"])         # the FE model's bone
    inside = with_cal["mask"] > 0
    assert np.array_equal(with_cal["bmd"][inside], without["bmd"][inside])
    assert with_cal["screws"] == without["screws"]
    d1, d0 = simulate_dxa(an, bone, seed=3), simulate_dxa(clean, bone, seed=3)
    assert d1.abmd_g_cm2 > d0.abmd_g_cm2 + 0.005                     # the plaques project onto L4
    assert d1.tscore == pytest.approx((d1.abmd_g_cm2 - TSCORE_REFERENCE[0]) / TSCORE_REFERENCE[1])


def test_dxa_sees_posterior_elements_density_and_repositioning():
    an, bone = Anatomy(), BoneState(85.0, 470.0)
    base = simulate_dxa(an, bone, seed=1)
    assert 0.55 < base.abmd_g_cm2 < 1.0 and 8.0 < base.area_cm2 < 20.0
    assert simulate_dxa(an, BoneState(85.0 * 1.1, 470.0), seed=1).abmd_g_cm2 > base.abmd_g_cm2
    bigger_posterior = replace(an, posterior_radius=4.0)
    assert simulate_dxa(bigger_posterior, bone, seed=1).abmd_g_cm2 > base.abmd_g_cm2 + 0.01
    from fesim.synthetic.dxa import draw_positioning

    rng = np.random.default_rng(0)
    values = [simulate_dxa(an, bone, draw_positioning(rng), seed=k).abmd_g_cm2 for k in range(4)]
    assert np.std(values, ddof=1) / np.mean(values) < 0.03         # DXA-like precision


@pytest.mark.slow
def test_bmd_measures_are_not_one_variable():
    """Per visit of the demo's cohort (21 patients x 0/12/24 months), the four BMD measures
    (trabecular vBMD, screw vBMD, QCT aBMD, simulated DXA aBMD) correlate below 0.95
    (measure-only path: no meshing, no FE)."""
    specs = [s for s in synthetic_cohort(21, (0, 12, 24), seed=0) if s.repeat == 1]
    keys = ("vbmd_trabecular_mg_cm3", "vbmd_screw_mg_cm3", "abmd_g_cm2")
    for month in (0, 12, 24):
        rows = []
        for s in (x for x in specs if x.month == month):
            try:
                m = bmd_measures(s.make_image())
            except ScrewPlanError:  # a planning weakness on a few anatomies (docs/study.md)
                continue
            rows.append([m[k] for k in keys] + [s.dxa_abmd_g_cm2])
        assert len(rows) >= 17, month
        r = np.corrcoef(np.array(rows).T)
        off = np.abs(r[np.triu_indices(len(keys) + 1, 1)])
        assert off.max() < 0.95, (month, np.round(r, 2))
