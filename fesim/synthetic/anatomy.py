"""Patient anatomy of the synthetic cohort: an L4 vertebra, its density pattern and surroundings.

Everything here is defined in the *patient* frame, LPS millimetres with the L4 body centred
at the origin (+x left, +y posterior, +z superior), as in :mod:`fesim.synthetic.phantom`;
:mod:`fesim.synthetic.scan` places the patient in a scanner, :mod:`fesim.synthetic.dxa`
projects it as a DXA scanner does. With ``Anatomy()`` (the defaults) the vertebra has the
shape of the default phantom; :func:`draw_anatomy` draws one patient.

What varies between patients (the numbers are assumptions, listed in ``docs/study.md``):
body width, depth and height; endplate concavity; cortical thickness; pedicle width, height
and angle; size and cortex of the posterior elements, facet-joint (articular process)
hypertrophy; the spatial pattern of trabecular density (denser rim under the endplates,
anterior and central loss, posterior-element density); subcutaneous and visceral fat;
osteophytes at the body's rim (bone, part of the vertebra); calcified plaques in the aortic
wall (mineral outside the vertebra). The DXA-only sources (posterior elements, facets,
calcification, fat) are drawn independently of the body's density, as in elderly women.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .phantom import TISSUE_HU, _ellipse_sdf, _segment_sdf_xy, _slab

#: Trabecular density of the default phantom (mg/cm^3 K2HPO4), the reference of the ratios.
REFERENCE_TRABECULAR = 140.0


@dataclass(frozen=True)
class Osteophyte:
    """A marginal osteophyte: a bony lip on the body's rim at an endplate.

    ``angle_deg`` is the position around the rim (0 = left, -90 = anterior, LPS), ``upper``
    the endplate (True: superior), lengths in mm.
    """

    angle_deg: float
    upper: bool
    protrusion_mm: float
    height_mm: float
    width_mm: float


@dataclass(frozen=True)
class Plaque:
    """A calcified plaque in the aortic wall (intima), mineral ``mg_cm3`` (K2HPO4-equivalent).

    ``angle_deg`` is its position around the aorta (0 = left, -90 = anterior), ``z_mm`` its
    centre along the body axis; ``arc_mm``, ``height_mm`` and ``thickness_mm`` its extent.
    """

    angle_deg: float
    z_mm: float
    arc_mm: float
    height_mm: float
    thickness_mm: float
    mg_cm3: float


@dataclass(frozen=True)
class Anatomy:
    """One patient's L4 and surroundings (lengths in mm, ratios dimensionless).

    Density pattern: trabecular BMD at a point is the visit's trabecular level times
    ``(1 + rim_gain exp(-d / rim_mm) + ap_gradient clip(y / b, -1, 1.5))
    (1 - anterior_loss clip(-y / b, 0, 1)) (1 - central_loss exp(-r^2 / 0.18))``,
    with ``d`` the depth below the nearer endplate and ``r`` the radius normalised by the
    body's half axes; posterior-element trabecular bone is ``posterior_ratio`` times the level.
    """

    body_a: float = 22.5                  # half width (medio-lateral)
    body_b: float = 17.5                  # half depth (antero-posterior)
    body_h: float = 27.0                  # height
    disc_h: float = 9.0
    endplate_concavity_mm: float = 0.0    # central depth of each endplate's dip
    cortex_mm: float = 1.0                # shell of the body and the posterior elements
    pedicle_cortex_mm: float | None = None  # pedicle wall (None: cortex_mm)
    posterior_cortex_mm: float | None = None  # laminae, processes, facets (None: cortex_mm)
    pedicle_half_w: float = 4.5
    pedicle_half_h: float = 7.0
    pedicle_angle_deg: float = 12.0       # medial convergence, posterior -> anterior
    pedicle_len: float = 20.0
    posterior_radius: float = 3.0         # lamina, transverse and spinous process thickness / 2
    spinous_len: float = 10.0
    transverse_span: float = 38.0         # tip of the transverse process from the midline
    facet_radius_mm: float = 0.0          # articular processes (0: none); > 3 mm hypertrophic
    rim_gain: float = 0.15
    rim_mm: float = 3.0
    ap_gradient: float = 0.12
    anterior_loss: float = 0.0
    central_loss: float = 0.0
    posterior_ratio: float = 1.2
    subcutaneous_fat_mm: float = 8.0
    abdominal_fat_mm: float = 9.0         # radius of the fat pocket anterior to the spine
    abdominal_fat_x_mm: float = -25.0     # its centre's medio-lateral position
    girth_scale: float = 1.0              # skin ellipse relative to 160 x 120 mm
    osteophytes: tuple = field(default_factory=tuple)
    plaques: tuple = field(default_factory=tuple)

    # ------------------------------------------------------------------ derived points
    def pedicle_frame(self, side: int):
        """Start point and unit axis (anterior -> posterior) of a pedicle; side +1 left."""
        start = np.array([side * 0.533 * self.body_a, 0.571 * self.body_b, 0.111 * self.body_h])
        ang = np.deg2rad(self.pedicle_angle_deg)
        return start, np.array([side * np.sin(ang), np.cos(ang), 0.0])

    @property
    def aorta_center(self) -> np.ndarray:
        return np.array([15.0, -(self.body_b + 15.5), 0.0])

    @property
    def aorta_radius(self) -> float:
        return 10.0

    @property
    def canal_center(self) -> np.ndarray:
        return np.array([0.0, self.body_b + 7.5, 0.0])


def _dip(an: Anatomy, x, y):
    rho2 = np.clip((x / an.body_a) ** 2 + (y / an.body_b) ** 2, 0.0, 1.0)
    return an.endplate_concavity_mm * (1.0 - rho2)


def _osteophyte_sdf(an: Anatomy, o: Osteophyte, x, y, z):
    phi = np.deg2rad(o.angle_deg)
    rim = np.array([an.body_a * np.cos(phi), an.body_b * np.sin(phi)])
    normal = np.array([np.cos(phi) / an.body_a, np.sin(phi) / an.body_b])
    normal /= np.linalg.norm(normal)
    tang = np.array([-normal[1], normal[0]])
    rr = 0.5 * o.protrusion_mm + 1.0                     # overlaps the body by ~1 mm
    c = rim + (o.protrusion_mm - rr) * normal
    zc = (1 if o.upper else -1) * (0.5 * an.body_h - 0.5 * o.height_mm + 0.5)
    dx, dy, dz = x - c[0], y - c[1], z - zc
    axes = (rr, 0.5 * o.width_mm, 0.5 * o.height_mm + 0.5)
    q = np.sqrt(((dx * normal[0] + dy * normal[1]) / axes[0]) ** 2
                + ((dx * tang[0] + dy * tang[1]) / axes[1]) ** 2 + (dz / axes[2]) ** 2)
    return (q - 1.0) * min(axes)


def _capsule_z(x, y, z, xy, z0: float, z1: float, r: float):
    """Signed distance (mm) to a vertical capsule of radius ``r`` from ``z0`` to ``z1``."""
    dz = z - np.clip(z, z0, z1)
    return np.sqrt((x - xy[0]) ** 2 + (y - xy[1]) ** 2 + dz ** 2) - r


def vertebra_parts(an: Anatomy, x, y, z) -> dict:
    """Signed distances (mm, negative inside) of the L4 parts at patient points.

    Keys: ``body`` (with its osteophytes), ``pedicle_left``, ``pedicle_right``,
    ``posterior`` (laminae, transverse and spinous processes).
    """
    dip = _dip(an, x, y)
    body_z = np.maximum(z - (0.5 * an.body_h - dip), (-0.5 * an.body_h + dip) - z)
    body = np.maximum(_ellipse_sdf(x, y, an.body_a, an.body_b), body_z)
    for o in an.osteophytes:
        body = np.minimum(body, _osteophyte_sdf(an, o, x, y, z))
    parts = {"body": body}
    hz = an.body_h / 27.0
    post = []
    for name, side in (("pedicle_left", 1), ("pedicle_right", -1)):
        start, axis = an.pedicle_frame(side)
        lateral = np.array([axis[1], -axis[0], 0.0])
        px, py, pz = x - start[0], y - start[1], z - start[2]
        s = px * axis[0] + py * axis[1]
        t = px * lateral[0] + py * lateral[1]
        parts[name] = np.maximum(_ellipse_sdf(t, pz, an.pedicle_half_w, an.pedicle_half_h),
                                 _slab(s, 0.0, an.pedicle_len))
        root = start + an.pedicle_len * axis
        r = an.posterior_radius
        lamina_end = (0.0, root[1] + 7.5)
        post.append(np.maximum(_segment_sdf_xy(x, y, root[:2], lamina_end, r),
                               _slab(z, -11.0 * hz, 9.0 * hz)))
        tip = (side * an.transverse_span, root[1] - 7.5)
        post.append(np.maximum(_segment_sdf_xy(x, y, root[:2] - (0, 3.0), tip, r),
                               _slab(z, -1.0 * hz, 7.0 * hz)))
        if an.facet_radius_mm > 0:  # superior and inferior articular processes (facet joints)
            # the superior process rises above the pedicle (clear of the screw's entry at the
            # pedicle axis), the inferior one hangs from the lamina below it
            rf, x0, y1 = an.facet_radius_mm, root[0], root[1]
            top = start[2] + an.pedicle_half_h + rf
            post.append(_capsule_z(x, y, z, (x0, y1 + 4.0), top, top + 8.0 * hz, rf))
            post.append(_capsule_z(x, y, z, (0.7 * x0, y1 + 9.0), -17.0 * hz, -8.0 * hz, rf))
    start, axis = an.pedicle_frame(1)
    y0 = float(start[1] + an.pedicle_len * axis[1]) + 6.5  # spinous process behind the laminae
    post.append(np.maximum(_segment_sdf_xy(x, y, (0.0, y0), (0.0, y0 + an.spinous_len),
                                           an.posterior_radius), _slab(z, -9.0 * hz, 6.0 * hz)))
    parts["posterior"] = np.minimum.reduce(post)
    return parts


def bone_sdf(an: Anatomy, x, y, z):
    """Signed distance (mm) to the whole vertebra."""
    return np.minimum.reduce(list(vertebra_parts(an, x, y, z).values()))


def trabecular_pattern(an: Anatomy, x, y, z) -> np.ndarray:
    """Trabecular density of the body relative to the visit's level (see :class:`Anatomy`)."""
    dip = _dip(an, x, y)
    depth = np.maximum(np.minimum((0.5 * an.body_h - dip) - z, z - (-0.5 * an.body_h + dip)), 0.0)
    yr = y / an.body_b
    r2 = (x / an.body_a) ** 2 + yr ** 2 + (z / (0.5 * an.body_h)) ** 2
    return ((1.0 + an.rim_gain * np.exp(-depth / an.rim_mm) + an.ap_gradient * np.clip(yr, -1, 1.5))
            * (1.0 - an.anterior_loss * np.clip(-yr, 0.0, 1.0))
            * (1.0 - an.central_loss * np.exp(-r2 / 0.18)))


