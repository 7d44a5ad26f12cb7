"""Vertebra identification and isolation in a CT without a label map, and a check on every mask.

Classical and dependency-light (numpy/scipy). Steps of :func:`identify_vertebrae`:

1. The image is viewed in a canonical array order (patient left, posterior, superior) by
   axis permutation and flips only; an oblique acquisition (slice normal more than 30 degrees
   from the patient's superior axis) is refused.
2. Bone: Gaussian-smoothed image above a bone threshold (110 HU), holes filled in 3-D and
   slice-wise in the sagittal and coronal planes (not axial: that would fill the canal).
3. The column's axis: in each axial slice, the point of largest in-plane distance to the
   bone's surface within 25 mm of the patient's midline (the vertebral body is the thickest
   bone there), median-filtered along the slices.
4. Discs: along that axis, the body's cross-section (a 14 mm disk) is dark in a disc and
   bright in the endplates on both sides of it, while a vertebra's mid-body is dark with
   the endplates far away. The "disc score" (darker than both neighbours within 6 mm)
   gives candidates; consecutive discs must be 18-45 mm apart.
5. Levels: each segment between discs seeds its body core and its pedicle region (18-36 mm
   behind the body's axis, 6-24 mm to each side); a watershed on the inverted intensity
   grows the seeds through the bone, so the cuts fall in the dark gaps (discs, facet
   joints) and the caudally sloping arch stays with its own body. The posterior elements
   (bone more than 15 mm behind the body's axis, within 35 mm of the midline) are then
   reassigned to the level of the nearest pedicle seed along the bone, dark voxels costing
   more: at 3 mm the facet joint space blurs into bright bone, and the watershed alone cut
   at the darker pars instead, giving a level its neighbour's articular process. The rim voxels below 150 HU
   (unsmoothed) are trimmed: mostly soft tissue by partial volume.
6. Counting: the lowest segment is the sacrum when it continues without a disc for more
   than 45 mm or is wider than 110 mm (alae, ilia), and is not cut by the image border.
   T12 is the lowest segment whose bone (or a small separate bone touching it: a rib)
   reaches 65 mm or more to both sides of the axis, above one that does not. Levels are
   named from either landmark (S1, L5, ... upwards; T12, L1, ... downwards); with both in
   view they must be 5 lumbar segments apart. A scan with neither, or where they
   disagree, is refused: fesim does not guess the level.

Coordinates: seed points are patient LPS millimetres (DICOM convention; a NIfTI's RAS
coordinates are converted on reading: x_LPS = -x_RAS, y_LPS = -y_RAS, z_LPS = z_RAS).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from fesim.errors import SegmentationError
from fesim.imaging.components import largest_component
from fesim.imaging.volume import Volume

_BALL26 = np.ones((3, 3, 3), bool)
BONE_HU = 110.0          # bone threshold (HU); a density image uses BONE_HU * _DENSITY_PER_HU
_DENSITY_PER_HU = 0.8    # rough mg/cm^3 per HU of a K2HPO4-calibrated image, for thresholds only
MIDLINE_MM = 25.0
DISK_MM = 14.0
MIN_HEIGHT_MM, MAX_HEIGHT_MM = 18.0, 45.0
SACRUM_HEIGHT_MM, SACRUM_WIDTH_MM = 45.0, 110.0
ILIUM_ML = 30.0        # lateral bone (beyond 50 mm) of more than this on each side: ilia, not ribs
RIB_REACH_MM = 65.0    # bone of a rib-bearing segment reaches this far to both sides
SURFACE_HU = 150.0     # a surface voxel below this (unsmoothed) is mostly soft tissue: trimmed
PED_MM = (18.0, 36.0)  # pedicle seed: posterior offset (mm) from the body's axis (posterior wall to arch)
PED_X = (6.0, 24.0)    # ... and its distance (mm) to each side of the axis
POST_MM = (15.0, 35.0)  # posterior elements: behind the body's axis by, and within of the midline (mm)
DARK_HU, DARK_COST = 600.0, 50.0  # geodesic cost: a voxel darker than DARK_HU costs up to 1 + 50 x its length

#: Plausible whole-vertebra volumes (ml) per region, adult, generous bounds.
VOLUME_RANGE_ML = {"C": (3.0, 40.0), "T": (10.0, 90.0), "L": (25.0, 160.0), "S": (20.0, 400.0)}


class VertebraIdentificationError(SegmentationError):
    """The requested vertebra cannot be identified or isolated reliably."""


class MaskCheckError(SegmentationError):
    """A vertebra mask is not one plausible vertebra (several bones, wrong size, no pedicles)."""


@dataclass
class Level:
    """One vertebra found along the column.

    ``mask`` is a uint8 Volume on the input grid; ``centroid`` its LPS centroid (mm);
    ``confidence`` in [0, 1]: the weaker disc score at its ends / 50 (clipped) times the sacrum's certainty, halved for an implausible height, x0.3 when cut by the image border.
    """

    name: str
    mask: Volume
    centroid: np.ndarray
    confidence: float
    volume_ml: float
    info: dict = field(default_factory=dict)


# ---------------------------------------------------------------- canonical orientation
def _canonical(vol: Volume):
    """Permutation and flips that bring ``vol.data`` to (left, posterior, superior) order."""
    D = vol.direction
    perm = [int(np.argmax(np.abs(D[w, :]))) for w in range(3)]  # array axis along world x, y, z
    if sorted(perm) != [0, 1, 2]:
        raise VertebraIdentificationError("image axes are too oblique to the patient axes to find the spine")
    cosz = abs(D[2, perm[2]])
    if cosz < np.cos(np.radians(30.0)):
        raise VertebraIdentificationError(
            f"slices are tilted {np.degrees(np.arccos(cosz)):.0f} deg from axial; automatic vertebra "
            "identification needs an axial acquisition (use --labels or --seed-point)")
    flips = [bool(D[w, perm[w]] < 0) for w in range(3)]
    return perm, flips


def _to_canon(a, perm, flips):
    a = np.transpose(a, perm)
    for ax, f in enumerate(flips):
        if f:
            a = np.flip(a, ax)
    return a


def _from_canon(a, perm, flips):
    for ax, f in enumerate(flips):
        if f:
            a = np.flip(a, ax)
    return np.ascontiguousarray(np.transpose(a, np.argsort(perm)))


def _fill_planes(mask, axes=(0, 1)):
    out = ndi.binary_fill_holes(mask)
    for ax in axes:
        m = np.moveaxis(out, ax, 0)
        st = np.zeros((3, 3, 3), bool)
        st[1] = ndi.generate_binary_structure(2, 1)
        out = np.moveaxis(ndi.binary_fill_holes(m, structure=st), 0, ax)
    return out


# ---------------------------------------------------------------- the column
@dataclass
class _Column:
    raw: np.ndarray         # canonical image (HU-equivalent)
    smooth: np.ndarray      # canonical smoothed image (HU-equivalent)
    bone: np.ndarray        # canonical filled bone mask
    track: np.ndarray       # (nz, 2) body centre per slice (voxel x, y); nan where none
    valid: np.ndarray       # (nz,) slices where the column's body was found
    discs: list             # slice indices of the discs found, ascending
    disc_score: np.ndarray  # (nz,)
    h: np.ndarray           # canonical spacing
    perm: list
    flips: list


def _hu_equivalent(vol: Volume) -> np.ndarray:
    data = vol.data.astype(np.float32)
    if str(vol.meta.get("units", "")).startswith("mg/cm"):
        data = data / _DENSITY_PER_HU
    return data


def find_column(vol: Volume) -> _Column:
    """The spinal column's axis and its discs (see the module docstring, steps 1-4)."""
    perm, flips = _canonical(vol)
    h = vol.spacing[perm]
    a = _to_canon(_hu_equivalent(vol), perm, flips)
    s = ndi.gaussian_filter(a, sigma=1.0 / h)
    body_mask = s > -400.0
    lab, n = ndi.label(body_mask)
    if n == 0:
        raise VertebraIdentificationError("no patient body found in the image")
    body_mask = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
    xs = np.argwhere(body_mask.any(axis=(1, 2)))[:, 0]
    x_mid = 0.5 * (np.argwhere(body_mask)[:, 0].mean() + 0.5 * (xs.min() + xs.max()))
    bone = _fill_planes(s > BONE_HU)
    nx, ny, nz = s.shape
    win = int(round(MIDLINE_MM / h[0]))
    lo, hi = max(0, int(x_mid) - win), min(nx, int(x_mid) + win + 1)
    track = np.full((nz, 2), np.nan)
    depth = np.zeros(nz)
    for z in range(nz):
        sl = bone[lo:hi, :, z]
        if not sl.any():
            continue
        e = ndi.distance_transform_edt(sl, sampling=h[:2])
        i, j = np.unravel_index(int(np.argmax(e)), e.shape)
        track[z] = (i + lo, j)
        depth[z] = e[i, j]
    valid = depth >= 8.0  # a vertebral body is at least 16 mm across
    valid = _longest_run(valid, int(np.ceil(15.0 / h[2])))
    if valid.sum() * h[2] < 2 * MIN_HEIGHT_MM:
        raise VertebraIdentificationError("no spinal column found: the field of view holds less than "
                                          "two vertebral bodies' height of thick midline bone")
    zs = np.flatnonzero(valid)
    span = np.zeros(nz, bool)
    span[zs[0]: zs[-1] + 1] = True
    k = max(3, int(round(15.0 / h[2])) | 1)
    for c in range(2):
        t = track[:, c].copy()
        t[~valid] = np.interp(np.flatnonzero(~valid), zs, t[valid])
        track[:, c] = ndi.median_filter(t, size=k, mode="nearest")
    track[~span] = np.nan
    # Disc score along the column: the body's 14 mm disk is darker than both sides within
    # 6 mm (p75 of its intensity), and the midline bone is thinner (in-plane depth).
    r = DISK_MM
    gx, gy = np.meshgrid(np.arange(nx) * h[0], np.arange(ny) * h[1], indexing="ij")
    p75 = np.full(nz, np.nan)
    for z in zs[0] + np.arange(zs[-1] - zs[0] + 1):
        d = (gx - track[z, 0] * h[0]) ** 2 + (gy - track[z, 1] * h[1]) ** 2 <= r * r
        p75[z] = np.percentile(s[:, :, z][d], 75)
    dep = np.where(span, depth, np.nan)
    score = _dip(p75, h[2]) + 5.0 * _dip(dep, h[2])
    discs = _pick_discs(score, valid, h[2])
    return _Column(a, s, bone, track, span, discs, score, h, perm, flips)


