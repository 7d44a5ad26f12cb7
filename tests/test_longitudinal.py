"""Longitudinal consistency: repositioned rescans registered to baseline, refusal of other
vertebrae, baseline-first scheduling in the study runner, precision in the report."""

from __future__ import annotations

import csv
import json
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from fesim.errors import RegistrationError
from fesim.imaging.register import check_registration, register_vertebra
from fesim.longitudinal import Baseline, follow_up, load_baseline, save_baseline
from fesim.synthetic.phantom import PhantomSpec
from fesim.synthetic.pose import posed_phantom

#: Rods without the water rod: its 25 HU contrast to the pad is lost when a tilted patient's
#: soft tissue is averaged into the rod finder's axial image.
RODS = (50.0, 100.0, 150.0, 200.0)
SPACING = (1.0, 1.0, 1.5)
#: Repositioned rescans: (seed, rotation deg about LPS x, y, z, shift mm, density scale).
RESCANS = [(2, (15.0, 0.0, 0.0), (0.0, 0.0, 20.0), 1.0),
           (3, (0.0, -15.0, 0.0), (20.0, 0.0, 0.0), 1.0),
           (4, (8.0, -8.0, 10.0), (-12.0, 10.0, -12.0), 1.2)]


def _spec(seed, scale=1.0):
    return PhantomSpec(seed=seed, spacing_mm=SPACING, rods_mg_cm3=RODS, density_scale=scale)


