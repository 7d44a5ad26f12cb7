"""Pedicle-screw planning and screw-in-bone checks.

Two trajectories (screw sizes from Matsukawa et al. 2015, docs/references.md):

``"traditional"`` (TT), 6.5 x 40 mm
    Along the pedicle axis through the centre of the pedicle isthmus, i.e. converging
    medially towards the body, entering at the posterior bone surface on that line (lateral
    pars / base of the transverse process).
``"cortical"`` (CBT), 5.5 x 35 mm
    Entering at the pars, medial and caudal to the pedicle, directed laterally (nominal 10 deg
    from the sagittal plane) and cranially (nominal 25 deg from the axial plane) through the
    pedicle into the posterior-superior body. The nominal angles follow the published CBT
    technique; when the screw would breach the pedicle of the given anatomy, the angle
    closest to nominal that keeps it inside is used and a warning says so.

Traditional lines are measured against a sub-voxel planning surface
(:func:`planning_distance_map`: the mask's occupancy smoothed, its 0.5 level), so a single
voxel added to or missing from the surface, a pin-hole or a one-voxel channel of unfilled
marrow (thin walls partial-volumed in thick slices) does not move the screw; cortical lines
against the voxel surface (:func:`signed_distance_map`), which the smoothed one rounds off
in the concave corners they graze. A line must keep the whole shank at least its radius
(plus WALL_MARGIN_MM) from the surface. The cortical screw is searched over lines near its
nominal direction (no breach, then length, then angle to nominal). The traditional screw
is a robust fit of the pedicle axis (:func:`_consensus_line`): for each
direction of a 2 deg grid its best-seated line through the pedicle, then the mean
direction weighted by the seating margin and a prior of a screw parallel to the endplates,
rather than the single best line -- in a pedicle wider than the screw the best line is a
flat optimum that single surface voxels used to tip by several degrees (issue #16). When
no full-length line seats, the best of the near-nominal and pedicle-core lines is refined
and used with the warnings below. The
tip stays at least ``tip_margin_mm`` inside the anterior or endplate cortex; a screw that
cannot reach its nominal length is shortened with a one-line warning naming what limits it
(a pedicle narrower than the screw, the wall it would breach, or the cortex/endplate its tip
reaches), and the same reason ends the ScrewPlanError when less than half the length fits.
Traditional lines are kept within 35 deg medial convergence and 15 deg cranial/caudal tilt.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, asdict

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from fesim.errors import ScrewPlanError
from fesim.imaging.screwplan import ScrewPlan
from fesim.imaging.segmentation import BODY_CODES, PEDICLE_CODES, subregions
from fesim.imaging.volume import Volume, crop

#: Default (length mm, diameter mm) and nominal (lateral deg, cranial deg) per trajectory.
SCREW_DEFAULTS = {"traditional": (40.0, 6.5), "cortical": (35.0, 5.5)}
CBT_LATERAL_DEG, CBT_CRANIAL_DEG = 10.0, 25.0
#: Least planned clearance (mm) to the pedicle/body wall, absorbing interpolation error.
WALL_MARGIN_MM = 0.1
#: Largest planned exposure (mm) of the screw where it crosses the lamina or pars.
GRAZE_MM = 0.5
#: Largest medial convergence and cranial/caudal tilt (deg, vertebra frame) of a traditional
#: screw: TT convergence is about 5 deg at L1 to 30 deg at L5, roughly parallel to the endplates.
TT_MAX_MEDIAL_DEG, TT_MAX_TILT_DEG = 35.0, 15.0
#: Spread (deg) of the prior of a traditional screw parallel to the endplates.
TT_TILT_PRIOR_DEG = 8.0
#: Power of the traditional consensus weights (how much the best-seated directions dominate).
CONSENSUS_POWER = 2.0
#: Gaussian sigma (voxels) of the mask occupancy whose 0.5 level is the planning surface.
PLAN_SMOOTH_VOX = 0.7
#: Distance (mm) from the surface within which the planning map is sub-voxel exact.
SUBVOXEL_BAND_MM = 10.0
#: Traditional lines: clearance (mm) beyond which a wider margin no longer ranks a line
#: higher, and the weight (mm per deg) of its deviation from the pedicle axis against clearance.
CLEAR_CAP_MM, DEV_WEIGHT_MM_PER_DEG = 2.0, 0.005
#: Clearance (mm) up to which the mean clearance along a traditional screw counts (centring).
MEAN_CAP_MM = 3.0


@dataclass
class ScrewCheck:
    """How well a screw sits in the bone.

    Attributes
    ----------
    fraction_in_bone : float
        Fraction of the screw volume inside the vertebra mask.
    min_wall_mm : float
        Smallest distance (mm) from the screw surface to the bone surface along the part of
        the screw inside the pedicle (whole shank when it does not cross a pedicle);
        negative = the screw breaks through the cortex by that much.
    max_outside_mm : float
        Largest distance (mm) of a screw point outside the bone (the head zone excluded).
    breach : bool
        ``min_wall_mm < 0``.
    tip_in_body : bool or None
        Whether the tip lies in the vertebral body (None without regions).
    """

    fraction_in_bone: float
    min_wall_mm: float
    max_outside_mm: float
    breach: bool
    tip_in_body: bool | None

    def to_dict(self) -> dict:
        return asdict(self)


def signed_distance_map(mask: Volume) -> Volume:
    """Signed distance (mm) to the surface of a mask, negative inside.

    The surface is taken half a voxel beyond the outermost voxel centres.
    """
    m = mask.data > 0
    h = mask.spacing
    half = 0.5 * float(h.min())
    inside = ndi.distance_transform_edt(np.pad(m, 1), sampling=h)[1:-1, 1:-1, 1:-1]
    outside = ndi.distance_transform_edt(~m, sampling=h) if m.any() else np.full(m.shape, 1e6)
    sd = np.where(m, -(inside - half), outside - half).astype(np.float32)
    return mask.with_data(sd, units="mm")


def planning_distance_map(mask: Volume, sigma_vox: float = PLAN_SMOOTH_VOX) -> Volume:
    """Signed distance (mm, negative inside) to a sub-voxel surface of a mask, for planning.

    The mask's occupancy is smoothed (Gaussian, ``sigma_vox`` voxels along each axis),
    interpolated onto a grid refined by an integer factor per axis to about half the
    largest voxel size (no finer than 0.75 mm), and its 0.5 level is the surface. A single
    voxel added to or removed from a flat surface, a pin-hole or a one-voxel channel of
    unfilled marrow inside the bone leave that surface in place (their smoothed occupancy
    stays on the same side of 0.5); a whole layer still moves it by its thickness.

    Returns
    -------
    Volume
        On the refined grid (same orientation, ``spacing / factor``), units mm.
    """
    m = (mask.data > 0).astype(np.float32)
    h = mask.spacing.astype(float)
    target = max(0.75, 0.5 * float(h.max()))
    factor = np.maximum(1, np.round(h / target)).astype(int)
    occ = ndi.gaussian_filter(m, sigma=float(sigma_vox), mode="constant", cval=0.0, truncate=3.0)
    if np.any(factor > 1):
        occ = ndi.zoom(occ, factor, order=1, grid_mode=True, mode="grid-constant", cval=0.0)
    hf = h / factor
    origin = mask.origin + mask.direction @ (h * (0.5 / factor - 0.5))
    inside = occ >= 0.5
    fine = Volume(inside, hf, origin, mask.direction, dict(mask.meta))
    sdf = signed_distance_map(fine)
    if not inside.any() or inside.all():
        return sdf
    # Sub-voxel: within a band around the surface, the distance to the 0.5 crossings of the
    # occupancy between neighbouring grid points (linear interpolation along each axis)
    # instead of to the nearest voxel centre of the other side.
    cross = []
    for k in range(3):
        a = np.moveaxis(occ, k, 0)
        lo, hi = a[:-1], a[1:]
        sel = (lo >= 0.5) != (hi >= 0.5)
        ijk = np.argwhere(sel).astype(float)
        frac = (0.5 - lo[sel]) / (hi[sel] - lo[sel])
        ijk[:, 0] += frac
        full = np.empty_like(ijk)
        full[:, [k] + [j for j in range(3) if j != k]] = ijk
        cross.append(full)
    pts = fine.index_to_world(np.vstack(cross))
    band = np.abs(sdf.data) <= SUBVOXEL_BAND_MM
    dist, _ = cKDTree(pts).query(fine.index_to_world(np.argwhere(band)))
    out = sdf.data.copy()
    out[band] = np.where(inside[band], -dist, dist)
    return sdf.with_data(out.astype(np.float32))


def _cylinder_points(screw: ScrewPlan, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Points filling the screw cylinder (LPS mm) and their axial coordinate t (mm)."""
    d = screw.direction
    a = np.cross(d, [1.0, 0.0, 0.0])
    if np.linalg.norm(a) < 0.1:
        a = np.cross(d, [0.0, 1.0, 0.0])
    a /= np.linalg.norm(a)
    b = np.cross(d, a)
    r = screw.radius_mm
    g = np.arange(-r + step / 2, r, step)
    u, v = np.meshgrid(g, g, indexing="ij")
    keep = u**2 + v**2 <= r**2
    u, v = u[keep], v[keep]
    t = np.arange(step / 2, screw.length_mm, step)
    pts = screw.entry + t[:, None, None] * d + u[None, :, None] * a + v[None, :, None] * b
    return pts.reshape(-1, 3), np.repeat(t, u.size)


