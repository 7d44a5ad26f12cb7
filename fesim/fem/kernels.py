"""Compiled kernels (numba, a core dependency) of the linear core.

Everything here has a numpy/scipy equivalent that fesim uses when numba cannot be imported
or ``FESIM_NO_NUMBA=1`` (:data:`HAVE_NUMBA` is False); the kernels only change speed, never results beyond
round-off. Threaded kernels split rows across the cores (``numba.prange``): assembly, the
in-place stiffness update and the failure measure. The threaded sparse matrix-vector product
is opt-in (:data:`THREADED_SPMV`): scipy's single-threaded one was faster on the 2-core VM
fesim is benchmarked on.
"""

from __future__ import annotations

import os

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

try:
    if os.environ.get("FESIM_NO_NUMBA") == "1":
        raise ImportError("disabled by FESIM_NO_NUMBA=1")
    import numba
    from numba import njit, prange

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised when numba is absent
    HAVE_NUMBA = False

#: Rows per parallel chunk of the threaded products (balances the two cores, keeps chunks in cache).
_ROWS_PER_CHUNK = 4096

#: Threaded sparse products are opt-in (``FESIM_THREADED_SPMV=1``). The products are bound by
#: the core's arithmetic on gathered entries, not by memory, and this VM's two cores add
#: little: with one BLAS thread (:mod:`fesim.fem.threads`) the 0.32 M-unknown p-multigrid CG
#: took 4.1 s threaded against 4.5 s with scipy's single-threaded product (40 % more CPU
#: time), and under load, e.g. two study workers on two cores, each product waits for the
#: slower thread. (Before the BLAS limit, OpenBLAS's spinning threads made them slower still.)
THREADED_SPMV = os.environ.get("FESIM_THREADED_SPMV") == "1"

if HAVE_NUMBA:
    @njit(parallel=True, cache=True, fastmath=False)
    def _csr_matvec(indptr, indices, data, x, y):
        n = y.size
        nchunk = (n + _ROWS_PER_CHUNK - 1) // _ROWS_PER_CHUNK
        for c in prange(nchunk):
            r1 = min(n, (c + 1) * _ROWS_PER_CHUNK)
            for r in range(c * _ROWS_PER_CHUNK, r1):
                acc = 0.0
                for k in range(indptr[r], indptr[r + 1]):
                    acc += data[k] * x[indices[k]]
                y[r] = acc


def n_threads() -> int:
    """Threads the compiled kernels use (1 without numba)."""
    return numba.get_num_threads() if HAVE_NUMBA else 1


class ThreadedCSR(spla.LinearOperator):
    """A CSR matrix whose product with a vector runs on all cores (numba, with
    :data:`THREADED_SPMV`), else scipy's.

    Accumulates in float64 for float64 data and in float32 for float32 data, as scipy does.
    """

    def __init__(self, A: sp.csr_matrix):
        A = A if sp.isspmatrix_csr(A) else A.tocsr()
        super().__init__(A.dtype, A.shape)
        self.A = A

    def _matvec(self, x):
        A = self.A
        x = np.ravel(x)
        if not (HAVE_NUMBA and THREADED_SPMV):
            return A @ x
        x = np.ascontiguousarray(x, dtype=np.result_type(A.dtype, x.dtype))
        y = np.empty(A.shape[0], dtype=x.dtype)
        _csr_matvec(A.indptr, A.indices, A.data, x, y)
        return y

    def _rmatvec(self, x):  # symmetric use only
        return self._matvec(x)

    def diagonal(self):
        return self.A.diagonal()


