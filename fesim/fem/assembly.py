"""Vectorised global assembly into a block-sparse (3x3 BSR) stiffness matrix.

The sparsity pattern is computed once per mesh (:class:`SparsityPattern`); every element
block ``(a, b)`` knows the position of its 3x3 block in the global matrix, so re-assembly
with new moduli is a weighted ``bincount`` over the same positions, with no sorting.

Memory: the matrix holds 9 float64 per node pair plus one int32 column index per pair;
tet10 meshes have about 27 neighbours per node, i.e. about 0.7 kB per unknown.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from . import elements, kernels
from ..cells import HEX_CORNERS

#: Elements per chunk during assembly: bounds temporary memory (tet10: ~14 kB per element).
CHUNK = 40_000


@dataclass
class SparsityPattern:
    """Node-pair block pattern of a mesh (CSR of 3x3 blocks)."""

    n_nodes: int
    indptr: np.ndarray  # (n_nodes + 1,) int64
    indices: np.ndarray  # (nnzb,) int32 block columns
    block_of: np.ndarray  # (M, n, n) int32 (int64 if huge): block index of element pair (a, b)

    @property
    def nnz_blocks(self) -> int:
        return self.indices.size

    @classmethod
    def from_cells(cls, cells: np.ndarray, n_nodes: int) -> "SparsityPattern":
        M, n = np.shape(cells)
        K = M * n * n
        if kernels.HAVE_NUMBA and M > 0:
            return cls._from_cells_compiled(np.asarray(cells), n_nodes)
        # int32 whenever it fits: halves the memory (and the page faults) of every temporary
        it = np.int32 if max(K, n_nodes) < 2**31 - 1 else np.int64
        cells = np.asarray(cells, dtype=it)
        rows = np.repeat(cells, n, axis=1).ravel()
        cols = np.tile(cells, (1, n)).ravel()
        # Sort the M n^2 (row, col) pairs by two stable counting sorts (LSD radix on node ids):
        # scipy's CSR->CSC conversion of a one-entry-per-row matrix is exactly a stable
        # counting sort of its column ids, O(K + n_nodes) in C++, against O(K log K) for
        # np.unique.
        ptr = np.arange(K + 1, dtype=it)
        perm = sp.csr_matrix((np.arange(K, dtype=it), cols, ptr), shape=(K, n_nodes)).tocsc().data
        perm = sp.csr_matrix((perm, rows[perm], ptr), shape=(K, n_nodes)).tocsc().data
        del ptr
        r, c = rows[perm], cols[perm]
        del rows, cols
        new = np.empty(K, dtype=bool)
        new[0] = True
        np.not_equal(r[1:], r[:-1], out=new[1:])
        new[1:] |= c[1:] != c[:-1]
        block_of = np.empty(K, dtype=it)
        block_of[perm] = np.cumsum(new, dtype=it) - 1
        indptr = np.zeros(n_nodes + 1, dtype=np.int64)
        np.cumsum(np.bincount(r[new], minlength=n_nodes), out=indptr[1:])
        indices = c[new].astype(np.int32)
        return cls(n_nodes, indptr, indices, block_of.reshape(M, n, n))


    @classmethod
    def _from_cells_compiled(cls, cells, n_nodes: int) -> "SparsityPattern":
        """Same pattern from each node's incident elements (numba, rows across the cores):
        a marker array finds each row's distinct neighbours; no global sort."""
        M, n = cells.shape
        inc_ptr, inc_e, _ = node_incidence(cells, n_nodes)
        indptr = np.zeros(n_nodes + 1, dtype=np.int64)
        nchunk = 4 * kernels.n_threads()
        dummy = np.zeros(0, dtype=np.int32)
        kernels._pattern_rows(cells, inc_ptr, inc_e, nchunk, indptr, dummy, np.zeros((0, n, n), np.int32), False)
        np.cumsum(indptr, out=indptr)
        it = np.int32 if max(indptr[-1], n_nodes) < 2**31 - 1 else np.int64
        indices = np.empty(indptr[-1], dtype=np.int32)
        block_of = np.empty((M, n, n), dtype=it)
        kernels._pattern_rows(cells, inc_ptr, inc_e, nchunk, indptr, indices, block_of, True)
        return cls(n_nodes, indptr, indices, block_of)


