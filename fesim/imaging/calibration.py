"""HU -> BMD calibration (phantom, Mindways QCT Pro, phantomless).

All calibrations are linear: ``BMD (mg/cm^3) = slope * HU + intercept``. BMD is
K2HPO4-equivalent unless ``Calibration.material == "HA"``; :meth:`Calibration.apply` records
the material in the BMD volume (``meta["bmd_material"]``), which the material model reads
(BMD -> ash -> apparent density and the laws: :mod:`fesim.material`). Sources in
``docs/references.md``; each function says which.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from fesim.errors import CalibrationError
from fesim.imaging.volume import Volume
from fesim.io.atomic import jsonable
from fesim.material.density import BMD_MATERIALS as MATERIALS


@dataclass
class Calibration:
    """A linear HU -> BMD calibration.

    Attributes
    ----------
    slope : float
        mg/cm^3 per HU.
    intercept : float
        mg/cm^3 (BMD at 0 HU).
    r2 : float
        Coefficient of determination of the fit (nan when not fitted, e.g. ``method="none"``).
    method : str
        ``"phantom"``, ``"internal"``, ``"mindways"`` or ``"none"``.
    material : str
        ``"K2HPO4"`` or ``"HA"``: the mineral the BMD is expressed as.
    points : list of (float, float)
        (HU, density mg/cm^3) pairs the line was fitted to.
    details : dict
        Method-specific numbers (rod positions, sigma/beta, tissue HU, effective energy ...).
    """

    slope: float
    intercept: float
    r2: float = float("nan")
    method: str = "none"
    material: str = "K2HPO4"
    points: list = field(default_factory=list)
    details: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.material not in MATERIALS:
            raise CalibrationError(f"unknown calibration material {self.material!r}; use one of {MATERIALS}")
        if not (np.isfinite(self.slope) and np.isfinite(self.intercept)):
            raise CalibrationError("calibration slope and intercept must be finite")

    def bmd(self, hu):
        """BMD (mg/cm^3) of HU values (array or scalar)."""
        return self.slope * np.asarray(hu, dtype=float) + self.intercept

    def apply(self, hu_volume: Volume) -> Volume:
        """Calibrate an HU volume into a float32 BMD volume (mg/cm^3) on the same grid."""
        data = (self.slope * hu_volume.data.astype(np.float64) + self.intercept).astype(np.float32)
        return hu_volume.with_data(data, units="mg/cm^3", bmd_material=self.material,
                                   calibration=self.method)

    def to_dict(self) -> dict:
        """JSON-ready summary."""
        return {
            "slope_mg_cm3_per_hu": float(self.slope),
            "intercept_mg_cm3": float(self.intercept),
            "r2": None if not np.isfinite(self.r2) else float(self.r2),
            "method": self.method,
            "material": self.material,
            "points": [[float(h), float(d)] for h, d in self.points],
            "details": jsonable(self.details),
        }


def _line_fit(x, y):
    """Least-squares y = a + b x; returns (a, b, r2)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    b, a = np.polyfit(x, y, 1)
    ss_tot = np.sum((y - y.mean()) ** 2)
    r2 = 1.0 - np.sum((y - (a + b * x)) ** 2) / ss_tot if ss_tot > 0 else float("nan")
    return float(a), float(b), float(r2)


# ---------------------------------------------------------------------------------------
# Rod detection
# ---------------------------------------------------------------------------------------

def _robust_mean(values: np.ndarray) -> float:
    """Mean after discarding values beyond 3 robust SDs (MAD) from the median."""
    med = np.median(values)
    mad = 1.4826 * np.median(np.abs(values - med))
    keep = np.abs(values - med) <= 3.0 * mad if mad > 0 else np.ones(values.shape, bool)
    return float(values[keep].mean())


def _world_extent(vol: Volume):
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in vol.shape], indexing="ij")).reshape(3, -1).T
    w = vol.index_to_world(corners)
    return w.min(axis=0), w.max(axis=0)