def product_terms(T: np.ndarray, n: int):
    """Sparse form of the affine product tensor ``T`` (16, n*n) of :func:`affine_product_tensor`.

    Returns ``sup`` (n, 2) and ``nsup`` (n,): the barycentric indices ``c`` with
    ``dN_a/dL_c != 0`` (one for a corner, two for a mid-edge node), and per node pair
    ``(a, b)`` up to four terms ``(k, d, t)``: ``K_ij[a, b] = sum t C_ij[sup[a, k], d]``.
    """
    T4 = T.reshape(4, 4, n, n)
    sup = np.zeros((n, 2), dtype=np.int64)
    nsup = np.zeros(n, dtype=np.int64)
    for a in range(n):
        cs = np.flatnonzero(np.abs(T4[:, :, a, a]).sum(axis=1) > 0)
        nsup[a] = cs.size
        sup[a, :cs.size] = cs
    tk = np.zeros((n, n, 4), dtype=np.int64)
    td = np.zeros((n, n, 4), dtype=np.int64)
    tv = np.zeros((n, n, 4))
    tn = np.zeros((n, n), dtype=np.int64)
    for a in range(n):
        for b in range(n):
            m = 0
            for k in range(nsup[a]):
                for d in range(4):
                    t = T4[sup[a, k], d, a, b]
                    if t != 0.0:
                        tk[a, b, m], td[a, b, m], tv[a, b, m] = k, d, t
                        m += 1
            tn[a, b] = m
    return sup, nsup, tk, td, tv, tn


if HAVE_NUMBA:
    @njit(parallel=True, cache=True)
    def _assemble_reduced_affine(cells, g, vol, lam, mu, inc_ptr, inc_e, inc_a, block_of, bindptr,
                                 sup, nsup, tk, td, tv, tn, fmap, cmap, nfb, ncb,
                                 ff_ptr, off_ff, fc_ptr, off_fc, c_ptr, ff, fc, kc, rows):
        """Stiffness of straight-sided elements added straight into the reduced CSR arrays.

        Only the rows of nodes ``rows`` are written, and elements with ``lam = mu = 0`` are
        skipped: with moduli *increments* and the nodes of the changed elements this is an
        in-place update. Node rows are split across threads (prange): every entry of node
        ``a``'s three rows is written by the thread owning ``a``, so there are no write conflicts.
        """
        n_rows = rows.size
        n = cells.shape[1]
        nchunk = (n_rows + 255) // 256
        for ch in prange(nchunk):
            C = np.empty((2, 4, 3, 3))
            blk = np.empty((3, 3))
            for ia in range(ch * 256, min(n_rows, (ch + 1) * 256)):
                a = rows[ia]
                for p in range(inc_ptr[a], inc_ptr[a + 1]):
                    e = inc_e[p]
                    la = inc_a[p]
                    V, l_e, m_e = vol[e], lam[e], mu[e]
                    if l_e == 0.0 and m_e == 0.0:
                        continue
                    for k in range(nsup[la]):
                        c = sup[la, k]
                        for d in range(4):
                            dot = g[e, c, 0] * g[e, d, 0] + g[e, c, 1] * g[e, d, 1] + g[e, c, 2] * g[e, d, 2]
                            for i in range(3):
                                for j in range(3):
                                    v = l_e * g[e, c, i] * g[e, d, j] + m_e * g[e, c, j] * g[e, d, i]
                                    if i == j:
                                        v += m_e * dot
                                    C[k, d, i, j] = V * v
                    for lb in range(n):
                        for i in range(3):
                            for j in range(3):
                                blk[i, j] = 0.0
                        for m in range(tn[la, lb]):
                            k, d, t = tk[la, lb, m], td[la, lb, m], tv[la, lb, m]
                            for i in range(3):
                                for j in range(3):
                                    blk[i, j] += t * C[k, d, i, j]
                        kb = block_of[e, la, lb]
                        b = cells[e, lb]
                        for i in range(3):
                            r = 3 * a + i
                            fr = fmap[r]
                            if fr >= 0:
                                base_ff = ff_ptr[fr] + off_ff[kb]
                                base_fc = fc_ptr[fr] + off_fc[kb]
                                for j in range(3):
                                    if fmap[3 * b + j] >= 0:
                                        ff[base_ff + nfb[b, j]] += blk[i, j]
                                    else:
                                        fc[base_fc + ncb[b, j]] += blk[i, j]
                            else:
                                base = c_ptr[cmap[r]] + 3 * (kb - bindptr[a])
                                for j in range(3):
                                    kc[base + j] += blk[i, j]


