"""End-to-end: synthetic QCT DICOM series -> result.json, VTU files, de-identified outputs."""

import json
import math
import subprocess

import numpy as np
import pytest

from fesim.synthetic.phantom import PhantomSpec, make_phantom, write_phantom
from fesim.pipeline import run_scan
from fesim.results import ScanResult

from conftest import pv_check_script, real_data_dir

CONTRACT = ["pullout_strength_N", "pullout_stiffness_N_per_mm", "compression_strength_N",
            "compression_stiffness_N_per_mm", "vbmd_screw_mg_cm3", "vbmd_trabecular_mg_cm3", "abmd_g_cm2",
            "n_nodes", "n_elements", "n_dofs", "element_order", "strength_criterion", "fesim_version",
            "timings_s"]
FAST = dict(mesh_size_mm=3.0, screw_mesh_size_mm=1.5, element_order=1, strength_accuracy="screening",
            screws="left")


@pytest.fixture(scope="module")
def phantom_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    ph = make_phantom(PhantomSpec(seed=3, density_scale=0.65))
    write_phantom(ph, root / "scan")
    res = run_scan(root / "scan" / "dicom", root / "out", **FAST)
    return root, ph, res


def test_result_contract(phantom_run):
    root, ph, res = phantom_run
    on_disk = json.loads((root / "out" / "result.json").read_text())
    for k in CONTRACT:
        assert k in on_disk, k
    for k in CONTRACT[:7]:
        assert math.isfinite(on_disk[k]) and on_disk[k] > 0, (k, on_disk[k])
    assert on_disk["n_dofs"] == 3 * on_disk["n_nodes"]
    # the contract reads the real result back to the same object (the file's keys in its order)
    back = ScanResult.from_json(root / "out" / "result.json")
    assert back.extra == {} and set(back.analyses) == {"compression", "pullout_left"}
    assert list(back.to_dict()) == list(on_disk) and back.to_dict() == on_disk
    assert on_disk["element_order"] == 1
    assert set(on_disk["timings_s"]) >= {"read", "calibrate", "segment", "plan", "mesh", "materials"}
    # literature ranges for elderly lumbar vertebrae (domain.md section 5)
    assert 200 < on_disk["pullout_strength_N"] < 2500
    assert 1000 < on_disk["compression_strength_N"] < 8000
    # calibration recovered from the rods within 1 % of the phantom's true line
    cal = on_disk["calibration"]
    assert cal["method"] == "phantom" and cal["r2"] > 0.99
    assert abs(1.0 / cal["slope_mg_cm3_per_hu"] - ph.spec.hu_per_mg) / ph.spec.hu_per_mg < 0.01


def test_outputs_are_deidentified(phantom_run):
    root, ph, res = phantom_run
    dcm = next((root / "scan" / "dicom").iterdir()).read_bytes()
    assert b"SYNTH" in dcm  # the input does carry fake identifiers ...
    for f in (root / "out").rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            for needle in (b"SYNTH^JANE", b"SYN-", b"19480312"):
                assert needle not in data, (f, needle)


def test_vtu_and_curves_written(phantom_run):
    root, _, res = phantom_run
    out = root / "out"
    for case in ("compression", "pullout_left"):
        assert (out / f"{case}.vtu").stat().st_size > 1000
        curve = np.loadtxt(out / f"{case}_curve.csv", delimiter=",", skiprows=1)
        assert curve[:, 1].max() == pytest.approx(res["analyses"][case]["strength_N"])
        assert (out / f"{case}_steps.pvd").exists()


def test_vtu_opens_in_paraview(phantom_run, pvpython):
    root, _, _ = phantom_run
    script = pv_check_script()
    arrays = ["region", "bmd_mg_cm3", "E_MPa", "von_mises_MPa", "sed_MPa", "displacement_mm"]
    proc = subprocess.run([pvpython, str(script), str(root / "out" / "compression.vtu"), *arrays],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK" in proc.stdout


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    d = real_data_dir()
    out = tmp_path_factory.mktemp("real")
    return run_scan(d / "example_ct.nii.gz", out, labels=str(d / "example_ct_labels.nii.gz"),
                    level="L4", calibration="internal", **FAST)


@pytest.mark.slow
def test_real_ct_l4_with_labels(real_run):
    """Real CT (NIfTI) + TotalSegmentator labels, phantomless calibration, whole chain."""
    res = real_run
    assert res["calibration"]["method"] == "internal" and res["calibration"]["r2"] > 0.98
    assert 50 < res["vbmd_trabecular_mg_cm3"] < 250
    for k in CONTRACT[:4]:
        assert math.isfinite(res[k]) and res[k] > 0
    assert 1000 < res["compression_strength_N"] < 8000  # domain.md section 5


@pytest.fixture(scope="module")
def real_default_run(tmp_path_factory):
    """The real L4 at fesim's default model settings (tet10, 2 / 1 mm, standard accuracy)."""
    d = real_data_dir()
    out = tmp_path_factory.mktemp("real_default")
    return run_scan(d / "example_ct.nii.gz", out, labels=str(d / "example_ct_labels.nii.gz"),
                    level="L4", calibration="internal", screws="left", write_vtk=False)


@pytest.mark.slow
def test_real_ct_l4_strengths_in_literature_range(real_default_run):
    """Published ranges (docs/references.md): cadaver lumbar pullout 0.18-0.97 kN by bone status
    with SD 0.4 kN for normal bone, porcine 6.5 mm screws 0.59-2.62 kN at QCT 104-343 mg/cm^3;
    lumbar vertebral strength 1-8 kN.

    Measured with anatomical supports holding whole faces: pullout (left) 2.61 kN, compression
    3.98 kN (before them: 2.44 and 4.15 kN); since one partial-volume surface rule places every
    mask's surface (fesim.imaging.segmentation.refine_surface): 2.43 kN and 4.21 kN. The scan is not osteoporotic (screw vBMD ~185
    mg/cm^3) and the screw is bonded, without threads or interface failure, so fesim's pullout
    sits at the top of the porcine range and above cadaver means: a known limit of the bonded
    model (docs/validation.md), bounded here at 3 kN so that a further rise is caught.
    """
    res = real_default_run
    assert res["element_order"] == 2
    assert 200 < res["pullout_strength_N"] < 3000
    assert 1000 < res["compression_strength_N"] < 8000


def test_truncated_vertebra_refused(real_data, tmp_path):
    """T12 is cut by the top of the image: refused with a clear error, not analysed."""
    from fesim.errors import FesimError

    with pytest.raises(FesimError, match="truncat"):
        run_scan(real_data / "example_ct.nii.gz", tmp_path, labels=str(real_data / "example_ct_labels.nii.gz"),
                 level="T12", calibration="internal", **FAST)


def test_a_failed_case_write_stops_the_run_without_a_result(phantom_run, tmp_path, monkeypatch):
    """Case files are written by a background thread while the next case is solved; a write
    that fails (here: the first case's) is raised by run_scan, and no result.json is left."""
    import fesim.analysis.outputs as outputs

    root, ph, res = phantom_run
    cases = []

    def failing_write(out, mesh, mat, bmd, res, **kw):
        cases.append(res.name)
        raise OSError(f"disk full while writing {res.name}")

    monkeypatch.setattr(outputs, "write_case_outputs", failing_write)
    with pytest.raises(OSError, match="disk full while writing compression"):
        run_scan(root / "scan" / "dicom", tmp_path / "out", **dict(FAST, screws="both"))
    assert cases[0] == "compression" and len(cases) < 3  # stopped before the last case
    assert not (tmp_path / "out" / "result.json").exists()
