"""Read CT DICOM series into a :class:`~fesim.imaging.volume.Volume`.

Reading groups files by SeriesInstanceUID (or a geometry key when that is empty), orders
slices by their position along the slice normal (never by file name), applies the rescale
per slice, takes the slice spacing from ImagePositionPatient and refuses series that
cannot be a regular 3-D grid (gantry tilt, uneven or missing slices, duplicates, mixed
sizes). Classic one-file-per-slice and enhanced multi-frame CT are supported. No patient
identifier is copied into ``Volume.meta``. Writing test series is
:mod:`fesim.imaging.dicom_write`.
"""

from __future__ import annotations

import errno
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
from fesim.resources import check_budget
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


def _unreadable(f: Path) -> str | None:
    """Why ``f`` cannot be read as a file (broken link, link loop, not a regular file), or None."""
    try:
        f.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop"
        if f.is_symlink():
            return f"broken symbolic link (to {os.readlink(f)})"
        return exc.strerror or type(exc).__name__
    if not f.is_file():
        return "not a regular file (pipe, socket or device)"
    if not os.access(f, os.R_OK):
        return "permission denied"
    return None


def _find_files(path: Path) -> list[Path]:
    """Candidate files: those referenced by a DICOMDIR, else every file below ``path``."""
    if not path.exists():
        why = _unreadable(path) if path.is_symlink() else None
        raise DicomError(f"DICOM input {path} is a {why}" if why else f"DICOM input not found: {path}")
    dicomdir = path if path.is_file() and path.name.upper() == "DICOMDIR" else path / "DICOMDIR"
    if dicomdir.is_file():
        try:
            ds = pydicom.dcmread(dicomdir)
            if "DirectoryRecordSequence" not in ds:
                raise ValueError("no directory records")
            records = list(ds.DirectoryRecordSequence)
        except Exception as exc:  # arbitrary bytes fail in many ways
            raise DicomError(f"DICOMDIR {dicomdir} is unreadable or corrupt: {_first_line(exc)}") from None
        root = dicomdir.parent.resolve()
        files, missing = [], []
        for rec in records:
            ref = rec.get("ReferencedFileID")
            if ref is None:
                continue
            parts = [ref] if isinstance(ref, str) else list(ref)
            f = dicomdir.parent.joinpath(*[str(p) for p in parts])
            if not f.resolve().is_relative_to(root):
                raise DicomError(f"DICOMDIR {dicomdir} references {'/'.join(map(str, parts))}, "
                                 f"outside its folder")
            (files if f.is_file() else missing).append(f)
        if missing:
            raise DicomError(f"DICOMDIR {dicomdir} references missing files: {_short(missing)}")
        if not files:
            raise DicomError(f"DICOMDIR {dicomdir} references no image files")
        return files
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DicomError(f"DICOM input {path} is {_unreadable(path) or 'not a file or folder'}")
    files = sorted(Path(root) / f for root, _, names in os.walk(path) for f in names)
    if not files:
        raise DicomError(f"no files in DICOM folder {path}")
    for f in files:
        why = _unreadable(f)
        if why:
            raise DicomError(f"cannot read {f.relative_to(path)} in {path}: {why}; remove or fix it")
    return files


