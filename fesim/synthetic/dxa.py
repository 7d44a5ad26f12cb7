"""Simulated DXA of L4: an antero-posterior projection of the patient, as a DXA scanner sees it.

Why here and not in :mod:`fesim.imaging`: DXA is a separate examination with its own
positioning, field and physics (a projection through the *whole* body thickness, a
two-material decomposition with a soft-tissue baseline), which a QCT scan's field of view
and calibration do not provide. The synthetic patient (:mod:`fesim.synthetic.anatomy`) does,
so the DXA value of a synthetic visit is computed from the patient's voxel model here,
nothing being added to the result. fesim's QCT-derived areal BMD of the body alone is
:func:`fesim.imaging.bmd.areal_bmd`.

Model (assumptions, also in ``docs/study.md``):

* The patient lies supine on the DXA table, positioned to within a few degrees (a new
  positioning every exam). The beam runs along the patient's AP axis through everything in
  the field: vertebral body, posterior elements, osteophytes, aortic calcification, soft tissue.
* Bone-mineral image (per 1 mm pixel, g/cm^2): projected mineral (ground-truth BMD, mg/cm^3,
  along the ray) on the DXA's mineral scale (``DXA_SCALE`` per K2HPO4-equivalent), plus the
  two-material decomposition's soft-tissue error ``FAT_ERROR_G_CM2_PER_CM`` x (fat path length
  - baseline fat fraction x soft-tissue path length), the baseline taken, as a scanner does,
  from soft-tissue pixels beside the spine, plus quantum noise ``PIXEL_NOISE_G_CM2``.
* Region of interest: L4's rows (bone edges of the body found on the image, disc spaces
  outside), lateral lines just outside the body's bone edges (median over the rows, so the
  transverse processes do not widen it); bone pixels: above ``EDGE_FRACTION`` of the body's
  median value. aBMD = BMC / bone area.
* T-score from a young-adult female L4 reference (``TSCORE_REFERENCE``, docs/references.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .anatomy import Anatomy, BoneState, plaque_fields, soft_tissue_hu, vertebra_fields
from .phantom import TISSUE_HU
from .scan import Pose, rotation_matrix

#: DXA mineral scale per K2HPO4-equivalent mineral: the simulated scanner's calibration, chosen
#: so that the default anatomy at the cohort's mean baseline density reads ~0.75 g/cm^2
#: (FREEDOM's mean baseline LS T-score about -2.8). A common factor: changes neither
#: correlations nor percentage changes.
DXA_SCALE = 1.2
#: Apparent bone mineral per cm of fat in excess of the baseline's fat fraction (g/cm^2 per
#: cm); an assumption of the order reported for DXA's soft-tissue inhomogeneity error.
FAT_ERROR_G_CM2_PER_CM = -0.03
#: Quantum noise of one 1 mm x 1 mm pixel of the bone-mineral image (g/cm^2).
PIXEL_NOISE_G_CM2 = 0.03
#: Bone edge threshold, fraction of the body's median pixel value.
EDGE_FRACTION = 0.3
#: Young-adult female L4 reference (g/cm^2): mean, SD (docs/references.md).
TSCORE_REFERENCE = (1.086, 0.121)


@dataclass(frozen=True)
class DxaResult:
    """One simulated DXA exam of L4.

    Attributes
    ----------
    abmd_g_cm2, bmc_g, area_cm2, tscore : float
    roi_mm : tuple
        ``(x_lo, x_hi, z_lo, z_hi)`` of the region of interest in the DXA table frame (mm).
    """

    abmd_g_cm2: float
    bmc_g: float
    area_cm2: float
    tscore: float
    roi_mm: tuple


def draw_positioning(rng: np.random.Generator, max_deg: float = 3.0) -> Pose:
    """A DXA positioning: rotation about the body axis and about the medio-lateral axis,
    each up to ``max_deg``."""
    R = rotation_matrix((0, 0, 1), rng.uniform(-max_deg, max_deg)) \
        @ rotation_matrix((1, 0, 0), rng.uniform(-max_deg, max_deg))
    return Pose(tuple(map(tuple, R.round(12))))


def dxa_images(an: Anatomy, state: BoneState, positioning: Pose = Pose(), pixel_mm: float = 1.0):
    """Projected mineral (mg/cm^2 K2HPO4), fat and soft-tissue path lengths (cm) per pixel.

    Returns ``(mineral, fat, soft, xs, zs)``, maps of shape (len(xs), len(zs)) with the
    pixel centres ``xs``, ``zs`` (mm, DXA table frame).
    """
    g = an.girth_scale
    zh = 0.5 * an.body_h + an.disc_h + 4.0
    xs = np.arange(-85.0 * g, 85.0 * g + 1e-9, pixel_mm)
    ys = np.arange(-75.0 * g - 10.0, 52.0, 2.0 * pixel_mm)  # along the ray: 2 mm steps suffice
    zs = np.arange(-zh, zh + 1e-9, pixel_mm)
    X = np.stack(np.meshgrid(xs, ys, zs, indexing="ij"), -1).reshape(-1, 3)
    P = X @ positioning.R                 # patient coordinates of the table-frame points
    step = np.array([pixel_mm, ys[1] - ys[0], pixel_mm])
    axes_p = np.diag(step) @ positioning.R   # voxel steps (rows) in the patient frame
    hu, fat, _ = soft_tissue_hu(an, P, X)
    soft = hu > TISSUE_HU["air"] + 1.0
    mineral = np.zeros(len(P))
    near = np.flatnonzero((np.abs(P[:, 0]) <= an.transverse_span + 8.0)
                          & (P[:, 1] >= -an.body_b - 10.0) & (P[:, 1] <= 60.0)
                          & (np.abs(P[:, 2]) <= 0.5 * an.body_h + 6.0))
    bmd, frac, _ = vertebra_fields(an, state, P[near], axes_p)
    mineral[near] = bmd
    pm, pf = plaque_fields(an, state, P, pixel_mm)
    mineral += pf * pm
    occupied = np.zeros(len(P))
    occupied[near] = frac
    occupied = np.maximum(occupied, pf)
    shape = (xs.size, ys.size, zs.size)
    dl_cm = 0.1 * step[1]
    proj = lambda a: (a.reshape(shape) * dl_cm).sum(axis=1)  # noqa: E731
    return (proj(mineral), proj(fat * (1.0 - occupied)), proj(soft * (1.0 - occupied)), xs, zs)


def simulate_dxa(an: Anatomy, state: BoneState, positioning: Pose = Pose(), seed: int = 0,
                 pixel_mm: float = 1.0) -> DxaResult:
    """Simulated DXA aBMD of L4 (see the module docstring for the model)."""
    mineral, fat, soft, xs, zs = dxa_images(an, state, positioning, pixel_mm)
    img = DXA_SCALE * mineral * 1e-3      # g/cm^2
    rng = np.random.default_rng(seed)
    # soft-tissue baseline: pixels beside the spine, at L4's level, clear of bone
    beside = (np.abs(xs)[:, None] >= an.transverse_span + 10.0) & (np.abs(xs)[:, None] <= 70.0) \
        & (np.abs(zs)[None, :] <= 0.5 * an.body_h) & (soft > 0)
    f_ref = fat[beside].sum() / max(soft[beside].sum(), 1e-9)
    img = img + FAT_ERROR_G_CM2_PER_CM * (fat - f_ref * soft)
    img = img + rng.normal(0.0, PIXEL_NOISE_G_CM2 * pixel_mm ** -1, img.shape)
    return dxa_roi(img, xs, zs)


def dxa_roi(img: np.ndarray, xs, zs) -> DxaResult:
    """L4 region of interest on a bone-mineral image (g/cm^2, shape (len(xs), len(zs))),
    bone edge detection, aBMD."""
    pix_cm2 = abs(xs[1] - xs[0]) * abs(zs[1] - zs[0]) * 1e-2
    central = np.abs(xs - xs[np.argmax(img.sum(axis=1))]) <= 10.0
    core = img[central][:, np.abs(zs) <= 5.0]
    thr = EDGE_FRACTION * float(np.median(core))
    bone = img > thr
    # body rows: bone across at least half of the central 20 mm band
    rows = bone[central].mean(axis=0) >= 0.5
    mid = int(np.argmin(np.abs(zs)))
    lo = hi = mid
    while lo > 0 and rows[lo - 1]:
        lo -= 1
    while hi < zs.size - 1 and rows[hi + 1]:
        hi += 1
    lo, hi = max(lo - 1, 0), min(hi + 1, zs.size - 1)   # lines in the disc spaces
    xc = int(np.flatnonzero(central)[central.sum() // 2])
    left, right = [], []
    for k in range(lo, hi + 1):
        col = bone[:, k]
        if not col[xc]:
            continue
        a = xc
        while a > 0 and col[a - 1]:
            a -= 1
        b = xc
        while b < xs.size - 1 and col[b + 1]:
            b += 1
        left.append(a)
        right.append(b)
    pad = int(round(3.0 / abs(xs[1] - xs[0])))
    x0 = max(int(np.median(left)) - pad, 0)
    x1 = min(int(np.median(right)) + pad, xs.size - 1)
    box = bone[x0:x1 + 1, lo:hi + 1]
    area = float(box.sum()) * pix_cm2
    bmc = float(img[x0:x1 + 1, lo:hi + 1][box].sum()) * pix_cm2
    abmd = bmc / area
    return DxaResult(abmd_g_cm2=abmd, bmc_g=bmc, area_cm2=area,
                     tscore=(abmd - TSCORE_REFERENCE[0]) / TSCORE_REFERENCE[1],
                     roi_mm=(float(xs[x0]), float(xs[x1]), float(zs[lo]), float(zs[hi])))
