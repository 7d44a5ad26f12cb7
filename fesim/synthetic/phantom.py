"""Synthetic QCT phantom of a lumbar vertebra (L4) with a calibration phantom under the patient.

The anatomy is defined analytically in patient LPS millimetres (+x left, +y posterior,
+z superior) with the L4 body centred at the origin; the image grid is laid over it. A
non-identity ``direction`` samples the *same* anatomy on a rotated/permuted/flipped grid,
so measurements in world coordinates agree up to sampling error.

Image formation: ground-truth HU (bone from the true scanner calibration
``HU = hu_offset + hu_per_mg * BMD``, soft tissues from fixed values), a Gaussian point
spread function (partial volume), Gaussian noise, rounding to integers.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from fesim.errors import InputError
from fesim.imaging import segmentation as seg
from fesim.imaging.volume import Volume
from fesim.io.atomic import jsonable

#: True HU of the soft tissues (also stored in ``landmarks["tissue_hu"]``).
TISSUE_HU = {"air": -1000.0, "fat": -100.0, "muscle": 50.0, "blood": 40.0,
             "disc": 85.0, "csf": 15.0}

# L4 body: elliptic cylinder, semi-axes (mm) and height (mm); vertebral period with discs.
BODY_A, BODY_B, BODY_H = 22.5, 17.5, 27.0
DISC_H = 9.0
PERIOD = BODY_H + DISC_H
CORTEX_MM = 1.0
# Pedicle: starts inside the body wall at (+-12, 10, 3) and runs backwards, 12 deg outwards.
PEDICLE_START = np.array([12.0, 10.0, 3.0])
PEDICLE_ANGLE = np.deg2rad(12.0)
PEDICLE_LEN, PEDICLE_HALF_W, PEDICLE_HALF_H = 20.0, 4.5, 7.0
# Calibration block (water-equivalent resin, slightly below water so the 0 mg rod shows).
ROD_Y, ROD_PITCH, ROD_RADIUS = 62.0, 20.0, 6.0
BLOCK_Y = (54.0, 70.0)
BLOCK_BELOW_WATER_HU = 25.0


@dataclass
class Rod:
    """A calibration rod: a cylinder along LPS z (the slice axis for an identity grid).

    Attributes
    ----------
    center : ndarray, shape (3,)
        LPS mm, centre of the rod's cross-section at mid-height.
    radius_mm : float
    bmd_mg_cm3 : float
        Known K2HPO4-equivalent density in mg/cm^3 (0 = water rod).
    """

    center: np.ndarray
    radius_mm: float
    bmd_mg_cm3: float


@dataclass
class PhantomSpec:
    """Parameters of :func:`make_phantom` (BMD in mg/cm^3, lengths in mm, noise in HU)."""

    seed: int = 0
    density_scale: float = 1.0
    trabecular_bmd: float = 140.0
    cortical_bmd: float = 700.0
    spacing_mm: tuple = (0.8, 0.8, 1.0)
    noise_hu: float = 12.0
    blur_mm: float = 0.6
    rods_mg_cm3: tuple | None = (0.0, 50.0, 100.0, 200.0)
    neighbours: bool = False
    direction: np.ndarray | None = None
    hu_per_mg: float = 1.2
    hu_offset: float = -2.0


@dataclass
class Phantom:
    """Output of :func:`make_phantom`; all volumes share one grid.

    Attributes
    ----------
    hu : Volume
        Integer-valued float32 HU image with noise and blur (what a scanner gives).
    bmd : Volume
        float32 ground-truth BMD (mg/cm^3), no noise or blur; 0 in soft tissue, the rods'
        nominal density inside the rods.
    labels : Volume
        uint8: 0 background, 1 L4, 2 L3, 3 L5, 4 discs.
    regions : Volume
        uint8 L4 sub-regions: 1 trabecular body, 2 cortical shell of the body, 3 left
        pedicle, 4 right pedicle, 5 other posterior elements.
    rods : list of Rod
    landmarks : dict
        LPS mm points, unit axes and true tissue HU (see :func:`make_phantom`).
    """

    spec: PhantomSpec
    hu: Volume
    bmd: Volume
    labels: Volume
    regions: Volume
    rods: list
    landmarks: dict = field(default_factory=dict)


def _ellipse_sdf(u, v, a, b):
    """Approximate signed distance (mm) to an ellipse with semi-axes a, b (first order)."""
    r = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    g = np.sqrt((u / a**2) ** 2 + (v / b**2) ** 2)
    d = (r - 1.0) * r / np.maximum(g, 1e-12)
    return np.where(r < 1e-9, -min(a, b), d)


def _segment_sdf_xy(x, y, p, q, radius):
    """Signed distance (mm) in the xy plane to a segment p-q thickened by ``radius``."""
    p, q = np.asarray(p, float), np.asarray(q, float)
    d = q - p
    t = np.clip(((x - p[0]) * d[0] + (y - p[1]) * d[1]) / (d @ d), 0.0, 1.0)
    return np.hypot(x - p[0] - t * d[0], y - p[1] - t * d[1]) - radius


def _slab(z, lo, hi):
    """Signed distance (mm) to the slab lo <= z <= hi."""
    return np.abs(z - 0.5 * (lo + hi)) - 0.5 * (hi - lo)


def _pedicle_frame(side: int):
    """Start point and unit axis (anterior->posterior) of the pedicle, side +1 left, -1 right."""
    start = PEDICLE_START * np.array([side, 1.0, 1.0])
    axis = np.array([side * np.sin(PEDICLE_ANGLE), np.cos(PEDICLE_ANGLE), 0.0])
    return start, axis


def _vertebra(x, y, z):
    """Signed distances (mm) of one vertebra centred at the origin.

    Returns a dict with the body, left/right pedicle and other posterior elements.
    """
    parts = {"body": np.maximum(_ellipse_sdf(x, y, BODY_A, BODY_B), _slab(z, -BODY_H / 2, BODY_H / 2))}
    for name, side in (("pedicle_left", 1), ("pedicle_right", -1)):
        start, axis = _pedicle_frame(side)
        lateral = np.array([axis[1], -axis[0], 0.0])
        px, py, pz = x - start[0], y - start[1], z - start[2]
        s = px * axis[0] + py * axis[1]
        t = px * lateral[0] + py * lateral[1]
        parts[name] = np.maximum(_ellipse_sdf(t, pz, PEDICLE_HALF_W, PEDICLE_HALF_H),
                                 _slab(s, 0.0, PEDICLE_LEN))
    post = []
    for side in (1, -1):
        start, axis = _pedicle_frame(side)
        root = start + PEDICLE_LEN * axis
        lamina = _segment_sdf_xy(x, y, root[:2], (0.0, 37.0), 3.0)
        post.append(np.maximum(lamina, _slab(z, -11.0, 9.0)))
        transverse = _segment_sdf_xy(x, y, root[:2] - (0, 3.0), (side * 38.0, 22.0), 3.0)
        post.append(np.maximum(transverse, _slab(z, -1.0, 7.0)))
    spinous = _segment_sdf_xy(x, y, (0.0, 36.0), (0.0, 46.0), 3.0)
    post.append(np.maximum(spinous, _slab(z, -9.0, 6.0)))
    parts["posterior"] = np.minimum.reduce(post)
    return parts


def _partial_volume(bone_sdf, xyz, direction, spacing, eps: float = 0.05):
    """Bone volume fraction of each voxel and the fraction inside the cortex (0..1).

    A CT voxel averages over its box, so edge voxels hold a mix of bone and soft tissue.
    Near a surface the fraction is the linear ramp ``0.5 - sdf / w``, with ``w`` the change
    of the signed distance over one voxel step (``|grad sdf|`` in voxel units, from central
    differences of ``eps`` mm) -- exact for a plane cutting the voxel parallel to a face and
    unbiased on average otherwise. Without it the voxelised 1 mm cortex, and hence the image
    content, would change by several percent between grids of another orientation or phase.
    """
    far = np.abs(bone_sdf + 0.5 * CORTEX_MM) > 0.5 * CORTEX_MM + spacing.max()
    f_bone = (bone_sdf <= 0).astype(float)
    f_inner = (bone_sdf <= -CORTEX_MM).astype(float)
    band = np.flatnonzero(~far)
    if band.size:
        pts = [c[band] for c in xyz]
        grad = np.empty((band.size, 3))
        for a in range(3):
            lo, hi = [list(pts) for _ in range(2)]
            lo[a], hi[a] = pts[a] - eps, pts[a] + eps
            grad[:, a] = (np.minimum.reduce(list(_vertebra(*hi).values()))
                          - np.minimum.reduce(list(_vertebra(*lo).values()))) / (2 * eps)
        w = np.maximum(np.linalg.norm((grad @ direction) * spacing, axis=1), 1e-6)
        sd = bone_sdf[band]
        f_bone[band] = np.clip(0.5 - sd / w, 0.0, 1.0)
        f_inner[band] = np.clip(0.5 - (sd + CORTEX_MM) / w, 0.0, 1.0)
    return f_bone, f_inner


def _grid(spec: PhantomSpec):
    """Origin, direction, shape covering the field of view box on the requested grid."""
    d = np.eye(3) if spec.direction is None else np.asarray(spec.direction, float).reshape(3, 3)
    if not np.allclose(d.T @ d, np.eye(3), atol=1e-6):
        raise InputError("phantom direction must be an orthonormal 3x3 matrix (columns = axes)")
    spacing = np.asarray(spec.spacing_mm, float).reshape(3)
    if np.any(spacing <= 0):
        raise InputError(f"phantom voxel spacing must be positive, got {spacing}")
    zmax = PERIOD + BODY_H / 2 + 4.0 if spec.neighbours else BODY_H / 2 + DISC_H
    lo, hi = np.array([-55.0, -50.0, -zmax]), np.array([55.0, 75.0, zmax])
    corners = np.array(np.meshgrid(*zip(lo, hi), indexing="ij")).reshape(3, -1)
    local = d.T @ corners
    # Snap to multiples of the spacing so the world origin is a grid point for any direction.
    lo_l = np.floor(local.min(axis=1) / spacing + 1e-6) * spacing
    hi_l = np.ceil(local.max(axis=1) / spacing - 1e-6) * spacing
    shape = tuple(int(n) for n in np.round((hi_l - lo_l) / spacing) + 1)
    return d @ lo_l, d, spacing, shape


def _soft_tissue(hu, x, y) -> None:
    """Skin ellipse, subcutaneous fat layer, muscle, fat pocket, aorta, canal (HU in place)."""
    skin = _ellipse_sdf(x, y + 10.0, 80.0, 60.0)
    hu[skin <= 0] = TISSUE_HU["fat"]
    hu[skin <= -8.0] = TISSUE_HU["muscle"]
    hu[np.hypot(x + 25.0, y + 35.0) <= 9.0] = TISSUE_HU["fat"]
    hu[np.hypot(x - 15.0, y + 33.0) <= 10.0] = TISSUE_HU["blood"]
    hu[_ellipse_sdf(x, y - 25.0, 10.0, 7.0) <= 0] = TISSUE_HU["csf"]


def _discs(hu, labels, xyz, levels) -> None:
    """Intervertebral discs above and below each vertebra (HU and label 4, in place)."""
    x, y, z = xyz
    disc_z = [(c + s * (BODY_H + DISC_H) / 2) for c, _ in levels for s in (-1, 1)]
    for zc in sorted(set(np.round(disc_z, 6))):
        disc = np.maximum(_ellipse_sdf(x, y, BODY_A, BODY_B),
                          _slab(z, zc - DISC_H / 2, zc + DISC_H / 2)) <= 0
        hu[disc], labels[disc] = TISSUE_HU["disc"], 4


def _vertebrae(bmd, labels, regions, xyz, levels, spec, d, spacing) -> np.ndarray:
    """BMD (mg/cm^3), labels and (central vertebra) sub-regions of the vertebrae, in place;
    returns the bone volume fraction of each voxel."""
    x, y, z = xyz
    tb, cb = spec.trabecular_bmd * spec.density_scale, spec.cortical_bmd * spec.density_scale
    fraction = np.zeros(x.shape)
    for zc, label in levels:
        # Evaluate each vertebra only on the voxels of its slab (speed with neighbours).
        sel = np.flatnonzero(np.abs(z - zc) <= BODY_H / 2 + spacing.max() + 1.0)
        xs, ys, zs = x.flat[sel], y.flat[sel], z.flat[sel] - zc
        parts = _vertebra(xs, ys, zs)
        bone_sdf = np.minimum.reduce(list(parts.values()))
        bone = bone_sdf <= 0
        f_bone, f_inner = _partial_volume(bone_sdf, (xs, ys, zs), d, spacing)
        # Trabecular BMD: denser near the endplates and posteriorly (about 0.88-1.27 x tb).
        zr = zs / (BODY_H / 2)
        trab = tb * (1.0 + 0.15 * zr**2 + 0.12 * np.clip(ys / BODY_B, -1, 1.5))
        local = np.where(parts["body"] <= 0, trab, 1.2 * tb)
        part = f_bone > 0
        bmd.flat[sel[part]] = ((f_bone - f_inner) * cb + f_inner * local)[part]
        fraction.flat[sel[part]] = f_bone[part]
        idx = sel[bone]
        labels.flat[idx] = label
        if label == 1:
            reg = np.where(parts["pedicle_left"] <= 0, seg.LEFT_PEDICLE, seg.OTHER_POSTERIOR)
            reg = np.where(parts["pedicle_right"] <= 0, seg.RIGHT_PEDICLE, reg)
            reg = np.where(parts["body"] <= 0, np.where(bone_sdf > -CORTEX_MM, seg.CORTICAL_SHELL,
                                                        seg.TRABECULAR_BODY), reg)
            regions.flat[idx] = reg[bone]
    return fraction


def _rods(hu, bmd, x, y, spec) -> list:
    """Calibration rods in their block below the patient (HU and BMD in place); the rods."""
    rods = []
    if not spec.rods_mg_cm3:
        return rods
    n = len(spec.rods_mg_cm3)
    pitch = min(ROD_PITCH, 84.0 / max(n - 1, 1))  # the row must fit the 110 mm field
    if pitch < 2 * ROD_RADIUS + 1.0:
        raise InputError(f"too many calibration rods ({n}); at most 7 fit the field of view")
    block = (np.abs(x) <= 0.5 * pitch * (n - 1) + ROD_RADIUS + 4.0) & \
            (y >= BLOCK_Y[0]) & (y <= BLOCK_Y[1])
    hu[block] = spec.hu_offset - BLOCK_BELOW_WATER_HU
    xs = (np.arange(n) - 0.5 * (n - 1)) * pitch
    for xc, rho in zip(xs, spec.rods_mg_cm3):
        rods.append(Rod(np.array([xc, ROD_Y, 0.0]), ROD_RADIUS, float(rho)))
        inside = np.hypot(x - xc, y - ROD_Y) <= ROD_RADIUS
        bmd[inside] = rho
        hu[inside] = spec.hu_offset + spec.hu_per_mg * rho
    return rods


def _scanner(hu, spec, spacing) -> np.ndarray:
    """The scanner's blur and noise, rounded to 12-bit HU (float32)."""
    rng = np.random.default_rng(spec.seed)
    if spec.blur_mm > 0:
        hu = gaussian_filter(hu, sigma=spec.blur_mm / spacing, mode="nearest")
    hu = hu + rng.normal(0.0, spec.noise_hu, hu.shape) if spec.noise_hu > 0 else hu
    return np.clip(np.round(hu), -1024, 3071).astype(np.float32)