def _axial_mean_image(hu: Volume, z_fraction: float = 0.8, max_levels: int = 48):
    """Average the image along LPS z over the central part of the scan.

    Returns the 2-D mean image on an LPS-aligned (x, y) grid, its pixel size (mm), the (x, y)
    of pixel (0, 0), and the z levels used. Pixels outside the data are nan.
    """
    lo, hi = _world_extent(hu)
    pix = float(hu.spacing.min())
    nx, ny = (np.floor((hi[:2] - lo[:2]) / pix).astype(int) + 1)
    zc, half = 0.5 * (lo[2] + hi[2]), 0.5 * z_fraction * (hi[2] - lo[2])
    nz = int(np.clip(np.floor(2 * half / hu.spacing.min()) + 1, 1, max_levels))
    zs = np.linspace(zc - half, zc + half, nz)
    gx, gy = np.meshgrid(lo[0] + pix * np.arange(nx), lo[1] + pix * np.arange(ny), indexing="ij")
    acc = np.zeros((nx, ny))
    cnt = np.zeros((nx, ny))
    for z in zs:  # a few levels only; each level is vectorised
        pts = np.stack([gx, gy, np.full_like(gx, z)], -1)
        v = hu.sample(pts, order=1, cval=np.nan)
        ok = np.isfinite(v)
        acc[ok] += v[ok]
        cnt[ok] += 1
    with np.errstate(invalid="ignore"):
        img = np.where(cnt >= max(1, nz // 2), acc / np.maximum(cnt, 1), np.nan)
    return img, pix, lo[:2], zs


def _rod_candidates(img: np.ndarray, pix: float, radius_range_mm):
    """Flat, circular, uniform blobs separated from their surroundings by an edge."""
    valid = np.isfinite(img)
    fill = np.where(valid, img, np.nanmedian(img))
    sm = ndimage.gaussian_filter(fill, 1.0)
    grad = np.hypot(*np.gradient(sm, pix))
    # Edge threshold adapted to the noise: most pixels are flat, so the median gradient
    # measures the noise; 2 HU/mm is the floor for noise-free images.
    thr = max(2.0, 4.0 * float(np.median(grad[valid])))
    flat = (grad < thr) & valid
    lab, n = ndimage.label(flat)
    if n == 0:
        return [], thr
    idx = np.arange(1, n + 1)
    area_px = ndimage.sum(flat, lab, idx)
    rmin, rmax = radius_range_mm
    # The flat interior is smaller than the rod by about the edge half-width (<~ 3 mm).
    ok_area = (area_px * pix**2 >= np.pi * max(rmin - 3.0, 0.7) ** 2) & (area_px * pix**2 <= np.pi * rmax**2)
    out = []
    ii, jj = np.indices(img.shape)
    objs = ndimage.find_objects(lab)
    for k in idx[ok_area]:
        sl = objs[k - 1]
        m = lab[sl] == k
        ci, cj = ii[sl][m], jj[sl][m]
        c = np.array([ci.mean(), cj.mean()])
        cov = np.cov(np.stack([ci, cj])) if ci.size > 2 else np.eye(2)
        ev = np.linalg.eigvalsh(cov)
        if ev[0] <= 0 or ev[0] / ev[1] < 0.6:
            continue
        r_in = np.sqrt(ci.size / np.pi)
        if np.hypot(ci - c[0], cj - c[1]).max() > 1.3 * r_in + 1.0:  # holes / spurs
            continue
        inner = float(np.median(sm[sl][m]))
        # Edge radius: half-contrast crossing of the radial profile, each radius bin taking the
        # median over angles (robust to a nearby phantom-block edge seen at a few angles).
        d = np.hypot(ii - c[0], jj - c[1]) * pix
        r_in_mm = r_in * pix
        near = (d <= r_in_mm + 4.5) & valid
        bins = np.round(d[near] / (0.5 * pix)).astype(int)
        ids = np.unique(bins)
        prof = np.asarray(ndimage.median(sm[near], labels=bins, index=ids), float)
        radii = ids * 0.5 * pix
        outer = float(np.median(prof[radii >= r_in_mm + 3.5]))
        if abs(inner - outer) < 10.0 or inner < -500.0:
            continue
        frac = (prof - outer) / (inner - outer)
        beyond = np.nonzero((frac < 0.5) & (radii >= r_in_mm))[0]
        if beyond.size == 0:
            continue
        k1 = beyond[0]
        f0, f1 = frac[k1 - 1], frac[k1]
        r = float(radii[k1 - 1] + (radii[k1] - radii[k1 - 1]) * (f0 - 0.5) / max(f0 - f1, 1e-9))
        if not (rmin <= r <= rmax):
            continue
        out.append({"ij": c, "radius": r, "roi_radius": max(r_in_mm - 1.0, 0.5 * r_in_mm),
                    "inner": inner, "outer": outer})
    return out, thr


def _body_mask_2d(img: np.ndarray, pix: float) -> np.ndarray:
    """Largest non-air component of the axial mean image after a 3 mm opening."""
    valid = np.isfinite(img)
    tissue = valid & (np.where(valid, img, -1000.0) > -500.0)
    rad = max(1, int(round(3.0 / pix)))
    disk = np.hypot(*np.mgrid[-rad:rad + 1, -rad:rad + 1]) <= rad
    opened = ndimage.binary_opening(tissue, structure=disk)
    lab, n = ndimage.label(opened)
    if n == 0:
        return np.zeros_like(tissue)
    sizes = ndimage.sum(opened, lab, np.arange(1, n + 1))
    body = lab == (1 + int(np.argmax(sizes)))
    # With no air in the field of view the "body" is everything: then do not exclude.
    if body.sum() > 0.95 * valid.sum():
        return np.zeros_like(tissue)
    return ndimage.binary_fill_holes(body)


def rod_mean_hu(hu: Volume, center, radius_mm: float, erode_mm: float = 2.0,
                z_fraction: float = 0.8) -> float:
    """Robust mean HU inside a rod (cylinder along LPS z), eroded by ``erode_mm``.

    Parameters
    ----------
    hu : Volume
    center : array-like, shape (3,)
        LPS mm point on the rod axis (only x, y are used).
    radius_mm : float
        Rod radius (mm).
    erode_mm : float
        ROI radius = max(radius - erode_mm, radius / 2), away from partial-volume edges.
    z_fraction : float
        Central fraction of the scan's z extent used.
    """
    center = np.asarray(center, float).reshape(3)
    r_roi = max(radius_mm - erode_mm, 0.5 * radius_mm)
    lo, hi = _world_extent(hu)
    zc, half = 0.5 * (lo[2] + hi[2]), 0.5 * z_fraction * (hi[2] - lo[2])
    # Bounding box of the ROI in index space, then exact world distances per voxel.
    box = np.array(np.meshgrid([center[0] - r_roi, center[0] + r_roi],
                               [center[1] - r_roi, center[1] + r_roi],
                               [zc - half, zc + half], indexing="ij")).reshape(3, -1).T
    ijk = hu.world_to_index(box)
    i0 = np.clip(np.floor(ijk.min(axis=0)).astype(int), 0, np.array(hu.shape) - 1)
    i1 = np.clip(np.ceil(ijk.max(axis=0)).astype(int), 0, np.array(hu.shape) - 1) + 1
    sub = hu.data[i0[0]:i1[0], i0[1]:i1[1], i0[2]:i1[2]]
    idx = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(i0, i1)], indexing="ij"), -1)
    w = hu.index_to_world(idx)
    inside = (np.hypot(w[..., 0] - center[0], w[..., 1] - center[1]) <= r_roi) & \
             (np.abs(w[..., 2] - zc) <= half)
    if inside.sum() < 10:
        raise CalibrationError(f"rod at {center.round(1).tolist()} mm (r = {radius_mm:.1f} mm) "
                               "covers fewer than 10 voxels of the image")
    return _robust_mean(sub[inside].astype(float))