def _prep(hu):
    from fesim.pipeline import RunOptions, calibrate, segment

    opts = RunOptions(rod_densities=RODS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, bmd = calibrate(hu, opts)
        mask, _ = segment(bmd, opts)
    return bmd, mask


@pytest.fixture(scope="module")
def baseline():
    return _prep(posed_phantom(_spec(1)).hu)


def test_posed_phantom_moves_the_anatomy_not_the_pad():
    from fesim.synthetic.pose import pose_matrix

    ph = posed_phantom(_spec(5), (10.0, 0.0, 5.0), (4.0, -3.0, 12.0))
    assert np.allclose(ph.hu.direction, np.eye(3))
    lab = ph.labels
    centroid = lab.index_to_world(np.argwhere(lab.data == 1).astype(float)).mean(axis=0)
    ref = posed_phantom(_spec(5)).labels
    c0 = ref.index_to_world(np.argwhere(ref.data == 1).astype(float)).mean(axis=0)
    R = pose_matrix((10.0, 0.0, 5.0))
    assert np.allclose(centroid, R @ c0 + [4.0, -3.0, 12.0], atol=0.3)
    assert np.allclose(ph.landmarks["body_center"], [4.0, -3.0, 12.0])
    assert all(abs(r.center[1] - (62.0 - 3.0)) < 1e-9 for r in ph.rods)  # pad on the table


@pytest.mark.parametrize("seed, rot, shift, scale", RESCANS)
def test_registration_recovers_the_pose(baseline, seed, rot, shift, scale):
    ph = posed_phantom(_spec(seed, scale), rot, shift)
    reg = register_vertebra(*baseline, *_prep(ph.hu))
    pose = ph.landmarks["pose"]
    dR = reg.transform.rotation.T @ pose["rotation"]
    err_deg = np.degrees(np.arccos(np.clip((np.trace(dR) - 1.0) / 2.0, -1.0, 1.0)))
    err_mm = np.linalg.norm(reg.transform.translation - pose["shift_mm"])
    assert err_deg < 0.3 and err_mm < 0.3, (err_deg, err_mm)
    assert reg.dice > 0.93 and reg.correlation > 0.93 and reg.overlap == 1.0
    check_registration(reg)  # accepted


@pytest.mark.parametrize("scale, why", [((0.9, 0.9, 0.9), "volume"),       # a smaller vertebra (other level)
                                        ((1.1, 0.95, 1.0), "correlation"),  # another shape (other patient)
                                        ((1.0, 1.0, 0.85), "volume")])
def test_other_vertebra_is_refused(baseline, scale, why):
    ph = posed_phantom(_spec(9), (4.0, 3.0, 2.0), (5.0, 5.0, 5.0))
    ph.hu.spacing = ph.hu.spacing * np.array(scale)  # the same image of a differently sized vertebra
    reg = register_vertebra(*baseline, *_prep(ph.hu))
    with pytest.raises(RegistrationError) as exc:
        check_registration(reg)
    msg = str(exc.value)
    assert "\n" not in msg and "does not register to the baseline vertebra" in msg and why in msg


def test_follow_up_of_another_labelled_level_is_refused(baseline, tmp_path):
    bmd, mask = baseline
    base = Baseline(bmd, mask, mask, [], None, "P01_m0", {"labels": "labels.nii.gz", "level": "L4"})
    with pytest.raises(RegistrationError, match="analyses vertebra L3 but its baseline P01_m0 analysed L4"):
        follow_up(base, bmd, mask, None, "plan", level="L3")


def test_baseline_file_round_trip(baseline, tmp_path):
    from fesim.imaging.screwplan import ScrewPlan
    from fesim.imaging.segmentation import subregions

    bmd, mask = baseline
    regions = subregions(mask)
    screw = ScrewPlan("left", (10.0, 30.0, 0.0), (-0.2, -1.0, 0.0))
    save_baseline(tmp_path, bmd, mask, regions, [screw], None, "P01_m0", {"level": "L4"})
    b = load_baseline(tmp_path)
    assert b.scan_id == "P01_m0" and b.mesh is None and b.options == {"level": "L4"}
    assert np.allclose(b.screws[0].entry, screw.entry) and np.allclose(b.screws[0].direction, screw.direction)
    assert np.count_nonzero(b.mask.data) == np.count_nonzero(mask.data)
    pts = b.mask.index_to_world(np.argwhere(b.mask.data).astype(float))
    assert np.all(mask.sample(pts, order=0) == 1)  # the crop keeps the world geometry
    assert np.allclose(b.regions.meta["frame"]["body_axis"], regions.meta["frame"]["body_axis"])
    with pytest.raises(Exception, match="baseline.npz missing"):
        load_baseline(tmp_path / "nowhere")


# -- the study runner: baselines first -----------------------------------------------------------

def record_run_one(scan_path, out_dir, longitudinal="off", baseline=None, **options):
    """Fake per-scan function recording its start, end and longitudinal arguments."""
    t0 = time.time()
    if "bad" in str(scan_path):
        raise ValueError("cannot read")
    time.sleep(0.2)
    res = {k: 1.0 for k in ("pullout_strength_N", "pullout_stiffness_N_per_mm", "compression_strength_N",
                            "compression_stiffness_N_per_mm", "vbmd_screw_mg_cm3", "vbmd_trabecular_mg_cm3",
                            "abmd_g_cm2")}
    res.update(n_nodes=1, n_elements=1, n_dofs=3, element_order=1, strength_criterion="fake",
               fesim_version="test", timings_s={}, longitudinal_mode=longitudinal,
               t0=t0, t1=time.time(), baseline_dir=str(baseline or ""))
    return res


@pytest.mark.parametrize("backend", ["local", "processes", "dask"])
def test_cohort_runs_each_baseline_before_its_follow_ups(tmp_path, backend):
    from fesim.study.cohort import load_failures, run_cohort

    scans = [{"patient": "P01", "month": 12, "path": "a"}, {"patient": "P01", "month": 0, "path": "b"},
             {"patient": "P01", "month": 0, "repeat": 2, "path": "c"},
             {"patient": "P02", "month": 0, "path": "d"},
             {"patient": "P03", "month": 0, "path": "bad"}, {"patient": "P03", "month": 12, "path": "e"}]
    if backend == "dask":  # a threaded cluster: the follow-ups are added to as_completed
        distributed = pytest.importorskip("dask.distributed")
        with distributed.LocalCluster(processes=False, n_workers=2, threads_per_worker=1,
                                      dashboard_address=":0") as cluster:
            rows = run_cohort(scans, tmp_path, run_one=record_run_one, backend="dask",
                              scheduler_address=cluster.scheduler_address, longitudinal="mesh")
    else:
        rows = run_cohort(scans, tmp_path, run_one=record_run_one, backend=backend, n_workers=2,
                          longitudinal="mesh")
    by = {(r["patient"], r["month"], r["repeat"]): r for r in rows}
    base = by[("P01", 0, 1)]
    assert base["longitudinal_mode"] == "mesh" and base["baseline_dir"] == ""
    for key in (("P01", 12, 1), ("P01", 0, 2)):
        assert by[key]["baseline_dir"] == str((tmp_path / "scans" / "P01_m0").resolve())
        assert by[key]["t0"] >= base["t1"]  # started after its baseline ended
    assert by[("P02", 0, 1)]["longitudinal_mode"] == "off"  # a single scan: nothing to register
    fails = {f["month"]: f for f in load_failures(tmp_path) if f["patient"] == "P03"}
    assert fails[0]["error_type"] == "ValueError"
    assert fails[12]["error_type"] == "BaselineError" and "baseline scan P03_m0 failed" in fails[12]["error"]
    # resume: finished scans are not rerun (P03's are retried and fail again)
    rows2 = run_cohort(scans, tmp_path, run_one=record_run_one, longitudinal="mesh")
    assert [r["t0"] for r in rows2] == [r["t0"] for r in rows]


def test_cohort_longitudinal_default_and_off(tmp_path):
    from fesim.study.cohort import run_cohort

    scans = [{"patient": "P01", "month": 0, "path": "a"}, {"patient": "P01", "month": 6, "path": "b"}]
    from fesim.study.cohort import default_longitudinal

    rows = run_cohort(scans, tmp_path / "custom", run_one=record_run_one)  # custom run_one: off
    assert {r["longitudinal_mode"] for r in rows} == {"off"}
    assert default_longitudinal({}, True) == "mesh" and default_longitudinal({"mesh": "voxel"}, True) == "plan"
    rows = run_cohort(scans, tmp_path / "plan", run_one=record_run_one, longitudinal="plan")
    assert [r["longitudinal_mode"] for r in rows] == ["plan", "plan"]
    inputs = json.loads((tmp_path / "plan" / "scans" / "P01_m6" / "inputs.json").read_text())
    assert inputs["extra"]["baseline"].endswith("P01_m0")


def test_manifest_options_longitudinal(tmp_path):
    from fesim.study.manifest import read_options

    p = tmp_path / "o.toml"
    p.write_text('[study]\nlongitudinal = "mesh"\n')
    assert read_options(p)[1]["longitudinal"] == "mesh"
    p.write_text('[study]\nlongitudinal = "sometimes"\n')
    assert any("longitudinal must be off, plan or mesh" in x for x in read_options(p)[2])


# -- precision in stats.csv and the report -------------------------------------------------------

def _precision_rows():
    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        pos, vs = 2500.0 + 300 * i, 150.0 + 10 * i
        for month in (0, 12):
            for rep in ((1, 2) if month == 0 else (1,)):
                e = 1.0 + rng.normal(0, 0.01) if rep == 2 else 1.0
                rows.append({"patient": f"P{i}", "month": month, "repeat": rep,
                             "pullout_strength_N": pos * e * (1.1 if month else 1.0),
                             "compression_strength_N": 4 * pos * e, "vbmd_screw_mg_cm3": vs * e,
                             "vbmd_trabecular_mg_cm3": 0.8 * vs, "abmd_g_cm2": 0.006 * vs,
                             "n_elements": 1000, "element_order": 1, "strength_criterion": "x",
                             "longitudinal_mode": "plan",
                             **({"registration_dice": 0.97, "registration_correlation": 0.97,
                                 "registration_rotation_deg": 10.0, "registration_shift_mm": 12.0,
                                 "registration_rms_bmd_mg_cm3": 30.0} if rep == 2 or month else {})})
    return rows


def test_report_gives_precision_lsc_bland_altman_and_mode(tmp_path):
    from fesim.study.report import write_report
    from fesim.study.stats import precision

    rows = _precision_rows()
    st = write_report(rows, tmp_path, config={"longitudinal": "plan"})
    table = list(csv.DictReader((tmp_path / "stats.csv").open()))
    prec = [r for r in table if r["analysis"] == "precision" and r["y"] == "pullout_strength_N"]
    assert {r["method"].split(" (")[0] for r in prec} == {"RMS-SD of repeat scans", "least significant change"}
    ref = precision([[r["pullout_strength_N"] for r in rows if r["patient"] == p and r["month"] == 0]
                     for p in sorted({r["patient"] for r in rows})])
    lsc = next(r for r in prec if r["method"].startswith("least"))
    assert float(lsc["estimate"]) == pytest.approx(ref.lsc) and float(lsc["estimate_pct"]) == pytest.approx(ref.lsc_pct)
    assert st["precision"]["pullout_strength_N"]["rms_cv_pct"] == pytest.approx(ref.rms_cv_pct)
    png = tmp_path / "figures" / "fig_precision_bland_altman.png"
    assert png.read_bytes().startswith(b"\x89PNG")
    md = (tmp_path / "summary.md").read_text()
    assert "## Longitudinal consistency" in md and "Mode: plan" in md
    assert "Longitudinal mode of these numbers: plan" in md and "LSC %" in md
    assert "fig_precision_bland_altman.png" in md and "Longitudinal consistency 'plan'" in md
    assert "Bland-Altman" in (tmp_path / "report.html").read_text()


# -- the whole pipeline on repositioned rescans -------------------------------------------------

QUICK = {"mesh_size_mm": 3.0, "screw_mesh_size_mm": 1.5, "element_order": 1,
         "strength_accuracy": "screening", "write_vtk": False, "rod_densities": RODS}


def _scan(folder: Path, seed, rot=(0.0, 0.0, 0.0), shift=(0.0, 0.0, 0.0), scale=1.0) -> Path:
    from fesim.synthetic.phantom import write_phantom

    write_phantom(posed_phantom(_spec(seed, scale), rot, shift), folder, write_labels=False)
    return folder / "dicom"


@pytest.mark.slow
@pytest.mark.parametrize("mode, limit", [("mesh", 2.0), ("plan", 5.0)])
def test_repositioned_rescans_agree_within_2_percent(tmp_path, mode, limit):
    """The default mode (mesh) within 2 %; plan (own mesh of the follow-up) within 5 %.

    In plan mode the follow-up's own mask is meshed around the baseline's screws, so the
    pullout carries that mask's surface (a voxel either way at the pedicle wall) and where the
    baseline plan put the screw. Over two baseline noise draws (seeds 1 and 5) x these two
    rescans the largest deviation was 4.8 % with the global-threshold segmentation (commit
    c8dffdd, seed 5) and 4.0 % with the local-level one (commit bbe4f4e, seed 1): 3 % held for
    one draw only (docs/study.md).
    """
    from fesim.pipeline import run_scan

    base = run_scan(_scan(tmp_path / "in0", 1), tmp_path / "base", longitudinal=mode, **QUICK)
    assert (tmp_path / "base" / "baseline.npz").is_file() and base["longitudinal"]["role"] == "baseline"
    devs = []
    for seed, rot, shift, _ in RESCANS[:2]:
        r = run_scan(_scan(tmp_path / f"in{seed}", seed, rot, shift), tmp_path / f"r{seed}",
                     longitudinal=mode, baseline=tmp_path / "base", **QUICK)
        assert r["longitudinal"]["role"] == "follow-up" and r["longitudinal_mode"] == mode
        assert r["registration_dice"] > 0.93
        devs.append([100 * (r[k] / base[k] - 1) for k in ("pullout_strength_N", "compression_strength_N")])
    print(f"\n{mode}: % deviation of (pullout, compression) from the original scan: {np.round(devs, 2).tolist()}")
    assert np.all(np.abs(devs) < limit), devs


@pytest.mark.slow
def test_study_refuses_a_follow_up_of_another_patient(tmp_path):
    from fesim.study.cohort import load_failures
    from fesim.study.manifest import Study
    from fesim.study.runner import run_study
    from fesim.synthetic.phantom import write_phantom
    from study_helpers import QUICK_RUN

    scans = []
    for month, (scale, rot) in {0: ((1.0, 1.0, 1.0), 0.0), 12: ((1.0, 1.0, 1.0), 6.0),
                                24: ((1.1, 0.95, 1.0), 4.0)}.items():
        ph = posed_phantom(PhantomSpec(seed=month, spacing_mm=SPACING), (0.0, 0.0, rot), (3.0, 0.0, 5.0))
        ph.hu.spacing = ph.hu.spacing * np.array(scale)  # month 24: another patient's vertebra
        write_phantom(ph, tmp_path / f"m{month}", write_labels=False)
        scans.append({"patient": "P01", "month": month, "path": str(tmp_path / f"m{month}" / "dicom")})
    rows = run_study(Study(scans, dict(QUICK_RUN, write_vtk=False), {}), tmp_path / "out", backend="local")
    assert sorted(r["month"] for r in rows) == [0, 12]
    assert {r["longitudinal_mode"] for r in rows} == {"mesh"}
    (fail,) = load_failures(tmp_path / "out")
    assert fail["month"] == 24 and fail["error_type"] == "RegistrationError"
    assert fail["error"].startswith("follow-up of baseline P01_m0 refused: it does not register")
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "Mode: mesh" in md and "| P01 | 12 | 1 |" in md


def test_run_scan_refuses_inconsistent_longitudinal_arguments(tmp_path):
    from fesim.errors import InputError, OptionError
    from fesim.pipeline import run_scan

    with pytest.raises(InputError, match="longitudinal consistency is off"):
        run_scan(tmp_path, tmp_path / "o", baseline=tmp_path)
    with pytest.raises(OptionError, match="must be one of off, plan, mesh"):
        run_scan(tmp_path, tmp_path / "o", longitudinal="sometimes")
    with pytest.raises(InputError, match="baseline.npz missing"):
        run_scan(tmp_path, tmp_path / "o", longitudinal="mesh", baseline=tmp_path)
    with pytest.raises(OptionError, match="tetrahedral baseline mesh"):
        run_scan(tmp_path, tmp_path / "o", longitudinal="mesh", mesh="voxel")


def test_cli_run_takes_a_baseline(tmp_path, monkeypatch):
    import fesim.pipeline
    from fesim.cli import main

    seen = {}

    def fake(scan, out, progress=None, longitudinal="off", baseline=None, **opts):
        seen.update(longitudinal=longitudinal, baseline=baseline)
        raise RegistrationError("follow-up refused: test")

    monkeypatch.setattr(fesim.pipeline, "run_scan", fake)
    rc = main(["run", str(tmp_path), "--out", str(tmp_path / "o"), "--baseline", str(tmp_path / "b")])
    assert rc == 2 and seen == {"longitudinal": "mesh", "baseline": str(tmp_path / "b")}
