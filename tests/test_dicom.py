"""Tests of DICOM reading/writing (fesim/imaging/dicom.py) on phantom and real series."""

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from fesim.errors import DicomError
from fesim.imaging.dicom import list_series, pseudonym, read_dicom_series
from fesim.imaging.dicom_write import write_dicom_series
from fesim.synthetic.phantom import PhantomSpec, make_phantom, write_phantom
from fesim.imaging.volume import Volume

FAKE_IDS = ("SYNTH^JANE", "SYN-7", "19480312")


from conftest import real_data_dir  # noqa: E402


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(PhantomSpec(seed=7))


@pytest.fixture(scope="module")
def series(phantom, tmp_path_factory):
    """A written phantom series, copied fresh into each test that breaks it."""
    return write_phantom(phantom, tmp_path_factory.mktemp("ph"), write_labels=False) / "dicom"


@pytest.fixture
def copy(series, tmp_path):
    dst = tmp_path / "series"
    shutil.copytree(series, dst)
    return dst


def _edit(folder, fn):
    """Apply fn(k, ds) to every file of a series (k = slice index from InstanceNumber)."""
    for f in sorted(Path(folder).iterdir()):
        ds = pydicom.dcmread(f)
        fn(int(ds.InstanceNumber) - 1, ds)
        ds.save_as(f)


def _file_of_slice(folder, k):
    return next(f for f in Path(folder).iterdir() if int(pydicom.dcmread(f).InstanceNumber) == k + 1)


def test_pseudonym():
    p = pseudonym("1.2.3")
    assert len(p) == 11 and p[0] == "P" and int(p[1:], 16) >= 0
    assert p == pseudonym("1.2.3") != pseudonym("1.2.3", salt="other") != pseudonym("1.2.4")


def test_roundtrip_identity(phantom, series):
    vol = read_dicom_series(series)
    assert vol.shape == phantom.hu.shape
    assert np.abs(vol.data - phantom.hu.data).max() <= 1.0
    assert np.allclose(vol.affine, phantom.hu.affine, atol=1e-5)
    assert vol.data.dtype == np.float32
    meta = vol.meta
    assert meta["modality"] == "CT" and meta["n_slices"] == phantom.hu.shape[2]
    assert meta["series_key"].startswith("P") and meta["kvp"] == 120.0
    text = repr(meta).upper()
    assert not any(s.upper() in text for s in FAKE_IDS)
    assert not {"PatientName", "PatientID", "PatientBirthDate"} & set(meta)
    # The fake identifiers are in the files (so de-identification can be proven downstream).
    ds = pydicom.dcmread(next(series.iterdir()))
    assert str(ds.PatientName) == "SYNTH^JANE" and ds.PatientID == "SYN-7"
    assert ds.SOPClassUID.name == "CT Image Storage" and ds.PatientBirthDate == "19480312"


@pytest.mark.parametrize("direction,handed", [
    (np.array([[0.0, 1, 0], [1, 0, 0], [0, 0, -1]]), "right"),   # permuted and flipped
    (np.array([[0.0, 0, 1], [1, 0, 0], [0, 1, 0]]), "right"),    # sagittal slices
    (np.diag([1.0, 1, -1]), "left"),                              # head-first slice order
])
def test_roundtrip_rotated(tmp_path, direction, handed):
    ph = make_phantom(PhantomSpec(seed=2, direction=direction, noise_hu=5))
    files = write_dicom_series(ph.hu, tmp_path / "d", uid_key="rot")
    assert len(files) == ph.hu.shape[2]
    vol = read_dicom_series(tmp_path / "d")
    if handed == "right":
        assert np.allclose(vol.affine, ph.hu.affine, atol=1e-5)
        assert np.abs(vol.data - ph.hu.data).max() <= 1.0
    else:
        # Left-handed grid: slices come back ordered along the normal, i.e. k reversed.
        assert np.abs(vol.data - ph.hu.data[:, :, ::-1]).max() <= 1.0
        n = vol.shape[2] - 1
        assert np.allclose(vol.index_to_world([3, 4, 0]), ph.hu.index_to_world([3, 4, n]), atol=1e-4)
    # Same anatomy in world coordinates: the rod reads the same as on the identity grid.
    rod = ph.rods[-1]
    assert vol.sample(rod.center) == pytest.approx(ph.hu.sample(rod.center), abs=1)


