"""Vertebra identification without labels, the seed-point route and the check on every mask."""

import time
import warnings

import numpy as np
import pytest

from fesim.imaging import vertebrae as vt
from fesim.imaging.nifti import read_nifti
from fesim.imaging.segmentation import dice, mask_from_labels
from fesim.imaging.volume import Volume
from fesim.pipeline import RunOptions, segment
from fesim.synthetic.phantom import PhantomSpec, make_phantom

TOTALSEG = {"S1": 26, "L5": 27, "L4": 28, "L3": 29, "L2": 30, "L1": 31, "T12": 32}


@pytest.fixture(scope="module")
def real():
    from conftest import real_data_dir

    d = real_data_dir()
    return read_nifti(d / "example_ct.nii.gz", kind="ct"), read_nifti(d / "example_ct_labels.nii.gz", kind="labels")


def test_real_lumbar_levels_identified(real):
    ct, lab = real
    t0 = time.perf_counter()
    levels = vt.identify_vertebrae(ct)
    dt = time.perf_counter() - t0
    for name in ("L1", "L2", "L3", "L4", "L5"):
        lv = levels[name]
        truth = lab.data == TOTALSEG[name]
        # the right level: the mask overlaps its own label more than any other
        overlap = {k: int(np.count_nonzero((lv.mask.data > 0) & (lab.data == v))) for k, v in TOTALSEG.items()}
        assert max(overlap, key=overlap.get) == name, (name, overlap)
        d = dice(lv.mask, truth)
        print(f"{name}: Dice {d:.3f} confidence {lv.confidence:.2f} volume {lv.volume_ml:.1f} ml")
        assert d >= 0.85, (name, d)
        assert lv.confidence >= 0.5
        assert set(lv.info["landmarks"]) == {"sacrum", "T12 ribs"}
        assert not vt.check_vertebra_mask(lv.mask, name, "auto")
    print(f"identify_vertebrae: {dt:.1f} s")


