"""Read CT DICOM series into a :class:`~fesim.imaging.volume.Volume` and write test series.

Reading groups files by SeriesInstanceUID (or a geometry key when that is empty), orders
slices by their position along the slice normal (never by file name), applies the rescale
per slice, takes the slice spacing from ImagePositionPatient and refuses series that
cannot be a regular 3-D grid (gantry tilt, uneven or missing slices, duplicates, mixed
sizes). Classic one-file-per-slice and enhanced multi-frame CT are supported. No patient
identifier is copied into ``Volume.meta``.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import ImplicitVRLittleEndian

from fesim.errors import DicomError
from fesim.imaging.volume import Volume

CT_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1"}
#: Which package decodes which compressed transfer syntax (UID prefix -> hint).
DECODER_HINTS = {
    "1.2.840.10008.1.2.4.9": "pylibjpeg + pylibjpeg-openjpeg (JPEG 2000)",
    "1.2.840.10008.1.2.4.8": "pyjpegls or pylibjpeg-libjpeg (JPEG-LS)",
    "1.2.840.10008.1.2.4.5": "pylibjpeg-libjpeg (optional extra 'jpeg-gpl') or pillow (JPEG)",
    "1.2.840.10008.1.2.4.7": "pylibjpeg-libjpeg (optional extra 'jpeg-gpl') (JPEG lossless)",
    "1.2.840.10008.1.2.5": "pylibjpeg-rle (RLE)",
}


def pseudonym(text: str, salt: str = "fesim") -> str:
    """Pseudonymous key: ``"P"`` + the first 10 hex digits of sha256(salt + text)."""
    return "P" + hashlib.sha256((salt + str(text)).encode("utf-8")).hexdigest()[:10]


@dataclass
class SeriesInfo:
    """Summary of one series found under a folder (for ``fesim inspect``).

    ``pixel_spacing_mm`` is (row spacing, column spacing) as in DICOM; ``slice_spacing_mm``
    is the median distance between slice positions along the normal (NaN for one slice).
    """

    uid: str
    modality: str
    n_files: int
    n_slices: int
    rows: int
    columns: int
    pixel_spacing_mm: tuple
    slice_spacing_mm: float
    orientation: tuple
    description: str
    transfer_syntax: str
    size_mb: float
    is_ct: bool = False
    chosen: bool = False
    slices: list = field(default_factory=list, repr=False)

    def describe(self) -> str:
        """One readable line: chosen mark, UID, modality, size, spacing (mm), orientation.

        Size is ``columns x rows x slices`` and spacing ``column x row x slice`` mm, i.e. along
        the ``i, j, k`` axes of the volume :func:`read_dicom_series` returns. The orientation
        is given as the patient (LPS) axis codes of the rows, columns and slice normal, e.g.
        ``LPS`` for a plain axial series, plus the raw ImageOrientationPatient.
        """
        mark = "*" if self.chosen else " "
        ps = list(self.pixel_spacing_mm)
        sp = (f"{ps[1]:.3g} x {ps[0]:.3g} x " if len(ps) == 2 else "? x ? x ") + \
            (f"{self.slice_spacing_mm:.3g}" if np.isfinite(self.slice_spacing_mm) else "?")
        orient = "?"
        if len(self.orientation) == 6:
            iop = np.asarray(self.orientation, float)
            cols = (iop[:3], iop[3:], np.cross(iop[:3], iop[3:]))
            orient = "".join(_axis_code(v) for v in cols) + " [" + \
                ",".join(f"{v:.3g}" for v in iop) + "]"
        desc = f" '{self.description}'" if self.description else ""
        chosen = " <- chosen" if self.chosen else ""
        return (f"{mark} {self.uid}  {self.modality or '?'}  {self.columns} x {self.rows} x "
                f"{self.n_slices}  spacing {sp} mm  orientation {orient}  {self.n_files} file(s), "
                f"{self.size_mb:.1f} MB{desc}{chosen}")


def _axis_code(v) -> str:
    """Patient-axis letter (LPS: L/R, P/A, S/I) that a unit vector points most towards."""
    k = int(np.argmax(np.abs(v)))
    return ("LR", "PA", "SI")[k][0 if v[k] > 0 else 1]


@dataclass
class _Slice:
    """One image plane: a classic file or one frame of an enhanced multi-frame file."""

    path: Path
    frame: int | None
    position: np.ndarray
    orientation: np.ndarray
    rows: int
    columns: int
    pixel_spacing: np.ndarray
    slope: float
    intercept: float

    @property
    def name(self) -> str:
        return self.path.name if self.frame is None else f"{self.path.name}[frame {self.frame + 1}]"


def _short(items, n=3) -> str:
    """A few names of files (paths) or planes (_Slice), deduplicated, for error messages."""
    names = list(dict.fromkeys(getattr(p, "name", None) if isinstance(p, _Slice) else Path(p).name
                               for p in items))
    more = f" (+{len(names) - n} more)" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def _floats(value, n) -> np.ndarray | None:
    try:
        arr = np.asarray([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        return None
    return arr if arr.size == n else None


def _find_files(path: Path) -> list[Path]:
    """Candidate files: those referenced by a DICOMDIR, else every file below ``path``."""
    if not path.exists():
        raise DicomError(f"DICOM input not found: {path}")
    dicomdir = path if path.is_file() and path.name.upper() == "DICOMDIR" else path / "DICOMDIR"
    if dicomdir.is_file():
        ds = pydicom.dcmread(dicomdir)
        files, missing = [], []
        for rec in ds.get("DirectoryRecordSequence", []):
            ref = rec.get("ReferencedFileID")
            if ref is None:
                continue
            parts = [ref] if isinstance(ref, str) else list(ref)
            f = dicomdir.parent.joinpath(*parts)
            (files if f.is_file() else missing).append(f)
        if missing:
            raise DicomError(f"DICOMDIR {dicomdir} references missing files: {_short(missing)}")
        return files
    if path.is_file():
        return [path]
    files = sorted(Path(root) / f for root, _, names in os.walk(path) for f in names)
    if not files:
        raise DicomError(f"no files in DICOM folder {path}")
    return files


def _read(path: Path, headers_only: bool):
    """Read a file as DICOM, also without the Part-10 preamble (old ACR-NEMA style); None if not DICOM."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=headers_only)
    except InvalidDicomError:
        pass
    except (OSError, ValueError, EOFError):
        return None
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=headers_only, force=True)
    except Exception:  # arbitrary bytes can fail in many ways
        return None
    if not all(k in ds for k in ("Rows", "Columns", "ImagePositionPatient")):
        return None
    if "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return ds


