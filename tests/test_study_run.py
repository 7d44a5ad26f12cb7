"""fesim study: manifest and options validation, the study runner, per-scan logs, progress."""

from __future__ import annotations

import csv
import io
import json
import sys
import warnings

import numpy as np
import pytest

from fesim.errors import InputError
from fesim.progress import Progress, RunProgress
from fesim.study import cohort as co
from fesim.study.manifest import ManifestError, load_study
from fesim.study.runner import run_study

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from test_study import fake_run_one  # noqa: E402


def _write(path, text):
    path.write_text(text)
    return path


def test_manifest_lists_every_problem_at_once(tmp_path):
    (tmp_path / "a.nii").write_text("x")
    m = _write(tmp_path / "m.csv",
               "patient,month,path,level,dxa_abmd_g_cm2,labels\n"
               "P01,0,a.nii,L4,0.8,\n"
               "P01,12,missing.nii,L4,0.8,\n"        # missing scan
               "P01,12,a.nii,L4,,\n"                 # duplicate visit
               "P02,12,a.nii,L9,,\n"                 # unknown level; P02 has no baseline
               "P03,0,a.nii,L4,-1,seg.nii.gz\n"       # bad DXA, missing label map
               "../x,0,a.nii,L4,,\n"                 # bad ID
               "P04,twelve,a.nii,,,\n")              # bad month
    with pytest.raises(ManifestError) as e:
        load_study(m)
    probs = e.value.problems
    text = "\n".join(probs)
    assert len(probs) == 8, text
    for needle in ("line 3 (P01): scan not found: missing.nii", "line 4 (P01): duplicate visit month 12",
                   "unknown vertebral level 'L9'", "patient P02 has no baseline visit",
                   "dxa_abmd_g_cm2 '-1'", "label map not found: seg.nii.gz", "patient ID '../x'",
                   "month 'twelve'"):
        assert needle in text
    assert isinstance(e.value, InputError) and "8 problem(s)" in str(e.value)


def test_manifest_missing_columns_and_options_problems(tmp_path):
    m = _write(tmp_path / "m.csv", "patient,scan\nP01,a.nii\n")
    with pytest.raises(ManifestError, match="missing column.*path.*month or visit_date"):
        load_study(m)
    (tmp_path / "a.nii").write_text("x")
    m = _write(tmp_path / "m2.csv", "patient,month,path\nP01,0,a.nii\n")
    opts = _write(tmp_path / "o.toml", '[run]\nmesh_size_mm = 3.0\nmesh_sise = 2\n'
                                       '[study]\nworkers = "two"\n[other]\n')
    with pytest.raises(ManifestError) as e:
        load_study(m, opts)
    text = "\n".join(e.value.problems)
    assert "unknown option 'mesh_sise'" in text and "workers must be int" in text
    assert "unknown section(s) other" in text


def test_manifest_dates_repeats_arms_and_options(tmp_path):
    (tmp_path / "a.nii").write_text("x")
    (tmp_path / "seg.nii.gz").write_text("x")
    m = _write(tmp_path / "m.csv",
               "patient,visit_date,path,labels,level,dxa_abmd_g_cm2,dxa_tscore,arm,repeat\n"
               "001,2019-03-01,a.nii,seg.nii.gz,L4,0.80,-2.6,dmab,\n"
               "001,2019-03-01,a.nii,seg.nii.gz,L4,,,dmab,2\n"
               "001,2020-03-02,a.nii,seg.nii.gz,L3,0.85,-2.2,dmab,\n"
               "002,2019-05-10,a.nii,,,,,placebo,\n"
               "002,2021-05-01,a.nii,,,,,placebo,\n")
    opts = _write(tmp_path / "o.toml", '[run]\nmesh_size_mm = 3.0\nlevel = "L2"\n'
                                       '[study]\nbackend = "local"\nnotes = ["pilot"]\n')
    s = load_study(m, opts)
    assert [(x["patient"], x["month"], x.get("repeat")) for x in s.scans] == [
        ("001", 0, None), ("001", 0, "2"), ("001", 12, None), ("002", 0, None), ("002", 24, None)]
    assert s.scans[0]["labels"] == str((tmp_path / "seg.nii.gz").resolve())
    # per-scan level wins, the options file's fills the gaps and leaves the run options
    assert [x["level"] for x in s.scans] == ["L4", "L4", "L3", "L2", "L2"]
    assert s.run_options == {"mesh_size_mm": 3.0} and s.settings["notes"] == ["pilot"]
    scans = co.normalise_scans(s.scans)
    assert scans[1].scan_id == "001_m0_r2" and scans[0].dxa_tscore == -2.6 and scans[3].arm == "placebo"
    assert scans[0].extra == {"labels": s.scans[0]["labels"], "level": "L4"}


