"""Sparse linear solvers behind one small registry.

A solver is created for one matrix with :func:`make_solver` and keeps its expensive set-up
(AMG hierarchy or factorisation) so that further right-hand sides, warm starts and matrices
of the same pattern (``update``) reuse it. Back ends:

* ``"amg"``  — conjugate gradients preconditioned by pyamg smoothed aggregation with the six
  rigid-body modes as near-null space (default for large models);
* ``"pmg"`` — conjugate gradients preconditioned by a two-level p-multigrid (tet10 -> tet4)
  with AMG on the tet4 level; needs the mesh cells (default for large models when given);
* ``"direct"`` — scipy's SuperLU (small models; exact to round-off);
* ``"cholmod"`` / ``"pardiso"`` — optional extras (scikit-sparse, pypardiso), used when installed.

``"auto"`` picks a direct solver up to :data:`AUTO_DIRECT_MAX_DOFS` unknowns, above it ``"pmg"``
(``"amg"`` when no mesh cells are given). Back ends are registered in :data:`SOLVERS`
(:func:`register`); the CLI's ``--solver`` choices come from there.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from ..cells import TET10_EDGES
from ..errors import SolverError
from ..registry import Registry
from .kernels import HAVE_NUMBA, ThreadedCSR, diagonal_positions
from .threads import single_blas_thread

AUTO_DIRECT_MAX_DOFS = 20_000

#: Linear-solver back ends by name (``"auto"`` is not one: :func:`make_solver` picks among them).
SOLVERS = Registry("solver", error=SolverError)


def register(name: str, description: str):
    """Class decorator: register a :class:`LinearSolver` subclass as back end ``name``."""
    def deco(cls):
        cls.name, cls.description = name, description
        SOLVERS.add(cls)
        return cls
    return deco


def available() -> list[str]:
    """Names of the back ends usable on this machine."""
    return [n for n, c in SOLVERS.items() if c.is_available()]


def pcg(A, b, M, x0=None, rtol: float = 1e-8, maxiter: int | None = None):
    """Preconditioned conjugate gradients to ``||b - A x|| <= rtol ||b||``.

    The textbook recurrence (as scipy's ``cg``, whose stopping test it shares), written out
    so that it keeps the residual vector: callers get ``b - A x`` without another product
    with ``A`` (its recursive value; it drifts from the true one by round-off only, about
    1e-14 of ``||b||`` over the few dozen iterations these solves take).

    Returns ``(x, info, iterations, r)``: ``info`` 0 when converged, the iteration count
    when ``maxiter`` was reached, -1 on a breakdown (a preconditioner or matrix that is not
    positive definite).
    """
    if HAVE_NUMBA and sp.isspmatrix_csr(A):
        A = ThreadedCSR(A)  # no copy; products on all cores when opted in (kernels.THREADED_SPMV)
    b = np.asarray(b, dtype=float)
    n = b.size
    maxiter = 10 * n if maxiter is None else maxiter
    precond = (lambda v: M @ v) if M is not None else (lambda v: v.copy())
    if x0 is None:
        x = np.zeros(n)
        r = b.copy()
    else:
        x = np.array(x0, dtype=float)
        r = b - A @ x
    tol = rtol * np.linalg.norm(b)
    if np.linalg.norm(r) <= tol:
        return x, 0, 0, r
    z = precond(r)
    p = z.copy()
    rz = float(r @ z)
    for it in range(1, maxiter + 1):
        q = A @ p
        pq = float(p @ q)
        if not pq > 0.0 or not rz > 0.0:
            return x, -1, it, r
        alpha = rz / pq
        x += alpha * p
        r -= alpha * q
        if np.linalg.norm(r) <= tol:
            return x, 0, it, r
        z = precond(r)
        rz_new = float(r @ z)
        p *= rz_new / rz
        p += z
        rz = rz_new
    return x, maxiter, maxiter, r


def cg_counted(A, b, M, x0=None, rtol: float = 1e-8, maxiter: int | None = None):
    """Preconditioned CG (:func:`pcg`) to relative residual ``rtol``: ``(x, info, iterations)``."""
    x, info, it, _ = pcg(A, b, M, x0, rtol, maxiter)
    return x, info, it


def sa_hierarchy(A, B, max_coarse: int = 500):
    """pyamg smoothed-aggregation hierarchy of every AMG in fesim (the ``amg`` back end and the
    coarse level of ``pmg``): near-null space ``B`` (rigid-body modes), symmetric strength of
    connection with theta 0, one Jacobi prolongation smoothing step (omega 4/3), symmetric
    Gauss-Seidel pre- and post-smoothing, SuperLU on the coarsest level."""
    import pyamg

    return pyamg.smoothed_aggregation_solver(
        A, B=B, symmetry="hermitian", strength=("symmetric", {"theta": 0.0}),
        smooth=("jacobi", {"omega": 4.0 / 3.0, "degree": 1}),
        presmoother=("gauss_seidel", {"sweep": "symmetric"}),
        postsmoother=("gauss_seidel", {"sweep": "symmetric"}),
        max_coarse=max_coarse, coarse_solver="splu", keep=False)


def amg_cycles(ml, b, cycles: int) -> np.ndarray:
    """``cycles`` V-cycles of the pyamg hierarchy ``ml`` from a zero guess: the iterate of
    ``ml.solve(b, maxiter=cycles, cycle="V")``, without the residual norm that ``solve``
    computes before and after every cycle for its stopping test (a product with the finest
    matrix each, about a quarter of a cycle's work here)."""
    x = np.zeros_like(b)
    for _ in range(cycles):
        _v_cycle(ml, 0, x, b)
    return x


def _v_cycle(ml, lvl, x, b):
    level = ml.levels[lvl]
    if lvl == len(ml.levels) - 1:
        x[:] = ml.coarse_solver(level.A, b).reshape(x.shape)
        return
    level.presmoother(level.A, x, b)
    rc = level.R @ (b - level.A @ x)
    xc = np.zeros_like(rc)
    _v_cycle(ml, lvl + 1, xc, rc)
    x += level.P @ xc
    level.postsmoother(level.A, x, b)


def lanczos_lmax(op, v0, steps: int = 10):
    """Largest eigenvalue of a symmetric operator from ``steps`` Lanczos iterations.

    Returns ``(lmax, ritz_vector)``, where ``lmax`` is the largest Ritz value plus its residual
    norm ``beta_k |s_k|`` (an eigenvalue lies within that distance of the Ritz value, and the
    largest Ritz value converges to the largest eigenvalue first): the upper end is taken
    because a Chebyshev smoother amplifies modes above its bound.
    Ten products with ``op`` (ARPACK to a relative 1e-2 took 19 products and its own
    orthogonalisation work on the 1 M-unknown benchmark model) give it to about 1 %.
    """
    n = v0.size
    V = np.empty((steps, n))
    alpha, beta = np.zeros(steps), np.zeros(steps)
    v = v0 / np.linalg.norm(v0)
    v_prev, b = np.zeros(n), 0.0
    k = steps
    for j in range(steps):
        V[j] = v
        w = op(v) - b * v_prev
        alpha[j] = w @ v
        w -= alpha[j] * v
        w -= V[: j + 1].T @ (V[: j + 1] @ w)  # full re-orthogonalisation (cheap at ten steps)
        b = float(np.linalg.norm(w))
        beta[j] = b
        if b <= 1e-12 * abs(alpha[j]):  # invariant subspace: the Ritz values are exact
            k = j + 1
            break
        v_prev, v = v, w / b
    theta, S = np.linalg.eigh(np.diag(alpha[:k]) + np.diag(beta[: k - 1], 1) + np.diag(beta[: k - 1], -1))
    return float(theta[-1] + beta[k - 1] * abs(S[-1, -1])), V[:k].T @ S[:, -1]


@dataclass
class SolveInfo:
    solver: str
    iterations: int = 0
    residual: float = 0.0
    setup_s: float = 0.0
    solve_s: float = 0.0
    reused_setup: bool = False
    extra: dict = field(default_factory=dict)


class LinearSolver:
    """Base class. Subclasses implement ``_setup(A, reuse)`` and ``_solve(b, x0, rtol)``."""

    name = "base"
    needs_coords = False

    @classmethod
    def is_available(cls) -> bool:
        return True

    def __init__(self, A, rtol: float = 1e-8, maxiter: int = 2000, near_null=None):
        self.rtol = rtol
        self.maxiter = maxiter
        self.near_null = near_null
        self.setup_s = 0.0
        self._setup_count = 0
        self.update(A, reuse=False)

    def update(self, A, reuse: bool = True):
        """Set a new matrix of the same pattern; ``reuse`` keeps the preconditioner if allowed."""
        self.A = A.tocsr() if not sp.isspmatrix_csr(A) else A
        t = time.perf_counter()
        with single_blas_thread():
            self._setup(self.A, reuse)
        self.setup_s = time.perf_counter() - t
        self._setup_count += 1

    def solve(self, b, x0=None, rtol: float | None = None):
        """Solve ``A x = b``; returns ``(x, SolveInfo)``; raises :class:`SolverError`.

        ``rtol`` overrides the solver's relative tolerance for this solve only. Afterwards
        :attr:`residual` holds ``b - A x`` (the iteration's own residual for the CG back ends).
        """
        t = time.perf_counter()
        self.residual = None
        with single_blas_thread():
            x, it = self._solve(np.asarray(b, dtype=float), x0, self.rtol if rtol is None else rtol)
        dt = time.perf_counter() - t
        if not np.all(np.isfinite(x)):
            raise SolverError(f"{self.name} solver produced non-finite values (singular system?)")
        if self.residual is None:  # back ends without an iteration's residual
            self.residual = b - self.A @ x
        bn = np.linalg.norm(b)
        res = np.linalg.norm(self.residual) / (bn if bn > 0 else 1.0)
        return x, SolveInfo(self.name, it, float(res), self.setup_s, dt, self._setup_count > 1)


@register("direct", "SuperLU factorisation (scipy); exact to round-off, for small models")
class DirectSolver(LinearSolver):
    """SuperLU factorisation (scipy) with a symmetric fill-reducing ordering.

    ``update(A, reuse=True)`` keeps the factors of the earlier matrix and solves the new
    system by CG preconditioned with them (a few iterations when moduli change in a small
    part of the model, as in secant steps); it factorises afresh when that CG stalls.
    Without reuse the answer is exact to round-off.
    """

    max_reuse_iter = 60

    def _setup(self, A, reuse):
        self._stale = False
        if reuse and getattr(self, "_lu", None) is not None:
            self._reused = True
            return
        self._reused = False
        try:
            self._lu = spla.splu(A.tocsc(), permc_spec="MMD_AT_PLUS_A",
                                 options={"SymmetricMode": True})
        except RuntimeError as exc:  # "Factor is exactly singular"
            raise SolverError(f"direct solver: matrix is singular ({exc}); is the model held?") from exc

    def _solve(self, b, x0, rtol):
        if not self._reused:
            return self._lu.solve(b), 1
        n = self.A.shape[0]
        M = spla.LinearOperator((n, n), matvec=self._lu.solve, dtype=np.float64)
        x, info, it = cg_counted(self.A, b, M, x0, rtol, self.max_reuse_iter)
        if info != 0:  # old factors no longer a good preconditioner: factorise this matrix
            self._setup(self.A, reuse=False)
            return self._lu.solve(b), it + 1
        return x, it


@register("cholmod", "CHOLMOD Cholesky (optional extra scikit-sparse)")
class CholmodSolver(LinearSolver):
    """CHOLMOD supernodal Cholesky (optional extra: scikit-sparse). Reuses the symbolic analysis."""

    @classmethod
    def is_available(cls):
        return importlib.util.find_spec("sksparse") is not None

    def _setup(self, A, reuse):
        from sksparse.cholmod import CholmodNotPositiveDefiniteError, cholesky

        try:
            if reuse and getattr(self, "_factor", None) is not None:
                self._factor.cholesky_inplace(A.tocsc())
            else:
                self._factor = cholesky(A.tocsc())
        except CholmodNotPositiveDefiniteError as exc:
            raise SolverError(f"cholmod: matrix not positive definite ({exc})") from exc

    def _solve(self, b, x0, rtol):
        return self._factor(b), 1


@register("pardiso", "MKL PARDISO (optional extra pypardiso)")
class PardisoSolver(LinearSolver):
    """Intel MKL PARDISO (optional extra: pypardiso)."""

    @classmethod
    def is_available(cls):
        return importlib.util.find_spec("pypardiso") is not None

    def _setup(self, A, reuse):
        import pypardiso

        self._ps = pypardiso.PyPardisoSolver()
        self._ps.set_matrix_type(2)  # real symmetric positive definite
        self._A_upper = sp.triu(A, format="csr")
        self._ps.factorize(self._A_upper)

    def _solve(self, b, x0, rtol):
        return self._ps.solve(self._A_upper, b), 1


@register("amg", "CG with smoothed-aggregation AMG (pyamg, rigid-body modes)")
class AMGSolver(LinearSolver):
    """CG + pyamg smoothed aggregation with rigid-body near-null space.

    ``update(A, reuse=True)`` keeps the hierarchy built for an earlier matrix of the same
    pattern: it stays a good preconditioner when moduli change moderately (secant steps),
    and CG still converges to ``rtol`` because the operator is always the current matrix.
    """

    max_coarse = 500

    def _setup(self, A, reuse):
        if reuse and getattr(self, "_ml", None) is not None:
            return
        self._ml = sa_hierarchy(A, self.near_null, self.max_coarse)
        self._M = self._ml.aspreconditioner(cycle="V")

    def _solve(self, b, x0, rtol):
        x, info, it, self.residual = pcg(self.A, b, self._M, x0, rtol, self.maxiter)
        if info != 0:
            raise SolverError(f"AMG-CG did not converge to {rtol:g} in {it} iterations"
                              " (ill-conditioned or singular model)")
        return x, it


def make_solver(A, method: str = "auto", rtol: float = 1e-8, near_null=None, **kw) -> LinearSolver:
    """Create a solver for matrix ``A``.

    Parameters
    ----------
    A : sparse symmetric positive definite matrix (N/mm)
    method : ``"auto"``, ``"amg"``, ``"pmg"``, ``"direct"``, ``"cholmod"`` or ``"pardiso"``
    near_null : (n, 6) rigid-body modes for AMG (recommended)
    cells, free, n_nodes : optional mesh information (keywords): connectivity (M, 4|10), the
        mesh unknowns that ``A`` acts on, and the node count. Required by ``"pmg"`` (chosen
        by ``"auto"`` for large models when given), ignored by the other back ends.
    """
    if method == "auto":
        if A.shape[0] <= AUTO_DIRECT_MAX_DOFS:
            method = "cholmod" if CholmodSolver.is_available() else "direct"
        else:
            method = "pmg" if kw.get("cells") is not None else "amg"
    cls = SOLVERS.get_or_raise(method)
    if not getattr(cls, "needs_mesh", False):  # mesh keywords are optional hints for others
        kw = {k: v for k, v in kw.items() if k not in ("cells", "free", "n_nodes", "coarse_matrix")}
    if not cls.is_available():
        raise SolverError(f"solver {method!r} is not installed (optional extra)")
    return cls(A, rtol=rtol, near_null=near_null, **kw)


def p_prolongation(cells: np.ndarray, n_nodes: int):
    """Nodal prolongation (n_nodes, n_corner) from the tet4 corner mesh to a tet10 mesh.

    Corner nodes are injected, a mid-edge node takes the mean of its edge's two ends (the
    quadratic mesh's linear interpolation). Returns ``(P, corners)`` with ``corners`` the
    sorted corner node ids (column ``j`` of ``P`` is node ``corners[j]``).
    """
    corners = np.unique(cells[:, :4])
    cidx = np.full(n_nodes, -1, dtype=np.int64)
    cidx[corners] = np.arange(corners.size)
    mid = cells[:, 4:].ravel()
    ends = cells[:, TET10_EDGES].reshape(-1, 2)
    mid, first = np.unique(mid, return_index=True)
    ends = cidx[ends[first]]
    rows = np.concatenate([corners, mid, mid])
    cols = np.concatenate([np.arange(corners.size), ends[:, 0], ends[:, 1]])
    vals = np.concatenate([np.ones(corners.size), np.full(2 * mid.size, 0.5)])
    return sp.csr_matrix((vals, (rows, cols)), shape=(n_nodes, corners.size)), corners


def _dof_expand(P_node: sp.csr_matrix) -> sp.csr_matrix:
    """Nodal operator to interleaved unknowns: ``P[3i+c, 3j+c] = P_node[i, j]``."""
    C = P_node.tocoo()
    r = (3 * C.row[:, None] + np.arange(3)).ravel()
    c = (3 * C.col[:, None] + np.arange(3)).ravel()
    v = np.repeat(C.data, 3)
    return sp.csr_matrix((v, (r, c)), shape=(3 * P_node.shape[0], 3 * P_node.shape[1]))


@register("pmg", "CG with tet10 -> tet4 p-multigrid and AMG on tet4 (default for large models)")
class PMultigridSolver(LinearSolver):
    """CG + two-level p-multigrid for tet10: Chebyshev-Jacobi smoothing on the tet10 unknowns,
    ``coarse_cycles`` smoothed-aggregation AMG V-cycles on the Galerkin tet4 (corner-node)
    problem ``P^T A P``. Measured on vertebra-like models (contrast 370): 16-22 CG
    iterations from 0.1 to 3 M unknowns, against 84 for SA AMG on tet10 at 0.33 M.

    ``update(A, reuse=True)`` (a matrix of the same pattern with new moduli) keeps the coarse
    hierarchy and the eigenvalue bound but copies the new entries into the smoother's matrix
    and diagonal (one pass over the entries, cheaper than one CG iteration): on the phantom
    secant analyses this cut CG iterations by 17-21 % and made the hierarchy rebuilds vanish.

    Needs the mesh: pass ``cells`` (M, 10), ``free`` (the unknowns of ``A`` among the
    ``3 * n_nodes`` of the mesh) and ``n_nodes`` to :func:`make_solver`. For tet4 and hex8
    meshes it is plain AMG (:func:`sa_hierarchy`, as the ``amg`` back end and the coarse level).

    Parameters
    ----------
    degree : Chebyshev polynomial degree of each pre-/post-smoothing step
    ratio : the smoother targets eigenvalues of D^-1 A in [lmax / ratio, lmax]
    float32 : keep a single-precision copy of ``A`` for the smoother and the residuals
        inside the preconditioner (halves their memory traffic; CG itself stays float64)
    coarse_cycles : AMG V-cycles per coarse correction
    coarse_matrix : callable, optional
        ``coarse_matrix(coarse_dofs) -> csr | None``: the coarse operator on the given mesh
        unknowns (corner nodes', sorted), e.g. the tet4 corner mesh's stiffness assembled
        directly (:meth:`fesim.fem.assembly.Assembler.corner_matrix`), instead of the Galerkin
        product ``P^T A P`` (used when it returns None)
    """

    needs_mesh = True
    refresh_smoother = True  # False keeps the smoother of the last set-up (the scheme before 2db9554)

    def __init__(self, A, rtol=1e-8, maxiter=2000, near_null=None, cells=None, free=None,
                 n_nodes=None, degree=2, ratio=8.0, float32=True, coarse_cycles=4, coarse_matrix=None):
        if cells is None:
            raise SolverError("pmg solver needs the mesh cells (make_solver(..., cells=, free=, n_nodes=))")
        self.cells = np.asarray(cells)
        self.n_nodes = int(n_nodes if n_nodes is not None else self.cells.max() + 1)
        self.free_dofs = np.arange(3 * self.n_nodes) if free is None else np.asarray(free)
        self.degree, self.ratio, self.float32 = degree, ratio, float32
        self.coarse_cycles = coarse_cycles
        self.coarse_matrix = coarse_matrix
        self._P = None
        super().__init__(A, rtol=rtol, maxiter=maxiter, near_null=near_null)

    def _build_P(self):
        if self.cells.shape[1] != 10:  # tet4 and hex8 are linear already: AMG only
            return None, None
        Pn, corners = p_prolongation(self.cells, self.n_nodes)
        P = _dof_expand(Pn)
        n = 3 * self.n_nodes
        is_free = np.zeros(n, dtype=bool)
        is_free[self.free_dofs] = True
        cdofs = (3 * corners[:, None] + np.arange(3)).ravel()  # fine unknown of each coarse one
        keep_c = np.nonzero(is_free[cdofs])[0]
        self._direct_coarse = self.coarse_matrix is not None
        if self._direct_coarse:
            # The directly assembled corner stiffness is the Galerkin operator only if no held
            # mid-edge unknown lies on an edge with a free end (held, it is 0 where the
            # interpolation is not). Otherwise P^T A P: on the phantom pullouts, whose screw
            # head set ends mid-element, the corner stiffness took 43-47 cold CG iterations
            # instead of 24-27, and holding such edges' ends on the coarse level (exact on a
            # smaller coarse space) moved a pullout peak by +2.5 % through its inexact
            # secant corrections.
            ends = self.cells[:, TET10_EDGES]
            mid = self.cells[:, 4:]
            for comp in range(3):
                held_mid = ~is_free[3 * mid + comp]
                if np.any(is_free[3 * ends[held_mid] + comp]):
                    self._direct_coarse = False
                    break
        P = P[self.free_dofs][:, keep_c].tocsr()
        pos = np.full(n, -1, dtype=np.int64)
        pos[self.free_dofs] = np.arange(self.free_dofs.size)
        self._coarse_dofs = cdofs[keep_c]  # mesh unknown of each coarse unknown (sorted)
        return P, pos[cdofs[keep_c]]

    def _setup(self, A, reuse):
        if reuse and getattr(self, "_prec", None) is not None:
            As = getattr(self, "_As", None)
            if (self.refresh_smoother and As is not None and As.A.data.size == A.data.size
                    and self._diag_pos is not None):
                # same pattern: the smoother follows the new moduli (one pass over the entries);
                # the coarse hierarchy and the eigenvalue bound are kept
                np.copyto(As.A.data, A.data, casting="same_kind")
                np.copyto(self._dinv, 1.0 / A.data[self._diag_pos], casting="same_kind")
            return
        t = time.perf_counter()
        if self._P is None:
            self._P, self._coarse_rows = self._build_P()
        P = self._P
        if P is None:  # tet4: AMG only
            ml = sa_hierarchy(A, self.near_null)
            self._prec = ml.aspreconditioner(cycle="V")
            return
        Ac = self.coarse_matrix(self._coarse_dofs) if self._direct_coarse and self.coarse_matrix else None
        if Ac is None:
            Ac = (P.T @ (A @ P)).tocsr()
        Bc = None if self.near_null is None else self.near_null[self._coarse_rows]
        self._ml = sa_hierarchy(Ac, Bc)
        t_amg = time.perf_counter()
        dtype = np.float32 if self.float32 else np.float64
        # the smoother's copy shares A's (fixed) pattern arrays: only the entries are converted
        self._As = ThreadedCSR(sp.csr_matrix((A.data.astype(dtype), A.indices, A.indptr), shape=A.shape,
                                             copy=False))
        self._diag_pos = diagonal_positions(A) if A.has_sorted_indices else None
        self._dinv = (1.0 / A.diagonal()).astype(dtype)
        lmax = self._lambda_max(A)
        self._lmin, self._lmax = lmax / self.ratio, 1.05 * lmax
        self.extra = {"coarse_dofs": Ac.shape[0], "lmax": lmax, "levels": len(self._ml.levels),
                      "coarse_setup_s": t_amg - t}
        n = A.shape[0]
        self._prec = spla.LinearOperator((n, n), matvec=self._vcycle, dtype=np.float64)

    def _lambda_max(self, A):
        """Upper estimate of the largest eigenvalue of D^-1 A: :func:`lanczos_lmax` (the smoother
        bound adds 5 %). A rebuild after a change of moduli starts from the previous Ritz
        vector, which is close."""
        d = np.sqrt(self._dinv.astype(np.float64))
        At = self._As  # the single-precision copy: a bound to a few per cent needs no more

        def op(x):
            return d * (At @ (d * x).astype(At.dtype)).astype(np.float64)

        v0 = getattr(self, "_lmax_vector", None)
        if v0 is None or v0.size != A.shape[0]:
            v0 = np.random.default_rng(0).random(A.shape[0])  # fixed: set-ups repeat exactly
        lmax, self._lmax_vector = lanczos_lmax(op, v0)
        return lmax

    def _smooth(self, r):
        """Chebyshev polynomial in D^-1 A applied to ``r`` (zero initial guess)."""
        A, dinv = self._As, self._dinv
        theta = 0.5 * (self._lmax + self._lmin)
        delta = 0.5 * (self._lmax - self._lmin)
        sigma = theta / delta
        rho = 1.0 / sigma
        r = r.copy()
        d = dinv * r / theta
        x = d.copy()
        for _ in range(self.degree - 1):
            rho_new = 1.0 / (2.0 * sigma - rho)
            r -= A @ d
            d *= rho_new * rho
            d += (2.0 * rho_new / delta) * (dinv * r)
            x += d
            rho = rho_new
        return x

    def _vcycle(self, b):
        """Symmetric two-level cycle: smooth, coarse correction, smooth (working precision
        of the smoother copy)."""
        A = self._As
        b = np.ravel(b).astype(A.dtype)
        x = self._smooth(b)
        r = b - A @ x
        rc = self._P.T @ r.astype(np.float64)
        x += (self._P @ amg_cycles(self._ml, rc, self.coarse_cycles)).astype(A.dtype)
        r = b - A @ x
        x += self._smooth(r)
        return x.astype(np.float64)

    def _solve(self, b, x0, rtol):
        x, info, it, self.residual = pcg(self.A, b, self._prec, x0, rtol, self.maxiter)
        if info != 0:
            raise SolverError(f"p-multigrid CG did not converge to {rtol:g} in {it} iterations")
        return x, it
