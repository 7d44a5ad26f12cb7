"""Linear-elastic FE model: mesh + materials + constraints + loads, and its static solve.

Unknowns are interleaved, ``dof = 3 * node + component`` (component 0, 1, 2 = x, y, z).
Prescribed displacements are eliminated: ``K_ff u_f = f_f - K_fc u_c``; reactions are
``r = K u - f`` on the constrained unknowns.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from scipy.sparse.csgraph import connected_components
import scipy.sparse as sp

from ..errors import ModelError
from .assembly import Assembler
from .solvers import LinearSolver, SolveInfo, make_solver


class MeshArrays(Protocol):
    """What the FE core needs of a mesh: node coordinates and connectivity.

    ``points`` (N, 3) float64 in mm; ``cells`` (M, 4), (M, 10) or (M, 8) int, node orders of
    :mod:`fesim.cells`. :class:`fesim.mesh.tetmesh.TetMesh` is one; so is :class:`Arrays`.
    """

    points: np.ndarray
    cells: np.ndarray


@dataclass(frozen=True)
class Arrays:
    """A plain :class:`MeshArrays`: ``points`` (N, 3) mm and ``cells`` (M, n) node ids."""

    points: np.ndarray
    cells: np.ndarray


@dataclass
class Model:
    """A static linear-elastic problem.

    Attributes
    ----------
    mesh : MeshArrays
        Anything with ``points`` and ``cells`` (a mesher's mesh, or :class:`Arrays`).
    E : (M,) Young's modulus per element, MPa
    nu : (M,) Poisson's ratio per element
    bc_dofs : (K,) int64 constrained unknowns
    bc_values : (K,) prescribed displacements, mm
    forces : (3N,) external nodal forces, N
    """

    mesh: TetMesh
    E: np.ndarray
    nu: np.ndarray
    bc_dofs: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    bc_values: np.ndarray = field(default_factory=lambda: np.zeros(0))
    forces: np.ndarray | None = None

    @classmethod
    def from_arrays(cls, points, cells, E, nu) -> "Model":
        """A model of node coordinates ``points`` (N, 3) mm and connectivity ``cells`` (M, n)."""
        return cls(Arrays(np.asarray(points, dtype=float), np.asarray(cells)), E, nu)

    def __post_init__(self):
        M = len(self.mesh.cells)
        self.E = np.broadcast_to(np.asarray(self.E, dtype=float), (M,)).copy()
        self.nu = np.broadcast_to(np.asarray(self.nu, dtype=float), (M,)).copy()
        if np.any(self.E <= 0) or not np.all(np.isfinite(self.E)):
            raise ModelError("every element needs a finite, positive Young's modulus")
        if np.any((self.nu <= -1) | (self.nu >= 0.5)):
            raise ModelError("Poisson's ratio must lie in (-1, 0.5)")
        if self.forces is None:
            self.forces = np.zeros(self.n_dofs)

    @property
    def n_dofs(self) -> int:
        return 3 * self.n_nodes

    @property
    def n_nodes(self) -> int:
        return len(self.mesh.points)

    def fix(self, nodes, components=(0, 1, 2), value=0.0) -> "Model":
        """Prescribe displacement ``value`` (mm, scalar or per component) on ``nodes``."""
        nodes = np.asarray(nodes, dtype=np.int64).ravel()
        comps = np.asarray(components, dtype=np.int64)
        vals = np.broadcast_to(np.asarray(value, dtype=float), comps.shape)
        dofs = (3 * nodes[:, None] + comps[None, :]).ravel()
        v = np.broadcast_to(vals[None, :], (nodes.size, comps.size)).ravel()
        d = np.concatenate([self.bc_dofs, dofs])
        vv = np.concatenate([self.bc_values, v])
        # Later prescriptions win over earlier ones on the same unknown.
        _, last = np.unique(d[::-1], return_index=True)
        keep = np.sort(d.size - 1 - last)
        self.bc_dofs, self.bc_values = d[keep], vv[keep]
        return self

    def add_force(self, nodes, force_vec) -> "Model":
        """Spread a total force vector (N) equally over ``nodes``."""
        nodes = np.asarray(nodes, dtype=np.int64).ravel()
        f = np.asarray(force_vec, dtype=float) / max(nodes.size, 1)
        np.add.at(self.forces, (3 * nodes[:, None] + np.arange(3)).ravel(), np.tile(f, nodes.size))
        return self


def rigid_body_modes(points: np.ndarray) -> np.ndarray:
    """The six rigid-body modes (3N, 6): three translations and three rotations about the centroid."""
    x = points - points.mean(axis=0)
    n = len(points)
    B = np.zeros((n, 3, 6))
    B[:, 0, 0] = B[:, 1, 1] = B[:, 2, 2] = 1.0
    B[:, 1, 3], B[:, 2, 3] = -x[:, 2], x[:, 1]
    B[:, 0, 4], B[:, 2, 4] = x[:, 2], -x[:, 0]
    B[:, 0, 5], B[:, 1, 5] = -x[:, 1], x[:, 0]
    return B.reshape(3 * n, 6)


def check_supported(model: Model) -> None:
    """Raise :class:`ModelError` unless every connected part is held against rigid motion.

    A part is held when the rigid-body modes restricted to its constrained unknowns have
    rank 6 (no rigid motion leaves every constraint satisfied).
    """
    mesh = model.mesh
    n_nodes = model.n_nodes
    if model.bc_dofs.size == 0:
        raise ModelError("the model has no displacement constraints: it is free to move as a rigid body")
    used = np.unique(mesh.cells)
    if used.size != n_nodes:
        raise ModelError(f"{n_nodes - used.size} node(s) belong to no element")
    M, n = mesh.cells.shape
    rows = np.repeat(np.arange(M), n)
    g = sp.csr_matrix((np.ones(M * n), (rows, mesh.cells.ravel())), shape=(M, n_nodes))
    ncomp, lab = connected_components(g.T @ g, directed=False)
    cnode = model.bc_dofs // 3
    for c in range(ncomp):
        nodes_c = np.nonzero(lab == c)[0]
        sel = model.bc_dofs[lab[cnode] == c]
        if sel.size < 6 and nodes_c.size > 1 or sel.size == 0:
            raise ModelError(f"part {c} ({nodes_c.size} nodes) is not held against rigid-body motion")
        B = rigid_body_modes(mesh.points[nodes_c])
        local = np.full(n_nodes, -1)
        local[nodes_c] = np.arange(nodes_c.size)
        rowsB = 3 * local[sel // 3] + sel % 3
        s = np.linalg.svd(B[rowsB], compute_uv=False)
        scale = max(1.0, np.abs(mesh.points[nodes_c]).max())
        if s.size < 6 or s[-1] < 1e-9 * scale * s[0]:
            raise ModelError(f"part {c} ({nodes_c.size} nodes) is not held against rigid-body motion "
                             "(constraints allow a translation or rotation)")


@dataclass
class Solution:
    """Displacements (N, 3) in mm, reactions (3N,) in N, and solver information."""

    u: np.ndarray
    reactions: np.ndarray
    info: SolveInfo
    timings_s: dict = field(default_factory=dict)

    def reaction_on(self, nodes) -> np.ndarray:
        """Total reaction force vector (N) on the constrained unknowns of ``nodes``."""
        nodes = np.asarray(nodes, dtype=np.int64)
        return self.reactions.reshape(-1, 3)[nodes].sum(axis=0)


class _ReducedUpdater:
    """Adds element-matrix increments in place into the reduced matrices ``K_ff, K_fc, K_c``.

    Every entry of the mesh's block pattern lies in exactly one of the three (by whether its
    row and column unknowns are free or constrained). Built once: ``where`` gives, for each
    pattern entry ``(block, i, j)``, its position in the three data arrays laid end to end
    (by counting when the submatrix keeps its columns in dof order, else by binary search on
    the sorted CSR keys). An update is then one gather and one ``bincount``, O(k + nnz) for
    k entries, with no search. Memory: one int32 per stored entry.
    """

    def __init__(self, pattern, mats, row_maps, col_maps):
        self.pattern, self.mats = pattern, mats
        self.offsets = np.cumsum([0] + [A.data.size for A in mats])
        total = int(self.offsets[-1])
        it = np.int32 if total < 2**31 - 1 else np.int64
        where = np.full((pattern.nnz_blocks, 9), -1, dtype=it)
        brow = np.repeat(np.arange(pattern.n_nodes, dtype=np.int64), np.diff(pattern.indptr))
        bcol = pattern.indices.astype(np.int64)
        for A, rmap, cmap, off in zip(mats, row_maps, col_maps, self.offsets):
            A.sort_indices()
            in_cols = (cmap >= 0).reshape(-1, 3)
            if np.all(np.diff(cmap[cmap >= 0]) > 0):
                self._locate_ordered(A, rmap, cmap, in_cols, pattern.indptr, brow, bcol, where, off)
            else:
                self._locate_search(A, rmap, cmap, brow, bcol, where, off)
        self.where = where.ravel()
        self.total = total

    @staticmethod
    def _locate_ordered(A, rmap, cmap, in_cols, indptr, brow, bcol, where, off):
        """Columns kept in global order: an entry's place in its CSR row is the number of
        kept unknowns of the row's earlier blocks plus the kept components before it."""
        per_node = in_cols.sum(axis=1)
        before = np.cumsum(in_cols, axis=1) - in_cols  # kept components before each one
        n_block = per_node[bcol]
        first = np.cumsum(n_block) - n_block  # kept entries before each block, whole pattern
        in_row = first - first[indptr[:-1][brow]]  # ... before each block within its row
        for i in range(3):
            rr = rmap[3 * brow + i]
            for j in range(3):
                ok = np.flatnonzero((rr >= 0) & in_cols[bcol, j])
                pos = A.indptr[rr[ok]] + in_row[ok] + before[bcol[ok], j]
                if pos.size and (pos.max() >= A.indices.size
                                 or np.any(A.indices[pos] != cmap[3 * bcol[ok] + j])):
                    raise ModelError("reduced matrix lost entries of the sparsity pattern")
                where[ok, 3 * i + j] = pos + off

    @staticmethod
    def _locate_search(A, rmap, cmap, brow, bcol, where, off):
        """Any column order: binary search on the sorted (row, column) keys."""
        rows = np.repeat(np.arange(A.shape[0], dtype=np.int64), np.diff(A.indptr))
        keys = rows * A.shape[1] + A.indices
        for i in range(3):
            rr = rmap[3 * brow + i]
            for j in range(3):
                cc = cmap[3 * bcol + j]
                ok = np.flatnonzero((rr >= 0) & (cc >= 0))
                key = rr[ok] * A.shape[1] + cc[ok]
                pos = np.searchsorted(keys, key)
                if np.any(pos >= keys.size) or np.any(keys[np.minimum(pos, keys.size - 1)] != key):
                    raise ModelError("reduced matrix lost entries of the sparsity pattern")
                where[ok, 3 * i + j] = pos + off

    def add(self, elems: np.ndarray, Ke: np.ndarray, chunk: int = 20_000) -> None:
        """Add ``Ke`` (k, 3n, 3n) of elements ``elems`` (k,) into the reduced matrices."""
        m, nd, _ = Ke.shape
        n = nd // 3
        delta = np.zeros(self.total)
        for s in range(0, m, chunk):
            sl = slice(s, min(s + chunk, m))
            blocks = self.pattern.block_of[elems[sl]].astype(np.int64)  # (k, a, b)
            ent = (9 * blocks)[..., None] + np.arange(9)  # (k, a, b, 3 i + j)
            w = Ke[sl].reshape(-1, n, 3, n, 3).transpose(0, 1, 3, 2, 4).reshape(ent.shape)
            delta += np.bincount(self.where[ent.ravel()], weights=w.ravel(), minlength=self.total)
        for A, lo, hi in zip(self.mats, self.offsets[:-1], self.offsets[1:]):
            A.data += delta[lo:hi]


