"""Malformed-input corpus (issue 14): every bad input -> a specific exception, one CLI line, exit 2.

Each case is generated here from a valid phantom series (no committed binaries). For every
case the CLI is run twice in-process: with ``--debug`` (the exception escapes, so its type
and message are checked) and without (exactly one ``fesim: error:`` line naming the defect,
exit code 2, no traceback, no "internal error"). Cases that exercise model stages below the
CLI (degenerate mesh, unconstrained model, non-converging solve) call the stage directly.
"""

from __future__ import annotations

import os
import resource
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from fesim import errors as E
from fesim.cli import main
from fesim.synthetic.phantom import PhantomSpec, make_phantom, write_phantom

FAST = ["--mesh-size", "3", "--screw-mesh-size", "1.5", "--order", "1", "--strength", "surrogate",
        "--no-vtk", "--screws", "none"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A valid phantom (DICOM series + label map) that each case copies and breaks."""
    root = tmp_path_factory.mktemp("corpus_base")
    write_phantom(make_phantom(PhantomSpec(seed=11)), root / "ph")
    return root / "ph"


def _series(base, tmp, fn=None, name="dicom"):
    """Fresh copy of the series; ``fn(files)`` edits it. Returns the folder."""
    d = tmp / name
    shutil.copytree(base / "dicom", d)
    if fn is not None:
        fn(sorted(d.iterdir()))
    return d


def _edit_all(files, fn):
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        fn(k, ds)
        ds.save_as(f)


def _edit_one(f, fn):
    ds = pydicom.dcmread(f)
    fn(ds)
    ds.save_as(f)


def _set(**tags):
    def fn(ds):
        for k, v in tags.items():
            setattr(ds, k, v)
    return fn


def _nifti(tmp, data, affine=None, name="ct.nii.gz"):
    p = tmp / name
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), str(p))
    return p


def _ct_block():
    rng = np.random.default_rng(0)
    return (rng.normal(0, 50, (20, 20, 20)) - 500).astype(np.float32)


def _manifest(tmp, text, scan=True):
    study = tmp / "study"
    study.mkdir()
    if scan:
        (study / "a.nii.gz").write_bytes(b"x")
    p = study / "m.csv"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return ["cohort", str(p)]


# --- DICOM -----------------------------------------------------------------------------

def c_truncated_pixels(base, tmp):
    d = _series(base, tmp)
    f = sorted(d.iterdir())[10]
    f.write_bytes(f.read_bytes()[:-20000])
    return ["run", str(d)], f.name


def c_truncated_header(base, tmp):
    d = _series(base, tmp)
    f = sorted(d.iterdir())[10]
    f.write_bytes(f.read_bytes()[:300])
    return ["run", str(d)], f.name


def c_no_pixel_data(base, tmp):
    d = _series(base, tmp)
    f = sorted(d.iterdir())[7]
    _edit_one(f, lambda ds: delattr(ds, "PixelData"))
    return ["run", str(d)], f.name


def _all(**tags):
    def case(base, tmp):
        d = _series(base, tmp, lambda fs: _edit_all(fs, lambda k, ds: _set(**tags)(ds)))
        return ["run", str(d)], "slice_0001.dcm"
    return case


def _one(k, **tags):
    def case(base, tmp):
        d = _series(base, tmp)
        f = sorted(d.iterdir())[k]
        _edit_one(f, _set(**tags))
        return ["run", str(d)], f.name
    return case


def c_wrong_modality(base, tmp):
    def mr(k, ds):
        ds.Modality = "MR"
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    d = _series(base, tmp, lambda fs: _edit_all(fs, mr))
    return ["run", str(d)], "MR"


def c_mixed_series(base, tmp):
    d = tmp / "two"
    _series(base, d, name="a")
    _series(base, d, lambda fs: _edit_all(fs, lambda k, ds: _set(SeriesInstanceUID="1.2.3.4.5")(ds)), "b")
    return ["run", str(d)], "1.2.3.4.5"


def c_duplicate_slice(base, tmp):
    d = _series(base, tmp)
    f = sorted(d.iterdir())[20]
    shutil.copy(f, d / "copy_of_slice.dcm")
    return ["run", str(d)], "copy_of_slice.dcm"


def c_missing_slice(base, tmp):
    d = _series(base, tmp)
    sorted(d.iterdir())[20].unlink()
    return ["run", str(d)], "slice_0020.dcm"


def c_uneven_spacing(base, tmp):
    d = _series(base, tmp)
    f = sorted(d.iterdir())[20]
    _edit_one(f, lambda ds: setattr(ds, "ImagePositionPatient",
                                    [*ds.ImagePositionPatient[:2], float(ds.ImagePositionPatient[2]) + 0.3]))
    return ["run", str(d)], "uneven"


def c_gantry_tilt(base, tmp):
    def tilt(k, ds):
        p = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [p[0], p[1] + 0.3 * k, p[2]]
    d = _series(base, tmp, lambda fs: _edit_all(fs, tilt))
    return ["run", str(d)], "slice_0001.dcm"


def c_mixed_matrix(base, tmp):
    d = _series(base, tmp)
    f = sorted(d.iterdir())[12]

    def smaller(ds):
        arr = ds.pixel_array[:-10]
        ds.Rows, ds.PixelData = arr.shape[0], arr.tobytes()
    _edit_one(f, smaller)
    return ["run", str(d)], f.name


def c_single_slice(base, tmp):
    d = tmp / "one"
    d.mkdir()
    shutil.copy(sorted((base / "dicom").iterdir())[5], d / "only.dcm")
    return ["run", str(d)], "only.dcm"


def c_broken_link(base, tmp):
    d = _series(base, tmp)
    (d / "dangling.dcm").symlink_to(tmp / "nowhere.dcm")
    return ["run", str(d)], "dangling.dcm"


def c_link_loop_file(base, tmp):
    d = _series(base, tmp)
    (d / "loop.dcm").symlink_to(d / "loop.dcm")
    return ["run", str(d)], "loop.dcm"


def c_link_loop_input(base, tmp):
    (tmp / "scanloop").symlink_to(tmp / "scanloop")
    return ["run", str(tmp / "scanloop")], "scanloop"


def c_fifo(base, tmp):
    d = _series(base, tmp)
    os.mkfifo(d / "pipe")
    return ["run", str(d)], "pipe"


def c_dicomdir_missing(base, tmp):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence

    d = _series(base, tmp)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3"
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    recs = []
    for name in ("slice_0001.dcm", "gone_0002.dcm"):
        r = Dataset()
        r.DirectoryRecordType = "IMAGE"
        r.ReferencedFileID = name
        recs.append(r)
    ds.DirectoryRecordSequence = Sequence(recs)
    ds.save_as(d / "DICOMDIR", enforce_file_format=True)
    return ["run", str(d)], "gone_0002.dcm"


def c_dicomdir_corrupt(base, tmp):
    d = _series(base, tmp)
    (d / "DICOMDIR").write_bytes(b"\x00" * 128 + b"DICM" + os.urandom(64))
    return ["run", str(d)], "DICOMDIR"


def c_empty_folder(base, tmp):
    (tmp / "empty").mkdir()
    return ["run", str(tmp / "empty")], "empty"


def c_not_dicom(base, tmp):
    d = tmp / "junk"
    d.mkdir()
    (d / "notes.txt").write_text("hello")
    return ["run", str(d)], "notes.txt"


def c_colour(base, tmp):
    return _one(9, SamplesPerPixel=3)(base, tmp)


def c_corrupt_jpeg2000(base, tmp):
    from pydicom.encaps import encapsulate

    ph = make_phantom(PhantomSpec(seed=11))
    d = write_phantom(ph, tmp / "j2k", compressed="jpeg2000", write_labels=False) / "dicom"
    f = sorted(d.iterdir())[3]
    _edit_one(f, lambda ds: setattr(ds, "PixelData", encapsulate([b"\x00" * 200])))
    return ["run", str(d)], f.name


# --- NIfTI -------------------------------------------------------------------------------

def _patched_sform(tmp, row0):
    """An uncompressed .nii whose header sform (code 1) has ``row0`` as srow_x (bytes 280-296)."""
    p = _nifti(tmp, _ct_block(), name="ct.nii")
    raw = bytearray(p.read_bytes())
    raw[252:256] = np.array([0, 1], "<i2").tobytes()  # qform_code 0, sform_code 1
    raw[280:296] = np.asarray(row0, "<f4").tobytes()
    p.write_bytes(bytes(raw))
    return p


def c_nifti_nan_affine(base, tmp):
    return ["run", str(_patched_sform(tmp, [np.nan, 0, 0, 0]))], "ct.nii"


def c_nifti_singular(base, tmp):
    return ["run", str(_patched_sform(tmp, [0, 0, 0, 0]))], "ct.nii"


def c_nifti_4d(base, tmp):
    return ["run", str(_nifti(tmp, np.zeros((8, 8, 8, 3), np.float32)))], "ct.nii.gz"


def c_nifti_nan_voxels(base, tmp):
    data = _ct_block()
    data[3, 3, 3] = np.nan
    return ["run", str(_nifti(tmp, data))], "ct.nii.gz"


def c_nifti_garbage(base, tmp):
    p = tmp / "ct.nii"
    p.write_bytes(os.urandom(400))
    return ["run", str(p)], "ct.nii"


def c_nifti_absurd_dims(base, tmp):
    p = _nifti(tmp, np.zeros((4, 4, 4), np.int16), name="ct.nii")
    raw = bytearray(p.read_bytes())
    np.frombuffer(raw, "<i2", count=8, offset=40)  # dim[0..7]
    raw[42:48] = np.array([30000, 30000, 30000], "<i2").tobytes()
    p.write_bytes(bytes(raw))
    return ["run", str(p)], "30000 x 30000 x 30000"


def c_labels_other_grid(base, tmp):
    lab = _nifti(tmp, np.zeros((10, 10, 10), np.uint8), name="lab.nii.gz")
    return ["run", str(base / "dicom"), "--labels", str(lab)], "label map shape"


def c_labels_absent(base, tmp):
    return ["run", str(base / "dicom"), "--labels", str(tmp / "none.nii.gz")], "none.nii.gz"


def c_labels_empty_value(base, tmp):
    return ["run", str(base / "dicom"), "--labels", str(base / "labels.nii.gz"), "--label-values", "9"], "9"


def c_labels_fractional(base, tmp):
    img = nib.load(str(base / "labels.nii.gz"))
    data = np.asarray(img.dataobj).astype(np.float32) + 0.5
    p = tmp / "frac.nii.gz"
    nib.save(nib.Nifti1Image(data, img.affine), str(p))
    return ["run", str(base / "dicom"), "--labels", str(p)], "frac.nii.gz"


# --- manifests ---------------------------------------------------------------------------

def c_manifest_nul(base, tmp):
    return _manifest(tmp, b"patient,month,path\nP1,0,a.nii.gz\x00\n"), "m.csv"


def c_manifest_latin1(base, tmp):
    return _manifest(tmp, "patient,month,path\nJos\xe9,0,a.nii.gz\n".encode("latin-1")), "m.csv"


def c_manifest_quote(base, tmp):
    return _manifest(tmp, 'patient,month,path\nP1,0,"a.nii.gz\n'), "m.csv"


def c_manifest_columns(base, tmp):
    return _manifest(tmp, "patient,path\nP1,a.nii.gz\n"), "month"


def c_manifest_duplicate(base, tmp):
    return _manifest(tmp, "patient,month,path\nP1,0,a.nii.gz\nP1,0,a.nii.gz\n"), "line 3 (P1)"


def c_manifest_outside(base, tmp):
    (tmp / "elsewhere.nii.gz").write_bytes(b"x")
    return _manifest(tmp, "patient,month,path\nP1,0,../elsewhere.nii.gz\n"), "../elsewhere.nii.gz"


def c_manifest_escape_id(base, tmp):
    return _manifest(tmp, "patient,month,path\n../../etc,0,a.nii.gz\n"), "../../etc"


def c_manifest_missing_scan(base, tmp):
    return _manifest(tmp, "patient,month,path\nP1,0,b.nii.gz\n"), "b.nii.gz"


def c_manifest_empty(base, tmp):
    return _manifest(tmp, "patient,month,path\n"), "no rows"


# --- model stages (through the CLI) ------------------------------------------------------

def c_zero_direction(base, tmp):
    return ["run", str(base / "dicom"), "--screw-entry", "0,0,0", "--screw-direction", "0,0,0"], "zero"


def c_nan_mesh_size(base, tmp):
    return ["run", str(base / "dicom"), "--mesh-size", "nan"], "mesh-size"


def c_screw_outside(base, tmp):
    return ["run", str(base / "dicom"), "--screw-entry", "500,500,500", "--screw-direction", "0,1,0"], "user"


def c_oom_predicted(base, tmp):
    return ["run", str(base / "dicom"), "--mesh-size", "0.02"], "million elements"


CASES = {
    # name: (builder, extra CLI args, exception type, regex on the defect)
    "dicom_truncated_pixels": (c_truncated_pixels, E.DicomError, r"truncated: \d+ bytes of pixel data"),
    "dicom_truncated_header": (c_truncated_header, E.DicomError, r"truncated or corrupt"),
    "dicom_no_pixel_data": (c_no_pixel_data, E.DicomError, r"has no pixel data"),
    "dicom_zero_spacing": (_all(PixelSpacing=["0", "0"]), E.DicomError, r"PixelSpacing \[0\.0, 0\.0\]"),
    "dicom_negative_spacing": (_one(4, PixelSpacing=["-0.8", "0.8"]), E.DicomError, r"PixelSpacing .*-0\.8"),
    "dicom_nan_spacing": (_one(4, PixelSpacing=["nan", "0.8"]), E.DicomError, r"PixelSpacing \[nan"),
    "dicom_zero_slope": (_all(RescaleSlope="0"), E.DicomError, r"RescaleSlope 0"),
    "dicom_inf_slope": (_one(2, RescaleSlope="inf"), E.DicomError, r"RescaleSlope inf is not a finite number"),
    "dicom_nan_intercept": (_one(6, RescaleIntercept="nan"), E.DicomError, r"RescaleIntercept nan"),
    "dicom_wrong_modality": (c_wrong_modality, E.DicomError, r"no CT series.*MR"),
    "dicom_mixed_series": (c_mixed_series, E.DicomError, r"2 CT series .*--series-uid"),
    "dicom_duplicate_slice": (c_duplicate_slice, E.DicomError, r"duplicate slice positions"),
    "dicom_missing_slice": (c_missing_slice, E.DicomError, r"1 missing slice"),
    "dicom_uneven_spacing": (c_uneven_spacing, E.DicomError, r"uneven slice spacing"),
    "dicom_gantry_tilt": (c_gantry_tilt, E.DicomError, r"gantry tilt"),
    "dicom_mixed_matrix": (c_mixed_matrix, E.DicomError, r"mixed matrix sizes.*139 x 148"),
    "dicom_absurd_one_header": (_one(8, Rows=60000, Columns=60000), E.DicomError,
                                r"mixed matrix sizes.*60000 x 60000"),
    "dicom_absurd_all_headers": (_all(Rows=60000, Columns=60000), E.ResourceError,
                                 r"60000 x 60000 x \d+ voxels.*GB"),
    "dicom_zero_rows": (_all(Rows=0), E.DicomError, r"invalid matrix size"),
    "dicom_single_slice": (c_single_slice, E.DicomError, r"single slice"),
    "dicom_nan_position": (_one(11, ImagePositionPatient=["nan", "0", "0"]), E.DicomError,
                           r"ImagePositionPatient \[nan"),
    "dicom_inf_orientation": (_one(3, ImageOrientationPatient=["inf", "0", "0", "0", "1", "0"]), E.DicomError,
                              r"ImageOrientationPatient .*inf"),
    "dicom_zero_orientation": (_all(ImageOrientationPatient=["0"] * 6), E.DicomError,
                               r"ImageOrientationPatient .*orthogonal unit"),
    "dicom_broken_link": (c_broken_link, E.DicomError, r"broken symbolic link"),
    "dicom_link_loop_file": (c_link_loop_file, E.DicomError, r"symbolic link loop"),
    "dicom_link_loop_input": (c_link_loop_input, E.InputError, r"link loop"),
    "dicom_fifo": (c_fifo, E.DicomError, r"not a regular file"),
    "dicom_dicomdir_missing": (c_dicomdir_missing, E.DicomError, r"DICOMDIR .*references missing files"),
    "dicom_dicomdir_corrupt": (c_dicomdir_corrupt, E.DicomError, r"DICOMDIR .*unreadable or corrupt"),
    "dicom_empty_folder": (c_empty_folder, E.DicomError, r"no files in DICOM folder"),
    "dicom_not_dicom": (c_not_dicom, E.DicomError, r"no DICOM image files"),
    "dicom_colour": (c_colour, E.DicomError, r"3 samples per pixel"),
    "dicom_corrupt_jpeg2000": (c_corrupt_jpeg2000, E.DicomError, r"corrupt pixel data .*JPEG 2000"),
    "nifti_nan_affine": (c_nifti_nan_affine, E.NiftiError, r"affine is not finite"),
    "nifti_singular_affine": (c_nifti_singular, E.NiftiError, r"affine is singular"),
    "nifti_4d": (c_nifti_4d, E.NiftiError, r"expected a 3-D image"),
    "nifti_nan_voxels": (c_nifti_nan_voxels, E.NiftiError, r"NaN or infinite"),
    "nifti_garbage": (c_nifti_garbage, E.NiftiError, r"cannot read .* as NIfTI"),
    "nifti_absurd_dims": (c_nifti_absurd_dims, E.ResourceError, r"would need about"),
    "labels_other_grid": (c_labels_other_grid, E.NiftiError, r"differs from the CT shape"),
    "labels_absent": (c_labels_absent, E.NiftiError, r"NIfTI file not found"),
    "labels_empty_value": (c_labels_empty_value, E.SegmentationError, r"label"),
    "labels_fractional": (c_labels_fractional, E.NiftiError, r"must hold integers"),
    "manifest_nul": (c_manifest_nul, E.ManifestError, r"NUL bytes"),
    "manifest_not_utf8": (c_manifest_latin1, E.ManifestError, r"not UTF-8"),
    "manifest_bad_quote": (c_manifest_quote, E.ManifestError, r"malformed CSV"),
    "manifest_missing_column": (c_manifest_columns, E.ManifestError, r"missing column\(s\): month"),
    "manifest_duplicate_rows": (c_manifest_duplicate, E.InputError, r"duplicate visit month 0"),
    "manifest_path_outside": (c_manifest_outside, E.ManifestError, r"outside the study folder"),
    "manifest_escaping_id": (c_manifest_escape_id, E.InputError, r"patient ID"),
    "manifest_missing_scan": (c_manifest_missing_scan, E.InputError, r"scan not found: b.nii.gz"),
    "manifest_empty": (c_manifest_empty, E.InputError, r"no rows"),
    "option_zero_screw_direction": (c_zero_direction, E.OptionError, r"zero vector"),
    "option_nan_mesh_size": (c_nan_mesh_size, E.OptionError, r"positive number"),
    "stage_screw_outside_bone": (c_screw_outside, E.ScrewPlanError, r"."),
    "stage_oom_predicted": (c_oom_predicted, E.ResourceError, r"larger --mesh-size"),
}


def _argv(args, tmp):
    out = ["--out", str(tmp / "out")]
    return [*args[:2], *out, *FAST, *args[2:]] if args[0] == "run" else [*args, *out]


@pytest.mark.parametrize("name", sorted(CASES))
def test_corpus_case(name, base, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FESIM_MEMORY_LIMIT_GB", "16")  # a fixed budget: the same message twice
    build, exc_type, pattern = CASES[name]
    args, needle = build(base, tmp_path)
    argv = _argv(args, tmp_path)
    t0 = time.perf_counter()
    with pytest.raises(exc_type, match=pattern) as info:
        main(["--debug", *argv])
    assert needle.lower() in str(info.value).lower(), (needle, str(info.value))
    capsys.readouterr()
    assert main(argv) == 2
    assert time.perf_counter() - t0 < 120
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("fesim: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err and "internal error" not in err
    assert str(info.value) in lines[0]


_PEAK_KB = {}


@pytest.fixture(autouse=True, scope="module")
def _peak_before_corpus():
    """The process's peak resident size (KB) when this module's first test starts."""
    _PEAK_KB["before"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield


def test_corpus_size_and_memory():
    assert len(CASES) >= 40
    kinds = {n.split("_")[0] for n in CASES}
    assert kinds >= {"dicom", "nifti", "labels", "manifest", "option", "stage"}
    # nothing in the corpus allocated the gigabytes that the absurd headers ask for: the peak
    # resident size grew by < 2 GB while the corpus ran (earlier tests in the same process may
    # already have set a higher peak, which only makes this bound looser, never flaky)
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - _PEAK_KB["before"]
    assert grown_kb < 2 * 1024 * 1024


# --- model stages below the CLI ----------------------------------------------------------

def test_stage_degenerate_mesh():
    from fesim.mesh.quality import check_quality
    from fesim.mesh.tetmesh import box_mesh

    m = box_mesh((2, 2, 2), (4.0, 4.0, 4.0))
    m.points[:, 2] = 0.0  # every element flattened
    with pytest.raises(E.MeshError, match="zero-volume"):
        check_quality(m)


def test_stage_unconstrained_model():
    from fesim.fem.model import Model, check_supported
    from fesim.mesh.tetmesh import box_mesh

    with pytest.raises(E.ModelError, match="no displacement constraints"):
        check_supported(Model(box_mesh((2, 2, 2), (4.0, 4.0, 4.0)), E=1000.0, nu=0.3))


def test_stage_non_converging_solve():
    import scipy.sparse as sp

    from fesim.fem.solvers import make_solver

    n = 3000
    A = sp.diags([-np.ones(n - 1), 2.0 * np.ones(n), -np.ones(n - 1)], [-1, 0, 1], format="csr")
    s = make_solver(A, "amg", rtol=1e-14, maxiter=1)
    with pytest.raises(E.SolverError, match="did not converge"):
        s.solve(np.ones(n))


def test_stage_empty_mask():
    from fesim.imaging.segmentation import segment_vertebra
    from fesim.imaging.volume import Volume

    vol = Volume(np.zeros((30, 30, 30), np.float32), (1.0, 1.0, 1.0), np.zeros(3), np.eye(3), {})
    with pytest.raises(E.SegmentationError):
        segment_vertebra(vol)


def test_memory_limit_variable_is_checked(monkeypatch):
    from fesim.resources import available_memory_bytes

    monkeypatch.setenv("FESIM_MEMORY_LIMIT_GB", "1.5")
    assert available_memory_bytes() <= int(1.5 * (1 << 30))
    for bad in ("lots", "0", "-2", "nan"):
        monkeypatch.setenv("FESIM_MEMORY_LIMIT_GB", bad)
        with pytest.raises(E.ResourceError, match="FESIM_MEMORY_LIMIT_GB"):
            available_memory_bytes()