def test_shuffled_and_renamed_names(phantom, series, tmp_path):
    ref = read_dicom_series(series)
    out = write_phantom(phantom, tmp_path / "shuf", shuffle_names=True, write_labels=False)
    names = [f.name for f in (out / "dicom").iterdir()]
    assert not any(n.endswith(".dcm") for n in names)
    shuf = read_dicom_series(out / "dicom")
    assert np.array_equal(shuf.data, ref.data) and np.allclose(shuf.affine, ref.affine)
    # Renaming in reverse order and nesting in subfolders with a non-DICOM file.
    nested = tmp_path / "nested"
    files = sorted(series.iterdir())
    for i, f in enumerate(files):
        sub = nested / ("a" if i % 2 else "b" / Path("c"))
        sub.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, sub / f"z{len(files) - i:03d}")
    (nested / "README.txt").write_text("not dicom")
    again = read_dicom_series(nested)
    assert np.array_equal(again.data, ref.data) and np.allclose(again.affine, ref.affine)


@pytest.mark.parametrize("codec", ["rle", "jpeg2000"])
def test_compressed_roundtrip(phantom, tmp_path, codec):
    out = write_phantom(phantom, tmp_path / codec, compressed=codec, write_labels=False)
    ds = pydicom.dcmread(next((out / "dicom").iterdir()))
    assert ds.file_meta.TransferSyntaxUID.is_compressed
    vol = read_dicom_series(out / "dicom")
    assert np.abs(vol.data - phantom.hu.data).max() <= 1.0
    assert np.allclose(vol.affine, phantom.hu.affine, atol=1e-5)
    assert ds.file_meta.TransferSyntaxUID.name == vol.meta["transfer_syntax"]


@pytest.mark.parametrize("codec", [None, "rle"])
def test_enhanced_multiframe(phantom, tmp_path, codec):
    files = write_dicom_series(phantom.hu, tmp_path / "mf", enhanced=True, compressed=codec, uid_key="mf")
    assert len(files) == 1
    vol = read_dicom_series(tmp_path / "mf")
    assert vol.shape == phantom.hu.shape and np.abs(vol.data - phantom.hu.data).max() <= 1.0
    assert np.allclose(vol.affine, phantom.hu.affine, atol=1e-5)
    info = list_series(tmp_path / "mf")[0]
    assert info.n_files == 1 and info.n_slices == phantom.hu.shape[2]


def test_rescale_applied_per_slice(phantom, copy):
    def rescale(k, ds):
        slope, intercept = 0.5 + 0.25 * (k % 3), -1000.0 - 7 * k
        hu = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        ds.PixelData = np.round((hu - intercept) / slope).astype(np.int16).tobytes()
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    _edit(copy, rescale)
    vol = read_dicom_series(copy)
    assert np.abs(vol.data - phantom.hu.data).max() <= 1.0


def test_series_selection_and_listing(phantom, series, tmp_path):
    mixed = tmp_path / "mixed"
    shutil.copytree(series, mixed / "big")
    small = Volume(phantom.hu.data[:, :, :10], phantom.hu.spacing, phantom.hu.origin)
    write_dicom_series(small, mixed / "small", uid_key="small", series_description="small one")
    infos = list_series(mixed)
    assert [i.n_slices for i in infos] == [phantom.hu.shape[2], 10] and infos[0].chosen
    assert infos[0].slice_spacing_mm == pytest.approx(1.0) and infos[1].description == "small one"
    assert read_dicom_series(mixed).shape[2] == phantom.hu.shape[2]
    assert read_dicom_series(mixed, series_uid=infos[1].uid).shape[2] == 10
    with pytest.raises(DicomError, match="not found"):
        read_dicom_series(mixed, series_uid="1.2.3.4")


