"""Conforming cutting of a tetrahedral mesh along a level set (after snapping).

Snapping (:mod:`fesim.mesh.mesher`) moves lattice nodes onto an interface where a cut edge
has an end close to it; edges cut near their middle, or whose snap would spoil an element,
stay cut, and labelling by centroid would leave a staircase of element faces there. This
module removes that staircase: every edge whose ends lie strictly on opposite sides of the
level set gets a new node on the interface (found by regula falsi on the level-set function
along the edge), and every element with such edges is split into sub-tetrahedra on either
side, so that the interface is a surface of element faces with all its nodes on the level set.

Splitting follows the marching-tetrahedra cases (one node against three: a tetrahedron and
a prism; two against two: two prisms; with nodes on the interface: tetrahedra and pyramids).
Quadrilateral faces are divided by the diagonal from their lowest global node id, and prisms
are split from their lowest vertex, so neighbouring elements divide their shared faces the
same way and the mesh stays conforming without Steiner points (Dompierre et al. 1999, "How to
subdivide pyramids, prisms and hexahedra into tetrahedra", 8th Int. Meshing Roundtable).
"""

from __future__ import annotations

import numpy as np

from fesim.mesh.refine import edge_key

#: A crossing closer than this fraction of the edge length to an end is put on that end
#: (the node is treated as lying on the interface) instead of creating a sliver.
END_FRACTION = 0.2

#: Radius-ratio floor for those nodes' moves onto the interface.
MOVE_QUALITY_FLOOR = 0.05

_EDGES = np.array([(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)])


def _edge_index(i, j):
    """Local edge number (0..5) of vertices i, j (arrays of equal shape, i != j)."""
    table = np.full((4, 4), -1)
    for k, (a, b) in enumerate(_EDGES):
        table[a, b] = table[b, a] = k
    return table[i, j]


def _crossings(xa, xb, fa, fb, fn, n_iter: int = 40):
    """Points on segments (xa, xb) where ``fn`` vanishes; ``fa``, ``fb`` have opposite signs."""
    ta, tb = np.zeros(len(xa)), np.ones(len(xa))
    ga, gb = fa.copy(), fb.copy()
    side = np.zeros(len(xa), dtype=np.int8)
    t = np.full(len(xa), 0.5)
    for _ in range(n_iter):  # Illinois variant of regula falsi (keeps the bracket)
        t = ta - ga * (tb - ta) / (gb - ga)
        ft = fn(xa + t[:, None] * (xb - xa))
        left = np.sign(ft) == np.sign(ga)
        ta, ga = np.where(left, t, ta), np.where(left, ft, ga)
        tb, gb = np.where(left, tb, t), np.where(left, gb, ft)
        gb = np.where(left & (side == 1), 0.5 * gb, gb)
        ga = np.where(~left & (side == -1), 0.5 * ga, ga)
        side = np.where(left, 1, -1).astype(np.int8)
        if np.all(np.abs(ft) < 1e-10):
            break
    return t


def _orient(points, tets):
    """Flip (swap the last two vertices of) negatively oriented tetrahedra."""
    x = points[tets]
    v = np.einsum("ij,ij->i", np.cross(x[:, 1] - x[:, 0], x[:, 2] - x[:, 0]), x[:, 3] - x[:, 0])
    neg = v < 0
    tets[neg, 2], tets[neg, 3] = tets[neg, 3].copy(), tets[neg, 2].copy()
    return tets


def _quad_tris(q):
    """Split quads (k, 4) (cyclic order) along the diagonal from their lowest id: (2k, 3)."""
    start = np.argmin(q, axis=1)
    r = np.take_along_axis(q, (start[:, None] + np.arange(4)) % 4, axis=1)
    return np.concatenate([r[:, [0, 1, 2]], r[:, [0, 2, 3]]])


def _pyramids(apex, quad):
    """Tetrahedra (2k, 4) of pyramids with cyclic quad bases (k, 4) and apexes (k,)."""
    tri = _quad_tris(quad)
    return np.column_stack([np.concatenate([apex, apex]), tri])


def _prisms(bottom, top):
    """Tetrahedra (3k, 4) of prisms with triangles ``bottom`` (k, 3) and ``top`` (k, 3).

    ``top[:, i]`` is joined to ``bottom[:, i]``. Each prism is split from its lowest vertex
    v: v with the opposite triangle, and v with the two halves of the one quadrilateral face
    not containing v (divided from its own lowest vertex), so shared faces match.
    """
    P = np.concatenate([bottom, top], axis=1)  # vertices 0..2 bottom, 3..5 top
    k = len(P)
    m = np.argmin(P, axis=1)
    i = m % 3  # position within its triangle
    v = P[np.arange(k), m]
    in_bottom = m < 3
    opp = np.where(in_bottom[:, None], top, bottom)  # the triangle without v
    # quad without v: the lateral face opposite vertex i, i.e. over the edge (i+1, i+2)
    j1, j2 = (i + 1) % 3, (i + 2) % 3
    b1, b2 = bottom[np.arange(k), j1], bottom[np.arange(k), j2]
    t1, t2 = top[np.arange(k), j1], top[np.arange(k), j2]
    quad = np.column_stack([b1, b2, t2, t1])
    tri = _quad_tris(quad)
    first = np.column_stack([v, opp])
    rest = np.column_stack([np.concatenate([v, v]), tri])
    return np.concatenate([first, rest])


