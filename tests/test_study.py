"""Tests of the cohort runner, statistics and report (fesim.study)."""

from __future__ import annotations

import csv
import json
import math
import os
import threading
import zlib

import numpy as np
import pytest
from scipy import stats as sps

from fesim.errors import FesimError, InputError
from fesim.study import cohort as co
from fesim.study import stats as st
from fesim.study.report import FIGURES, write_report
from fesim.study.tables import POS
from fesim.synthetic.cohort import ScanSpec, mean_dxa_gain_percent, synthetic_cohort

# --------------------------------------------------------------------------- fakes

CALLS = []
_LOCK = threading.Lock()


def fake_run_one(scan_path, out_dir, density_scale=1.0, phantom_seed=0, fail=False, **options):
    """Deterministic stand-in for fesim.pipeline.run_scan (a power law of density)."""
    with _LOCK:
        CALLS.append(str(out_dir))
    if fail or (scan_path and "bad" in str(scan_path)):
        raise ValueError(f"cannot mesh {scan_path}")
    # per-patient local density offset around the screw, stable across visits
    local = 1.0 + 0.08 * ((zlib.crc32(str(phantom_seed).encode()) % 1000) / 1000 - 0.5)
    vs = 120.0 * density_scale * local
    vt = 100.0 * density_scale
    res = {
        "pullout_strength_N": 0.045 * vs ** 1.8, "pullout_stiffness_N_per_mm": 30.0 * vs,
        "compression_strength_N": 0.9 * vt ** 1.7, "compression_stiffness_N_per_mm": 200.0 * vt,
        "vbmd_screw_mg_cm3": vs, "vbmd_trabecular_mg_cm3": vt, "abmd_g_cm2": 0.006 * vt + 0.2,
        "n_nodes": 100, "n_elements": 400, "n_dofs": 300, "element_order": 1,
        "strength_criterion": "fake-power-law", "fesim_version": "0.1.0",
        "timings_s": {"total": 0.0}, "mesh_h_mm": options.get("h", 2.0),
    }
    (out_dir / "result.json").write_text(json.dumps(res))
    return res


def _scans(tmp_path, n_patients=3, months=(0, 12, 24)):
    """Scan dicts of the synthetic cohort's first scans for the fake runner: its density levels
    and patient seeds, and a DXA value of the fake's power-law world (no DXA simulation)."""
    return [{"patient": s.patient, "month": s.month, "density_scale": s.density_scale,
             "phantom_seed": s.phantom_seed, "dxa_abmd_g_cm2": round(0.35 + 0.6 * s.density_scale, 4)}
            for s in synthetic_cohort(n_patients, months, seed=1) if s.repeat == 1]


@pytest.fixture(autouse=True)
def _clear_calls():
    CALLS.clear()


# --------------------------------------------------------------------------- synthetic

def test_synthetic_cohort_gain_curve_and_ids():
    # the FREEDOM reference curve the simulated DXA gains are compared with (the cohort's own
    # design is tested in test_synthetic_cohort.py)
    assert mean_dxa_gain_percent([0, 6, 12, 24, 48]) == pytest.approx([0, 2.85, 5.7, 7.8, 11.8])
    assert synthetic_cohort(1, (0,), seed=0)[0].patient == "P01"


# --------------------------------------------------------------------------- cohort runner

def test_run_cohort_resume_and_rerun_one(tmp_path):
    scans = _scans(tmp_path)
    rows = co.run_cohort(scans, tmp_path, run_one=fake_run_one)
    assert len(rows) == 9 and len(CALLS) == 9
    assert rows[0]["patient"] == "P01" and rows[0]["month"] == 0
    assert (tmp_path / "scans" / "P02_m12" / "result.json").exists()
    CALLS.clear()
    rows2 = co.run_cohort(scans, tmp_path, run_one=fake_run_one)
    assert CALLS == [] and rows2 == rows
    (tmp_path / "scans" / "P02_m12" / "result.json").unlink()
    co.run_cohort(scans, tmp_path, run_one=fake_run_one)
    assert [os.path.basename(c) for c in CALLS] == ["P02_m12"]
    # a truncated result (crash mid-write) is not valid and is rerun
    CALLS.clear()
    (tmp_path / "scans" / "P03_m0" / "result.json").write_text('{"pullout_strength_N": 1')
    co.run_cohort(scans, tmp_path, run_one=fake_run_one)
    assert [os.path.basename(c) for c in CALLS] == ["P03_m0"]
    # changed options invalidate every finished scan
    CALLS.clear()
    rows3 = co.run_cohort(scans, tmp_path, run_one=fake_run_one, options={"h": 1.5})
    assert len(CALLS) == 9 and rows3[0]["mesh_h_mm"] == 1.5


