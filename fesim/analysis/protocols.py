"""Analysis protocols: named sets of modelling choices that a published method fixes.

``fesim`` is the project's own protocol (the defaults of :class:`fesim.pipeline.RunOptions`).
``spine-benchmark`` follows the published vertebral-strength benchmark (Walle, Matheson &
Boyd, GigaScience 2025; Bonelab's Ogo model builder; see ``docs/references.md``) where it is
stated:

* PMMA disks on both endplates: the endplate surfaces extruded 5 mm along the body axis (or
  the label-map disks given with ``--cap-labels``), E 2 500 MPa, nu 0.3, yield 70 MPa;
* bone: Kopperdahl E = 2980 rho^1.05 MPa and sigma_y = 37.4 rho^1.39 MPa, rho the QCT
  density in g/cm^3, cortical and trabecular alike, nu 0.3;
* loaded nodes on the disks' visible outer surfaces; the upper surface displaced along the
  body axis only, the lower one held along the axis only (three more single constraints
  remove the rigid-body motions across the axis without loading the model);
* reported beside fesim's own numbers: the linear stiffness (reaction at 0.2 mm / 0.2 mm) and
  the failure load, the largest reaction force up to 2.0 mm of platen displacement.

What fesim cannot reproduce exactly: their solver (FAIM) and its elastoplastic model; here
each element yields at its own sigma_y / E on fesim's principal-strain criterion
(:class:`fesim.analysis.strength.FailureModel`), PMMA included. Their 128 + 128 density
bins are not applied (each element keeps its own modulus).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..registry import Registry
from ..mesh.tetmesh import REGION_BONE, REGION_CAP_LOWER, REGION_CAP_UPPER, TetMesh
from .loadcases import LoadCase


@dataclass(frozen=True)
class Protocol:
    """A named analysis protocol.

    ``options`` are :class:`~fesim.pipeline.RunOptions` fields it sets; ``axial_only`` makes
    compression drive and hold its end sets along the body axis only; ``material_yield``
    makes every bone and cap element yield at its own ``sigma_y / E``;
    ``failure_displacement_mm`` and ``stiffness_displacement_mm`` define the reported
    benchmark failure load and stiffness.
    """

    name: str
    description: str
    options: dict = field(default_factory=dict)
    axial_only: bool = False
    material_yield: bool = False
    failure_displacement_mm: float | None = None
    stiffness_displacement_mm: float | None = None


#: Analysis protocols by name; the first is the default.
PROTOCOLS = Registry("protocol")


def register_protocol(p: Protocol) -> Protocol:
    """Register protocol ``p`` (once per name)."""
    return PROTOCOLS.add(p)


register_protocol(Protocol("fesim", "fesim's defaults: bonded rigid platens on the endplates (or caps), "
                           "principal-strain yield of bone at Kopperdahl & Keaveny's strains"))
register_protocol(Protocol(
    "spine-benchmark",
    "Walle et al. 2025 spine FE benchmark: 5 mm extruded PMMA disks (or --cap-labels), Kopperdahl E and "
    "yield for all bone, axial displacement only on the disks' outer faces; failure load up to 2 mm",
    options={"caps": "pmma", "cap_shape": "extruded", "cap_thickness_mm": 5.0, "law": "kopperdahl",
             "ash_conversion": "identity", "nu_bone": 0.3, "screws": "none"},
    axial_only=True, material_yield=True, failure_displacement_mm=2.0, stiffness_displacement_mm=0.2))


def body_frame_rotation(frame) -> np.ndarray:
    """Rows AP, ML, axis of a body frame (right-handed: ML = axis x AP): ``R @ v`` gives a
    vector in body coordinates."""
    return np.vstack([frame.ap_axis, frame.ml_axis, frame.axis])


def to_body_frame(mesh: TetMesh, frame) -> TetMesh:
    """The mesh with its points in body coordinates (mm from the body centre; z = body axis)."""
    R = body_frame_rotation(frame)
    return TetMesh((mesh.points - frame.center) @ R.T, mesh.cells, mesh.region, dict(mesh.info))


def axial_compression_case(mesh_body: TetMesh, case: LoadCase) -> LoadCase:
    """The benchmark's boundary conditions on a mesh in body coordinates (:func:`to_body_frame`).

    ``case`` is fesim's compression case of the same mesh (its node sets). The upper set moves
    along -z only and the lower set is held along z only; across the axis, the lower node
    nearest the axis is held in x and y and the lower node farthest from it along x is held
    in y: a statically determinate support, so no force enters across the axis.
    """
    lower = case.fixed
    p = mesh_body.points[lower]
    centre = lower[int(np.argmin(np.hypot(p[:, 0], p[:, 1])))]
    far = lower[int(np.argmax(np.abs(p[:, 0])))]
    return LoadCase(case.name, lower, case.driven, np.array([0.0, 0.0, -1.0]),
                    fixed_components=(2,), driven_components=(2,),
                    extra_fixed=[(np.array([centre]), (0, 1)), (np.array([far]), (1,))],
                    audit={**case.audit, "protocol": "axial displacement only (spine-benchmark)"})


def can_fail(mesh: TetMesh) -> np.ndarray:
    """Elements that yield under the benchmark: bone and the PMMA caps."""
    return np.isin(mesh.region, (REGION_BONE, REGION_CAP_LOWER, REGION_CAP_UPPER))


@dataclass(frozen=True)
class BenchmarkNumbers:
    """The benchmark's numbers of one compression curve (``benchmark_*`` in result.json)."""

    stiffness_N_per_mm: float
    failure_load_N: float  # peak force up to the failure displacement
    failure_displacement_mm: float
    curve_complete: bool  # the curve reached the failure displacement or passed its peak


def benchmark_numbers(res, protocol: Protocol) -> BenchmarkNumbers:
    """The benchmark's stiffness (N/mm) and failure load (N) from a force-displacement curve."""
    d = np.asarray(res.curve_displacement_mm, float)
    f = np.asarray(res.curve_force_N, float)
    dmax = protocol.failure_displacement_mm
    within = d <= dmax + 1e-12
    peak = float(f[within].max())
    if d[-1] > dmax and not within.all():  # include the force at exactly dmax
        peak = max(peak, float(np.interp(dmax, d, f)))
    reached = bool(d[-1] >= dmax or res.passed_peak)
    return BenchmarkNumbers(float(res.stiffness_N_per_mm), peak, dmax, reached)
