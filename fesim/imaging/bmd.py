"""QCT bone mineral density measures of a vertebra, computed in world (LPS mm) coordinates.

Every measure takes a calibrated BMD volume (mg/cm^3) and masks on the same grid. ROIs are
defined geometrically in LPS millimetres and sampled on sub-voxel point sets (trilinear
interpolation), so a rotated or flipped grid gives the same numbers up to resampling noise.

Conventions: BMD in mg/cm^3 (K2HPO4-equivalent unless the calibration says HA), areal BMD in
g/cm^2, lengths in mm. The default body axis is LPS +z and the default anteroposterior axis
is LPS +y (patient supine in the scanner); pass the vertebra's own axes for tilted spines.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from fesim.errors import InputError, SegmentationError
from fesim.imaging.screwplan import ScrewPlan
from fesim.imaging.volume import Volume


def _mask(mask, ref: Volume, name: str) -> np.ndarray:
    """Boolean array of a mask given as Volume or array on ``ref``'s grid."""
    if isinstance(mask, Volume):
        if not mask.same_grid(ref):
            raise InputError(f"{name} is not on the BMD volume's grid")
        mask = mask.data
    mask = np.asarray(mask).astype(bool)
    if mask.shape != ref.shape:
        raise InputError(f"{name} shape {mask.shape} differs from the BMD volume {ref.shape}")
    if not mask.any():
        raise SegmentationError(f"{name} is empty")
    return mask


def _unit(v, name: str) -> np.ndarray:
    v = np.asarray(v, float).reshape(3)
    n = np.linalg.norm(v)
    if not np.isfinite(n) or n == 0:
        raise InputError(f"{name} must be a non-zero vector")
    return v / n


def _frame(axis, ap_hint=(0.0, 1.0, 0.0)):
    """Orthonormal (axis, AP, ML): AP is ``ap_hint`` made perpendicular to the axis."""
    n = _unit(axis, "body axis")
    ap = np.asarray(ap_hint, float) - (np.asarray(ap_hint, float) @ n) * n
    if np.linalg.norm(ap) < 1e-6:
        raise InputError("the AP direction is parallel to the body axis")
    ap /= np.linalg.norm(ap)
    return n, ap, np.cross(n, ap)


def _voxel_world(vol: Volume, mask: np.ndarray) -> np.ndarray:
    return vol.index_to_world(np.argwhere(mask))


def _grid_points(lo, hi, step):
    """Regular points (M, 3) covering the box lo..hi (local coordinates, mm)."""
    axes = [np.arange(a + 0.5 * step, b, step) for a, b in zip(lo, hi)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)


def trabecular_roi(body_mask, ref: Volume, axis=(0.0, 0.0, 1.0), center=None, slab_mm: float = 10.0,
                   inset: float = 0.65) -> dict:
    """Central elliptical trabecular ROI of a vertebral body (LPS mm).

    The ROI is an elliptic cylinder ``slab_mm`` thick, perpendicular to ``axis`` and centred
    on the body's mid-height; its semi-axes are ``inset`` times the half extents of the body
    mask within the slab, along AP and mediolateral, centred on the middle of those extents.
    ``inset = 0.65`` keeps the ROI >= ~4 mm inside a 35 x 45 mm body's cortex, the usual
    QCT practice of an ellipse well inside the endosteal margin.
    """
    m = _mask(body_mask, ref, "body mask")
    n, ap, ml = _frame(axis)
    w = _voxel_world(ref, m)
    c = w.mean(axis=0) if center is None else np.asarray(center, float).reshape(3)
    t = (w - c) @ n
    c = c + 0.5 * (t.min() + t.max()) * n  # mid-height along the axis
    d = w - c
    sl = np.abs(d @ n) <= 0.5 * slab_mm
    if sl.sum() < 10:
        raise SegmentationError("body mask has almost no voxels in the mid-vertebral slab")
    u, v = d[sl] @ ap, d[sl] @ ml
    c = c + 0.5 * (u.min() + u.max()) * ap + 0.5 * (v.min() + v.max()) * ml
    return {"center": c, "axis": n, "ap": ap, "ml": ml, "slab_mm": slab_mm,
            "semi_ap_mm": inset * 0.5 * (u.max() - u.min()),
            "semi_ml_mm": inset * 0.5 * (v.max() - v.min())}


