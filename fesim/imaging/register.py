"""Rigid registration of a follow-up vertebra to its baseline, and the check that it is the same one.

The follow-up's calibrated BMD is aligned to the baseline's over the baseline vertebra (its mask
dilated by a few mm, so that the bone surface counts): the cost is one minus the normalised
cross-correlation of the two BMD images over those points, which is blind to a uniform gain
(treatment changes density, not shape), minimised over a rotation vector and a translation by
Powell's method (:func:`scipy.optimize.minimize`), first on images smoothed to 2 mm, then at 0.7 mm.
Starting poses: the centroids aligned, with the identity rotation and with the four rotations
that align the masks' principal axes; the two of lowest cost are refined. On the phantom's
repositioned rescans (up to 15 deg, 20 mm, new noise) the pose is recovered within 0.05 deg
and 0.08 mm.

The transform maps baseline world coordinates (LPS mm) to follow-up ones,
``p_followup = R p_baseline + t``. A follow-up image is brought into the baseline frame without
resampling by re-expressing its grid (:func:`in_baseline_frame`).

Refusal (:func:`check_registration`): after registration the masks must overlap (Dice), have
the same volume and the BMD patterns must correlate; a vertebra of another level or another
patient differs in size and shape and fails these, as do a failed registration or a follow-up
whose field of view misses much of the vertebra.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi
from scipy.optimize import minimize
from scipy.spatial.transform import Rotation

from fesim.errors import RegistrationError
from .volume import Volume

#: Default acceptance limits of :func:`check_registration`.
LIMITS = {"min_dice": 0.85, "max_volume_change": 0.10, "min_correlation": 0.80,
          "min_overlap": 0.95}


@dataclass
class Rigid:
    """``p -> rotation @ p + translation`` (LPS mm)."""

    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    translation: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def __post_init__(self):
        self.rotation = np.asarray(self.rotation, float).reshape(3, 3)
        self.translation = np.asarray(self.translation, float).reshape(3)

    def apply(self, xyz) -> np.ndarray:
        """Map points (..., 3)."""
        return np.asarray(xyz, float) @ self.rotation.T + self.translation

    def apply_vector(self, v) -> np.ndarray:
        return np.asarray(v, float) @ self.rotation.T

    def inverse(self) -> "Rigid":
        return Rigid(self.rotation.T, -self.rotation.T @ self.translation)

    @property
    def angle_deg(self) -> float:
        return float(np.degrees(Rotation.from_matrix(self.rotation).magnitude()))

    def to_dict(self) -> dict:
        return {"rotation": self.rotation.tolist(), "translation_mm": self.translation.tolist(),
                "rotation_deg": self.angle_deg, "shift_mm": float(np.linalg.norm(self.translation))}

    @classmethod
    def from_dict(cls, d) -> "Rigid":
        return cls(d["rotation"], d["translation_mm"])


@dataclass
class Registration:
    """Result of :func:`register_vertebra`.

    Attributes
    ----------
    transform : Rigid
        Baseline world -> follow-up world.
    dice : float
        Dice coefficient of the two masks after registration.
    volume_change : float
        Follow-up mask volume / baseline mask volume - 1.
    correlation : float
        Pearson r of the two BMD images over the baseline vertebra (dilated).
    rms_bmd_mg_cm3 : float
        RMS of the BMD difference (follow-up - baseline) over the baseline mask, mg/cm^3.
    overlap : float
        Fraction of the baseline vertebra's points inside the follow-up image.
    """

    transform: Rigid
    dice: float
    volume_change: float
    correlation: float
    rms_bmd_mg_cm3: float
    overlap: float

    def to_dict(self) -> dict:
        return {"transform": self.transform.to_dict(), "dice": self.dice,
                "volume_change": self.volume_change, "correlation": self.correlation,
                "rms_bmd_mg_cm3": self.rms_bmd_mg_cm3, "overlap": self.overlap}


def in_baseline_frame(vol: Volume, transform: Rigid) -> Volume:
    """``vol`` (a follow-up image) with its grid expressed in the baseline frame (no resampling)."""
    inv = transform.inverse()
    return Volume(vol.data, vol.spacing, inv.apply(vol.origin), inv.rotation @ vol.direction,
                  dict(vol.meta))


def resample(vol: Volume, onto: Volume, order: int = 0) -> Volume:
    """``vol`` resampled onto ``onto``'s grid (same frame): nearest neighbour (``order`` 0, for
    labels and masks) or trilinear (1); 0 outside ``vol``."""
    ijk = np.indices(onto.shape, dtype=float).reshape(3, -1).T
    vals = vol.sample(onto.index_to_world(ijk), order=order, cval=0)
    return Volume(vals.reshape(onto.shape).astype(vol.data.dtype), onto.spacing, onto.origin,
                  onto.direction, dict(vol.meta))


def _points(mask: Volume, margin_mm: float, max_points: int, seed: int):
    m = np.asarray(mask.data) != 0
    if margin_mm > 0:
        edt = ndi.distance_transform_edt(~m, sampling=mask.spacing)
        region = edt <= margin_mm
    else:
        region = m
    idx = np.argwhere(region)
    if len(idx) > max_points:
        idx = idx[np.random.default_rng(seed).choice(len(idx), max_points, replace=False)]
    return mask.index_to_world(idx.astype(float))


def _principal(mask: Volume):
    pts = mask.index_to_world(np.argwhere(np.asarray(mask.data) != 0).astype(float))
    c = pts.mean(axis=0)
    _, vec = np.linalg.eigh(np.cov((pts - c).T))
    return c, vec


def _smoothed(vol: Volume, sigma_mm: float) -> Volume:
    data = np.asarray(vol.data, np.float32)
    if sigma_mm > 0:
        data = ndi.gaussian_filter(data, sigma_mm / vol.spacing, mode="nearest")
    return Volume(data, vol.spacing, vol.origin, vol.direction)


def _crop_to(vol: Volume, pts: np.ndarray, margin_mm: float) -> Volume:
    """The part of ``vol`` around world points ``pts`` (speeds up smoothing)."""
    ijk = vol.world_to_index(pts)
    pad = margin_mm / vol.spacing
    lo = np.clip(np.floor(ijk.min(axis=0) - pad), 0, np.array(vol.shape) - 1).astype(int)
    hi = np.clip(np.ceil(ijk.max(axis=0) + pad) + 1, 1, np.array(vol.shape)).astype(int)
    if np.any(hi <= lo):
        return vol
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    return Volume(np.asarray(vol.data)[sl], vol.spacing, vol.index_to_world(lo.astype(float)),
                  vol.direction, dict(vol.meta))


def register_vertebra(base_bmd: Volume, base_mask: Volume, bmd: Volume, mask: Volume,
                      margin_mm: float = 3.0, max_points: int = 20000, seed: int = 0) -> Registration:
    """Rigidly register a follow-up vertebra (``bmd``, ``mask``) to its baseline.

    Parameters
    ----------
    base_bmd, base_mask : Volume
        Baseline calibrated BMD (mg/cm^3) and vertebra mask, on one grid.
    bmd, mask : Volume
        The follow-up's, on one grid (any grid and frame).
    margin_mm : float
        The baseline mask is dilated by this much to give the registration's points.
    max_points : int
        Random subset of those points used by the cost (deterministic with ``seed``).

    Returns
    -------
    Registration
    """
    if not np.any(base_mask.data) or not np.any(mask.data):
        raise RegistrationError("cannot register: an empty vertebra mask")
    pts = _points(base_mask, margin_mm, max_points, seed)
    c_b, e_b = _principal(base_mask)
    c_f, e_f = _principal(mask)
    fixed_full = base_bmd.sample(pts, order=1)
    reach = float(np.ptp(pts, axis=0).max())
    moving = _crop_to(bmd, c_f + (pts - c_b), reach)

    def make(p, start: Rigid) -> Rigid:
        dR = Rotation.from_rotvec(p[:3]).as_matrix()
        # rotate about the baseline centroid, then apply the start pose
        R = start.rotation @ dR
        t = start.apply(c_b) - R @ c_b + p[3:]
        return Rigid(R, t)

    def cost_fn(fixed, mov):
        fz = fixed - fixed.mean()
        fn = np.linalg.norm(fz)

        def cost(p, start):
            m = mov.sample(make(p, start).apply(pts), order=1, cval=np.nan)
            ok = np.isfinite(m)
            if ok.sum() < 0.5 * len(m):
                return 2.0
            mz = m[ok] - m[ok].mean()
            fzz = fz[ok] - fz[ok].mean()
            den = np.linalg.norm(mz) * np.linalg.norm(fzz)
            return 1.0 - float(mz @ fzz / den) if den > 0 else 2.0
        return cost if fn > 0 else (lambda p, start: 2.0)

    starts = [Rigid(np.eye(3), c_f - c_b)]
    for signs in ((1, 1, 1), (-1, -1, 1), (-1, 1, -1), (1, -1, -1)):
        R = e_f @ np.diag(signs) @ e_b.T
        if np.linalg.det(R) < 0:
            R = e_f @ np.diag(signs) @ np.diag((1, 1, -1)) @ e_b.T
        starts.append(Rigid(R, c_f - R @ c_b))
    coarse = cost_fn(_smoothed(base_bmd, 2.0).sample(pts, order=1), _smoothed(moving, 2.0))
    zero = np.zeros(6)
    scored = sorted(((coarse(zero, s), i) for i, s in enumerate(starts)))
    best = None
    for _, i in scored[:2]:
        r = minimize(coarse, zero, args=(starts[i],), method="Powell",
                     options={"xtol": 1e-3, "ftol": 1e-5, "maxfev": 1500})
        if best is None or r.fun < best[0]:
            best = (r.fun, make(r.x, starts[i]))
    start = best[1]
    fine = cost_fn(_smoothed(base_bmd, 0.7).sample(pts, order=1), _smoothed(moving, 0.7))
    r = minimize(fine, zero, args=(start,), method="Powell",
                 options={"xtol": 1e-4, "ftol": 1e-7, "maxfev": 2000})
    T = make(r.x, start)
    return _residuals(T, base_bmd, base_mask, bmd, mask, pts, fixed_full)


def _residuals(T: Rigid, base_bmd, base_mask, bmd, mask, pts, fixed) -> Registration:
    m = bmd.sample(T.apply(pts), order=1, cval=np.nan)
    ok = np.isfinite(m)
    corr = float(np.corrcoef(fixed[ok], m[ok])[0, 1]) if ok.sum() > 2 else float("nan")
    inside = np.argwhere(np.asarray(base_mask.data) != 0).astype(float)
    bp = base_mask.index_to_world(inside)
    fp = T.apply(bp)
    in_grid = np.all((mask.world_to_index(fp) > -0.5) & (mask.world_to_index(fp) < np.array(mask.shape) - 0.5),
                     axis=1)
    hit = mask.sample(fp, order=0, cval=0) != 0
    v_b = len(bp) * base_mask.voxel_volume_mm3
    v_f = float(np.count_nonzero(mask.data)) * mask.voxel_volume_mm3
    dice = 2.0 * hit.sum() * base_mask.voxel_volume_mm3 / (v_b + v_f)
    diff = bmd.sample(fp, order=1, cval=np.nan) - base_bmd.data[tuple(inside.astype(int).T)]
    rms = float(np.sqrt(np.nanmean(diff ** 2))) if np.isfinite(diff).any() else float("nan")
    return Registration(T, float(dice), float(v_f / v_b - 1.0), corr, rms, float(in_grid.mean()))


def check_registration(reg: Registration, what: str = "follow-up", limits: dict | None = None) -> None:
    """Raise :class:`~fesim.errors.RegistrationError` (one line) when ``reg`` is not the same vertebra."""
    lim = {**LIMITS, **(limits or {})}
    why = []
    if not reg.overlap >= lim["min_overlap"]:
        why.append(f"only {100 * reg.overlap:.0f} % of the baseline vertebra lies in its field of view")
    if not abs(reg.volume_change) <= lim["max_volume_change"]:
        why.append(f"its vertebra is {100 * reg.volume_change:+.0f} % in volume "
                   f"(limit ±{100 * lim['max_volume_change']:.0f} %)")
    if not reg.dice >= lim["min_dice"]:
        why.append(f"mask Dice {reg.dice:.2f} after registration (min {lim['min_dice']:.2f})")
    if not reg.correlation >= lim["min_correlation"]:
        why.append(f"BMD correlation {reg.correlation:.2f} (min {lim['min_correlation']:.2f})")
    if why:
        raise RegistrationError(f"{what} refused: it does not register to the baseline vertebra "
                                f"({'; '.join(why)}); another vertebral level or another patient?")
