"""Supports and loads from anatomy: on every lumbar level of a real CT and on the phantom.

What is asserted, for compression (driven and held sets) and hence pullout (held sets):
* every node is on the mesh surface;
* without caps, every node is nearest to vertebral-body voxels (sub-regions 1, 2), never to
  posterior elements, lies in the outer 30 % of the body's height at its end, and the set's
  end plane (fitted to the visible surface) is within BAND of the body's end level;
* with caps, no node belongs to a bone element and every node lies beyond the body's end;
* the set is no thicker along the axis than twice its band plus its plane's tilt;
* the audit reports areas covering at least 40 % of the footprint and axial extents under 40 %
  of the body height.
"""

import numpy as np
import pytest

from conftest import real_data_dir
from fesim.analysis.loadcases import BodyFrame, boundary_faces, compression_case
from fesim.analysis.supports import DEFAULT_BAND_MM, nearest_region_codes
from fesim.imaging.segmentation import subregions
from fesim.mesh.caps import assign_cap_regions
from fesim.mesh.mesher import mesh_vertebra
from fesim.mesh.tetmesh import REGION_BONE
from fesim.pipeline import RunOptions, calibrate, end_caps, load_image, segment

LEVELS = ("L1", "L2", "L3", "L4", "L5")


def check_supports(mesh, case, bf: BodyFrame, regions, caps_masks=None):
    """The assertions of the module docstring for one compression case."""
    faces, _ = boundary_faces(mesh)
    surface = np.zeros(mesh.n_nodes, bool)
    surface[faces] = True
    bone_nodes = mesh.nodes_of(mesh.region == REGION_BONE)
    frame = regions.meta["frame"]
    H = frame["body_height_mm"]
    voxel = float(np.max(regions.spacing))
    for name, nodes, upper in (("held", case.fixed, False), ("driven", case.driven, True)):
        a = case.audit["driven" if upper else "fixed"]
        sign = 1.0 if upper else -1.0
        end = frame["upper_endplate"] if upper else frame["lower_endplate"]
        s = (mesh.points[nodes] - bf.center) @ bf.axis
        assert nodes.size >= 20, name
        assert surface[nodes].all(), f"{name} nodes off the surface"
        if caps_masks is None:
            codes = nearest_region_codes(regions, mesh.points[nodes])
            assert np.isin(codes, (1, 2)).all(), f"{name} nodes on posterior elements: {np.unique(codes)}"
            # in the outer 30 % of the body height at its end, and the end plane at the body's end
            assert (sign * s).min() >= 0.2 * H, (name, float((sign * s).min()), H)
            assert abs(a["end_level_mm"] - end) <= DEFAULT_BAND_MM, (name, a["end_level_mm"], end)
        else:
            assert not np.isin(nodes, bone_nodes).any(), f"{name} nodes on bone"
            assert (sign * (s - end)).min() >= -voxel, (name, float((sign * (s - end)).min()))
        # the set is no thicker along the axis than its band about a plane tilted by tilt_deg
        assert a["axial_extent_mm"] <= 2 * DEFAULT_BAND_MM + np.tan(np.radians(a["tilt_deg"])) * 60.0
        assert a["coverage"] >= 0.4, (name, a)
        assert a["axial_extent_mm"] <= 0.4 * H, (name, a)
        assert a["on"] == ("caps" if caps_masks is not None else "bone")


@pytest.fixture(scope="module")
def real_ct():
    real_data = real_data_dir()
    opts = RunOptions(labels=str(real_data / "example_ct_labels.nii.gz"), calibration="internal")
    hu = load_image(real_data / "example_ct.nii.gz", opts)
    return calibrate(hu, opts)[1], opts


def _model(bmd, opts, caps):
    mask, labels = segment(bmd, opts)
    regions = subregions(mask)
    cm = end_caps(mask, labels, regions, regions.meta["frame"], opts)
    body = mask
    if cm is not None:
        body = mask.with_data(((mask.data > 0) | (cm[0].data > 0) | (cm[1].data > 0)).astype(np.uint8))
    mesh = mesh_vertebra(body, [], size_mm=opts.mesh_size_mm)
    if cm is not None:
        mesh = assign_cap_regions(mesh, *cm)
    return mesh, regions, cm


@pytest.mark.realdata
@pytest.mark.parametrize("caps", ["none", "pmma"])
@pytest.mark.parametrize("level", LEVELS)
def test_real_supports_on_body_ends(real_ct, level, caps):
    bmd, base = real_ct
    opts = RunOptions(**{**base.__dict__, "level": level, "caps": caps})
    mesh, regions, cm = _model(bmd, opts, caps)
    bf = BodyFrame.from_regions(regions)
    case = compression_case(mesh, bf)
    check_supports(mesh, case, bf, regions, cm)