def make_phantom(spec: PhantomSpec = PhantomSpec()) -> Phantom:
    """Build the synthetic QCT phantom.

    Parameters
    ----------
    spec : PhantomSpec
        Geometry, densities (mg/cm^3), scanner calibration and image quality.

    Returns
    -------
    Phantom
        HU image, ground truth BMD/labels/regions, rods and landmarks. ``landmarks`` holds
        ``body_center``, ``body_axis`` (inferior->superior), ``pedicle_left/right`` (isthmus
        centres), ``pedicle_axis_left/right`` (posterior->anterior), ``upper/lower_endplate_z``
        (mm along the axis from the body centre), ``tissue_hu`` (true HU of air, fat, muscle,
        blood), ``fat_roi_center``, ``muscle_roi_center``, ``aorta_center``,
        ``aorta_radius_mm``, ``roi_radius_mm`` (a safe ROI radius in the fat and muscle).
    """
    origin, d, spacing, shape = _grid(spec)
    ijk = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij"), -1)
    x, y, z = np.moveaxis(ijk @ (d * spacing).T + origin, -1, 0)
    del ijk

    hu = np.full(shape, TISSUE_HU["air"])
    bmd = np.zeros(shape)
    labels = np.zeros(shape, np.uint8)
    regions = np.zeros(shape, np.uint8)
    _soft_tissue(hu, x, y)
    levels = [(0.0, 1)] + ([(PERIOD, 2), (-PERIOD, 3)] if spec.neighbours else [])
    _discs(hu, labels, (x, y, z), levels)
    fraction = _vertebrae(bmd, labels, regions, (x, y, z), levels, spec, d, spacing)
    rods = _rods(hu, bmd, x, y, spec)
    bone = fraction > 0
    hu[bone] = (1.0 - fraction[bone]) * hu[bone] + fraction[bone] * spec.hu_offset \
        + spec.hu_per_mg * bmd[bone]
    hu = _scanner(hu, spec, spacing)

    grid = dict(spacing=spacing, origin=origin, direction=d)
    meta = {"modality": "CT", "source": "fesim phantom", "seed": spec.seed}
    return Phantom(
        spec=spec,
        hu=Volume(hu, meta={**meta, "units": "HU"}, **grid),
        bmd=Volume(bmd.astype(np.float32), meta={**meta, "units": "mg/cm^3"}, **grid),
        labels=Volume(labels, meta={**meta, "units": "label"}, **grid),
        regions=Volume(regions, meta={**meta, "units": "label"}, **grid),
        rods=rods,
        landmarks=_landmarks(),
    )


