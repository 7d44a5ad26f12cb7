"""Label conventions told from the map itself: stored names, a JSON sidecar, or the values
present and their order along the spine (fesim/imaging/labels.py, convention "auto")."""

import json

import numpy as np
import pytest

from fesim.cli import build_parser
from fesim.imaging.labels import (LABEL_CONVENTIONS, Convention, LabelError, detect_convention,
                                  read_label_map, resolve_level_in_map)
from fesim.imaging.nifti import read_nifti, write_nifti
from fesim.imaging.segmentation import dice, mask_from_labels
from fesim.imaging.volume import Volume
from fesim.pipeline import RunOptions, segment
from fesim.synthetic.spine import TS_VALUES, SpineSpec, make_spine

# TotalSegmentator v2 -> VerSe: T11 33->18, T12 32->19, L1 31->20 ... L5 27->24 (S1 has none).
TS2_TO_VERSE = {33: 18, 32: 19, 31: 20, 30: 21, 29: 22, 28: 23, 27: 24}


def _relabel(vol: Volume, mapping: dict, names: dict | None = None) -> Volume:
    out = np.zeros_like(vol.data)
    for a, b in mapping.items():
        out[vol.data == a] = b
    meta = {k: v for k, v in vol.meta.items() if k != "label_names"}
    if names:
        meta["label_names"] = names
    return Volume(out, vol.spacing, vol.origin, vol.direction, meta)


def _flip_k(vol: Volume) -> Volume:
    """The same map stored with its slice axis reversed (same world geometry)."""
    d = vol.direction.copy()
    origin = vol.origin + d[:, 2] * vol.spacing[2] * (vol.shape[2] - 1)
    d[:, 2] *= -1
    return Volume(np.ascontiguousarray(vol.data[:, :, ::-1]), vol.spacing, origin, d, dict(vol.meta))


@pytest.fixture(scope="module")
def spine():
    return make_spine(SpineSpec(spacing_mm=(2.0, 2.0, 2.0), noise_hu=0.0))


def test_real_verse_and_totalseg_maps_of_l4_without_convention(real_data, tmp_path):
    ts = read_nifti(real_data / "example_ct_labels.nii.gz", kind="labels")
    verse_path = write_nifti(_relabel(ts, TS2_TO_VERSE), tmp_path / "verse.nii.gz", label_names={})
    verse = read_label_map(verse_path)
    assert "label_names" not in verse.meta
    # Before: TotalSegmentator numbering assumed, "label value(s) [28] not found".
    v_ts, how_ts = resolve_level_in_map("L4", read_label_map(real_data / "example_ct_labels.nii.gz"))
    v_verse, how_verse = resolve_level_in_map("L4", verse)
    assert v_ts == {28} and "names" in how_ts
    assert v_verse == {23} and "verse" in how_verse
    assert dice(mask_from_labels(ts, v_ts), mask_from_labels(verse, v_verse)) == 1.0
    # The same through the pipeline's segmentation stage (what `fesim run --labels` calls).
    ct = read_nifti(real_data / "example_ct.nii.gz")
    masks = []
    for path in (real_data / "example_ct_labels.nii.gz", verse_path):
        mask, _ = segment(ct, RunOptions(labels=str(path), level="L4"))
        assert mask.meta["label_values"] in ([28], [23])
        masks.append(mask.data)
        # the label's voxels, their surface placed by the partial-volume rule (refine_surface)
        assert abs(mask.meta["volume_ml"] / ((ts.data == 28).sum() * 27e-3) - 1.0) < 0.05
    assert np.array_equal(masks[0], masks[1])
    # Stored with the slice axis reversed: the order along the spine is in world coordinates.
    assert detect_convention(_flip_k(verse)).name == "verse"
    # A VerSe map given as TotalSegmentator is still refused (the override is an override).
    with pytest.raises(LabelError, match="L4"):
        resolve_level_in_map("L4", verse, "totalseg_v2")
    assert resolve_level_in_map("L4", verse, "verse")[0] == {23}


def test_ambiguous_maps_are_refused_naming_the_candidates(real_data):
    ts = read_nifti(real_data / "example_ct_labels.nii.gz", kind="labels")
    bare = _relabel(ts, {v: v for v in range(1, 60)})  # same values, names dropped
    # 26..33 read as S1..T11 (v2) or as T9..T2 (v1): both in spine order.
    with pytest.raises(LabelError, match="ambiguous") as err:
        detect_convention(bare)
    msg = str(err.value)
    assert "totalseg_v2 (26=S1 ... 33=T11)" in msg and "totalseg_v1 (26=T9 ... 33=T2)" in msg
    assert resolve_level_in_map("L4", bare, "totalseg_v2")[0] == {28}
    # One VerSe L4 alone: L4 in VerSe (and the per-level bodies), T12 in TotalSegmentator v1.
    single = _relabel(ts, {28: 23})
    with pytest.raises(LabelError) as err:
        resolve_level_in_map("L4", single)
    assert "verse = bodies_per_level (23=L4)" in str(err.value) and "totalseg_v1 (23=T12)" in str(err.value)
    # Values in the wrong order for every convention: nothing fits, each reason given.
    reversed_ts = _relabel(ts, {v: 61 - v for v in range(26, 34)})  # 35 = S1 ... 28 = T11
    with pytest.raises(LabelError, match="no known label convention fits") as err:
        detect_convention(reversed_ts)
    assert "run the other way" in str(err.value)


