"""Synthetic CT of a lumbar spine: T12 with its ribs, L1-L5, the sacrum and the iliac wings.

Built from the single-vertebra geometry of :mod:`fesim.synthetic.phantom` (same body,
pedicles and posterior elements, scaled per level), posed along a lordotic curve in
patient LPS millimetres (+x left, +y posterior, +z superior) with the L4 body centre at the
origin and L4's axis along +z. Between the bodies lie intervertebral discs of soft-tissue
density, wedged by the lordosis. T12 carries a pair of (12th) ribs whose heads articulate
at its costal facets; the sacrum is a wedge-shaped fused block (S1 body and alae on top,
tapering and curving posteriorly) in contact with the iliac wings at the sacroiliac joints.

The ground-truth label map uses the TotalSegmentator v2 ("total" task) numbering, the
numbers :data:`fesim.imaging.labels.CONVENTIONS` ``["totalseg_v2"]`` holds for the
vertebrae: sacrum 25, S1 26, L5 27 ... L1 31, T12 32, hip_left 77, hip_right 78,
rib_left_12 103, rib_right_12 115. Discs are not a TotalSegmentator "total" class; they are
in a separate map (:attr:`SpinePhantom.discs`).

The grid is axis-aligned (identity direction); image formation (partial volume, blur,
noise, rounding) follows the single-vertebra phantom.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from fesim.errors import InputError
from fesim.imaging.volume import Volume
from fesim.io.atomic import jsonable
# The single-vertebra builder and its constants (one owner of the vertebra's shape).
from fesim.synthetic.phantom import (BODY_A, BODY_B, BODY_H, CORTEX_MM, DISC_H, TISSUE_HU, calibration_truth,
                                     _ellipse_sdf, _scanner, _segment_sdf_xy, _slab, _vertebra)

#: Levels the spine can hold, cranial to caudal (S1 is the top of the sacrum).
SPINE_LEVELS = ("T12", "L1", "L2", "L3", "L4", "L5")
_ALL = SPINE_LEVELS + ("S1",)
#: Linear size of each level relative to the L4 of the single phantom.
LEVEL_SCALE = {"T12": 0.88, "L1": 0.92, "L2": 0.95, "L3": 0.98, "L4": 1.0, "L5": 1.02, "S1": 1.0}
#: Share of the lordosis taken by each motion segment (upper level -> share).
_LORDOSIS_SHARE = {"T12": 0.0, "L1": 0.10, "L2": 0.15, "L3": 0.20, "L4": 0.25, "L5": 0.30}
S1_HEIGHT = 24.0
#: TotalSegmentator v2 ("total") label values of the structures the phantom holds.
TS_VALUES = {"sacrum": 25, "vertebrae_S1": 26, "vertebrae_L5": 27, "vertebrae_L4": 28,
             "vertebrae_L3": 29, "vertebrae_L2": 30, "vertebrae_L1": 31, "vertebrae_T12": 32,
             "hip_left": 77, "hip_right": 78, "rib_left_12": 103, "rib_right_12": 115}
RIB_RADIUS = 4.5
# Rib centre line in the T12 frame (mm, left side; x mirrored for the right): head at the
# costal facet, neck past the transverse process, shaft curving forwards and down.
_RIB = np.array([[26.0, 6.0, 3.0], [40.0, 24.0, 1.0], [70.0, 26.0, -12.0],
                 [95.0, 8.0, -34.0], [104.0, -14.0, -50.0]])
# Iliac wing centre line in the axial plane of the S1 frame (mm, left side), half thickness
# and z range: from the sacroiliac joint round to the anterior superior iliac spine.
_ILIUM = np.array([[44.0, 14.0], [68.0, 8.0], [92.0, -8.0], [106.0, -32.0]])
ILIUM_HALF_T, ILIUM_Z = 5.0, (-70.0, 48.0)
SKIN_A, SKIN_B, SKIN_Y = 122.0, 88.0, 12.0


@dataclass
class SpineSpec:
    """Parameters of :func:`make_spine` (angles in degrees, lengths in mm, BMD in mg/cm^3).

    Attributes
    ----------
    levels : tuple of str
        Contiguous run of :data:`SPINE_LEVELS` to draw (T12 brings its ribs).
    sacrum, pelvis, ribs : bool
        Draw the sacrum (S1 and below), the iliac wings, T12's ribs (when T12 is drawn).
    lordosis_deg : float
        Angle between the L1 and S1 upper endplates (shared by the motion segments).
    margin_mm : float
        Field of view beyond the top of the highest vertebra; the sacrum and iliac wings are
        cut ``sacrum_view_mm`` below the S1 centre, as in a lumbar CT.
    """

    seed: int = 0
    levels: tuple = SPINE_LEVELS
    sacrum: bool = True
    pelvis: bool = True
    ribs: bool = True
    lordosis_deg: float = 40.0
    spacing_mm: tuple = (1.0, 1.0, 1.0)
    noise_hu: float = 12.0
    blur_mm: float = 0.6
    trabecular_bmd: float = 140.0
    cortical_bmd: float = 700.0
    density_scale: float = 1.0
    hu_per_mg: float = 1.2
    hu_offset: float = -2.0
    margin_mm: float = 8.0
    sacrum_view_mm: float = 60.0


@dataclass
class SpinePhantom:
    """Output of :func:`make_spine`; all volumes share one grid.

    Attributes
    ----------
    hu : Volume
        Integer-valued float32 HU image with noise and blur.
    bmd : Volume
        float32 ground-truth BMD (mg/cm^3) of the bone, 0 elsewhere.
    labels : Volume
        uint8 ground truth in TotalSegmentator v2 numbering (:data:`TS_VALUES`),
        ``meta["label_names"]`` names the values present.
    discs : Volume
        uint8 map of the intervertebral discs, 1 = the most cranial; ``meta["label_names"]``
        (e.g. ``{1: "T12-L1"}``).
    poses : dict
        Level -> ``{"center": (3,), "axis": (3,) inferior->superior, "scale": float,
        "tilt_deg": float}`` (LPS mm), for every level of T12..S1 (drawn or not).
    """

    spec: SpineSpec
    hu: Volume
    bmd: Volume
    labels: Volume
    discs: Volume
    poses: dict = field(default_factory=dict)


def _axis(tilt_deg: float) -> np.ndarray:
    t = np.deg2rad(tilt_deg)
    return np.array([0.0, np.sin(t), np.cos(t)])


def spine_poses(lordosis_deg: float = 40.0) -> dict:
    """Centre, axis (inferior->superior, tilted about x), scale and tilt of T12..S1.

    L4 is centred at the origin with its axis along +z; each motion segment above or below
    adds its share of the lordosis, so the column bows anteriorly around L4.
    """
    tilt = {"L4": 0.0}
    for upper, lower in zip(_ALL[3::-1], _ALL[4:0:-1]):  # L3/L4, L2/L3, ... T12/L1
        tilt[upper] = tilt[lower] + _LORDOSIS_SHARE[upper] * lordosis_deg
    for upper, lower in zip(_ALL[4:-1], _ALL[5:]):  # L4/L5, L5/S1
        tilt[lower] = tilt[upper] - _LORDOSIS_SHARE[upper] * lordosis_deg
    height = {lv: (S1_HEIGHT if lv == "S1" else BODY_H * LEVEL_SCALE[lv]) for lv in _ALL}
    center = {"L4": np.zeros(3)}
    i4 = _ALL.index("L4")
    for i in range(i4 - 1, -1, -1):
        lo, up = _ALL[i + 1], _ALL[i]
        center[up] = (center[lo] + _axis(tilt[lo]) * height[lo] / 2
                      + _axis(0.5 * (tilt[lo] + tilt[up])) * DISC_H + _axis(tilt[up]) * height[up] / 2)
    for i in range(i4 + 1, len(_ALL)):
        up, lo = _ALL[i - 1], _ALL[i]
        center[lo] = (center[up] - _axis(tilt[up]) * height[up] / 2
                      - _axis(0.5 * (tilt[lo] + tilt[up])) * DISC_H - _axis(tilt[lo]) * height[lo] / 2)
    return {lv: {"center": center[lv], "axis": _axis(tilt[lv]), "scale": LEVEL_SCALE[lv],
                 "tilt_deg": tilt[lv], "height_mm": height[lv]} for lv in _ALL}


def _local(pose, x, y, z):
    """World LPS mm -> coordinates in the frame of a pose (tilted about x)."""
    c, u = pose["center"], pose["axis"]
    cos, sin = u[2], u[1]
    dy, dz = y - c[1], z - c[2]
    return x - c[0], cos * dy - sin * dz, sin * dy + cos * dz


def _box(pose, lo, hi):
    """World AABB of the local box [lo, hi] of a pose."""
    corners = np.array(np.meshgrid(*zip(lo, hi), indexing="ij")).reshape(3, -1).T
    u = pose["axis"]
    rot = np.array([[1.0, 0, 0], [0, u[2], u[1]], [0, -u[1], u[2]]])  # columns: local axes
    world = corners @ rot.T + pose["center"]
    return world.min(axis=0), world.max(axis=0)


def _polyline_sdf(p, pts, radius):
    """Signed distance (mm) to a 3-D polyline thickened by ``radius``; ``p`` is (x, y, z)."""
    best = None
    for a, b in zip(pts[:-1], pts[1:]):
        d = b - a
        t = np.clip(sum((p[i] - a[i]) * d[i] for i in range(3)) / (d @ d), 0.0, 1.0)
        dist = np.sqrt(sum((p[i] - a[i] - t * d[i]) ** 2 for i in range(3)))
        best = dist if best is None else np.minimum(best, dist)
    return best - radius


def _structures(spec: SpineSpec, poses: dict) -> list:
    """(name, label value, kind, sdf function of world x, y, z, AABB lo, AABB hi) of each part.

    The sdf functions return ``(sdf, trabecular factor)``; kind is "disc" or "bone".
    """
    levels = list(spec.levels)
    out = []
    for lv in levels:
        pose, s = poses[lv], poses[lv]["scale"]

        def vert(x, y, z, pose=pose, s=s):
            lx, ly, lz = _local(pose, x, y, z)
            parts = _vertebra(lx / s, ly / s, lz / s)
            sdf = np.minimum.reduce(list(parts.values())) * s
            zr = lz / (BODY_H * s / 2)
            trab = 1.0 + 0.15 * zr**2 + 0.12 * np.clip(ly / (BODY_B * s), -1, 1.5)
            return sdf, np.where(parts["body"] <= 0, trab, 1.2)
        lo, hi = _box(pose, -np.array([42.0, 19.0, 15.0]) * s, np.array([42.0, 50.0, 15.0]) * s)
        out.append((f"vertebrae_{lv}", TS_VALUES[f"vertebrae_{lv}"], "bone", vert, lo, hi))
    # Discs between consecutive drawn levels (and between L5 and the sacrum).
    stack = levels + (["S1"] if spec.sacrum and levels[-1] == "L5" else [])
    for up, lo_lv in zip(stack[:-1], stack[1:]):
        pu, pl = poses[up], poses[lo_lv]
        e_u = pu["center"] - pu["axis"] * pu["height_mm"] / 2
        e_l = pl["center"] + pl["axis"] * pl["height_mm"] / 2
        s = 0.5 * (pu["scale"] + pl["scale"])
        mid = {"center": 0.5 * (e_u + e_l), "axis": _axis(0.5 * (pu["tilt_deg"] + pl["tilt_deg"]))}

        def disc(x, y, z, mid=mid, s=s, pu=pu, pl=pl, e_u=e_u, e_l=e_l):
            lx, ly, _ = _local(mid, x, y, z)
            below_u = sum((c - e) * a for c, e, a in zip((x, y, z), e_u, pu["axis"]))
            above_l = sum((c - e) * a for c, e, a in zip((x, y, z), e_l, pl["axis"]))
            return np.maximum.reduce([_ellipse_sdf(lx, ly, BODY_A * s, BODY_B * s), below_u, -above_l]), None
        half = np.array([BODY_A * s, BODY_B * s, DISC_H / 2 + 0.5 * BODY_B * s]) + 2.0
        out.append((f"{up}-{lo_lv}", len([o for o in out if o[2] == "disc"]) + 1, "disc", disc,
                    *_box(mid, -half, half)))
    s1 = poses["S1"]
    if spec.sacrum:
        def sacrum(x, y, z):
            lx, ly, lz = _local(s1, x, y, z)
            body = np.maximum(_ellipse_sdf(lx, ly, 24.0, BODY_B), _slab(lz, -S1_HEIGHT / 2, S1_HEIGHT / 2))
            zt = np.clip((6.0 - lz) / 86.0, 0.0, 1.0)
            wedge = np.maximum.reduce([np.abs(lx) - (48.0 - 36.0 * zt),
                                       np.abs(ly - (4.0 + 26.0 * zt**1.5)) - (14.0 - 9.0 * zt),
                                       _slab(lz, -80.0, 6.0)])
            return np.minimum(body, wedge), 1.0
        lo, hi = _box(s1, (-50.0, -20.0, -82.0), (50.0, 42.0, 14.0))
        out.append(("sacrum", TS_VALUES["sacrum"], "bone", sacrum, lo, hi))
    if spec.pelvis:
        for side, name in ((1.0, "hip_left"), (-1.0, "hip_right")):
            def ilium(x, y, z, side=side):
                lx, ly, lz = _local(s1, x, y, z)
                pts = _ILIUM * (side, 1.0)
                wing = np.minimum.reduce([_segment_sdf_xy(lx, ly, a, b, ILIUM_HALF_T)
                                          for a, b in zip(pts[:-1], pts[1:])])
                return np.maximum(wing, _slab(lz, *ILIUM_Z)), 1.0
            xs = np.sort(side * np.array([38.0, 112.0]))
            lo, hi = _box(s1, (xs[0], -40.0, ILIUM_Z[0] - 1), (xs[1], 22.0, ILIUM_Z[1] + 1))
            out.append((name, TS_VALUES[name], "bone", ilium, lo, hi))
    if spec.ribs and "T12" in levels:
        t12 = poses["T12"]
        for side, name in ((1.0, "rib_left_12"), (-1.0, "rib_right_12")):
            pts = _RIB * (side, 1.0, 1.0)

            def rib(x, y, z, pts=pts):
                return _polyline_sdf(_local(t12, x, y, z), pts, RIB_RADIUS), 1.0
            lo, hi = _box(t12, pts.min(axis=0) - RIB_RADIUS - 1, pts.max(axis=0) + RIB_RADIUS + 1)
            out.append((name, TS_VALUES[name], "bone", rib, lo, hi))
    return out


def _check(spec: SpineSpec) -> None:
    levels = tuple(spec.levels)
    if not levels or any(lv not in SPINE_LEVELS for lv in levels):
        raise InputError(f"spine levels must be drawn from {', '.join(SPINE_LEVELS)}, got {levels}")
    idx = [SPINE_LEVELS.index(lv) for lv in levels]
    if idx != list(range(idx[0], idx[0] + len(idx))):
        raise InputError(f"spine levels must be a contiguous run, cranial to caudal, got {levels}")
    if np.any(np.asarray(spec.spacing_mm, float) <= 0):
        raise InputError(f"voxel spacing must be positive, got {spec.spacing_mm}")
    if not 0.0 <= spec.lordosis_deg <= 80.0:
        raise InputError(f"lordosis must lie in 0..80 degrees, got {spec.lordosis_deg}")


def _grid(spec, structures, poses):
    """Origin and shape of an axis-aligned grid over the structures and the skin."""
    spacing = np.asarray(spec.spacing_mm, float).reshape(3)
    z_lo = min(s[4][2] for s in structures if s[2] == "bone")
    top = poses[spec.levels[0]]
    z_hi = top["center"][2] + top["height_mm"] / 2 + spec.margin_mm
    if spec.sacrum or spec.pelvis:
        z_lo = max(z_lo, poses["S1"]["center"][2] - spec.sacrum_view_mm)
    else:
        z_lo = z_lo - spec.margin_mm
    lo = np.array([-SKIN_A - 8.0, SKIN_Y - SKIN_B - 8.0, z_lo])
    hi = np.array([SKIN_A + 8.0, SKIN_Y + SKIN_B + 8.0, z_hi])
    lo = np.floor(lo / spacing) * spacing  # the world origin (L4 centre) stays a voxel centre
    hi = np.ceil(hi / spacing) * spacing
    shape = tuple(int(n) for n in np.round((hi - lo) / spacing) + 1)
    return lo, spacing, shape


def _column_y(poses, z):
    """y (LPS mm) of the column's centre line at height z (interpolated between levels)."""
    zs = np.array([poses[lv]["center"][2] for lv in _ALL])[::-1]
    ys = np.array([poses[lv]["center"][1] for lv in _ALL])[::-1]
    return np.interp(z, zs, ys)