def _move_if_valid(points, cells, nodes, targets, floor: float = MOVE_QUALITY_FLOOR):
    """Move ``nodes`` to ``targets``, undoing moves that leave an element inverted or below
    radius ratio ``floor`` (one node per bad element, the longest move, until none is bad)."""
    from fesim.mesh.quality import radius_ratio

    new = points.copy()
    new[nodes] = targets
    moved = np.zeros(len(points), bool)
    moved[nodes] = True
    dist = np.linalg.norm(new - points, axis=1)
    touched = np.flatnonzero(moved[cells].any(axis=1))
    for _ in range(200):
        c = cells[touched]
        x = new[c]
        vol = np.einsum("ij,ij->i", np.cross(x[:, 1] - x[:, 0], x[:, 2] - x[:, 0]), x[:, 3] - x[:, 0])
        bad = (vol <= 0) | (radius_ratio(new, c) < floor)
        if not bad.any():
            break
        cb = c[bad]
        pick = cb[np.arange(len(cb)), np.argmax(np.where(moved[cb], dist[cb], -1.0), axis=1)]
        undo = np.unique(pick[moved[pick]])
        if len(undo) == 0:
            break
        new[undo] = points[undo]
        moved[undo] = False
        dist[undo] = 0.0
    return new


def _settle_near_crossings(points, cells, e, s, f, fn):
    """Put nodes next to a crossing on the interface (``s`` set to 0 in place).

    A node whose crossing on some cut edge lies within END_FRACTION of it is put on the
    interface instead of cutting there (no sliver children): moved onto the nearest such
    crossing where that keeps its elements valid, else left in place with its sign set to
    0 (a geometric error of at most END_FRACTION of that edge). Repeated because changing
    a sign changes which edges are cut. Returns the (moved) points, the keys of the edges
    cut in the last pass, their end nodes ``a``, ``b`` and crossing parameters ``t``.
    """
    target = np.full((len(points), 3), np.nan)
    t_best = np.full(len(points), np.inf)
    for _ in range(10):
        cut = s[e[:, 0]] * s[e[:, 1]] < 0
        keys = np.unique(edge_key(e[cut, 0], e[cut, 1]))
        a, b = keys >> np.int64(32), keys & np.int64(0xFFFFFFFF)
        t = _crossings(points[a], points[b], f[a], f[b], fn) if len(keys) else np.zeros(0)
        near_a, near_b = t < END_FRACTION, t > 1.0 - END_FRACTION
        if not (near_a.any() or near_b.any()):
            break
        x = points[a] + t[:, None] * (points[b] - points[a])
        for sel, node, frac in ((near_a, a, t), (near_b, b, 1.0 - t)):
            nd, fr, xx = node[sel], frac[sel], x[sel]
            order = np.argsort(-fr)  # nearest crossing written last
            nd, fr, xx = nd[order], fr[order], xx[order]
            better = fr < t_best[nd]
            t_best[nd[better]] = fr[better]
            target[nd[better]] = xx[better]
            s[nd] = 0
    moved = np.flatnonzero((s == 0) & np.isfinite(t_best))
    if len(moved):
        points = _move_if_valid(points, cells, moved, target[moved])
    return points, keys, a, b, t