def check_screw(mask: Volume, screw: ScrewPlan, regions: Volume | None = None,
                tol_mm: float | None = None, sdf: Volume | None = None) -> ScrewCheck:
    """Check that a screw stays in the vertebra.

    Parameters
    ----------
    mask : Volume
        Vertebra mask (non-zero = bone).
    screw : ScrewPlan
    regions : Volume, optional
        Sub-regions (:func:`fesim.imaging.segmentation.subregions`) to locate the pedicle and
        the body; computed when omitted.
    tol_mm : float, optional
        Largest accepted distance (mm) of any screw point outside the bone, the head zone
        (first screw radius) excluded. Default ``max(1 mm, half the largest voxel size)``.
    sdf : Volume, optional
        Precomputed :func:`signed_distance_map` of ``mask``.

    Returns
    -------
    ScrewCheck

    Raises
    ------
    ScrewPlanError
        Part of the screw lies more than ``tol_mm`` outside the bone.

    Warns
    -----
    UserWarning
        The screw breaks through the pedicle (or body) cortex within the tolerance.
    """
    if tol_mm is None:
        tol_mm = max(1.0, 0.5 * float(mask.spacing.max()))
    if regions is None:
        regions = subregions(mask)
    if sdf is None:
        mask, regions = _crop_pair(mask, regions)
        sdf = signed_distance_map(mask)
    step = min(0.4, 0.5 * float(mask.spacing.min()), screw.radius_mm / 3)
    pts, t = _cylinder_points(screw, step)
    big = 1e3
    dist = sdf.sample(pts, order=1, cval=big)
    fraction = float(np.mean(dist <= 0))
    shank = t >= screw.radius_mm
    max_out = float(max(dist[shank].max(), 0.0)) if shank.any() else float(max(dist.max(), 0.0))

    ts = np.arange(screw.radius_mm, screw.length_mm + 1e-9, step)
    axis_pts = screw.entry + ts[:, None] * screw.direction
    wall = -sdf.sample(axis_pts, order=1, cval=big) - screw.radius_mm
    reg = regions.sample(axis_pts, order=0, cval=0).astype(int)
    in_ped = np.isin(reg, tuple(PEDICLE_CODES.values()))
    min_wall = float(wall[in_ped].min() if in_ped.any() else wall.min())
    tip_reg = int(regions.sample(screw.tip - 0.5 * step * screw.direction, order=0, cval=0))
    result = ScrewCheck(fraction, min_wall, max_out, bool(min_wall < 0), tip_reg in BODY_CODES)
    if max_out > tol_mm:
        raise ScrewPlanError(
            f"{screw.side} screw leaves the vertebra by {max_out:.1f} mm (tolerance {tol_mm:.1f} mm); "
            f"{100 * (1 - fraction):.0f}% of its volume is outside the bone"
        )
    if result.breach:
        warnings.warn(
            f"{screw.side} screw breaches the cortex by {-min_wall:.2f} mm "
            f"({100 * fraction:.1f}% of its volume in bone)", stacklevel=2)
    return result