def find_rods(hu: Volume, n_expected: int | None = None, radius_range_mm=(3.0, 12.0)) -> list:
    """Detect calibration rods: uniform cylinders along LPS z outside the patient's body.

    Method: the image is averaged along LPS z (world coordinates, so any grid orientation
    works) over the central 80 % of the scan; flat regions (gradient below a noise-adapted
    threshold) that are circular, of the expected size, contrast with their surroundings
    by >= 10 HU and lie outside the largest soft-tissue component (the patient) are rods.
    The mean HU is a 3 sigma-clipped mean over voxels within ``r - 2 mm`` of the rod axis.

    Parameters
    ----------
    hu : Volume
        CT image in HU.
    n_expected : int, optional
        Number of rods in the phantom. When more candidates are found, the ``n_expected``
        whose radii agree best with the median radius are kept; fewer raises.
    radius_range_mm : (float, float)
        Accepted rod radii (mm).

    Returns
    -------
    list of (ndarray (3,), float, float)
        ``(center LPS mm, radius mm, mean HU)`` sorted by mean HU.
    """
    img, pix, xy0, zs = _axial_mean_image(hu)
    cands, _ = _rod_candidates(img, pix, radius_range_mm)
    body = _body_mask_2d(img, pix)
    cands = [c for c in cands if not body[tuple(np.round(c["ij"]).astype(int))]]
    if n_expected is not None:
        if len(cands) < n_expected:
            raise CalibrationError(f"found {len(cands)} calibration rods, expected {n_expected}")
        if len(cands) > n_expected:
            r_med = np.median([c["radius"] for c in cands])
            cands = sorted(cands, key=lambda c: abs(c["radius"] - r_med))[:n_expected]
    rods = []
    zc = 0.5 * (zs[0] + zs[-1])
    for c in cands:
        center = np.array([xy0[0] + pix * c["ij"][0], xy0[1] + pix * c["ij"][1], zc])
        # ROI: the flat interior shrunk by 1 mm, clear of the partial-volume edge.
        erode = c["radius"] - c["roi_radius"]
        rods.append((center, c["radius"], rod_mean_hu(hu, center, c["radius"], erode_mm=erode)))
    return sorted(rods, key=lambda r: r[2])


