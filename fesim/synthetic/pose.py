"""The phantom patient lying differently on the table: a rigid pose of the whole scan content.

A repositioned rescan is the same anatomy rotated and shifted in the scanner's (LPS) frame and
sampled on an axis-aligned grid with new noise. :func:`posed_phantom` builds it exactly: the
phantom is sampled on the grid whose axes are the pose's inverse rotation (the phantom's
``direction`` option, partial volume included), and the volumes' geometry is then re-expressed
in the scanner frame, ``p_scanner = R p_anatomy + t``, where the grid becomes axis-aligned again.
The calibration block is a pad under the patient: it follows the table (the shift) but not the
patient's rotation, so its rods stay along the scanner's z axis. It is drawn on the posed grid
with the scanner's blur and new noise.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from scipy.ndimage import binary_dilation, gaussian_filter
from scipy.spatial.transform import Rotation

from fesim.imaging.volume import Volume
from .phantom import Phantom, PhantomSpec, _rods, make_phantom


def pose_matrix(rotation_deg=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Rotation matrix of extrinsic rotations about LPS x, y, z (degrees, applied in that order)."""
    return Rotation.from_euler("xyz", np.asarray(rotation_deg, float), degrees=True).as_matrix()


def _moved(v: Volume, R: np.ndarray, t: np.ndarray) -> Volume:
    return Volume(v.data, v.spacing, R @ v.origin + t, R @ v.direction, dict(v.meta))


def posed_phantom(spec: PhantomSpec = PhantomSpec(), rotation_deg=(0.0, 0.0, 0.0),
                  shift_mm=(0.0, 0.0, 0.0)) -> Phantom:
    """The phantom of ``spec`` with its anatomy rotated by ``rotation_deg`` (about LPS x, y, z
    through the L4 body centre) and shifted by ``shift_mm`` (LPS mm), on an axis-aligned grid.

    ``spec.direction`` must be None (the pose sets it). Landmarks are moved with the anatomy;
    ``landmarks["pose"]`` holds the rotation matrix and shift.
    """
    if spec.direction is not None:
        raise ValueError("posed_phantom sets the grid direction; give spec.direction=None")
    R = pose_matrix(rotation_deg)
    t = np.asarray(shift_mm, float).reshape(3)
    ph = make_phantom(replace(spec, direction=R.T, rods_mg_cm3=None))
    hu, bmd = _moved(ph.hu, R, t), _moved(ph.bmd, R, t)
    rods = []
    if spec.rods_mg_cm3:
        ijk = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in hu.shape], indexing="ij"), -1)
        xyz = hu.index_to_world(ijk)
        h, b = np.full(hu.shape, np.nan), np.zeros(hu.shape)
        rods = _rods(h, b, xyz[..., 0] - t[0], xyz[..., 1] - t[1], spec)
        pad = np.isfinite(h)
        if spec.blur_mm > 0:  # the pad blurred into what lies around it, then new noise there
            h = gaussian_filter(np.where(pad, h, hu.data), sigma=spec.blur_mm / hu.spacing, mode="nearest")
            zone = binary_dilation(pad, iterations=2)
        else:
            zone = pad
        rng = np.random.default_rng([spec.seed, 1])
        noise = rng.normal(0.0, spec.noise_hu, int(zone.sum())) if spec.noise_hu > 0 else 0.0
        hu.data[zone] = np.clip(np.round(h[zone] + noise), -1024, 3071)
        bmd.data[pad] = b[pad]
        rods = [replace(r, center=r.center + t * np.array([1.0, 1.0, 0.0])) for r in rods]
    marks = dict(ph.landmarks)
    for k, v in ph.landmarks.items():
        if isinstance(v, np.ndarray) and v.shape == (3,):
            marks[k] = R @ v + (0.0 if "axis" in k else t)
    marks["pose"] = {"rotation": R, "shift_mm": t, "rotation_deg": np.asarray(rotation_deg, float)}
    return replace(ph, hu=hu, bmd=bmd,
                   labels=_moved(ph.labels, R, t), regions=_moved(ph.regions, R, t),
                   rods=rods, landmarks=marks)
