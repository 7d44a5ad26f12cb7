"""p-multigrid preconditioned CG ("pmg") against the direct solver."""

import numpy as np
import pytest

from fesim.errors import SolverError
from fesim.fem.assembly import Assembler
from fesim.fem.model import rigid_body_modes
from fesim.fem.solvers import make_solver, p_prolongation
from fesim.mesh.tetmesh import box_mesh, to_quadratic


def _system(order):
    mesh = box_mesh((6, 5, 7), (12.0, 10.0, 14.0))
    if order == 2:
        mesh = to_quadratic(mesh)
    rng = np.random.default_rng(3)
    E = rng.choice([300.0, 1200.0, 110000.0], mesh.n_elements)
    K = Assembler(mesh.points, mesh.cells).assemble(E, 0.3).tocsr()
    bottom = np.nonzero(np.isclose(mesh.points[:, 2], 0))[0]
    top = np.nonzero(np.isclose(mesh.points[:, 2], 14.0))[0]
    fixed = np.concatenate([(3 * bottom[:, None] + np.arange(3)).ravel(), 3 * top + 2])
    free = np.setdiff1d(np.arange(3 * mesh.n_nodes), fixed)
    Kff = K[free][:, free]
    b = -K[free][:, 3 * top + 2] @ np.full(top.size, -0.1)
    return mesh, Kff, b, free


def test_prolongation_reproduces_linear_fields():
    mesh = to_quadratic(box_mesh((3, 2, 2), (3.0, 2.0, 2.0)))
    P, corners = p_prolongation(mesh.cells, mesh.n_nodes)
    f = mesh.points @ np.array([1.5, -2.0, 0.5]) + 3.0
    assert np.allclose(P @ f[corners], f, atol=1e-12)


@pytest.mark.parametrize("order", [1, 2])
def test_pmg_matches_direct(order):
    mesh, Kff, b, free = _system(order)
    ref = make_solver(Kff, "direct").solve(b)[0]
    s = make_solver(Kff, "pmg", rtol=1e-10, near_null=rigid_body_modes(mesh.points)[free],
                    cells=mesh.cells, free=free, n_nodes=mesh.n_nodes)
    x, info = s.solve(b)
    assert info.residual < 1e-10
    assert np.linalg.norm(x - ref) / np.linalg.norm(ref) < 1e-7
    assert info.iterations < 60  # contrast 370: a plain Jacobi-CG needs hundreds


def test_pmg_needs_cells():
    mesh, Kff, b, free = _system(2)
    with pytest.raises(SolverError, match="cells"):
        make_solver(Kff, "pmg")


def test_pcg_keeps_the_true_residual_and_reports_breakdown():
    """The CG iteration's own residual is b - A x to round-off (callers skip a product with A),
    and an indefinite matrix is reported as a breakdown, not as convergence."""
    import scipy.sparse as sp

    from fesim.fem.solvers import pcg

    mesh, Kff, b, free = _system(2)
    x, info, it, r = pcg(Kff, b, None, rtol=1e-6)
    assert info == 0 and it > 10
    assert np.linalg.norm(r - (b - Kff @ x)) <= 1e-12 * np.linalg.norm(b)
    assert np.linalg.norm(r) <= 1e-6 * np.linalg.norm(b)
    x2, info2, it2, _ = pcg(Kff, b, None, x0=x, rtol=1e-6)  # a converged start: no iteration
    assert info2 == 0 and it2 == 0 and np.array_equal(x2, x)
    indefinite = sp.diags(np.r_[1.0, -1.0, np.ones(8)]).tocsr()
    assert pcg(indefinite, np.ones(10), None, rtol=1e-10)[1] == -1


def test_pmg_reuse_follows_the_new_moduli_in_its_smoother():
    """update(reuse=True) with softened moduli keeps the coarse hierarchy but smooths with
    the new matrix; CG still converges to the new solution."""
    mesh, Kff, b, free = _system(2)
    s = make_solver(Kff, "pmg", rtol=1e-10, near_null=rigid_body_modes(mesh.points)[free],
                    cells=mesh.cells, free=free, n_nodes=mesh.n_nodes)
    ml = s._ml
    K2 = Kff.copy()
    K2.data *= np.random.default_rng(0).uniform(0.5, 1.0)  # uniform softening keeps K2 SPD
    s.update(K2, reuse=True)
    assert s._ml is ml
    assert np.allclose(s._As.A.data, K2.data.astype(np.float32))
    x, info = s.solve(b)
    ref = make_solver(K2, "direct").solve(b)[0]
    assert np.linalg.norm(x - ref) / np.linalg.norm(ref) < 1e-7


