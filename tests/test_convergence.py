"""Mesh convergence against an exact solution: Lamé thick-walled cylinder, plane strain.

A quarter ring a <= r <= b, 0 <= theta <= pi/2, 0 <= z <= H under internal pressure p with
u_z = 0 has u_r = A r + B / r, A = p a^2 (1+nu)(1-2nu) / (E (b^2-a^2)),
B = p a^2 b^2 (1+nu) / (E (b^2-a^2)). The exact field is prescribed on the whole boundary
(Dirichlet problem on the polyhedral mesh domain; the field is smooth and in equilibrium
there), so errors come from the interior approximation only.

Theory for smooth solutions: L2 displacement error O(h^(p+1)), energy (strain) error O(h^p).
Observed rates (finest pair) are asserted within 0.2 of theory: measured deviations are
below 0.05 (tet4 L2 2.004/2.001, energy 0.997/0.999; tet10 L2 2.995/3.000, energy 1.995/1.998),
the margin covers pre-asymptotic terms on the coarse levels affordable in < 60 s while a
wrong element (e.g. a lost quadrature point or mid-node) drops a rate by >= 0.5.
"""

import numpy as np
import pytest

from fesim.fem import elements
from fesim.fem.model import Model, solve_static
from fesim.mesh.tetmesh import TetMesh, box_mesh, to_quadratic

A_IN, B_OUT, H, E, NU, P = 5.0, 10.0, 2.5, 1000.0, 0.3, 10.0


def _exact(x):
    r = np.hypot(x[..., 0], x[..., 1])
    k = P * A_IN**2 * (1 + NU) / (E * (B_OUT**2 - A_IN**2))
    cA, cB = k * (1 - 2 * NU), k * B_OUT**2
    ur = cA * r + cB / r
    u = np.stack([ur * x[..., 0] / r, ur * x[..., 1] / r, np.zeros_like(r)], axis=-1)
    # strain: eps_rr = A - B/r^2, eps_tt = A + B/r^2 -> cartesian via the unit radial vector
    c, s = x[..., 0] / r, x[..., 1] / r
    err, ett = cA - cB / r**2, cA + cB / r**2
    eps = np.zeros(r.shape + (6,))
    eps[..., 0] = err * c**2 + ett * s**2
    eps[..., 1] = err * s**2 + ett * c**2
    eps[..., 5] = 2.0 * (err - ett) * s * c  # engineering shear
    return u, eps


def _ring(k: int, order: int) -> TetMesh:
    nr, nt, nz = 2 * k, 3 * k, k
    m = box_mesh((nr, nt, nz), (1.0, 1.0, 1.0))
    q = m.points
    r = A_IN + (B_OUT - A_IN) * q[:, 0]
    t = 0.5 * np.pi * q[:, 1]
    pts = np.column_stack([r * np.cos(t), r * np.sin(t), H * q[:, 2]])
    mesh = TetMesh(pts, m.cells, m.region)  # the map has positive Jacobian r: orientation kept
    return to_quadratic(mesh) if order == 2 else mesh


def _collapsed_rule(n=4):
    """Conical-product Gauss rule on the reference tet, exact to degree 2n-3 or better."""
    g, w = np.polynomial.legendre.leggauss(n)
    g, w = 0.5 * (g + 1), 0.5 * w
    U, V, W = np.meshgrid(g, g, g, indexing="ij")
    WU, WV, WW = np.meshgrid(w, w, w, indexing="ij")
    xi = np.column_stack([U.ravel(), (V * (1 - U)).ravel(), (W * (1 - U) * (1 - V)).ravel()])
    wt = (WU * WV * WW * (1 - U) ** 2 * (1 - V)).ravel()
    return xi, wt