def test_real_l4_without_neighbours_articular_processes_and_same_screw(real):
    """The cause of the pullout gap of the automatic L4 (docs/identification.md): L3's and
    L5's articular processes in its mask (193 voxels at commit 5c6aab3) moved the planned
    screw 5.8 degrees from the label map's plan."""
    from fesim.imaging.segmentation import subregions
    from fesim.pipeline import plan

    ct, lab = real
    auto = vt.isolate_level(ct, "L4")
    neighbours = int(np.count_nonzero((auto.data > 0) & np.isin(lab.data, [TOTALSEG["L3"], TOTALSEG["L5"]])))
    assert neighbours <= 120, neighbours
    opts = RunOptions(level="L4", screws="left")
    ref = mask_from_labels(lab, [TOTALSEG["L4"]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a, b = (plan(m, subregions(m), opts)[0] for m in (auto, ref))
    cos = float(np.dot(a.direction, b.direction) / np.linalg.norm(a.direction) / np.linalg.norm(b.direction))
    angle = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
    print(f"L3/L5 voxels in the automatic L4: {neighbours}; screw {angle:.1f} deg from the label map's")
    assert angle <= 4.0
    assert np.linalg.norm(a.entry - b.entry) <= 3.0


def _crop(v, k0, k1):
    return Volume(v.data[:, :, k0:k1].copy(), v.spacing, v.index_to_world(np.array([0, 0, k0])),
                  v.direction, dict(v.meta))


def test_real_cropped_without_sacrum_and_ribs_refused(real):
    crop = _crop(real[0], 60, 100)  # L4 to L1: neither the sacrum nor a rib-bearing vertebra in view
    why = "neither the sacrum .* nor a rib-bearing vertebra"
    with pytest.raises(vt.VertebraIdentificationError, match=why):
        vt.isolate_level(crop, "L3")
    with pytest.raises(vt.VertebraIdentificationError, match=why):
        segment(crop, RunOptions(level="L3"), hu=crop)


def test_real_counted_from_t12_without_sacrum(real):
    ct, lab = (_crop(v, 50, 112) for v in real)  # mid-L5 to the top: the ribs of T12, no sacrum
    levels = vt.identify_vertebrae(ct)
    assert levels["T12"].info["rib_bearing"]
    assert levels["T12"].info["landmarks"] == ["T12 ribs"]
    for name in ("L2", "L3"):
        assert dice(levels[name].mask, lab.data == TOTALSEG[name]) >= 0.85
    with pytest.raises(vt.VertebraIdentificationError, match="cut by the image border"):
        vt.isolate_level(ct, "L5")


def test_real_seed_point_isolates_that_vertebra(real):
    ct, lab = real
    truth = lab.data == TOTALSEG["L3"]
    seed = ct.index_to_world(np.argwhere(truth).mean(axis=0))
    mask, _ = segment(ct, RunOptions(seed_point=tuple(seed)), hu=ct)
    overlap = {k: int(np.count_nonzero((mask.data > 0) & (lab.data == v))) for k, v in TOTALSEG.items()}
    assert max(overlap, key=overlap.get) == "L3"
    assert dice(mask, truth) >= 0.75


def test_real_label_masks_pass_the_check_and_a_union_is_refused(real):
    _, lab = real
    for name in ("L1", "L2", "L3", "L4", "L5"):
        assert vt.check_vertebra_mask(mask_from_labels(lab, [TOTALSEG[name]]), name, "labels") == []
    lumbar = lab.with_data(np.isin(lab.data, [27, 28, 29, 30, 31]).astype(np.uint8), units="label")
    with pytest.raises(vt.MaskCheckError, match="implausible volume"):
        vt.check_vertebra_mask(lumbar, "L4")


@pytest.fixture(scope="module")
def phantom_nb():
    return make_phantom(PhantomSpec(neighbours=True))


def test_phantom_seed_point_isolates_seeded_vertebra(phantom_nb):
    p = phantom_nb
    for value in (1, 2, 3):  # L4, L3, L5
        truth = p.labels.data == value
        seed = p.hu.index_to_world(np.argwhere(truth).mean(axis=0))
        mask = vt.isolate_at_seed(p.hu, seed)
        own = np.count_nonzero((mask.data > 0) & truth)
        others = np.count_nonzero((mask.data > 0) & (p.labels.data > 0) & (p.labels.data != value) & (p.labels.data != 4))
        assert own > 5 * others, (value, own, others)
        assert dice(mask, truth) >= 0.8


def test_phantom_with_neighbours_and_no_landmark_refused(phantom_nb):
    with pytest.raises(vt.VertebraIdentificationError, match="neither the sacrum"):
        segment(phantom_nb.hu, RunOptions(level="L4"), hu=phantom_nb.hu)


def test_single_vertebra_phantom_taken_as_level_with_warning():
    p = make_phantom(PhantomSpec())
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        mask, labels = segment(p.hu, RunOptions(level="L4"), hu=p.hu)
    assert labels is None
    assert any("single vertebra" in str(x.message) for x in w)
    assert dice(mask, p.labels.data == 1) >= 0.9


def test_check_refuses_two_bones_and_missing_pedicles():
    p = make_phantom(PhantomSpec(neighbours=True, noise_hu=0))
    two = p.labels.with_data(np.isin(p.labels.data, [1, 2]).astype(np.uint8), units="label")
    with pytest.raises(vt.MaskCheckError, match="not one vertebra|implausible volume"):
        vt.check_vertebra_mask(two, "L4")
    body_only = p.labels.with_data(np.isin(p.regions.data, [1, 2]).astype(np.uint8), units="label")
    with pytest.raises(vt.MaskCheckError, match="pedicle"):
        vt.check_vertebra_mask(body_only, "L4")
    assert vt.check_vertebra_mask(p.labels.with_data((p.labels.data == 1).astype(np.uint8)), "L4") == []


def test_cli_seed_point_flag():
    from fesim.cli import build_parser

    args = build_parser().parse_args(["run", "scan", "--out", "o", "--seed-point", "1,-2.5,30"])
    assert args.seed_point == (1.0, -2.5, 30.0)


@pytest.mark.slow
def test_real_l4_strengths_without_labels_match_the_label_map(tmp_path):
    """fesim run at L4 without labels against the label map (coarse: 3 mm mesh, screening,
    one screw; about 5-10 min): both within 5 %. Measured -1.4 % compression, -3.1 % pullout
    since every mask's surface is placed by one partial-volume rule
    (fesim.imaging.segmentation.refine_surface); before it -1.1 % and +10.8 %: the label map
    kept a low-density rim (median 111 HU) at the body's posterior wall that the
    identification trims, and that rim alone moved the pullout by 13 % with the same screw
    and supports (docs/identification.md)."""
    from conftest import real_data_dir
    from fesim.pipeline import run_scan

    d = real_data_dir()
    opts = dict(level="L4", calibration="internal", mesh_size_mm=3.0, strength_accuracy="screening",
                screws="left", write_vtk=False)
    auto = run_scan(d / "example_ct.nii.gz", tmp_path / "auto", **opts)
    ref = run_scan(d / "example_ct.nii.gz", tmp_path / "labels", labels=str(d / "example_ct_labels.nii.gz"), **opts)
    rel = {k: auto[k] / ref[k] - 1.0 for k in ("compression_strength_N", "pullout_strength_N")}
    print({k: f"{v:+.1%}" for k, v in rel.items()})
    assert abs(rel["compression_strength_N"]) <= 0.05
    assert abs(rel["pullout_strength_N"]) <= 0.05