def _landmarks() -> dict:
    """Anatomical reference points (LPS mm) of the L4 phantom."""
    marks = {
        "body_center": np.zeros(3),
        "body_axis": np.array([0.0, 0.0, 1.0]),
        "upper_endplate_z": BODY_H / 2,
        "lower_endplate_z": -BODY_H / 2,
        "tissue_hu": {k: TISSUE_HU[k] for k in ("air", "fat", "muscle", "blood")},
        "fat_roi_center": np.array([-25.0, -35.0, 0.0]),
        "muscle_roi_center": np.array([-35.0, 0.0, 0.0]),
        "aorta_center": np.array([15.0, -33.0, 0.0]),
        "aorta_radius_mm": 10.0,
        "roi_radius_mm": 4.0,
    }
    for name, side in (("left", 1), ("right", -1)):
        start, axis = _pedicle_frame(side)
        # Isthmus: middle of the part of the pedicle behind the posterior body wall.
        marks[f"pedicle_{name}"] = start + 0.6 * PEDICLE_LEN * axis
        marks[f"pedicle_axis_{name}"] = -axis
    return marks


def calibration_truth(spec) -> dict:
    """The true HU-BMD line of a phantom spec (``hu_per_mg``, ``hu_offset``), for truth files."""
    return {"hu_per_mg": spec.hu_per_mg, "hu_offset": spec.hu_offset,
            "equation": "HU = hu_offset + hu_per_mg * BMD (mg/cm^3 K2HPO4)"}