def user_screw(mask: Volume, entry, direction, length_mm: float = 40.0, diameter_mm: float = 6.5,
               side: str = "user", regions: Volume | None = None) -> tuple[ScrewPlan, ScrewCheck]:
    """A screw given by its entry point (LPS mm) and direction, checked like planned ones."""
    try:
        screw = ScrewPlan(side=side, entry=entry, direction=direction, length_mm=float(length_mm),
                          diameter_mm=float(diameter_mm), trajectory="user")
    except ValueError as exc:
        raise ScrewPlanError(f"invalid user screw: {exc}") from None
    return screw, check_screw(mask, screw, regions)


def plan_screws(mask: Volume, regions: Volume | None = None, sides=("left", "right"),
                trajectory: str = "traditional", length_mm: float | None = None,
                diameter_mm: float | None = None, tip_margin_mm: float = 2.0) -> list[ScrewPlan]:
    """Plan pedicle screws in a vertebra.

    Parameters
    ----------
    mask : Volume
        Vertebra mask (non-zero = bone), LPS.
    regions : Volume, optional
        Sub-regions from :func:`fesim.imaging.segmentation.subregions`; computed if omitted.
    sides : sequence of {"left", "right"}
        Patient sides to instrument.
    trajectory : {"traditional", "cortical"}
    length_mm, diameter_mm : float, optional
        Screw size; defaults 40 x 6.5 mm (traditional) or 35 x 5.5 mm (cortical).
    tip_margin_mm : float
        Least distance (mm) between the screw tip's edge and the anterior/endplate surface.

    Returns
    -------
    list of ScrewPlan
        One per side, each already verified with :func:`check_screw`.

    Raises
    ------
    ScrewPlanError
        Unknown trajectory or side, no pedicle found, or no screw of at least half the
        requested length fits (the message says why, e.g. the pedicle's width).

    Warns
    -----
    UserWarning
        A screw shortened below the requested length, with the reason in one line.
    """
    if trajectory not in SCREW_DEFAULTS:
        raise ScrewPlanError(f"trajectory must be 'traditional' or 'cortical', got {trajectory!r}")
    length = float(length_mm or SCREW_DEFAULTS[trajectory][0])
    diameter = float(diameter_mm or SCREW_DEFAULTS[trajectory][1])
    if length <= 0 or diameter <= 0:
        raise ScrewPlanError("screw length and diameter must be positive")
    if regions is None:
        regions = subregions(mask)
    frame = regions.meta.get("frame") or subregions(mask).meta["frame"]
    mask, regions = _crop_pair(mask, regions)
    # The traditional screw is placed on the sub-voxel planning surface (issue #16); the
    # cortical one, grazing the pars and the pedicle's concave corners, on the voxel surface.
    sdf = planning_distance_map(mask) if trajectory == "traditional" else signed_distance_map(mask)
    plans = []
    for side in sides:
        if side not in ("left", "right"):
            raise ScrewPlanError(f"side must be 'left' or 'right', got {side!r}")
        code = PEDICLE_CODES[side]
        centre, ped_axis = _pedicle_geometry(regions, code, frame, side)
        nominal = ped_axis if trajectory == "traditional" else _cbt_direction(frame, side)
        passes, dirs, devs = _candidate_lines(sdf, regions, code, centre, nominal, frame, side,
                                              trajectory, 0.5 * diameter)
        screw = _best_screw(sdf, regions, passes, dirs, devs, side, trajectory, length, diameter,
                            tip_margin_mm, frame, code, nominal)
        check_screw(mask, screw, regions, sdf=sdf)
        plans.append(screw)
    return plans


def _crop_pair(mask: Volume, regions: Volume, margin: int = 8):
    """Mask and regions cropped to the bone plus ``margin`` voxels (speed)."""
    if not np.any(mask.data):
        raise ScrewPlanError("empty vertebra mask")
    sub, box = crop(mask, mask.data > 0, margin)
    cut_mask = Volume(mask.data[box], mask.spacing, sub.origin, mask.direction, dict(mask.meta))
    cut_regions = Volume(regions.data[box], regions.spacing, sub.origin, regions.direction, dict(regions.meta))
    return cut_mask, cut_regions