def test_results_of_another_fesim_build_are_rerun(tmp_path, monkeypatch, caplog):
    from fesim import provenance

    scans = _scans(tmp_path, n_patients=2, months=(0, 12))
    co.run_cohort(scans, tmp_path, run_one=fake_run_one)
    rec_path = tmp_path / "scans" / "P02_m0" / "inputs.json"
    rec = json.loads(rec_path.read_text())
    assert rec["fesim"]["code_sha256"] == provenance.code_fingerprint()
    # a result recorded by another build (changed fingerprint) is rerun, with one notice
    CALLS.clear()
    rec["fesim"]["code_sha256"] = "0" * 64
    rec_path.write_text(json.dumps(rec))
    with caplog.at_level("WARNING", logger="fesim"):
        co.run_cohort(scans, tmp_path, run_one=fake_run_one)
    assert [os.path.basename(c) for c in CALLS] == ["P02_m0"]
    notices = [r.getMessage() for r in caplog.records if "different fesim build" in r.getMessage()]
    assert len(notices) == 1 and "rerunning 1 scan" in notices[0]
    # a record without a build (an older fesim) is another build too
    CALLS.clear()
    rec = json.loads(rec_path.read_text())
    del rec["fesim"]
    rec_path.write_text(json.dumps(rec))
    co.run_cohort(scans, tmp_path, run_one=fake_run_one)
    assert [os.path.basename(c) for c in CALLS] == ["P02_m0"]
    # a code change (the running build's fingerprint) reruns every scan
    CALLS.clear()
    caplog.clear()
    monkeypatch.setattr(provenance, "code_fingerprint", lambda: "1" * 64)
    with caplog.at_level("WARNING", logger="fesim"):
        co.run_cohort(scans, tmp_path, run_one=fake_run_one)
    assert len(CALLS) == 4
    assert any("results from a different fesim build: rerunning 4 scan" in r.getMessage()
               for r in caplog.records)
    # changed options rerun too, but are not called another build
    CALLS.clear()
    caplog.clear()
    with caplog.at_level("WARNING", logger="fesim"):
        co.run_cohort(scans, tmp_path, run_one=fake_run_one, options={"h": 1.5})
    assert len(CALLS) == 4 and not any("fesim build" in r.getMessage() for r in caplog.records)


def test_code_fingerprint_follows_the_source_files():
    from fesim import provenance

    fp = provenance.code_fingerprint()
    assert len(fp) == 64 and fp == provenance.code_fingerprint()
    assert provenance.build_record() == {"version": __import__("fesim").__version__, "code_sha256": fp}
    # the same hash over the package's .py files, recomputed here: any edit changes it
    import hashlib
    from pathlib import Path

    root = Path(provenance.__file__).resolve().parent
    files = sorted((f for f in root.rglob("*.py") if "__pycache__" not in f.parts),
                   key=lambda f: f.relative_to(root).as_posix())
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes())
    assert h.hexdigest() == fp
    assert len(files) > 50 and any(f.name == "cohort.py" for f in files)