def truth_dict(phantom: Phantom) -> dict:
    """JSON-ready ground truth: spec, true calibration, rods, landmarks and grid."""
    spec = phantom.spec
    return jsonable({
        "spec": asdict(spec),
        "calibration": calibration_truth(spec),
        "rods": [asdict(r) for r in phantom.rods],
        "landmarks": phantom.landmarks,
        "grid": {"shape": phantom.hu.shape, "spacing_mm": phantom.hu.spacing,
                 "origin_lps_mm": phantom.hu.origin, "direction": phantom.hu.direction},
        "labels": {"0": "background", "1": "L4", "2": "L3", "3": "L5", "4": "disc"},
        "regions": {"1": "trabecular body", "2": "cortical shell", "3": "left pedicle",
                    "4": "right pedicle", "5": "other posterior elements"},
    })


def dicom_grid(vol: Volume) -> Volume:
    """``vol`` on the grid a DICOM reader returns after writing it as a series.

    DICOM orders slices along the normal ``row x column`` of ImageOrientationPatient, so a
    left-handed grid comes back with its slice axis ``k`` reversed; a right-handed grid is
    returned unchanged.
    """
    if np.linalg.det(vol.direction) > 0:
        return vol
    d = vol.direction.copy()
    origin = vol.origin + d[:, 2] * vol.spacing[2] * (vol.shape[2] - 1)
    d[:, 2] *= -1.0
    return Volume(np.ascontiguousarray(vol.data[:, :, ::-1]), vol.spacing, origin, d, dict(vol.meta))