def _slices_of(ds, path: Path) -> list[_Slice]:
    """Image planes of a dataset read without pixel data."""
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    if "PerFrameFunctionalGroupsSequence" in ds:
        shared = ds.get("SharedFunctionalGroupsSequence", [None])[0]
        out = []
        for f, group in enumerate(ds.PerFrameFunctionalGroupsSequence):
            def pick(seq, attr, group=group):
                for g in (group, shared):
                    if g is not None and seq in g and attr in g[seq][0]:
                        return g[seq][0][attr].value
                return None
            out.append(_Slice(
                path, f, _floats(pick("PlanePositionSequence", "ImagePositionPatient"), 3),
                _floats(pick("PlaneOrientationSequence", "ImageOrientationPatient"), 6),
                rows, cols, _floats(pick("PixelMeasuresSequence", "PixelSpacing"), 2),
                float(pick("PixelValueTransformationSequence", "RescaleSlope") or 1.0),
                float(pick("PixelValueTransformationSequence", "RescaleIntercept") or 0.0)))
        return out
    return [_Slice(path, None, _floats(ds.get("ImagePositionPatient"), 3),
                   _floats(ds.get("ImageOrientationPatient"), 6), rows, cols,
                   _floats(ds.get("PixelSpacing"), 2),
                   float(ds.get("RescaleSlope", 1.0) or 1.0),
                   float(ds.get("RescaleIntercept", 0.0) or 0.0))]


def _series_key(ds) -> str:
    uid = str(ds.get("SeriesInstanceUID", "") or "").strip()
    if uid:
        return uid
    # Real data sometimes has an empty SeriesInstanceUID: group by geometry instead.
    iop = _floats(ds.get("ImageOrientationPatient"), 6)
    parts = [str(ds.get("FrameOfReferenceUID", "")), str(ds.get("Modality", "")),
             str(None if iop is None else np.round(iop, 3).tolist()),
             str(ds.get("Rows", "")), str(ds.get("Columns", "")),
             str(ds.get("SeriesDescription", "")), str(ds.get("SeriesNumber", ""))]
    return "auto-" + pseudonym("|".join(parts))[1:]