# ---------------------------------------------------------------------------------------
# Phantom-based calibrations
# ---------------------------------------------------------------------------------------

def _rods_hu(hu: Volume, rods) -> list:
    """Normalise user rods ((center, radius[, hu]) tuples or objects with .center/.radius_mm)."""
    out = []
    for r in rods:
        if hasattr(r, "center"):
            center, radius = np.asarray(r.center, float), float(getattr(r, "radius_mm", getattr(r, "radius", 0)))
        else:
            center, radius = np.asarray(r[0], float), float(r[1])
        if radius <= 0:
            raise CalibrationError("rod radius must be positive")
        mean = float(r[2]) if isinstance(r, (tuple, list)) and len(r) > 2 else rod_mean_hu(hu, center, radius)
        out.append((center, radius, mean))
    return out


def phantom_calibration(hu: Volume, rod_densities_mg_cm3, rods=None, material: str = "K2HPO4",
                        min_r2: float = 0.98) -> Calibration:
    """Calibrate from rods of known density imaged with the patient.

    Rods are matched to the densities by rank (lowest mean HU = lowest density), then
    ``HU = a + b * rho`` is fitted by least squares (rho known exactly, HU noisy) and
    inverted: slope = 1 / b, intercept = -a / b.

    Parameters
    ----------
    hu : Volume
        CT image in HU.
    rod_densities_mg_cm3 : sequence of float
        Known rod densities (mg/cm^3 of ``material``), in any order.
    rods : sequence, optional
        Rod positions: ``(center LPS mm, radius mm)`` tuples (mean HU is then measured),
        ``(center, radius, mean HU)`` tuples, or objects with ``center`` and ``radius_mm``.
        Default: :func:`find_rods`.
    material : {"K2HPO4", "HA"}
    min_r2 : float
        Minimum R^2 of the fit.

    Raises
    ------
    CalibrationError
        Fewer than 3 rods, rod/density count mismatch, R^2 below ``min_r2`` or a
        non-positive slope.
    """
    dens = np.sort(np.asarray(rod_densities_mg_cm3, float).ravel())
    if dens.size < 3:
        raise CalibrationError(f"phantom calibration needs at least 3 rods, got {dens.size} densities")
    found = find_rods(hu, n_expected=dens.size) if rods is None else _rods_hu(hu, rods)
    if len(found) != dens.size:
        raise CalibrationError(f"{len(found)} rods given for {dens.size} densities")
    found = sorted(found, key=lambda r: r[2])
    hus = np.array([r[2] for r in found])
    a, b, r2 = _line_fit(dens, hus)
    if not b > 0:
        raise CalibrationError(f"calibration slope is not positive ({b:.3g} HU per mg/cm^3)")
    if not r2 >= min_r2:
        raise CalibrationError(f"calibration fit R^2 = {r2:.4f} is below {min_r2}")
    resid = hus - (a + b * dens)
    return Calibration(
        slope=1.0 / b, intercept=-a / b, r2=r2, method="phantom", material=material,
        points=list(zip(hus.tolist(), dens.tolist())),
        details={"hu_per_mg": b, "hu_at_zero": a, "rmse_hu": float(np.sqrt(np.mean(resid**2))),
                 "rods": [{"center_mm": c.tolist(), "radius_mm": rad, "mean_hu": m}
                          for c, rad, m in found]},
    )