def test_run_study_end_to_end_with_fake_scans(tmp_path):
    for i in range(6):
        (tmp_path / f"s{i}.nii").write_text("x")
    lines = ["patient,month,path,dxa_abmd_g_cm2,arm,repeat"]
    for p in range(6):
        for m in (0, 12, 24):
            lines.append(f"P{p},{m},s{p}.nii,{0.7 + 0.01 * p + 0.001 * m:.3f},{'A' if p % 2 else 'B'},")
    lines.append("P0,0,s0.nii,0.7,B,2")
    m = _write(tmp_path / "m.csv", "\n".join(lines) + "\n")
    opts = _write(tmp_path / "o.toml", "[study]\nbackend = \"local\"\n")

    def run_one(path, out_dir, **kw):  # density from the scan name and the visit folder
        k = int(path[-5])
        month = int(out_dir.name.split("_m")[1].split("_")[0])
        rep = 1.01 if out_dir.name.endswith("_r2") else 1.0
        return fake_run_one(path, out_dir, density_scale=(0.6 + 0.05 * k) * (1 + month / 300) * rep,
                            phantom_seed=k)

    rows = run_study(m, tmp_path / "out", options=opts, run_one=run_one)
    assert len(rows) == 19
    out = tmp_path / "out"
    for f in ("results.csv", "stats.csv", "stats.json", "report.html", "summary.md", "study.json"):
        assert (out / f).stat().st_size > 0, f
    st = json.loads((out / "stats.json").read_text())
    assert st["arms"]["names"] == ["A", "B"] and "vbmd_screw_mg_cm3" in st["precision"]
    assert st["mixed"]["pullout_strength_N"]["visits"]["24"]["estimate"] > 0
    with open(out / "results.csv", newline="") as fh:
        header = next(csv.reader(fh))
    assert header[-5:] == list(co.INPUT_COLUMNS)
    log = (out / "scans" / "P1_m12" / "scan.log").read_text()
    assert "scan P1_m12:" in log and "scan P1_m12 done" in log
    assert not list((out / "scans").glob(".partial-*"))


def test_scan_log_holds_warnings_and_errors(tmp_path):
    def noisy(path, out_dir, **kw):
        warnings.warn("phantom calibration failed; using internal")
        if kw.get("fail"):
            raise RuntimeError("solver diverged")
        return fake_run_one(path, out_dir)

    co.run_cohort([{"patient": "P1", "month": 0}, {"patient": "P2", "month": 0, "fail": True}],
                  tmp_path, run_one=noisy)
    ok = (tmp_path / "scans" / "P1_m0" / "scan.log").read_text()
    bad = (tmp_path / "scans" / "P2_m0" / "scan.log").read_text()
    assert "WARNING" in ok and "phantom calibration failed" in ok
    assert "RuntimeError: solver diverged" in bad and "Traceback" in bad
    assert not (tmp_path / "scans" / "P2_m0" / "result.json").exists()
    assert co.load_failures(tmp_path)[0]["error"] == "solver diverged"


def test_rerun_replaces_an_outdated_scan_folder(tmp_path):
    scans = [{"patient": "P1", "month": 0}]
    co.run_cohort(scans, tmp_path, run_one=fake_run_one)
    (tmp_path / "scans" / "P1_m0" / "stale.vtu").write_text("old")
    co.run_cohort(scans, tmp_path, run_one=fake_run_one, options={"h": 3.0})
    d = tmp_path / "scans" / "P1_m0"
    assert not (d / "stale.vtu").exists() and json.loads((d / "result.json").read_text())["mesh_h_mm"] == 3.0
    assert [p.name for p in (tmp_path / "scans").iterdir()] == ["P1_m0"]