def _longest_run(flags, max_gap):
    """The longest run of True allowing gaps of up to ``max_gap`` False entries."""
    idx = np.flatnonzero(flags)
    out = np.zeros_like(flags)
    if idx.size == 0:
        return out
    breaks = np.flatnonzero(np.diff(idx) > max_gap + 1)
    starts = np.r_[0, breaks + 1]
    ends = np.r_[breaks, idx.size - 1]
    best = int(np.argmax(idx[ends] - idx[starts]))
    sel = idx[starts[best]: ends[best] + 1]
    out[sel] = True
    return out


def _dip(p, hz, reach_mm=6.0):
    """Depth of a dip of ``p``: the lower of the two sides' maxima within ``reach_mm``, minus ``p``."""
    w = max(1, int(round(reach_mm / hz)))
    out = np.zeros(p.size)
    for z in range(p.size):
        if np.isnan(p[z]):
            continue
        below, above = p[max(0, z - w): z], p[z + 1: z + 1 + w]
        if below.size == 0 or above.size == 0 or np.all(np.isnan(below)) or np.all(np.isnan(above)):
            continue
        out[z] = max(0.0, min(np.nanmax(below), np.nanmax(above)) - p[z])
    return out


def _pick_discs(score, valid, hz) -> list:
    """Disc slices: strong score maxima first, then weaker ones where the spacing predicts one."""
    nz = score.size
    min_gap = int(np.floor(MIN_HEIGHT_MM / hz))
    cand = [z for z in range(1, nz - 1) if score[z] > 0 and score[z] >= score[z - 1] and score[z] >= score[z + 1]]
    strong = sorted((z for z in cand if score[z] >= 40.0), key=lambda z: -score[z])
    discs: list[int] = []
    for z in strong:
        if all(abs(z - d) >= min_gap for d in discs):
            discs.append(z)
    discs.sort()
    if len(discs) >= 2:
        gap = float(np.median(np.diff(discs)))
    else:
        gap = 30.0 / hz
    # Extend with the best weak candidate near each predicted position, upwards and downwards.
    changed = True
    while changed and discs:
        changed = False
        for direction, ref in ((1, discs[-1]), (-1, discs[0])):
            pred = ref + direction * gap
            near = [z for z in cand if abs(z - pred) <= 0.3 * gap and score[z] >= 10.0 and valid[z]
                    and all(abs(z - d) >= min_gap for d in discs)]
            if near:
                discs.append(max(near, key=lambda z: score[z]))
                discs.sort()
                changed = True
    return discs