def _pedicle_geometry(regions: Volume, code: int, frame: dict, side: str):
    """Isthmus centre (LPS mm) and posterior->anterior axis of one pedicle."""
    idx = np.argwhere(regions.data == code)
    if len(idx) < 5:
        raise ScrewPlanError(f"no {side} pedicle found in the vertebra")
    pts = regions.index_to_world(idx)
    body = np.isin(regions.data, BODY_CODES)
    dist = ndi.distance_transform_edt(~body, sampling=regions.spacing)[tuple(idx.T)]
    # Centre line: centroids of the pedicle's iso-distance shells around the body.
    step = max(1.0, float(regions.spacing.max()))
    bins = np.floor(dist / step).astype(int)
    counts = np.bincount(bins)
    used = np.flatnonzero(counts > 0)
    cents = np.stack([np.bincount(bins, weights=pts[:, k])[used] / counts[used] for k in range(3)], 1)
    if len(cents) >= 3:
        c = cents.mean(axis=0)
        direction = np.linalg.svd(cents - c)[2][0]
    else:  # too short for a centre line: principal axis in the axial plane
        c = pts.mean(axis=0)
        q = pts - c
        uv = np.stack([q @ frame["ap_axis"], q @ frame["ml_axis"]], axis=1)
        main = np.linalg.eigh(np.cov(uv.T))[1][:, 1]
        direction = main[0] * frame["ap_axis"] + main[1] * frame["ml_axis"]
    if direction @ frame["ap_axis"] < 0:
        direction = -direction
    # Keep to anatomy: pedicles converge 0-25 deg medially and tilt at most 10 deg sagittally
    # (coarse images give skewed centre lines).
    ap, ml, ax = frame["ap_axis"], frame["ml_axis"], frame["body_axis"]
    medial = -1.0 if side == "left" else 1.0
    conv = np.clip(np.degrees(np.arctan2(medial * (direction @ ml), direction @ ap)), 0.0, 25.0)
    tilt = np.clip(np.degrees(np.arcsin(np.clip(direction @ ax, -1, 1))), -10.0, 10.0)
    c_, t_ = np.deg2rad(conv), np.deg2rad(tilt)
    direction = np.cos(t_) * (np.cos(c_) * ap + medial * np.sin(c_) * ml) + np.sin(t_) * ax
    # Isthmus: the narrowest iso-distance shell (end shells are partial).
    inner = counts[used][1:-1]
    if inner.size:
        k = int(np.argmin(inner)) + 1
        c = cents[max(k - 1, 0): k + 2].mean(axis=0)
    return c, direction / np.linalg.norm(direction)


def _cbt_direction(frame: dict, side: str, lateral_deg: float = CBT_LATERAL_DEG,
                   cranial_deg: float = CBT_CRANIAL_DEG) -> np.ndarray:
    sign = 1.0 if side == "left" else -1.0
    lat, cr = np.deg2rad(lateral_deg), np.deg2rad(cranial_deg)
    d = np.cos(cr) * (np.cos(lat) * frame["ap_axis"] + np.sin(lat) * sign * frame["ml_axis"]) \
        + np.sin(cr) * frame["body_axis"]
    return d / np.linalg.norm(d)