def _errors(k, order):
    mesh = _ring(k, order)
    p = mesh.points
    r = np.hypot(p[:, 0], p[:, 1])
    bnd = (np.isclose(r, A_IN) | np.isclose(r, B_OUT) | np.isclose(p[:, 0], 0) | np.isclose(p[:, 1], 0)
           | np.isclose(p[:, 2], 0) | np.isclose(p[:, 2], H))
    # mid-edge nodes of chords on the curved faces lie inside r = a, b: find them via cells
    corner_bnd = bnd.copy()
    if order == 2:
        c = mesh.cells
        edges = np.array([[0, 1], [1, 2], [2, 0], [0, 3], [1, 3], [2, 3]])
        both = corner_bnd[c[:, edges[:, 0]]] & corner_bnd[c[:, edges[:, 1]]]
        ends = np.stack([p[c[:, edges[:, 0]]], p[c[:, edges[:, 1]]]])
        same_face = _common_face(ends[0], ends[1])
        bnd[c[:, 4:][both & same_face]] = True
    nodes = np.nonzero(bnd)[0]
    u_ex, _ = _exact(p)
    model = Model(mesh, E=E, nu=NU).fix(nodes)
    model.bc_values = u_ex[model.bc_dofs // 3, model.bc_dofs % 3]
    sol = solve_static(model, solver="amg", rtol=1e-13)
    xi, wt = _collapsed_rule()
    N = elements.shape_values(mesh.cells.shape[1], xi)  # (Q, n)
    G, _ = elements.gradients(p, mesh.cells, xi)
    J = np.einsum("mak,qaj->mqkj", p[mesh.cells], elements.shape_ref_gradients(mesh.cells.shape[1], xi))
    dV = np.linalg.det(J) * wt  # (M, Q)
    xq = np.einsum("qa,mak->mqk", N, p[mesh.cells])
    uq = np.einsum("qa,mak->mqk", N, sol.u[mesh.cells])
    eq = elements.strains_at(p, mesh.cells, sol.u, xi)
    u_e, eps_e = _exact(xq)
    l2 = np.sqrt((((uq - u_e) ** 2).sum(-1) * dV).sum() / ((u_e**2).sum(-1) * dV).sum())
    de = eq - eps_e
    sig = elements.stress_from_strain(de, E, NU)
    sig_e = elements.stress_from_strain(eps_e, E, NU)
    en = np.sqrt(((de * sig).sum(-1) * dV).sum() / ((eps_e * sig_e).sum(-1) * dV).sum())
    return 1.0 / k, l2, en


def _common_face(a, b):
    """True where both ends of an edge lie on one common boundary surface of the ring."""
    ra, rb = np.hypot(a[..., 0], a[..., 1]), np.hypot(b[..., 0], b[..., 1])
    out = np.zeros(ra.shape, dtype=bool)
    for f in (lambda x, r: np.isclose(r, A_IN), lambda x, r: np.isclose(r, B_OUT),
              lambda x, r: np.isclose(x[..., 0], 0), lambda x, r: np.isclose(x[..., 1], 0),
              lambda x, r: np.isclose(x[..., 2], 0), lambda x, r: np.isclose(x[..., 2], H)):
        out |= f(a, ra) & f(b, rb)
    return out


def _rates(levels, order):
    h, l2, en = np.array([_errors(k, order) for k in levels]).T
    return np.diff(np.log(l2)) / np.diff(np.log(h)), np.diff(np.log(en)) / np.diff(np.log(h)), l2, en


@pytest.mark.parametrize("order,levels", [
    (1, (2, 4, 8)),
    (2, (1, 2, 4)),
    pytest.param(1, (8, 16), marks=pytest.mark.slow),
    pytest.param(2, (4, 8), marks=pytest.mark.slow),
])
def test_convergence_rates(order, levels):
    r_l2, r_en, l2, en = _rates(levels, order)
    assert np.all(np.diff(l2) < 0) and np.all(np.diff(en) < 0)
    assert abs(r_l2[-1] - (order + 1)) < 0.2, (r_l2, l2)
    assert abs(r_en[-1] - order) < 0.2, (r_en, en)