def make_spine(spec: SpineSpec = SpineSpec()) -> SpinePhantom:
    """Build the synthetic spine CT.

    Parameters
    ----------
    spec : SpineSpec

    Returns
    -------
    SpinePhantom
        HU image, ground-truth BMD, TotalSegmentator-numbered labels, discs and level poses.

    Raises
    ------
    InputError
        Levels not a contiguous run of :data:`SPINE_LEVELS`, bad spacing or lordosis.
    """
    _check(spec)
    poses = spine_poses(spec.lordosis_deg)
    structures = _structures(spec, poses)
    origin, spacing, shape = _grid(spec, structures, poses)
    axes = [origin[a] + spacing[a] * np.arange(shape[a]) for a in range(3)]

    hu = np.full(shape, TISSUE_HU["air"], np.float32)
    x2, y2 = np.meshgrid(axes[0], axes[1], indexing="ij")
    skin = _ellipse_sdf(x2, y2 - SKIN_Y, SKIN_A, SKIN_B)
    for k, z in enumerate(axes[2]):
        yc = float(_column_y(poses, z))
        sl = hu[:, :, k]
        sl[skin <= 0] = TISSUE_HU["fat"]
        sl[skin <= -8.0] = TISSUE_HU["muscle"]
        sl[np.hypot(x2 + 30.0, y2 - yc + 45.0) <= 9.0] = TISSUE_HU["fat"]
        if z > -BODY_H / 2:  # the aorta divides at L4
            sl[np.hypot(x2 - 15.0, y2 - yc + 33.0) <= 10.0] = TISSUE_HU["blood"]
        sl[_ellipse_sdf(x2, y2 - yc - 25.0, 10.0, 7.0) <= 0] = TISSUE_HU["csf"]

    labels = np.zeros(shape, np.uint8)
    discs = np.zeros(shape, np.uint8)
    bmd = np.zeros(shape, np.float32)
    fraction = np.zeros(shape, np.float32)
    tb, cb = spec.trabecular_bmd * spec.density_scale, spec.cortical_bmd * spec.density_scale
    for name, value, kind, fn, lo, hi in structures:
        i0 = np.maximum(np.floor((lo - origin) / spacing).astype(int) - 2, 0)
        i1 = np.minimum(np.ceil((hi - origin) / spacing).astype(int) + 3, shape)
        if np.any(i1 <= i0):
            continue
        box = tuple(slice(a, b) for a, b in zip(i0, i1))
        xyz = np.meshgrid(*[axes[a][box[a]] for a in range(3)], indexing="ij")
        sdf, trab = fn(*xyz)
        inside = sdf <= 0
        if kind == "disc":
            hu[box][inside] = TISSUE_HU["disc"]
            discs[box][inside] = value
            continue
        # Partial volume: a linear ramp over one voxel step of the signed distance.
        step = np.linalg.norm(np.stack(np.gradient(sdf)), axis=0) if min(sdf.shape) > 1 else 1.0
        w = np.maximum(step, 0.3 * spacing.min())
        f_bone = np.clip(0.5 - sdf / w, 0.0, 1.0)
        f_inner = np.clip(0.5 - (sdf + CORTEX_MM) / w, 0.0, 1.0)
        val = (f_bone - f_inner) * cb + f_inner * tb * trab
        sub_f, sub_b, sub_l = fraction[box], bmd[box], labels[box]
        better = f_bone > sub_f
        sub_b[better], sub_f[better] = val[better], f_bone[better]
        sub_l[inside & ((sub_l == 0) | (sdf < -0.5))] = value
        if name == "sacrum":  # the S1 vertebra: the top of the sacrum, body and alae
            lz = _local(poses["S1"], *xyz)[2]
            sub_l[inside & (lz > -S1_HEIGHT / 2 - 2.0)] = TS_VALUES["vertebrae_S1"]
    bone = fraction > 0
    hu[bone] = (1.0 - fraction[bone]) * hu[bone] + fraction[bone] * (spec.hu_offset + spec.hu_per_mg * bmd[bone])
    hu = _scanner(hu, spec, spacing)

    grid = dict(spacing=spacing, origin=origin, direction=np.eye(3))
    meta = {"modality": "CT", "source": "fesim spine phantom", "seed": spec.seed}
    present = set(np.unique(labels).tolist())
    names = {v: k for k, v in TS_VALUES.items() if v in present}
    disc_names = {o[1]: o[0] for o in structures if o[2] == "disc"}
    return SpinePhantom(
        spec=spec,
        hu=Volume(hu, meta={**meta, "units": "HU"}, **grid),
        bmd=Volume(bmd, meta={**meta, "units": "mg/cm^3"}, **grid),
        labels=Volume(labels, meta={**meta, "units": "label", "label_names": names}, **grid),
        discs=Volume(discs, meta={**meta, "units": "label", "label_names": disc_names}, **grid),
        poses=poses,
    )


