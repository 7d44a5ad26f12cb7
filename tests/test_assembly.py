"""Global assembly: barycentric (affine) fast path against quadrature, and the split of K."""

import os

import numpy as np
import pytest

from fesim.fem import elements
from fesim.fem.assembly import Assembler, is_affine, partition
from fesim.mesh.tetmesh import TetMesh, box_mesh, to_quadratic


def _distorted(order, seed=0):
    """A box mesh with randomly moved corner nodes (still straight-sided, positive volumes)."""
    m = box_mesh((3, 3, 2), (3.0, 3.0, 2.0))
    rng = np.random.default_rng(seed)
    pts = m.points + rng.uniform(-0.2, 0.2, m.points.shape)
    m = TetMesh(pts, m.cells, m.region)
    return to_quadratic(m) if order == 2 else m


def _reference_K(mesh, E, nu):
    """Dense K from element matrices of the quadrature path (independent of the fast path)."""
    Ke = elements.element_stiffness(mesh.points, mesh.cells, E, nu)
    n = 3 * mesh.n_nodes
    K = np.zeros((n, n))
    dofs = (3 * mesh.cells[:, :, None] + np.arange(3)).reshape(mesh.n_elements, -1)
    for e in range(mesh.n_elements):
        K[np.ix_(dofs[e], dofs[e])] += Ke[e]
    return K


@pytest.mark.parametrize("order", [1, 2])
def test_affine_path_matches_quadrature(order):
    mesh = _distorted(order)
    rng = np.random.default_rng(1)
    E = rng.uniform(50.0, 20000.0, mesh.n_elements)
    nu = rng.uniform(0.2, 0.45, mesh.n_elements)
    asm = Assembler(mesh.points, mesh.cells)
    assert asm.affine
    K = asm.assemble(E, nu).toarray()
    ref = _reference_K(mesh, E, nu)
    # both are sums of the same exact integrals: agreement to round-off
    assert np.abs(K - ref).max() <= 1e-12 * np.abs(ref).max()
    assert np.abs(K - K.T).max() <= 1e-12 * np.abs(K).max()


def test_curved_tet10_uses_quadrature():
    mesh = _distorted(2)
    pts = mesh.points.copy()
    mid = np.unique(mesh.cells[:, 4:])
    pts[mid[:5]] += 0.05  # bend five edges: no longer affine
    asm = Assembler(pts, mesh.cells)
    assert not is_affine(pts, mesh.cells) and not asm.affine
    E = np.full(mesh.n_elements, 1000.0)
    K = asm.assemble(E, 0.3).toarray()
    ref = _reference_K(TetMesh(pts, mesh.cells, mesh.region), E, 0.3)
    assert np.abs(K - ref).max() <= 1e-12 * np.abs(ref).max()


def test_partition_matches_slicing_for_any_constraint_order():
    mesh = _distorted(2, seed=3)
    K = Assembler(mesh.points, mesh.cells).assemble(1000.0 + np.arange(mesh.n_elements), 0.3).tocsr()
    n = K.shape[0]
    rng = np.random.default_rng(2)
    fixed = rng.choice(n, 40, replace=False)  # deliberately unsorted
    free = np.setdiff1d(np.arange(n), fixed)
    K_ff, K_fc, K_c = partition(K, free, fixed)
    D = K.toarray()
    assert np.array_equal(K_ff.toarray(), D[np.ix_(free, free)])
    assert np.array_equal(K_fc.toarray(), D[np.ix_(free, fixed)])
    assert np.array_equal(K_c.toarray(), D[fixed])
    for A in (K_ff, K_fc, K_c):
        rows = np.repeat(np.arange(A.shape[0]), np.diff(A.indptr))
        key = rows * A.shape[1] + A.indices
        assert np.all(np.diff(key) > 0)  # sorted, no duplicates (in-place updates rely on it)


