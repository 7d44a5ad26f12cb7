"""Exact-solution checks of the FE core: patch tests, uniform stress, supports, solvers."""

import numpy as np
import pytest

from fesim.errors import ModelError, SolverError
from fesim.fem.model import Model, StaticProblem, solve_static
from fesim.fem.post import element_fields
from fesim.fem import elements
from fesim.mesh.tetmesh import TetMesh
from fesim.mesh.tetmesh import box_mesh, to_quadratic


def _block(order=1, n=(3, 3, 4), size=(10.0, 8.0, 12.0), jitter=0.0, seed=0):
    mesh = box_mesh(n, size)
    if jitter:
        rng = np.random.default_rng(seed)
        p = mesh.points.copy()
        interior = np.all((p > 1e-9) & (p < np.array(size) - 1e-9), axis=1)
        p[interior] += rng.uniform(-jitter, jitter, (interior.sum(), 3))
        mesh = TetMesh(p, mesh.cells, mesh.region)
    return to_quadratic(mesh) if order == 2 else mesh


@pytest.mark.parametrize("order", [1, 2])
def test_patch_test_linear_field_reproduced(order):
    """Displacements prescribed on the boundary from a linear field; interior must follow exactly."""
    mesh = _block(order, jitter=0.6)
    A = np.array([[1e-3, 2e-4, -3e-4], [5e-4, -2e-3, 1e-4], [-1e-4, 3e-4, 1.5e-3]])
    c = np.array([0.01, -0.02, 0.03])
    exact = mesh.points @ A.T + c
    p = mesh.points
    on_bnd = np.any(np.isclose(p, 0) | np.isclose(p, p.max(axis=0)), axis=1)
    model = Model(mesh, E=1000.0, nu=0.3)
    for comp in range(3):
        model.fix(np.nonzero(on_bnd)[0], components=(comp,), value=0.0)
    model.bc_values = exact[model.bc_dofs // 3, model.bc_dofs % 3]
    sol = solve_static(model, solver="direct")
    assert np.abs(sol.u - exact).max() < 1e-12 * 1e3
    f = element_fields(mesh.points, mesh.cells, sol.u, model.E, model.nu)
    eps_exact = np.array([A[0, 0], A[1, 1], A[2, 2], A[1, 2] + A[2, 1], A[0, 2] + A[2, 0], A[0, 1] + A[1, 0]])
    assert np.allclose(f.strain, eps_exact, atol=1e-12)
    # interior reactions vanish (equilibrium without body force)
    r = sol.reactions.reshape(-1, 3)
    assert np.abs(r[~on_bnd]).max() < 1e-9


@pytest.mark.parametrize("order,solver", [(1, "direct"), (2, "direct"), (1, "amg"), (2, "amg")])
def test_uniaxial_compression_exact_reaction(order, solver):
    """Block compressed by eps with lateral freedom: reaction = E * A * eps exactly."""
    Lx, Ly, Lz = 10.0, 8.0, 12.0
    mesh = _block(order, n=(4, 4, 5), size=(Lx, Ly, Lz), jitter=0.5, seed=1)
    E, nu, d = 1500.0, 0.3, -0.12
    p = mesh.points
    bottom = np.nonzero(np.isclose(p[:, 2], 0))[0]
    top = np.nonzero(np.isclose(p[:, 2], Lz))[0]
    model = Model(mesh, E=E, nu=nu)
    model.fix(bottom, components=(2,))
    model.fix(top, components=(2,), value=d)
    origin = np.nonzero(np.all(np.isclose(p, 0), axis=1))[0]
    xaxis = np.nonzero(np.isclose(p[:, 1], 0) & np.isclose(p[:, 2], 0) & np.isclose(p[:, 0], Lx))[0]
    model.fix(origin, components=(0, 1))
    model.fix(xaxis, components=(1,))
    sol = StaticProblem(model, solver=solver, rtol=1e-12).solve()
    F = sol.reaction_on(top)[2]
    exact = E * Lx * Ly * d / Lz
    assert abs(F - exact) / abs(exact) < 1e-8
    assert abs(sol.reaction_on(bottom)[2] + exact) / abs(exact) < 1e-8


def test_unsupported_model_refused():
    mesh = _block()
    with pytest.raises(ModelError):
        StaticProblem(Model(mesh, E=1000.0, nu=0.3))
    m = Model(mesh, E=1000.0, nu=0.3)
    bottom = np.nonzero(np.isclose(mesh.points[:, 2], 0))[0]
    m.fix(bottom, components=(2,))  # free to slide in x, y and rotate about z
    with pytest.raises(ModelError, match="rigid"):
        StaticProblem(m)


def test_invalid_material_refused():
    mesh = _block()
    with pytest.raises(ModelError):
        Model(mesh, E=-1.0, nu=0.3)
    with pytest.raises(ModelError):
        Model(mesh, E=1.0, nu=0.5)


def test_unknown_solver():
    mesh = _block()
    m = Model(mesh, E=1000.0, nu=0.3).fix(np.arange(mesh.n_nodes))
    with pytest.raises(SolverError):
        StaticProblem(m, solver="nope")


def test_tet10_volume_and_quadrature():
    mesh = _block(2, jitter=0.5)
    vol = elements.element_volumes(mesh.points, mesh.cells).sum()
    assert abs(vol - 10 * 8 * 12) < 1e-9


def test_reassembly_reuses_pattern_and_scales():
    """Doubling all moduli halves the displacement under force; pattern and set-up reused."""
    mesh = _block(1, n=(4, 4, 4))
    p = mesh.points
    bottom = np.nonzero(np.isclose(p[:, 2], 0))[0]
    top = np.nonzero(np.isclose(p[:, 2], p[:, 2].max()))[0]
    m = Model(mesh, E=1000.0, nu=0.3).fix(bottom).add_force(top, [0, 0, -100.0])
    prob = StaticProblem(m, solver="amg", rtol=1e-10)
    u1 = prob.solve().u
    prob.set_moduli(2 * m.E)
    s2 = prob.solve()
    assert np.allclose(s2.u, u1 / 2, rtol=1e-7, atol=1e-12)
    assert s2.info.reused_setup


@pytest.mark.parametrize("order", [1, 2])
def test_incremental_moduli_update_matches_fresh_assembly(order):
    """Changing a random subset of moduli in place gives the reduced matrices of a fresh model
    (constraints given in no particular order, some prescribed non-zero)."""
    mesh = _block(order, n=(3, 3, 3), jitter=0.5, seed=3)
    p = mesh.points
    bottom = np.nonzero(np.isclose(p[:, 2], 0))[0]
    top = np.nonzero(np.isclose(p[:, 2], p[:, 2].max()))[0][::-1]
    rng = np.random.default_rng(1)

    def model(E):
        return Model(mesh, E=E, nu=0.3).fix(top, (2,), -0.1).fix(bottom)

    prob = StaticProblem(model(rng.uniform(100.0, 2000.0, mesh.n_elements)), solver="direct")
    for _ in range(3):
        E = prob._E.copy()
        pick = rng.random(mesh.n_elements) < 0.4
        E[pick] *= rng.uniform(0.02, 1.0, pick.sum())
        prob.set_moduli(E)
        fresh = StaticProblem(model(E), solver="direct")
        for a, b in ((prob.K_ff, fresh.K_ff), (prob.K_fc, fresh.K_fc), (prob.K_c, fresh.K_c)):
            assert abs(a - b).max() <= 1e-12 * abs(b).max()
    from fesim.fem.kernels import HAVE_NUMBA

    # with numba the compiled in-place update ran, not the numpy scatter
    assert (prob._upd is None) == HAVE_NUMBA


def test_correction_solve_resolves_a_small_local_change():
    """After a small local change of moduli the warm start can already meet ``rtol`` of the
    load, and CG would not move; ``correction_rtol`` makes it resolve the change."""
    mesh = _block(1, n=(6, 6, 8))
    p = mesh.points
    bottom = np.nonzero(np.isclose(p[:, 2], 0))[0]
    top = np.nonzero(np.isclose(p[:, 2], p[:, 2].max()))[0]
    E2 = np.full(mesh.n_elements, 1000.0)
    E2[np.linalg.norm(mesh.centroids() - [5.0, 4.0, 6.0], axis=1) < 2.5] *= 0.99

    def model(E):
        return Model(mesh, E=E, nu=0.3).fix(bottom).add_force(top, [0, 0, -100.0])

    exact = solve_static(model(E2), solver="direct").u
    errors = {}
    for corr in (None, 1e-6):
        prob = StaticProblem(model(1000.0), solver="amg", rtol=1e-3)
        u1 = prob.solve().u
        prob.set_moduli(E2)
        errors[corr] = np.abs(prob.solve(correction_rtol=corr).u - exact).max() / np.abs(exact - u1).max()
    assert errors[None] > 1e-2  # 10 % of the change left unresolved (measured)
    assert errors[1e-6] < 1e-3


@pytest.mark.parametrize("order", [1, 2])
def test_mean_strain_shortcut_equals_quadrature_mean(order):
    """Straight-sided elements: element mean strain from barycentric gradients equals the
    volume-weighted mean over the integration points (exact for tet10's linear strain)."""
    mesh = _block(order, jitter=0.6, seed=4)
    rng = np.random.default_rng(2)
    u = rng.normal(size=mesh.points.shape)
    E = rng.uniform(50.0, 5000.0, mesh.n_elements)
    nu = np.full(mesh.n_elements, 0.3)
    quad = element_fields(mesh.points, mesh.cells, u, E, nu, affine=False)
    fast = element_fields(mesh.points, mesh.cells, u, E, nu)
    for a, b in ((quad.strain, fast.strain), (quad.sed, fast.sed), (quad.principal_strain, fast.principal_strain)):
        assert np.allclose(a, b, rtol=1e-10, atol=1e-12 * np.abs(a).max())


def test_fem_core_imports_no_mesher():
    """The FE core knows arrays only: importing it (and the CalculiX runner) loads no fesim.mesh."""
    import subprocess
    import sys

    code = ("import sys, fesim.fem.model, fesim.fem.post, fesim.fem.ccx, fesim.fem.solvers; "
            "print(sorted(m for m in sys.modules if m.startswith(('fesim.mesh', 'fesim.imaging'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("order", [1, 2])
def test_model_from_plain_arrays_matches_mesh(order):
    """A model of bare points and cells solves to the same field as one of the mesher's mesh."""
    mesh = _block(order, jitter=0.5)
    E = np.linspace(500.0, 1500.0, mesh.n_elements)
    z = mesh.points[:, 2]
    bottom, top = np.nonzero(np.isclose(z, 0.0))[0], np.nonzero(np.isclose(z, 12.0))[0]
    sols = []
    for m in (Model(mesh, E=E, nu=0.3), Model.from_arrays(mesh.points, mesh.cells, E, 0.3)):
        m.fix(bottom).fix(top, components=(2,), value=-0.05)
        sols.append(solve_static(m, solver="direct"))
    assert np.abs(sols[0].u).max() > 0.04
    np.testing.assert_allclose(sols[1].u, sols[0].u, rtol=0, atol=1e-12)
