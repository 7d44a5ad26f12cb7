"""Traditional screws on every lumbar level of the real CT, and one-line reasons when a screw cannot fit."""

import warnings

import numpy as np
import pytest

from fesim.errors import ScrewPlanError
from fesim.imaging.nifti import read_nifti
from fesim.synthetic.phantom import PhantomSpec, make_phantom
from fesim.imaging.planning import _angles, check_screw, plan_screws
from fesim.imaging.segmentation import mask_from_labels, subregions

LEVELS = {"L1": 31, "L2": 30, "L3": 29, "L4": 28, "L5": 27}  # TotalSegmentator v2


@pytest.fixture(scope="module")
def real_labels():
    from conftest import real_data_dir

    return read_nifti(real_data_dir() / "example_ct_labels.nii.gz", kind="labels")


@pytest.fixture(scope="module")
def phantom():
    p = make_phantom(PhantomSpec(rods_mg_cm3=None, noise_hu=0.0))
    mask = p.labels.with_data((p.labels.data == 1).astype(np.uint8))
    return mask, subregions(mask)


@pytest.mark.parametrize("level", list(LEVELS))
def test_traditional_screws_at_full_length_on_real_levels(real_labels, level):
    mask = mask_from_labels(real_labels, {LEVELS[level]})
    reg = subregions(mask)
    frame = reg.meta["frame"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plans = plan_screws(mask, reg, trajectory="traditional")
    assert not [w for w in caught if "shortened" in str(w.message)]
    assert [s.side for s in plans] == ["left", "right"]
    for s in plans:
        assert s.length_mm == 40.0 and s.diameter_mm == 6.5
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # breaches within the 3 mm voxel uncertainty
            c = check_screw(mask, s, reg)
        # in the vertebra except the head exposure, shank within half a voxel of the wall
        assert c.fraction_in_bone > 0.97 and c.max_outside_mm <= 1.5 and c.min_wall_mm > -1.5
        assert c.tip_in_body
        # through the pedicle of its own side
        t = np.arange(0.0, s.length_mm, 0.5)
        codes = reg.sample(s.entry + t[:, None] * s.direction, order=0, cval=0).astype(int)
        # (at 3 mm voxels the labelled pedicle is short: the body region reaches into it)
        assert np.count_nonzero(codes[:40] == (3 if s.side == "left" else 4)) * 0.5 >= 2.0
        assert not np.any(codes == (4 if s.side == "left" else 3))
        conv, tilt = _angles(s.direction, frame, s.side)
        assert 0.0 <= conv <= 35.0 and abs(tilt) <= 15.0
        # enters behind the body, and the bone ahead of the tip is the ~5-10 mm a 40 mm screw leaves
        assert (s.entry - frame["body_center"]) @ frame["ap_axis"] < -15.0
        ahead = np.arange(s.length_mm, s.length_mm + 30.0, 0.5)
        in_bone = mask.sample(s.entry + ahead[:, None] * s.direction, order=0, cval=0) > 0
        assert 2.0 <= np.argmin(in_bone) * 0.5 <= 20.0


def test_too_long_screw_says_what_limits_it(phantom):
    mask, reg = phantom
    with pytest.warns(UserWarning, match=r"left traditional screw shortened from 80 to .* anterior cortex") as rec:
        plans = plan_screws(mask, reg, sides=("left",), length_mm=80.0)
    msg = next(str(w.message) for w in rec if "shortened" in str(w.message))
    assert "\n" not in msg
    assert 30.0 < plans[0].length_mm < 80.0
    assert f"beyond {plans[0].length_mm:.1f} mm" in msg
    # more than twice what fits: no acceptable screw
    with pytest.raises(ScrewPlanError, match=r"no right traditional screw of 6.5 x 120 mm fits .*: "
                                             r"beyond .* mm its tip would come within 2 mm of the anterior cortex"):
        plan_screws(mask, reg, sides=("right",), length_mm=120.0)


def test_pedicle_narrower_than_screw_is_named(phantom):
    mask, reg = phantom
    with pytest.raises(ScrewPlanError) as err:
        plan_screws(mask, reg, sides=("left",), diameter_mm=14.0)
    msg = str(err.value)
    assert "\n" not in msg
    assert "left pedicle is at most" in msg and "narrower than the 14 mm screw" in msg
    width = float(msg.split("at most ")[1].split(" mm")[0])
    assert 5.0 < width < 14.0