def _split_crossed(cells, sc, cut_node):
    """Children of the elements whose node signs ``sc`` (M, 4) differ, uncut elements first.

    ``cut_node`` (M, 6) holds the new node on each cut edge (-1 if none). Returns the lists of
    child cells and of their parents' indices.
    """
    n_pos, n_neg = (sc > 0).sum(1), (sc < 0).sum(1)
    crossed = (n_pos > 0) & (n_neg > 0)
    keep_ids = np.flatnonzero(~crossed)
    out_cells, out_parent = [cells[keep_ids]], [keep_ids]
    ids = np.flatnonzero(crossed)
    C, S, K = cells[ids], sc[ids], cut_node[ids]
    npos, nneg = n_pos[ids], n_neg[ids]

    def cnode(sel, i, j):
        return K[sel, _edge_index(i, j)]

    def add(tets, sel):
        out_cells.append(tets)
        out_parent.append(np.tile(ids[sel], len(tets) // max(int(sel.sum()), 1)))

    # Each case picks its vertices' roles (lone node, others, nodes on the interface) by
    # stable argsorts of sign tests.
    for lone_sign in (1, -1):
        # one node against three on the other side (1-3-0)
        sel = ((npos == 1) & (nneg == 3)) if lone_sign == 1 else ((npos == 3) & (nneg == 1))
        if sel.any():
            Ss = S[sel]
            lone = np.argmax(Ss == lone_sign, axis=1)
            others = np.argsort(Ss == lone_sign, axis=1, kind="stable")[:, :3]
            Cs = C[sel]
            r = np.arange(sel.sum())
            c3 = np.stack([cnode(sel, lone, others[:, k]) for k in range(3)], axis=1)
            add(np.column_stack([Cs[r, lone], c3]), sel)
            add(_prisms(Cs[r[:, None], others], c3), sel)
        # one node against two, one on the interface (1-2-1)
        sel = ((npos == 1) & (nneg == 2) if lone_sign == 1 else (npos == 2) & (nneg == 1)) & (S == 0).any(1)
        if sel.any():
            Ss, Cs = S[sel], C[sel]
            r = np.arange(sel.sum())
            lone = np.argmax(Ss == lone_sign, axis=1)
            zero = np.argmax(Ss == 0, axis=1)
            pair = np.argsort(Ss == -lone_sign, axis=1, kind="stable")[:, 2:]  # the two others
            c0, c1 = cnode(sel, lone, pair[:, 0]), cnode(sel, lone, pair[:, 1])
            z = Cs[r, zero]
            add(np.column_stack([Cs[r, lone], c0, c1, z]), sel)
            quad = np.column_stack([Cs[r, pair[:, 0]], Cs[r, pair[:, 1]], c1, c0])
            add(_pyramids(z, quad), sel)
    # one against one, two on the interface (1-1-2)
    sel = (npos == 1) & (nneg == 1)
    if sel.any():
        Ss, Cs = S[sel], C[sel]
        r = np.arange(sel.sum())
        p, q = np.argmax(Ss > 0, axis=1), np.argmax(Ss < 0, axis=1)
        zz = np.argsort(Ss != 0, axis=1, kind="stable")[:, :2]
        c = cnode(sel, p, q)
        z0, z1 = Cs[r, zz[:, 0]], Cs[r, zz[:, 1]]
        add(np.column_stack([Cs[r, p], c, z0, z1]), sel)
        add(np.column_stack([Cs[r, q], c, z0, z1]), sel)
    # two against two (2-2-0)
    sel = (npos == 2) & (nneg == 2)
    if sel.any():
        Ss, Cs = S[sel], C[sel]
        r = np.arange(sel.sum())
        A = np.argsort(Ss < 0, axis=1, kind="stable")[:, :2]  # positive vertices
        B = np.argsort(Ss > 0, axis=1, kind="stable")[:, :2]  # negative vertices
        c00, c01 = cnode(sel, A[:, 0], B[:, 0]), cnode(sel, A[:, 0], B[:, 1])
        c10, c11 = cnode(sel, A[:, 1], B[:, 0]), cnode(sel, A[:, 1], B[:, 1])
        a0, a1, b0, b1 = Cs[r, A[:, 0]], Cs[r, A[:, 1]], Cs[r, B[:, 0]], Cs[r, B[:, 1]]
        add(_prisms(np.column_stack([a0, c00, c01]), np.column_stack([a1, c10, c11])), sel)
        add(_prisms(np.column_stack([b0, c00, c10]), np.column_stack([b1, c01, c11])), sel)
    return out_cells, out_parent


def cut_mesh(points: np.ndarray, cells: np.ndarray, fn, f: np.ndarray | None = None):
    """Split the elements of a tetrahedral mesh crossed by the zero set of ``fn``.

    Parameters
    ----------
    points : (N, 3) float64, mm
    cells : (M, 4) int, positively oriented
    fn : callable, (P, 3) mm -> (P,) signed level set (mm; negative inside)
    f : (N,) optional level-set values at the nodes (computed if not given)

    Returns
    -------
    points : (N + C, 3) with the C new interface nodes appended
    cells : (M', 4) int64, positively oriented; uncut elements first, in their order
    parent : (M',) index of the original element of each new element
    """
    points = np.asarray(points, dtype=float)
    cells = np.asarray(cells, dtype=np.int64)
    f = fn(points) if f is None else np.asarray(f, dtype=float)
    s = np.sign(f).astype(np.int8)
    e = cells[:, _EDGES].reshape(-1, 2)
    points, keys, a, b, t = _settle_near_crossings(points, cells, e, s, f, fn)
    cut = s[e[:, 0]] * s[e[:, 1]] < 0
    keys_now, inv = np.unique(edge_key(e[cut, 0], e[cut, 1]), return_inverse=True)
    if not np.array_equal(keys_now, keys):  # the loop stopped on its iteration limit
        keys = keys_now
        a, b = keys >> np.int64(32), keys & np.int64(0xFFFFFFFF)
        t = _crossings(points[a], points[b], f[a], f[b], fn) if len(keys) else np.zeros(0)
    new_pts = points[a] + t[:, None] * (points[b] - points[a])
    n0 = len(points)
    cut_node = np.full(len(e), -1, dtype=np.int64)
    cut_node[np.flatnonzero(cut)] = n0 + inv.ravel()
    out_cells, out_parent = _split_crossed(cells, s[cells], cut_node.reshape(-1, 6))
    all_pts = np.vstack([points, new_pts])
    new_cells = _orient(all_pts, np.concatenate(out_cells).astype(np.int64))
    return all_pts, new_cells, np.concatenate(out_parent)