#: Mindways QCT Pro constants (QCT PRO User Guide v5.0, as implemented in Bonelab's Ogo;
#: docs/references.md).
MINDWAYS_SIGMA_OFFSET = 0.2174
MINDWAYS_BETA_OFFSET = 999.6


def mindways_calibration(rod_hu, rod_water_mg_cm3, rod_k2hpo4_mg_cm3) -> Calibration:
    """Mindways QCT Pro calibration of a solid K2HPO4/water phantom.

    Fits ``HU - rho_water = sigma_ref * rho_K2HPO4 + beta_ref`` across the rods, then
    ``sigma_CT = sigma_ref - 0.2174``, ``beta_CT = beta_ref + 999.6`` and
    ``rho_K2HPO4 = (HU - beta_CT) / sigma_CT``.

    Parameters
    ----------
    rod_hu : sequence of float
        Mean HU of each rod.
    rod_water_mg_cm3, rod_k2hpo4_mg_cm3 : sequence of float
        Water and K2HPO4 equivalent densities of each rod (phantom certificate, mg/cm^3).
    """
    hu = np.asarray(rod_hu, float).ravel()
    water = np.asarray(rod_water_mg_cm3, float).ravel()
    k = np.asarray(rod_k2hpo4_mg_cm3, float).ravel()
    if not (hu.size == water.size == k.size):
        raise CalibrationError("rod HU, water and K2HPO4 densities must have the same length")
    if hu.size < 3:
        raise CalibrationError(f"Mindways calibration needs at least 3 rods, got {hu.size}")
    beta_ref, sigma_ref, r2 = _line_fit(k, hu - water)
    sigma_ct = sigma_ref - MINDWAYS_SIGMA_OFFSET
    beta_ct = beta_ref + MINDWAYS_BETA_OFFSET
    if not sigma_ct > 0:
        raise CalibrationError(f"Mindways sigma_CT = {sigma_ct:.4g} is not positive")
    return Calibration(
        slope=1.0 / sigma_ct, intercept=-beta_ct / sigma_ct, r2=r2, method="mindways",
        material="K2HPO4", points=list(zip(hu.tolist(), k.tolist())),
        details={"sigma_ref": sigma_ref, "beta_ref": beta_ref, "sigma_ct": sigma_ct, "beta_ct": beta_ct},
    )


def no_calibration(material: str = "K2HPO4", slope: float = 1.0, intercept: float = 0.0) -> Calibration:
    """A fixed (uncalibrated) line, e.g. for images that already hold BMD."""
    return Calibration(slope=slope, intercept=intercept, method="none", material=material)


# ---------------------------------------------------------------------------------------
# Phantomless (internal) calibration
# ---------------------------------------------------------------------------------------

#: Photon energies (keV) and total mass attenuation coefficients mu/rho (cm^2/g, with
#: coherent scattering) from NIST XCOM / NIST X-ray mass attenuation tables (ICRU-46
#: compositions for the tissues), as tabulated for Michalski et al. 2020 (Med Eng Phys).
_ENERGY_KEV = np.array([40.0, 50.0, 60.0, 80.0, 100.0])
_MU_RHO = {
    "water": np.array([0.2683, 0.2269, 0.2059, 0.1837, 0.1707]),
    "K2HPO4": np.array([0.9327, 0.5573, 0.3890, 0.2508, 0.1972]),
    "air": np.array([0.2485, 0.2080, 0.1875, 0.1662, 0.1541]),
    "fat": np.array([0.2396, 0.2123, 0.1974, 0.1800, 0.1688]),      # ICRU-46 adipose
    "muscle": np.array([0.2685, 0.2262, 0.2048, 0.1823, 0.1693]),   # ICRU-46 skeletal muscle
    "blood": np.array([0.2715, 0.2278, 0.2057, 0.1827, 0.1695]),    # ICRU-46 whole blood
}
#: Mass densities (g/cm^3): ICRU-46 tissues, dry air at 20 C.
_DENSITY_G_CM3 = {"air": 0.001205, "fat": 0.95, "muscle": 1.05, "blood": 1.06}
#: Default effective energy of a 120 kVp abdominal CT beam. At 75 keV the K2HPO4 sensitivity
#: below is sigma_CT = 1.25 HU per mg/cm^3, the value typical of Mindways calibrations at
#: 120 kVp (e.g. sigma_ct = 1.2496 in the Ogo test data of a Model 3 phantom).
DEFAULT_EFFECTIVE_ENERGY_KEV = 75.0
#: HU windows searched for the tissue histogram modes.
TISSUE_WINDOWS_HU = {"air": (-1024.0, -900.0), "fat": (-190.0, -30.0), "muscle": (0.0, 100.0)}


