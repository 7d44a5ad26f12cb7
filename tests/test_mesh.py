"""Tests of the bone+screw mesher, tet10 conversion and quality checks."""

from __future__ import annotations


import numpy as np
import pytest

from fesim.errors import MeshError
from fesim.imaging.screwplan import ScrewPlan
from fesim.imaging.volume import Volume
from fesim.mesh.mesher import mesh_vertebra, to_quadratic
from fesim.mesh.quality import check_quality, quality_report, radius_ratio, min_dihedral
from fesim.mesh.tetmesh import REGION_BONE, REGION_SCREW0, TetMesh


def elliptic_body(spacing=(0.8, 0.8, 1.0), a=22.5, b=17.5, height=27.0, direction=None):
    """Binary elliptic-cylinder 'vertebral body' centred at the origin (LPS mm)."""
    sp = np.asarray(spacing, float)
    n = np.ceil(np.array([60.0, 50.0, 40.0]) / sp).astype(int)
    d = np.eye(3) if direction is None else np.asarray(direction, float)
    v = Volume(np.zeros(tuple(n), np.uint8), sp, np.zeros(3), d)
    v.origin = -v.index_to_world((n - 1) / 2.0)
    ijk = np.stack(np.meshgrid(*[np.arange(k) for k in n], indexing="ij"), -1)
    x = v.index_to_world(ijk)
    v.data[((x[..., 0] / a) ** 2 + (x[..., 1] / b) ** 2 <= 1) & (np.abs(x[..., 2]) <= height / 2)] = 1
    return v


def screw(side="left", x=10.0, slope=-0.1):
    # Head at y = 22 mm, 4.5 mm outside the body wall: part of the screw sticks out.
    return ScrewPlan(side, entry=[x, 22.0, 0.0], direction=[slope, -1.0, 0.0], length_mm=35.0, diameter_mm=6.5)


@pytest.fixture(scope="module")
def body():
    return elliptic_body()


@pytest.fixture(scope="module")
def mesh1(body):
    return mesh_vertebra(body, [screw()])


def test_regions_positive_and_quality(mesh1):
    assert set(np.unique(mesh1.region)) == {REGION_BONE, REGION_SCREW0}
    assert (mesh1.corner_volumes() > 0).all()
    rep = check_quality(mesh1)
    assert rep["min_dihedral_deg"] >= 3.0 and rep["radius_ratio_min"] >= 0.05


def _interface_faces(mesh, a, b):
    f = np.sort(mesh.cells[:, [[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]]], axis=2).reshape(-1, 3)
    own = np.repeat(mesh.region, 4)
    u, inv = np.unique(f, axis=0, return_inverse=True)
    inv = inv.ravel()
    ra, rb = np.zeros(len(u), bool), np.zeros(len(u), bool)
    ra[inv[own == a]] = True
    rb[inv[own == b]] = True
    return u[ra & rb]


def test_interface_shares_nodes(mesh1):
    # No duplicated coordinates anywhere (so no unconnected interface copies).
    q = np.round(mesh1.points, 6)
    assert len(np.unique(q, axis=0)) == mesh1.n_nodes
    # Bone and screw share whole faces, and those faces follow the cylinder.
    faces = _interface_faces(mesh1, REGION_BONE, REGION_SCREW0)
    s = screw()
    area_approx = 2 * np.pi * s.radius_mm * (s.length_mm - 4.5)
    assert len(faces) > area_approx / 0.7**2
    dev = np.abs(s.signed_distance(mesh1.points[faces])).max(axis=1)
    assert dev.max() < 1.0  # mm, at most about one fine element
    assert (dev < 1e-9).mean() > 0.25  # a good share of faces lies exactly on it (0.31)


def test_screw_volume(mesh1):
    s = screw()
    vol = mesh1.corner_volumes()[mesh1.is_screw(0)].sum()
    assert abs(vol / s.volume_mm3 - 1) < 0.02


def test_bone_volume_matches_mask(body, mesh1):
    mask_vol = body.data.sum() * body.voxel_volume_mm3
    v = mesh1.corner_volumes()
    s = screw()
    # Screw part inside the body is bone in the mask.
    cen = mesh1.centroids()
    in_body = (cen[:, 0] / 22.5) ** 2 + (cen[:, 1] / 17.5) ** 2 <= 1
    total = v[mesh1.is_bone()].sum() + v[mesh1.is_screw(0) & in_body].sum()
    assert abs(total / mask_vol - 1) < 0.03
    # Screw head outside the bone is kept as screw material.
    outside = mesh1.is_screw(0) & ~in_body
    assert v[outside].sum() > 0.5 * np.pi * s.radius_mm**2 * 4.0


def test_two_screws_rotated_grid_and_timing():
    # A permuted/flipped voxel grid gives the same anatomy in LPS.
    d = np.array([[0, 1, 0], [-1, 0, 0], [0, 0, 1]], float)
    body = elliptic_body(spacing=(1.0, 1.0, 1.0), direction=d)
    screws = [screw("left", 10.0, -0.1), screw("right", -10.0, 0.1)]
    m = mesh_vertebra(body, screws)
    assert m.info["time_total_s"] < 30
    for s in range(2):
        vol = m.corner_volumes()[m.is_screw(s)].sum()
        assert abs(vol / screws[s].volume_mm3 - 1) < 0.02
    check_quality(m)