def _cone(axis, max_deg: float, step_deg: float) -> np.ndarray:
    """Unit vectors (M, 3) filling a cone of half-angle ``max_deg`` around ``axis``, ~``step_deg`` apart."""
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    e1 = np.cross(axis, [1.0, 0.0, 0.0] if abs(axis[0]) < 0.9 else [0.0, 1.0, 0.0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(axis, e1)
    out = [axis]
    for theta in np.deg2rad(np.arange(step_deg, max_deg + 1e-9, step_deg)):
        n = max(6, int(round(2 * np.pi * np.sin(theta) / np.deg2rad(step_deg))))
        phi = np.arange(n) * 2 * np.pi / n
        ring = np.cos(theta) * axis + np.sin(theta) * (np.cos(phi)[:, None] * e1 + np.sin(phi)[:, None] * e2)
        out.extend(ring)
    return np.array(out)


def _candidate_lines(sdf: Volume, regions: Volume, code: int, centre, nominal, frame, side,
                     trajectory, radius):
    """Candidate lines: pass points (L, 3), unit directions (L, 3), deviation (deg) from ``nominal``.

    Near-nominal lines through the isthmus centre (offsets up to 3 mm in the plane of the
    mediolateral and body axes) as before. For the traditional trajectory, two wider sets
    make planning robust when the pedicle axis estimate is poor (coarse or real images):
    pass points at the pedicle's deepest voxels (most clearance from its wall), and
    directions in 20 deg cones around the pedicle axis and around the direction from the
    isthmus to the body centre.
    """
    sign = 1.0 if side == "left" else -1.0
    ax, ml = frame["body_axis"], frame["ml_axis"]
    if trajectory == "traditional":
        d_lat, d_cr = np.arange(-10.0, 10.1, 2.5), np.arange(-6.0, 6.1, 3.0)
        base_lat = base_cr = 0.0
    else:
        # From the nominal CBT angles towards the pedicle's own convergence, and 15-30 deg cranial.
        d_lat, d_cr = -np.arange(0.0, 24.1, 2.0), np.arange(-10.0, 5.1, 5.0)
        base_lat, base_cr = CBT_LATERAL_DEG, CBT_CRANIAL_DEG
    dirs = []
    for a in d_lat:
        for b in d_cr:
            if trajectory == "traditional":
                v = _rotate(_rotate(nominal, ax, sign * np.deg2rad(a)), np.cross(nominal, ax), np.deg2rad(b))
            else:
                v = _cbt_direction(frame, side, base_lat + a, base_cr + b)
            dirs.append(v / np.linalg.norm(v))
    offs = np.arange(-3.0, 3.01, 0.5)
    ou, ow = [g.ravel() for g in np.meshgrid(offs, offs, indexing="ij")]
    passes = centre + ou[:, None] * ml + ow[:, None] * ax
    dirs = np.array(dirs)
    pairs = [(np.repeat(passes, len(dirs), 0), np.tile(dirs, (len(passes), 1)))]
    if trajectory == "traditional":
        to_body = np.asarray(frame["body_center"], float) - centre
        to_body /= np.linalg.norm(to_body)
        wide = np.vstack([_cone(nominal, 20.0, 4.0), _cone(to_body, 20.0, 4.0)])
        pts = regions.index_to_world(np.argwhere(regions.data == code))
        depth = sdf.sample(pts, order=1, cval=1e3)
        order = np.argsort(depth)[:40]
        deep = pts[order[depth[order] < -0.5 * radius]]
        pairs.append((np.repeat(deep, len(wide), 0), np.tile(wide, (len(deep), 1))))
    passes, dirs = (np.vstack(a) for a in zip(*pairs))
    if trajectory == "traditional":
        # The wide cones must not turn the screw into a line no surgeon would plan.
        conv, tilt = _angles(dirs, frame, side)
        keep = (conv >= -5.0) & (conv <= TT_MAX_MEDIAL_DEG) & (np.abs(tilt) <= TT_MAX_TILT_DEG)
        passes, dirs = passes[keep], dirs[keep]
    devs = np.degrees(np.arccos(np.clip(dirs @ nominal, -1.0, 1.0)))
    return passes, dirs, devs


def _angles(dirs, frame: dict, side: str):
    """Medial convergence and cranial tilt (deg) of directions (..., 3) in the vertebra frame."""
    medial = -1.0 if side == "left" else 1.0
    dirs = np.asarray(dirs, float)
    conv = np.degrees(np.arctan2(medial * (dirs @ frame["ml_axis"]), dirs @ frame["ap_axis"]))
    tilt = np.degrees(np.arcsin(np.clip(dirs @ frame["body_axis"], -1.0, 1.0)))
    return conv, tilt


def _fit_lines(sdf: Volume, passes, dirs, radius: float, length: float, tip_margin: float,
               slack: float, regions: Volume | None = None, codes=(), step: float = 0.5) -> dict:
    """How a screw of ``radius`` and at most ``length`` fits on each line (arrays over lines).

    Keys: ``t_entry`` and ``t_front`` (mm from the pass point: head, and the farthest
    acceptable tip), ``avail`` (mm between them), ``got`` (``min(avail, length)``),
    ``wall`` (least clearance, mm, from where the screw is first seated to its tip),
    ``ok`` (seated without breach, pass point in bone) and ``front_bad`` (the shank breaches
    at the first refused tip position).
    """
    ts = np.arange(-40.0, 60.0 + 1e-9, step)                                   # (T,)
    # Work in voxel indices: the map is affine, so transform the few line parameters only.
    m_inv = np.linalg.inv(sdf.direction * sdf.spacing[None, :])
    p_idx = (np.asarray(passes, float) - sdf.origin) @ m_inv.T
    d_idx = np.asarray(dirs, float) @ m_inv.T
    idx = (p_idx[:, None, :] + ts[None, :, None] * d_idx[:, None, :]).reshape(-1, 3).T
    sd = ndi.map_coordinates(sdf.data, idx, order=1, mode="constant", cval=1e3)
    sd = sd.reshape(len(d_idx), len(ts))                                       # (L, T)
    core = None
    if regions is not None:
        pts = np.asarray(passes, float)[:, None, :] + ts[None, :, None] * np.asarray(dirs, float)[:, None, :]
        core = np.isin(regions.sample(pts.reshape(-1, 3), order=0, cval=0), codes)
    i0 = int(np.argmin(np.abs(ts)))
    clear = -sd - radius
    # Entry (screw head): going back from the pass point, the last position where the screw
    # still sits in bone except for at most GRAZE_MM (a thin lamina or an oblique surface).
    back_out = (clear[:, : i0 + 1] < -GRAZE_MM)[:, ::-1]
    n_back = np.where(back_out.any(axis=1), back_out.argmax(axis=1), i0 + 1)
    t_entry = ts[i0] - (n_back - 1) * step
    # Front: the shank must stay in bone (clearance >= -slack) up to the tip, and the tip
    # itself must keep tip_margin from the surface (anterior cortex or endplate).
    front = clear[:, i0:]
    bad = front < -slack
    n_front = np.where(bad.any(axis=1), bad.argmax(axis=1), front.shape[1])
    tip_ok = (front >= tip_margin) & (np.arange(front.shape[1]) < n_front[..., None])
    n_tip = front.shape[1] - 1 - tip_ok[:, ::-1].argmax(axis=1)
    t_front = np.where(tip_ok.any(axis=1), ts[i0] + n_tip * step, ts[i0])
    avail = t_front - t_entry
    got = np.minimum(avail, length)
    # Wall: the least clearance along the shank (past the head, the first radius, as in
    # check_screw) where it runs in the pedicle or the body, up to the tip.
    tt = ts[None, :]
    if core is None:
        core = np.ones(clear.shape, bool)
    else:
        core = np.asarray(core, bool).reshape(clear.shape)
    past = core & (tt >= t_entry[:, None] + radius)
    t_in = np.where(past.any(axis=1), ts[past.argmax(axis=1)], np.inf)
    zone = (tt >= t_in[:, None]) & (tt <= (t_entry + np.maximum(got, 0.0))[:, None])
    wall = np.where(zone, clear, np.inf).min(axis=1)
    wall = np.where(np.isfinite(wall), wall, clear[:, i0])
    n_zone = np.maximum(zone.sum(axis=1), 1)
    centred = np.where(zone, np.minimum(clear, MEAN_CAP_MM), 0.0).sum(axis=1) / n_zone
    centred = np.where(zone.any(axis=1), centred, np.minimum(clear[:, i0], MEAN_CAP_MM))
    ok = (wall >= WALL_MARGIN_MM - slack) & (n_back > 1) & (sd[:, i0] <= 0)
    k = np.minimum(np.round((t_front - ts[i0]) / step).astype(int) + 1, front.shape[1] - 1)
    front_bad = front[np.arange(len(front)), k] < -slack
    return dict(t_entry=t_entry, t_front=t_front, avail=avail, got=got, wall=wall, ok=ok,
                front_bad=front_bad, centred=centred, seated=(n_back > 1) & (sd[:, i0] <= 0))


def _tt_score(fit: dict, devs) -> np.ndarray:
    """Traditional-line score (mm): least clearance up to CLEAR_CAP_MM, plus half the mean
    clearance along the seated screw up to MEAN_CAP_MM (centres it in the pedicle as a fit
    along its length, not at its extreme voxels), less DEV_WEIGHT_MM_PER_DEG per degree from
    the estimated pedicle axis."""
    return (np.minimum(fit["wall"], CLEAR_CAP_MM) + 0.5 * fit["centred"]
            - DEV_WEIGHT_MM_PER_DEG * np.asarray(devs))


def _rank(fit: dict, devs, trajectory: str) -> np.ndarray:
    """Line indices, best first: fits without breach, then length (5 mm bins), then for a
    traditional screw its clearance (up to CLEAR_CAP_MM) less DEV_WEIGHT_MM_PER_DEG per degree
    from the nominal direction -- a continuous trade-off, so a small change of the surface
    moves the choice a little, not across a bin -- or for a cortical screw the angle to its
    nominal one (2 deg bins) before the clearance."""
    ok, got, wall = fit["ok"], fit["got"], fit["wall"]
    if trajectory == "traditional":
        score = _tt_score(fit, devs)
        return np.lexsort((-score, -np.floor(got / 5.0), ~ok))
    return np.lexsort((-np.minimum(wall, 2.0), np.round(np.asarray(devs) / 2.0), -np.floor(got / 5.0), ~ok))


def _refine(fit_lines, p, d, nominal, frame, side, turn: bool = True):
    """Pattern search from one line (pass point ``p``, direction ``d``): shifts across the
    line and tilts about two axes across it, halving the steps from 1 mm / 2 deg down to
    0.125 mm / 0.25 deg, keeping to the traditional angle limits. Returns the best line."""
    def key(fit, devs):
        score = _tt_score(fit, devs)
        return np.stack([fit["ok"].astype(float), np.floor(fit["got"] / 5.0), score], axis=1)

    def better(a, b):
        return tuple(a) > tuple(b)

    p, d = np.asarray(p, float), np.asarray(d, float)
    cur = key(fit_lines(p[None], d[None]),
              np.degrees(np.arccos(np.clip([d @ nominal], -1.0, 1.0))))[0]
    grid = np.array([(i, j) for i in (-1, 0, 1) for j in (-1, 0, 1)], float)
    for h_mm, h_deg in ((1.0, 2.0), (0.5, 1.0), (0.25, 0.5), (0.125, 0.25)):
        for _ in range(6):
            u = np.cross(d, frame["body_axis"])
            u = u / (np.linalg.norm(u) or 1.0)
            w = np.cross(d, u)
            ps = p + h_mm * (grid[:, :1] * u + grid[:, 1:] * w)
            ds = np.array([_rotate(_rotate(d, u, np.deg2rad(h_deg * i)), w, np.deg2rad(h_deg * j))
                           for i, j in grid]) if turn else d[None]
            P, D = np.repeat(ps, len(ds), 0), np.tile(ds, (len(ps), 1))
            conv, tilt = _angles(D, frame, side)
            keep = (conv >= -5.0) & (conv <= TT_MAX_MEDIAL_DEG) & (np.abs(tilt) <= TT_MAX_TILT_DEG)
            if not keep.any():
                break
            P, D = P[keep], D[keep]
            devs = np.degrees(np.arccos(np.clip(D @ nominal, -1.0, 1.0)))
            k = key(fit_lines(P, D), devs)
            best = int(np.lexsort((-k[:, 2], -k[:, 1], -k[:, 0]))[0])
            if not better(k[best], cur + np.array([0.0, 0.0, 1e-4])):
                break
            p, d, cur = P[best], D[best] / np.linalg.norm(D[best]), k[best]
    return p, d


def _frame_dirs(frame: dict, side: str, conv, tilt) -> np.ndarray:
    """Unit directions (N, 3) of medial convergence ``conv`` and cranial tilt ``tilt`` (deg)."""
    medial = -1.0 if side == "left" else 1.0
    c, t = np.deg2rad(np.asarray(conv, float)), np.deg2rad(np.asarray(tilt, float))
    d = ((np.cos(t) * np.cos(c))[:, None] * frame["ap_axis"]
         + (medial * np.cos(t) * np.sin(c))[:, None] * frame["ml_axis"]
         + np.sin(t)[:, None] * frame["body_axis"])
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def _pass_points(sdf: Volume, regions: Volume, code: int, radius: float, slack: float,
                 cell_mm: float = 2.0) -> np.ndarray:
    """Pass points (N, 3) for the consensus search: the pedicle's voxel centres deep enough
    for the screw, thinned to the deepest one per ``cell_mm`` lattice cell."""
    pts = regions.index_to_world(np.argwhere(regions.data == code))
    depth = sdf.sample(pts, order=1, cval=1e3)
    deep = depth <= -(radius - slack)
    if np.count_nonzero(deep) < 5:
        deep = np.argsort(depth)[:20]
    pts, depth = pts[deep], depth[deep]
    order = np.argsort(depth)
    cells = np.floor(pts[order] / cell_mm).astype(np.int64)
    _, first = np.unique(cells, axis=0, return_index=True)
    return pts[order[np.sort(first)]]


def _margin(fit: dict, length: float) -> np.ndarray:
    """A line's seating margin (mm): its wall clearance, less the length it falls short of
    ``length`` -- continuous in the line and in the surface; -inf where the pass point is
    outside the bone or no head position exists."""
    q = fit["wall"] - np.maximum(0.0, length - fit["avail"])
    return np.where(fit["seated"], q, -np.inf)


def _best_shift(fit_lines, P, D, length: float, frame: dict):
    """Per direction (rows of ``D``), the pass point near ``P`` of the largest margin: a
    pattern search across each line, 1 mm down to 0.125 mm steps. Returns (P, margin)."""
    grid = np.array([(i, j) for i in (-1, 0, 1) for j in (-1, 0, 1)], float)
    u = np.cross(D, frame["body_axis"])
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    w = np.cross(D, u)
    q = _margin(fit_lines(P, D), length)
    for h in (1.0, 0.5, 0.25, 0.125):
        for _ in range(3):
            cand = P[:, None, :] + h * (grid[None, :, :1] * u[:, None, :] + grid[None, :, 1:] * w[:, None, :])
            qs = _margin(fit_lines(cand.reshape(-1, 3), np.repeat(D, len(grid), 0)), length)
            qs = qs.reshape(len(D), len(grid))
            k = qs.argmax(axis=1)
            better = qs[np.arange(len(D)), k] > q + 1e-6
            if not better.any():
                break
            P = np.where(better[:, None], cand[np.arange(len(D)), k], P)
            q = np.where(better, qs[np.arange(len(D)), k], q)
    return P, q


def _consensus_line(fit_lines, sdf: Volume, regions: Volume, code: int, frame: dict, side: str,
                    radius: float, slack: float, length: float):
    """The traditional line as a robust fit of the pedicle's axis.

    Every direction of a 2 deg grid over the allowed convergence and tilt gets its best line
    through the pedicle (pass points in the pedicle, then shifted across the line to the
    largest seating margin, :func:`_margin`). The direction is the mean of the directions
    weighted by how far their margin exceeds the least accepted wall clearance, relative to
    the best margin -- the axis of the cone of directions the screw fits through, a weight
    that falls continuously to 0 at the cone's edge, so single surface voxels shift it little,
    where the single best line of a flat optimum (a pedicle wider than the screw) can jump.
    Returns (pass point, direction) or None when no line seats.
    """
    conv, tilt = np.meshgrid(np.arange(-4.0, TT_MAX_MEDIAL_DEG + 1e-9, 2.0),
                             np.arange(-TT_MAX_TILT_DEG, TT_MAX_TILT_DEG + 1e-9, 2.0), indexing="ij")
    dirs = _frame_dirs(frame, side, conv.ravel(), tilt.ravel())
    passes = _pass_points(sdf, regions, code, radius, slack)
    if len(passes) == 0:
        return None
    best = np.full(len(dirs), -np.inf)
    where = np.zeros(len(dirs), int)
    chunk = max(1, 6000 // len(passes))
    for a in range(0, len(dirs), chunk):
        D = dirs[a:a + chunk]
        q = _margin(fit_lines(np.tile(passes, (len(D), 1)), np.repeat(D, len(passes), 0)), length)
        q = q.reshape(len(D), len(passes))
        best[a:a + chunk], where[a:a + chunk] = q.max(axis=1), q.argmax(axis=1)
    floor = WALL_MARGIN_MM - slack
    live = best > floor - 1.0
    if not live.any():
        return None
    P, q = _best_shift(fit_lines, passes[where[live]], dirs[live], length, frame)
    if q.max() <= floor:
        return None
    # Where the walls leave the tilt free (a pedicle taller than the screw), the prior of a
    # screw parallel to the endplates decides.
    w = np.clip((q - floor) / (q.max() - floor), 0.0, 1.0) ** CONSENSUS_POWER \
        * np.exp(-0.5 * (tilt.ravel()[live] / TT_TILT_PRIOR_DEG) ** 2)
    d = (w[:, None] * dirs[live]).sum(axis=0)
    d /= np.linalg.norm(d)
    # Pass point: shifted from the weighted mean and from the best lines' pass points; when
    # the mean direction does not seat (a curved cone), step towards the best direction.
    starts = np.vstack([(w[:, None] * P).sum(axis=0) / w.sum(), P[np.argsort(-q)[:4]]])
    d_best = dirs[live][int(np.argmax(q))]
    for f in (0.0, 0.25, 0.5, 0.75, 1.0):
        v = (1.0 - f) * d + f * d_best
        v /= np.linalg.norm(v)
        Ps, qs = _best_shift(fit_lines, starts, np.tile(v, (len(starts), 1)), length, frame)
        k = int(np.argmax(qs))
        if qs[k] >= floor:
            return Ps[k], v
    return None


def _best_screw(sdf: Volume, regions: Volume, passes, dirs, devs, side, trajectory, length,
                diameter, tip_margin, frame, code, nominal=None):
    """Search the candidate lines; return the best-fitting screw."""
    if len(dirs) == 0:
        raise ScrewPlanError(f"no {side} {trajectory} trajectory to search: the {side} pedicle's "
                             "axis is far from a plausible one (check the vertebra frame)")
    r = 0.5 * diameter
    # Coarse images locate the bone surface only to about half a voxel: tolerate that much.
    slack = max(0.0, 0.5 * (float(regions.spacing.max()) - 1.0))
    codes = BODY_CODES + (code,)

    def fit_lines(P, D):
        return _fit_lines(sdf, P, D, r, length, tip_margin, slack, regions, codes)

    fit = fit_lines(passes, dirs)
    order = _rank(fit, devs, trajectory)
    best = int(order[0])
    p, d = passes[best], dirs[best]
    consensus = None
    if trajectory == "traditional":
        consensus = _consensus_line(fit_lines, sdf, regions, code, frame, side, r, slack, length)
    if consensus is not None:
        p, d = consensus
        one = fit_lines(p[None], d[None])
        if not (one["ok"][0] and one["got"][0] >= length - 1e-6):
            consensus = None
    if trajectory == "traditional" and nominal is not None and consensus is None:
        # Sub-voxel: refine the few best distinct lines and keep the best result.
        starts, picked = [], []
        for i in order[:200]:
            if len(starts) == 3:
                break
            if all(np.linalg.norm(passes[i] - passes[j]) > 1.5
                   or dirs[i] @ dirs[j] < np.cos(np.deg2rad(3.0)) for j in picked):
                picked.append(int(i))
                starts.append(_refine(fit_lines, passes[i], dirs[i], nominal, frame, side))
        P = np.array([q for q, _ in starts])
        D = np.array([v for _, v in starts])
        devs_s = np.degrees(np.arccos(np.clip(D @ nominal, -1.0, 1.0)))
        k = int(_rank(fit_lines(P, D), devs_s, trajectory)[0])
        p, d = P[k], D[k]
    one = fit_lines(p[None], d[None])
    t_entry, t_front = float(one["t_entry"][0]), float(one["t_front"][0])
    wall, ok = float(one["wall"][0]), bool(one["ok"][0])
    dev = float(devs[best])  # cortical: the searched line's angle to the nominal CBT one
    narrow = _narrow_pedicle(sdf, regions, code, side, diameter, slack)
    use = float(min(length, max(float(one["avail"][0]), 0.0)))
    if use < length - 1e-6:
        why = narrow or _front_limit(sdf, regions, frame, side, p, d, t_entry, t_front,
                                     bool(one["front_bad"][0]), tip_margin)
        if use < 0.5 * length:
            most = f" (at most {use:.0f} mm)" if use >= 1.0 else ""
            raise ScrewPlanError(f"no {side} {trajectory} screw of {diameter:g} x {length:g} mm fits"
                                 f"{most}: {why}")
        warnings.warn(f"{side} {trajectory} screw shortened from {length:g} to {use:.1f} mm: {why}",
                      stacklevel=3)
    if not ok:
        why = narrow or f"best line {-wall:.1f} mm into the pedicle wall"
        warnings.warn(f"no {trajectory} {side} screw of {diameter:g} mm fits the pedicle without "
                      f"breaching it ({why}); using the best line", stacklevel=3)
    if dev > 2.0 and trajectory == "cortical":
        warnings.warn(f"{side} cortical trajectory tilted {dev:.0f} deg from the nominal "
                      f"{CBT_LATERAL_DEG:g} deg lateral / {CBT_CRANIAL_DEG:g} deg cranial to stay in "
                      "the pedicle", stacklevel=3)
    entry = p + t_entry * d
    return ScrewPlan(side=side, entry=entry, direction=d, length_mm=use,
                     diameter_mm=diameter, trajectory=trajectory)


def _narrow_pedicle(sdf: Volume, regions: Volume, code: int, side: str, diameter: float,
                    slack: float) -> str | None:
    """Why no screw fits a pedicle too thin for it (its widest inscribed circle), else None."""
    inner = -sdf.sample(regions.index_to_world(np.argwhere(regions.data == code)), order=1, cval=1e3)
    width = 2.0 * float(inner.max()) if inner.size else 0.0
    if width + 2.0 * slack < diameter:
        return f"the {side} pedicle is at most {width:.1f} mm wide, narrower than the {diameter:g} mm screw"
    return None


def _front_limit(sdf: Volume, regions: Volume, frame: dict, side: str, p, d, t_entry: float,
                 t_front: float, breach: bool, tip_margin: float) -> str:
    """One phrase naming what stops a screw from being longer (wall breached or cortex reached)."""
    def where(t):
        x = p + t * d
        g = np.array([sdf.sample(x + e, order=1, cval=1e3) - sdf.sample(x - e, order=1, cval=1e3)
                      for e in 0.5 * np.eye(3)])
        g = g / (np.linalg.norm(g) or 1.0)
        medial = -1.0 if side == "left" else 1.0
        comps = {"anterior": g @ frame["ap_axis"], "posterior": -(g @ frame["ap_axis"]),
                 "medial": medial * (g @ frame["ml_axis"]), "lateral": -medial * (g @ frame["ml_axis"]),
                 "upper": g @ frame["body_axis"], "lower": -(g @ frame["body_axis"])}
        face = max(comps, key=comps.get)
        reg = int(regions.sample(x, order=0, cval=0))
        if reg in PEDICLE_CODES.values():
            return f"{face} wall of the pedicle"
        if face in ("upper", "lower"):
            return f"{face} endplate"
        return f"{face} cortex of the body" if reg in BODY_CODES else f"{face} surface of the bone"

    t_fail = t_front + 0.5  # the first tip position (search step 0.5 mm) that was refused
    face = where(t_fail)
    got = t_front - t_entry
    if got <= 1.0:
        return f"no line through the pedicle keeps the screw inside the bone (nearest: the {face})"
    if breach:
        return f"beyond {got:.1f} mm it would breach the {face}"
    return f"beyond {got:.1f} mm its tip would come within {tip_margin:g} mm of the {face}"


def _rotate(v, axis, angle):
    """Rotate vector ``v`` about unit ``axis`` by ``angle`` (rad), Rodrigues' formula."""
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    v = np.asarray(v, float)
    return v * np.cos(angle) + np.cross(axis, v) * np.sin(angle) + axis * (axis @ v) * (1 - np.cos(angle))