def test_phantom_maps_in_both_numberings(spine):
    # Without names: values up to 115 exist only in TotalSegmentator v2.
    bare = _relabel(spine.labels, {v: v for v in TS_VALUES.values()})
    det = detect_convention(bare)
    assert det.name == "totalseg_v2"
    l4_ts, _ = resolve_level_in_map("L4", bare)
    assert l4_ts == {28}
    verse = _relabel(spine.labels, TS2_TO_VERSE)  # vertebrae T12..L5 only
    l4_verse, how = resolve_level_in_map("L4", verse)
    assert l4_verse == {23} and "convention verse detected" in how
    assert dice(mask_from_labels(bare, l4_ts), mask_from_labels(verse, l4_verse)) == 1.0
    # Every level present resolves to its own voxels in both numberings.
    for lv in ("T12", "L1", "L2", "L3", "L5"):
        a = mask_from_labels(bare, resolve_level_in_map(lv, bare)[0])
        b = mask_from_labels(verse, resolve_level_in_map(lv, verse)[0])
        assert dice(a, b) == 1.0 and a.meta["volume_ml"] > 10
    with pytest.raises(LabelError, match="level S1 is not in the label map"):
        resolve_level_in_map("S1", verse)


def test_names_from_sidecar_and_placeholders(spine, tmp_path):
    verse = _relabel(spine.labels, TS2_TO_VERSE)
    path = write_nifti(verse, tmp_path / "seg.nii.gz", label_names={})
    # nnU-Net style sidecar (name -> value) with a number that no convention gives L4.
    odd = _relabel(spine.labels, {28: 7, 29: 9})
    write_nifti(odd, tmp_path / "odd.nii.gz", label_names={})
    (tmp_path / "odd.json").write_text(json.dumps({"labels": {"background": 0, "L4": 7, "L3": 9}}))
    vol = read_label_map(tmp_path / "odd.nii.gz")
    assert vol.meta["label_names"] == {7: "L4", 9: "L3"} and vol.meta["label_names_source"] == "odd.json"
    assert resolve_level_in_map("L4", vol) == ({7}, "label names stored with the map")
    # Placeholder names "L<value>" (TotalSegmentator's default without a label map) name nothing.
    write_nifti(verse, path, label_names={v: f"L{v}" for v in TS2_TO_VERSE.values()})
    assert resolve_level_in_map("L4", read_label_map(path))[0] == {23}
    # A table that names no vertebra is believed, not overridden by guessing from values.
    write_nifti(verse, path, label_names={23: "vertebrae_body", 22: "intervertebral_discs"})
    with pytest.raises(LabelError, match="names no vertebra"):
        resolve_level_in_map("L4", read_label_map(path))
    (tmp_path / "bad.json").write_text("{not json")
    write_nifti(verse, tmp_path / "bad.nii.gz", label_names={})
    with pytest.raises(LabelError, match="bad.json"):
        read_label_map(tmp_path / "bad.nii.gz")


def test_conventions_registry_drives_the_cli_and_options():
    parser = build_parser()
    args = parser.parse_args(["run", "ct.nii.gz", "--out", "o"])
    assert args.convention == "auto"
    assert parser.parse_args(["run", "ct.nii.gz", "--out", "o", "--convention", "total"]).convention == "totalseg_v2"
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "ct.nii.gz", "--out", "o", "--convention", "nonsense"])
    with pytest.raises(LabelError, match="unknown label convention"):
        RunOptions.from_dict({"convention": "nonsense"})
    conv = LABEL_CONVENTIONS.add(Convention("dummyconv", {60: "L4", 61: "L3"}, 70, "a test-only numbering"))
    try:
        sub = next(a for a in build_parser()._actions if a.dest == "command")
        text = " ".join(sub.choices["run"].format_help().split())
        assert "dummyconv: a test-only numbering" in text
        assert RunOptions.from_dict({"convention": "dummyconv"}).convention == "dummyconv"
        vol = Volume(np.zeros((4, 4, 40), np.uint8), (1.0, 1.0, 1.0))
        vol.data[:, :, 2:12], vol.data[:, :, 25:35] = 60, 61
        assert detect_convention(vol).name == conv.name
    finally:
        LABEL_CONVENTIONS.remove("dummyconv")


@pytest.mark.slow
def test_fesim_run_on_a_verse_map_without_convention(real_data, tmp_path, capsys):
    """`fesim run` end to end: the VerSe-numbered map gives the very result of the
    TotalSegmentator map (same voxels), without --convention."""
    from fesim.cli import main

    ts = read_nifti(real_data / "example_ct_labels.nii.gz", kind="labels")
    verse = write_nifti(_relabel(ts, TS2_TO_VERSE), tmp_path / "verse.nii.gz", label_names={})
    quick = ["--calibration", "internal", "--screws", "none", "--strength", "surrogate", "--order", "1",
             "--mesh-size", "3", "--no-vtk"]
    res = {}
    for name, labels in (("ts", real_data / "example_ct_labels.nii.gz"), ("verse", verse)):
        out = tmp_path / name
        assert main(["run", str(real_data / "example_ct.nii.gz"), "--labels", str(labels), "--level", "L4",
                     "--out", str(out), *quick]) == 0, capsys.readouterr().err
        res[name] = json.loads((out / "result.json").read_text())
    assert res["verse"]["compression_strength_N"] == pytest.approx(res["ts"]["compression_strength_N"], rel=1e-9)
    assert res["verse"]["n_elements"] == res["ts"]["n_elements"]