def test_empty_series_uid_fallback(phantom, copy):
    _edit(copy, lambda k, ds: setattr(ds, "SeriesInstanceUID", ""))
    infos = list_series(copy)
    assert len(infos) == 1 and infos[0].uid.startswith("auto-")
    assert read_dicom_series(copy).shape == phantom.hu.shape


def test_dicomdir(phantom, series, tmp_path):
    from pydicom.fileset import FileSet

    fs = FileSet()
    for f in series.iterdir():
        fs.add(pydicom.dcmread(f))
    fs.write(tmp_path / "media")
    assert (tmp_path / "media" / "DICOMDIR").is_file()
    for target in (tmp_path / "media", tmp_path / "media" / "DICOMDIR"):
        vol = read_dicom_series(target)
        assert np.array_equal(vol.data, read_dicom_series(series).data)


def test_files_without_preamble(phantom, copy):
    from pydicom.dataset import FileMetaDataset

    def strip(k, ds):
        ds.file_meta, ds.preamble = FileMetaDataset(), None
    for f in copy.iterdir():
        ds = pydicom.dcmread(f)
        strip(0, ds)
        ds.save_as(f, implicit_vr=True, little_endian=True)
    assert open(next(copy.iterdir()), "rb").read(4) != b"\x00" * 4  # no 128-byte preamble
    vol = read_dicom_series(copy)
    assert np.abs(vol.data - phantom.hu.data).max() <= 1.0


# ---- broken input -------------------------------------------------------------------


def test_empty_and_non_dicom(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DicomError, match="no files"):
        read_dicom_series(tmp_path / "empty")
    with pytest.raises(DicomError, match="not found"):
        read_dicom_series(tmp_path / "absent")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("hello")
    (junk / "image.dcm").write_bytes(b"\x00" * 300)
    with pytest.raises(DicomError, match="no DICOM image files.*notes.txt"):
        read_dicom_series(junk)


def test_non_ct_modality(copy):
    _edit(copy, lambda k, ds: (setattr(ds, "Modality", "MR"),
                               setattr(ds, "SOPClassUID", "1.2.840.10008.5.1.4.1.1.4")))
    with pytest.raises(DicomError, match="no CT series.*MR"):
        read_dicom_series(copy)
    assert read_dicom_series(copy, allow_non_ct=True).meta["modality"] == "MR"


def test_gantry_tilt(copy):
    def tilt(k, ds):
        p = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [p[0], p[1] + k * np.tan(np.deg2rad(15)), p[2]]
    _edit(copy, tilt)
    with pytest.raises(DicomError, match=r"gantry tilt of 15\.0"):
        read_dicom_series(copy)


def test_slice_shifted_in_plane(copy):
    def shift(k, ds):
        if k == 9:
            p = [float(v) for v in ds.ImagePositionPatient]
            ds.ImagePositionPatient = [p[0] + 2.0, p[1], p[2]]
    _edit(copy, shift)
    with pytest.raises(DicomError, match=r"shifted 2\.\d+ mm in-plane"):
        read_dicom_series(copy)


def test_enhanced_errors_name_frames(phantom, tmp_path):
    vol = Volume(phantom.hu.data[:, :, :5], phantom.hu.spacing, phantom.hu.origin)
    write_dicom_series(vol, tmp_path / "mf", enhanced=True, uid_key="gap")
    ds = pydicom.dcmread(next((tmp_path / "mf").iterdir()))
    ds.PerFrameFunctionalGroupsSequence[3].PlanePositionSequence[0].ImagePositionPatient = \
        [float(v) for v in phantom.hu.origin + [0, 0, 2.0]]
    ds.save_as(next((tmp_path / "mf").iterdir()))
    with pytest.raises(DicomError, match=r"duplicate slice positions.*enhanced_ct.dcm\[frame \d\]"):
        read_dicom_series(tmp_path / "mf")


