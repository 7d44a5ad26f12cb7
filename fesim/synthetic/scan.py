"""One synthetic QCT visit: a patient's anatomy placed in the scanner in a pose, then imaged.

Frames: the *scanner* frame is the image's LPS world frame (grid axes along it); the *table*
frame is the scanner frame shifted by ``pose.shift_mm`` (the calibration block lies on the
table, its rods along z, and so does the patient's body contour: skin and subcutaneous fat);
the *patient* frame (:mod:`fesim.synthetic.anatomy`) is the table frame rotated by
``pose.rotation`` about the L4 body centre, ``scanner = R @ patient + shift``: the spine and
the tissue around it (aorta, abdominal fat, canal, discs) take the pose, as posture, lordosis
and axial rotation place L4 differently inside a body lying on the same table. The field of view follows the vertebra (as an operator
centres the scan on it on the scout view) and the calibration block.

Image formation is that of :func:`fesim.synthetic.phantom.make_phantom`: true HU (bone from
the scanner calibration ``HU = hu_offset + hu_per_mg * BMD``, soft tissue from fixed values,
partial volume at the bone surface), Gaussian blur, Gaussian noise, rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from fesim.errors import InputError
from fesim.imaging import segmentation as seg
from fesim.imaging.volume import Volume

from .anatomy import Anatomy, BoneState, plaque_fields, soft_tissue_hu, vertebra_fields
from .phantom import Phantom, PhantomSpec, _rods, _scanner


@dataclass(frozen=True)
class Pose:
    """The patient's placement: rotation (3x3, patient -> scanner axes) and shift (mm)."""

    rotation: tuple = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    shift_mm: tuple = (0.0, 0.0, 0.0)

    @property
    def R(self) -> np.ndarray:
        return np.asarray(self.rotation, float)

    @property
    def t(self) -> np.ndarray:
        return np.asarray(self.shift_mm, float)

    @property
    def angle_deg(self) -> float:
        """Rotation angle (degrees)."""
        return float(np.degrees(np.arccos(np.clip(0.5 * (np.trace(self.R) - 1.0), -1.0, 1.0))))


def rotation_matrix(axis, angle_deg: float) -> np.ndarray:
    """Rotation (3x3) by ``angle_deg`` about ``axis`` (any length)."""
    k = np.asarray(axis, float)
    return Rotation.from_rotvec(np.deg2rad(angle_deg) * k / np.linalg.norm(k)).as_matrix()


def draw_pose(rng: np.random.Generator, max_deg: float = 15.0, max_shift_mm: float = 20.0) -> Pose:
    """A random pose: rotation about a random axis by up to ``max_deg``, shift up to
    ``max_shift_mm`` (uniform in the ball)."""
    axis = rng.normal(size=3)
    R = rotation_matrix(axis, rng.uniform(0.0, max_deg))
    v = rng.normal(size=3)
    t = v / np.linalg.norm(v) * max_shift_mm * rng.uniform() ** (1 / 3)
    return Pose(tuple(map(tuple, R.round(12))), tuple(np.round(t, 6)))


def _box_corners(lo, hi) -> np.ndarray:
    return np.array(np.meshgrid(*zip(lo, hi), indexing="ij")).reshape(3, -1).T


def scan_grid(an: Anatomy, pose: Pose, spacing) -> tuple:
    """Origin and shape (identity direction) of a field of view holding the whole vertebra,
    its discs and the calibration block, for the pose."""
    R, t = pose.R, pose.t
    vert = _box_corners((-an.transverse_span - 6, -an.body_b - 4, -0.5 * an.body_h - 4),
                        (an.transverse_span + 6, an.canal_center[1] + 30, 0.5 * an.body_h + 4))
    disc = _box_corners((-an.body_a, -an.body_b, -0.5 * an.body_h - an.disc_h),
                        (an.body_a, an.body_b, 0.5 * an.body_h + an.disc_h))
    pts = np.vstack([vert, disc]) @ R.T + t
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    # the default phantom's in-plane field (aorta, fat, calibration block), moved with the table
    lo[:2] = np.minimum(lo[:2], np.array([-55.0, -50.0]) + t[:2])
    hi[:2] = np.maximum(hi[:2], np.array([55.0, 75.0]) + t[:2])
    spacing = np.asarray(spacing, float)
    lo = np.floor(lo / spacing) * spacing
    shape = tuple(int(n) for n in np.ceil((hi - lo) / spacing) + 1)
    return lo, shape


