"""Boundary conditions of the two load cases, as CT-based screw and vertebra studies set them.

Where the vertebra is held and driven is found from anatomy (:mod:`fesim.analysis.supports`):
the parts of the vertebral body's surface visible along the body axis from above and below,
within the body's footprint and a band at each end, never side walls or posterior elements;
with end caps, the caps' outer faces only.

Pullout
    The vertebral body is held at both endplates (or cap faces), all components, far from the
    screw entry: clamping near the entry hole makes the pullout force mesh-dependent (a
    stress singularity where the support meets the bonded interface). The screw head (screw
    nodes within ``head_mm`` of the entry) is displaced along the screw axis, outwards, with
    its lateral motion held as by a test machine's grip.

Compression
    The lower endplate (cap face) is fixed, the upper one is displaced along the body axis
    (inferiorly), lateral motion held: rigid, bonded platens as in PMMA-embedded tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import ModelError
from ..imaging.screwplan import ScrewPlan
from ..imaging.segmentation import POSTERIOR_CODES
from ..registry import Registry
from ..mesh.tetmesh import REGION_BONE, REGION_CAP_LOWER, REGION_CAP_UPPER, TetMesh
from ..mesh.tetmesh import boundary_faces as mesh_boundary_faces
from .supports import (DEFAULT_BAND_MM, EndplateSupports, Footprint, body_footprint, endplate_supports,
                       footprint_from_points, nearest_region_codes)


@dataclass
class LoadCase:
    """Node sets and the unit displacement of one load case.

    ``driven`` nodes move by ``delta * direction`` (mm); ``fixed`` nodes are held.
    The reported force is the reaction on ``driven`` projected on ``direction`` (N).
    """

    name: str
    fixed: np.ndarray
    driven: np.ndarray
    direction: np.ndarray
    screw: int | None = None
    fixed_components: tuple = (0, 1, 2)
    driven_components: tuple = (0, 1, 2)
    extra_fixed: list = field(default_factory=list)  # [(nodes, components), ...]
    #: where the model is held and driven: set name -> dict (n_nodes, area_mm2, axial extent...)
    audit: dict = field(default_factory=dict)

    def apply(self, model, delta: float = 1.0):
        """Put this case's constraints on ``model`` for an applied displacement ``delta`` (mm)."""
        model.fix(self.fixed, components=self.fixed_components)
        for nodes, comps in self.extra_fixed:
            model.fix(nodes, components=comps)
        comps = np.asarray(self.driven_components)
        model.fix(self.driven, components=comps, value=delta * np.asarray(self.direction)[comps])
        return model