def test_uneven_spacing(copy):
    def shift(k, ds):
        if k == 20:
            p = [float(v) for v in ds.ImagePositionPatient]
            ds.ImagePositionPatient = [p[0], p[1], p[2] + 0.3]
    _edit(copy, shift)
    with pytest.raises(DicomError, match=r"uneven slice spacing.*1\.300.*0\.700"):
        read_dicom_series(copy)


def test_missing_slices(copy):
    for k in (30, 31):
        _file_of_slice(copy, k).unlink()
    with pytest.raises(DicomError, match=r"2 missing slice\(s\): gap of 3\.00 mm"):
        read_dicom_series(copy)


def test_duplicate_positions(copy):
    f = _file_of_slice(copy, 12)
    shutil.copy(f, copy / "copy_of_slice")
    with pytest.raises(DicomError, match="duplicate slice positions.*copy_of_slice"):
        read_dicom_series(copy)


def test_mixed_sizes_and_spacing(copy, tmp_path):
    f = _file_of_slice(copy, 5)
    ds = pydicom.dcmread(f)
    ds.PixelSpacing = [0.7, 0.7]
    ds.save_as(f)
    with pytest.raises(DicomError, match=rf"mixed pixel_spacing.*{f.name}"):
        read_dicom_series(copy)
    ds.PixelSpacing = [0.8, 0.8]
    arr = ds.pixel_array[:-10]
    ds.Rows, ds.PixelData = arr.shape[0], arr.tobytes()
    ds.save_as(f)
    with pytest.raises(DicomError, match=rf"mixed matrix sizes.*{f.name}"):
        read_dicom_series(copy)


def test_undecodable_pixel_data(copy):
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLSLossless

    def jpegls(k, ds):
        ds.file_meta.TransferSyntaxUID = JPEGLSLossless
        ds.PixelData = encapsulate([b"\xff\xd8" + b"\x00" * 64])
    _edit(copy, jpegls)
    with pytest.raises(DicomError, match="cannot decode pixel data.*JPEG-LS.*install"):
        read_dicom_series(copy)


def test_corrupt_jpeg2000(phantom, tmp_path):
    out = write_phantom(phantom, tmp_path / "j2k", compressed="jpeg2000", write_labels=False) / "dicom"
    f = next(out.iterdir())
    ds = pydicom.dcmread(f)
    from pydicom.encaps import encapsulate
    ds.PixelData = encapsulate([b"\x00" * 200])
    ds.save_as(f)
    with pytest.raises(DicomError, match=f"corrupt pixel data in {f.name}") as e:
        read_dicom_series(out)
    assert "install" not in str(e.value)  # the decoder is there: the data are broken


# ---- real data ---------------------------------------------------------------------


def test_real_compressed_series():
    folder = real_data_dir() / "example_ct_dicom"
    vol = read_dicom_series(folder)
    assert vol.shape == (512, 512, 20)
    assert np.allclose(vol.spacing, [0.9765625, 0.9765625, 2.0])  # not SliceThickness (3 mm)
    assert vol.meta["slice_thickness_mm"] == 3.0 and vol.meta["manufacturer"] == "SIEMENS"
    assert vol.meta["transfer_syntax"].startswith("JPEG 2000")
    assert vol.data.min() == -1024 and 1000 < vol.data.max() < 3100
    info = list_series(folder)
    assert len(info) == 1 and info[0].uid.startswith("auto-") and info[0].chosen
    assert info[0].slice_spacing_mm == pytest.approx(2.0) and info[0].n_files == 20
    assert not {"PatientName", "PatientID", "PatientBirthDate"} & set(vol.meta)
    seg_path = folder.parent / "example_seg_dicom.nii.gz"
    if seg_path.is_file():
        import nibabel as nib

        img = nib.load(str(seg_path))
        seg = np.asarray(img.dataobj)
        lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ img.affine
        idx = np.argwhere(np.isin(seg, (32, 33)))
        ijk = np.round(vol.world_to_index(idx @ lps[:3, :3].T + lps[:3, 3])).astype(int)
        # Vertebra labels land on bone only when the reader's geometry is right.
        assert vol.data[tuple(ijk.T)].mean() > 200