def _mu_rho(material: str, energy_kev: float) -> float:
    """mu/rho (cm^2/g) by log-log interpolation of the NIST table."""
    if not _ENERGY_KEV[0] <= energy_kev <= _ENERGY_KEV[-1]:
        raise CalibrationError(f"effective energy {energy_kev} keV outside the tabulated 40-100 keV")
    return float(np.exp(np.interp(np.log(energy_kev), np.log(_ENERGY_KEV), np.log(_MU_RHO[material]))))


def k2hpo4_sensitivity(energy_kev: float = DEFAULT_EFFECTIVE_ENERGY_KEV) -> float:
    """HU per mg/cm^3 of K2HPO4 dissolved in water at a monoenergetic effective energy.

    A solution of rho_K mg/cm^3 holds ``1000 - 0.2174 rho_K`` mg/cm^3 of water (the Mindways
    displacement constant), so ``HU = rho_K * ((mu/rho)_K2HPO4 / (mu/rho)_water - 0.2174)``.
    """
    return _mu_rho("K2HPO4", energy_kev) / _mu_rho("water", energy_kev) - MINDWAYS_SIGMA_OFFSET


def tissue_reference(energy_kev: float = DEFAULT_EFFECTIVE_ENERGY_KEV) -> dict:
    """Theoretical HU and K2HPO4-equivalent density (mg/cm^3) of the reference tissues.

    ``HU_t = 1000 (rho_t (mu/rho)_t / (mu/rho)_water - 1)`` and ``rho_eq = HU_t / sigma_CT``
    (a water-based K2HPO4 solution with the tissue's attenuation), from the NIST/ICRU-46
    tables above; nothing is taken from the image.
    """
    sigma = k2hpo4_sensitivity(energy_kev)
    mu_w = _mu_rho("water", energy_kev)
    out = {}
    for t, rho in _DENSITY_G_CM3.items():
        hu_t = 1000.0 * (rho * _mu_rho(t, energy_kev) / mu_w - 1.0)
        out[t] = {"hu": hu_t, "k2hpo4_mg_cm3": hu_t / sigma}
    return out


def tissue_mode_hu(values: np.ndarray, window, min_count: int = 200) -> float | None:
    """Mode of integer-like HU values inside ``window`` (None when too few voxels).

    The histogram (1 HU bins) is smoothed (Gaussian, 4 HU) to find the peak, then refined
    as the mean of the values within +-15 HU of it.
    """
    lo, hi = window
    v = values[(values >= lo) & (values <= hi)]
    if v.size < min_count:
        return None
    hist, edges = np.histogram(v, bins=np.arange(lo, hi + 2.0) - 0.5)
    peak = float(edges[np.argmax(ndimage.gaussian_filter1d(hist.astype(float), 4.0))] + 0.5)
    near = v[np.abs(v - peak) <= 15.0]
    return float(near.mean()) if near.size >= min_count // 4 else None


def _roi_values(hu: Volume, roi) -> np.ndarray:
    """HU values in a ROI: a boolean Volume/array on the grid or a sphere (center mm, radius mm)."""
    if isinstance(roi, Volume):
        roi = roi.data
    if isinstance(roi, np.ndarray) and roi.shape == hu.shape:
        return hu.data[roi.astype(bool)].astype(float)
    center, radius = np.asarray(roi[0], float).reshape(3), float(roi[1])
    ijk = hu.world_to_index(center)
    reach = radius / hu.spacing + 1
    i0 = np.clip(np.floor(ijk - reach).astype(int), 0, np.array(hu.shape) - 1)
    i1 = np.clip(np.ceil(ijk + reach).astype(int), 0, np.array(hu.shape) - 1) + 1
    idx = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(i0, i1)], indexing="ij"), -1)
    inside = np.linalg.norm(hu.index_to_world(idx) - center, axis=-1) <= radius
    return hu.data[i0[0]:i1[0], i0[1]:i1[1], i0[2]:i1[2]][inside].astype(float)