class _TTY(io.StringIO):
    def isatty(self):
        return True


def test_progress_only_on_a_terminal():
    quiet = io.StringIO()
    p = Progress(4, "study", "scans", stream=quiet)
    p.update()
    p.close()
    assert quiet.getvalue() == ""
    tty = _TTY()
    p = Progress(4, "study", "scans", stream=tty)
    p.t0 -= 30.0  # 30 s for the first scan -> 90 s left
    p.update(note="P01_m0")
    text = tty.getvalue()
    assert "[study] 1/4 scans (25 %)" in text and "ETA 1:30" in text and "P01_m0" in text
    p.update(failed=True)
    p.close()
    assert "2/4 scans (50 %, 1 failed)" in tty.getvalue() and tty.getvalue().endswith("\n")


def test_run_progress_reports_stages_and_steps():
    from fesim.analysis.strength import run_strength

    from test_strength import _uniaxial_case, cylinder_mesh

    tty = _TTY()
    rp = RunProgress("run", stream=tty)
    rp.line.min_interval_s = 0.0
    rp.cases(["uniaxial", "other"])
    rp.stage("mesh")
    rp.stage("uniaxial")
    calls = []
    cb = rp.step_callback("uniaxial", expected_steps=8)
    mesh = cylinder_mesh(n=(3, 3, 3))
    res = run_strength(mesh, np.full(mesh.n_elements, 500.0), np.full(mesh.n_elements, 0.3),
                       _uniaxial_case(mesh), solver="direct", max_steps=6, step_fraction=0.25,
                       progress=lambda *a: (calls.append(a), cb(*a)))
    assert [c[0] for c in calls] == list(range(1, res.n_steps + 1))
    assert all(c[1] == 6 for c in calls)
    assert [c[2] for c in calls] == pytest.approx(res.curve_force_N[1:])
    text = tty.getvalue()
    assert "[run] mesh" in text and "uniaxial (case 1/2) step 1/~6" in text  # capped at max_steps and "ETA ~" in text