def node_incidence(cells: np.ndarray, n_nodes: int):
    """Node -> (element, local node) incidence in CSR form: ``(ptr, elem, local)``."""
    M, n = cells.shape
    flat = cells.ravel()
    order = np.argsort(flat, kind="stable")
    ptr = np.zeros(n_nodes + 1, dtype=np.int64)
    np.cumsum(np.bincount(flat, minlength=n_nodes), out=ptr[1:])
    return ptr, (order // n).astype(np.int32), (order % n).astype(np.int32)


def assemble_blocks(pattern: SparsityPattern, Ke: np.ndarray, scale=None, sl=slice(None),
                    out: np.ndarray | None = None) -> np.ndarray:
    """Add element matrices ``Ke`` (m, 3n, 3n) of elements ``sl`` into block data (nnzb, 3, 3)."""
    m, nd, _ = Ke.shape
    n = nd // 3
    if out is None:
        out = np.zeros((pattern.nnz_blocks, 3, 3))
    blocks = Ke.reshape(m, n, 3, n, 3).transpose(0, 1, 3, 2, 4)  # (m, a, b, i, j)
    if scale is not None:
        blocks = blocks * np.asarray(scale)[:, None, None, None, None]
    idx = pattern.block_of[sl].ravel()
    # component-major copy: each bincount then reads one contiguous weight array
    flat = np.moveaxis(blocks, (3, 4), (0, 1)).reshape(9, -1)
    o = out.reshape(-1, 9)
    for c in range(9):
        o[:, c] += np.bincount(idx, weights=flat[c], minlength=pattern.nnz_blocks)
    return out


def _lambda_derivatives(n: int, L: np.ndarray) -> np.ndarray:
    """``D[q, a, c] = dN_a/dL_c`` at barycentric points ``L`` (Q, 4), N written in (L0..L3)."""
    Q = L.shape[0]
    D = np.zeros((Q, n, 4))
    if n == 4:
        D[:] = np.eye(4)
        return D
    for a in range(4):
        D[:, a, a] = 4.0 * L[:, a] - 1.0
    for k, (a, b) in enumerate(elements.EDGES):
        D[:, 4 + k, a] = 4.0 * L[:, b]
        D[:, 4 + k, b] = 4.0 * L[:, a]
    return D


def affine_product_tensor(n: int) -> np.ndarray:
    """Constant tensor ``T`` (16, n*n) of straight-sided tetrahedra.

    With ``g_c = grad L_c`` (constant on an affine element) the chain rule gives
    ``grad N_a = sum_c dN_a/dL_c g_c``, so ``int grad N_a (x) grad N_b dV =
    V sum_cd T[cd, ab] g_c (x) g_d`` with ``T[cd, ab] = mean over the element of
    dN_a/dL_c dN_b/dL_d`` (the 4-point rule is exact: the integrand is of degree 2).
    """
    xi, w = elements.quadrature(n)
    L = np.column_stack([1.0 - xi.sum(axis=1), xi])
    D = _lambda_derivatives(n, L)
    T = np.einsum("q,qac,qbd->cdab", w / w.sum(), D, D)
    return np.ascontiguousarray(T.reshape(16, n * n))


def uniform_hex(points: np.ndarray, cells: np.ndarray, rtol: float = 1e-9) -> np.ndarray | None:
    """Corner offsets (8, 3) from node 0 shared by every hex8 element (a regular voxel grid:
    all elements are translates of one), or None."""
    if cells.shape[1] != 8 or len(cells) == 0:
        return None
    d = points[cells] - points[cells[:, :1]]
    ref = d[0]
    scale = max(1.0, np.abs(points).max())
    step = 200_000
    for a in range(0, len(d), step):
        if np.abs(d[a:a + step] - ref).max() > rtol * scale:
            return None
    return ref.copy()


def is_affine(points: np.ndarray, cells: np.ndarray, rtol: float = 1e-9) -> bool:
    """True when every tet10 mid-edge node lies at its edge midpoint (tet4: always), or every
    hex8 is a parallelepiped (its map from the reference cube is affine)."""
    if cells.shape[1] == 4:
        return True
    if cells.shape[1] == 8:
        X = points[cells]
        s = HEX_CORNERS
        # coefficients of xi*eta, xi*zeta, eta*zeta and xi*eta*zeta in the trilinear map
        prods = np.stack([s[:, 0] * s[:, 1], s[:, 0] * s[:, 2], s[:, 1] * s[:, 2], s.prod(axis=1)])
        dev = np.abs(np.einsum("ka,mai->mki", prods, X)).max() / 8.0
        return bool(dev <= rtol * max(1.0, np.abs(points).max()))
    X = points[cells[:, :4]]
    e = elements.EDGES
    mid = 0.5 * (X[:, e[:, 0]] + X[:, e[:, 1]])
    dev = np.abs(points[cells[:, 4:]] - mid).max()
    return bool(dev <= rtol * max(1.0, np.abs(points).max()))


class Assembler:
    """Assembles K for one mesh; caches the pattern and the element geometry.

    Straight-sided elements (all tet4; tet10 whose mid-edge nodes sit at edge midpoints, as
    fesim's meshes are) use the barycentric form: per element only the four gradients
    ``g_c = grad L_c`` and the volume ``V`` are needed, and each stiffness component is

        K_ij[a, b] = sum_cd T[cd, ab] C_ij[cd],
        C_ij[cd] = V (lam g_ci g_dj + mu g_cj g_di + delta_ij mu g_c . g_d),

    one (m x 16) @ (16 x n^2) BLAS product per component ``(i, j)`` (tet4: ``T`` is the
    identity), followed by one ``bincount`` into the block data. Curved tet10 elements fall
    back to quadrature: ``Y_ij[a, b] = sum_q w_q |J_q| G_qai G_qbj`` (six for i <= j) and
    ``K_ij[a, b] = lam Y_ij[a, b] + mu Y_ij[b, a] + delta_ij mu tr Y[a, b]``.
    No (3n x 3n) element matrices are formed in either path.

    Hex8 meshes of a regular voxel grid (every element a translate of one,
    :func:`uniform_hex`) use one reference element: ``K_e = lam_e K_lam + mu_e K_mu`` with
    the two (24 x 24) geometry parts of the shared shape, i.e. ``K_e = E_e K_ref(nu_e)``.
    Other hex8 meshes take the quadrature path (``hex_fast=False`` forces it, for testing).

    Parameters
    ----------
    points, cells : mesh arrays (mm)
    cache_limit_bytes : curved tet10 only: the products ``Y`` (6 n^2 float64 per element) are
        kept for fast re-assembly with new moduli when they fit in this budget.
    """

    _PAIRS = [(0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)]

    def __init__(self, points, cells, cache_limit_bytes: float = 5e8, hex_fast: bool = True):
        self.points = np.asarray(points, dtype=float)
        self.cells = np.asarray(cells)
        self._hex_ref = None  # (K_lam, K_mu) of the shared voxel shape
        ref = uniform_hex(self.points, self.cells) if hex_fast else None
        if ref is not None:
            G, wdet = elements.gradients(ref, np.arange(8)[None])
            k_lam, k_mu = elements.stiffness_parts(G, wdet)
            self._hex_ref = (k_lam[0], k_mu[0])
        self.pattern = SparsityPattern.from_cells(self.cells, len(self.points))
        self.cache_limit = cache_limit_bytes
        self._parts = None  # (K_lam, K_mu) per element, filled only by element_matrices callers
        self._Y = None
        self.affine = is_affine(self.points, self.cells)
        self._g = None  # (M, 4, 3) barycentric gradients, 1/mm, and (M,) volumes, mm^3
        self._vol = None
        self._terms = None  # sparse affine product tensor (assemble_reduced)
        self._inc = None  # node -> element incidence (assemble_reduced)
        self._maps = None  # (key, block positions in the reduced matrices) of the last constraint set
        self._corner = None  # (tet4 corner-mesh Assembler, node -> corner index), tet10 only

    @property
    def n_dofs(self) -> int:
        return 3 * self.pattern.n_nodes

    def _chunks(self, per_element: int):
        M = self.cells.shape[0]
        step = max(1, int(25e6 // per_element))  # about 200 MB per component array
        for start in range(0, M, step):
            yield slice(start, min(start + step, M))

    def barycentric_gradients(self):
        """Barycentric gradients (M, 4, 3), 1/mm, and volumes (M,), mm^3, of the corner
        tetrahedra (cached; see :func:`fesim.fem.elements.barycentric_gradients`)."""
        return self._barycentric_gradients()

    def _barycentric_gradients(self):
        if self._g is None:
            self._g, self._vol = elements.barycentric_gradients(self.points, self.cells)
        return self._g, self._vol

    def _geometry(self, sl) -> np.ndarray:
        """Curved path: products ``Y`` (6, m, n, n) of elements ``sl`` in the order of ``_PAIRS``."""
        G, wdet = elements.gradients(self.points, self.cells[sl])
        Gc = np.ascontiguousarray(np.moveaxis(G, 3, 0))  # (3, m, Q, n)
        Gw = Gc * wdet[None, :, :, None]
        return np.stack([np.matmul(Gw[i].transpose(0, 2, 1), Gc[j]) for i, j in self._PAIRS])

    def assemble(self, E, nu) -> sp.bsr_matrix:
        """Global stiffness (BSR, N/mm) for per-element E (MPa) and nu."""
        M, n = self.cells.shape
        E = np.broadcast_to(np.asarray(E, dtype=float), (M,))
        nu = np.broadcast_to(np.asarray(nu, dtype=float), (M,))
        lam, mu = elements.lame(E, nu)
        if self._hex_ref is not None:
            data = self._assemble_uniform(lam, mu)
        elif self.affine and n != 8:
            data = self._assemble_affine(lam, mu)
        else:
            data = np.zeros((self.pattern.nnz_blocks, 3, 3))
            self._assemble_curved(lam, mu, data)
        p = self.pattern
        return sp.bsr_matrix((data, p.indices, p.indptr), shape=(self.n_dofs, self.n_dofs))

    def assemble_reduced(self, E, nu, free: np.ndarray, fixed: np.ndarray):
        """``partition(self.assemble(E, nu).tocsr(), free, fixed, overwrite=True)`` in one pass.

        Straight-sided tet4/tet10 meshes with numba installed: the element stiffness is added
        straight into the arrays of ``K_ff``, ``K_fc`` and ``K_c`` (node rows split across the
        cores), with no full matrix, no component passes and no compaction. Otherwise (hex8,
        curved tet10, no numba) it is exactly the call above. Same matrices either way (entry
        for entry, up to round-off in the summation order). The index arrays of ``K_ff`` and
        ``K_c`` are shared with the cached structure: change their data only.
        """
        free = np.asarray(free)
        fixed = np.asarray(fixed)
        M, n = self.cells.shape
        if not (kernels.HAVE_NUMBA and self.affine and n in (4, 10) and self._hex_ref is None):
            return partition(self.assemble(E, nu).tocsr(), free, fixed, overwrite=True)
        E = np.broadcast_to(np.asarray(E, dtype=float), (M,))
        nu = np.broadcast_to(np.asarray(nu, dtype=float), (M,))
        lam, mu = elements.lame(E, nu)
        g, vol = self._barycentric_gradients()
        mp = self._reduced_maps(free, fixed)
        ff = np.zeros(mp["ff_ptr"][-1])
        fc = np.zeros(mp["fc_ptr"][-1])
        kc = np.zeros(mp["c_ptr"][-1])
        if self._terms is None:
            T = affine_product_tensor(n) if n == 10 else np.eye(16)
            self._terms = kernels.product_terms(T, n)
        inc_ptr, inc_e, inc_a = self._incidence()
        p = self.pattern
        kernels._assemble_reduced_affine(
            self.cells, g, vol, np.ascontiguousarray(lam), np.ascontiguousarray(mu), inc_ptr, inc_e, inc_a,
            p.block_of, p.indptr, *self._terms, mp["fmap"], mp["cmap"], mp["nfb"], mp["ncb"],
            mp["ff_ptr"], mp["off_ff"], mp["fc_ptr"], mp["off_fc"], mp["c_ptr"], ff, fc, kc,
            np.arange(p.n_nodes, dtype=np.int64))
        nf, nc = free.size, fixed.size
        K_ff = sp.csr_matrix((ff, mp["ff_idx"], mp["ff_ptr"]), shape=(nf, nf))
        K_ff.has_sorted_indices = True
        K_fc = sp.csr_matrix((fc[mp["fc_perm"]], mp["fc_idx"].copy(), mp["fc_ptr"].copy()), shape=(nf, nc))
        K_fc.has_sorted_indices = True
        K_c = sp.csr_matrix((kc, mp["c_idx"], mp["c_ptr"]), shape=(nc, self.n_dofs))
        K_c.has_sorted_indices = True
        return K_ff, K_fc, K_c

    def update_reduced(self, elems: np.ndarray, dE: np.ndarray, nu: np.ndarray, free: np.ndarray,
                       fixed: np.ndarray, K_ff: sp.csr_matrix, K_fc: sp.csr_matrix, K_c: sp.csr_matrix) -> bool:
        """Add the stiffness change of elements ``elems`` (moduli changed by ``dE``, MPa) in
        place into matrices returned by :meth:`assemble_reduced` for the same ``free``/``fixed``.

        One compiled pass over the rows of the changed elements' nodes (O(changed), no pass
        over all stored entries). Returns False, changing nothing, where
        :meth:`assemble_reduced` has no compiled path (the caller then updates otherwise).
        """
        M, n = self.cells.shape
        if not (kernels.HAVE_NUMBA and self.affine and n in (4, 10) and self._hex_ref is None):
            return False
        elems = np.asarray(elems, dtype=np.int64)
        if elems.size == 0:
            return True
        free = np.asarray(free)
        fixed = np.asarray(fixed)
        mp = self._reduced_maps(free, fixed)
        lam = np.zeros(M)
        mu = np.zeros(M)
        lam[elems], mu[elems] = elements.lame(np.asarray(dE, dtype=float), np.asarray(nu, dtype=float))
        g, vol = self._barycentric_gradients()
        if self._terms is None:
            T = affine_product_tensor(n) if n == 10 else np.eye(16)
            self._terms = kernels.product_terms(T, n)
        inc_ptr, inc_e, inc_a = self._incidence()
        rows = np.unique(self.cells[elems]).astype(np.int64)
        dfc = np.zeros(mp["fc_ptr"][-1])
        p = self.pattern
        kernels._assemble_reduced_affine(
            self.cells, g, vol, lam, mu, inc_ptr, inc_e, inc_a, p.block_of, p.indptr, *self._terms,
            mp["fmap"], mp["cmap"], mp["nfb"], mp["ncb"], mp["ff_ptr"], mp["off_ff"], mp["fc_ptr"],
            mp["off_fc"], mp["c_ptr"], K_ff.data, dfc, K_c.data, rows)
        K_fc.data += dfc[mp["fc_perm"]]
        return True

    def corner_matrix(self, E, nu, coarse_dofs: np.ndarray) -> sp.csr_matrix | None:
        """Stiffness (CSR, N/mm) of the tet4 mesh of the corner nodes of straight-sided tet10,
        same moduli ``E`` (MPa) and ``nu``, on the mesh unknowns ``coarse_dofs`` (of corner
        nodes, sorted; all other corner unknowns held). None for other meshes.

        It is the p-multigrid coarse operator without the Galerkin product ``P^T K P``
        (``P``: corner values interpolated linearly to the mid-edge nodes): a quadratic element
        holds linear fields exactly, so the two agree wherever every held mid-edge unknown has
        both its edge's ends held too, and differ only near the edges of a support patch.
        The corner mesh's pattern is built once and cached.
        """
        if not (self.affine and self.cells.shape[1] == 10 and kernels.HAVE_NUMBA):
            return None
        if self._corner is None:
            corners = np.unique(self.cells[:, :4])
            cidx = np.full(self.pattern.n_nodes, -1, dtype=np.int64)
            cidx[corners] = np.arange(corners.size)
            self._corner = (Assembler(self.points[corners], cidx[self.cells[:, :4]].astype(np.int32)), cidx)
        asm4, cidx = self._corner
        coarse_dofs = np.asarray(coarse_dofs, dtype=np.int64)
        free = 3 * cidx[coarse_dofs // 3] + coarse_dofs % 3
        if np.any(free < 0) or np.any(np.diff(free) <= 0):
            raise ValueError("corner_matrix needs sorted unknowns of corner nodes")
        fixed = np.setdiff1d(np.arange(asm4.n_dofs), free)
        return asm4.assemble_reduced(E, nu, free, fixed)[0]

    def _incidence(self):
        """Node -> (element, local node) incidence in CSR form (cached)."""
        if self._inc is None:
            self._inc = node_incidence(self.cells, self.pattern.n_nodes)
        return self._inc

    def _reduced_maps(self, free, fixed) -> dict:
        """Structure of ``K_ff``, ``K_fc``, ``K_c`` and where each node pair's 3x3 block lands
        in it (cached for the last constraint set)."""
        key = (free.size, fixed.size, hash(fixed.tobytes()))
        if self._maps is not None and self._maps[0] == key:
            return self._maps[1]
        p = self.pattern
        N = p.n_nodes
        fmap = np.full(3 * N, -1, dtype=np.int64)
        fmap[free] = np.arange(free.size)
        cmap = np.full(3 * N, -1, dtype=np.int64)
        cmap[fixed] = np.arange(fixed.size)
        isf = (fmap >= 0).astype(np.int8)
        isf3 = isf.reshape(N, 3)
        nfb = (np.cumsum(isf3, axis=1) - isf3).astype(np.int8)  # free components of b before j
        ncb = (np.arange(3)[None, :] - nfb).astype(np.int8)  # fixed components of b before j
        nnzb = p.nnz_blocks
        ptrs = [np.zeros(free.size + 1, dtype=np.int64), np.zeros(free.size + 1, dtype=np.int64),
                np.zeros(fixed.size + 1, dtype=np.int64)]
        off = [np.zeros(nnzb, dtype=np.int32), np.zeros(nnzb, dtype=np.int32)]
        dummy = np.zeros(0, dtype=np.int32)
        free64, fixed64 = free.astype(np.int64), fixed.astype(np.int64)
        kernels._reduced_rows(p.indptr, p.indices, isf, fmap, cmap, free64, fixed64, *ptrs, *off,
                              dummy, dummy, dummy, False)
        for q in ptrs:
            np.cumsum(q, out=q)
        it = np.int32 if max(ptrs[0][-1], ptrs[2][-1], 3 * N) < 2**31 - 1 else np.int64
        idx = [np.empty(q[-1], dtype=it) for q in ptrs]
        kernels._reduced_rows(p.indptr, p.indices, isf, fmap, cmap, free64, fixed64, *ptrs, *off,
                              *idx, True)
        ptrs = [q.astype(it) for q in ptrs]
        # K_fc's columns (fixed-unknown numbers) come out of order within a row: keep the
        # sorting permutation so that each assembly returns sorted K_fc without sorting again
        S = sp.csr_matrix((np.arange(idx[1].size, dtype=np.float64), idx[1], ptrs[1]),
                          shape=(free.size, fixed.size))
        S.sort_indices()
        fc_perm = S.data.astype(np.int64)
        idx[1] = S.indices
        out = {"fmap": fmap, "cmap": cmap, "nfb": nfb, "ncb": ncb, "ff_ptr": ptrs[0], "fc_ptr": ptrs[1],
               "c_ptr": ptrs[2], "off_ff": off[0], "off_fc": off[1], "ff_idx": idx[0], "fc_idx": idx[1], "fc_perm": fc_perm,
               "c_idx": idx[2]}
        self._maps = (key, out)
        return out

    def _assemble_affine(self, lam, mu) -> np.ndarray:
        M, n = self.cells.shape
        nb = self.pattern.nnz_blocks
        g, vol = self._barycentric_gradients()
        T = affine_product_tensor(n) if n == 10 else None
        vl, vm = (vol * lam)[:, None, None], (vol * mu)[:, None, None]
        idx = self.pattern.block_of.reshape(-1)
        # One (M, n^2) weight buffer reused for the nine components: a large model would
        # otherwise spend much of its assembly time faulting in fresh pages.
        W = np.empty((M, n * n))
        comp = np.empty((3, 3, nb))  # component-major: each bincount fills one contiguous row
        step = 20_000
        for i in range(3):
            for j in range(3):
                for a in range(0, M, step):
                    sl = slice(a, min(a + step, M))
                    gs = g[sl]
                    gi, gj = gs[:, :, i], gs[:, :, j]
                    C = vl[sl] * (gi[:, :, None] * gj[:, None, :]) + vm[sl] * (gj[:, :, None] * gi[:, None, :])
                    if i == j:
                        C += vm[sl] * np.matmul(gs, gs.transpose(0, 2, 1))  # mu V g_c . g_d
                    if T is None:
                        W[sl] = C.reshape(-1, 16)
                    else:
                        np.matmul(C.reshape(-1, 16), T, out=W[sl])
                comp[i, j] = np.bincount(idx, weights=W.reshape(-1), minlength=nb)
        return np.ascontiguousarray(comp.transpose(2, 0, 1))

    def _assemble_uniform(self, lam, mu) -> np.ndarray:
        """Regular hex8 grid: per component ``(i, j)`` the element blocks are
        ``lam_e K_lam[a i, b j] + mu_e K_mu[a i, b j]``, one outer product per component."""
        M, n = self.cells.shape
        nb = self.pattern.nnz_blocks
        k_lam, k_mu = (k.reshape(n, 3, n, 3) for k in self._hex_ref)
        idx = self.pattern.block_of.reshape(-1)
        comp = np.empty((3, 3, nb))
        W = np.empty((M, n * n))
        for i in range(3):
            for j in range(3):
                np.multiply(lam[:, None], k_lam[:, i, :, j].reshape(1, -1), out=W)
                W += mu[:, None] * k_mu[:, i, :, j].reshape(1, -1)
                comp[i, j] = np.bincount(idx, weights=W.reshape(-1), minlength=nb)
        return np.ascontiguousarray(comp.transpose(2, 0, 1))

    def _assemble_curved(self, lam, mu, data):
        M, n = self.cells.shape
        nb = self.pattern.nnz_blocks
        want_cache = self._Y is None and 6 * M * n * n * 8 <= self.cache_limit
        cached = []
        for sl in self._chunks(n * n):
            Y = self._Y[:, sl] if self._Y is not None else self._geometry(sl)
            if want_cache:
                cached.append(Y)
            idx = self.pattern.block_of[sl].ravel()
            lm, mm = lam[sl, None, None], mu[sl, None, None]
            trace = mm * (Y[0] + Y[1] + Y[2])
            for p, (i, j) in enumerate(self._PAIRS):
                Yt = Y[p].transpose(0, 2, 1)
                kij = lm * Y[p] + mm * Yt
                if i == j:
                    kij += trace
                else:
                    kji = lm * Yt + mm * Y[p]
                    data[:, j, i] += np.bincount(idx, weights=kji.ravel(), minlength=nb)
                data[:, i, j] += np.bincount(idx, weights=kij.ravel(), minlength=nb)
        if want_cache:
            self._Y = np.concatenate(cached, axis=1)

    def element_matrices(self, idx: np.ndarray, E, nu) -> np.ndarray:
        """Stiffness matrices (k, 3n, 3n) of elements ``idx`` for moduli ``E`` (MPa), ``nu``.

        Uses the cached geometric parts when available (``E`` may be an increment: the
        stiffness is linear in E for fixed nu).
        """
        idx = np.asarray(idx)
        lam, mu = elements.lame(np.asarray(E, dtype=float), np.asarray(nu, dtype=float))
        if self._hex_ref is not None:
            return lam[:, None, None] * self._hex_ref[0] + mu[:, None, None] * self._hex_ref[1]
        if self._parts is not None:
            k_lam, k_mu = self._parts[0][idx], self._parts[1][idx]
        else:
            G, wdet = elements.gradients(self.points, self.cells[idx])
            k_lam, k_mu = elements.stiffness_parts(G, wdet)
        return lam[:, None, None] * k_lam + mu[:, None, None] * k_mu


def _select(K: sp.csr_matrix, rows_keep: np.ndarray, keep: np.ndarray, local_cols: np.ndarray,
            n_cols: int) -> sp.csr_matrix:
    """Entries ``keep`` (mask over K's entries) of rows ``rows_keep``, columns renumbered."""
    # Count kept entries per row from whichever set is smaller (kept or dropped): boolean
    # masks (1 byte per entry) do the selection, and no large index arrays are allocated.
    indptr_full = K.indptr.astype(np.int64)
    n_keep = int(np.count_nonzero(keep))
    if 2 * n_keep > keep.size:
        rows = np.searchsorted(indptr_full, np.flatnonzero(~keep), side="right") - 1
        counts = np.diff(indptr_full) - np.bincount(rows, minlength=K.shape[0])
    else:
        rows = np.searchsorted(indptr_full, np.flatnonzero(keep), side="right") - 1
        counts = np.bincount(rows, minlength=K.shape[0])
    indptr = np.zeros(rows_keep.size + 1, dtype=local_cols.dtype)
    np.cumsum(counts[rows_keep], out=indptr[1:])
    return sp.csr_matrix((K.data[keep], local_cols, indptr), shape=(rows_keep.size, n_cols))


def partition(K: sp.csr_matrix, free: np.ndarray, fixed: np.ndarray, overwrite: bool = False,
              chunk: int = 4_000_000):
    """Split K into ``K_ff``, ``K_fc`` (free rows) and ``K_c`` (constrained rows, all columns).

    ``free`` (sorted) and ``fixed`` (any order: it orders the columns of ``K_fc`` and the rows
    of ``K_c``) are disjoint unknown sets covering ``0..n-1``. Column indices of the results
    are sorted. Several times faster than ``K[free][:, free]`` at 1e6 unknowns. With
    ``overwrite=True`` the arrays of ``K`` are compacted in place into ``K_ff`` (K is
    consumed): no second copy of the matrix is allocated, which on a large model is most of
    the cost (fresh memory pages).
    """
    n = K.shape[0]
    idx_t = np.int32 if max(n, K.nnz) < 2**31 - 1 else np.int64
    was_sorted = K.has_sorted_indices
    fmap = np.full(n, -1, dtype=idx_t)
    fmap[free] = np.arange(free.size, dtype=idx_t)
    cmap = np.full(n, -1, dtype=idx_t)
    cmap[fixed] = np.arange(fixed.size, dtype=idx_t)
    K_c = K[fixed]
    K_c.sort_indices()
    row_free = np.zeros(n, dtype=bool)
    row_free[free] = True
    entry_free = np.repeat(row_free, np.diff(K.indptr))
    fixed_col = cmap[K.indices] >= 0  # 1 byte per entry
    keep = fixed_col & entry_free
    K_fc = _select(K, free, keep, cmap[K.indices[keep]], fixed.size)
    K_fc.sort_indices()
    np.logical_not(fixed_col, out=keep)
    keep &= entry_free
    del fixed_col, entry_free
    if not overwrite:
        return _select(K, free, keep, fmap[K.indices[keep]], free.size), K_fc, K_c
    # In-place compaction, chunk by chunk: the write position never passes the read position.
    indptr_full = K.indptr.astype(np.int64)
    rows = np.searchsorted(indptr_full, np.flatnonzero(~keep), side="right") - 1
    counts = np.diff(indptr_full) - np.bincount(rows, minlength=n)
    data, indices = K.data, K.indices
    w = 0
    for a in range(0, keep.size, chunk):
        m = keep[a:a + chunk]
        vals = data[a:a + chunk][m]
        cols = fmap[indices[a:a + chunk][m]]
        data[w:w + vals.size] = vals
        indices[w:w + vals.size] = cols
        w += vals.size
    indptr = np.zeros(free.size + 1, dtype=idx_t)
    np.cumsum(counts[free], out=indptr[1:])
    K_ff = sp.csr_matrix((data[:w], indices[:w], indptr), shape=(free.size, free.size))
    K_ff.has_sorted_indices = was_sorted  # free is increasing: column order kept
    return K_ff, K_fc, K_c