def test_corner_matrix_is_the_galerkin_coarse_operator():
    """The tet4 corner mesh's stiffness assembled directly equals P^T K P of the quadratic
    mesh (a P2 element holds linear fields exactly), and the solver converges with it."""
    from fesim.fem.solvers import _dof_expand

    mesh = to_quadratic(box_mesh((4, 3, 5), (8.0, 6.0, 10.0)))
    E = np.random.default_rng(0).uniform(100.0, 1000.0, mesh.n_elements)
    asm = Assembler(mesh.points, mesh.cells)
    Pn, corners = p_prolongation(mesh.cells, mesh.n_nodes)
    P = _dof_expand(Pn)
    coarse = (3 * corners[:, None] + np.arange(3)).ravel()
    Ac = asm.corner_matrix(E, 0.3, coarse)
    from fesim.fem.kernels import HAVE_NUMBA

    if not HAVE_NUMBA:
        assert Ac is None
        return
    G = (P.T @ asm.assemble(E, 0.3).tocsr() @ P).tocsr()
    assert abs(G - Ac).max() <= 1e-12 * abs(G).max()
    mesh, Kff, b, free = _system(2)
    asm = Assembler(mesh.points, mesh.cells)
    E = np.random.default_rng(3).choice([300.0, 1200.0, 110000.0], mesh.n_elements)  # as _system
    s = make_solver(Kff, "pmg", rtol=1e-10, near_null=rigid_body_modes(mesh.points)[free], cells=mesh.cells,
                    free=free, n_nodes=mesh.n_nodes, coarse_matrix=lambda d: asm.corner_matrix(E, 0.3, d))
    x, info = s.solve(b)
    ref = make_solver(Kff, "direct").solve(b)[0]
    assert np.linalg.norm(x - ref) / np.linalg.norm(ref) < 1e-7 and info.iterations < 60


def test_solves_run_with_one_blas_thread_and_restore_the_callers_setting():
    """Multi-threaded BLAS on the CG's vector operations halved the solve speed on 2 cores
    (fesim/fem/threads.py): set-up and solves run with one BLAS thread, the caller's count
    comes back afterwards."""
    from threadpoolctl import threadpool_info, threadpool_limits

    def blas_threads():
        return {i["filepath"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    mesh, A, b, free = _system(1)
    seen = []
    with threadpool_limits(limits=2, user_api="blas"):
        s = make_solver(A.tocsr(), "amg", near_null=rigid_body_modes(mesh.points)[free])
        inner = s._solve

        def spy(*a, **k):
            seen.append(blas_threads())
            return inner(*a, **k)

        s._solve = spy
        s.solve(b)
        after = blas_threads()
    assert seen and all(n == 1 for n in seen[0].values())
    assert all(n == 2 for n in after.values())


def test_amg_cycles_are_pyamgs_iterate_and_diagonal_positions_gather_the_diagonal():
    import scipy.sparse as sp

    from fesim.fem import kernels
    from fesim.fem.solvers import amg_cycles, sa_hierarchy

    mesh, A, b, free = _system(1)
    A = A.tocsr()
    A.sort_indices()
    ml = sa_hierarchy(A, rigid_body_modes(mesh.points)[free], max_coarse=50)
    assert len(ml.levels) >= 2
    for cycles in (1, 3):
        ref = ml.solve(b, maxiter=cycles, cycle="V", tol=1e-30)
        assert np.allclose(amg_cycles(ml, b, cycles), ref, rtol=0, atol=1e-12 * np.abs(ref).max())
    pos = kernels.diagonal_positions(A)
    assert np.array_equal(A.data[pos], A.diagonal())
    no_diag = sp.csr_matrix(np.array([[0.0, 1.0], [1.0, 2.0]]))
    no_diag.eliminate_zeros()
    with pytest.raises(ValueError, match="diagonal"):
        kernels.diagonal_positions(no_diag)


def test_lanczos_bound_lies_just_above_the_largest_eigenvalue():
    """The smoother's bound must not fall below the largest eigenvalue of D^-1 A (Chebyshev
    would amplify the modes above it) and should be tight: within 5 % here."""
    from fesim.fem.solvers import lanczos_lmax

    mesh, A, b, free = _system(1)
    A = A.toarray()
    d = 1.0 / np.sqrt(np.diag(A))
    S = d[:, None] * A * d[None, :]
    true = np.linalg.eigvalsh(S)[-1]
    for seed in range(3):
        lmax, vec = lanczos_lmax(lambda x: S @ x, np.random.default_rng(seed).random(S.shape[0]))
        assert true <= lmax <= 1.05 * true
        assert vec.shape == (S.shape[0],)
