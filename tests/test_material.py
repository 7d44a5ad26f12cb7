"""Tests of the material model: density chain per calibration material, law registries,
failure constants, implant materials, and the CLI refusing an ash equation for the wrong BMD."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest

from fesim import material as M
from fesim.errors import MaterialError
from fesim.mesh.tetmesh import TetMesh

PKG = Path(M.__file__).parent


def test_density_chain_per_material():
    assert M.qct_to_ash(100.0) == pytest.approx(1.22 * 0.1 + 0.0523)
    assert M.qct_to_ash(100.0, "HA", "les") == pytest.approx(0.877 * 0.1 + 0.0789)
    assert M.qct_to_ash(np.array([250.0]), "HA", "identity")[0] == pytest.approx(0.25)
    assert M.qct_to_ash(-50.0, "K2HPO4", "identity") == 0.0
    assert M.ash_to_apparent(0.3) == pytest.approx(0.5)
    d = M.densities(np.array([-10.0, 200.0]), "HA", "les")
    np.testing.assert_allclose(d["qct"], [0.0, 0.2])
    np.testing.assert_allclose(d["apparent"], d["ash"] / 0.6)
    with pytest.raises(MaterialError, match="defined for K2HPO4.*HA-equivalent.*identity or les"):
        M.qct_to_ash(100.0, "HA", "keyak")
    with pytest.raises(MaterialError, match="defined for HA.*K2HPO4-equivalent"):
        M.qct_to_ash(100.0, "K2HPO4", "les")
    with pytest.raises(MaterialError, match="unknown ash-density equation 'nope'"):
        M.qct_to_ash(100.0, "K2HPO4", "nope")
    with pytest.raises(MaterialError, match="calibration material"):
        M.qct_to_ash(100.0, "CaCO3", "identity")
    for eq in M.ASH_EQUATIONS.values():
        assert eq.citation and set(eq.materials) <= set(M.BMD_MATERIALS)
        for mat in M.BMD_MATERIALS:  # every equation is usable for some material, refused otherwise
            if mat in eq.materials:
                assert np.isfinite(M.qct_to_ash(150.0, mat, eq.name))
            else:
                with pytest.raises(MaterialError):
                    M.qct_to_ash(150.0, mat, eq.name)


def test_bmd_material_read_from_volume():
    from fesim.imaging.calibration import Calibration
    from fesim.imaging.volume import Volume
    hu = Volume(np.zeros((3, 3, 3), np.float32), (1.0, 1.0, 1.0))
    assert M.bmd_material_of(Calibration(1.0, 0.0, material="HA").apply(hu)) == "HA"
    with pytest.raises(MaterialError, match="does not record"):
        M.bmd_material_of(hu)


def test_registries():
    assert M.LAWS.names()[:4] == ("keyak", "morgan", "kopperdahl", "keller")
    for reg in (M.LAWS, M.STRENGTH_LAWS):
        for lw in reg.values():
            lo, hi = lw.valid_range
            assert lw.citation and lw.density in M.DENSITY_KINDS and 0 <= lo < hi
    assert all(lw.strength in M.STRENGTH_LAWS for lw in M.LAWS.values())
    with pytest.raises(MaterialError, match="already registered"):
        M.LAWS.add(M.LAWS["keyak"])
    with pytest.raises(MaterialError, match="unknown density-strength law 'nope'; choose from keyak"):
        M.yield_stress("nope", 100.0)


def test_kopperdahl_benchmark_laws():
    # Walle et al. 2025 benchmark: rho = QCT density (K2HPO4) in g/cm^3 = BMD / 1000.
    np.testing.assert_allclose(M.yield_stress("kopperdahl", [150.0, 1000.0]), [37.4 * 0.15**1.39, 37.4])
    np.testing.assert_allclose(M.modulus("kopperdahl", [70.0, 150.0]), [183.0, 407.0], atol=1.0)
    np.testing.assert_allclose(M.modulus("crawford", [70.0, 150.0, 5.0]), [191.4, 449.8, 0.0], atol=0.1)
    with pytest.raises(MaterialError, match="takes K2HPO4-equivalent QCT density"):
        M.modulus("kopperdahl", 150.0, material="HA")
    # morgan's yield is its modulus times the compressive yield strain
    e, s = M.apply_law("morgan", 300.0, "identity")
    assert s == pytest.approx(M.YIELD_STRAIN_COMPRESSION * e)
    # a chosen strength law replaces the paired one
    _, s = M.apply_law("keyak", 150.0, "identity", strength="kopperdahl")
    assert s == pytest.approx(37.4 * 0.15**1.39)


def test_failure_constants_owned_once():
    from fesim.analysis.strength import FailureModel
    fm = FailureModel()
    assert (fm.eps_yield_compression, fm.eps_yield_tension) == (0.0084, 0.0078)
    assert (M.YIELD_STRAIN_COMPRESSION, M.YIELD_STRAIN_TENSION) == (0.0084, 0.0078)


def test_solids_and_screw_plan():
    from fesim.imaging.screwplan import ScrewPlan
    assert (M.TITANIUM.E_mpa, M.TITANIUM.nu, M.TITANIUM.yield_mpa) == (110000.0, 0.3, 880.0)
    assert (M.PMMA.E_mpa, M.PMMA.nu, M.PMMA.yield_mpa) == (2500.0, 0.3, 70.0)
    s = ScrewPlan("x", [0, 0, 0], [0, 0, 1])
    d = s.to_dict()
    assert (d["E_mpa"], d["nu"], d["material"]) == (110000.0, 0.3, "Ti-6Al-4V")
    json.dumps(d)


def test_element_materials_reads_bmd_material_and_screw_plans():
    from fesim.imaging.screwplan import ScrewPlan
    from fesim.mesh.materials import element_materials
    mesh = TetMesh(np.random.default_rng(0).random((8, 3)), np.array([[0, 1, 2, 3]] * 5),
                   np.array([1, 1, 10, 11, 21]))
    bmd = np.array([100.0, 300.0, 0.0, 0.0, 0.0])
    ha = element_materials(mesh, bmd, ash_method="les", bmd_material="HA")
    assert ha.rho_ash[0] == pytest.approx(0.877 * 0.1 + 0.0789)
    assert ha.E[0] == pytest.approx(M.modulus("keyak", 100.0, "HA", "les"))
    with pytest.raises(MaterialError, match="'keyak' is defined for K2HPO4"):
        element_materials(mesh, bmd, ash_method="keyak", bmd_material="HA")
    with pytest.raises(MaterialError, match="'les' is defined for HA"):
        element_materials(mesh, bmd, ash_method="les")
    steel = M.SolidMaterial("steel", 200000.0, 0.29, 500.0, "test value")
    screws = [ScrewPlan("a", [0, 0, 0], [0, 0, 1]), ScrewPlan("b", [0, 0, 0], [0, 0, 1], material=steel)]
    mat = element_materials(mesh, bmd, ash_method="identity", screws=screws, strength_law="kopperdahl")
    np.testing.assert_allclose(mat.E[2:], [110000.0, 200000.0, 2500.0])
    np.testing.assert_allclose(mat.nu[2:], [0.3, 0.29, 0.3])
    np.testing.assert_allclose(mat.yield_stress, [37.4 * 0.1**1.39, 37.4 * 0.3**1.39, 880.0, 500.0, 70.0])
    from fesim.errors import MeshError
    with pytest.raises(MeshError, match="no screw plan"):
        element_materials(mesh, bmd, screws=screws[:1])


def test_material_imports_nothing_above_it():
    for f in PKG.glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                mod = ("fesim." if node.level else "") + node.module
                assert not any(mod.startswith(f"fesim.{p}") for p in ("imaging", "mesh", "fem", "analysis",
                                                                       "study", "io", "pipeline")), (f, mod)


def test_cli_refuses_ash_equation_for_other_material(tmp_path, capsys):
    from fesim.cli import main
    # refused at option validation (phantom calibration: the BMD material is the rods'), one line, exit 2
    rc = main(["run", str(tmp_path), "--out", str(tmp_path / "o"), "--calibration", "phantom",
               "--rod-material", "HA", "--ash-conversion", "keyak"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "'keyak' is defined for K2HPO4" in err[0]
    rc = main(["run", str(tmp_path), "--out", str(tmp_path / "o"), "--calibration", "none",
               "--ash-conversion", "les"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "'les' is defined for HA" in err[0]


@pytest.mark.slow
@pytest.mark.parametrize("rod_material, ash", [("K2HPO4", "keyak"), ("HA", "les"), ("HA", "identity")])
def test_phantom_runs_with_ash_equation_of_its_material(tmp_path, rod_material, ash):
    """Whole chain on the synthetic phantom, rods declared as K2HPO4 or HA."""
    from fesim.synthetic.phantom import PhantomSpec, make_phantom, write_phantom
    from fesim.pipeline import run_scan
    scan = write_phantom(make_phantom(PhantomSpec()), tmp_path / "ph")
    res = run_scan(scan, tmp_path / "out", calibration="phantom", rod_material=rod_material,
                   ash_conversion=ash, screws="left", element_order=1, mesh_size_mm=3.0,
                   screw_mesh_size_mm=1.5, strength="surrogate", write_vtk=False)
    assert res["calibration"]["material"] == rod_material and res["ash_conversion"] == ash
    assert res["pullout_strength_N"] > 0 and res["compression_strength_N"] > 0
