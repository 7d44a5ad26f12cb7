"""Screw planning is insensitive to single surface voxels of the mask (issue #16)."""

import warnings

import numpy as np
import pytest
from scipy import ndimage as ndi

from fesim.imaging.planning import (_angles, check_screw, plan_screws, planning_distance_map,
                                    signed_distance_map)
from fesim.imaging.segmentation import subregions
from fesim.synthetic.phantom import PhantomSpec, make_phantom


@pytest.fixture(scope="module")
def phantom():
    p = make_phantom(PhantomSpec(rods_mg_cm3=None, noise_hu=0.0))
    mask = p.labels.with_data((p.labels.data == 1).astype(np.uint8))
    return p, mask


def _plan(mask):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return plan_screws(mask, subregions(mask), sides=("left", "right"))


def _surface_changed(mask, rng, fraction, add):
    """The mask with ``fraction`` of its one-voxel outer (``add``) or inner surface layer flipped."""
    m = mask.data > 0
    ball = ndi.generate_binary_structure(3, 1)
    layer = (ndi.binary_dilation(m, ball) & ~m) if add else (m & ~ndi.binary_erosion(m, ball))
    pick = layer & (rng.random(m.shape) < fraction)
    return mask.with_data((m | pick if add else m & ~pick).astype(np.uint8)), int(pick.sum())


def _gap(a, b, frame_a, frame_b, point):
    """Convergence and tilt differences (deg, each screw in its own mask's vertebra frame) and
    the distance (mm) between the two axes at ``point``."""
    ca, ta = _angles(a.direction, frame_a, a.side)
    cb, tb = _angles(b.direction, frame_b, b.side)
    near = [s.entry + ((point - s.entry) @ s.direction) * s.direction for s in (a, b)]
    return abs(float(ca - cb)), abs(float(ta - tb)), float(np.linalg.norm(near[0] - near[1]))


@pytest.mark.parametrize("fraction,add,max_deg", [(0.1, True, 2.0), (0.1, False, 2.0),
                                                  (0.3, True, 3.0), (0.3, False, 3.0)])
def test_scattered_surface_voxels_leave_the_plan_in_place(phantom, fraction, add, max_deg):
    """A tenth (or 30 %) of the one-voxel surface layer added or removed at random, 1 200 to
    4 100 voxels: the screw axis stays within 1 mm of the unchanged plan's at the isthmus
    (measured 0.01-0.92 mm), its convergence and tilt within 2 deg (3 deg; measured up to 1.7
    and 2.8 deg) in each mask's frame. The angles are compared in each mask's own frame: the
    vertebra frame (``subregions``) itself turns by 3.5-4.2 deg when surface voxels are
    removed, which the planner follows (its tilt prior is relative to the endplates)."""
    p, mask = phantom
    ref = _plan(mask)
    changed, n = _surface_changed(mask, np.random.default_rng(16), fraction, add)
    assert n > 1000
    f0, f1 = subregions(mask).meta["frame"], subregions(changed).meta["frame"]
    for a, b in zip(ref, _plan(changed)):
        dc, dt, gap = _gap(a, b, f0, f1, p.landmarks[f"pedicle_{a.side}"])
        assert dc <= max_deg and dt <= max_deg and gap <= 1.0, (a.side, dc, dt, gap)
        assert abs(a.length_mm - b.length_mm) <= 2.5


def test_planning_surface_ignores_single_voxels_and_pinholes(phantom):
    _, mask = phantom
    m = mask.data > 0
    base = planning_distance_map(mask)
    # an isolated voxel outside a flat face and a one-voxel hole inside the bone
    sd = signed_distance_map(mask).data
    # outside a flat face: its 3x3x3 neighbourhood holds exactly one full 3x3 plane of bone
    count = ndi.convolve(m.astype(np.int16), np.ones((3, 3, 3), np.int16), mode="constant")
    face = np.zeros_like(m)
    for ax in range(3):
        for s in (-1, 1):
            face |= np.roll(m, s, axis=ax) & (count == 9)
    out = np.argwhere(face & ~m)[0]
    deep = np.argwhere(sd < -5.0)[0]
    m2 = m.copy()
    m2[tuple(out)] = True
    m2[tuple(deep)] = False
    moved = planning_distance_map(mask.with_data(m2.astype(np.uint8)))
    pts = mask.index_to_world(np.array([out, deep]))
    before, after = base.sample(pts, order=1), moved.sample(pts, order=1)
    assert after[0] > 0 and after[1] < -4.0, (before, after)
    # the raw voxel distance map sees both
    raw = signed_distance_map(mask.with_data(m2.astype(np.uint8))).sample(pts, order=1)
    assert raw[0] < 0 and raw[1] > -1.0


def test_whole_layer_moves_the_plan_little(phantom):
    """A whole voxel layer added moves the surface by a voxel (0.8-1 mm) everywhere: the screw
    stays centred in its pedicle (axis within 0.5 mm, angles within 3 deg; measured 0.07 mm,
    2.1 deg; the planner before the consensus direction, commit c8dffdd, turned 10 deg in tilt
    and 4 deg in convergence) and in bone on the changed mask."""
    p, mask = phantom
    ref = _plan(mask)
    ball = ndi.generate_binary_structure(3, 1)
    other = mask.with_data(ndi.binary_dilation(mask.data > 0, ball).astype(np.uint8))
    plans = _plan(other)
    reg = subregions(other)
    for a, b in zip(ref, plans):
        dc, dt, gap = _gap(a, b, subregions(mask).meta["frame"], reg.meta["frame"],
                           p.landmarks[f"pedicle_{a.side}"])
        assert dc <= 3.0 and dt <= 3.0 and gap <= 0.5, (a.side, dc, dt, gap)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            c = check_screw(other, b, reg)
        assert c.fraction_in_bone > 0.97 and c.tip_in_body and c.min_wall_mm > 0.0