def make_scan(an: Anatomy, state: BoneState, pose: Pose = Pose(), spec: PhantomSpec = PhantomSpec(),
              seed: int = 0) -> Phantom:
    """Image one visit: the patient ``an`` with bone ``state`` in ``pose``.

    Parameters
    ----------
    an, state : Anatomy, BoneState
    pose : Pose
    spec : PhantomSpec
        Scanner settings used: ``spacing_mm``, ``noise_hu``, ``blur_mm``, ``rods_mg_cm3``,
        ``hu_per_mg``, ``hu_offset`` (the density and geometry fields are not used).
    seed : int
        Seed of the image noise (a new one for every scan).

    Returns
    -------
    Phantom
        With ``spec.seed = seed``; ``labels`` 1 L4, 4 discs; ``landmarks`` in scanner LPS mm
        (``body_center``, ``body_axis``, ``pedicle_left/right``, ``pedicle_axis_left/right``,
        ``aorta_center``) plus ``pose`` (rotation, shift).
    """
    from dataclasses import replace

    spec = replace(spec, seed=int(seed), direction=None, neighbours=False)
    spacing = np.asarray(spec.spacing_mm, float)
    if spacing.shape != (3,) or np.any(spacing <= 0):
        raise InputError(f"scan voxel spacing must be three positive numbers, got {spec.spacing_mm}")
    R, t = pose.R, pose.t
    if not np.allclose(R.T @ R, np.eye(3), atol=1e-6) or np.linalg.det(R) < 0:
        raise InputError("pose rotation must be a proper rotation matrix")
    origin, shape = scan_grid(an, pose, spacing)
    ijk = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij"), -1)
    X = (ijk * spacing + origin).reshape(-1, 3)
    del ijk
    P = (X - t) @ R                       # patient coordinates of the voxel centres
    axes_p = (np.diag(spacing) @ R)       # voxel steps (rows) in the patient frame

    hu, _, disc = soft_tissue_hu(an, P, X - t)
    labels = np.zeros(len(P), np.uint8)
    labels[disc] = 4
    bmd = np.zeros(len(P))
    regions = np.zeros(len(P), np.uint8)
    fraction = np.zeros(len(P))
    sel = np.flatnonzero(np.abs(P[:, 2]) <= 0.5 * an.body_h + 2.0 + spacing.max()
                         + 0.5 * 8.0)  # osteophyte lips stay within 4 mm of the endplates
    b, f, reg = vertebra_fields(an, state, P[sel], axes_p)
    part = f > 0
    bmd[sel[part]], fraction[sel[part]] = b[part], f[part]
    labels[sel[reg > 0]] = 1
    regions[sel] = reg
    mineral, pfrac = plaque_fields(an, state, P, float(spacing.min()))
    cal = pfrac > 0
    hu[cal] = (1.0 - pfrac[cal]) * hu[cal] + pfrac[cal] * (spec.hu_offset + spec.hu_per_mg * mineral[cal])
    bmd[cal] = pfrac[cal] * mineral[cal]
    bone = fraction > 0
    hu[bone] = (1.0 - fraction[bone]) * hu[bone] + fraction[bone] * spec.hu_offset \
        + spec.hu_per_mg * bmd[bone]

    hu, bmd = hu.reshape(shape), bmd.reshape(shape)
    T = (X - t).reshape(*shape, 3)        # table frame: the calibration block moves with it
    rods = _rods(hu, bmd, T[..., 0], T[..., 1], spec)
    for r in rods:
        r.center = r.center + t
    hu = _scanner(hu, spec, spacing)

    grid = dict(spacing=spacing, origin=origin, direction=np.eye(3))
    meta = {"modality": "CT", "source": "fesim synthetic cohort scan", "seed": int(seed)}
    return Phantom(
        spec=spec,
        hu=Volume(hu, meta={**meta, "units": "HU"}, **grid),
        bmd=Volume(bmd.astype(np.float32), meta={**meta, "units": "mg/cm^3"}, **grid),
        labels=Volume(labels.reshape(shape), meta={**meta, "units": "label"}, **grid),
        regions=Volume(regions.reshape(shape), meta={**meta, "units": "label"}, **grid),
        rods=rods,
        landmarks=landmarks(an, pose),
    )


def landmarks(an: Anatomy, pose: Pose) -> dict:
    """Anatomical points and axes of the patient in scanner LPS mm."""
    R, t = pose.R, pose.t
    marks = {"body_center": t.copy(), "body_axis": R[:, 2].copy(),
             "aorta_center": R @ an.aorta_center + t,
             "pose": {"rotation": R, "shift_mm": t, "angle_deg": pose.angle_deg}}
    for name, side in (("left", 1), ("right", -1)):
        start, axis = an.pedicle_frame(side)
        marks[f"pedicle_{name}"] = R @ (start + 0.6 * an.pedicle_len * axis) + t
        marks[f"pedicle_axis_{name}"] = -(R @ axis)
    return marks


#: Region codes written by :func:`make_scan` (the same as the default phantom's).
REGION_CODES = {seg.TRABECULAR_BODY: "trabecular body", seg.CORTICAL_SHELL: "cortical shell",
                seg.LEFT_PEDICLE: "left pedicle", seg.RIGHT_PEDICLE: "right pedicle",
                seg.OTHER_POSTERIOR: "other posterior elements"}
