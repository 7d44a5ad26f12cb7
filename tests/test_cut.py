"""Conforming cutting of tetrahedral meshes along a level set (fesim.mesh.cut)."""

import numpy as np
import pytest

from fesim.mesh.cut import END_FRACTION, cut_mesh
from fesim.mesh.quality import signed_volume
from fesim.mesh.tetmesh import box_mesh


def _faces(cells):
    f = np.sort(cells[:, [[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]]], axis=2).reshape(-1, 3)
    _, inv, cnt = np.unique(f, axis=0, return_inverse=True, return_counts=True)
    return f, cnt[inv.ravel()]


def _sphere(c, r):
    return lambda x: np.linalg.norm(np.atleast_2d(x) - c, axis=1) - r


@pytest.mark.parametrize("radius", [2.3, 3.1])
def test_cut_is_conforming_volume_preserving_and_separates_sides(radius):
    box = box_mesh((10, 10, 10), (8.0, 8.0, 8.0))
    fn = _sphere(np.array([4.1, 3.9, 4.05]), radius)
    pts, cells, parent = cut_mesh(box.points, box.cells, fn)
    vol = signed_volume(pts, cells)
    assert vol.min() > 0
    # children tile their parents exactly (parents as moved onto the sphere where valid)
    parent_vol = np.bincount(parent, weights=vol, minlength=box.n_elements)
    assert np.allclose(parent_vol, signed_volume(pts[:len(box.points)], box.cells), rtol=1e-12, atol=1e-12)
    moved = np.linalg.norm(pts[:len(box.points)] - box.points, axis=1) > 0
    assert moved.any() and np.abs(fn(pts[:len(box.points)][moved])).max() < 1e-8
    # conforming: a face used once lies on the box boundary, never inside
    f, cnt = _faces(cells)
    x = pts[f[cnt == 1]].reshape(-1, 3)
    on_box = np.isclose(x, 0.0).any(axis=1) | np.isclose(x, 8.0).any(axis=1)
    assert on_box.all()
    assert cnt.max() == 2
    # no element straddles the sphere: nodal values of each element share a sign, up to the
    # nodes deliberately left where they are (crossing within END_FRACTION of them)
    h = 0.8 * np.sqrt(3)
    fv = fn(pts)[cells]
    tol = END_FRACTION * h
    assert np.all((fv.max(axis=1) <= tol) | (fv.min(axis=1) >= -tol))
    # new nodes lie on the sphere
    assert np.abs(fn(pts[len(box.points):])).max() < 1e-8
    # inside volume: chords of the sphere, with some nodes left up to END_FRACTION of an edge
    # away from it (no snapping here, unlike the mesher)
    inside = fv.mean(axis=1) < 0
    v_in = vol[inside].sum()
    exact = 4.0 / 3.0 * np.pi * radius**3
    assert abs(v_in - exact) / exact < 0.06


def test_uncut_mesh_unchanged():
    box = box_mesh((2, 2, 2), (1.0, 1.0, 1.0))
    pts, cells, parent = cut_mesh(box.points, box.cells, lambda x: np.atleast_2d(x)[:, 0] + 5.0)
    assert np.array_equal(pts, box.points) and np.array_equal(cells, box.cells)
    assert np.array_equal(parent, np.arange(box.n_elements))