def spine_truth(phantom: SpinePhantom) -> dict:
    """JSON-ready ground truth: spec, calibration, level poses, label tables and grid."""
    spec = phantom.spec
    return jsonable({
        "spec": asdict(spec),
        "calibration": calibration_truth(spec),
        "poses": phantom.poses,
        "labels": {"convention": "totalseg_v2",
                   "names": {str(k): v for k, v in phantom.labels.meta["label_names"].items()}},
        "discs": {str(k): v for k, v in phantom.discs.meta["label_names"].items()},
        "tissue_hu": TISSUE_HU,
        "grid": {"shape": phantom.hu.shape, "spacing_mm": phantom.hu.spacing,
                 "origin_lps_mm": phantom.hu.origin, "direction": phantom.hu.direction},
    })


def write_spine(phantom: SpinePhantom, out_dir, dicom: bool = False, label_names: bool = True) -> Path:
    """Write the spine phantom: ``ct.nii.gz``, ``labels.nii.gz``, ``discs.nii.gz``, ``truth.json``.

    Parameters
    ----------
    phantom : SpinePhantom
    out_dir : path-like
        Created if needed.
    dicom : bool
        Also write the CT as a DICOM series in ``dicom/`` (axis-aligned grid: the reader
        returns the NIfTI's grid).
    label_names : bool
        Store the TotalSegmentator names in ``labels.nii.gz`` (as TotalSegmentator does);
        False writes bare values, to exercise convention detection from values alone.

    Returns
    -------
    Path
        ``out_dir``.
    """
    from fesim.imaging.nifti import write_nifti

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_nifti(phantom.hu, out / "ct.nii.gz")
    write_nifti(phantom.labels, out / "labels.nii.gz",
                label_names=phantom.labels.meta["label_names"] if label_names else {})
    write_nifti(phantom.discs, out / "discs.nii.gz")
    if dicom:
        from fesim.imaging.dicom_write import write_dicom_series

        seed = phantom.spec.seed
        write_dicom_series(
            phantom.hu, out / "dicom", seed=seed,
            patient={"PatientName": "SYNTH^SPINE", "PatientID": f"SYN-SPINE-{seed}",
                     "PatientBirthDate": "19480312", "PatientSex": "F"},
            series_description="fesim synthetic lumbar spine CT",
            uid_key=json.dumps(jsonable(asdict(phantom.spec)), sort_keys=True),
        )
    (out / "truth.json").write_text(json.dumps(spine_truth(phantom), indent=1))
    return out