class StaticProblem:
    """Assembles and solves a model; keeps pattern and solver for repeated solves.

    Use one instance for a sequence of solves with the same mesh and constraint set
    (new moduli with :meth:`set_moduli`, new prescribed values with :meth:`solve`).
    After the first assembly, :meth:`set_moduli` only touches elements whose modulus changed:
    their stiffness increments are added in place into the reduced matrices, and the solver
    keeps its preconditioner (rebuilt when CG needs far more iterations than at first).
    """

    def __init__(self, model: Model, solver: str = "auto", rtol: float = 1e-8, assembler: Assembler | None = None):
        check_supported(model)
        self.model = model
        self.method = solver
        self.rtol = rtol
        t = time.perf_counter()
        self.assembler = assembler or Assembler(model.mesh.points, model.mesh.cells)
        self.timings = {"pattern": time.perf_counter() - t}
        n = model.n_dofs
        self.free = np.setdiff1d(np.arange(n), model.bc_dofs)
        self._solver: LinearSolver | None = None
        self._u_prev = None
        self._ref_per_decade = None  # CG iterations per decade right after a set-up
        self._first_iters = None
        self._E = None
        self.n_rebuilds = 0
        self.set_moduli(model.E)

    def _full_assembly(self, E):
        m = self.model
        self.K_ff, self.K_fc, self.K_c = self.assembler.assemble_reduced(E, m.nu, self.free, m.bc_dofs)
        self._upd = None  # in-place updater, built on the first incremental update

    def _updater(self):
        if self._upd is None:
            m = self.model
            n = m.n_dofs
            fmap = np.full(n, -1, dtype=np.int64)
            fmap[self.free] = np.arange(self.free.size)
            cmap = np.full(n, -1, dtype=np.int64)
            cmap[m.bc_dofs] = np.arange(m.bc_dofs.size)
            allmap = np.arange(n, dtype=np.int64)
            self._upd = _ReducedUpdater(self.assembler.pattern, [self.K_ff, self.K_fc, self.K_c],
                                        [fmap, fmap, cmap], [fmap, cmap, allmap])
        return self._upd

    def set_moduli(self, E) -> None:
        """(Re)assemble with per-element moduli ``E`` (MPa); reuses pattern and preconditioner."""
        m = self.model
        E = np.asarray(E, dtype=float)
        t = time.perf_counter()
        if self._E is None:
            self._full_assembly(E)
        else:
            changed = np.nonzero(E != self._E)[0]
            if changed.size and not self.assembler.update_reduced(
                    changed, E[changed] - self._E[changed], m.nu[changed], self.free, m.bc_dofs,
                    self.K_ff, self.K_fc, self.K_c):
                Ke = self.assembler.element_matrices(changed, E[changed] - self._E[changed], m.nu[changed])
                self._updater().add(changed, Ke)
        self._E = E.copy()
        m.E = self._E.copy()
        self.timings["assembly"] = self.timings.get("assembly", 0.0) + time.perf_counter() - t
        if self._solver is None:
            B = rigid_body_modes(m.mesh.points)[self.free]
            self._solver = make_solver(self.K_ff, self.method, rtol=self.rtol, near_null=B,
                                       cells=m.mesh.cells, free=self.free, n_nodes=m.n_nodes,
                                       coarse_matrix=self._corner_matrix)
        else:
            self._solver.update(self.K_ff, reuse=True)

    def _corner_matrix(self, coarse_dofs):
        """The p-multigrid's coarse operator for the current moduli (read at each set-up)."""
        return self.assembler.corner_matrix(self._E, self.model.nu, coarse_dofs)

    def solve(self, bc_values=None, forces=None, correction_rtol: float | None = None) -> Solution:
        """Solve with the current moduli, warm-started from the previous solution.

        ``correction_rtol``: when given (and there is a previous solution), CG stops once the
        residual is this fraction of the *initial* residual (that of the warm start) instead
        of ``rtol`` times the load. After a local change of moduli (a secant iteration) the
        initial residual can already be below ``rtol`` of a load concentrated elsewhere, and
        CG would then barely move: the change would be left unresolved.
        """
        m = self.model
        uc = m.bc_values if bc_values is None else np.asarray(bc_values, dtype=float)
        f = m.forces if forces is None else forces
        rhs = f[self.free] - self.K_fc @ uc
        x0 = None if self._u_prev is None else self._u_prev[self.free]
        bn = np.linalg.norm(rhs)
        res0 = rhs - self.K_ff @ x0 if x0 is not None else rhs
        r0 = 1.0 if x0 is None or bn == 0 else np.linalg.norm(res0) / bn
        t = time.perf_counter()
        if correction_rtol is not None and x0 is not None and r0 > 0:
            # solve for the correction; its tolerance is relative to its own right-hand side
            du, info = self._solver.solve(res0, rtol=max(correction_rtol, 1e-12 / r0))
            uf = x0 + du
            info.residual *= r0
        else:
            uf, info = self._solver.solve(rhs, x0=x0)
        solve_s = time.perf_counter() - t
        self.timings["solve"] = self.timings.get("solve", 0.0) + solve_s
        # Iterations per decade of residual reduction measure the preconditioner's quality
        # independently of how good the warm start was.
        decades = max(np.log10(max(r0, 1e-300) / max(info.residual, 1e-300)), 0.5)
        per_decade = info.iterations / decades
        if self._first_iters is None:
            self._first_iters = info.iterations
        if self._ref_per_decade is None:
            self._ref_per_decade = per_decade
        elif (info.reused_setup and per_decade > 1.5 * self._ref_per_decade
              and info.iterations > 0.25 * self._first_iters):
            # The reused preconditioner has gone stale (CG converges 1.5x slower than with
            # a fresh one) and this solve took more than a quarter of the cold solve's
            # iterations (a p-multigrid set-up costs about half a cold solve): rebuild it for
            # the next solve. Iteration counts, not timings, decide, so results repeat exactly.
            t = time.perf_counter()
            self._solver.update(self.K_ff, reuse=False)
            self._ref_per_decade = None
            self.n_rebuilds += 1
            self.timings["setup"] = self.timings.get("setup", 0.0) + time.perf_counter() - t
        u = np.empty(m.n_dofs)
        u[self.free] = uf
        u[m.bc_dofs] = uc
        self._u_prev = u
        r = np.zeros(m.n_dofs)
        r[self.free] = -self._solver.residual  # equilibrium residual K u - f of the free unknowns
        r[m.bc_dofs] = self.K_c @ u - f[m.bc_dofs]
        return Solution(u.reshape(-1, 3), r, info, dict(self.timings))


def solve_static(model: Model, solver: str = "auto", rtol: float = 1e-8) -> Solution:
    """Assemble and solve ``model`` once."""
    return StaticProblem(model, solver, rtol).solve()