def trabecular_vbmd(bmd: Volume, body_mask, axis=(0.0, 0.0, 1.0), center=None, slab_mm: float = 10.0,
                    inset: float = 0.65, step_mm: float = 0.4) -> float:
    """Trabecular vBMD (mg/cm^3): mean BMD in the central elliptical ROI of :func:`trabecular_roi`.

    Parameters
    ----------
    bmd : Volume
        Calibrated BMD (mg/cm^3).
    body_mask : Volume or ndarray of bool
        Vertebral body (cortex included), same grid.
    axis : array-like (3,)
        Body axis (inferior -> superior), LPS.
    center : array-like (3,), optional
        A point on the body axis; default the mask centroid.
    slab_mm, inset : float
        Slab thickness (mm) and ellipse inset fraction.
    step_mm : float
        Sample spacing of the ROI point set (mm).
    """
    roi = trabecular_roi(body_mask, bmd, axis, center, slab_mm, inset)
    a, b, h = roi["semi_ap_mm"], roi["semi_ml_mm"], 0.5 * slab_mm
    p = _grid_points((-a, -b, -h), (a, b, h), step_mm)
    p = p[(p[:, 0] / a) ** 2 + (p[:, 1] / b) ** 2 <= 1.0]
    world = roi["center"] + p[:, :1] * roi["ap"] + p[:, 1:2] * roi["ml"] + p[:, 2:] * roi["axis"]
    return float(np.mean(bmd.sample(world, order=1, cval=np.nan)))


def mineral_content_mg(bmd: Volume, mask, margin_mm: float = 2.0, exclude=None) -> float:
    """Bone mineral content (mg) of a masked structure, corrected for partial volume.

    The image blur spreads mineral of the cortex a millimetre or two beyond the mask and mixes
    soft-tissue values in. The content is ``sum_mask(BMD) + sum_shell(BMD - background)`` times
    the voxel volume, with the shell the voxels within ``margin_mm`` outside the mask (minus
    ``exclude``, e.g. adjacent bone) and the background a Gaussian-weighted (3 mm) local mean of
    the ring 1.5 mm beyond the shell. ``margin_mm = 0`` gives the plain sum.
    """
    m = _mask(mask, bmd, "mask")
    data = bmd.data.astype(np.float64)
    total = data[m].sum()
    if margin_mm > 0:
        excl = np.zeros(m.shape, bool) if exclude is None else _mask(exclude, bmd, "exclude mask") & ~m
        dist = ndimage.distance_transform_edt(~m, sampling=bmd.spacing)
        shell = (dist > 0) & (dist <= margin_mm) & ~excl
        ring = (dist > margin_mm) & (dist <= margin_mm + 1.5) & ~excl & np.isfinite(data)
        sig = 3.0 / bmd.spacing
        wsum = ndimage.gaussian_filter(ring.astype(float), sig)
        vsum = ndimage.gaussian_filter(np.where(ring, data, 0.0), sig)
        bg = np.where(wsum > 1e-6, vsum / np.maximum(wsum, 1e-6), 0.0)
        total += (data[shell] - bg[shell]).sum()
    return float(total * bmd.voxel_volume_mm3 * 1e-3)


def integral_vbmd(bmd: Volume, body_mask, pv_margin_mm: float = 2.0, exclude=None) -> float:
    """Integral vBMD (mg/cm^3): mineral content of the whole body (cortex included) / its volume.

    With ``pv_margin_mm > 0`` the content is partial-volume corrected
    (:func:`mineral_content_mg`), so blur does not bias it low; pass the posterior elements
    as ``exclude`` so their mineral next to the body is not counted. ``pv_margin_mm = 0`` is
    the plain mean of BMD over the mask.
    """
    m = _mask(body_mask, bmd, "body mask")
    vol_cm3 = m.sum() * bmd.voxel_volume_mm3 * 1e-3
    return mineral_content_mg(bmd, m, pv_margin_mm, exclude) / vol_cm3