# ---------------------------------------------------------------- levels
def _segments(col: _Column):
    """(z_lo, z_hi) slice ranges of the column's segments between discs, bottom first."""
    zs = np.flatnonzero(col.valid)
    edges = [int(zs[0]) - 1] + list(col.discs) + [int(zs[-1]) + 1]
    return [(edges[i] + 1, edges[i + 1] - 1) for i in range(len(edges) - 1)
            if edges[i + 1] - edges[i] - 1 >= 2]


def _watershed(col: _Column, segs) -> np.ndarray:
    """Canonical label array: segment index + 1 per bone voxel of the column, 0 elsewhere."""
    s, bone, h, tr = col.smooth, col.bone, col.h, col.track
    nx, ny, nz = s.shape
    gx, gy = np.meshgrid(np.arange(nx) * h[0], np.arange(ny) * h[1], indexing="ij")
    markers = np.zeros(s.shape, np.int16)
    core_r = 10.0
    for i, (z0, z1) in enumerate(segs):
        m = max(1, int(round(3.0 / h[2])))
        for z in range(z0 + (m if i > 0 else 0), z1 - m + 1):
            dx, dy = gx - tr[z, 0] * h[0], gy - tr[z, 1] * h[1]
            core = dx ** 2 + dy ** 2 <= core_r ** 2
            if i > 0:
                # the pedicles leave the body straight backwards (canonical +y): seeding
                # them keeps the arch, which slopes caudally, with its own body
                core |= (dy >= PED_MM[0]) & (dy <= PED_MM[1]) & (np.abs(dx) >= PED_X[0]) & (np.abs(dx) <= PED_X[1])
            markers[:, :, z][core & bone[:, :, z]] = i + 1
    # the column's bone: connected to a marker
    lab, _ = ndi.label(bone, structure=_BALL26)
    keep = np.unique(lab[markers > 0])
    col_bone = np.isin(lab, keep[keep > 0])
    cost = np.clip(3000.0 - s, 0, 6000).astype(np.uint16)
    cost[~col_bone] = 65535
    mk = markers.astype(np.int16)
    mk[(~col_bone) & (markers == 0)] = -1  # background outside the column's bone
    ws = ndi.watershed_ift(cost, mk, structure=ndi.generate_binary_structure(3, 1))
    ws = np.where(col_bone & (ws > 0), ws, 0).astype(np.int16)
    _posterior_by_distance(ws, col, segs, markers)
    # Trim the partial-volume rim: the smoothed threshold puts the surface half a voxel out.
    inner = ndi.grey_erosion(ws, footprint=ndi.generate_binary_structure(3, 1))
    rim = (ws > 0) & (inner != ws)
    ws[rim & (col.raw < SURFACE_HU)] = 0
    return ws