def _scan(path) -> tuple[dict, dict]:
    """Group readable DICOM image files below ``path`` by series key."""
    path = Path(path)
    files = _find_files(path)
    groups, headers = defaultdict(list), {}
    for f in files:
        ds = _read(f, headers_only=True)
        if ds is None or "Rows" not in ds:  # not DICOM, DICOMDIR, or no image (SR, RTSTRUCT...)
            continue
        key = _series_key(ds)
        groups[key].append((f, ds))
        headers.setdefault(key, ds)
    if not groups:
        raise DicomError(f"no DICOM image files among {len(files)} file(s) in {path}: {_short(files)}")
    return groups, headers


def _is_ct(ds) -> bool:
    return str(ds.get("Modality", "")).upper() == "CT" or str(ds.get("SOPClassUID", "")) in CT_SOP_CLASSES


def _positions(slices) -> tuple[np.ndarray, np.ndarray]:
    """Slice normal (unit) and position of each slice along it (mm)."""
    iop = slices[0].orientation
    normal = np.cross(iop[:3], iop[3:])
    return normal / np.linalg.norm(normal), np.array([s.position @ normal for s in slices])


def list_series(path) -> list[SeriesInfo]:
    """Describe every image series under a folder or DICOMDIR.

    The one :func:`read_dicom_series` would choose (the CT series with most slices) has
    ``chosen=True``. Sorted by that choice, then by number of slices.
    """
    groups, headers = _scan(path)
    infos = []
    for key, items in groups.items():
        ds = headers[key]
        slices = [s for f, d in items for s in _slices_of(d, f)]
        spacing = np.nan
        if len(slices) > 1 and all(s.position is not None and s.orientation is not None for s in slices):
            _, pos = _positions(slices)
            gaps = np.diff(np.sort(pos))
            spacing = float(np.median(gaps)) if gaps.size else np.nan
        tsyntax = getattr(ds.get("file_meta", None), "TransferSyntaxUID", None)
        iop = slices[0].orientation
        infos.append(SeriesInfo(
            uid=key, modality=str(ds.get("Modality", "")), n_files=len(items), n_slices=len(slices),
            rows=int(ds.get("Rows", 0)), columns=int(ds.get("Columns", 0)),
            pixel_spacing_mm=tuple(np.atleast_1d(slices[0].pixel_spacing).astype(float).tolist()
                                   if slices[0].pixel_spacing is not None else ()),
            slice_spacing_mm=spacing,
            orientation=tuple(float(v) for v in (iop if iop is not None else [])),
            description=str(ds.get("SeriesDescription", "")),
            transfer_syntax=tsyntax.name if tsyntax else "",
            size_mb=sum(f.stat().st_size for f, _ in items) / 1e6,
            is_ct=_is_ct(ds), slices=slices))
    cts = [s for s in infos if s.is_ct]
    if cts:
        max(cts, key=lambda s: (s.n_slices, s.uid)).chosen = True
    return sorted(infos, key=lambda s: (not s.chosen, -s.n_slices, s.uid))


def _check_geometry(slices, spacing_tol: float) -> tuple[list, np.ndarray, float]:
    """Validate a stack of planes; return them sorted along the normal, the normal, the spacing (mm)."""
    for attr in ("position", "orientation", "pixel_spacing"):
        bad = [s for s in slices if getattr(s, attr) is None]
        if bad:
            raise DicomError(f"missing or malformed {attr} in {_short(bad)}")
    for attr, tol in (("rows", 0), ("columns", 0), ("pixel_spacing", 1e-4), ("orientation", 1e-4)):
        vals = np.array([np.atleast_1d(getattr(s, attr)) for s in slices], dtype=float)
        odd = np.any(np.abs(vals - vals[0]) > tol, axis=1)
        if odd.any():
            other = slices[int(np.argmax(odd))]
            raise DicomError(f"mixed {attr} in one series: {slices[0].name} has "
                             f"{np.round(vals[0], 4).tolist()}, {other.name} has "
                             f"{np.round(vals[odd][0], 4).tolist()}")
    normal, pos = _positions(slices)
    order = np.argsort(pos, kind="stable")
    slices, pos = [slices[i] for i in order], pos[order]
    if len(slices) == 1:
        return slices, normal, np.nan
    gaps = np.diff(pos)
    dup = np.flatnonzero(gaps < 1e-3)
    if dup.size:
        pairs = "; ".join(f"{slices[i].name} and {slices[i + 1].name} at {pos[i]:.2f} mm" for i in dup[:3])
        raise DicomError(f"duplicate slice positions ({dup.size}): {pairs}")
    # In-plane drift of the slice origins: linear in position for a gantry tilt.
    offsets = np.array([s.position for s in slices]) - slices[0].position
    lateral = offsets - np.outer(offsets @ normal, normal)
    drift = np.linalg.norm(lateral[-1])
    tilt = np.degrees(np.arctan2(drift, pos[-1] - pos[0]))
    if tilt > 0.1 and drift > 0.02:
        raise DicomError(f"gantry tilt of {tilt:.2f} deg (slice positions not along the normal of "
                         f"ImageOrientationPatient) in {_short(slices)}; resample the series first")
    line = np.outer((pos - pos[0]) / (pos[-1] - pos[0]), lateral[-1])
    scatter = np.linalg.norm(lateral - line, axis=1)
    if scatter.max() > 0.25 * slices[0].pixel_spacing.min():
        worst = slices[int(np.argmax(scatter))]
        raise DicomError(f"slice {worst.name} is shifted {scatter.max():.2f} mm in-plane from the others")
    step = float(np.median(gaps))
    ratio = gaps / step
    missing = np.flatnonzero((ratio > 1.5) & (np.abs(ratio - np.round(ratio)) < 0.15))
    if missing.size:
        i = missing[0]
        n = int(np.sum(np.round(ratio[missing]) - 1))
        raise DicomError(f"{n} missing slice(s): gap of {gaps[i]:.2f} mm (usual {step:.2f} mm) between "
                         f"{slices[i].name} and {slices[i + 1].name}")
    uneven = np.flatnonzero(np.abs(gaps - step) > max(spacing_tol * step, 1e-3))
    if uneven.size:
        shown = ", ".join(f"{gaps[i]:.3f}" for i in uneven[:5])
        raise DicomError(f"uneven slice spacing: usual {step:.3f} mm, gaps of {shown} mm after "
                         f"{_short([slices[i] for i in uneven])}")
    return slices, normal, step