def projected_area_mm2(mask_vol: Volume, mask, direction, cell_mm: float = 0.25) -> float:
    """Area (mm^2) of a mask projected along ``direction`` onto the perpendicular plane.

    Rays along ``direction`` through a ``cell_mm`` grid of the plane sample the trilinearly
    interpolated, lightly smoothed mask; a ray hits when any sample reaches 0.5 (the
    iso-surface halfway between inside and outside voxel centres).
    """
    m = _mask(mask, mask_vol, "mask")
    d = _unit(direction, "projection direction")
    d, e1, e2 = _frame(d, (0.0, 0.0, 1.0) if abs(d[2]) < 0.9 else (1.0, 0.0, 0.0))
    w = _voxel_world(mask_vol, m)
    pad = mask_vol.spacing.max()
    lo = np.array([w @ e1, w @ e2, w @ d]).min(axis=1) - pad
    hi = np.array([w @ e1, w @ e2, w @ d]).max(axis=1) + pad
    a = np.arange(lo[0], hi[0], cell_mm)
    b = np.arange(lo[1], hi[1], cell_mm)
    plane = a[:, None, None] * e1 + b[None, :, None] * e2
    # Smoothing (0.7 voxel) removes the staircase of the voxelised surface, whose outermost
    # steps would otherwise enlarge the silhouette by up to half a voxel on oblique grids.
    smooth = ndimage.gaussian_filter(m.astype(np.float32), 0.7)
    fm = Volume(smooth, mask_vol.spacing, mask_vol.origin, mask_vol.direction)
    hit = np.zeros((a.size, b.size), bool)
    for t in np.arange(lo[2], hi[2], 0.5 * mask_vol.spacing.min()):  # ray steps, vectorised per level
        hit |= fm.sample(plane + t * d) >= 0.5
    return float(hit.sum() * cell_mm**2)


def areal_bmd(bmd: Volume, body_mask, ap_axis=(0.0, 1.0, 0.0), pv_margin_mm: float = 2.0,
              exclude=None) -> float:
    """QCT-derived areal BMD (g/cm^2) of the vertebral body as a PA DXA scan would see it.

    Mineral content (partial-volume corrected, :func:`mineral_content_mg`) of the body over
    the area of its projection on the coronal plane (perpendicular to ``ap_axis``). Only the
    body is included (no posterior elements, no overlying soft tissue) and BMD stays
    K2HPO4-equivalent, so values are about 0.1-0.3 g/cm^2 in osteoporotic bone, well below
    DXA's ~0.7-0.9 g/cm^2 (hydroxyapatite scale, posterior elements superimposed). Use it for
    relative changes, not against DXA T-score references.
    """
    bmc_g = mineral_content_mg(bmd, body_mask, pv_margin_mm, exclude) * 1e-3
    return bmc_g / (projected_area_mm2(bmd, body_mask, ap_axis) * 1e-2)


def screw_vbmd(bmd: Volume, screw: ScrewPlan, bone_mask, radius_mm: float | None = None,
               step_mm: float = 0.25) -> float:
    """Mean BMD (mg/cm^3) of bone in a cylinder around the screw path.

    The ROI is coaxial with the screw over its length with radius ``screw.radius_mm + 1 mm``
    by default: the bone the screw displaces plus a 1 mm layer beyond the thread tips that
    carries the pull-out load. Only bone counts (trilinearly interpolated ``bone_mask`` >=
    0.5), so soft tissue outside a narrow pedicle does not dilute the value. The cylinder is
    sampled on a regular point set in the screw's own frame (``step_mm``), independent of
    the image grid.
    """
    m = _mask(bone_mask, bmd, "bone mask")
    r = screw.radius_mm + 1.0 if radius_mm is None else float(radius_mm)
    if r <= 0:
        raise InputError("screw ROI radius must be positive")
    d = screw.direction
    helper = np.array([1.0, 0.0, 0.0]) if abs(d[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = np.cross(d, helper)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(d, e1)
    p = _grid_points((-r, -r, 0.0), (r, r, screw.length_mm), step_mm)
    p = p[p[:, 0] ** 2 + p[:, 1] ** 2 <= r * r]
    world = screw.entry + p[:, :1] * e1 + p[:, 1:2] * e2 + p[:, 2:] * d
    in_bone = Volume(m.astype(np.float32), bmd.spacing, bmd.origin, bmd.direction).sample(world) >= 0.5
    if not in_bone.any():
        raise SegmentationError("no bone around the screw path")
    return float(np.mean(bmd.sample(world[in_bone], order=1)))
