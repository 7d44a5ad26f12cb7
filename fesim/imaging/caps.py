"""End caps for compression tests: PMMA (or disc) layers on the vertebral endplates.

Many validation studies embed the endplates in PMMA before compressing a vertebra
(Maquer, Schwiedrzik & Zysset: PMMA embedding raised ultimate loads ~22 % over a disc
interface; docs/references.md).
The caps are built in the image domain, as masks on the vertebra's grid, so that the mesher
can mesh vertebra and caps as one conforming body; the mesh stage then labels the cap
elements (:func:`fesim.mesh.caps.assign_cap_regions`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ..errors import SegmentationError
from .volume import Volume


def _axial_coords(mask: Volume, frame: dict):
    ijk = np.indices(mask.shape).reshape(3, -1).T
    rel = mask.index_to_world(ijk) - np.asarray(frame["body_center"], dtype=float)
    return rel @ np.asarray(frame["ml_axis"]), rel @ np.asarray(frame["ap_axis"]), rel @ np.asarray(frame["body_axis"])


#: Cap shapes: ``flat`` fills up to a plane (a platen's embedding), ``extruded`` is the endplate
#: surface extruded along the axis (the "jelly bean" disks of the published spine benchmark).
CAP_SHAPES = ("flat", "extruded")


def generated_caps(mask: Volume, body: np.ndarray, frame: dict, thickness_mm: float = 5.0,
                   shape: str = "flat"):
    """Masks of a lower and an upper cap of ``thickness_mm`` beyond each endplate.

    ``flat``: a cap fills, within the body's footprint across the body axis, everything
    between the endplate surface (concavities included) and a plane ``thickness_mm`` beyond
    the endplate level, that is not vertebra. ``extruded``: in each column of the footprint
    along the body axis, the ``thickness_mm`` beyond the vertebra's last voxel (the endplate
    surface moved outwards along the axis, as Walle et al. 2025 build their PMMA disks).
    Returns ``(lower, upper)`` uint8 Volumes.

    Raises
    ------
    SegmentationError
        If the image does not extend ``thickness_mm`` beyond an endplate.
    """
    if thickness_mm <= 0:
        raise SegmentationError("cap thickness must be positive")
    if shape not in CAP_SHAPES:
        raise SegmentationError(f"cap shape must be one of {', '.join(CAP_SHAPES)}, not {shape!r}")
    u, v, w = _axial_coords(mask, frame)
    bu, bv = u[body.ravel()], v[body.ravel()]
    cell = float(mask.spacing.min())
    lo = np.array([bu.min(), bv.min()]) - 2 * cell
    grid = (np.ceil((np.array([bu.max(), bv.max()]) - lo) / cell) + 3).astype(int)
    foot = np.zeros(grid, bool)
    foot[((bu - lo[0]) / cell).round().astype(int), ((bv - lo[1]) / cell).round().astype(int)] = True
    foot = ndi.binary_fill_holes(ndi.binary_closing(foot, iterations=2))
    iu = ((u - lo[0]) / cell).round().astype(int)
    iv = ((v - lo[1]) / cell).round().astype(int)
    inside = (iu >= 0) & (iu < grid[0]) & (iv >= 0) & (iv < grid[1])
    in_foot = np.zeros(u.size, bool)
    in_foot[inside] = foot[iu[inside], iv[inside]]
    vert = mask.data.ravel() > 0
    up, low = frame["upper_endplate"], frame["lower_endplate"]
    extent = np.abs((mask.direction * mask.spacing) .T @ np.asarray(frame["body_axis"])).max() * 0.5
    if w.max() < up + thickness_mm - extent or w.min() > low - thickness_mm + extent:
        raise SegmentationError(f"the image does not extend {thickness_mm:g} mm beyond the endplates "
                                "for the end caps")
    mid = 0.5 * (up + low)
    if shape == "extruded":
        top, bottom = _column_ends(iu, iv, inside & in_foot & vert, w, grid)
        col = np.where(inside, iu * grid[1] + iv, 0)
        upper = in_foot & ~vert & (w > mid) & (w > top[col]) & (w <= top[col] + thickness_mm)
        lower = in_foot & ~vert & (w < mid) & (w < bottom[col]) & (w >= bottom[col] - thickness_mm)
    else:
        upper = in_foot & ~vert & (w > mid) & (w <= up + thickness_mm)
        lower = in_foot & ~vert & (w < mid) & (w >= low - thickness_mm)
    # keep only the layers connected to the endplates (not marrow spaces or canal pieces)
    out = []
    for m in (lower, upper):
        arr = m.reshape(mask.shape)
        lab, n = ndi.label(arr)
        if n > 1:
            arr = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
        out.append(mask.with_data(arr.astype(np.uint8), kind="cap"))
    return out[0], out[1]


def _column_ends(iu, iv, sel, w, shape):
    """Highest and lowest axial coordinate of the selected voxels per footprint column; columns
    without any take their nearest neighbour's (so the footprint's filled holes are capped)."""
    n = int(shape[0] * shape[1])
    col = iu[sel] * shape[1] + iv[sel]
    top = np.full(n, -np.inf)
    bottom = np.full(n, np.inf)
    np.maximum.at(top, col, w[sel])
    np.minimum.at(bottom, col, w[sel])
    have = np.isfinite(top).reshape(shape)
    if not have.any():
        raise SegmentationError("no vertebra voxel in the body's footprint: cannot build the caps")
    _, idx = ndi.distance_transform_edt(~have, return_indices=True)
    near = (idx[0] * shape[1] + idx[1]).ravel()
    return top[near], bottom[near]


def caps_from_labels(labels: Volume, values, mask: Volume, frame: dict):
    """Cap masks from label values of a label map (e.g. the discs above and below the vertebra).

    Voxels with one of ``values`` are split into the lower and upper cap by the side of the
    body centre along the body axis. Returns ``(lower, upper)`` uint8 Volumes.
    """
    sel = np.isin(labels.data, np.asarray(sorted(values))) & (mask.data == 0)
    if not sel.any():
        raise SegmentationError(f"no voxel carries the cap label(s) {sorted(values)}")
    _, _, w = _axial_coords(labels, frame)
    w = w.reshape(labels.shape)
    lower, upper = sel & (w < 0), sel & (w > 0)
    if not lower.any() or not upper.any():
        raise SegmentationError("cap labels must lie on both sides of the vertebra (above and below)")
    return labels.with_data(lower.astype(np.uint8), kind="cap"), labels.with_data(upper.astype(np.uint8), kind="cap")
