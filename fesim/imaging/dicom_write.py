"""Write an HU :class:`~fesim.imaging.volume.Volume` as a CT DICOM series.

Used by the synthetic phantom (:func:`fesim.synthetic.phantom.write_phantom`) and by tests that
need DICOM input; reading lives in :mod:`fesim.imaging.dicom`. UIDs are derived from a key, so
the same key gives the same StudyInstanceUID, SeriesInstanceUID and (uncompressed)
SOPInstanceUIDs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fesim.errors import DicomError
from fesim.imaging.volume import Volume


def _codecs() -> dict:
    """Compression name -> (transfer syntax UID, pydicom encoding plugin)."""
    from pydicom.uid import JPEG2000Lossless, RLELossless

    return {None: None, "rle": (RLELossless, "pydicom"), "jpeg2000": (JPEG2000Lossless, "pylibjpeg")}


def _uid(key: str, *parts) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[key, *map(str, parts)])


def _stored_pixels(volume: Volume, intercept: float, slope: float) -> np.ndarray:
    """int16 stored values ``round((HU - intercept) / slope)`` as (k, rows, cols)."""
    stored = np.round((volume.data - intercept) / slope)
    if stored.min() < -32768 or stored.max() > 32767:
        raise DicomError("HU values do not fit int16 with the given rescale slope/intercept")
    return np.ascontiguousarray(np.transpose(stored.astype(np.int16), (2, 1, 0)))


def _base_dataset(sop_class: str, sop_uid: str, shape: tuple, slice_mm: float, patient: dict | None,
                  series_description: str, uid_key: str):
    """Dataset with the file meta, patient/study/series and image pixel modules of one file.

    ``shape`` is the stored (k, rows, cols); ``slice_mm`` the slice thickness (mm).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Modality, ds.Manufacturer, ds.ManufacturerModelName = "CT", "fesim", "synthetic phantom"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240115"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
    ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyID = "", "", "1"
    for k, v in (patient or {}).items():
        setattr(ds, k, v)
    ds.StudyInstanceUID = _uid(uid_key, "study")
    ds.SeriesInstanceUID = _uid(uid_key, "series")
    ds.FrameOfReferenceUID = _uid(uid_key, "frame")
    ds.SeriesNumber, ds.SeriesDescription = 1, series_description
    ds.KVP, ds.ConvolutionKernel, ds.PatientPosition = "120", "FESIM_B30", "HFS"
    ds.SliceThickness = f"{slice_mm:.6g}"
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = shape[1], shape[2]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    return ds


def _save(ds, pixels: np.ndarray, path: Path, compressed: str | None) -> Path:
    ds.PixelData = pixels.tobytes()
    if compressed:
        uid, plugin = _codecs()[compressed]
        ds.compress(uid, encoding_plugin=plugin)
    ds.save_as(path, enforce_file_format=True)
    return path


def _enhanced_dataset(ds, n_frames: int, spacing, iop: list, ipp: np.ndarray,
                      intercept: float, slope: float):
    """Add the Enhanced CT multi-frame functional groups to ``ds`` (returned)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds.NumberOfFrames = n_frames
    shared = Dataset()
    pm, po, pv = Dataset(), Dataset(), Dataset()
    pm.PixelSpacing, pm.SliceThickness = [float(spacing[1]), float(spacing[0])], float(spacing[2])
    po.ImageOrientationPatient = iop
    pv.RescaleIntercept, pv.RescaleSlope, pv.RescaleType = intercept, slope, "HU"
    shared.PixelMeasuresSequence = Sequence([pm])
    shared.PlaneOrientationSequence = Sequence([po])
    shared.PixelValueTransformationSequence = Sequence([pv])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for k in range(n_frames):
        fg, pp = Dataset(), Dataset()
        pp.ImagePositionPatient = [float(v) for v in ipp[k]]
        fg.PlanePositionSequence = Sequence([pp])
        frames.append(fg)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    return ds


def write_dicom_series(volume: Volume, out_dir, compressed: str | None = None,
                       shuffle_names: bool = False, seed: int = 0, patient: dict | None = None,
                       series_description: str = "", uid_key: str = "", enhanced: bool = False,
                       intercept: float = -1024.0, slope: float = 1.0) -> list[Path]:
    """Write an HU volume as a CT series, one slice per ``k`` (or one enhanced multi-frame file).

    Parameters
    ----------
    volume : Volume
        HU values; stored as int16 ``round((HU - intercept) / slope)``.
    out_dir : path-like
        Folder for the files (created).
    compressed : {None, "rle", "jpeg2000"}
        Lossless encoding by pydicom's RLE encoder or pylibjpeg-openjpeg.
    shuffle_names : bool
        Random file names without extension, unrelated to the slice order.
    seed : int
        Seeds the random names.
    patient : dict, optional
        Patient-module attributes (use fake values; tests check they never leak).
    series_description : str
    uid_key : str
        Makes the UIDs deterministic: the same key gives the same UIDs.
    enhanced : bool
        Write one Enhanced CT Image Storage file with per-frame functional groups.
    intercept, slope : float
        RescaleIntercept and RescaleSlope (HU).

    Returns
    -------
    list of Path
        Written files in slice order.
    """
    from pydicom.uid import CTImageStorage, EnhancedCTImageStorage

    if compressed not in _codecs():
        raise DicomError(f"unknown compression {compressed!r}; use None, 'rle' or 'jpeg2000'")
    stored = _stored_pixels(volume, intercept, slope)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    d, sp = volume.direction, volume.spacing
    iop = [float(v) for v in np.concatenate([d[:, 0], d[:, 1]])]
    ipp = volume.origin + np.outer(np.arange(volume.shape[2]) * sp[2], d[:, 2])
    normal = np.cross(d[:, 0], d[:, 1])

    def base(sop_class, sop_uid):
        return _base_dataset(sop_class, sop_uid, stored.shape, sp[2], patient, series_description, uid_key)

    rng = np.random.default_rng(seed)
    if enhanced:
        ds = _enhanced_dataset(base(EnhancedCTImageStorage, _uid(uid_key, "enhanced")),
                               stored.shape[0], sp, iop, ipp, intercept, slope)
        name = rng.bytes(8).hex() if shuffle_names else "enhanced_ct.dcm"
        return [_save(ds, stored, out / name, compressed)]

    names = ([rng.bytes(8).hex() for _ in range(stored.shape[0])] if shuffle_names
             else [f"slice_{k + 1:04d}.dcm" for k in range(stored.shape[0])])
    paths = []
    for k in range(stored.shape[0]):
        ds = base(CTImageStorage, _uid(uid_key, "sop", k))
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [f"{v:.6f}" for v in ipp[k]]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in iop]
        ds.SliceLocation = f"{ipp[k] @ normal:.6f}"
        ds.PixelSpacing = [f"{sp[1]:.8g}", f"{sp[0]:.8g}"]
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = f"{intercept:g}", f"{slope:g}", "HU"
        paths.append(_save(ds, stored[k], out / names[k], compressed))
    return paths