def test_run_cohort_failure_isolation(tmp_path):
    scans = _scans(tmp_path, n_patients=2, months=(0, 12))
    scans[1]["fail"] = True
    rows = co.run_cohort(scans, tmp_path, run_one=fake_run_one)
    assert [(r["patient"], r["month"]) for r in rows] == [("P01", 0), ("P02", 0), ("P02", 12)]
    fails = co.load_failures(tmp_path)
    assert len(fails) == 1 and fails[0]["patient"] == "P01" and fails[0]["month"] == 12
    assert fails[0]["error_type"] == "ValueError" and "cannot mesh" in fails[0]["error"]
    assert not (tmp_path / "scans" / "P01_m12" / "result.json").exists()
    # fixing the scan reruns only it, and clears the failure list
    CALLS.clear()
    scans[1]["fail"] = False
    rows = co.run_cohort(scans, tmp_path, run_one=fake_run_one)
    assert len(rows) == 4 and len(CALLS) == 1 and co.load_failures(tmp_path) == []


def test_interrupted_run_keeps_finished_rows_and_resumes(tmp_path):
    scans = _scans(tmp_path, n_patients=1, months=(0, 12, 24))
    calls = []

    def interrupt_on_second(scan_path, out_dir, **kw):
        calls.append(out_dir.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return fake_run_one(scan_path, out_dir, **kw)

    with pytest.raises(KeyboardInterrupt):
        co.run_cohort(scans, tmp_path, run_one=interrupt_on_second)
    assert [r["month"] for r in co.load_results_csv(tmp_path / "results.csv")] == [0]
    CALLS.clear()
    rows = co.run_cohort(scans, tmp_path, run_one=fake_run_one)
    assert [os.path.basename(c) for c in CALLS] == ["P01_m12", "P01_m24"]
    assert len(rows) == 3


def test_run_cohort_rejects_incomplete_result(tmp_path):
    def partial(scan_path, out_dir, **kw):
        return {"pullout_strength_N": 1.0}

    rows = co.run_cohort([{"patient": "P01", "month": 0, "path": None}], tmp_path, run_one=partial)
    assert rows == [] and "lacks key" in co.load_failures(tmp_path)[0]["error"]


def test_results_csv_columns_atomic_and_roundtrip(tmp_path, monkeypatch):
    scans = _scans(tmp_path, n_patients=2, months=(0, 24))
    rows = co.run_cohort(scans, tmp_path, run_one=fake_run_one)
    with open(tmp_path / "results.csv", newline="") as fh:
        header = next(csv.reader(fh))
    expected = ["patient", "month"] + [k for k in co.RESULT_KEYS if k != "timings_s"]
    assert header[:len(expected)] == expected and "timings_s" not in header
    assert header[-1] == "dxa_abmd_g_cm2"
    back = co.load_results_csv(tmp_path / "results.csv")
    assert back[3]["pullout_strength_N"] == pytest.approx(rows[3]["pullout_strength_N"])
    assert back[3]["patient"] == "P02" and back[3]["month"] == 24
    # a crash while writing leaves the previous file intact and no temporary behind
    before = (tmp_path / "results.csv").read_text()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(co.os, "replace", boom)
    with pytest.raises(OSError):
        co.write_results_csv(rows[:1], tmp_path / "results.csv")
    assert (tmp_path / "results.csv").read_text() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_scan_validation_and_manifest(tmp_path):
    with pytest.raises(InputError, match="duplicate"):
        co.normalise_scans([{"patient": "P1", "month": 0}, {"patient": "P1", "month": "0"}])
    with pytest.raises(InputError, match="patient ID"):
        co.normalise_scans([{"patient": "../x", "month": 0}])
    with pytest.raises(InputError, match="month"):
        co.normalise_scans([{"patient": "P1", "month": "twelve"}])
    with pytest.raises(InputError, match="dxa_abmd"):
        co.normalise_scans([{"patient": "P1", "month": 0, "dxa_abmd_g_cm2": "high"}])
    with pytest.raises(InputError, match="no scans"):
        co.normalise_scans([])
    with pytest.raises(InputError, match="backend"):
        co.run_cohort([{"patient": "P1", "month": 0}], tmp_path, run_one=fake_run_one, backend="x")
    (tmp_path / "a.nii").write_text("x")
    (tmp_path / "m.csv").write_text("patient,month,path,dxa_abmd_g_cm2,site\n"
                                    "P01,0,a.nii,0.81,x\nP01,12,a.nii,\n")
    man = co.load_manifest(tmp_path / "m.csv")
    assert man[0]["path"] == str((tmp_path / "a.nii").resolve())
    assert man[0]["dxa_abmd_g_cm2"] == "0.81" and man[1]["dxa_abmd_g_cm2"] is None
    assert "site" not in man[0]
    (tmp_path / "m2.csv").write_text("patient,month,path\nP01,0,missing.nii\n")
    with pytest.raises(InputError, match="not found"):
        co.load_manifest(tmp_path / "m2.csv")
    (tmp_path / "m3.csv").write_text("patient,path\nP01,a.nii\n")
    with pytest.raises(InputError, match="month"):
        co.load_manifest(tmp_path / "m3.csv")
    assert issubclass(InputError, FesimError)
    spec = synthetic_cohort(1, (0,), seed=2, repeat_fraction=0)[0]
    norm = co.normalise_scans([spec])[0]
    assert norm.path is None and norm.dxa_abmd_g_cm2 == spec.dxa_abmd_g_cm2 > 0
    assert norm.dxa_tscore == pytest.approx(round(spec.dxa().tscore, 2)) and norm.repeat == 1
    assert norm.extra == {"density_scale": spec.density_scale, "phantom_seed": spec.phantom_seed}
    assert isinstance(spec, ScanSpec)
    assert set(spec.as_scan("/x/dicom")) == {"patient", "month", "repeat", "path", "dxa_abmd_g_cm2",
                                             "dxa_tscore"}
    # manifest scans run with the path and the DXA value carried to the row
    rows = co.run_cohort(man, tmp_path / "out", run_one=fake_run_one)
    assert rows[0]["dxa_abmd_g_cm2"] == pytest.approx(0.81) and rows[1]["dxa_abmd_g_cm2"] is None


def test_dask_backend(tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    scans = _scans(tmp_path, n_patients=2, months=(0,))
    with distributed.LocalCluster(processes=False, n_workers=1, threads_per_worker=1,
                                  dashboard_address=":0") as cluster:
        rows = co.run_cohort(scans, tmp_path, run_one=fake_run_one, backend="dask",
                             scheduler_address=cluster.scheduler_address)
    assert len(CALLS) == 2
    local = co.run_cohort(scans, tmp_path / "local", run_one=fake_run_one)
    assert rows == local


def test_processes_backend_matches_local(tmp_path):
    scans = _scans(tmp_path, n_patients=2, months=(0, 12))
    scans[2]["fail"] = True
    rows = co.run_cohort(scans, tmp_path / "p", run_one=fake_run_one, backend="processes",
                         n_workers=2)
    local = co.run_cohort(scans, tmp_path / "l", run_one=fake_run_one)
    assert rows == local and len(rows) == 3
    assert [f["patient"] for f in co.load_failures(tmp_path / "p")] == ["P02"]


@pytest.mark.slow
def test_dask_backend_own_local_cluster(tmp_path):
    pytest.importorskip("dask.distributed")
    scans = _scans(tmp_path, n_patients=2, months=(0,))
    rows = co.run_cohort(scans, tmp_path, run_one=fake_run_one, backend="dask", n_workers=1)
    assert len(rows) == 2 and co.load_failures(tmp_path) == []


# --------------------------------------------------------------------------- statistics

def test_correlation_matches_scipy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=25)
    y = 0.7 * x + rng.normal(scale=0.6, size=25)
    c = st.correlation(list(x) + [None], list(y) + [3.0])
    ref = sps.pearsonr(x, y)
    assert c.n == 25 and c.r == pytest.approx(ref.statistic) and c.p == pytest.approx(ref.pvalue)
    assert c.rho == pytest.approx(sps.spearmanr(x, y).statistic)
    # Fisher CI by hand: tanh(atanh(r) +- 1.959964 / sqrt(22))
    z, half = math.atanh(c.r), 1.959964 / math.sqrt(22)
    assert (c.ci_low, c.ci_high) == pytest.approx((math.tanh(z - half), math.tanh(z + half)), abs=1e-6)
    ci = ref.confidence_interval(0.95)
    assert (c.ci_low, c.ci_high) == pytest.approx((ci.low, ci.high), abs=1e-9)
    reg = st.regression(x, y)
    lr = sps.linregress(x, y)
    assert (reg.slope, reg.intercept, reg.r2) == pytest.approx((lr.slope, lr.intercept, lr.rvalue ** 2))


def test_small_n_and_degenerate_inputs_give_nan():
    c = st.correlation([1, 2], [3, 4])
    assert math.isnan(c.r) and "n=2" in c.note
    c3 = st.correlation([1, 2, 3], [1, 3, 2])
    assert c3.r == pytest.approx(0.5) and math.isnan(c3.ci_low)
    assert "variance" in st.correlation([1, 1, 1, 1], [1, 2, 3, 4]).note
    assert math.isnan(st.regression([1, 2], [1, 2]).slope)
    assert math.isnan(st.percent_change([1, 2], [2, 3]).mean_pct)
    assert math.isnan(st.meng_test(0.8, 0.3, 0.4, 3).z)
    assert st.as_dict(c)["r"] is None


def test_percent_change_and_paired_tests():
    b = np.array([100.0, 120, 90, 110, 105])
    f = np.array([106.0, 125, 99, 115, 109])
    ch = st.percent_change(b, f)
    pct = 100 * (f - b) / b  # 6, 4.1667, 10, 4.5455, 3.8095
    assert ch.mean_pct == pytest.approx(5.704, abs=1e-3)
    assert ch.sd_pct == pytest.approx(np.std(pct, ddof=1))
    assert ch.p_ttest == pytest.approx(sps.ttest_rel(f, b).pvalue)
    assert ch.p_wilcoxon == pytest.approx(0.0625)  # exact: all 5 differences positive, 2/32


def test_meng_test_published_example():
    # Meng, Rosenthal & Rubin (1992), Psychol Bull 111:172, worked example:
    # r1 = .63, r2 = -.03, r12 = -.19, N = 15 -> Z = 1.68, one-sided p = .047,
    # 95 % CI of z1 - z2 = (-0.129, 1.671).
    # By hand: z1 = atanh(.63) = 0.7414, z2 = -0.0300, rbar2 = (.3969 + .0009)/2 = 0.1989,
    # f = 1.19 / (2 * 0.8011) = 0.7427, h = (1 - 0.7427 * 0.1989) / 0.8011 = 1.0639,
    # Z = 0.7714 * sqrt(12 / (2 * 1.19 * 1.0639)) = 0.7714 * 2.1769 = 1.679.
    t = st.meng_test(0.63, -0.03, -0.19, 15)
    assert t.z == pytest.approx(1.679, abs=2e-3)
    assert t.p / 2 == pytest.approx(0.047, abs=5e-4)
    assert (t.ci_low, t.ci_high) == pytest.approx((-0.129, 1.672), abs=1.5e-3)
    # f = 0.8 / (2 * 0.275) > 1 is capped at 1, so h = 1 and Z = dz sqrt(27 / (2 * 0.8))
    t2 = st.meng_test(0.9, 0.8, 0.2, 30)
    dz = math.atanh(0.9) - math.atanh(0.8)
    assert t2.z == pytest.approx(dz * math.sqrt(27 / 1.6), rel=1e-12)


def test_compare_dependent_from_data():
    rng = np.random.default_rng(5)
    v = rng.normal(size=40)
    a = 0.4 * v + rng.normal(size=40)
    pos = v + 0.4 * rng.normal(size=40)
    t = st.compare_dependent(pos, v, a)
    c = np.corrcoef([pos, v, a])
    ref = st.meng_test(c[0, 1], c[0, 2], c[1, 2], 40)
    assert t.z == pytest.approx(ref.z) and t.z > 2 and t.p < 0.05


# --------------------------------------------------------------------------- report

def test_report_files_and_headings(tmp_path):
    scans = _scans(tmp_path, n_patients=6)
    rows = co.run_cohort(scans, tmp_path, run_one=fake_run_one)
    stats = write_report(co.load_results_csv(tmp_path / "results.csv"), tmp_path / "report",
                         notes=["Synthetic test cohort."], scans_dir=tmp_path / "scans",
                         config={"options": {"mesh_size_mm": 3.0, "law": "keyak"},
                                 "backend": "local"})
    rep = tmp_path / "report"
    md = (rep / "summary.md").read_text()
    html = (rep / "report.html").read_text()
    for m in (0, 12, 24):
        assert f"### Month {m}" in md and f"<h3>Month {m}</h3>" in html
        assert f"Month {m}: dependent-correlation test" in md
    for text in ("Meng z", "Steiger Z", "Linear mixed model", "fake-power-law", "Synthetic test cohort.",
                 "Holm", "3 mm bulk", "keyak", "statsmodels"):
        assert text in md and text in html, text
    figs = sorted(p.name for p in (rep / "figures").iterdir())
    assert FIGURES["spaghetti"] in figs and "fig_pullout_vs_vbmd_screw_mg_cm3.png" in figs
    assert len(figs) == 9  # 2 strengths x 4 BMD measures + spaghetti (the fake has no curves)
    for name in figs:
        png = (rep / "figures" / name).read_bytes()
        assert len(png) > 5000 and png[:4] == b"\x89PNG" and f"](figures/{name})" in md
    # self-contained: every figure embedded, no external references
    assert html.count("data:image/png;base64,") == len(figs) and 'src="figures' not in html
    js = json.loads((rep / "stats.json").read_text())
    assert js["n_patients"] == 6 and js["months"] == [0, 12, 24]
    r = js["correlations"]["24"]["pullout_strength_N|vbmd_screw_mg_cm3"]["r"]
    ref = np.corrcoef([x["vbmd_screw_mg_cm3"] for x in rows if x["month"] == 24],
                      [x["pullout_strength_N"] for x in rows if x["month"] == 24])[0, 1]
    assert r == pytest.approx(ref) and r > 0.95
    ch = js["changes"]["24"]["pullout_strength_N"]
    assert ch["n"] == 6 and ch["mean_pct"] > 5 and ch["ci_pct_low"] < ch["mean_pct"] < ch["ci_pct_high"]
    assert stats["dependent"][24]["dxa_abmd_g_cm2"]["n"] == 6
    with open(rep / "stats.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    pearson = [t for t in table if t["analysis"] == "correlation" and t["method"] == "Pearson"
               and t["month"] == "24" and t["x"] == "vbmd_screw_mg_cm3" and t["y"] == POS]
    assert len(pearson) == 1 and float(pearson[0]["estimate"]) == pytest.approx(ref, abs=1e-11)
    assert float(pearson[0]["p_holm"]) >= float(pearson[0]["p"])


def test_report_curves_and_patient_pvds(tmp_path):
    scans = tmp_path / "scans"
    rows = []
    for p in ("P01", "P02"):
        for m in (0, 12):
            d = scans / f"{p}_m{m}"
            d.mkdir(parents=True)
            for case in ("compression", "pullout_left"):
                (d / f"{case}_curve.csv").write_text("displacement_mm,force_N\n0,0\n0.1,500\n0.2,700\n")
                (d / f"{case}.vtu").write_text("<VTKFile/>")
            rows.append({"patient": p, "month": m, POS: 800.0 + m + (p == "P02") * 50,
                         "compression_strength_N": 3000.0 + m, "vbmd_screw_mg_cm3": 100.0 + m})
    write_report(rows, tmp_path)
    figs = {p.name for p in (tmp_path / "figures").iterdir()}
    assert {FIGURES["curves_pullout"], FIGURES["curves_compression"]} <= figs
    pvd = (tmp_path / "patients" / "P02_compression.pvd").read_text()
    assert 'timestep="0"' in pvd and 'timestep="12"' in pvd
    assert 'file="../scans/P02_m12/compression.vtu"' in pvd
    assert not (tmp_path / "patients" / "P01_pullout_right.pvd").exists()


def test_report_small_cohort_does_not_crash(tmp_path):
    rows = co.run_cohort(_scans(tmp_path, n_patients=2, months=(0,)), tmp_path, run_one=fake_run_one)
    write_report(rows, tmp_path / "r")
    md = (tmp_path / "r" / "summary.md").read_text()
    assert "n=2 < 3" in md and "Change from baseline" in md
    with pytest.raises(InputError):
        write_report([], tmp_path / "r2")
