"""Level sets used by the mesher: the bone's smoothed signed distance and exact screw cylinders.

Sign convention: negative inside, positive outside, zero on the surface; units mm.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import distance_transform_edt, gaussian_filter, map_coordinates

from fesim.errors import MeshError
from fesim.imaging.screwplan import ScrewPlan
from fesim.imaging.volume import Volume


@dataclass
class BoneLevelSet:
    """Signed distance (mm) of the bone surface sampled on a (cropped) voxel grid.

    Attributes
    ----------
    grid : Volume
        Voxel grid holding the signed distance in mm (negative inside bone).
    info : dict
        Smoothing diagnostics: ``sigma_mm``, ``offset_mm`` (level shift that restores the
        mask volume), ``volume_change_uncorrected`` (relative volume change from smoothing
        alone) and ``mask_volume_mm3``.
    """

    grid: Volume
    info: dict = field(default_factory=dict)

    def __call__(self, xyz) -> np.ndarray:
        """Signed distance (mm) at LPS points (..., 3); far outside the grid it is positive."""
        xyz = np.asarray(xyz, dtype=float)
        ijk = self.grid.world_to_index(xyz.reshape(-1, 3))
        far = float(self.grid.data.max())
        v = map_coordinates(self.grid.data, ijk.T, order=1, mode="constant", cval=far)
        return v.reshape(xyz.shape[:-1])

    def gradient(self, xyz, eps: float | None = None) -> np.ndarray:
        """Central-difference gradient (..., 3) of the interpolated level set."""
        xyz = np.asarray(xyz, dtype=float).reshape(-1, 3)
        eps = 0.25 * float(self.grid.spacing.min()) if eps is None else eps
        g = np.empty_like(xyz)
        for a in range(3):
            d = np.zeros(3)
            d[a] = eps
            g[:, a] = (self(xyz + d) - self(xyz - d)) / (2 * eps)
        return g

    def project(self, xyz, n_iter: int = 4) -> np.ndarray:
        """Move points onto the zero level set by Newton steps along the gradient (mm)."""
        x = np.asarray(xyz, dtype=float).reshape(-1, 3).copy()
        for _ in range(n_iter):
            phi = self(x)
            g = self.gradient(x)
            g2 = np.maximum(np.einsum("ij,ij->i", g, g), 1e-12)
            x -= (phi / g2)[:, None] * g
        return x


class _interpolated_volume:
    """Volume (mm^3) of {trilinear phi < c} as a function of the level offset c (mm).

    Sub-samples (3 per axis) the voxels of a band around the surface once; voxels deeper
    inside count whole. Trilinear interpolation of a voxelised distance cuts convex voxel
    corners, so this is smaller than the voxel count, the more so for coarse voxels.
    """

    def __init__(self, phi: np.ndarray, sp: np.ndarray, f: int = 3):
        band = 2.0 * float(sp.max())
        self.vox = float(np.prod(sp))
        self.sub = self.vox / f**3
        self.core = float((phi < -band).sum() * self.vox)
        idx = np.argwhere(np.abs(phi) <= band).astype(float)
        o = (np.arange(f) + 0.5) / f - 0.5
        offs = np.stack(np.meshgrid(o, o, o, indexing="ij"), -1).reshape(-1, 3)
        pts = (idx[:, None, :] + offs[None]).reshape(-1, 3)
        self.vals = np.sort(map_coordinates(phi, pts.T, order=1, mode="nearest"))
        self.band = band

    def __call__(self, c: float) -> float:
        return self.core + np.searchsorted(self.vals, c) * self.sub

    def offset_for(self, volume: float) -> float:
        """Offset c (mm, |c| <= half the band) that makes the enclosed volume ``volume``."""
        n = int(round((volume - self.core) / self.sub))
        n = min(max(n, 0), len(self.vals) - 1)
        return float(np.clip(self.vals[n], -0.5 * self.band, 0.5 * self.band))


def bone_level_set(mask: Volume, smooth_sigma_mm: float | None = None, pad_mm: float = 8.0,
                   preserve_volume: bool = True) -> BoneLevelSet:
    """Signed distance of a binary mask, Gaussian-smoothed, with the mask volume restored.

    Parameters
    ----------
    mask : Volume
        Non-zero voxels are bone.
    smooth_sigma_mm : float, optional
        Gaussian sigma (mm) applied to the signed distance; default 0.5 x the largest voxel
        size; 0 disables smoothing.
    pad_mm : float
        Margin (mm) kept around the mask's bounding box.
    preserve_volume : bool
        Shift the smoothed level set so the enclosed volume equals the raw one (smoothing a
        signed distance shrinks convex parts).

    Returns
    -------
    BoneLevelSet
    """
    m = np.asarray(mask.data) != 0
    if not m.any():
        raise MeshError("the bone mask is empty")
    sp = mask.spacing
    pad = np.ceil(pad_mm / sp).astype(int) + 1
    nz = np.argwhere(m)
    lo = nz.min(0) - pad
    hi = nz.max(0) + pad + 1
    # Crop, padding with zeros where the box leaves the image.
    sub = np.zeros(tuple(hi - lo), dtype=bool)
    src_lo = np.maximum(lo, 0)
    src_hi = np.minimum(hi, m.shape)
    sub[tuple(slice(a - l, b - l) for a, b, l in zip(src_lo, src_hi, lo))] = \
        m[tuple(slice(a, b) for a, b in zip(src_lo, src_hi))]
    d_out = distance_transform_edt(~sub, sampling=sp)
    d_in = distance_transform_edt(sub, sampling=sp)
    # Voxel-centre distances put the surface half a voxel off; shift so adjacent inside and
    # outside voxels straddle zero symmetrically.
    half = 0.5 * float(sp.min())
    phi = np.where(sub, -(d_in - half), d_out - half)
    vox = float(np.prod(sp))
    raw_vol = float(sub.sum() * vox)
    sigma = 0.5 * float(sp.max()) if smooth_sigma_mm is None else float(smooth_sigma_mm)
    info = {"sigma_mm": sigma, "offset_mm": 0.0, "volume_change_uncorrected": 0.0,
            "mask_volume_mm3": raw_vol}
    if sigma > 0:
        phi = gaussian_filter(phi, sigma / sp, mode="nearest")
    if preserve_volume or sigma > 0:
        vol_of_offset = _interpolated_volume(phi, sp)
        info["volume_change_uncorrected"] = vol_of_offset(0.0) / raw_vol - 1.0
        if preserve_volume:
            c = vol_of_offset.offset_for(raw_vol)
            phi = phi - c
            info["offset_mm"] = c
    origin = mask.index_to_world(lo.astype(float))
    grid = Volume(phi.astype(np.float64), sp, origin, mask.direction, {"units": "mm"})
    return BoneLevelSet(grid, info)


def screw_closest_point(screw: ScrewPlan, xyz) -> np.ndarray:
    """Closest point (..., 3) on the surface of the screw (cylinder and tip) to LPS points ``xyz``."""
    xyz = np.asarray(xyz, dtype=float)
    p = xyz - screw.entry
    ax = screw.direction
    t = p @ ax
    radial_vec = p - t[..., None] * ax
    r = np.linalg.norm(radial_vec, axis=-1)
    # Unit radial direction; points on the axis get an arbitrary perpendicular.
    perp = np.cross(ax, [1.0, 0.0, 0.0] if abs(ax[0]) < 0.9 else [0.0, 1.0, 0.0])
    perp /= np.linalg.norm(perp)
    u = np.where(r[..., None] > 1e-12, radial_vec / np.maximum(r, 1e-12)[..., None], perp)
    R, L = screw.radius_mm, screw.shaft_length_mm
    round_tip = screw.tip_shape == "round"
    inside = (r <= R) & (t >= 0) & (t <= L)
    # Inside: the nearest of side wall, head cap and (flat) tip cap.
    d_side, d_head = R - r, t
    d_tip = np.full_like(t, np.inf) if round_tip else L - t
    side = (d_side <= d_head) & (d_side <= d_tip)
    head = ~side & (d_head <= d_tip)
    t_in = np.where(side, t, np.where(head, 0.0, L))
    r_in = np.where(side, R, r)
    # Outside: clamp to the solid cylinder.
    t_out = np.clip(t, 0.0, L)
    r_out = np.minimum(r, R)
    tt = np.where(inside, t_in, t_out)
    rr = np.where(inside, r_in, r_out)
    out = screw.entry + tt[..., None] * ax + rr[..., None] * u
    if round_tip:
        # beyond the shaft every point projects radially onto the hemisphere
        c = screw.entry + L * ax
        v = xyz - c
        n = np.linalg.norm(v, axis=-1)
        v = np.where(n[..., None] > 1e-12, v / np.maximum(n, 1e-12)[..., None], ax)
        out = np.where((t > L)[..., None], c + R * v, out)
    return out
