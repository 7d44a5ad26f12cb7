"""NIfTI input and output (nibabel), with RAS <-> LPS conversion.

NIfTI world axes are RAS+ (+x towards the patient's Right, +y towards Anterior, +z towards
Superior), while fesim, like DICOM, uses LPS+ (+x towards Left, +y towards Posterior, +z towards Superior).
The two differ by negating the first two world axes, so reading multiplies the affine by
``diag(-1, -1, 1, 1)`` on the left. The voxel array itself is never reordered: voxel
``(i, j, k)`` of the file is voxel ``(i, j, k)`` of the :class:`~fesim.imaging.volume.Volume`.

Label names stored by TotalSegmentator (and other tools writing CIFTI/Caret label tables)
in a NIfTI header extension as XML (``<Label Key="28">vertebrae_L4</Label>``) are read into
``meta["label_names"]`` and written back by :func:`write_nifti`.
"""

from __future__ import annotations

import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from fesim.errors import NiftiError
from fesim.imaging.volume import Volume

#: RAS <-> LPS world-axis flip (its own inverse).
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: Units accepted for images already calibrated to density (kind="density").
DENSITY_UNITS = {"K2HPO4": "mg/cm^3 K2HPO4", "HA": "mg/cm^3 HA"}

#: NIfTI extension code of Caret/CIFTI XML label tables.
_CARET_ECODE = 30
_MAX_XML_BYTES = 5_000_000


def read_nifti(path, kind: str = "ct", density_units: str = "K2HPO4") -> Volume:
    """Read a 3-D NIfTI image into an LPS :class:`Volume`.

    Parameters
    ----------
    path : str or Path
        ``.nii`` or ``.nii.gz`` file.
    kind : {"ct", "labels", "density"}
        ``"ct"``: values in HU (float32). ``"labels"``: an integer label map (values must be
        non-negative integers; stored as the smallest unsigned type). ``"density"``: an image
        already calibrated to bone mineral density in mg/cm^3 (float32).
    density_units : {"K2HPO4", "HA"}
        Calibration material of a ``"density"`` image; recorded in ``meta["units"]``.

    Returns
    -------
    Volume
        ``meta`` holds ``source``, ``kind``, ``units``, ``orientation`` (axis codes of the
        file, e.g. ``"RAS"``) and, when the file has an XML label table, ``label_names``
        (dict int -> str).

    Raises
    ------
    NiftiError
        Missing or unreadable file, data not 3-D (or 4-D with one volume), non-finite or
        singular affine, non-finite voxel values, non-integer label values.
    """
    import nibabel as nib

    if kind not in ("ct", "labels", "density"):
        raise NiftiError(f"kind must be 'ct', 'labels' or 'density', got {kind!r}")
    if kind == "density" and density_units not in DENSITY_UNITS:
        raise NiftiError(f"density_units must be one of {sorted(DENSITY_UNITS)}, got {density_units!r}")
    path = Path(path)
    if not path.is_file():
        raise NiftiError(f"NIfTI file not found: {path}")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises several unrelated types for bad files
        raise NiftiError(f"cannot read {path.name} as NIfTI: {exc}") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise NiftiError(f"{path.name} is not a NIfTI-1/2 image ({type(img).__name__})")

    shape = img.shape
    if len(shape) < 3 or any(n != 1 for n in shape[3:]):
        raise NiftiError(f"{path.name}: expected a 3-D image (or 4-D with one volume), got shape {shape}")
    if min(shape[:3]) < 1:
        raise NiftiError(f"{path.name}: empty image of shape {shape}")

    affine = np.asarray(img.affine, dtype=float)
    spacing, direction, origin = _split_affine(RAS_TO_LPS @ affine, path.name)
    from fesim.resources import check_budget

    check_budget(float(np.prod(shape[:3], dtype=float)) * 12.0,
                 f"{path.name}: an image of {' x '.join(map(str, shape[:3]))} voxels (its header's dim)",
                 "is the header right?")

    try:
        raw = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise NiftiError(f"{path.name}: cannot decode voxel data: {exc}") from None
    raw = raw.reshape(shape[:3])
    if not np.all(np.isfinite(raw)):
        raise NiftiError(f"{path.name}: voxel data contain NaN or infinite values")

    meta = {
        "source": "nifti",
        "kind": kind,
        "orientation": "".join(nib.aff2axcodes(affine)),
    }
    if kind == "labels":
        data = _as_label_array(raw, path.name)
        meta["units"] = "label"
        names = read_label_names(img)
        if names:
            meta["label_names"] = names
    else:
        data = np.asarray(raw, dtype=np.float32)
        if kind == "ct":
            meta["units"] = "HU"
            if data.size and float(data.min()) > -200.0:
                warnings.warn(
                    f"{path.name}: no voxel below -200 HU; is this really a CT in HU "
                    "(missing rescale slope/intercept, or a density image)?",
                    stacklevel=2,
                )
        else:
            meta["units"] = DENSITY_UNITS[density_units]
            meta["calibrated"] = True
    return Volume(data=data, spacing=spacing, origin=origin, direction=direction, meta=meta)