def internal_calibration(hu: Volume, mask_bone=None, tissue_rois: dict | None = None,
                         energy_kev: float = DEFAULT_EFFECTIVE_ENERGY_KEV,
                         min_r2: float = 0.98) -> Calibration:
    """Phantomless calibration from air and soft tissues in the image (K2HPO4-equivalent).

    Each reference tissue ``t`` has a K2HPO4-equivalent density ``rho_eq(t)`` computed from
    physics (:func:`tissue_reference`: NIST/ICRU-46 attenuation at ``energy_kev``); the
    calibration is the least-squares line ``rho_eq = slope * HU_measured + intercept`` over the
    tissues found. This is the approach of Lee et al. 2017 (air plus blood or adipose as
    references with fixed equivalent densities) with Michalski et al.'s (2020) attenuation
    tables; unlike Michalski we do not search the effective energy, because soft tissues alone
    do not determine it (their HU change by < 5 HU over 60-80 keV) and the vertebral cortex is
    too thin at QCT resolution to sample. The result therefore assumes the scanner's K2HPO4
    sensitivity at ``energy_kev``; air and the soft tissues correct the scanner's HU offset
    and gain.

    Parameters
    ----------
    hu : Volume
        CT image in HU.
    mask_bone : Volume or ndarray of bool, optional
        Bone voxels, excluded from automatic tissue sampling.
    tissue_rois : dict, optional
        ``{"air" | "fat" | "muscle" | "blood": roi}`` with ``roi`` a boolean mask on the grid or
        ``(center LPS mm, radius mm)`` sphere; its robust mean replaces the automatic mode.
        Blood is only used when given (it cannot be told from muscle by HU alone).
    energy_kev : float
        Effective beam energy (keV) for the reference constants.
    min_r2 : float
        Minimum R^2 of the tissue line.

    Raises
    ------
    CalibrationError
        Fewer than 2 tissues found, no air, R^2 below ``min_r2`` or non-positive slope.
    """
    tissue_rois = dict(tissue_rois or {})
    unknown = set(tissue_rois) - set(_DENSITY_G_CM3)
    if unknown:
        raise CalibrationError(f"unknown reference tissue(s) {sorted(unknown)}; use {sorted(_DENSITY_G_CM3)}")
    values = hu.data
    if mask_bone is not None:
        mb = mask_bone.data if isinstance(mask_bone, Volume) else np.asarray(mask_bone)
        values = values[~mb.astype(bool)]
    values = np.asarray(values, float).ravel()
    ref = tissue_reference(energy_kev)
    measured = {}
    for t in _DENSITY_G_CM3:
        if t in tissue_rois:
            v = _roi_values(hu, tissue_rois[t])
            if v.size < 10:
                raise CalibrationError(f"{t} ROI holds fewer than 10 voxels")
            measured[t] = _robust_mean(v)
        elif t in TISSUE_WINDOWS_HU:
            m = tissue_mode_hu(values, TISSUE_WINDOWS_HU[t])
            if m is not None:
                measured[t] = m
    if "air" not in measured or len(measured) < 2:
        raise CalibrationError(f"internal calibration needs air and at least one soft tissue; found {sorted(measured)}")
    names = sorted(measured)
    x = np.array([measured[t] for t in names])
    y = np.array([ref[t]["k2hpo4_mg_cm3"] for t in names])
    a, b, r2 = _line_fit(x, y)
    if not b > 0:
        raise CalibrationError(f"internal calibration slope is not positive ({b:.3g})")
    if len(names) > 2 and not r2 >= min_r2:
        raise CalibrationError(f"internal calibration R^2 = {r2:.4f} is below {min_r2}")
    resid = y - (a + b * x)
    return Calibration(
        slope=b, intercept=a, r2=r2 if len(names) > 2 else float("nan"), method="internal",
        material="K2HPO4", points=list(zip(x.tolist(), y.tolist())),
        details={"tissues": names, "measured_hu": measured,
                 "reference_hu": {t: ref[t]["hu"] for t in names},
                 "effective_energy_kev": energy_kev, "sigma_ct": k2hpo4_sensitivity(energy_kev),
                 "rmse_mg_cm3": float(np.sqrt(np.mean(resid**2)))},
    )