@dataclass
class BodyFrame:
    """Vertebral-body frame (LPS mm) and what the supports are sought from.

    Attributes
    ----------
    center : (3,) body centre, mm
    axis : (3,) unit inferior -> superior body axis
    radius_mm : half the smaller of the body's width and depth (used when no footprint)
    ml_axis, ap_axis : (3,) unit right -> left and posterior -> anterior axes (optional)
    footprint : :class:`~fesim.analysis.supports.Footprint` of the body along the axis
    height_mm : body height along the axis (plausibility of the supports)
    regions : imaging sub-region map; surface points nearest to posterior-element voxels
        (:data:`~fesim.imaging.segmentation.POSTERIOR_CODES`) never support
    band_mm : depth of the endplate band (:data:`fesim.analysis.supports.DEFAULT_BAND_MM`)
    """

    center: np.ndarray
    axis: np.ndarray
    radius_mm: float
    ml_axis: np.ndarray | None = None
    ap_axis: np.ndarray | None = None
    footprint: object | None = None
    height_mm: float | None = None
    regions: object | None = field(default=None, repr=False)
    band_mm: float = DEFAULT_BAND_MM
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.center = np.asarray(self.center, dtype=float)
        a = np.asarray(self.axis, dtype=float)
        self.axis = a / np.linalg.norm(a)
        if self.ml_axis is None or self.ap_axis is None:
            helper = np.eye(3)[int(np.argmin(np.abs(self.axis)))]
            ml = np.cross(self.axis, helper)
            self.ml_axis = ml / np.linalg.norm(ml)
            self.ap_axis = np.cross(self.ml_axis, self.axis)
        self.ml_axis = np.asarray(self.ml_axis, float)
        self.ap_axis = np.asarray(self.ap_axis, float)
        if self.footprint is None:  # a disc of the body radius
            cell = max(self.radius_mm / 40.0, 0.25)
            g = np.arange(-self.radius_mm, self.radius_mm + cell, cell)
            U, V = np.meshgrid(g, g, indexing="ij")
            self.footprint = Footprint(np.array([g[0], g[0]]), cell, U ** 2 + V ** 2 <= self.radius_mm ** 2)

    @classmethod
    def from_regions(cls, regions, band_mm: float = DEFAULT_BAND_MM) -> "BodyFrame":
        """The frame of :func:`fesim.imaging.segmentation.subregions`' map, with its body footprint."""
        f = regions.meta["frame"]
        return cls(f["body_center"], f["body_axis"], 0.5 * min(f["body_width_mm"], f["body_depth_mm"]),
                   ml_axis=f["ml_axis"], ap_axis=f["ap_axis"], footprint=body_footprint(regions, f),
                   height_mm=f.get("body_height_mm"), regions=regions, band_mm=band_mm)

    def as_dict(self) -> dict:
        return {"body_center": self.center, "body_axis": self.axis, "ml_axis": self.ml_axis,
                "ap_axis": self.ap_axis, "body_height_mm": self.height_mm}

    def supports(self, mesh) -> EndplateSupports:
        """Lower and upper support sets of ``mesh`` (cached per mesh): cap faces when the mesh
        has end caps, else the endplates."""
        key = id(mesh)
        if key not in self._cache:
            self._cache.clear()
            self._cache[key] = (mesh, find_supports(mesh, self))
        return self._cache[key][1]


def boundary_faces(mesh: TetMesh, with_extra: bool = False):
    """Boundary triangles of ``mesh`` (:func:`fesim.mesh.tetmesh.boundary_faces`): corner
    node ids (F, 3), owning element (F,) and, with ``with_extra``, the other face nodes a
    support must hold (tet10 mid-edge nodes, the fourth corner of a hex8 quad)."""
    return mesh_boundary_faces(mesh.cells, with_extra=with_extra)


def find_supports(mesh: TetMesh, frame: BodyFrame) -> EndplateSupports:
    """Support node sets of ``mesh`` from anatomy (:func:`fesim.analysis.supports.endplate_supports`).

    With end caps in the mesh (regions 20 and 21) the sets lie on the caps' outer faces and
    never on bone; otherwise on the endplates of the vertebral body: bone faces whose nearest
    imaging voxel is body, not posterior elements.
    """
    faces, owner, extra = boundary_faces(mesh, with_extra=True)
    kind = mesh.region[owner].astype(np.int64)
    caps = bool(np.any(kind == REGION_CAP_LOWER)) and bool(np.any(kind == REGION_CAP_UPPER))
    if not caps and frame.regions is not None:
        node_code = nearest_region_codes(frame.regions, mesh.points)
        posterior = np.any(np.isin(node_code[faces], POSTERIOR_CODES), axis=1)
        kind[posterior & (kind == REGION_BONE)] = 0  # never supports, still hides
    cap_fps = None
    if caps:
        rel = mesh.points - frame.center
        uv = np.column_stack([rel @ frame.ml_axis, rel @ frame.ap_axis])
        cap_fps = []
        for code in (REGION_CAP_LOWER, REGION_CAP_UPPER):
            nodes = mesh.nodes_of(mesh.region == code)
            cap_fps.append(footprint_from_points(uv[nodes], frame.footprint.cell_mm))
    bone_nodes = mesh.nodes_of(mesh.region == REGION_BONE) if caps else None
    return endplate_supports(mesh.points, faces, kind, {**frame.as_dict()}, frame.footprint, caps=caps,
                             cap_footprints=cap_fps, band_mm=frame.band_mm, bone_nodes=bone_nodes,
                             face_extra=extra)


