"""Where a vertebra is held and driven: endplate and cap surfaces found from anatomy.

A compression test, a pullout test and the published benchmark protocol all hold the
vertebral *body* at its two ends: by rigid platens, by PMMA embeddings, or by PMMA disks
moulded on the endplates. What they reach is the part of the body's outer surface that is
*visible* along the body axis from above (cranial endplate) or from below (caudal endplate)
within the body's footprint, near that end of the body. :func:`endplate_supports` finds
exactly that on the mesh surface:

1. The footprint: the vertebral body (imaging sub-regions 1 and 2, no posterior elements)
   projected along the body axis (:func:`body_footprint`), or the caps' own projection
   when caps carry the load.
2. Visibility: rays parallel to the body axis through a fine grid of footprint points hit
   the mesh's boundary triangles; per ray the first surface met from above (below) is the
   visible one (a z-buffer). A boundary face is visible where it is the first hit of at
   least one ray. Side walls of a waisted body, the undersides of pedicles and surfaces
   hidden under a rim are never first hits.
3. A band: of the visible faces, only those within ``band_mm`` of the end level (a robust
   high percentile of the visible heights, so a lone osteophyte does not set it) count.
   This drops the parts of a flared wall that stick out beyond the opposite rim.
4. With caps, only cap faces count and nodes shared with bone are removed: the load goes
   in through the caps' outer faces only.

Every set is audited (:class:`SupportAudit`: projected area, axial extent, share of the
footprint) and an implausible one raises :class:`~fesim.errors.ModelError` instead of
being used.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import ModelError
from ..imaging.segmentation import BODY_CODES
from ..mesh.tetmesh import REGION_BONE, REGION_CAP_LOWER, REGION_CAP_UPPER

#: Depth (mm) of the band below the end level in which visible surface counts as endplate.
#: Lumbar endplates are concave by a few mm (1-3) in their centre; 4 mm keeps
#: the whole concavity of a normal endplate and excludes walls more than a few mm down.
DEFAULT_BAND_MM = 4.0
#: Largest tilt (deg) of an endplate plane against the body's cross-section.
MAX_TILT_DEG = 25.0
#: A support set reaching along the axis over more than this fraction of the body height is refused.
MAX_HEIGHT_FRACTION = 0.4
#: A support set covering less of the footprint than this is refused (fraction).
MIN_COVERAGE = 0.25
#: ... and less than this is warned about.
WARN_COVERAGE = 0.5


@dataclass
class Footprint:
    """A binary raster of the body's projection along its axis.

    ``mask[i, j]`` covers the square of side ``cell_mm`` centred at
    ``origin + (i, j) * cell_mm`` in the (ML, AP) coordinates of the body frame (mm from the
    body centre).
    """

    origin: np.ndarray
    cell_mm: float
    mask: np.ndarray

    @property
    def area_mm2(self) -> float:
        return float(self.mask.sum()) * self.cell_mm ** 2

    def contains(self, uv: np.ndarray) -> np.ndarray:
        """True where (ML, AP) points ``uv`` (K, 2) lie in the footprint."""
        ij = np.round((np.asarray(uv, float) - self.origin) / self.cell_mm).astype(np.int64)
        ok = np.all((ij >= 0) & (ij < np.array(self.mask.shape)), axis=1)
        out = np.zeros(len(ij), bool)
        out[ok] = self.mask[ij[ok, 0], ij[ok, 1]]
        return out


def footprint_from_points(uv: np.ndarray, cell_mm: float, close: int = 1) -> Footprint:
    """Footprint of projected points ``uv`` (K, 2) (ML, AP mm) on a raster of ``cell_mm``.

    Each point marks its pixel; small gaps are closed (``close`` pixels) and holes filled.
    """
    from scipy import ndimage as ndi

    uv = np.asarray(uv, float)
    if uv.size == 0:
        raise ModelError("empty footprint: no points to project")
    origin = uv.min(axis=0) - (close + 1) * cell_mm
    shape = np.ceil((uv.max(axis=0) - origin) / cell_mm).astype(int) + close + 2
    m = np.zeros(shape, bool)
    ij = np.round((uv - origin) / cell_mm).astype(int)
    m[ij[:, 0], ij[:, 1]] = True
    if close:
        m = ndi.binary_closing(m, iterations=close, border_value=0)
    m = ndi.binary_fill_holes(m)
    return Footprint(origin, float(cell_mm), m)


def body_footprint(regions, frame: dict) -> Footprint:
    """The vertebral body's footprint along its axis from an imaging region map.

    Parameters
    ----------
    regions : Volume
        Sub-region map of :func:`fesim.imaging.segmentation.subregions` (1 trabecular body,
        2 cortical shell; posterior elements excluded).
    frame : dict
        Its ``meta["frame"]`` (``body_center``, ``ml_axis``, ``ap_axis``).
    """
    body = np.isin(regions.data, BODY_CODES)
    if not body.any():
        raise ModelError("no vertebral body in the region map: cannot place the supports")
    pts = regions.index_to_world(np.argwhere(body)) - np.asarray(frame["body_center"], float)
    uv = np.column_stack([pts @ np.asarray(frame["ml_axis"], float), pts @ np.asarray(frame["ap_axis"], float)])
    # one pixel per voxel footprint: the voxel's extent across the axis is about its spacing
    return footprint_from_points(uv, float(np.min(regions.spacing)))


def nearest_region_codes(regions, points: np.ndarray) -> np.ndarray:
    """Imaging sub-region code (:data:`fesim.imaging.segmentation.REGION_NAMES`) of the
    labelled voxel nearest to each point (N, 3) mm.

    Mesh surfaces lie between voxel centres, so a plain lookup often meets background; the
    nearest labelled voxel says whether a surface point belongs to the body
    (``BODY_CODES``) or to the posterior elements (``POSTERIOR_CODES``).
    """
    from scipy import ndimage as ndi

    _, inds = ndi.distance_transform_edt(regions.data == 0, sampling=regions.spacing, return_indices=True)
    ijk = np.round(regions.world_to_index(np.asarray(points, float))).astype(np.int64)
    ijk = np.clip(ijk, 0, np.array(regions.shape) - 1)
    near = tuple(inds[(slice(None),) + tuple(ijk.T)])
    return regions.data[near].astype(np.int16)


@dataclass
class SupportAudit:
    """Where one node set sits (mm, mm^2), for result.json and plausibility checks."""

    name: str
    n_nodes: int
    area_mm2: float              # projected area of the set's faces across the body axis
    footprint_area_mm2: float    # area of the footprint it was sought in
    axial_min_mm: float          # from the body centre along the axis
    axial_max_mm: float
    end_level_mm: float          # the end level the band is measured from
    band_mm: float
    on: str                      # "bone" or "caps"
    tilt_deg: float = 0.0        # of the end plane against the body's cross-section

    @property
    def axial_extent_mm(self) -> float:
        return self.axial_max_mm - self.axial_min_mm

    @property
    def coverage(self) -> float:
        return self.area_mm2 / self.footprint_area_mm2 if self.footprint_area_mm2 > 0 else 0.0

    def to_dict(self) -> dict:
        return {"n_nodes": self.n_nodes, "area_mm2": self.area_mm2,
                "footprint_area_mm2": self.footprint_area_mm2, "coverage": self.coverage,
                "axial_extent_mm": self.axial_extent_mm, "axial_range_mm": [self.axial_min_mm, self.axial_max_mm],
                "end_level_mm": self.end_level_mm, "band_mm": self.band_mm, "on": self.on,
                "tilt_deg": self.tilt_deg}


@dataclass
class EndplateSupports:
    """Lower (caudal) and upper (cranial) support node sets with their audits."""

    lower: np.ndarray
    upper: np.ndarray
    audit: dict = field(default_factory=dict)  # "lower"/"upper" -> SupportAudit
    faces: dict = field(default_factory=dict)  # "lower"/"upper" -> indices of the boundary faces held


def _face_pixels(tri_uv: np.ndarray, fp_origin: np.ndarray, cell: float, shape) -> tuple[np.ndarray, ...]:
    """All (face, pixel) pairs whose pixel centre lies in the face's projected triangle.

    Returns face index (P,), pixel indices (P, 2) and barycentric weights (P, 3).
    """
    lo = np.floor((tri_uv.min(axis=1) - fp_origin) / cell).astype(np.int64)
    hi = np.ceil((tri_uv.max(axis=1) - fp_origin) / cell).astype(np.int64)
    lo = np.clip(lo, 0, np.array(shape) - 1)
    hi = np.clip(hi, 0, np.array(shape) - 1)
    n = hi - lo + 1
    count = n[:, 0] * n[:, 1]
    face = np.repeat(np.arange(len(tri_uv)), count)
    start = np.cumsum(count) - count
    k = np.arange(count.sum()) - np.repeat(start, count)
    ny = np.repeat(n[:, 1], count)
    ij = lo[face] + np.column_stack([k // ny, k % ny])
    p = fp_origin + ij * cell
    a, b, c = tri_uv[face, 0], tri_uv[face, 1], tri_uv[face, 2]
    v0, v1, v2 = b - a, c - a, p - a
    den = v0[:, 0] * v1[:, 1] - v0[:, 1] * v1[:, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        l1 = (v2[:, 0] * v1[:, 1] - v2[:, 1] * v1[:, 0]) / den
        l2 = (v0[:, 0] * v2[:, 1] - v0[:, 1] * v2[:, 0]) / den
        l0 = 1.0 - l1 - l2  # NaN for faces seen edge-on (den = 0): dropped below
    eps = -1e-9
    inside = (np.abs(den) > 1e-14) & (l0 >= eps) & (l1 >= eps) & (l2 >= eps)
    return face[inside], ij[inside], np.column_stack([l0, l1, l2])[inside]


def visible_faces(points: np.ndarray, faces: np.ndarray, axis, center, ml, ap, footprint: Footprint,
                  from_above: bool, ray_cell_mm: float | None = None):
    """Boundary triangles first met by rays along the body axis through the footprint.

    Parameters
    ----------
    points : (N, 3) node coordinates (mm); faces : (F, 3) boundary triangles (outward order)
    axis, center, ml, ap : body frame (unit vectors, centre in mm)
    footprint : where rays are cast
    from_above : rays come down from the cranial side (True) or up from the caudal side
    ray_cell_mm : ray spacing (mm); default a quarter of the mean face edge, at most 0.5 mm

    Returns
    -------
    visible : (F,) bool
    rays : (R, 2) (ML, AP) position (mm) of every footprint ray that hit the surface
    height : (R,) axial coordinate (mm) of its first hit
    hit_face : (R,) the face it hit first
    """
    rel = points - np.asarray(center, float)
    s = rel @ axis
    uv = np.column_stack([rel @ ml, rel @ ap])
    sign = 1.0 if from_above else -1.0
    tri = faces
    n = np.cross(points[tri[:, 1]] - points[tri[:, 0]], points[tri[:, 2]] - points[tri[:, 0]])
    facing = sign * (n @ axis) > 0  # only faces turned towards the rays can be first hits
    idx = np.flatnonzero(facing)
    if ray_cell_mm is None:
        edge = np.linalg.norm(points[tri[:, 1]] - points[tri[:, 0]], axis=1).mean()
        ray_cell_mm = float(min(0.5, 0.25 * edge))
    shape = np.ceil(np.array(footprint.mask.shape) * footprint.cell_mm / ray_cell_mm).astype(int) + 1
    origin = footprint.origin - 0.5 * footprint.cell_mm
    f, ij, lam = _face_pixels(uv[tri[idx]], origin, ray_cell_mm, shape)
    ray_uv = origin + ij * ray_cell_mm
    keep = footprint.contains(ray_uv)
    f, ij, lam, ray_uv = f[keep], ij[keep], lam[keep], ray_uv[keep]
    hit = sign * np.einsum("pk,pk->p", lam, s[tri[idx[f]]])
    ray = ij[:, 0] * shape[1] + ij[:, 1]
    best = np.full(shape[0] * shape[1], -np.inf)
    np.maximum.at(best, ray, hit)
    first = hit >= best[ray] - 1e-6
    visible = np.zeros(len(tri), bool)
    visible[idx[f[first]]] = True
    # one entry per ray: its first hit (ties between faces sharing an edge: any of them)
    _, one = np.unique(ray[first], return_index=True)
    pick = np.flatnonzero(first)[one]
    return visible, ray_uv[pick], sign * hit[pick], idx[f[pick]]


def end_plane(uv: np.ndarray, out: np.ndarray, band_mm: float, percentile: float = 90.0):
    """The plane of an endplate's end level from first-hit heights.

    ``out`` are the hit heights measured outwards (towards the rays' source). A plane
    ``out = c0 + c1 u + c2 v`` is fitted by least squares to the hits within ``band_mm`` of
    it, repeatedly (hits on walls far inside are dropped), then raised to the
    ``percentile`` of the kept residuals: rim and concavity lie within the band below it.
    The tilt follows the endplate, so a wedge-shaped (lordotic) body keeps all of its
    endplate in the band. Returns ``(c0, c1, c2)``.
    """
    A = np.column_stack([np.ones(len(uv)), uv])
    keep = np.ones(len(uv), bool)
    coef = np.array([np.percentile(out, percentile), 0.0, 0.0])
    for _ in range(8):
        r = out - A @ coef
        new = r >= -band_mm
        if keep.sum() >= 3 and np.array_equal(new, keep) and _ > 0:
            break
        keep = new if new.sum() >= 3 else keep
        coef = np.linalg.lstsq(A[keep], out[keep], rcond=None)[0]
        coef[0] += np.percentile(out[keep] - A[keep] @ coef, percentile)
    return coef


def _projected_area(points, faces, axis) -> float:
    n = np.cross(points[faces[:, 1]] - points[faces[:, 0]], points[faces[:, 2]] - points[faces[:, 0]])
    return float(0.5 * np.abs(n @ axis).sum())


def endplate_supports(points: np.ndarray, faces: np.ndarray, owner_kind: np.ndarray, frame: dict,
                      footprint: Footprint, caps: bool = False, cap_footprints=None,
                      band_mm: float = DEFAULT_BAND_MM, end_percentile: float = 90.0,
                      bone_nodes: np.ndarray | None = None,
                      face_extra: np.ndarray | None = None) -> EndplateSupports:
    """Support node sets at the caudal and cranial ends of the vertebral body.

    Parameters
    ----------
    points : (N, 3) mm
    faces : (F, 3) boundary triangles, outward-oriented corner node ids
    owner_kind : (F,) int: 1 bone, 20 lower cap, 21 upper cap, anything else (screws) never
        supports (but still hides what lies behind it)
    frame : dict with ``body_center``, ``body_axis``, ``ml_axis``, ``ap_axis``
    footprint : body footprint (:func:`body_footprint`)
    caps : the load and supports act on the caps' outer faces (owner 20 below, 21 above)
    cap_footprints : (lower, upper) footprints of the caps; default ``footprint``
    band_mm : depth of the band below the end level (module docstring)
    end_percentile : percentile of the visible heights taken as the end level
    bone_nodes : node ids of bone elements; with caps, these never support
    face_extra : (F, k) further nodes on each face (tet10 mid-edge nodes, a hex quad's fourth
        corner): held with the face's corners, or the face would be held at its corners only

    Raises
    ------
    ModelError
        A set is empty, covers less than :data:`MIN_COVERAGE` of its footprint, or reaches
        past the band (which would mean the surface is not what it should be).
    """
    axis = np.asarray(frame["body_axis"], float)
    center = np.asarray(frame["body_center"], float)
    ml, ap = np.asarray(frame["ml_axis"], float), np.asarray(frame["ap_axis"], float)
    s = (points - center) @ axis
    out, audit, held_faces = {}, {}, {}
    for name, above, cap_code in (("lower", False, REGION_CAP_LOWER), ("upper", True, REGION_CAP_UPPER)):
        fp = footprint
        if caps and cap_footprints is not None:
            fp = cap_footprints[1 if above else 0]
        vis, rays, heights, hit_face = visible_faces(points, faces, axis, center, ml, ap, fp, from_above=above)
        want = (owner_kind == cap_code) if caps else (owner_kind == REGION_BONE)
        cand = vis & want
        good = want[hit_face]
        if not cand.any() or good.sum() < 3:
            what = f"{name} cap's outer face" if caps else f"{name} endplate"
            raise ModelError(f"the {what} is not visible along the body axis: cannot place the supports")
        sign = 1.0 if above else -1.0
        coef = end_plane(rays[good], sign * heights[good], band_mm, end_percentile)
        tilt = float(np.degrees(np.arctan(np.hypot(coef[1], coef[2]))))
        if tilt > MAX_TILT_DEG:
            raise ModelError(f"the {name} endplate found is tilted {tilt:.0f} deg to the body's cross-section "
                             f"(more than {MAX_TILT_DEG:g}): the body axis or the surface is wrong")
        rel = points - center
        depth = sign * s - (coef[0] + coef[1] * (rel @ ml) + coef[2] * (rel @ ap))  # <= 0 inside
        in_band = np.all(np.abs(depth[faces]) <= band_mm, axis=1)
        sel = cand & in_band
        nodes = np.unique(faces[sel])
        if face_extra is not None and face_extra.shape[1]:
            nodes = np.union1d(nodes, face_extra[sel].ravel())
        if caps and bone_nodes is not None:
            nodes = np.setdiff1d(nodes, bone_nodes)
        level = sign * float(coef[0])
        area = _projected_area(points, faces[sel], axis)
        a = SupportAudit(name=name, n_nodes=int(nodes.size), area_mm2=area, footprint_area_mm2=fp.area_mm2,
                         axial_min_mm=float(s[nodes].min()) if nodes.size else float("nan"),
                         axial_max_mm=float(s[nodes].max()) if nodes.size else float("nan"),
                         end_level_mm=level, band_mm=band_mm, on="caps" if caps else "bone", tilt_deg=tilt)
        check_audit(a, frame.get("body_height_mm"))
        out[name], audit[name], held_faces[name] = nodes, a, np.flatnonzero(sel)
    return EndplateSupports(out["lower"], out["upper"], audit, held_faces)


def check_audit(a: SupportAudit, body_height_mm: float | None = None, min_coverage: float = MIN_COVERAGE,
                warn_coverage: float = WARN_COVERAGE, max_height_fraction: float = MAX_HEIGHT_FRACTION):
    """Refuse (ModelError) or warn about an implausible support set."""
    import warnings

    where = f"{a.name} {'cap face' if a.on == 'caps' else 'endplate'}"
    if a.n_nodes < 3:
        raise ModelError(f"the {where} support has {a.n_nodes} node(s): the model cannot be held there")
    if body_height_mm and a.axial_extent_mm > max_height_fraction * body_height_mm:
        raise ModelError(f"the {where} support spans {a.axial_extent_mm:.1f} mm along the body axis, more than "
                         f"{100 * max_height_fraction:.0f} % of the body height ({body_height_mm:.1f} mm): "
                         "the surface found is not an endplate")
    if a.coverage < min_coverage:
        raise ModelError(f"the {where} support covers {100 * a.coverage:.0f} % of the body's cross-section "
                         f"({a.area_mm2:.0f} of {a.footprint_area_mm2:.0f} mm^2), less than "
                         f"{100 * min_coverage:.0f} %: the endplate is not where the model expects it")
    if a.coverage < warn_coverage:
        warnings.warn(f"the {where} support covers only {100 * a.coverage:.0f} % of the body's cross-section "
                      f"({a.area_mm2:.0f} of {a.footprint_area_mm2:.0f} mm^2)")
