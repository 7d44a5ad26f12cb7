"""Reruns agree (issue 14): the same scan and options give the same numbers to 1e-9 relative,
whether run again, in another process with one BLAS thread and another hash seed, or in a
cohort of 1 or 2 workers; and every result records what produced it (provenance).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fesim.synthetic.phantom import PhantomSpec, make_phantom, write_phantom
from fesim.provenance import input_sha256
from fesim.study.cohort import run_cohort

ROOT = Path(__file__).resolve().parents[1]
QUICK = dict(mesh_size_mm=3.0, screw_mesh_size_mm=1.5, element_order=1, strength="surrogate",
             screws="left", write_vtk=False)
RTOL = 1e-9


def _compare(a, b, path="", worst=None):
    """Assert that two JSON trees hold the same keys, strings and numbers (to RTOL relative);
    timings are skipped. Returns the largest relative difference seen."""
    worst = [0.0] if worst is None else worst
    if isinstance(a, dict):
        assert set(a) == set(b), (path, set(a) ^ set(b))
        for k in a:
            if k != "timings_s":
                _compare(a[k], b[k], f"{path}/{k}", worst)
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _compare(x, y, f"{path}[{i}]", worst)
    elif isinstance(a, (int, float)) and not isinstance(a, bool):
        if math.isnan(a) or math.isnan(b):
            assert math.isnan(a) and math.isnan(b), path
        elif a != b:
            rel = abs(a - b) / max(abs(a), abs(b))
            worst[0] = max(worst[0], rel)
            assert rel <= RTOL, (path, a, b, rel)
    else:
        assert a == b, (path, a, b)
    return worst[0]


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    root = tmp_path_factory.mktemp("repro")
    out = []
    for seed, scale in ((21, 0.7), (22, 0.9)):
        write_phantom(make_phantom(PhantomSpec(seed=seed, density_scale=scale)), root / f"s{seed}",
                      write_labels=False)
        out.append({"patient": f"R{seed}", "month": 0, "path": str(root / f"s{seed}" / "dicom")})
    return root, out


@pytest.fixture(scope="module")
def cohorts(scans):
    root, items = scans
    run_cohort(items, root / "one", backend="local", options=QUICK)
    run_cohort(items, root / "two", backend="processes", n_workers=2, options=QUICK)
    return root


def _result(root, sub, patient):
    return json.loads((root / sub / "scans" / f"{patient}_m0" / "result.json").read_text())


def test_one_vs_two_workers_agree(cohorts, scans):
    _, items = scans
    worst = 0.0
    for s in items:
        worst = max(worst, _compare(_result(cohorts, "one", s["patient"]), _result(cohorts, "two", s["patient"])))
        for csv in (cohorts / "one" / "scans" / f"{s['patient']}_m0").glob("*.csv"):
            a = np.loadtxt(csv, delimiter=",", skiprows=1)
            b = np.loadtxt(cohorts / "two" / "scans" / f"{s['patient']}_m0" / csv.name, delimiter=",", skiprows=1)
            np.testing.assert_allclose(a, b, rtol=RTOL, atol=0)
    print(f"1 vs 2 workers: max relative difference {worst:.3g}")
    assert worst <= RTOL


def test_rerun_in_another_process_agrees(cohorts, scans, tmp_path):
    """A fresh interpreter with one BLAS thread (as dask workers run) and another hash seed."""
    _, items = scans
    s = items[0]
    code = ("import sys, json; from fesim.pipeline import run_scan; "
            f"run_scan(sys.argv[1], sys.argv[2], **json.loads(sys.argv[3]))")
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code, s["path"], str(tmp_path / "r"), json.dumps(QUICK)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rerun = json.loads((tmp_path / "r" / "result.json").read_text())
    worst = _compare(_result(cohorts, "one", s["patient"]), rerun)
    print(f"rerun, 1 BLAS thread: max relative difference {worst:.3g}")
    assert worst <= RTOL


def test_provenance_recorded(cohorts, scans):
    _, items = scans
    res = _result(cohorts, "one", items[0]["patient"])
    prov = res["provenance"]
    assert prov["fesim_version"] == res["fesim_version"]
    assert {"python", "numpy", "scipy", "pydicom"} <= set(prov["libraries"])
    assert prov["options"]["mesh_size_mm"] == 3.0 and prov["options"]["element_order"] == 1
    assert prov["input_sha256"] == input_sha256(items[0]["path"]) and len(prov["input_sha256"]) == 64
    assert prov["input_sha256"] != _result(cohorts, "one", items[1]["patient"])["provenance"]["input_sha256"]


def test_input_hash_sees_every_byte(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "a").write_bytes(b"123")
    h = input_sha256(d)
    (d / "a").write_bytes(b"124")
    assert input_sha256(d) != h
    (d / "a").write_bytes(b"123")
    assert input_sha256(d) == h
    (d / "a").rename(d / "b")
    assert input_sha256(d) != h