def test_to_quadratic(mesh1):
    q = to_quadratic(mesh1)
    assert q.cells.shape[1] == 10 and q.order == 2
    np.testing.assert_array_equal(q.cells[:, :4], mesh1.cells)
    pairs = [(0, 1), (1, 2), (0, 2), (0, 3), (1, 3), (2, 3)]
    for k, (a, b) in enumerate(pairs):
        mid = 0.5 * (q.points[q.cells[:, a]] + q.points[q.cells[:, b]])
        np.testing.assert_allclose(q.points[q.cells[:, 4 + k]], mid, atol=1e-12)
    # Shared: one mid node per unique edge (Euler-type count check) and no duplicates.
    edges = np.sort(mesh1.cells[:, np.array(pairs)].reshape(-1, 2), axis=1)
    n_edges = len(np.unique(edges, axis=0))
    assert q.n_nodes == mesh1.n_nodes + n_edges
    assert len(np.unique(np.round(q.points, 6), axis=0)) == q.n_nodes


def test_order2_from_mesher(body):
    m = mesh_vertebra(body, [], size_mm=3.0, order=2)
    assert m.cells.shape[1] == 10 and (m.region == REGION_BONE).all()


def test_fragments_dropped():
    v = elliptic_body(spacing=(1.0, 1.0, 1.0))
    # An isolated blob far from the body.
    v.data[2:6, 2:6, 2:6] = 1
    m = mesh_vertebra(v, [], size_mm=2.0)
    assert m.info["n_fragment_elements_dropped"] > 0
    assert m.points[:, 0].min() > -25


def test_bad_input(body):
    with pytest.raises(MeshError):
        mesh_vertebra(body.with_data(np.zeros_like(body.data)), [])
    with pytest.raises(MeshError):
        mesh_vertebra(body, [], size_mm=0)
    with pytest.raises(MeshError):
        mesh_vertebra(body, [], order=3)
    far = ScrewPlan("x", entry=[200.0, 0, 0], direction=[1.0, 0, 0], length_mm=10, diameter_mm=5)
    with pytest.raises(MeshError, match="not connected"):
        mesh_vertebra(body, [far], size_mm=3.0)


def test_quality_measures_and_check():
    p = np.array([[0, 0, 0], [1, 0, 0], [0.5, np.sqrt(3) / 2, 0], [0.5, np.sqrt(3) / 6, np.sqrt(2 / 3)]])
    cells = np.array([[0, 1, 2, 3]])
    assert radius_ratio(p, cells)[0] == pytest.approx(1.0)
    assert min_dihedral(p, cells)[0] == pytest.approx(np.degrees(np.arccos(1 / 3)))
    inverted = TetMesh(p, cells[:, [0, 2, 1, 3]], np.ones(1))
    with pytest.raises(MeshError, match="inverted"):
        check_quality(inverted)
    flat = p.copy()
    flat[3, 2] = 0.01
    with pytest.raises(MeshError, match="dihedral"):
        check_quality(TetMesh(flat, cells, np.ones(1)))
    rep = quality_report(TetMesh(p, cells, np.ones(1)))
    assert rep["count_per_region"] == {1: 1}


from conftest import real_data_dir  # noqa: E402


@pytest.mark.realdata
def test_real_ct_lumbar_volumes():
    labels = real_data_dir() / "example_ct_labels.nii.gz"
    try:
        from fesim.imaging.nifti import read_nifti
        lab = read_nifti(labels, kind="labels")
    except (ImportError, TypeError):
        nib = pytest.importorskip("nibabel")
        img = nib.load(str(labels))
        a = img.affine.copy()
        a[:2] *= -1  # RAS -> LPS
        sp = np.linalg.norm(a[:3, :3], axis=0)
        lab = Volume(np.asarray(img.dataobj).astype(np.int16), sp, a[:3, 3], a[:3, :3] / sp)
    for code in (27, 28, 29, 30, 31):
        mask = lab.with_data((np.asarray(lab.data) == code).astype(np.uint8))
        m = mesh_vertebra(mask, [], size_mm=2.0)
        vol = m.corner_volumes().sum()
        ref = mask.data.sum() * mask.voxel_volume_mm3
        assert abs(vol / ref - 1) < 0.03, (code, vol, ref)
        check_quality(m)


def test_truncated_mask_refused(body):
    cut = body.with_data(body.data.copy(), truncated=True, truncated_faces=["k_max"])
    with pytest.raises(MeshError, match="cut by the image border.*k_max"):
        mesh_vertebra(cut, [], size_mm=3.0)
    m = mesh_vertebra(cut, [], size_mm=3.0, allow_truncated=True)
    assert m.info["truncated"] is True
    assert mesh_vertebra(body, [], size_mm=3.0).info["truncated"] is False


@pytest.mark.realdata
def test_real_t12_truncated_refused():
    labels = real_data_dir() / "example_ct_labels.nii.gz"
    from fesim.imaging.nifti import read_nifti
    from fesim.imaging.segmentation import mask_from_labels
    t12 = mask_from_labels(read_nifti(labels, kind="labels"), [32])
    assert t12.meta["truncated"]
    with pytest.raises(MeshError, match="cut by the image border"):
        mesh_vertebra(t12, [])
