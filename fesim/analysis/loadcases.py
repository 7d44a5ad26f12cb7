"""Boundary conditions of the two load cases, as CT-based screw and vertebra studies set them.

Pullout
    The vertebral body is held at both endplates (all components fixed on the endplate node
    slabs), far from the screw entry: clamping near the entry hole makes the pullout force
    mesh-dependent (a stress singularity where the support meets the bonded interface,
    domain.md section 8). The screw head (screw nodes within ``head_mm`` of the entry) is
    displaced along the screw axis, outwards, with its lateral motion held as by a test
    machine's grip.

Compression
    The lower endplate slab is fixed, the upper endplate slab is displaced along the body axis
    (inferiorly), lateral motion held: rigid, bonded platens as in PMMA-embedded tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import ModelError
from ..imaging.screwplan import ScrewPlan
from ..mesh.tetmesh import REGION_CAP_LOWER, TetMesh


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
    """Vertebral-body axis (LPS): centre (mm), unit superior axis, body radius (mm)."""

    center: np.ndarray
    axis: np.ndarray
    radius_mm: float

    def __post_init__(self):
        self.center = np.asarray(self.center, dtype=float)
        a = np.asarray(self.axis, dtype=float)
        self.axis = a / np.linalg.norm(a)


# Outward quads of a VTK hexahedron, each split into two outward triangles.
_HEX_QUADS = np.array([[0, 3, 2, 1], [4, 5, 6, 7], [0, 1, 5, 4], [2, 3, 7, 6], [0, 4, 7, 3], [1, 2, 6, 5]])


def boundary_faces(mesh: TetMesh) -> tuple[np.ndarray, np.ndarray]:
    """Boundary triangles of the whole mesh: corner node ids (F, 3) and owning element (F,).

    Hex8: each boundary quad face gives two outward triangles (a, b, c), (a, c, d).
    """
    if mesh.cells.shape[1] == 8:
        quads = mesh.cells.astype(np.int64)[:, _HEX_QUADS].reshape(-1, 4)
        _, inv, counts = np.unique(np.sort(quads, axis=1), axis=0, return_inverse=True, return_counts=True)
        once = counts[inv.ravel()] == 1
        q = quads[once]
        owner = np.repeat(np.arange(mesh.n_elements), 6)[once]
        return np.concatenate([q[:, [0, 1, 2]], q[:, [0, 2, 3]]]), np.concatenate([owner, owner])
    c = mesh.cells[:, :4].astype(np.int64)
    local = np.array([[1, 2, 3], [0, 3, 2], [0, 1, 3], [0, 2, 1]])
    faces = c[:, local].reshape(-1, 3)
    key = np.sort(faces, axis=1)
    _, inv, counts = np.unique(key, axis=0, return_inverse=True, return_counts=True)
    once = counts[inv.ravel()] == 1
    owner = np.repeat(np.arange(mesh.n_elements), 4)
    return faces[once], owner[once]


def endplate_nodes(mesh: TetMesh, frame: BodyFrame, min_cos: float = 0.7):
    """Nodes of the outer surface facing along the body axis: the lower and upper endplates.

    Boundary faces of bone (or end-cap) elements whose outward normal is within ~45 degrees
    (``min_cos``) of the body axis (upper) or its opposite (lower), on the corresponding side
    of the body centre and within ``frame.radius_mm`` of the axis. A surface criterion, not a
    slab of given depth, so the supported region does not change with element size.
    Returns ``(lower, upper)`` node id arrays.
    """
    faces, owner = boundary_faces(mesh)
    keep = mesh.is_bone()[owner] | (mesh.region[owner] >= REGION_CAP_LOWER)
    faces = faces[keep]
    p = mesh.points
    a, b, c = p[faces[:, 0]], p[faces[:, 1]], p[faces[:, 2]]
    n = np.cross(b - a, c - a)  # outward for the local face orders above
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    rel = (a + b + c) / 3.0 - frame.center
    s = rel @ frame.axis
    radial = np.linalg.norm(rel - s[:, None] * frame.axis, axis=1)
    cosn = n @ frame.axis
    inside = radial <= frame.radius_mm
    upper = np.unique(faces[inside & (s > 0) & (cosn >= min_cos)])
    lower = np.unique(faces[inside & (s < 0) & (cosn <= -min_cos)])
    if lower.size < 3 or upper.size < 3:
        raise ModelError("endplates not found: no bone surface faces the body axis within the body radius")
    return lower, upper


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


def pullout_case(mesh: TetMesh, screw: ScrewPlan, s: int, frame: BodyFrame) -> LoadCase:
    lower, upper = endplate_nodes(mesh, frame)
    head = screw_head_nodes(mesh, screw, s)
    fixed = np.setdiff1d(np.union1d(lower, upper), mesh.nodes_of(mesh.is_screw()))
    return LoadCase(f"pullout_{screw.side}", fixed, head, -screw.direction, screw=s)


def compression_case(mesh: TetMesh, frame: BodyFrame) -> LoadCase:
    lower, upper = endplate_nodes(mesh, frame)
    return LoadCase("compression", lower, upper, -frame.axis)
