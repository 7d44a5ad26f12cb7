"""Post-processing: strains, stresses, von Mises, principal strains, strain-energy density.

Voigt order everywhere: xx, yy, zz, yz, xz, xy; strains with engineering shear.
Tet10 quantities are evaluated at the 4 stiffness integration points; the per-element value
is their volume-weighted mean (``per_point=True`` returns the points). Hex8: the mean over the
2 x 2 x 2 Gauss points weighted by ``w |J|`` (the element's volume average; for the
parallelepipeds of a voxel grid it is computed in closed form).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import elements
from .assembly import is_affine


@dataclass
class ElementFields:
    strain: np.ndarray  # (M, 6) or (M, Q, 6)
    stress: np.ndarray  # MPa
    von_mises: np.ndarray  # MPa
    principal_strain: np.ndarray  # (..., 3) ascending: min, mid, max
    sed: np.ndarray  # strain-energy density, mJ/mm^3 = MPa


def voigt_to_tensor(v: np.ndarray, engineering: bool) -> np.ndarray:
    f = 0.5 if engineering else 1.0
    t = np.empty(v.shape[:-1] + (3, 3))
    t[..., 0, 0], t[..., 1, 1], t[..., 2, 2] = v[..., 0], v[..., 1], v[..., 2]
    t[..., 1, 2] = t[..., 2, 1] = f * v[..., 3]
    t[..., 0, 2] = t[..., 2, 0] = f * v[..., 4]
    t[..., 0, 1] = t[..., 1, 0] = f * v[..., 5]
    return t


def von_mises(s: np.ndarray) -> np.ndarray:
    """Von Mises equivalent stress from Voigt stresses (..., 6)."""
    return np.sqrt(0.5 * ((s[..., 0] - s[..., 1]) ** 2 + (s[..., 1] - s[..., 2]) ** 2
                          + (s[..., 2] - s[..., 0]) ** 2) + 3.0 * (s[..., 3:] ** 2).sum(axis=-1))


def principal_strains(eps: np.ndarray) -> np.ndarray:
    """Principal strains (..., 3), ascending, from Voigt strains (engineering shear)."""
    return np.linalg.eigvalsh(voigt_to_tensor(eps, engineering=True))


def element_fields(points, cells, u, E, nu, per_point: bool = False, affine: bool | None = None) -> ElementFields:
    """Strain and stress measures per element (or per integration point for tet10).

    ``affine``: whether all elements are straight-sided (checked when None); per-element
    means then come from :func:`fesim.fem.elements.mean_strains_affine`, without quadrature.
    """
    E = np.asarray(E, dtype=float)
    nu = np.asarray(nu, dtype=float)
    if not per_point and (affine if affine is not None else is_affine(points, cells)):
        eps = elements.mean_strains_affine(points, cells, u)
        sig = elements.stress_from_strain(eps, E, nu)
    elif not per_point and cells.shape[1] == 8:  # distorted hexahedra: |J| varies
        eps = elements.mean_strains(points, cells, u)
        sig = elements.stress_from_strain(eps, E, nu)
    else:
        xi, w = elements.quadrature(cells.shape[1])
        eps = elements.strains_at(points, cells, u, xi)  # (M, Q, 6)
        sig = elements.stress_from_strain(eps, E[..., None], nu[..., None])
        if not per_point:
            wq = w / w.sum()
            eps = np.einsum("mqc,q->mc", eps, wq)
            sig = np.einsum("mqc,q->mc", sig, wq)
    sed = 0.5 * (eps * sig).sum(axis=-1)
    return ElementFields(eps, sig, von_mises(sig), principal_strains(eps), sed)