def screw_head_nodes(mesh: TetMesh, screw: ScrewPlan, s: int, head_mm: float | None = None) -> np.ndarray:
    """Nodes of screw ``s`` (not shared with bone) within ``head_mm`` of its head end.

    ``head_mm`` defaults to 1.5 mean edge lengths of the screw's elements (at least 1 mm), so
    that the gripped slab holds a full layer of nodes whatever the mesh size.
    """
    sel = mesh.is_screw(s)
    nodes = mesh.nodes_of(sel)
    if nodes.size == 0:
        raise ModelError(f"screw {s} ({screw.side}) has no elements in the mesh")
    if head_mm is None:
        c = mesh.cells[sel][:, :4]
        edge = np.linalg.norm(mesh.points[c[:, 1]] - mesh.points[c[:, 0]], axis=1).mean()
        head_mm = max(1.0, 1.5 * float(edge))
    # Grip screw material only: nodes shared with bone (the bonded interface) are left free,
    # otherwise the grip would displace the bone around the entry directly, by an amount that
    # grows with element size.
    nodes = np.setdiff1d(nodes, mesh.nodes_of(~mesh.is_screw()))
    t = (mesh.points[nodes] - screw.entry) @ screw.direction
    head = nodes[t <= t.min() + head_mm] if nodes.size else nodes
    if head.size < 3:
        raise ModelError(f"screw {s} head has too few nodes ({head.size}) to be gripped")
    return head


def _head_audit(mesh: TetMesh, head: np.ndarray, screw: ScrewPlan) -> dict:
    t = (mesh.points[head] - screw.entry) @ screw.direction
    return {"n_nodes": int(head.size), "on": f"screw {screw.side} head",
            "extent_along_screw_mm": float(np.ptp(t)) if head.size else 0.0}


def pullout_case(mesh: TetMesh, screw: ScrewPlan, s: int, frame: BodyFrame) -> LoadCase:
    """Screw ``s`` pulled out along its axis; the body held at both endplates (or caps)."""
    sup = frame.supports(mesh)
    head = screw_head_nodes(mesh, screw, s)
    fixed = np.setdiff1d(np.union1d(sup.lower, sup.upper), mesh.nodes_of(mesh.is_screw()))
    audit = {"fixed_lower": sup.audit["lower"].to_dict(), "fixed_upper": sup.audit["upper"].to_dict(),
             "driven": _head_audit(mesh, head, screw)}
    return LoadCase(f"pullout_{screw.side}", fixed, head, -screw.direction, screw=s, audit=audit)


def compression_case(mesh: TetMesh, frame: BodyFrame) -> LoadCase:
    """Upper endplate (cap face) driven along the body axis, lower one held."""
    sup = frame.supports(mesh)
    audit = {"fixed": sup.audit["lower"].to_dict(), "driven": sup.audit["upper"].to_dict()}
    return LoadCase("compression", sup.lower, sup.upper, -frame.axis, audit=audit)


@dataclass(frozen=True)
class LoadCaseKind:
    """A kind of load case: ``build(mesh, frame, screws)`` returns its :class:`LoadCase` list
    (none, one, or one per screw) for a mesh, its :class:`BodyFrame` and the screw plans."""

    name: str
    description: str
    build: Callable


#: Load cases analysed for every scan, in this order (their names key result.json's analyses).
LOAD_CASES = Registry("load case")
LOAD_CASES.add(LoadCaseKind("compression", "upper endplate (cap face) driven along the body axis, lower held",
                            lambda mesh, frame, screws: [compression_case(mesh, frame)]))
LOAD_CASES.add(LoadCaseKind("pullout", "each planned screw pulled out along its axis, body held at both ends",
                            lambda mesh, frame, screws: [pullout_case(mesh, s, i, frame)
                                                         for i, s in enumerate(screws)]))


def load_cases(mesh: TetMesh, frame: BodyFrame, screws) -> list[LoadCase]:
    """The cases of every registered :data:`LOAD_CASES` kind, in registration order."""
    return [c for kind in LOAD_CASES.values() for c in kind.build(mesh, frame, screws)]
