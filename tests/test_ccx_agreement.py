"""fesim vs CalculiX (SPOOLES) on identical meshes, materials and boundary conditions.

CalculiX prints 7 significant digits (relative rounding < 5e-7 per value), so a norm-wise
relative tolerance of 1e-6 tests agreement of the discretisations to round-off level.
"""

import numpy as np
import pytest

from fesim.errors import SolverError
from fesim.fem.ccx import read_dat, run_ccx, write_job
from fesim.fem.model import Model, solve_static
from fesim.mesh.tetmesh import REGION_SCREW0, TetMesh, box_mesh, to_quadratic

pytestmark = pytest.mark.ccx



def _hetero_model(order: int) -> Model:
    """Jittered block, 5 bone moduli + a stiff 'screw' column, fixed base, mixed loads."""
    size = np.array([12.0, 10.0, 16.0])
    mesh = box_mesh((4, 4, 6), size)  # 576 tets
    rng = np.random.default_rng(7)
    p = mesh.points.copy()
    inner = np.all((p > 1e-9) & (p < size - 1e-9), axis=1)
    p[inner] += rng.uniform(-0.4, 0.4, (inner.sum(), 3))
    c = mesh.points[mesh.cells].mean(axis=1)
    region = np.where(np.hypot(c[:, 0] - 6.0, c[:, 1] - 5.0) < 2.6, REGION_SCREW0, 1)
    mesh = TetMesh(p, mesh.cells, region)
    if order == 2:
        mesh = to_quadratic(mesh)
    E = np.array([300.0, 650.0, 1100.0, 1700.0, 2500.0])[rng.integers(0, 5, mesh.n_elements)]
    E[mesh.region == REGION_SCREW0] = 110000.0
    nu = np.where(mesh.region == REGION_SCREW0, 0.34, 0.3)
    model = Model(mesh, E=E, nu=nu)
    z = mesh.points[:, 2]
    bottom = np.nonzero(np.isclose(z, 0.0))[0]
    top = np.nonzero(np.isclose(z, size[2]))[0]
    side = np.nonzero(np.isclose(mesh.points[:, 0], 0.0) & (z > 4.0) & (z < 12.0))[0]
    model.fix(bottom)
    model.fix(top, components=(2,), value=-0.08)  # prescribed compression
    model.fix(side, components=(1,), value=0.01)  # prescribed lateral shift
    free_face = np.nonzero(np.isclose(mesh.points[:, 0], size[0]) & (z > 0.5) & (z < size[2] - 0.5))[0]
    model.add_force(free_face, [-40.0, 15.0, 0.0])
    return model


def _rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("order", [1, 2])
def test_displacements_and_reactions_match_calculix(order, ccx):  # ccx fixture: skip locally, fail in CI
    model = _hetero_model(order)
    assert len(np.unique(model.E)) == 6
    sol = solve_static(model, solver="direct")
    ref = run_ccx(model, timeout=120)
    assert _rel(sol.u, ref.u) < 1e-6
    d = model.bc_dofs
    assert _rel(sol.reactions[d], ref.reactions[d]) < 1e-6
    # the comparison is not trivial: loads and prescribed values produce a real field
    assert np.abs(sol.u).max() > 0.05 and np.abs(sol.reactions[d]).max() > 10.0


def test_inp_deck_structure(tmp_path):
    """Deck round trip without running ccx: counts of nodes, elements, materials, BCs, loads."""
    model = _hetero_model(2)
    path = write_job(model, tmp_path / "m.inp")
    text = path.read_text()
    assert text.count("*MATERIAL") == 6 and text.count("*ELSET, ELSET=MAT_") == 6
    assert text.count("TYPE=C3D10") == 1
    lines = text.splitlines()
    i = lines.index("*BOUNDARY")
    j = lines.index("*CLOAD")
    assert j - i - 1 == model.bc_dofs.size
    assert "*NODE PRINT, NSET=NALL" in lines and "RF" in lines
    first_node = lines[lines.index("*NODE, NSET=NALL") + 1].split(",")
    assert np.allclose([float(v) for v in first_node[1:]], model.mesh.points[0], rtol=1e-12)


def test_read_dat_parses_blocks(tmp_path):
    dat = tmp_path / "x.dat"
    dat.write_text("\n displacements (vx,vy,vz) for set NALL and time  0.1000000E+01\n\n"
                   "         1  1.000000E-03  0.000000E+00 -2.500000E-01\n"
                   "         3  0.000000E+00  4.000000E+00  0.000000E+00\n\n"
                   " forces (fx,fy,fz) for set NALL and time  0.1000000E+01\n\n"
                   "         2  5.000000E+00  0.000000E+00  1.000000E+00\n")
    u, rf = read_dat(dat, 3)
    assert np.allclose(u, [[1e-3, 0, -0.25], [0, 0, 0], [0, 4, 0]])
    assert np.allclose(rf, [[0, 0, 0], [5, 0, 1], [0, 0, 0]])


def test_missing_ccx_is_a_solver_error(monkeypatch):
    monkeypatch.setenv("FESIM_CCX", "definitely-not-ccx-xyz")
    with pytest.raises(SolverError, match="not installed"):
        run_ccx(_hetero_model(1))
