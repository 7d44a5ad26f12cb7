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

from . import elements

#: Elements per chunk during assembly: bounds temporary memory (tet10: ~14 kB per element).
CHUNK = 40_000


@dataclass
class SparsityPattern:
    """Node-pair block pattern of a mesh (CSR of 3x3 blocks)."""

    n_nodes: int
    indptr: np.ndarray  # (n_nodes + 1,) int64
    indices: np.ndarray  # (nnzb,) int32 block columns
    block_of: np.ndarray  # (M, n, n) int64: block index of element pair (a, b)

    @property
    def nnz_blocks(self) -> int:
        return self.indices.size

    @classmethod
    def from_cells(cls, cells: np.ndarray, n_nodes: int) -> "SparsityPattern":
        cells = np.asarray(cells, dtype=np.int64)
        M, n = cells.shape
        rows = np.repeat(cells, n, axis=1).ravel()
        cols = np.tile(cells, (1, n)).ravel()
        K = rows.size
        # Sort the M n^2 (row, col) pairs by two stable counting sorts (LSD radix on node ids):
        # scipy's CSR->CSC conversion of a one-entry-per-row matrix is exactly a stable
        # counting sort of its column ids, O(K + n_nodes) in C++, against O(K log K) for
        # np.unique.
        ptr = np.arange(K + 1)
        perm = sp.csr_matrix((np.arange(K), cols, ptr), shape=(K, n_nodes)).tocsc().data
        perm = sp.csr_matrix((perm, rows[perm], ptr), shape=(K, n_nodes)).tocsc().data
        del ptr
        r, c = rows[perm], cols[perm]
        del rows, cols
        new = np.empty(K, dtype=bool)
        new[0] = True
        np.not_equal(r[1:], r[:-1], out=new[1:])
        new[1:] |= c[1:] != c[:-1]
        block_of = np.empty(K, dtype=np.int64)
        block_of[perm] = np.cumsum(new) - 1
        indptr = np.zeros(n_nodes + 1, dtype=np.int64)
        np.cumsum(np.bincount(r[new], minlength=n_nodes), out=indptr[1:])
        indices = c[new].astype(np.int32)
        return cls(n_nodes, indptr, indices, block_of.reshape(M, n, n))


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


class Assembler:
    """Assembles K for one mesh; caches the pattern and (if small enough) element geometry.

    Assembly works one stiffness component ``(i, j)`` at a time: with the geometric products
    ``Y_ij[a, b] = sum_q w_q |J_q| G_qai G_qbj`` (six for i <= j, the rest by symmetry) the
    element blocks are ``K_ij[a, b] = lam Y_ij[a, b] + mu Y_ij[b, a] + delta_ij mu tr Y[a, b]``,
    so each component is one contiguous weight array for one ``bincount``; no (3n x 3n)
    element matrices or transposed copies are formed.

    Parameters
    ----------
    points, cells : mesh arrays (mm)
    cache_limit_bytes : the products ``Y`` (6 n^2 float64 per element) are kept for fast
        re-assembly with new moduli when they fit in this budget; otherwise recomputed.
    """

    _PAIRS = [(0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)]

    def __init__(self, points, cells, cache_limit_bytes: float = 5e8):
        self.points = np.asarray(points, dtype=float)
        self.cells = np.asarray(cells)
        self.pattern = SparsityPattern.from_cells(self.cells, len(self.points))
        self.cache_limit = cache_limit_bytes
        self._parts = None  # (K_lam, K_mu) per element, filled only by element_matrices callers
        self._Y = None

    @property
    def n_dofs(self) -> int:
        return 3 * self.pattern.n_nodes

    def _chunks(self):
        M, n = self.cells.shape
        step = max(1, int(25e6 // (n * n)))  # about 200 MB per component array
        for start in range(0, M, step):
            yield slice(start, min(start + step, M))

    def _geometry(self, sl) -> np.ndarray:
        """Products ``Y`` (6, m, n, n) of elements ``sl`` in the order of ``_PAIRS``."""
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
        nb = self.pattern.nnz_blocks
        data = np.zeros((nb, 3, 3))
        want_cache = self._Y is None and 6 * M * n * n * 8 <= self.cache_limit
        cached = []
        for sl in self._chunks():
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
        p = self.pattern
        return sp.bsr_matrix((data, p.indices, p.indptr), shape=(self.n_dofs, self.n_dofs))

    def element_matrices(self, idx: np.ndarray, E, nu) -> np.ndarray:
        """Stiffness matrices (k, 3n, 3n) of elements ``idx`` for moduli ``E`` (MPa), ``nu``.

        Uses the cached geometric parts when available (``E`` may be an increment: the
        stiffness is linear in E for fixed nu).
        """
        idx = np.asarray(idx)
        lam, mu = elements.lame(np.asarray(E, dtype=float), np.asarray(nu, dtype=float))
        if self._parts is not None:
            k_lam, k_mu = self._parts[0][idx], self._parts[1][idx]
        else:
            G, wdet = elements.gradients(self.points, self.cells[idx])
            k_lam, k_mu = elements.stiffness_parts(G, wdet)
        return lam[:, None, None] * k_lam + mu[:, None, None] * k_mu