def _posterior_by_distance(ws, col: _Column, segs, markers) -> None:
    """Reassign the posterior elements (in place) to the level of the nearest pedicle seed.

    At the facet joints the articular processes of two levels touch; at 3 mm the joint
    space is blurred into bright bone, so the watershed's cut falls in the darker trabecular
    pars instead and one level takes the neighbour's articular process. Here every bone
    voxel behind the bodies (more than ``POST_MM[0]`` behind the body's axis, within
    ``POST_MM[1]`` of the midline) goes to the level whose pedicle seeds are nearest along
    the bone (Dijkstra), a path through a dark voxel costing up to ``1 + DARK_COST`` times
    its length. The lowest segment (its pedicles are not seeded) keeps the watershed's voxels.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import dijkstra

    h = col.h
    nx, ny, nz = ws.shape
    tr = _segment_track(col, segs)
    xc = np.nanmedian(tr[:, 0])
    yc = np.where(np.isnan(tr[:, 1]), np.nanmedian(tr[:, 1]), tr[:, 1])
    behind = (np.arange(ny)[None, :, None] - yc[None, None, :]) * h[1] >= POST_MM[0]
    near = (np.abs(np.arange(nx) - xc) * h[0] <= POST_MM[1])[:, None, None]
    zone = behind & near & (ws > 1)
    pts = np.flatnonzero(zone)
    src_mask = zone.ravel()[pts] & (markers.ravel()[pts] > 1)
    if pts.size == 0 or not src_mask.any():
        return
    idx = np.full(ws.size, -1, np.int64)
    idx[pts] = np.arange(pts.size)
    idx = idx.reshape(ws.shape)
    dark = np.clip((DARK_HU - col.smooth) / DARK_HU, 0.0, 1.0)
    rows, cols, wts = [], [], []
    for ax in range(3):
        a = [slice(None)] * 3
        b = [slice(None)] * 3
        a[ax], b[ax] = slice(0, -1), slice(1, None)
        a, b = tuple(a), tuple(b)
        both = zone[a] & zone[b]
        rows.append(idx[a][both])
        cols.append(idx[b][both])
        wts.append(h[ax] * (1.0 + DARK_COST * 0.5 * (dark[a][both] + dark[b][both])))
    graph = coo_matrix((np.concatenate(wts), (np.concatenate(rows), np.concatenate(cols))),
                       shape=(pts.size, pts.size)).tocsr()
    src = np.flatnonzero(src_mask)
    _, _, nearest = dijkstra(graph, directed=False, indices=src, min_only=True, return_predecessors=True)
    reached = nearest >= 0
    flat = ws.reshape(-1)
    flat[pts[reached]] = markers.reshape(-1)[pts[nearest[reached]]]


def _segment_track(col: _Column, segs, tol_mm: float = 6.0) -> np.ndarray:
    """The body's track refitted per segment: a straight line through the slices within
    ``tol_mm`` of the segment's median (a slice near a disc may find other bone)."""
    tr = col.track.copy()
    for z0, z1 in segs:
        zz = np.arange(z0, z1 + 1)
        for c in range(2):
            v = col.track[zz, c]
            ok = np.abs(v - np.median(v)) * col.h[c] <= tol_mm
            tr[zz, c] = np.polyval(np.polyfit(zz[ok], v[ok], 1), zz) if ok.sum() >= 3 else np.median(v)
    return tr