def test_phantom_supports_on_body_ends():
    from fesim.synthetic.phantom import PhantomSpec, make_phantom

    ph = make_phantom(PhantomSpec(seed=3, density_scale=0.65))
    mask = ph.labels.with_data((ph.labels.data == 1).astype(np.uint8))
    regions = subregions(mask)
    mesh = mesh_vertebra(mask, [], size_mm=2.0)
    bf = BodyFrame.from_regions(regions)
    case = compression_case(mesh, bf)
    check_supports(mesh, case, bf, regions)
    # the phantom's endplates are flat: the sets hug them
    for key in ("fixed", "driven"):
        assert case.audit[key]["tilt_deg"] < 3.0
        assert case.audit[key]["coverage"] > 0.8


def test_side_walls_never_support():
    """An hourglass body whose lower rim is wider than the upper one: the flared lower wall is
    visible from above beyond the upper rim, but lies outside the band and is not taken."""
    from fesim.imaging.volume import Volume

    h = 0.5
    n = (100, 100, 70)
    ijk = np.indices(n).reshape(3, -1).T * h
    c = np.array([25.0, 25.0, 17.5])
    rel = ijk - c
    z = rel[:, 2]
    radius = np.where(z < 0, 15.0 + 0.5 * np.abs(z), 15.0 + 0.15 * np.abs(z))  # lower rim 23.75 mm
    inside = (np.hypot(rel[:, 0], rel[:, 1]) <= radius) & (np.abs(z) <= 15.0)
    mask = Volume(inside.reshape(n).astype(np.uint8), (h, h, h), (0, 0, 0))
    regions = subregions(mask, body_axis=(0, 0, 1))  # a body without an arch has no sagittal plane
    mesh = mesh_vertebra(mask, [], size_mm=1.5)
    bf = BodyFrame.from_regions(regions)
    case = compression_case(mesh, bf)
    s = (mesh.points[case.driven] - bf.center) @ bf.axis
    assert s.min() > 15.0 - bf.center[2] + c[2] - DEFAULT_BAND_MM - 1.0
    radial = np.linalg.norm((mesh.points[case.driven] - c)[:, :2], axis=1)
    assert radial.max() < 17.25 + 1.0  # the upper rim; the flared lower wall lies beyond it
    assert case.audit["driven"]["axial_extent_mm"] < DEFAULT_BAND_MM + 2.0


def test_implausible_support_sets_are_refused_or_warned():
    from fesim.analysis.supports import SupportAudit, check_audit
    from fesim.errors import ModelError

    def audit(area, lo, hi, n=100):
        return SupportAudit("lower", n, area, 2000.0, lo, hi, lo, DEFAULT_BAND_MM, "bone")

    check_audit(audit(1500.0, -16.0, -12.0), body_height_mm=30.0)  # plausible: silent
    with pytest.warns(UserWarning, match="covers only 40 %"):
        check_audit(audit(800.0, -16.0, -12.0), body_height_mm=30.0)
    with pytest.raises(ModelError, match="covers 10 %"):
        check_audit(audit(200.0, -16.0, -12.0), body_height_mm=30.0)
    with pytest.raises(ModelError, match="spans 16.0 mm"):
        check_audit(audit(1500.0, -16.0, 0.0), body_height_mm=30.0)
    with pytest.raises(ModelError, match="2 node"):
        check_audit(audit(1500.0, -16.0, -12.0, n=2), body_height_mm=30.0)


def test_tet10_and_hex_faces_are_held_at_all_their_nodes():
    """A support holds whole faces: a tet10 face's mid-edge nodes, a hex quad's four corners.
    (Held at corners only, a tet10 platen is soft: a uniform cylinder lost 15 % of E*A/L.)"""
    from fesim.imaging.volume import Volume
    from fesim.mesh.tetmesh import to_quadratic
    from fesim.mesh.voxel import voxel_mesh

    h = 1.0
    n = (40, 40, 30)
    ijk = np.indices(n).reshape(3, -1).T * h
    rel = ijk - np.array([20.0, 20.0, 15.0])
    inside = (np.hypot(rel[:, 0], rel[:, 1]) <= 15.0) & (np.abs(rel[:, 2]) <= 11.0)
    mask = Volume(inside.reshape(n).astype(np.uint8), (h, h, h), (0, 0, 0))
    regions = subregions(mask, body_axis=(0, 0, 1))
    bf = BodyFrame.from_regions(regions)
    for mesh in (to_quadratic(mesh_vertebra(mask, [], size_mm=2.0)), voxel_mesh(mask)):
        case = compression_case(mesh, bf)
        faces, owner, extra = boundary_faces(mesh, with_extra=True)
        sel = bf.supports(mesh).faces["upper"]
        assert sel.size > 50 and extra.shape[1] > 0
        held = np.zeros(mesh.n_nodes, bool)
        held[case.driven] = True
        assert held[faces[sel]].all() and held[extra[sel]].all(), "a held face has free nodes"
