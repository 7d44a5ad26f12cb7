"""Sparse linear solvers behind one small registry.

A solver is created for one matrix with :func:`make_solver` and keeps its expensive set-up
(AMG hierarchy or factorisation) so that further right-hand sides, warm starts and matrices
of the same pattern (``update``) reuse it. Back ends:

* ``"amg"``  — conjugate gradients preconditioned by pyamg smoothed aggregation with the six
  rigid-body modes as near-null space (default for large models);
* ``"direct"`` — scipy's SuperLU (small models; exact to round-off);
* ``"cholmod"`` / ``"pardiso"`` — optional extras (scikit-sparse, pypardiso), used when installed.

``"auto"`` picks a direct solver below :data:`AUTO_DIRECT_MAX_DOFS` unknowns and AMG above.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from ..errors import SolverError

AUTO_DIRECT_MAX_DOFS = 20_000

_REGISTRY: dict[str, type] = {}


def register(name):
    def deco(cls):
        _REGISTRY[name] = cls
        cls.name = name
        return cls
    return deco


def available() -> list[str]:
    """Names of the back ends usable on this machine."""
    return [n for n, c in _REGISTRY.items() if c.is_available()]


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
    """Base class. Subclasses implement ``_setup(A)`` and ``_solve(b, x0)``."""

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
        self._setup(self.A, reuse)
        self.setup_s = time.perf_counter() - t
        self._setup_count += 1

    def solve(self, b, x0=None):
        """Solve ``A x = b``; returns ``(x, SolveInfo)``; raises :class:`SolverError`."""
        t = time.perf_counter()
        x, it = self._solve(np.asarray(b, dtype=float), x0)
        dt = time.perf_counter() - t
        if not np.all(np.isfinite(x)):
            raise SolverError(f"{self.name} solver produced non-finite values (singular system?)")
        bn = np.linalg.norm(b)
        res = np.linalg.norm(b - self.A @ x) / (bn if bn > 0 else 1.0)
        return x, SolveInfo(self.name, it, float(res), self.setup_s, dt, self._setup_count > 1)


@register("direct")
class DirectSolver(LinearSolver):
    """SuperLU factorisation (scipy). Factorises again on ``update`` (values change)."""

    def _setup(self, A, reuse):
        try:
            self._lu = spla.splu(A.tocsc(), permc_spec="COLAMD")
        except RuntimeError as exc:  # "Factor is exactly singular"
            raise SolverError(f"direct solver: matrix is singular ({exc}); is the model held?") from exc

    def _solve(self, b, x0):
        return self._lu.solve(b), 1


@register("cholmod")
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

    def _solve(self, b, x0):
        return self._factor(b), 1


@register("pardiso")
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

    def _solve(self, b, x0):
        return self._ps.solve(self._A_upper, b), 1


@register("amg")
class AMGSolver(LinearSolver):
    """CG + pyamg smoothed aggregation with rigid-body near-null space.

    ``update(A, reuse=True)`` keeps the hierarchy built for an earlier matrix of the same
    pattern: it stays a good preconditioner when moduli change moderately (secant steps),
    and CG still converges to ``rtol`` because the operator is always the current matrix.
    """

    max_coarse = 500

    def _setup(self, A, reuse):
        import pyamg

        if reuse and getattr(self, "_ml", None) is not None:
            return
        B = self.near_null
        self._ml = pyamg.smoothed_aggregation_solver(
            A, B=B, symmetry="hermitian", strength=("symmetric", {"theta": 0.0}),
            smooth=("jacobi", {"omega": 4.0 / 3.0, "degree": 1}),
            presmoother=("block_gauss_seidel", {"sweep": "symmetric"}),
            postsmoother=("block_gauss_seidel", {"sweep": "symmetric"}),
            max_coarse=self.max_coarse, coarse_solver="splu", keep=False,
        )
        self._M = self._ml.aspreconditioner(cycle="V")

    def _solve(self, b, x0):
        it = [0]

        def cb(xk):
            it[0] += 1

        x, info = spla.cg(self.A, b, x0=x0, rtol=self.rtol, atol=0.0, maxiter=self.maxiter,
                          M=self._M, callback=cb)
        if info != 0:
            raise SolverError(f"AMG-CG did not converge to {self.rtol:g} in {it[0]} iterations"
                              " (ill-conditioned or singular model)")
        return x, it[0]


def make_solver(A, method: str = "auto", rtol: float = 1e-8, near_null=None, **kw) -> LinearSolver:
    """Create a solver for matrix ``A``.

    Parameters
    ----------
    A : sparse symmetric positive definite matrix (N/mm)
    method : ``"auto"``, ``"amg"``, ``"direct"``, ``"cholmod"`` or ``"pardiso"``
    near_null : (n, 6) rigid-body modes for AMG (recommended)
    """
    if method == "auto":
        if A.shape[0] <= AUTO_DIRECT_MAX_DOFS:
            method = "cholmod" if CholmodSolver.is_available() else "direct"
        else:
            method = "amg"
    if method not in _REGISTRY:
        raise SolverError(f"unknown solver {method!r}; choose from {sorted(_REGISTRY)}")
    cls = _REGISTRY[method]
    if not cls.is_available():
        raise SolverError(f"solver {method!r} is not installed (optional extra)")
    return cls(A, rtol=rtol, near_null=near_null, **kw)
