"""Property-based fuzzing of the DICOM reader, the NIfTI reader and the manifest parser (issue 14).

From valid seeds (a small CT series, a small NIfTI image, a valid manifest) hypothesis mutates
tags, header bytes and file lengths. The property: the reader returns a usable result or
raises a :class:`~fesim.errors.FesimError` -- never another exception (which the CLI would
report as "internal error"). Bounded (``max_examples``, ``deadline``) so that the three run
in well under 3 minutes on 2 cores; crashes found are kept as explicit regression tests at
the end of this file.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings, strategies as st  # noqa: E402

from fesim.errors import FesimError  # noqa: E402
from fesim.imaging.dicom import read_dicom_series  # noqa: E402
from fesim.imaging.dicom_write import write_dicom_series  # noqa: E402
from fesim.imaging.nifti import read_nifti  # noqa: E402
from fesim.imaging.volume import Volume  # noqa: E402
from fesim.study.cohort import load_manifest  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

#: Examples per fuzz test; CI uses the default, a longer local campaign sets FESIM_FUZZ_EXAMPLES.
N_EXAMPLES = int(os.environ.get("FESIM_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=N_EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])


def _seed_series() -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(1)
    vol = Volume(rng.normal(0, 200, (12, 10, 6)).astype(np.float32), (0.8, 0.8, 1.0), np.zeros(3),
                 np.eye(3), {})
    with tempfile.TemporaryDirectory() as d:
        paths = write_dicom_series(vol, d, uid_key="fuzz")
        return [(p.name, p.read_bytes()) for p in paths]


SERIES = _seed_series()

#: Tags the reader interprets, with the value kinds fuzzed into them.
TAGS = ("Rows", "Columns", "PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient",
        "RescaleSlope", "RescaleIntercept", "Modality", "SeriesInstanceUID", "SOPClassUID",
        "BitsAllocated", "SamplesPerPixel", "NumberOfFrames", "PixelData", "SliceThickness",
        "PixelRepresentation", "PhotometricInterpretation", "TransferSyntaxUID")
VALUES = st.one_of(
    st.none(),
    st.integers(-2 ** 31, 2 ** 32),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6)), max_size=7),
    st.binary(max_size=64),
)


def _set_tag(ds, tag, value):
    target = ds.file_meta if tag == "TransferSyntaxUID" else ds
    if value is None:
        if tag in target:
            delattr(target, tag)
        return
    try:
        setattr(target, tag, value)
    except Exception:  # pydicom refuses some values outright: keep the file as it was
        pass


def _write(folder: Path, files):
    for name, data in files:
        (folder / name).write_bytes(data)


def _check_read(folder: Path):
    try:
        vol = read_dicom_series(folder)
    except FesimError as exc:
        event(f"refused: {type(exc).__name__}")
        return
    event("read")
    assert np.all(np.isfinite(vol.data)) and np.all(vol.spacing > 0)


@FUZZ
@given(k=st.integers(0, len(SERIES) - 1), edits=st.lists(st.tuples(st.sampled_from(TAGS), VALUES),
                                                          min_size=1, max_size=3),
       all_files=st.booleans())
def test_fuzz_dicom_tags(k, edits, all_files):
    files = list(SERIES)
    targets = range(len(files)) if all_files else [k]
    for i in targets:
        ds = pydicom.dcmread(io.BytesIO(files[i][1]))
        for tag, value in edits:
            _set_tag(ds, tag, value)
        buf = io.BytesIO()
        try:
            ds.save_as(buf, enforce_file_format=False)
        except Exception:  # the mutated dataset cannot even be written: nothing to read
            return
        files[i] = (files[i][0], buf.getvalue())
    with tempfile.TemporaryDirectory() as d:
        _write(Path(d), files)
        _check_read(Path(d))


@FUZZ
@given(k=st.integers(0, len(SERIES) - 1),
       flips=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=8),
       cut=st.one_of(st.none(), st.integers(0, 50000)))
def test_fuzz_dicom_bytes(k, flips, cut):
    files = list(SERIES)
    data = bytearray(files[k][1])
    for pos, val in flips:
        if pos < len(data):
            data[pos] = val
    if cut is not None:
        data = data[:cut]
    files[k] = (files[k][0], bytes(data))
    with tempfile.TemporaryDirectory() as d:
        _write(Path(d), files)
        _check_read(Path(d))


def _seed_nifti(labels: bool) -> bytes:
    rng = np.random.default_rng(2)
    data = rng.integers(0, 4, (6, 5, 4)).astype(np.uint8) if labels else \
        rng.normal(-300, 300, (6, 5, 4)).astype(np.float32)
    img = nib.Nifti1Image(data, np.diag([0.8, 0.8, 1.5, 1.0]))
    return img.to_bytes()


NIFTI = {False: _seed_nifti(False), True: _seed_nifti(True)}


@FUZZ
@given(labels=st.booleans(),
       flips=st.lists(st.tuples(st.integers(0, 351), st.integers(0, 255)), min_size=1, max_size=6),
       cut=st.one_of(st.none(), st.integers(0, 1000)))
def test_fuzz_nifti_header(labels, flips, cut):
    data = bytearray(NIFTI[labels])
    for pos, val in flips:
        data[pos] = val
    if cut is not None:
        data = data[:cut]
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "img.nii"
        p.write_bytes(bytes(data))
        try:
            vol = read_nifti(p, kind="labels" if labels else "ct")
        except FesimError:
            return
        assert vol.data.ndim == 3 and np.all(vol.spacing > 0)


MANIFEST_CELLS = st.one_of(st.sampled_from(["P1", "P2", "0", "12", "a.nii", "../a.nii", "/etc/passwd",
                                            "", "0.8", "-1", "nan", "..", "P1/../x", "\"", ","]),
                           st.text(max_size=10))


@FUZZ
@given(header=st.lists(st.sampled_from(["patient", "month", "path", "dxa_abmd_g_cm2", "site", "",
                                        " patient", "PATH"]), min_size=0, max_size=5),
       rows=st.lists(st.lists(MANIFEST_CELLS, max_size=6), max_size=4),
       raw=st.one_of(st.none(), st.binary(max_size=80)))
def test_fuzz_manifest(header, rows, raw):
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        (d / "a.nii").write_bytes(b"x")
        text = "\n".join(",".join(r) for r in [header, *rows]).encode("utf-8", "surrogatepass") \
            if raw is None else raw
        (d / "m.csv").write_bytes(text)
        try:
            scans = load_manifest(d / "m.csv")
        except FesimError:
            return
        for s in scans:  # what is accepted stays inside the study folder
            assert Path(s["path"]).resolve().is_relative_to(d.resolve())


# --- crashes found by the fuzzers, kept as regression tests ---------------------------------

def _series_with(edit):
    files = list(SERIES)
    ds = pydicom.dcmread(io.BytesIO(files[2][1]))
    edit(ds)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=False)
    files[2] = (files[2][0], buf.getvalue())
    return files


@pytest.mark.parametrize("edit", [
    lambda ds: setattr(ds, "RescaleSlope", ["1", "2"]),        # multi-valued DS: TypeError in float()
    lambda ds: setattr(ds, "Rows", None),                      # empty US
    lambda ds: setattr(ds, "ImageOrientationPatient", ["0"] * 6),  # zero normal: division by zero
    lambda ds: setattr(ds.file_meta, "TransferSyntaxUID", ""),  # found: str has no .is_compressed
    lambda ds: setattr(ds, "PixelData", ""),                   # found: len(None) in the size check
    lambda ds: setattr(ds, "RescaleSlope", 2.350016337931741e+35),  # found: float32 overflow to inf HU
])
def test_fuzz_regressions(edit, tmp_path):
    _write(tmp_path, _series_with(edit))
    with pytest.raises(FesimError):
        read_dicom_series(tmp_path)


@pytest.mark.parametrize("flips", [
    [(1103, 0)],              # found: SamplesPerPixel's VR becomes 'U\\0' (NotImplementedError, pixel stage)
    [(163, 76), (672, 0)],    # found: the same in the file meta, when looking for a truncated CT file
])
def test_fuzz_regression_bad_vr_byte(flips, tmp_path):
    files = list(SERIES)
    data = bytearray(files[0][1])
    for pos, val in flips:
        data[pos] = val
    files[0] = (files[0][0], bytes(data))
    _write(tmp_path, files)
    with pytest.raises(FesimError):
        read_dicom_series(tmp_path)