def _segment_width_mm(col: _Column, z0, z1) -> float:
    """Median over the segment's slices of the left-right extent (mm) of the bone connected
    in-plane to the column's body (the median ignores a slice through an oblique disc)."""
    widths = []
    for z in range(z0, z1 + 1):
        lab, _ = ndi.label(col.bone[:, :, z])
        c = lab[int(round(col.track[z, 0])), int(round(col.track[z, 1]))]
        if c == 0:
            widths.append(0.0)
            continue
        xs = np.flatnonzero((lab == c).any(axis=1))
        widths.append((xs.max() - xs.min() + 1) * col.h[0])
    return float(np.median(widths)) if widths else 0.0


def identify_vertebrae(volume: Volume) -> dict[str, Level]:
    """Find, separate and name the vertebrae of a CT without a label map.

    Parameters
    ----------
    volume : Volume
        CT in HU, or a calibrated density image (mg/cm^3); axial acquisition.

    Returns
    -------
    dict
        Level name (``"S1"``, ``"L5"``, ...) -> :class:`Level`, bottom first. A level cut by
        the image border is named but carries ``info["truncated"] = True``.

    Raises
    ------
    VertebraIdentificationError
        No column, fewer than two discs, no landmark to count from (neither the sacrum nor
        a rib-bearing T12 in view), or the two landmarks disagree.
    """
    col = find_column(volume)
    segs = _segments(col)
    if len(col.discs) < 2:
        raise VertebraIdentificationError(
            f"only {len(col.discs)} intervertebral disc(s) found along the spine: the field of view is too short "
            "or the levels are fused; cannot count levels (use --labels or --seed-point)")
    nz = col.smooth.shape[2]
    ws = _watershed(col, segs)
    reach = [_lateral_reach_mm(col, ws, i, segs[i]) for i in range(len(segs))]
    # Sacrum: among the lowest three segments, the highest of those wide in-plane (alae) or
    # carrying a large lateral bone (ilia), or a lowest segment over 45 mm high without a
    # disc; the sacral parts below it are not named.
    z0, z1 = segs[0]
    height = (z1 - z0 + 1) * col.h[2]
    at_border = z0 <= 1
    widths = [_segment_width_mm(col, *segs[i]) for i in range(min(3, len(segs)))]
    sacral = [widths[i] > SACRUM_WIDTH_MM or min(reach[i][2:]) > ILIUM_ML
              or (i == 0 and not at_border and height > SACRUM_HEIGHT_MM) for i in range(len(widths))]
    s1 = next((i for i in range(len(widths)) if sacral[i] and not (i + 1 < len(widths) and sacral[i + 1])), None)
    sacrum = s1 is not None
    sacrum_conf = 0.0
    if sacrum:
        sacrum_conf = 1.0 if min(reach[s1][2:]) > ILIUM_ML else float(
            np.clip(max((widths[s1] - 90.0) / 40.0, (height - 35.0) / 20.0), 0.0, 1.0))
    # T12: the lowest rib-bearing segment (bone reaching 65 mm to both sides, a few ml:
    # ribs, not an ilium) above one without ribs, above the sacrum
    ribbed = [min(r[:2]) >= RIB_REACH_MM and max(r[2:]) <= ILIUM_ML for r in reach]
    first = (s1 + 1) if sacrum else 1
    t12 = next((i for i in range(first, len(segs)) if ribbed[i] and not ribbed[i - 1]), None)
    rib_conf = float(np.clip((min(reach[t12][:2]) - 55.0) / 20.0, 0.0, 1.0)) if t12 is not None else 0.0
    if not sacrum and t12 is None:
        why = ("its lowest segment is cut by the image border" if at_border else
               f"its lowest segment ({height:.0f} mm high, {widths[0]:.0f} mm wide) is not a sacrum")
        raise VertebraIdentificationError(
            f"cannot count vertebral levels: neither the sacrum ({why}) nor a rib-bearing vertebra (T12) is in "
            "the field of view; use --labels or --seed-point")
    if sacrum and t12 is not None and t12 - s1 != 6:
        raise VertebraIdentificationError(
            f"cannot count vertebral levels: the sacrum and the last rib-bearing vertebra are {t12 - s1 - 1} "
            "segments apart, not 5 lumbar vertebrae (transitional vertebra, fused or fractured level, or a missed "
            "disc); use --labels or --seed-point")
    ladder = ["S1"] + [f"L{n}" for n in range(5, 0, -1)] + [f"T{n}" for n in range(12, 0, -1)]
    base = -s1 if sacrum else 6 - t12  # ladder index of segment 0
    count_conf = 1.0 - (1.0 - sacrum_conf) * (1.0 - rib_conf)
    out = {}
    for i, (za, zb) in enumerate(segs):
        if not 0 <= base + i < len(ladder):
            continue
        name = ladder[base + i]
        m = largest_component(ws == i + 1)
        ends = []
        if i > 0:
            ends.append(col.disc_score[za - 1])
        if i < len(segs) - 1:
            ends.append(col.disc_score[zb + 1])
        cut = (i == len(segs) - 1) or (i == 0 and not sacrum)  # no disc seen beyond it
        disc_conf = float(np.clip(min(ends) / 50.0, 0.0, 1.0)) if ends else 0.0
        h_mm = (zb - za + 1) * col.h[2]
        shape_ok = name == "S1" or (MIN_HEIGHT_MM <= h_mm + col.h[2] <= MAX_HEIGHT_MM)
        conf = count_conf * disc_conf * (1.0 if shape_ok else 0.5) * (0.3 if cut else 1.0)
        data = _from_canon(m.astype(np.uint8), col.perm, col.flips)
        mask = volume.with_data(data, units="label", kind="mask")
        vol_ml = float(data.sum()) * volume.voxel_volume_mm3 / 1000.0
        idx = np.argwhere(data)
        cen = volume.index_to_world(idx.mean(axis=0)) if idx.size else np.full(3, np.nan)
        mask.meta.update(level=name, identified="auto", confidence=conf, volume_ml=vol_ml)
        out[name] = Level(name, mask, cen, conf, vol_ml,
                          {"slices": (za, zb), "truncated": bool(cut), "height_mm": h_mm,
                           "lateral_reach_mm": reach[i][:2], "lateral_ml": reach[i][2:],
                           "rib_bearing": ribbed[i],
                           "landmarks": [n for n, ok in (("sacrum", sacrum), ("T12 ribs", t12 is not None)) if ok]})
    return out