def partial_volume(sdf_fn, sdf, pts, axes_mm, cortex_mm: float, eps: float = 0.05):
    """Bone fraction and fraction inside the cortex (0..1) of each voxel.

    As :func:`fesim.synthetic.phantom._partial_volume`: a linear ramp over the change of the
    signed distance across one voxel step; ``axes_mm`` (3, 3) holds the voxel steps (rows, mm)
    in the frame of ``pts`` (N, 3); ``cortex_mm`` a thickness or one per point.
    """
    step = np.linalg.norm(axes_mm, axis=1).max()
    cortex_mm = np.broadcast_to(np.asarray(cortex_mm, float), sdf.shape)
    far = np.abs(sdf + 0.5 * cortex_mm) > 0.5 * cortex_mm + step
    f_bone = (sdf <= 0).astype(float)
    f_inner = (sdf <= -cortex_mm).astype(float)
    band = np.flatnonzero(~far)
    if band.size:
        p = pts[band]
        grad = np.empty((band.size, 3))
        for a in range(3):
            hi, lo = p.copy(), p.copy()
            hi[:, a] += eps
            lo[:, a] -= eps
            grad[:, a] = (sdf_fn(*hi.T) - sdf_fn(*lo.T)) / (2 * eps)
        w = np.maximum(np.linalg.norm(grad @ axes_mm.T, axis=1), 1e-6)
        sd = sdf[band]
        f_bone[band] = np.clip(0.5 - sd / w, 0.0, 1.0)
        f_inner[band] = np.clip(0.5 - (sd + cortex_mm[band]) / w, 0.0, 1.0)
    return f_bone, f_inner