def _first_line(exc) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _read(path: Path, headers_only: bool):
    """Read a file as DICOM, also without the Part-10 preamble (old ACR-NEMA style); None if not DICOM.

    A file that starts like DICOM (``DICM`` at byte 128) but cannot be parsed is truncated or
    corrupt: :class:`DicomError` naming it, not a silent skip (that would look like a
    missing slice).
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError as exc:
        raise DicomError(f"cannot read {path.name}: {exc.strerror or exc}") from None
    part10 = len(head) == 132 and head[128:132] == b"DICM"
    try:
        return pydicom.dcmread(path, stop_before_pixels=headers_only)
    except InvalidDicomError:
        pass
    except Exception as exc:  # arbitrary bytes fail in many ways
        if part10:
            raise DicomError(f"{path.name} is a truncated or corrupt DICOM file: {_first_line(exc)}") from None
        return None
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=headers_only, force=True)
        if not all(k in ds for k in ("Rows", "Columns", "ImagePositionPatient")):
            return None
    except Exception:  # arbitrary bytes can fail in many ways
        return None
    if "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return ds


def _tag_float(value, default: float) -> float:
    """A numeric tag as float: ``default`` when absent or empty, NaN when malformed."""
    if value is None or (isinstance(value, (str, bytes)) and not value.strip()):
        return default
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return float("nan")


def _tag_int(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return -1


def _slices_of(ds, path: Path) -> list[_Slice]:
    """Image planes of a dataset read without pixel data."""
    rows, cols = _tag_int(ds.get("Rows", 0)), _tag_int(ds.get("Columns", 0))
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
                _tag_float(pick("PixelValueTransformationSequence", "RescaleSlope"), 1.0),
                _tag_float(pick("PixelValueTransformationSequence", "RescaleIntercept"), 0.0)))
        return out
    return [_Slice(path, None, _floats(ds.get("ImagePositionPatient"), 3),
                   _floats(ds.get("ImageOrientationPatient"), 6), rows, cols,
                   _floats(ds.get("PixelSpacing"), 2),
                   _tag_float(ds.get("RescaleSlope"), 1.0),
                   _tag_float(ds.get("RescaleIntercept"), 0.0))]


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


def _sop_class(ds) -> str:
    meta = ds.get("file_meta", None)
    return str(getattr(meta, "MediaStorageSOPClassUID", "") or ds.get("SOPClassUID", ""))


def _scan(path) -> tuple[dict, dict]:
    """Group readable DICOM image files below ``path`` by series key."""
    path = Path(path)
    files = _find_files(path)
    groups, headers = defaultdict(list), {}
    for f in files:
        ds = _read(f, headers_only=True)
        if ds is None:
            continue
        try:
            if "Rows" not in ds:
                if _sop_class(ds) in CT_SOP_CLASSES:  # a CT image file that ends before its image header
                    raise DicomError(f"{f.name} is a truncated or corrupt CT image file (no Rows/Columns "
                                     f"in its header, {f.stat().st_size} bytes)")
                continue  # DICOMDIR, or no image (SR, RTSTRUCT...)
            key = _series_key(ds)
            _slices_of(ds, f)
        except DicomError:
            raise
        except Exception as exc:  # values that pydicom cannot convert, odd sequences, ...
            raise DicomError(f"malformed DICOM header in {f.name}: {_first_line(exc)}") from None
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
        try:
            infos.append(_series_info(key, items, headers[key]))
        except Exception as exc:  # elements pydicom cannot convert
            raise DicomError(f"malformed DICOM header in {_short([f for f, _ in items], 1)}: "
                             f"{_first_line(exc)}") from None
    cts = [s for s in infos if s.is_ct]
    if cts:
        max(cts, key=lambda s: (s.n_slices, s.uid)).chosen = True
    return sorted(infos, key=lambda s: (not s.chosen, -s.n_slices, s.uid))


def _series_info(key: str, items, ds) -> SeriesInfo:
    """Summary of one series (its files and first header)."""
    slices = [s for f, d in items for s in _slices_of(d, f)]
    spacing = np.nan
    if len(slices) > 1 and all(s.position is not None and s.orientation is not None for s in slices):
        with np.errstate(all="ignore"):  # degenerate orientations are refused when read
            _, pos = _positions(slices)
        gaps = np.diff(np.sort(pos))
        spacing = float(np.median(gaps)) if gaps.size else np.nan
    tsyntax = _transfer_syntax(ds)
    iop = slices[0].orientation
    return SeriesInfo(
        uid=key, modality=str(ds.get("Modality", "")), n_files=len(items), n_slices=len(slices),
        rows=_tag_int(ds.get("Rows", 0)), columns=_tag_int(ds.get("Columns", 0)),
        pixel_spacing_mm=tuple(np.atleast_1d(slices[0].pixel_spacing).astype(float).tolist()
                               if slices[0].pixel_spacing is not None else ()),
        slice_spacing_mm=spacing,
        orientation=tuple(float(v) for v in (iop if iop is not None else [])),
        description=str(ds.get("SeriesDescription", "")),
        transfer_syntax=tsyntax.name if tsyntax else "",
        size_mb=sum(f.stat().st_size for f, _ in items) / 1e6,
        is_ct=_is_ct(ds), slices=slices)


def _check_geometry(slices, spacing_tol: float) -> tuple[list, np.ndarray, float]:
    """Validate a stack of planes; return them sorted along the normal, the normal, the spacing (mm)."""
    for attr in ("position", "orientation", "pixel_spacing"):
        bad = [s for s in slices if getattr(s, attr) is None]
        if bad:
            raise DicomError(f"missing or malformed {attr} in {_short(bad)}")
    _check_values(slices)
    sizes = {(s.rows, s.columns) for s in slices}
    if len(sizes) > 1:
        other = next(s for s in slices if (s.rows, s.columns) != (slices[0].rows, slices[0].columns))
        raise DicomError(f"mixed matrix sizes in one series: {slices[0].name} is {slices[0].columns} x "
                         f"{slices[0].rows} pixels, {other.name} is {other.columns} x {other.rows}")
    for attr, tol in (("pixel_spacing", 1e-4), ("orientation", 1e-4)):
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
        raise DicomError(f"the series has a single slice ({slices[0].name}); a 3-D CT series of "
                         f"many slices is needed")
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


def _check_values(slices) -> None:
    """Refuse non-physical header values before any pixel is read (zero, negative or NaN
    spacing, NaN positions, degenerate orientation, zero or non-finite rescale)."""
    for s in slices:
        if s.rows < 1 or s.columns < 1:
            raise DicomError(f"{s.name}: invalid matrix size {s.columns} x {s.rows} (Rows, Columns)")
        if not (np.all(np.isfinite(s.pixel_spacing)) and np.all(s.pixel_spacing > 0)):
            raise DicomError(f"{s.name}: PixelSpacing {s.pixel_spacing.tolist()} must be two positive "
                             f"numbers of mm")
        if not np.all(np.isfinite(s.position)):
            raise DicomError(f"{s.name}: ImagePositionPatient {s.position.tolist()} is not finite")
        o = s.orientation
        if not (np.all(np.isfinite(o)) and abs(np.linalg.norm(o[:3]) - 1) < 0.01
                and abs(np.linalg.norm(o[3:]) - 1) < 0.01 and abs(o[:3] @ o[3:]) < 0.01):
            raise DicomError(f"{s.name}: ImageOrientationPatient {o.tolist()} is not two orthogonal "
                             f"unit vectors")
        if not np.isfinite(s.slope):
            raise DicomError(f"{s.name}: RescaleSlope {s.slope:g} is not a finite number")
        if s.slope == 0:
            raise DicomError(f"{s.name}: RescaleSlope 0 would make every voxel the same value; "
                             f"the slope must be a non-zero number")
        if not np.isfinite(s.intercept):
            raise DicomError(f"{s.name}: RescaleIntercept {s.intercept:g} is not a finite number")


def _decode(path: Path, ds) -> np.ndarray:
    """Pixel data of a file as (frames, rows, columns)."""
    try:
        return _decode_checked(path, ds)
    except DicomError:
        raise
    except Exception as exc:  # elements pydicom cannot convert (bad VR, bad length, ...)
        raise DicomError(f"malformed DICOM header or pixel data in {path.name}: {_first_line(exc)}") from None


def _decode_checked(path: Path, ds) -> np.ndarray:
    if not any(ds.get(k) for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise DicomError(f"{path.name} has no pixel data (a header-only or stripped file)")
    ts = _transfer_syntax(ds)
    name = ts.name if ts else "unknown transfer syntax"
    rows, cols = _tag_int(ds.get("Rows")), _tag_int(ds.get("Columns"))
    spp = _tag_int(ds.get("SamplesPerPixel", 1))
    if spp != 1:
        raise DicomError(f"{path.name} has {spp} samples per pixel (a colour or secondary-capture "
                         f"image), not a CT slice")
    if "PixelData" in ds and ts is not None and ts.is_transfer_syntax and not ts.is_compressed:
        frames = max(_tag_int(ds.get("NumberOfFrames", 1) or 1), 1)
        need = rows * cols * frames * (_tag_int(ds.get("BitsAllocated", 16)) // 8)
        have = len(ds.PixelData)
        if have < need:
            raise DicomError(f"{path.name} is truncated: {have} bytes of pixel data, {need} expected "
                             f"for {frames} frame(s) of {cols} x {rows} pixels")
    try:
        arr = ds.pixel_array
    except Exception as exc:  # pydicom raises several types for missing/failed decoders
        if _decoder_available(ts):
            raise DicomError(f"corrupt pixel data in {path.name} ({name}): {_first_line(exc)}") from None
        hint = next((h for p, h in DECODER_HINTS.items() if str(ts).startswith(p)), None)
        how = f"; install {hint}" if hint else ""
        raise DicomError(f"cannot decode pixel data of {path.name} ({name}){how}: "
                         f"{_first_line(exc)}") from None
    try:
        return arr.reshape(-1, rows, cols)
    except ValueError:
        raise DicomError(f"pixel data of {path.name} ({arr.shape}) do not match its Rows x Columns "
                         f"{rows} x {cols}") from None


def _transfer_syntax(ds):
    """The file's TransferSyntaxUID as a pydicom UID, or None when absent or malformed."""
    from pydicom.uid import UID

    ts = getattr(ds.get("file_meta", None), "TransferSyntaxUID", None)
    try:
        ts = UID(str(ts)) if ts else None
        return ts if ts is not None and ts.is_valid else None
    except Exception:  # a value pydicom cannot hold as a UID
        return None