def _lateral_reach_mm(col: _Column, ws, i, seg) -> tuple:
    """How far (mm) the segment's bone, or a separate bone touching it, reaches (left, right)
    of the column's axis -- ribs reach beyond 65 mm, lumbar transverse processes do not --
    and the volume (ml) of the segment's bone beyond 50 mm on each side (ilia: tens of ml)."""
    z0, z1 = seg
    xc = float(np.nanmean(col.track[z0:z1 + 1, 0]))
    m = ws == i + 1
    if not m.any():
        return (0.0, 0.0, 0.0, 0.0)
    xs = np.argwhere(m.any(axis=(1, 2)))[:, 0]
    left, right = (xs.max() - xc) * col.h[0], (xc - xs.min()) * col.h[0]
    dx = (np.arange(m.shape[0]) - xc) * col.h[0]
    per_x = m.sum(axis=(1, 2)) * float(np.prod(col.h)) / 1000.0
    ml_left, ml_right = float(per_x[dx > 50.0].sum()), float(per_x[dx < -50.0].sum())
    # ribs not bridged to the vertebra at this resolution: small separate bones touching it
    sl = slice(max(0, z0 - 2), z1 + 3)
    other = col.bone[:, :, sl] & (ws[:, :, sl] == 0)
    lab, n = ndi.label(other, structure=_BALL26)
    if n:
        near = ndi.binary_dilation(m[:, :, sl], iterations=2) & (lab > 0)
        vox_ml = float(np.prod(col.h)) / 1000.0
        sizes = np.bincount(lab.ravel())
        for c in np.unique(lab[near]):
            if c == 0 or sizes[c] * vox_ml > 60.0:  # an ilium, not a rib
                continue
            cx = np.argwhere((lab == c).any(axis=(1, 2)))[:, 0]
            left = max(left, (cx.max() - xc) * col.h[0])
            right = max(right, (xc - cx.min()) * col.h[0])
    return (float(left), float(right), ml_left, ml_right)


