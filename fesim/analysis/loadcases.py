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


def endplate_nodes(mesh: TetMesh, frame: BodyFrame, slab_mm: float | None = None):
    """Bone (or end-cap) nodes in slabs at the lower and upper end of the body (within ``frame.radius_mm``).

    ``slab_mm`` defaults to the mean bone edge length (one element layer).
    Returns ``(lower, upper)`` node id arrays.
    """
    bone_nodes = mesh.nodes_of(mesh.is_bone() | (mesh.region >= REGION_CAP_LOWER))  # caps are loaded when present
    p = mesh.points[bone_nodes] - frame.center
    s = p @ frame.axis
    radial = np.linalg.norm(p - s[:, None] * frame.axis, axis=1)
    in_body = radial <= frame.radius_mm
    if in_body.sum() < 10:
        raise ModelError("no bone found within the vertebral-body radius around the body axis")
    if slab_mm is None:
        c = mesh.cells[mesh.is_bone()][:, :4]
        e = np.linalg.norm(mesh.points[c[:, 1]] - mesh.points[c[:, 0]], axis=1)
        slab_mm = float(np.mean(e))
    smax, smin = s[in_body].max(), s[in_body].min()
    upper = bone_nodes[in_body & (s >= smax - slab_mm)]
    lower = bone_nodes[in_body & (s <= smin + slab_mm)]
    return lower, upper


def screw_head_nodes(mesh: TetMesh, screw: ScrewPlan, s: int, head_mm: float | None = None) -> np.ndarray:
    """Nodes of screw ``s`` within ``head_mm`` of its entry (head) end.

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
    t = (mesh.points[nodes] - screw.entry) @ screw.direction
    head = nodes[t <= t.min() + head_mm]
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