@dataclass(frozen=True)
class BoneState:
    """Bone at one visit: trabecular and cortical levels (mg/cm^3), plaque mineral factor."""

    trabecular: float
    cortical: float
    plaque_scale: float = 1.0


def vertebra_fields(an: Anatomy, state: BoneState, pts, axes_mm):
    """Ground-truth BMD (mg/cm^3), bone fraction and region codes of L4 at patient points.

    Returns ``(bmd, fraction, region)``; region 0 outside, else the codes of
    :mod:`fesim.imaging.segmentation` (1 trabecular body, 2 cortical shell, 3/4 pedicles,
    5 other posterior elements).
    """
    from fesim.imaging import segmentation as seg

    x, y, z = pts.T
    parts = vertebra_parts(an, x, y, z)
    sdf = np.minimum.reduce(list(parts.values()))
    cortex = an.cortex_mm
    if an.pedicle_cortex_mm is not None or an.posterior_cortex_mm is not None:
        ped = np.minimum(parts["pedicle_left"], parts["pedicle_right"])
        # ties go to the body, then the posterior elements (as before the pedicle wall existed)
        nearest = np.argmin(np.stack([parts["body"], parts["posterior"], ped]), axis=0)
        shells = (an.cortex_mm,
                  an.cortex_mm if an.posterior_cortex_mm is None else an.posterior_cortex_mm,
                  an.cortex_mm if an.pedicle_cortex_mm is None else an.pedicle_cortex_mm)
        cortex = np.choose(nearest, shells)
    f_bone, f_inner = partial_volume(lambda *p: bone_sdf(an, *p), sdf, pts, axes_mm, cortex)
    inner = np.where(parts["body"] <= 0, state.trabecular * trabecular_pattern(an, x, y, z),
                     an.posterior_ratio * state.trabecular)
    bmd = (f_bone - f_inner) * state.cortical + f_inner * inner
    region = np.zeros(x.shape, np.uint8)
    bone = sdf <= 0
    reg = np.where(parts["pedicle_left"] <= 0, seg.LEFT_PEDICLE, seg.OTHER_POSTERIOR)
    reg = np.where(parts["pedicle_right"] <= 0, seg.RIGHT_PEDICLE, reg)
    reg = np.where(parts["body"] <= 0, np.where(sdf > -an.cortex_mm, seg.CORTICAL_SHELL,
                                                seg.TRABECULAR_BODY), reg)
    region[bone] = reg[bone]
    return bmd, f_bone, region