def isolate_level(volume: Volume, level: str, min_confidence: float = 0.3, with_others: bool = False):
    """The mask of vertebra ``level`` (e.g. ``"L4"``) found by :func:`identify_vertebrae`.

    With ``with_others``, returns ``(mask, others)``: ``others`` (bool array) the voxels of
    the other levels found (bone the vertebra's surface must not grow into).

    Raises
    ------
    VertebraIdentificationError
        The level is not in view, is cut by the image border, or its confidence is below
        ``min_confidence``.
    """
    from fesim.imaging.labels import normalize_level

    name = normalize_level(level) or str(level)
    levels = identify_vertebrae(volume)
    if name not in levels:
        raise VertebraIdentificationError(
            f"vertebra {name} not found in the field of view (levels found: {', '.join(levels)})")
    lv = levels[name]
    if lv.info["truncated"]:
        raise VertebraIdentificationError(f"vertebra {name} is cut by the image border; a partial vertebra "
                                          "cannot be analysed")
    if lv.confidence < min_confidence:
        raise VertebraIdentificationError(
            f"vertebra {name} identified with confidence {lv.confidence:.2f} < {min_confidence:g} "
            "(unclear disc or sacrum); use --labels or --seed-point")
    if not with_others:
        return lv.mask
    others = np.zeros(volume.shape, bool)
    for other in levels.values():
        if other is not lv:
            others |= other.mask.data > 0
    return lv.mask, others