def write_nifti(volume: Volume, path, label_names: dict | None = None) -> Path:
    """Write a :class:`Volume` as NIfTI (RAS world axes, voxel array unchanged).

    Parameters
    ----------
    volume : Volume
        Image in LPS mm. Boolean data are written as uint8.
    path : str or Path
        Output file; ``.nii.gz`` is compressed.
    label_names : dict, optional
        Label value -> name, stored as a Caret XML label-table extension. Defaults to
        ``volume.meta["label_names"]`` when present.

    Returns
    -------
    Path
        The written file.
    """
    import nibabel as nib

    path = Path(path)
    data = volume.data
    if data.dtype == bool:
        data = data.astype(np.uint8)
    affine = RAS_TO_LPS @ volume.affine
    img = nib.Nifti1Image(np.asarray(data), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    names = label_names if label_names is not None else volume.meta.get("label_names")
    if names:
        img.header.extensions.append(nib.nifti1.Nifti1Extension(_CARET_ECODE, _label_xml(names)))
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def read_label_names(img) -> dict:
    """Label value -> name from XML label tables in a NIfTI image's header extensions.

    Any extension whose content parses as XML with ``<Label Key="...">name</Label>``
    elements is used (TotalSegmentator writes such a Caret table with code 0 or 30).
    Returns an empty dict when there is none.
    """
    names: dict[int, str] = {}
    for ext in img.header.extensions:
        content = getattr(ext, "content", None)  # raw bytes (nibabel >= 5.2)
        if content is None:
            content = ext.get_content()
        if isinstance(content, str):
            content = content.encode()
        if not isinstance(content, (bytes, bytearray)) or b"<Label" not in content:
            continue
        if len(content) > _MAX_XML_BYTES:
            warnings.warn("NIfTI XML extension too large; label names ignored", stacklevel=2)
            continue
        try:
            root = ET.fromstring(bytes(content).rstrip(b"\x00 \t\r\n"))
        except ET.ParseError as exc:
            warnings.warn(f"unreadable XML label table in NIfTI extension: {exc}", stacklevel=2)
            continue
        for el in root.iter("Label"):
            key = el.get("Key")
            text = (el.text or "").strip()
            if key is not None and text and key.strip().lstrip("-").isdigit():
                names[int(key)] = text
    return names


def check_same_grid(ct: Volume, labels: Volume, tol_mm: float = 1e-3) -> None:
    """Raise :class:`NiftiError` unless ``labels`` lies on the grid of ``ct``.

    Shapes must be equal and the affines must agree within ``tol_mm`` (mm; also applied to
    the dimensionless direction cosines).
    """
    if ct.shape != labels.shape:
        raise NiftiError(f"label map shape {labels.shape} differs from the CT shape {ct.shape}")
    diff = np.abs(ct.affine - labels.affine)
    if not np.all(diff <= tol_mm):
        worst = float(diff.max())
        raise NiftiError(
            f"label map grid differs from the CT grid (affine differs by up to {worst:.4g}; "
            f"origin CT {np.round(ct.origin, 3).tolist()} vs labels {np.round(labels.origin, 3).tolist()}, "
            f"spacing CT {np.round(ct.spacing, 4).tolist()} vs labels {np.round(labels.spacing, 4).tolist()})"
        )


def reorder_to_grid(vol: Volume, ref: Volume, tol_mm: float = 1e-3) -> Volume | None:
    """``vol`` with its voxel axes permuted and flipped so it lies on ``ref``'s grid, exactly.

    Works when both grids hold the same voxel centres in another axis order or sense (e.g. a
    left-handed grid whose slice axis a DICOM reader reverses, or a sagittal vs an axial
    storage order). No interpolation: every voxel value is kept. Returns None when the grids
    are not such a reordering of each other (within ``tol_mm``).
    """
    dots = ref.direction.T @ vol.direction  # dots[a, b]: ref axis a . vol axis b
    perm = np.argmax(np.abs(dots), axis=1)
    if sorted(perm.tolist()) != [0, 1, 2] or np.any(np.abs(dots[np.arange(3), perm]) < 1 - 1e-4):
        return None
    data = np.transpose(vol.data, perm)
    flip = dots[np.arange(3), perm] < 0
    data = data[tuple(slice(None, None, -1) if f else slice(None) for f in flip)]
    if data.shape != ref.shape:
        return None
    spacing = vol.spacing[perm]
    direction = vol.direction[:, perm] * np.where(flip, -1.0, 1.0)
    last = (np.array(vol.shape)[perm] - 1) * flip
    origin = vol.origin + vol.direction[:, perm] @ (spacing * last)
    out = Volume(np.ascontiguousarray(data), spacing, origin, direction, dict(vol.meta))
    return out if np.all(np.abs(out.affine - ref.affine) <= tol_mm) else None


def labels_on_grid(ct: Volume, labels: Volume, tol_mm: float = 1e-3) -> Volume:
    """The label map on the CT grid: as is, or exactly reordered (axis order and sense).

    Use instead of :func:`check_same_grid` when the label map may have been stored with
    another axis order than the CT reader's, e.g. a left-handed NIfTI (negative qfac, as
    written from a series whose slices run against the image normal) for a DICOM series
    that :func:`fesim.imaging.dicom.read_dicom_series` returns right-handed.

    Raises
    ------
    NiftiError
        The label map covers other voxel centres than the CT (no resampling is done).
    """
    if labels.shape == ct.shape and np.all(np.abs(ct.affine - labels.affine) <= tol_mm):
        return labels
    moved = reorder_to_grid(labels, ct, tol_mm)
    if moved is None:
        check_same_grid(ct, labels, tol_mm)  # raises with the detailed message
        raise NiftiError("label map grid differs from the CT grid")  # pragma: no cover
    return moved


def check_label_map(labels: Volume) -> None:
    """Raise :class:`NiftiError` unless ``labels.data`` holds non-negative integers."""
    _as_label_array(labels.data, "label map")


def _as_label_array(raw: np.ndarray, name: str) -> np.ndarray:
    if raw.dtype.kind == "b":
        return raw.astype(np.uint8)
    if raw.dtype.kind == "f":
        if not np.all(raw == np.round(raw)):
            raise NiftiError(f"{name}: a label map must hold integers, found fractional values")
    elif raw.dtype.kind not in "iu":
        raise NiftiError(f"{name}: unsupported label data type {raw.dtype}")
    if raw.size == 0:
        return raw.astype(np.uint8)
    lo, hi = float(raw.min()), float(raw.max())
    if lo < 0:
        raise NiftiError(f"{name}: label values must be >= 0, found {lo:g}")
    for dtype in (np.uint8, np.uint16, np.uint32):
        if hi <= np.iinfo(dtype).max:
            return raw.astype(dtype)
    raise NiftiError(f"{name}: label value {hi:g} too large")


def _split_affine(affine: np.ndarray, name: str):
    """Spacing (3,), unit direction columns (3, 3) and origin (3,) of a 4x4 LPS affine."""
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise NiftiError(f"{name}: the image affine is not finite")
    m = affine[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    if np.any(spacing <= 1e-9) or abs(np.linalg.det(m)) <= 1e-12:
        raise NiftiError(f"{name}: the image affine is singular (voxel sizes {spacing})")
    direction = m / spacing[None, :]
    gram = direction.T @ direction
    if not np.allclose(gram, np.eye(3), atol=1e-3):
        raise NiftiError(f"{name}: sheared (non-orthogonal) voxel axes are not supported")
    return spacing, direction, affine[:3, 3].copy()


def _label_xml(names: dict) -> bytes:
    root = ET.Element("CaretExtension")
    info = ET.SubElement(root, "VolumeInformation", Index="0")
    table = ET.SubElement(info, "LabelTable")
    for key in sorted(names):
        el = ET.SubElement(table, "Label", Key=str(int(key)))
        el.text = str(names[key])
    ET.SubElement(info, "VolumeType").text = "Label"
    return b'<?xml version="1.0" encoding="UTF-8"?>' + ET.tostring(root)
