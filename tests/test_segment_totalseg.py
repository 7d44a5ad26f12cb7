"""``fesim segment``: the optional TotalSegmentator route (fesim/imaging/totalseg.py).

TotalSegmentator itself is not installed in CI; its Python entry point is replaced by a
stand-in that segments the synthetic spine CT it is handed (bone threshold, each voxel to the
nearest vertebra centre, read from the NIfTI's RAS affine) and writes a multi-label NIfTI
with a Caret XML label table in a code-0 header extension, as TotalSegmentator's ``--ml``
output does. What is tested is fesim's side: the CT handed over in the right place and
orientation, the result read back, put on the CT grid, written, read by fesim's label reader
and its numbering detected.
"""

import sys
import types

import nibabel as nib
import numpy as np
import pytest

from fesim.cli import main
from fesim.errors import DependencyError, SegmentationError
from fesim.imaging.labels import read_label_map, resolve_level_in_map
from fesim.imaging.nifti import read_nifti, write_nifti
from fesim.imaging.segmentation import dice, mask_from_labels
from fesim.imaging.totalseg import SPINE_ROIS, segment_ct
from fesim.synthetic.spine import TS_VALUES, SpineSpec, make_spine

LEVELS = ("L2", "L3", "L4", "L5")


@pytest.fixture(scope="module")
def spine():
    return make_spine(SpineSpec(levels=LEVELS, sacrum=False, pelvis=False, ribs=False,
                                spacing_mm=(2.0, 2.0, 2.0), noise_hu=0.0))


def _caret_xml(names: dict) -> bytes:
    rows = "".join(f'<Label Key="{k}" Red="1" Green="0" Blue="0" Alpha="1"><![CDATA[{v}]]></Label>\n'
                   for k, v in sorted(names.items()))
    return (b'<?xml version="1.0" encoding="UTF-8"?> <CaretExtension> <VolumeInformation Index="0"> '
            b"<LabelTable>\n" + rows.encode() + b"</LabelTable> </VolumeInformation> </CaretExtension>")


def _fake_totalsegmentator(spine, calls, write=True):
    """A stand-in for ``totalsegmentator.python_api.totalsegmentator``."""
    centres = {TS_VALUES[f"vertebrae_{lv}"]: spine.poses[lv]["center"] for lv in LEVELS}

    def totalsegmentator(input, output, ml=False, task="total", fast=False, roi_subset=None,
                         device="gpu", **kw):
        calls.append(dict(input=input, output=output, ml=ml, task=task, fast=fast,
                          roi_subset=roi_subset, device=device, **kw))
        img = nib.load(input)
        hu = np.asarray(img.dataobj)
        ijk = np.argwhere(hu > 120.0)
        ras = ijk @ img.affine[:3, :3].T + img.affine[:3, 3]
        lps = ras * (-1.0, -1.0, 1.0)
        values = np.array(sorted(centres))
        dist = np.stack([np.linalg.norm(lps - centres[v], axis=1) for v in values], axis=1)
        near = dist.min(axis=1) < 55.0
        seg = np.zeros(hu.shape, np.uint8)
        seg[tuple(ijk[near].T)] = values[np.argmin(dist[near], axis=1)]
        out = nib.Nifti1Image(seg, img.affine)
        out.header.extensions.append(nib.nifti1.Nifti1Extension(
            0, _caret_xml({v: f"vertebrae_{lv}" for lv, v in
                           ((lv, TS_VALUES[f"vertebrae_{lv}"]) for lv in LEVELS)})))
        if write:
            nib.save(out, output)
        return out

    return totalsegmentator


def _install(monkeypatch, fn):
    pkg = types.ModuleType("totalsegmentator")
    api = types.ModuleType("totalsegmentator.python_api")
    api.totalsegmentator = fn
    pkg.python_api = api
    monkeypatch.setitem(sys.modules, "totalsegmentator", pkg)
    monkeypatch.setitem(sys.modules, "totalsegmentator.python_api", api)


def test_without_totalsegmentator_one_line_and_exit_2(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "totalsegmentator", None)  # import fails even where installed
    monkeypatch.setitem(sys.modules, "totalsegmentator.python_api", None)
    out = tmp_path / "labels.nii.gz"
    assert main(["segment", str(tmp_path / "missing_ct.nii.gz"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fesim: error: TotalSegmentator is not installed")
    assert "pip install 'fesim[totalseg]'" in err[0]
    assert not out.exists()
    with pytest.raises(DependencyError):
        segment_ct(make_spine(SpineSpec(levels=("L4",), sacrum=False, pelvis=False,
                                        spacing_mm=(3.0, 3.0, 3.0))).hu)


def test_segment_with_a_stand_in_writes_a_readable_map(spine, monkeypatch, tmp_path, capsys):
    calls = []
    _install(monkeypatch, _fake_totalsegmentator(spine, calls))
    # The CT stored with a reversed slice axis (left-handed NIfTI): the map must come back on
    # the grid fesim reads for it.
    ct = spine.hu
    d = ct.direction.copy()
    origin = ct.origin + d[:, 2] * ct.spacing[2] * (ct.shape[2] - 1)
    d[:, 2] *= -1
    from fesim.imaging.volume import Volume
    flipped = Volume(np.ascontiguousarray(ct.data[:, :, ::-1]), ct.spacing, origin, d, dict(ct.meta))
    ct_path = write_nifti(flipped, tmp_path / "ct.nii.gz")
    out = tmp_path / "seg" / "labels.nii.gz"
    assert main(["segment", str(ct_path), "--out", str(out), "--device", "cpu", "--fast"]) == 0
    text = capsys.readouterr().out
    assert "vertebrae L2, L3, L4, L5" in text and "--labels" in text
    (call,) = calls
    assert call["ml"] is True and call["task"] == "total" and call["fast"] is True
    assert call["device"] == "cpu" and call["roi_subset"] == list(SPINE_ROIS)
    # Written, readable by fesim's label reader, names kept, numbering told from them.
    labels = read_label_map(out)
    ct_back = read_nifti(ct_path)
    assert labels.same_grid(ct_back) and labels.meta["label_names"][28] == "vertebrae_L4"
    values, how = resolve_level_in_map("L4", labels)
    assert values == {28} and "names" in how
    # The stand-in's L4 lands on the true L4 of the phantom (orientation kept end to end).
    truth = Volume(np.ascontiguousarray(spine.labels.data[:, :, ::-1]), ct.spacing, origin, d)
    assert dice(mask_from_labels(labels, values), truth.data == 28) > 0.85
    assert main(["segment", str(ct_path), "--out", str(tmp_path / "all.nii.gz"), "--all-classes"]) == 0
    assert calls[-1]["roi_subset"] is None and calls[-1]["device"] == "gpu"


def test_failures_of_totalsegmentator_are_reported(spine, monkeypatch, tmp_path):
    def broken(input, output, **kw):
        raise RuntimeError("CUDA out of memory")

    _install(monkeypatch, broken)
    with pytest.raises(SegmentationError, match="TotalSegmentator failed: RuntimeError: CUDA out of memory"):
        segment_ct(spine.hu, workdir=tmp_path)
    _install(monkeypatch, _fake_totalsegmentator(spine, [], write=False))
    with pytest.raises(SegmentationError, match="wrote no label map"):
        segment_ct(spine.hu, workdir=tmp_path)
    assert list(tmp_path.iterdir()) == []  # temporary files removed