def plaque_fields(an: Anatomy, state: BoneState, pts, voxel_mm: float):
    """Mineral (mg/cm^3) and volume fraction of the aortic calcification at patient points."""
    x, y, z = pts.T
    mineral = np.zeros(x.shape)
    frac = np.zeros(x.shape)
    if not an.plaques:
        return mineral, frac
    c = an.aorta_center
    dx, dy = x - c[0], y - c[1]
    r = np.hypot(dx, dy)
    near = np.flatnonzero((r < an.aorta_radius + 3.0) & (r > an.aorta_radius - 5.0))
    if not near.size:
        return mineral, frac
    phi = np.arctan2(dy[near], dx[near])
    for p in an.plaques:
        # the plaque's extent grows with the visit's plaque_scale (progression), thickness fixed
        arc, hgt = p.arc_mm * state.plaque_scale, p.height_mm * state.plaque_scale
        dphi = np.angle(np.exp(1j * (phi - np.deg2rad(p.angle_deg))))
        rc = an.aorta_radius - 1.0 - 0.5 * p.thickness_mm
        d = np.maximum.reduce([np.abs(r[near] - rc) - 0.5 * p.thickness_mm,
                               np.abs(dphi) * rc - 0.5 * arc,
                               np.abs(z[near] - p.z_mm) - 0.5 * hgt])
        f = np.clip(0.5 - d / voxel_mm, 0.0, 1.0)
        upd = f > frac[near]
        frac[near[upd]] = f[upd]
        mineral[near[upd]] = p.mg_cm3
    return mineral, frac


