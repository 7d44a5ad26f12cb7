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

Both are placed by a search over lines near the nominal one (direction within a few
degrees, offsets within the isthmus cross-section) that keeps the whole screw at least its
radius away from the bone surface, measured with a signed distance map of the mask. For
the traditional trajectory the search also tries lines through the pedicle's deepest
voxels in 20 deg cones around the pedicle axis and around the isthmus -> body-centre
direction, so a poorly estimated pedicle axis (coarse or real images) does not stop
planning; lines near the nominal one win among equally long, breach-free screws. The
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
    sdf = signed_distance_map(mask)
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
                            tip_margin_mm, frame, code)
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
        idx = np.argwhere(regions.data == code)
        deep = idx[np.argsort(sdf.data[tuple(idx.T)])[:40]]
        deep = regions.index_to_world(deep[sdf.data[tuple(deep.T)] < -0.5 * radius])
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


def _best_screw(sdf: Volume, regions: Volume, passes, dirs, devs, side, trajectory, length,
                diameter, tip_margin, frame, code):
    """Search the candidate lines; return the best-fitting screw."""
    if len(dirs) == 0:
        raise ScrewPlanError(f"no {side} {trajectory} trajectory to search: the {side} pedicle's "
                             "axis is far from a plausible one (check the vertebra frame)")
    r = 0.5 * diameter
    # Coarse images locate the bone surface only to about half a voxel: tolerate that much.
    slack = max(0.0, 0.5 * (float(sdf.spacing.max()) - 1.0))
    step = 0.5
    ts = np.arange(-40.0, 60.0 + 1e-9, step)                                   # (T,)
    # Work in voxel indices: the map is affine, so transform the few line parameters only.
    m_inv = np.linalg.inv(sdf.direction * sdf.spacing[None, :])
    p_idx = (passes - sdf.origin) @ m_inv.T
    d_idx = dirs @ m_inv.T
    idx = (p_idx[:, None, :] + ts[None, :, None] * d_idx[:, None, :]).reshape(-1, 3).T
    sd = ndi.map_coordinates(sdf.data, idx, order=1, mode="constant", cval=1e3)
    sd = sd.reshape(len(dirs), len(ts))                                        # (L, T)
    i0 = int(np.argmin(np.abs(ts)))
    inside = sd <= 0
    clear = -sd - r
    # Entry (screw head): going back from the pass point, the last position where the screw
    # still sits in bone except for at most GRAZE_MM (a thin lamina or an oblique surface).
    back_out = (clear[:, : i0 + 1] < -GRAZE_MM)[:, ::-1]
    n_back = np.where(back_out.any(axis=1), back_out.argmax(axis=1), i0 + 1)
    t_entry = ts[i0] - (n_back - 1) * step
    # Front: the shank must stay in bone (clearance >= 0) up to the tip, and the tip itself
    # must keep tip_margin from the surface (anterior cortex or endplate).
    front = clear[:, i0:]
    front_bad = front < -slack
    n_front = np.where(front_bad.any(axis=1), front_bad.argmax(axis=1), front.shape[1])
    tip_ok = (front >= tip_margin) & (np.arange(front.shape[1]) < n_front[..., None])
    n_tip = front.shape[1] - 1 - tip_ok[:, ::-1].argmax(axis=1)
    t_front = np.where(tip_ok.any(axis=1), ts[i0] + n_tip * step, ts[i0])
    avail = t_front - t_entry
    # Between the head and the pass point the screw must keep clear of the pedicle and body walls.
    reg = ndi.map_coordinates(regions.data, idx, order=0, mode="constant", cval=0).reshape(sd.shape)
    tt = ts[None, :]
    zone = (tt >= t_entry[..., None]) & (tt <= 0)
    core = zone & np.isin(reg, BODY_CODES + tuple(PEDICLE_CODES.values()))
    wall = np.where(core, clear, np.inf).min(axis=1)
    wall = np.where(np.isfinite(wall), wall, clear[:, i0])
    ok = (wall >= WALL_MARGIN_MM - slack) & (n_back > 1) & inside[:, i0]
    got = np.minimum(avail, length)
    # Rank: fits without breach, then length (5 mm bins), angle near nominal (2 deg bins), clearance.
    score = -np.minimum(wall, 2.0)
    best = int(np.lexsort((score, np.round(devs / 2.0), -np.floor(got / 5.0), ~ok))[0])
    narrow = _narrow_pedicle(sdf, regions, code, side, diameter, slack)
    use = float(min(length, max(avail[best], 0.0)))
    if use < length - 1e-6:
        k = min(int(round((t_front[best] - ts[i0]) / step)) + 1, front.shape[1] - 1)
        why = narrow or _front_limit(sdf, regions, frame, side, passes[best], dirs[best],
                                     t_entry[best], t_front[best], bool(front[best, k] < -slack),
                                     tip_margin)
        if use < 0.5 * length:
            most = f" (at most {use:.0f} mm)" if use >= 1.0 else ""
            raise ScrewPlanError(f"no {side} {trajectory} screw of {diameter:g} x {length:g} mm fits"
                                 f"{most}: {why}")
        warnings.warn(f"{side} {trajectory} screw shortened from {length:g} to {use:.1f} mm: {why}",
                      stacklevel=3)
    if not ok[best]:
        why = narrow or f"best line {-wall[best]:.1f} mm into the pedicle wall"
        warnings.warn(f"no {trajectory} {side} screw of {diameter:g} mm fits the pedicle without "
                      f"breaching it ({why}); using the best line", stacklevel=3)
    if devs[best] > 2.0 and trajectory == "cortical":
        warnings.warn(f"{side} cortical trajectory tilted {devs[best]:.0f} deg from the nominal "
                      f"{CBT_LATERAL_DEG:g} deg lateral / {CBT_CRANIAL_DEG:g} deg cranial to stay in "
                      "the pedicle", stacklevel=3)
    entry = passes[best] + t_entry[best] * dirs[best]
    return ScrewPlan(side=side, entry=entry, direction=dirs[best], length_mm=use,
                     diameter_mm=diameter, trajectory=trajectory)


def _narrow_pedicle(sdf: Volume, regions: Volume, code: int, side: str, diameter: float,
                    slack: float) -> str | None:
    """Why no screw fits a pedicle too thin for it (its widest inscribed circle), else None."""
    inner = -sdf.data[regions.data == code]
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