if HAVE_NUMBA:
    @njit(parallel=True, cache=True)
    def _pattern_rows(cells, inc_ptr, inc_e, nchunk, indptr, indices, block_of, fill):
        """Node-pair pattern from the node -> element incidence; ``fill=False`` counts the row
        lengths into ``indptr[1:]``, ``fill=True`` writes sorted ``indices`` and ``block_of``."""
        n_nodes = inc_ptr.size - 1
        n = cells.shape[1]
        step = (n_nodes + nchunk - 1) // nchunk
        for ch in prange(nchunk):
            mark = np.full(n_nodes, -1, dtype=np.int64)
            row = np.empty(64 * n, dtype=np.int64)
            for a in range(ch * step, min(n_nodes, (ch + 1) * step)):
                m = 0
                for p in range(inc_ptr[a], inc_ptr[a + 1]):
                    e = inc_e[p]
                    for lb in range(n):
                        b = cells[e, lb]
                        if mark[b] != a:
                            mark[b] = a
                            if m == row.size:
                                bigger = np.empty(2 * row.size, dtype=np.int64)
                                bigger[:m] = row[:m]
                                row = bigger
                            row[m] = b
                            m += 1
                if not fill:
                    indptr[a + 1] = m
                    continue
                r = np.sort(row[:m])
                s = indptr[a]
                for k in range(m):
                    indices[s + k] = r[k]
                    mark[r[k]] = -2 - k  # position of column r[k] in the row
                for p in range(inc_ptr[a], inc_ptr[a + 1]):
                    e = inc_e[p]
                    la = -1
                    for q in range(n):
                        if cells[e, q] == a:
                            la = q
                    for lb in range(n):
                        block_of[e, la, lb] = s + (-2 - mark[cells[e, lb]])
                for k in range(m):
                    mark[r[k]] = a

    @njit(parallel=True, cache=True)
    def _reduced_rows(bindptr, bindices, isf, fmap, cmap, free, fixed, ff_ptr, fc_ptr, c_ptr,
                      off_ff, off_fc, ff_idx, fc_idx, c_idx, fill):
        """Row pointers (``fill=False``: row lengths into ``*_ptr[1:]``) or column indices and
        block offsets (``fill=True``) of ``K_ff``, ``K_fc`` and ``K_c``."""
        nf = free.size
        for r in prange(nf):
            dof = free[r]
            a = dof // 3
            mf = 0
            mc = 0
            first = 0  # the node's first free row writes the block offsets (same for all its rows)
            while not isf[3 * a + first]:
                first += 1
            own = fill and dof % 3 == first
            for kb in range(bindptr[a], bindptr[a + 1]):
                b = bindices[kb]
                if own:
                    off_ff[kb] = mf
                    off_fc[kb] = mc
                for j in range(3):
                    if isf[3 * b + j]:
                        if fill:
                            ff_idx[ff_ptr[r] + mf] = fmap[3 * b + j]
                        mf += 1
                    else:
                        if fill:
                            fc_idx[fc_ptr[r] + mc] = cmap[3 * b + j]
                        mc += 1
            if not fill:
                ff_ptr[r + 1] = mf
                fc_ptr[r + 1] = mc
        for r in prange(fixed.size):
            a = fixed[r] // 3
            if not fill:
                c_ptr[r + 1] = 3 * (bindptr[a + 1] - bindptr[a])
                continue
            s = c_ptr[r]
            for kb in range(bindptr[a], bindptr[a + 1]):
                for j in range(3):
                    c_idx[s + 3 * (kb - bindptr[a]) + j] = 3 * bindices[kb] + j