def soft_tissue_hu(an: Anatomy, pts, table_pts=None) -> tuple:
    """True HU of the soft tissues, fat (bool) and disc (bool) at patient points.

    Skin ellipse of ``girth_scale`` x 160 x 120 mm (the back at y = 50 mm) with a
    subcutaneous fat layer, muscle inside; an abdominal fat pocket anterior-right of the
    spine, the aorta (blood), the spinal canal (CSF) and the discs above and below L4.
    The body contour lies on the table: with ``table_pts`` (the same points in the table
    frame) the skin and subcutaneous fat are placed there, the rest moves with the spine.
    Returns ``(hu, fat, disc)`` arrays.
    """
    x, y, z = pts.T
    tx, ty = (x, y) if table_pts is None else (table_pts[:, 0], table_pts[:, 1])
    g = an.girth_scale
    hu = np.full(x.shape, TISSUE_HU["air"])
    skin = _ellipse_sdf(tx, ty - (50.0 - 60.0 * g), 80.0 * g, 60.0 * g)  # back on the table, y = 50
    hu[skin <= 0] = TISSUE_HU["fat"]
    hu[skin <= -an.subcutaneous_fat_mm] = TISSUE_HU["muscle"]
    inside = skin <= -an.subcutaneous_fat_mm
    ac = an.aorta_center
    pocket = np.hypot(x - an.abdominal_fat_x_mm, y - ac[1] + 2.0) <= an.abdominal_fat_mm
    hu[inside & pocket] = TISSUE_HU["fat"]
    hu[np.hypot(x - ac[0], y - ac[1]) <= an.aorta_radius] = TISSUE_HU["blood"]
    cc = an.canal_center
    hu[_ellipse_sdf(x - cc[0], y - cc[1], 10.0, 7.0) <= 0] = TISSUE_HU["csf"]
    dip = _dip(an, x, y)
    in_body = _ellipse_sdf(x, y, an.body_a, an.body_b) <= 0
    top, bot = 0.5 * an.body_h - dip, -0.5 * an.body_h + dip
    disc = in_body & (((z > top) & (z <= 0.5 * an.body_h + an.disc_h))
                      | ((z < bot) & (z >= -0.5 * an.body_h - an.disc_h)))
    hu[disc] = TISSUE_HU["disc"]
    return hu, hu == TISSUE_HU["fat"], disc