def _decode(path: Path, ds) -> np.ndarray:
    """Pixel data of a file as (frames, rows, columns)."""
    try:
        arr = ds.pixel_array
    except Exception as exc:  # pydicom raises several types for missing/failed decoders
        ts = getattr(ds.get("file_meta", None), "TransferSyntaxUID", None)
        hint = next((h for p, h in DECODER_HINTS.items() if str(ts).startswith(p)), None)
        how = f"; install {hint}" if hint else ""
        name = ts.name if ts else "unknown transfer syntax"
        raise DicomError(f"cannot decode pixel data of {path.name} ({name}){how}: "
                         f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    return arr.reshape(-1, int(ds.Rows), int(ds.Columns))


def read_dicom_series(path, series_uid: str | None = None, allow_non_ct: bool = False,
                      spacing_tol: float = 0.02) -> Volume:
    """Read one DICOM series into an HU volume.

    Parameters
    ----------
    path : path-like
        Folder (searched recursively), a DICOMDIR, or its folder.
    series_uid : str, optional
        SeriesInstanceUID (or the ``auto-...`` key of :func:`list_series`) to read;
        default the CT series with most slices.
    allow_non_ct : bool
        Accept modalities other than CT.
    spacing_tol : float
        Allowed relative deviation of a slice gap from the median gap.

    Returns
    -------
    Volume
        float32 values after RescaleSlope/Intercept (HU for CT); ``data[i, j, k]`` with ``i``
        along the rows' direction, ``j`` down the columns, ``k`` along the slice normal
        (increasing position). ``meta`` holds technical fields only.

    Raises
    ------
    DicomError
        Empty or non-DICOM input, non-CT modality, unknown series, irregular geometry,
        undecodable pixel data.
    """
    infos = list_series(path)
    if series_uid is not None:
        match = [s for s in infos if s.uid == series_uid]
        if not match:
            raise DicomError(f"series {series_uid} not found in {path}; available: "
                             f"{', '.join(s.uid for s in infos)}")
        info = match[0]
    else:
        chosen = [s for s in infos if s.chosen] or (infos if allow_non_ct else [])
        if not chosen:
            found = ", ".join(f"{s.modality or '?'} ({s.n_files} files)" for s in infos)
            raise DicomError(f"no CT series in {path}; found {found} (use allow_non_ct to read)")
        info = chosen[0]
    if not info.is_ct and not allow_non_ct:
        raise DicomError(f"series {info.uid} has modality {info.modality or 'unknown'}, not CT: "
                         f"{_short(info.slices)}")

    slices, normal, step = _check_geometry(info.slices, spacing_tol)
    first = slices[0]
    data = np.empty((first.columns, first.rows, len(slices)), dtype=np.float32)
    by_file, header = defaultdict(list), None
    for k, s in enumerate(slices):
        by_file[s.path].append(k)
    for p, ks in by_file.items():  # decode each file once (one file holds all frames if enhanced)
        ds = _read(p, headers_only=False)
        header = ds if header is None else header
        frames = _decode(p, ds)
        for k in ks:
            s = slices[k]
            data[:, :, k] = frames[s.frame or 0].T * np.float32(s.slope) + np.float32(s.intercept)

    if np.isnan(step):
        step = float(header.get("SpacingBetweenSlices", 0) or header.get("SliceThickness", 0) or 1.0)
    direction = np.column_stack([first.orientation[:3], first.orientation[3:], normal])
    spacing = [first.pixel_spacing[1], first.pixel_spacing[0], step]
    meta = _technical_meta(header, info.uid, len(slices))
    return Volume(data, spacing, first.position, direction, meta)


def _number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _technical_meta(ds, series_key: str, n_slices: int) -> dict:
    """Non-identifying fields of a header; the series UID only as a salted hash."""
    kernel = ds.get("ConvolutionKernel", "")
    ts = getattr(ds.get("file_meta", None), "TransferSyntaxUID", None)
    return {
        "modality": str(ds.get("Modality", "")),
        "manufacturer": str(ds.get("Manufacturer", "")),
        "kvp": _number(ds.get("KVP")),
        "convolution_kernel": kernel if isinstance(kernel, str) else "\\".join(map(str, kernel)),
        "series_description": str(ds.get("SeriesDescription", "")),
        "series_key": pseudonym(series_key),
        "n_slices": n_slices,
        "slice_thickness_mm": _number(ds.get("SliceThickness")),
        "transfer_syntax": ts.name if ts else "",
        "units": "HU" if _is_ct(ds) else "",
    }


def _uid(key: str, *parts) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[key, *map(str, parts)])


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
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import (CTImageStorage, EnhancedCTImageStorage, ExplicitVRLittleEndian,
                             JPEG2000Lossless, RLELossless)

    codecs = {None: None, "rle": (RLELossless, "pydicom"), "jpeg2000": (JPEG2000Lossless, "pylibjpeg")}
    if compressed not in codecs:
        raise DicomError(f"unknown compression {compressed!r}; use None, 'rle' or 'jpeg2000'")
    stored = np.round((volume.data - intercept) / slope)
    if stored.min() < -32768 or stored.max() > 32767:
        raise DicomError("HU values do not fit int16 with the given rescale slope/intercept")
    stored = np.ascontiguousarray(np.transpose(stored.astype(np.int16), (2, 1, 0)))  # (k, rows, cols)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    d, sp = volume.direction, volume.spacing
    iop = [float(v) for v in np.concatenate([d[:, 0], d[:, 1]])]
    ipp = volume.origin + np.outer(np.arange(volume.shape[2]) * sp[2], d[:, 2])
    normal = np.cross(d[:, 0], d[:, 1])

    def base(sop_class, sop_uid):
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
        ds.SliceThickness = f"{sp[2]:.6g}"
        ds.PositionReferenceIndicator = ""
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = stored.shape[1], stored.shape[2]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        return ds

    def finish(ds, pixels, path):
        ds.PixelData = pixels.tobytes()
        if compressed:
            uid, plugin = codecs[compressed]
            ds.compress(uid, encoding_plugin=plugin)
        ds.save_as(path, enforce_file_format=True)
        return path

    rng = np.random.default_rng(seed)
    if enhanced:
        sop = _uid(uid_key, "enhanced")
        ds = base(EnhancedCTImageStorage, sop)
        ds.NumberOfFrames = stored.shape[0]
        shared = Dataset()
        pm, po, pv = Dataset(), Dataset(), Dataset()
        pm.PixelSpacing, pm.SliceThickness = [float(sp[1]), float(sp[0])], float(sp[2])
        po.ImageOrientationPatient = iop
        pv.RescaleIntercept, pv.RescaleSlope, pv.RescaleType = intercept, slope, "HU"
        shared.PixelMeasuresSequence = Sequence([pm])
        shared.PlaneOrientationSequence = Sequence([po])
        shared.PixelValueTransformationSequence = Sequence([pv])
        ds.SharedFunctionalGroupsSequence = Sequence([shared])
        frames = []
        for k in range(stored.shape[0]):
            fg, pp = Dataset(), Dataset()
            pp.ImagePositionPatient = [float(v) for v in ipp[k]]
            fg.PlanePositionSequence = Sequence([pp])
            frames.append(fg)
        ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
        name = rng.bytes(8).hex() if shuffle_names else "enhanced_ct.dcm"
        return [finish(ds, stored, out / name)]

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
        paths.append(finish(ds, stored[k], out / names[k]))
    return paths
