"""Density chain: calibrated QCT BMD -> ash density -> apparent density.

Densities: BMD in mg/cm^3 of its calibration material (K2HPO4 or HA, as
:class:`fesim.imaging.calibration.Calibration` records it in the BMD volume's
``meta["bmd_material"]``); QCT, ash and apparent densities in g/cm^3. Each QCT -> ash equation
declares the calibration material(s) it is defined for, and BMD of any other material is
refused: a K2HPO4 equation applied to HA-equivalent BMD would be silently wrong. Sources in
``docs/references.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fesim.errors import MaterialError
from fesim.material.registry import Registry

#: Calibration materials a BMD can be expressed as.
BMD_MATERIALS = ("K2HPO4", "HA")
#: Density kinds a law can take.
DENSITY_KINDS = ("qct", "ash", "apparent")

#: rho_ash / rho_app = 0.598 +- 0.004 (cortical), 0.598 +- 0.036 (trabecular), taken as 0.6
#: over the whole range (Schileo et al. 2008).
ASH_APPARENT_RATIO = 0.6


@dataclass(frozen=True)
class AshEquation:
    """``rho_ash = slope * rho_QCT + intercept`` (g/cm^3), defined for BMD of ``materials``."""

    name: str
    materials: tuple
    slope: float
    intercept: float
    citation: str

    def describe(self) -> str:
        if self.slope == 1.0 and self.intercept == 0.0:
            return f"{self.name}: rho_ash = rho_QCT ({' or '.join(self.materials)})"
        return (f"{self.name}: rho_ash = {self.slope:g} rho_{'/'.join(self.materials)} "
                f"+ {self.intercept:g}")


#: QCT -> ash equations. Register one with ``ASH_EQUATIONS.add(AshEquation(...))``.
ASH_EQUATIONS = Registry("ash-density equation")
ASH_EQUATIONS.add(AshEquation(
    "identity", BMD_MATERIALS, 1.0, 0.0,
    "rho_ash = rho_QCT, the convention of MECHANICAL FINDER studies (e.g. Tani et al. 2021)"))
ASH_EQUATIONS.add(AshEquation(
    "keyak", ("K2HPO4",), 1.22, 0.0523,
    "Keyak et al., femur QCT-FE (K2HPO4 phantom); constants as commonly quoted, not re-confirmed "
    "in the primary source"))
ASH_EQUATIONS.add(AshEquation(
    "les", ("HA",), 0.877, 0.0789,
    "Les et al. 1994 (J Orthop Res 12:822), as used by Schileo et al. 2008; constants as "
    "commonly quoted, not re-confirmed in the primary source"))


def check_bmd_material(material: str) -> str:
    """``material`` if it is a known calibration material, else :class:`MaterialError`."""
    if material not in BMD_MATERIALS:
        raise MaterialError(f"unknown BMD calibration material {material!r}; use one of "
                            f"{', '.join(BMD_MATERIALS)}")
    return material


def check_ash_equation(method: str, material: str) -> AshEquation:
    """The ash equation ``method`` if it is defined for BMD of ``material``.

    Raises
    ------
    MaterialError
        Unknown equation or material, or an equation defined for another calibration material.
    """
    eq = ASH_EQUATIONS.get_or_raise(method)
    check_bmd_material(material)
    if material not in eq.materials:
        fits = [n for n, e in ASH_EQUATIONS.items() if material in e.materials]
        raise MaterialError(
            f"ash conversion {method!r} is defined for {' or '.join(eq.materials)}-calibrated BMD, but this "
            f"BMD is {material}-equivalent; use --ash-conversion {' or '.join(fits)} for {material} BMD")
    return eq


def bmd_material_of(volume) -> str:
    """Calibration material recorded in a BMD volume (``meta["bmd_material"]``).

    :meth:`fesim.imaging.calibration.Calibration.apply` writes it; a volume without it is
    refused rather than guessed.
    """
    material = getattr(volume, "meta", {}).get("bmd_material")
    if material is None:
        raise MaterialError("the BMD volume does not record its calibration material (meta['bmd_material'])")
    return check_bmd_material(material)


def _out(x):
    x = np.asarray(x, dtype=float)
    return float(x) if x.ndim == 0 else x


def bmd_to_qct(bmd_mg_cm3):
    """QCT density (g/cm^3) = BMD / 1000, floored at 0 (same calibration material)."""
    return _out(np.maximum(np.asarray(bmd_mg_cm3, dtype=float), 0.0) / 1000.0)


def qct_to_ash(bmd_mg_cm3, material: str = "K2HPO4", method: str = "keyak"):
    """Ash density (g/cm^3) from QCT BMD (mg/cm^3 of ``material``).

    Parameters
    ----------
    bmd_mg_cm3 : float or ndarray
        Calibrated BMD in mg/cm^3.
    material : {"K2HPO4", "HA"}
        Calibration material of the BMD; the equation must be defined for it.
    method : str
        Key of :data:`ASH_EQUATIONS` (``"identity"``, ``"keyak"``, ``"les"``, ...).

    Returns
    -------
    float or ndarray
        rho_ash in g/cm^3, floored at 0.
    """
    eq = check_ash_equation(method, material)
    rho = eq.slope * (np.asarray(bmd_mg_cm3, dtype=float) / 1000.0) + eq.intercept
    return _out(np.maximum(rho, 0.0))


def ash_to_apparent(rho_ash, ratio: float = ASH_APPARENT_RATIO):
    """Apparent (wet) density (g/cm^3) = rho_ash / ratio (Schileo et al. 2008: 0.6)."""
    if not ratio > 0:
        raise MaterialError(f"ash/apparent ratio must be positive, got {ratio}")
    return _out(np.asarray(rho_ash, dtype=float) / ratio)


def densities(bmd_mg_cm3, material: str = "K2HPO4", ash_method: str = "identity") -> dict:
    """``{"qct", "ash", "apparent"}`` densities (g/cm^3) of BMD values (mg/cm^3 of ``material``)."""
    ash = np.asarray(qct_to_ash(bmd_mg_cm3, material, ash_method), dtype=float)
    return {"qct": np.asarray(bmd_to_qct(bmd_mg_cm3), dtype=float), "ash": ash,
            "apparent": np.asarray(ash_to_apparent(ash), dtype=float)}