def draw_anatomy(rng: np.random.Generator) -> Anatomy:
    """One patient's anatomy (see ``docs/study.md`` for the distributions, all assumptions)."""
    size = rng.normal(1.0, 0.07)
    a = 22.5 * size * rng.normal(1.0, 0.03)
    b = 17.5 * size * rng.normal(1.0, 0.03)
    h = 27.0 * float(np.clip(rng.normal(1.0, 0.06), 0.85, 1.15))
    # osteophytes: most osteoporotic elderly women have some at L4, a few large ones
    n_ost = int(rng.choice([0, 1, 1, 2, 2, 3, 4]))
    osteo = tuple(Osteophyte(float(rng.uniform(-165.0, -15.0)), bool(rng.integers(2)),
                             float(rng.uniform(2.0, 8.0)), float(rng.uniform(2.0, 5.0)),
                             float(rng.uniform(6.0, 16.0))) for _ in range(n_ost))
    # aortic calcification: common in osteoporotic elderly women, about 80 % with some plaques
    severity = float(rng.choice([0.0, 1.0, 2.0, 3.0, 5.0, 8.0]))
    n_pl = int(rng.poisson(severity)) if severity else 0
    plaques = tuple(Plaque(float(rng.uniform(-180.0, 20.0)), float(rng.uniform(-18.0, 18.0)),
                           float(rng.uniform(4.0, 14.0)), float(rng.uniform(3.0, 12.0)),
                           float(rng.uniform(0.8, 2.0)), float(rng.uniform(400.0, 900.0)))
                    for _ in range(n_pl))
    return Anatomy(
        body_a=float(a), body_b=float(b), body_h=float(h),
        disc_h=float(np.clip(rng.normal(9.0, 1.5), 5.0, 12.0)),
        endplate_concavity_mm=float(rng.uniform(0.3, 2.5)),
        cortex_mm=float(rng.uniform(0.7, 1.4)),
        pedicle_cortex_mm=float(rng.uniform(0.8, 1.6)),
        pedicle_half_w=float(np.clip(rng.normal(5.0, 0.6), 4.5, 6.5)),
        pedicle_half_h=float(np.clip(rng.normal(7.0, 0.7), 5.5, 8.5)),
        pedicle_angle_deg=float(np.clip(rng.normal(12.0, 3.0), 5.0, 19.0)),
        pedicle_len=float(20.0 * size),
        posterior_radius=float(np.clip(rng.normal(3.2, 0.5), 2.2, 4.5)),
        spinous_len=float(rng.uniform(8.0, 14.0)),
        transverse_span=float(38.0 * size * rng.normal(1.0, 0.05)),
        rim_gain=float(rng.uniform(0.05, 0.45)),
        rim_mm=float(rng.uniform(2.0, 4.0)),
        ap_gradient=float(rng.normal(0.12, 0.08)),
        anterior_loss=float(rng.uniform(0.0, 0.25)),
        central_loss=float(rng.uniform(0.0, 0.3)),
        # posterior elements' trabecular density relative to the body's: varies widely and
        # independently of the body's level (lognormal, CV ~30 %), never below the body's
        posterior_ratio=float(np.clip(np.exp(rng.normal(np.log(1.3), 0.3)), 1.0, 2.4)),
        subcutaneous_fat_mm=float(rng.uniform(4.0, 25.0)),
        abdominal_fat_mm=float(rng.uniform(5.0, 22.0)),
        girth_scale=float(np.clip(rng.normal(1.0, 0.06), 0.9, 1.12)),
        osteophytes=osteo, plaques=plaques,
        # posterior elements are mostly cortical bone, their shell independent of the body's
        posterior_cortex_mm=float(rng.uniform(0.8, 1.6)),
        # facet-joint degeneration grade 0-3 (hypertrophic articular processes), common in the
        # elderly: grade g widens the articular processes by 20 % per grade
        facet_radius_mm=float(3.2 * (1.0 + 0.2 * rng.choice([0, 1, 1, 2, 2, 3]))),
        # visceral fat lies unevenly in front of the spine: where it sits decides how much of
        # it the DXA beam crosses over L4 and beside it (the soft-tissue baseline)
        abdominal_fat_x_mm=float(rng.uniform(-30.0, 10.0)),
    )


def without_calcification(an: Anatomy) -> Anatomy:
    """The same patient without aortic calcification."""
    return replace(an, plaques=())