def test_partition_in_place_matches_copy():
    mesh = _distorted(2, seed=4)
    K = Assembler(mesh.points, mesh.cells).assemble(500.0 + np.arange(mesh.n_elements), 0.3).tocsr()
    n = K.shape[0]
    fixed = np.random.default_rng(5).choice(n, 60, replace=False)
    free = np.setdiff1d(np.arange(n), fixed)
    ref = partition(K.copy(), free, fixed)
    got = partition(K, free, fixed, overwrite=True, chunk=997)  # small chunks: many in-place moves
    for a, b in zip(ref, got):
        assert (a != b).nnz == 0 and a.shape == b.shape
    assert got[0].has_sorted_indices


@pytest.mark.parametrize("order", [1, 2])
def test_assemble_reduced_matches_partition(order):
    """The one-pass reduced assembly (numba when installed) gives the matrices of
    ``partition(assemble(...))``: same structure, same values, for partial constraints on
    unsorted unknowns and after new moduli."""
    from fesim.fem import kernels

    mesh = _distorted(order, seed=3)
    rng = np.random.default_rng(4)
    E = rng.uniform(50.0, 20000.0, mesh.n_elements)
    nu = rng.uniform(0.2, 0.45, mesh.n_elements)
    n = 3 * mesh.n_nodes
    z = mesh.points[:, 2]
    fixed = np.concatenate([(3 * np.flatnonzero(z < 1e-9)[:, None] + np.arange(3)).ravel(),
                            3 * np.flatnonzero(z > 2.0 - 1e-9) + 2])
    fixed = rng.permutation(np.concatenate([fixed, [3 * 7 + 1]]))  # one lone x-free node
    free = np.setdiff1d(np.arange(n), fixed)
    asm = Assembler(mesh.points, mesh.cells)
    for scale in (1.0, 3.0):
        ref = partition(asm.assemble(scale * E, nu).tocsr(), free, fixed)
        got = asm.assemble_reduced(scale * E, nu, free, fixed)
        for A, B in zip(ref, got):
            A.sort_indices()
            assert A.shape == B.shape and A.nnz == B.nnz
            np.testing.assert_array_equal(A.indptr, B.indptr)
            np.testing.assert_array_equal(A.indices, B.indices)
            np.testing.assert_allclose(B.data, A.data, rtol=1e-12, atol=1e-12 * np.abs(A.data).max())
    if kernels.HAVE_NUMBA:
        assert asm._maps is not None  # the compiled path ran


def test_compiled_pattern_and_matvec_match_numpy():
    from fesim.fem import kernels
    from fesim.fem.assembly import SparsityPattern

    if os.environ.get("FESIM_NO_NUMBA") == "1":
        pytest.skip("compiled kernels switched off by FESIM_NO_NUMBA=1")
    assert kernels.HAVE_NUMBA, "numba is a core dependency: install fesim's requirements"
    mesh = _distorted(2, seed=5)
    p1 = SparsityPattern.from_cells(mesh.cells, mesh.n_nodes)
    try:
        kernels.HAVE_NUMBA = False
        p0 = SparsityPattern.from_cells(mesh.cells, mesh.n_nodes)
    finally:
        kernels.HAVE_NUMBA = True
    for k in ("indptr", "indices", "block_of"):
        np.testing.assert_array_equal(getattr(p0, k), getattr(p1, k))
    K = Assembler(mesh.points, mesh.cells).assemble(np.full(mesh.n_elements, 1000.0), 0.3).tocsr()
    x = np.random.default_rng(0).normal(size=K.shape[0])
    threaded = kernels.THREADED_SPMV
    try:
        kernels.THREADED_SPMV = True  # the opt-in threaded product itself
        np.testing.assert_allclose(kernels.ThreadedCSR(K) @ x, K @ x, rtol=1e-12, atol=1e-9)
        K32 = K.astype(np.float32)
        np.testing.assert_allclose(kernels.ThreadedCSR(K32) @ x.astype(np.float32), K32 @ x.astype(np.float32),
                                   rtol=1e-4, atol=1e-3 * np.abs(K32 @ x.astype(np.float32)).max())
    finally:
        kernels.THREADED_SPMV = threaded