def test_cli_study_reports_manifest_problems(tmp_path):
    import subprocess

    _write(tmp_path / "m.csv", "patient,month,path\nP01,12,nope.nii\n")
    proc = subprocess.run([sys.executable, "-m", "fesim", "study", "m.csv", "--out", "o"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "2 problem(s)" in proc.stderr and "nope.nii" in proc.stderr and "no baseline" in proc.stderr


class _Visit:
    """A cohort generator's visit spec that writes its own image (the swappable interface)."""

    def __init__(self, patient, month, k):
        self.patient, self.month, self.k = patient, month, k
        self.dxa_abmd_g_cm2 = 0.7 + 0.01 * k

    def write_image(self, folder):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "ct.nii").write_text(str(self.k))
        return folder / "ct.nii"

    def as_scan(self, path):
        return {"patient": self.patient, "month": self.month, "path": path,
                "dxa_abmd_g_cm2": self.dxa_abmd_g_cm2}


def _cohort(n_patients, months, seed=0):
    return [_Visit(f"Q{i}", m, i * 10 + j) for i in range(n_patients) for j, m in enumerate(months)]


def _density_from_image(path, out_dir, **kw):
    return fake_run_one(path, out_dir, density_scale=0.5 + int(open(path).read()) / 100, phantom_seed=1)


def test_demo_takes_any_cohort_generator(tmp_path):
    from fesim.study.demo import run_demo

    res = run_demo(tmp_path, n_patients=4, backend="local", cohort=_cohort,
                   run_one=_density_from_image)
    assert res["n_scans"] == 12 and len(res["rows"]) == 12
    html = (tmp_path / "report.html").read_text()
    assert "Synthetic cohort" in html and "Demo settings" in html and "tet4" in html
    assert "Found in this synthetic cohort: month 0 (n=4): r(pullout, screw vBMD) = " in html
    assert "r(pullout, DXA aBMD) = " in html and "FREEDOM mean +7.8 %" in html
    assert "Longitudinal consistency &#x27;mesh&#x27;" in html      # the demo's mode, stated
    assert (tmp_path / "inputs" / "Q3_m24" / "ct.nii").exists()
    # a second run reuses the images and every result
    again = run_demo(tmp_path, n_patients=4, backend="local", cohort=_cohort,
                     run_one=_density_from_image)
    assert again["rows"] == res["rows"]


def test_demo_images_of_another_fesim_build_are_written_anew(tmp_path, monkeypatch):
    from fesim import provenance
    from fesim.study.demo import write_demo_inputs

    scans = write_demo_inputs(tmp_path, n_patients=2, months=(0, 12), cohort=_cohort)
    image = tmp_path / "inputs" / "Q1_m12" / "ct.nii"
    image.write_text("marker")          # left alone by a rerun of the same build
    assert write_demo_inputs(tmp_path, n_patients=2, months=(0, 12), cohort=_cohort) == scans
    assert image.read_text() == "marker"
    monkeypatch.setattr(provenance, "code_fingerprint", lambda: "1" * 64)
    assert write_demo_inputs(tmp_path, n_patients=2, months=(0, 12), cohort=_cohort) == scans
    assert image.read_text() == "11"


def _random_result(path, out_dir, **kw):
    res = fake_run_one(path, out_dir)
    res["draw"] = float(np.random.rand())
    return res


def test_each_scan_starts_from_the_same_random_state(tmp_path):
    np.random.seed(123)
    expected_next = np.random.rand()
    np.random.seed(123)
    rows = co.run_cohort([{"patient": "P1", "month": 0}, {"patient": "P2", "month": 0}], tmp_path,
                         run_one=_random_result)
    assert rows[0]["draw"] == rows[1]["draw"] == np.random.RandomState(co.SCAN_SEED).rand()
    assert np.random.rand() == expected_next  # the caller's random state is left as it was


class _Recorder:
    """A RunProgress-like object that records what run_scan tells it."""

    def __init__(self):
        self.events = []

    def stage(self, name):
        self.events.append(("stage", name))

    def cases(self, names):
        self.events.append(("cases", tuple(names)))

    def step_callback(self, case, expected):
        def cb(step, max_steps, force):
            self.events.append(("step", case, step, max_steps, force))
        return cb


@pytest.mark.slow
def test_run_scan_reports_stages_and_load_steps(tmp_path):
    from fesim.pipeline import run_scan
    from study_helpers import write_phantom_scans

    scan = write_phantom_scans(tmp_path / "in", [("P01", 0, 3, 0.7)])[0]
    rec = _Recorder()
    res = run_scan(scan["path"], tmp_path / "out", progress=rec, mesh_size_mm=3.0,
                   screw_mesh_size_mm=1.5, element_order=1, strength_accuracy="screening",
                   write_vtk=False)
    stages = [e[1] for e in rec.events if e[0] == "stage"]
    assert stages[:7] == ["read", "calibrate", "segment", "plan", "bmd", "mesh", "materials"]
    cases = [e for e in rec.events if e[0] == "cases"][0][1]
    assert cases == ("compression", "pullout_left", "pullout_right")
    for case in cases:
        steps = [e for e in rec.events if e[0] == "step" and e[1] == case]
        n = res["analyses"][case]["n_steps"]
        assert [e[2] for e in steps] == list(range(1, n + 1))
        assert [e[4] for e in steps] == pytest.approx(res["analyses"][case]["curve_force_N"][1:])


def test_demo_cli_options_override_only_what_is_given(monkeypatch):
    from fesim import cli

    seen = {}
    monkeypatch.setattr("fesim.study.demo.run_demo",
                        lambda out, **kw: seen.update(kw) or {"rows": [], "n_scans": 0,
                                                              "inputs_s": 0.0, "total_s": 0.0})
    assert cli.main(["demo", "--out", "x", "--vtk", "--mesh-size", "2.5"]) == 0
    assert seen["options"] == {"write_vtk": True, "mesh_size_mm": 2.5}
    assert cli.main(["demo", "--out", "x"]) == 0
    assert seen["options"] == {} and seen["n_patients"] == 21 and seen["backend"] == "dask"
