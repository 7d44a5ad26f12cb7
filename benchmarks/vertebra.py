"""Vertebra-like benchmark models: elliptic-cylinder body, two stiff screw cylinders, compression."""

from __future__ import annotations

import numpy as np

from fesim.fem.model import Model
from fesim.mesh.tetmesh import REGION_BONE, REGION_SCREW0, TetMesh, box_mesh, to_quadratic

AX, AY, HEIGHT = 20.0, 15.0, 24.0  # semi-axes and height of the body, mm
SCREW_R, SCREW_X, SCREW_Z, SCREW_TIP_Y = 3.0, 7.0, 12.0, 6.0  # mm
E_SCREW, NU_SCREW, NU_BONE = 110_000.0, 0.3, 0.3
#: tet4 / tet10 unknowns per cube of the structured grid inside the body (measured).
DOFS_PER_CUBE = {1: 3.0, 2: 24.0}


def vertebra_model(target_dofs: float, order: int, squash: float = 0.1) -> Model:
    """Compression model with about ``target_dofs`` unknowns.

    The body is meshed by masking a structured Kuhn grid (cube edge chosen from the target),
    bone E (MPa) rises from 300 in the centre to 2400 near the rim in 8 bands (a cortex-like
    shell, 8 materials), the screws are titanium. Bottom face fixed, top face moved down by
    ``squash`` mm (all other components free).
    """
    vol = np.pi * AX * AY * HEIGHT
    h = (DOFS_PER_CUBE[order] * vol / target_dofs) ** (1.0 / 3.0)
    n = np.maximum(np.round(np.array([2 * AX, 2 * AY, HEIGHT]) / h).astype(int), 2)
    box = box_mesh(n, (2 * AX, 2 * AY, HEIGHT), origin=(-AX, -AY, 0.0))
    c = box.points[box.cells].mean(axis=1)
    rho = np.hypot(c[:, 0] / AX, c[:, 1] / AY)
    keep = rho < 1.0
    cells = box.cells[keep]
    used, inv = np.unique(cells, return_inverse=True)
    c, rho = c[keep], rho[keep]
    screw = (np.hypot(np.abs(c[:, 0]) - SCREW_X, c[:, 2] - SCREW_Z) < SCREW_R) & (c[:, 1] < SCREW_TIP_Y)
    region = np.where(screw, REGION_SCREW0 + (c[:, 0] > 0), REGION_BONE)
    mesh = TetMesh(box.points[used], inv.reshape(cells.shape), region)
    if order == 2:
        mesh = to_quadratic(mesh)
    band = np.minimum((rho ** 3 * 8).astype(int), 7)
    E = np.where(screw, E_SCREW, 300.0 * 2.0 ** (band * 3.0 / 7.0))
    nu = np.where(screw, NU_SCREW, NU_BONE)
    model = Model(mesh, E=E, nu=nu)
    z = mesh.points[:, 2]
    model.fix(np.nonzero(z < 1e-9)[0])
    model.fix(np.nonzero(z > HEIGHT - 1e-9)[0], components=(2,), value=-squash)
    return model
