"""The examples run as tests (quick settings), so they stay true to the code."""

import importlib.util
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_export_model(tmp_path):
    mesh = _load("export_model").main(tmp_path)
    assert mesh.n_elements > 1000
    for f in ("model.vtu", "model.inp", "model.feb"):
        assert (tmp_path / f).stat().st_size > 0


def test_cohort_manifest(tmp_path):
    rows = _load("cohort_manifest").main(tmp_path, quick=True)
    assert len(rows) == 4
    assert (tmp_path / "study" / "results.csv").exists()
    assert (tmp_path / "study" / "summary.md").exists()


@pytest.mark.slow
def test_single_scan(tmp_path):
    res = _load("single_scan").main(tmp_path, quick=True)
    assert res["pullout_strength_N"] > 0
    assert (tmp_path / "result" / "model.inp").exists()


@pytest.mark.realdata
def test_lumbar_levels_on_real_ct(tmp_path):
    """The example analyses every lumbar level of the real CT (linear surrogate, quick mesh)."""
    from conftest import real_data_dir

    d = real_data_dir()
    rows = _load("lumbar_levels").main([str(d / "example_ct.nii.gz"), str(d / "example_ct_labels.nii.gz"),
                                        str(tmp_path), "--quick", "--strength", "surrogate"])
    assert [r["level"] for r in rows] == ["L1", "L2", "L3", "L4", "L5"]
    for r in rows:
        assert not r.get("error"), r
        assert 500 < r["compression_strength_N"] < 20000 and r["pullout_strength_N"] > 100
        assert r["held_area_mm2"] > 500 and r["supports_on"] == "bone"
        assert (tmp_path / r["level"] / "compression_bc.png").stat().st_size > 10000
    assert (tmp_path / "levels.csv").read_text().count("\n") == 6
