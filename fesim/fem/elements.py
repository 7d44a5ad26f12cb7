"""Isoparametric tetrahedra (tet4, tet10) and hexahedra (hex8) for isotropic linear elasticity.

Tetrahedra: node order (VTK, meshio and CalculiX C3D4/C3D10 agree): corners 0-3, then
mid-edge nodes on edges (0,1), (1,2), (2,0), (0,3), (1,3), (2,3). Reference coordinates
``xi`` with barycentric ``L = (1 - xi1 - xi2 - xi3, xi1, xi2, xi3)``.

Hexahedra: trilinear, VTK_HEXAHEDRON node order (= CalculiX C3D8 and FEBio hex8), reference
cube ``[-1, 1]^3`` with corner signs :data:`fesim.cells.HEX_CORNERS`; stiffness by
the 2 x 2 x 2 Gauss rule (full integration, as C3D8).

Element stiffness is built from shape-function gradients ``G[m, q, a, i] = dN_a/dx_i`` as

    K[a i, b j] = sum_q w_q |J_q| (lam G_ai G_bj + mu (G_aj G_bi + delta_ij G_ak G_bk))

with interleaved unknowns ``3 a + i``. The 4-point rule is exact for the tet10 stiffness of
straight-sided elements (integrand of degree 2); tet4 uses one point (constant gradients).
"""

from __future__ import annotations

import numpy as np

from ..errors import MeshError
from ..cells import HEX_CORNERS, TET10_EDGES as EDGES

# 4-point degree-2 rule on the reference tetrahedron (volume 1/6).
_A, _B = 0.5854101966249685, 0.1381966011250105
QUAD4 = (np.array([[_B, _B, _B], [_A, _B, _B], [_B, _A, _B], [_B, _B, _A]]), np.full(4, 1.0 / 24.0))
QUAD1 = (np.array([[0.25, 0.25, 0.25]]), np.array([1.0 / 6.0]))
# 2 x 2 x 2 Gauss rule on [-1, 1]^3 (volume 8), points in the corner order of HEX_CORNERS.
HEX_GAUSS = (HEX_CORNERS / np.sqrt(3.0), np.ones(8))


def _barycentric(xi):
    xi = np.atleast_2d(xi)
    return np.column_stack([1.0 - xi.sum(axis=1), xi])


def _hex_factors(xi):
    """Linear factors ``1 + s_a xi`` (Q, 8, 3) of the trilinear shape functions."""
    xi = np.atleast_2d(np.asarray(xi, dtype=float))
    return 1.0 + xi[:, None, :] * HEX_CORNERS[None]


def shape_values(n_nodes: int, xi) -> np.ndarray:
    """Shape functions (Q, n) at reference points ``xi`` (Q, 3)."""
    if n_nodes == 8:
        return _hex_factors(xi).prod(axis=2) / 8.0
    L = _barycentric(xi)
    if n_nodes == 4:
        return L
    corner = L * (2.0 * L - 1.0)
    edge = 4.0 * L[:, EDGES[:, 0]] * L[:, EDGES[:, 1]]
    return np.hstack([corner, edge])


