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
        key = rows * n_nodes + cols
        uniq, inverse = np.unique(key, return_inverse=True)
        r = uniq // n_nodes
        indptr = np.zeros(n_nodes + 1, dtype=np.int64)
        np.cumsum(np.bincount(r, minlength=n_nodes), out=indptr[1:])
        indices = (uniq % n_nodes).astype(np.int32)
        return cls(n_nodes, indptr, indices, inverse.reshape(M, n, n))


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
    """Assembles K for one mesh; caches the pattern and (if small enough) element matrices.

    Parameters
    ----------
    points, cells : mesh arrays (mm)
    cache_limit_bytes : element matrices are kept for fast re-assembly with scaled moduli
        when they fit in this budget; otherwise they are recomputed.
    """

    def __init__(self, points, cells, cache_limit_bytes: float = 2e9):
        self.points = np.asarray(points, dtype=float)
        self.cells = np.asarray(cells)
        self.pattern = SparsityPattern.from_cells(self.cells, len(self.points))
        self.cache_limit = cache_limit_bytes
        self._parts = None  # (K_lam, K_mu) per element, geometry only

    @property
    def n_dofs(self) -> int:
        return 3 * self.pattern.n_nodes

    def _chunks(self):
        M = self.cells.shape[0]
        for start in range(0, M, CHUNK):
            yield slice(start, min(start + CHUNK, M))

    def _element_parts(self, sl):
        G, wdet = elements.gradients(self.points, self.cells[sl])
        return elements.stiffness_parts(G, wdet)

    def assemble(self, E, nu) -> sp.bsr_matrix:
        """Global stiffness (BSR, N/mm) for per-element E (MPa) and nu."""
        M, n = self.cells.shape
        E = np.broadcast_to(np.asarray(E, dtype=float), (M,))
        nu = np.broadcast_to(np.asarray(nu, dtype=float), (M,))
        lam, mu = elements.lame(E, nu)
        data = np.zeros((self.pattern.nnz_blocks, 3, 3))
        want_cache = self._parts is None and 2 * M * (3 * n) ** 2 * 8 <= self.cache_limit
        cached = [] if want_cache else None
        for i, sl in enumerate(self._chunks()):
            if self._parts is not None:
                k_lam, k_mu = self._parts[0][sl], self._parts[1][sl]
            else:
                k_lam, k_mu = self._element_parts(sl)
                if cached is not None:
                    cached.append((k_lam, k_mu))
            Ke = np.multiply(k_lam, lam[sl, None, None], out=None if cached is not None or self._parts is not None else k_lam)
            Ke += mu[sl, None, None] * k_mu
            assemble_blocks(self.pattern, Ke, sl=sl, out=data)
        if cached is not None:
            self._parts = (np.concatenate([c[0] for c in cached]), np.concatenate([c[1] for c in cached]))
        p = self.pattern
        return sp.bsr_matrix((data, p.indices, p.indptr), shape=(self.n_dofs, self.n_dofs))
