"""Round trips of VTU / INP / FEB exports and a CalculiX run of a written deck."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from fesim.errors import InputError
from fesim.io.abaqus import read_inp, write_inp
from fesim.io.febio import read_feb, write_feb
from fesim.io.vtk import read_vtu, write_pvd, write_vtu
from fesim.mesh.mesher import to_quadratic
from fesim.mesh.refine import kuhn_lattice, positive_cells
from fesim.mesh.tetmesh import TetMesh


@pytest.fixture(scope="module")
def block():
    """10 x 10 x 20 mm bar of Kuhn tets, upper half screw (region 10)."""
    lat = kuhn_lattice(np.zeros(3), 2.5, (4, 4, 8))
    cells = positive_cells(lat.points, lat.cells)
    cen = lat.points[cells].mean(axis=1)
    region = np.where(cen[:, 2] > 10, 10, 1)
    return TetMesh(lat.points, cells, region)


@pytest.mark.parametrize("order", [1, 2])
def test_vtu_round_trip(tmp_path, block, order):
    m = block if order == 1 else to_quadratic(block)
    e = np.linspace(1, 2, m.n_elements)
    u = np.random.default_rng(0).random((m.n_nodes, 3))
    p = write_vtu(tmp_path / "m.vtu", m, cell_data={"E": e}, point_data={"u": u})
    r, cd, pd = read_vtu(p)
    np.testing.assert_array_equal(r.cells, m.cells)
    np.testing.assert_array_equal(r.region, m.region)
    np.testing.assert_allclose(r.points, m.points)
    np.testing.assert_allclose(cd["E"], e)
    np.testing.assert_allclose(pd["u"], u)
    pvd = write_pvd(tmp_path / "s.pvd", [(0.0, p), (1.5, p)])
    assert pvd.read_text().count("<DataSet") == 2 and 'file="m.vtu"' in pvd.read_text()
    with pytest.raises(InputError):
        write_vtu(tmp_path / "x.vtu", m, cell_data={"bad": np.zeros(3)})


def _materials(m):
    E = np.where(m.region == 10, 110000.0, np.geomspace(100, 5000, m.n_elements))
    return E, np.where(m.region == 10, 0.3, 0.25)


@pytest.mark.parametrize("order", [1, 2])
def test_inp_round_trip(tmp_path, block, order):
    m = block if order == 1 else to_quadratic(block)
    E, nu = _materials(m)
    bottom = np.flatnonzero(m.points[:, 2] < 1e-9)
    top = np.flatnonzero(m.points[:, 2] > 20 - 1e-9)
    steps = [{"name": "pull", "boundary": [("BOTTOM", 1, 3, 0.0)], "cload": [("TOP", 3, 10.0)]}]
    err = write_inp(tmp_path / "m.inp", m, E, nu, {"BOTTOM": bottom, "TOP": top}, n_bins=10, steps=steps)
    assert err["n_materials"] <= 12 and err["max_rel_error"] > 0
    r = read_inp(tmp_path / "m.inp")
    np.testing.assert_array_equal(r["mesh"].cells, m.cells)
    np.testing.assert_array_equal(r["mesh"].region, m.region)
    np.testing.assert_allclose(r["mesh"].points, m.points)
    np.testing.assert_array_equal(r["node_sets"]["TOP"], top)
    rel = np.abs(r["E"] - E) / E
    assert rel.max() == pytest.approx(err["max_rel_error"], rel=1e-6)
    np.testing.assert_allclose(r["nu"], nu)
    assert r["steps"][0]["cload"] == [("TOP", 3, 10.0)]
    with pytest.raises(InputError):
        write_inp(tmp_path / "b.inp", m, E, nu, {"1bad": bottom})


@pytest.mark.parametrize("order", [1, 2])
def test_feb_round_trip(tmp_path, block, order):
    m = block if order == 1 else to_quadratic(block)
    E, nu = _materials(m)
    err = write_feb(tmp_path / "m.feb", m, E, nu, {"fixed": [0, 1, 2]}, n_bins=8)
    r = read_feb(tmp_path / "m.feb")
    np.testing.assert_array_equal(r["mesh"].cells, m.cells)
    np.testing.assert_array_equal(r["mesh"].region, m.region)
    np.testing.assert_allclose(r["mesh"].points, m.points)
    np.testing.assert_array_equal(r["node_sets"]["fixed"], [0, 1, 2])
    assert (np.abs(r["E"] - E) / E).max() == pytest.approx(err["max_rel_error"], rel=1e-6)
    np.testing.assert_allclose(r["nu"], nu)


@pytest.mark.ccx
@pytest.mark.parametrize("order", [1, 2])
def test_calculix_runs(tmp_path, block, order, ccx):
    m = block if order == 1 else to_quadratic(block)
    E, nu = _materials(m)
    bottom = np.flatnonzero(m.points[:, 2] < 1e-9)
    top = np.flatnonzero(m.points[:, 2] > 20 - 1e-9)
    steps = [{"name": "pull", "boundary": [("BOTTOM", 1, 3, 0.0)], "cload": [("TOP", 3, 1.0)]}]
    write_inp(tmp_path / "job.inp", m, E, nu, {"BOTTOM": bottom, "TOP": top}, steps=steps)
    res = subprocess.run([ccx, "job"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-2000:]
    assert "*ERROR" not in out, out[-2000:]
    assert (tmp_path / "job.frd").stat().st_size > 0