def shape_ref_gradients(n_nodes: int, xi) -> np.ndarray:
    """Reference gradients dN/dxi (Q, n, 3) at points ``xi`` (Q, 3)."""
    if n_nodes == 8:
        f = _hex_factors(xi)
        s = HEX_CORNERS[None]
        return np.stack([s[..., 0] * f[..., 1] * f[..., 2], f[..., 0] * s[..., 1] * f[..., 2],
                         f[..., 0] * f[..., 1] * s[..., 2]], axis=2) / 8.0
    L = _barycentric(xi)
    dL = np.array([[-1.0, -1.0, -1.0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])  # dL_a/dxi
    Q = L.shape[0]
    if n_nodes == 4:
        return np.broadcast_to(dL, (Q, 4, 3)).copy()
    dN = np.empty((Q, 10, 3))
    dN[:, :4, :] = (4.0 * L - 1.0)[:, :, None] * dL[None]
    a, b = EDGES[:, 0], EDGES[:, 1]
    dN[:, 4:, :] = 4.0 * (L[:, a, None] * dL[None, b] + L[:, b, None] * dL[None, a])
    return dN


def quadrature(n_nodes: int):
    """Default stiffness quadrature (points, weights) for the element type."""
    if n_nodes == 8:
        return HEX_GAUSS
    return QUAD1 if n_nodes == 4 else QUAD4


def gradients(points: np.ndarray, cells: np.ndarray, xi=None):
    """Physical shape-function gradients and integration weights.

    Parameters
    ----------
    points : (N, 3) float64, mm
    cells : (M, 4), (M, 10) or (M, 8) int
    xi : (Q, 3) reference points; defaults to the stiffness rule.

    Returns
    -------
    G : (M, Q, n, 3) dN/dx in 1/mm
    wdet : (M, Q) quadrature weight times |J| in mm^3 (zeros if ``xi`` is given without weights)

    Raises
    ------
    MeshError
        If any element has a non-positive Jacobian (inverted or degenerate).
    """
    n = cells.shape[1]
    if xi is None:
        xi, w = quadrature(n)
    else:
        w = np.zeros(len(xi))
    dN = shape_ref_gradients(n, xi)  # (Q, n, 3)
    X = points[cells]  # (M, n, 3)
    J = np.matmul(X.transpose(0, 2, 1)[:, None], dN[None])  # (M, Q, 3, 3): J[k, j] = dx_k / dxi_j
    det = np.linalg.det(J)
    if np.any(det <= 0):
        bad = np.unique(np.nonzero(det <= 0)[0])
        raise MeshError(f"{bad.size} element(s) have non-positive Jacobian (first: {bad[:5].tolist()})")
    Jinv = np.linalg.inv(J)  # dxi_j / dx_k
    G = np.matmul(dN[None], Jinv)  # (M, Q, n, 3)
    return G, det * w[None, :]


def lame(E, nu):
    """Lamé parameters (MPa) from Young's modulus E (MPa) and Poisson's ratio."""
    E = np.asarray(E, dtype=float)
    nu = np.asarray(nu, dtype=float)
    lam = E * nu / ((1.0 + nu) * (1.0 - 2.0 * nu))
    mu = E / (2.0 * (1.0 + nu))
    return lam, mu


def stiffness_parts(G: np.ndarray, wdet: np.ndarray):
    """Geometry-only stiffness parts ``K_lam`` and ``K_mu`` (M, 3n, 3n) so ``K = lam K_lam + mu K_mu``."""
    M, Q, n, _ = G.shape
    g = G.reshape(M, Q, 3 * n)
    # one batched matmul (BLAS) gives K_lam[ai, bj] = sum_q w G_ai G_bj; K_mu is its
    # per-block transpose plus the isotropic term delta_ij sum_k G_ak G_bk.
    k_lam = np.matmul((g * wdet[:, :, None]).transpose(0, 2, 1), g)
    blk = k_lam.reshape(M, n, 3, n, 3)
    k_mu = np.ascontiguousarray(blk.transpose(0, 1, 4, 3, 2))
    dot = np.einsum("maibi->mab", blk)
    idx = np.arange(3)
    k_mu[:, :, idx, :, idx] += dot[None, :, :, :]
    return k_lam, k_mu.reshape(M, 3 * n, 3 * n)


def element_stiffness(points, cells, E, nu) -> np.ndarray:
    """Element stiffness matrices (M, 3n, 3n) in N/mm for per-element E (MPa) and nu."""
    G, wdet = gradients(points, cells)
    k_lam, k_mu = stiffness_parts(G, wdet)
    lam, mu = lame(np.broadcast_to(E, (cells.shape[0],)), np.broadcast_to(nu, (cells.shape[0],)))
    k_lam *= lam[:, None, None]
    k_mu *= mu[:, None, None]
    k_lam += k_mu
    return k_lam


def element_volumes(points, cells) -> np.ndarray:
    """Element volumes (M,) in mm^3 (exact for straight or curved tet10 up to quadrature)."""
    G, wdet = gradients(points, cells)
    return wdet.sum(axis=1)


def barycentric_gradients(points, cells):
    """Gradients (M, 4, 3) of the barycentric coordinates L_0..L_3, 1/mm, and volumes (M,), mm^3,
    of the corner tetrahedra (exact for straight-sided tet4 and tet10).

    Raises
    ------
    MeshError
        If any element has a non-positive volume (inverted or degenerate).
    """
    X = points[cells[:, :4]]
    J = (X[:, 1:] - X[:, :1]).transpose(0, 2, 1)  # columns x_c - x_0
    det = np.linalg.det(J)
    if np.any(det <= 0):
        bad = np.unique(np.nonzero(det <= 0)[0])
        raise MeshError(f"{bad.size} element(s) have non-positive Jacobian (first: {bad[:5].tolist()})")
    Ji = np.linalg.inv(J)  # rows: grad L_1..L_3
    return np.concatenate([-Ji.sum(axis=1, keepdims=True), Ji], axis=1), det / 6.0


def voigt_strain(H: np.ndarray) -> np.ndarray:
    """Small strains (..., 6), Voigt order xx, yy, zz, yz, xz, xy (engineering shear), from
    displacement gradients ``H[..., i, j] = du_i/dx_j``."""
    eps = np.empty(H.shape[:-2] + (6,))
    eps[..., 0] = H[..., 0, 0]
    eps[..., 1] = H[..., 1, 1]
    eps[..., 2] = H[..., 2, 2]
    eps[..., 3] = H[..., 1, 2] + H[..., 2, 1]
    eps[..., 4] = H[..., 0, 2] + H[..., 2, 0]
    eps[..., 5] = H[..., 0, 1] + H[..., 1, 0]
    return eps


def strains_at(points, cells, u, xi) -> np.ndarray:
    """Small strains (M, Q, 6) in Voigt order xx, yy, zz, yz, xz, xy (engineering shear).

    ``u`` is the nodal displacement array (N, 3) in mm; ``xi`` the reference points (Q, 3).
    """
    G, _ = gradients(points, cells, xi)
    return voigt_strain(np.einsum("mai,mqaj->mqij", u[cells], G))  # du_i/dx_j


def hex_affine_gradients(points, cells):
    """Element means of grad N_a (M, 8, 3), 1/mm, and volumes (M,), mm^3, of parallelepiped
    hex8 elements (affine map ``x = x_c + J xi``).

    With a constant Jacobian ``J = sum_a x_a (x) s_a / 8`` the mean of ``dN_a/dxi`` over the
    reference cube is ``s_a / 8`` (the other two factors average to 1), so the mean
    gradient is ``J^-T s_a / 8`` and the volume ``8 det J``.
    """
    X = points[cells]
    J = np.einsum("mai,aj->mij", X, HEX_CORNERS) / 8.0
    det = np.linalg.det(J)
    if np.any(det <= 0):
        bad = np.unique(np.nonzero(det <= 0)[0])
        raise MeshError(f"{bad.size} element(s) have non-positive Jacobian (first: {bad[:5].tolist()})")
    Ji = np.linalg.inv(J)  # dxi_j / dx_k
    return np.einsum("aj,mjk->mak", HEX_CORNERS, Ji) / 8.0, 8.0 * det


def mean_strains(points, cells, u) -> np.ndarray:
    """Volume averages (M, 6) of the strain over each element by its stiffness quadrature
    (``sum_q w_q |J_q| eps_q / sum_q w_q |J_q|``), Voigt, engineering shear. Any element type."""
    G, wdet = gradients(points, cells)
    Gm = np.einsum("mq,mqaj->maj", wdet / wdet.sum(axis=1, keepdims=True), G)
    return voigt_strain(np.einsum("mai,maj->mij", u[cells], Gm))


def mean_strains_affine(points, cells, u) -> np.ndarray:
    """Element mean strains (M, 6) of straight-sided tet4/tet10, or parallelepiped hex8,
    Voigt, engineering shear.

    With barycentric gradients ``g_c`` the mean of grad N over the element is ``g_a`` for a
    tet4 vertex, 0 for a tet10 vertex (N = L(2L - 1)) and ``g_a + g_b`` for the tet10 node on
    edge (a, b) (N = 4 L_a L_b): the volume-weighted mean of the integration points without
    evaluating them.
    """
    if cells.shape[1] == 8:
        g, _ = hex_affine_gradients(points, cells)
        return voigt_strain(np.einsum("mai,maj->mij", u[cells], g))
    g, _ = barycentric_gradients(points, cells)
    if cells.shape[1] == 4:
        H = np.einsum("mai,maj->mij", u[cells], g)
    else:
        H = np.einsum("mki,mkj->mij", u[cells[:, 4:]], g[:, EDGES[:, 0]] + g[:, EDGES[:, 1]])
    return voigt_strain(H)


def stress_from_strain(eps: np.ndarray, E, nu) -> np.ndarray:
    """Isotropic Hooke's law in Voigt form; ``E``/``nu`` broadcast against ``eps[..., 0]``."""
    lam, mu = lame(E, nu)
    tr = eps[..., 0] + eps[..., 1] + eps[..., 2]
    sig = np.empty_like(eps)
    for c in range(3):
        sig[..., c] = lam * tr + 2.0 * mu * eps[..., c]
    for c in range(3, 6):
        sig[..., c] = mu * eps[..., c]
    return sig