def isolate_at_seed(volume: Volume, seed_lps, with_others: bool = False):
    """The vertebra containing ``seed_lps`` (LPS mm, a point inside the body), without counting.

    Splits the column at its discs as :func:`identify_vertebrae` does and returns the segment
    at the seed; where no column with two discs is found (a single vertebra in view, e.g.
    the phantom), falls back to :func:`fesim.imaging.segmentation.segment_vertebra` at the seed.
    With ``with_others``, returns ``(mask, others)``: the other segments' voxels (None on the
    fallback).
    """
    from fesim.imaging.segmentation import segment_vertebra

    seed = np.asarray(seed_lps, float).reshape(3)
    ijk = np.round(volume.world_to_index(seed)).astype(int)
    if np.any(ijk < 0) or np.any(ijk >= np.array(volume.shape)):
        raise SegmentationError(f"seed point {seed.tolist()} (LPS mm) lies outside the image")
    try:
        col = find_column(volume)
    except VertebraIdentificationError:
        col = None
    if col is None or len(col.discs) < 1:
        mask = segment_vertebra(volume, seed_lps=seed)
        mask.meta.update(identified="seed")
        return (mask, None) if with_others else mask
    segs = _segments(col)
    ws = _watershed(col, segs)
    lab = _from_canon(ws, col.perm, col.flips)
    v = int(lab[tuple(ijk)])
    if v == 0:  # seed in the marrow below threshold or just outside: nearest labelled voxel within 10 mm
        near = np.argwhere(lab > 0)
        d = np.linalg.norm((near - ijk) * volume.spacing, axis=1)
        if near.size == 0 or d.min() > 10.0:
            raise SegmentationError(f"no vertebra within 10 mm of the seed point {seed.tolist()} (LPS mm)")
        v = int(lab[tuple(near[int(np.argmin(d))])])
    m = largest_component(lab == v)  # without specks cut off by the rim trimming
    out = volume.with_data(m.astype(np.uint8), units="label", kind="mask")
    out.meta.update(identified="seed", volume_ml=float(m.sum()) * volume.voxel_volume_mm3 / 1000.0)
    return (out, (lab > 0) & (lab != v)) if with_others else out


# ---------------------------------------------------------------- the check on every mask
def check_vertebra_mask(mask: Volume, level: str | None = None, source: str = "mask") -> list[str]:
    """Check that ``mask`` is one plausible vertebra; refuse it or return warnings.

    Refused (:class:`MaskCheckError`, one line naming the reason): empty; several bones
    (a second 26-connected piece of more than 10 % of the largest); a volume outside
    :data:`VOLUME_RANGE_ML` for the level's region (``level`` None: the lumbar range widened
    to 10-200 ml); no vertebral body; fewer than two pedicles.

    Returns
    -------
    list of str
        Warnings (small detached pieces dropped by later stages, volume near a bound).
    """
    from fesim.imaging.labels import normalize_level
    from fesim.imaging.segmentation import subregions

    m = mask.data > 0
    name = normalize_level(level) if level else None
    what = f"{source} of {name}" if name else source
    if not m.any():
        raise MaskCheckError(f"{what} is empty")
    warnings_ = []
    vox_ml = mask.voxel_volume_mm3 / 1000.0
    lab, n = ndi.label(m, structure=_BALL26)
    if n > 1:
        sizes = np.sort(np.bincount(lab.ravel())[1:])[::-1]
        if sizes[1] > 0.10 * sizes[0]:
            raise MaskCheckError(f"{what} is not one vertebra: {n} separate pieces, the second "
                                 f"{sizes[1] * vox_ml:.1f} ml beside {sizes[0] * vox_ml:.1f} ml")
        warnings_.append(f"{what}: {n - 1} small detached piece(s) of {sizes[1:].sum() * vox_ml:.2f} ml in all")
    vol = float(m.sum()) * vox_ml
    lo, hi = VOLUME_RANGE_ML.get(name[0], (10.0, 200.0)) if name else (10.0, 200.0)
    if not lo <= vol <= hi:
        raise MaskCheckError(f"{what} has an implausible volume for one vertebra: {vol:.1f} ml "
                             f"(expected {lo:g}-{hi:g} ml)")
    if name is None or name[0] != "S":
        try:
            reg = subregions(mask)
        except SegmentationError as exc:
            raise MaskCheckError(f"{what} has no recognisable vertebral body ({exc})") from None
        body_ml = reg.meta["frame"]["body_volume_ml"]
        if body_ml < 0.25 * vol:
            raise MaskCheckError(f"{what} has no vertebral body: its compact part is {body_ml:.1f} of {vol:.1f} ml")
        ped = reg.meta.get("pedicle_length_mm", {})
        missing = [s for s in ("left", "right") if not ped.get(s)]
        if missing:
            raise MaskCheckError(f"{what} lacks the {' and '.join(missing)} pedicle(s): not a whole vertebra")
    mask.meta["check"] = {"volume_ml": vol, "components": int(n), "warnings": list(warnings_)}
    return warnings_


def single_vertebra_in_view(volume: Volume) -> bool:
    """True when no disc is found along the column: at most one vertebra to analyse."""
    try:
        col = find_column(volume)
    except VertebraIdentificationError:
        return True
    return len(col.discs) == 0