if HAVE_NUMBA:
    @njit(parallel=True, cache=True)
    def _strain_ratio_affine(cells, g, edges, u, lam, mu, eps_c, eps_t, r, sed):
        """Principal-strain ratio ``max(-eps_min / eps_c, eps_max / eps_t, 0)`` and strain-energy
        density of each straight-sided tet4/tet10 from its mean strain (as
        :func:`fesim.fem.elements.mean_strains_affine`); eigenvalues in closed form."""
        M = cells.shape[0]
        quad = cells.shape[1] == 10
        for e in prange(M):
            H = np.zeros((3, 3))
            if quad:
                for k in range(6):
                    node = cells[e, 4 + k]
                    a, b = edges[k, 0], edges[k, 1]
                    for i in range(3):
                        ui = u[node, i]
                        for j in range(3):
                            H[i, j] += ui * (g[e, a, j] + g[e, b, j])
            else:
                for k in range(4):
                    node = cells[e, k]
                    for i in range(3):
                        ui = u[node, i]
                        for j in range(3):
                            H[i, j] += ui * g[e, k, j]
            e00, e11, e22 = H[0, 0], H[1, 1], H[2, 2]
            e01 = 0.5 * (H[0, 1] + H[1, 0])
            e02 = 0.5 * (H[0, 2] + H[2, 0])
            e12 = 0.5 * (H[1, 2] + H[2, 1])
            tr = e00 + e11 + e22
            ee = e00 * e00 + e11 * e11 + e22 * e22 + 2.0 * (e01 * e01 + e02 * e02 + e12 * e12)
            sed[e] = 0.5 * (lam[e] * tr * tr + 2.0 * mu[e] * ee)
            # eigenvalues of a symmetric 3x3 matrix (trigonometric form)
            p1 = e01 * e01 + e02 * e02 + e12 * e12
            q = tr / 3.0
            d0, d1, d2 = e00 - q, e11 - q, e22 - q
            p2 = d0 * d0 + d1 * d1 + d2 * d2 + 2.0 * p1
            if p2 <= 1e-300:
                lo = hi = q
            else:
                p = np.sqrt(p2 / 6.0)
                b00, b11, b22 = d0 / p, d1 / p, d2 / p
                b01, b02, b12 = e01 / p, e02 / p, e12 / p
                detb = (b00 * (b11 * b22 - b12 * b12) - b01 * (b01 * b22 - b12 * b02)
                        + b02 * (b01 * b12 - b11 * b02))
                hr = 0.5 * detb
                if hr <= -1.0:
                    phi = np.pi / 3.0
                elif hr >= 1.0:
                    phi = 0.0
                else:
                    phi = np.arccos(hr) / 3.0
                hi = q + 2.0 * p * np.cos(phi)
                lo = q + 2.0 * p * np.cos(phi + 2.0 * np.pi / 3.0)
            v = max(-lo / eps_c[e], hi / eps_t[e])
            r[e] = v if v > 0.0 else 0.0


def diagonal_positions(A: sp.csr_matrix) -> np.ndarray:
    """Index into ``A.data`` of each row's diagonal entry (a CSR matrix with sorted column
    indices and every diagonal entry stored, as assembled stiffness matrices are), so that
    the diagonal of a matrix of the same pattern is ``A.data[pos]``: a gather of n values,
    where ``A.diagonal()`` scans every entry again. Raises ValueError when one is missing."""
    n = A.shape[0]
    if HAVE_NUMBA:
        pos = _diagonal_positions(A.indptr, A.indices, n)
    else:
        rows = np.repeat(np.arange(n, dtype=A.indices.dtype), np.diff(A.indptr))
        hit = np.nonzero(A.indices == rows)[0]
        pos = np.full(n, -1, dtype=np.int64)
        pos[rows[hit]] = hit
    if n and pos.min() < 0:
        raise ValueError("matrix has rows without a stored diagonal entry")
    return pos


if HAVE_NUMBA:
    @njit(cache=True)
    def _diagonal_positions(indptr, indices, n):
        pos = np.full(n, -1, dtype=np.int64)
        for r in range(n):
            lo, hi = indptr[r], indptr[r + 1]
            while lo < hi:  # binary search of column r in the sorted row
                mid = (lo + hi) // 2
                if indices[mid] < r:
                    lo = mid + 1
                else:
                    hi = mid
            if lo < indptr[r + 1] and indices[lo] == r:
                pos[r] = lo
        return pos