def _decoder_available(ts) -> bool:
    """True when pydicom has a working decoder for transfer syntax ``ts``."""
    if ts is None:
        return False
    try:
        from pydicom.pixels import get_decoder

        return bool(get_decoder(ts).is_available)
    except Exception:  # unknown syntax, or no decoder interface
        return False


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
        tied = [s for s in infos if s.is_ct and s.n_slices == info.n_slices]
        if series_uid is None and len(tied) > 1 and not allow_non_ct:
            raise DicomError(f"{len(tied)} CT series of {info.n_slices} slices each in {path} "
                             f"({', '.join(s.uid for s in tied)}); choose one with --series-uid")
    if not info.is_ct and not allow_non_ct:
        raise DicomError(f"series {info.uid} has modality {info.modality or 'unknown'}, not CT: "
                         f"{_short(info.slices)}")

    slices, normal, step = _check_geometry(info.slices, spacing_tol)
    first = slices[0]
    check_budget(4.0 * first.columns * first.rows * len(slices) * 1.5,
                 f"series {_short(slices, 1)} of {first.columns} x {first.rows} x {len(slices)} voxels "
                 f"(Rows x Columns in its headers)", "is the header's matrix size right?")
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
            if (s.frame or 0) >= frames.shape[0]:
                raise DicomError(f"{p.name} holds {frames.shape[0]} frame(s), frame {s.frame + 1} is missing")
            with np.errstate(over="ignore", invalid="ignore"):
                data[:, :, k] = frames[s.frame or 0].T * np.float32(s.slope) + np.float32(s.intercept)
            if not np.all(np.isfinite(data[:, :, k])):
                raise DicomError(f"{s.name}: RescaleSlope {s.slope:g} / RescaleIntercept {s.intercept:g} "
                                 f"overflow the image values (beyond 3.4e38)")
    lo, hi = float(data.min()), float(data.max())
    if lo == hi:
        raise DicomError(f"every voxel of the series has the value {lo:g} (blank pixel data?) in "
                         f"{_short(slices)}")

    direction = np.column_stack([first.orientation[:3], first.orientation[3:], normal])
    spacing = [first.pixel_spacing[1], first.pixel_spacing[0], step]
    try:
        meta = _technical_meta(header, info.uid, len(slices))
    except Exception as exc:  # elements pydicom cannot convert
        raise DicomError(f"malformed DICOM header in {_short(slices, 1)}: {_first_line(exc)}") from None
    return Volume(data, spacing, first.position, direction, meta)


def _number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _technical_meta(ds, series_key: str, n_slices: int) -> dict:
    """Non-identifying fields of a header; the series UID only as a salted hash."""
    kernel = ds.get("ConvolutionKernel", "")
    ts = _transfer_syntax(ds)
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


#: Header fields copied by :func:`read_identifiers` (only on the user's explicit request).
IDENTIFIER_TAGS = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "StudyDate",
                   "StudyInstanceUID", "SeriesInstanceUID", "InstitutionName")


def read_identifiers(path, series_uid: str | None = None) -> dict:
    """Identifying header fields of the series :func:`read_dicom_series` reads.

    Only for ``--keep-identifiers`` (an explicit opt-in): everything else fesim writes holds
    no identifier. Values are strings; absent fields are left out.
    """
    infos = list_series(path)
    info = next((s for s in infos if s.uid == series_uid), None) if series_uid else \
        next((s for s in infos if s.chosen), infos[0])
    if info is None:
        raise DicomError(f"series {series_uid} not found in {path}")
    ds = _read(info.slices[0].path, headers_only=True)
    return {k: str(ds.get(k)) for k in IDENTIFIER_TAGS if ds is not None and ds.get(k) not in (None, "")}
