"""Level counting on the multi-level spine phantom (fesim.synthetic.spine): no real data needed.

The spine phantom is generated on an axis-aligned grid only; the other poses of the imaging
tests (tests/test_imaging_orientation.py) are given to it by storing the same voxels with
permuted and flipped axes.
"""

import numpy as np
import pytest

from fesim.imaging import vertebrae as vt
from fesim.imaging.segmentation import dice
from fesim.pipeline import RunOptions, segment
from fesim.synthetic.spine import TS_VALUES, SpineSpec, make_spine
from test_imaging_orientation import _reorient

LUMBAR = ("L1", "L2", "L3", "L4", "L5")
# Same-voxel reorientations (perm, flip) of the imaging tests' poses.
POSES = {"identity": ((0, 1, 2), (False, False, False)),
         "swap_xy": ((1, 0, 2), (False, False, False)),
         "sagittal_flipped": ((2, 0, 1), (True, False, True)),
         "flip_x": ((0, 1, 2), (True, False, False)),
         "flip_z": ((0, 1, 2), (False, False, True)),
         "swap_xy_flip_z": ((1, 0, 2), (False, False, True))}
VARIANTS = {"full": {}, "no_pelvis": dict(pelvis=False), "no_ribs": dict(ribs=False)}


@pytest.fixture(scope="module")
def spines3():
    """The spine at 3 mm (as the real CT), in each variant."""
    return {k: make_spine(SpineSpec(seed=2, spacing_mm=(3.0, 3.0, 3.0), **kw)) for k, kw in VARIANTS.items()}


def _check_levels(levels, labels, min_dice=0.85):
    out = {}
    for name in LUMBAR:
        lv = levels[name]
        own = labels == TS_VALUES[f"vertebrae_{name}"]
        overlap = {k: int(np.count_nonzero((lv.mask.data > 0) & (labels == TS_VALUES[f"vertebrae_{k}"])))
                   for k in ("T12",) + LUMBAR + ("S1",)}
        assert max(overlap, key=overlap.get) == name, (name, overlap)
        out[name] = dice(lv.mask, own)
        assert out[name] >= min_dice, (name, out[name])
        assert not lv.info["truncated"]
    return out


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_levels_found_at_3mm(spines3, variant):
    ph = spines3[variant]
    levels = vt.identify_vertebrae(ph.hu)
    _check_levels(levels, ph.labels.data)
    marks = set(levels["L4"].info["landmarks"])
    assert "sacrum" in marks or variant != "no_ribs"
    assert ("T12 ribs" in marks) == (variant != "no_ribs")
    assert levels["L4"].confidence >= 0.5


@pytest.mark.parametrize("pose", [p for p in POSES if p != "identity"])
def test_levels_found_in_each_pose(spines3, pose):
    ph = spines3["full"]
    perm, flip = POSES[pose]
    hu, lab = _reorient(ph.hu, perm, flip), _reorient(ph.labels, perm, flip)
    _check_levels(vt.identify_vertebrae(hu), lab.data)


def test_l4_through_the_pipeline_and_checked(spines3):
    ph = spines3["no_ribs"]
    mask, labels = segment(ph.hu, RunOptions(level="L4"), hu=ph.hu)
    assert labels is None and mask.meta["identified"] == "auto"
    assert dice(mask, ph.labels.data == TS_VALUES["vertebrae_L4"]) >= 0.85
    assert vt.check_vertebra_mask(mask, "L4", "auto") == []


def test_without_sacrum_and_ribs_refused_with_reason():
    ph = make_spine(SpineSpec(seed=2, spacing_mm=(3.0, 3.0, 3.0), sacrum=False, pelvis=False, ribs=False))
    why = r"neither the sacrum \(its lowest segment .* is not a sacrum\) nor a rib-bearing vertebra \(T12\)"
    with pytest.raises(vt.VertebraIdentificationError, match=why):
        vt.identify_vertebrae(ph.hu)
    with pytest.raises(vt.VertebraIdentificationError, match="neither the sacrum"):
        segment(ph.hu, RunOptions(level="L3"), hu=ph.hu)


def test_sacrum_cut_by_border_without_ribs_refused():
    ph = make_spine(SpineSpec(seed=2, spacing_mm=(3.0, 3.0, 3.0), pelvis=False, ribs=False))
    with pytest.raises(vt.VertebraIdentificationError, match="cut by the image border"):
        vt.isolate_level(ph.hu, "L4")


def test_seed_point_isolates_seeded_vertebra():
    ph = make_spine(SpineSpec(seed=2, spacing_mm=(3.0, 3.0, 3.0), sacrum=False, pelvis=False, ribs=False))
    lab = ph.labels.data
    for name in LUMBAR:
        truth = lab == TS_VALUES[f"vertebrae_{name}"]
        seed = ph.poses[name]["center"]  # the body's centre, LPS mm
        mask, _ = segment(ph.hu, RunOptions(seed_point=tuple(seed)), hu=ph.hu)
        others = np.count_nonzero((mask.data > 0) & (lab > 0) & ~truth)
        assert np.count_nonzero((mask.data > 0) & truth) > 10 * others, (name, others)
        assert dice(mask, truth) >= 0.85, name


@pytest.mark.slow
def test_levels_found_at_1mm():
    """1 mm: about 30 s (10 s phantom, 20 s identification) on the shared VM."""
    ph = make_spine(SpineSpec(seed=3))
    _check_levels(vt.identify_vertebrae(ph.hu), ph.labels.data)