def write_phantom(phantom: Phantom, out_dir, compressed: str | None = None,
                  write_labels: bool = True, shuffle_names: bool = False,
                  patient: dict | None = None) -> Path:
    """Write the phantom as a CT DICOM series plus ground truth.

    Parameters
    ----------
    phantom : Phantom
    out_dir : path-like
        Created if needed. Receives ``dicom/`` (one file per slice), ``labels.nii.gz``
        (RAS affine, when ``write_labels``) and ``truth.json``.
    compressed : {None, "rle", "jpeg2000"}
        Lossless pixel data compression.
    write_labels : bool
    shuffle_names : bool
        Random file names, unrelated to the slice order.
    patient : dict, optional
        DICOM patient attributes replacing the defaults (e.g. one ``PatientID`` for all
        visits of a synthetic patient).

    Returns
    -------
    Path
        ``out_dir``.

    Notes
    -----
    A left-handed ``direction`` (e.g. one flipped axis) is read back by
    :func:`fesim.imaging.dicom.read_dicom_series` with ``k`` reversed (slices are ordered
    along the IOP normal); the world geometry is the same. ``labels.nii.gz`` is written on
    the grid the reader returns (:func:`dicom_grid`), so it lands on the same voxels.
    """
    from fesim.imaging.dicom_write import write_dicom_series

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seed = phantom.spec.seed
    write_dicom_series(
        phantom.hu, out / "dicom", compressed=compressed, shuffle_names=shuffle_names, seed=seed,
        patient={"PatientName": "SYNTH^JANE", "PatientID": f"SYN-{seed}",
                 "PatientBirthDate": "19480312", "PatientSex": "F", **(patient or {})},
        series_description="fesim synthetic L4 QCT phantom",
        uid_key=json.dumps(jsonable(asdict(phantom.spec)), sort_keys=True),
    )
    if write_labels:
        from fesim.imaging.nifti import write_nifti

        write_nifti(dicom_grid(phantom.labels), out / "labels.nii.gz",
                    label_names={1: "L4", 2: "L3", 3: "L5", 4: "disc"})
    (out / "truth.json").write_text(json.dumps(truth_dict(phantom), indent=1))
    return out
