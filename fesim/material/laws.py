"""Density-modulus and density-strength (yield stress) laws of bone, as registries.

Each law states the density it takes (``"qct"``, ``"ash"`` or ``"apparent"``, g/cm^3, see
:mod:`fesim.material.density`), the density range it is stated for, and its source. A law
that takes QCT density also states the calibration material of that density (the Kopperdahl
and Crawford laws were fitted to K2HPO4-equivalent QCT); BMD of another material is refused.
Register a law with the decorators::

    @modulus_law("name", density="ash", valid_range=(0.0, 1.2), citation="...", strength="name")
    def _e(rho): ...

E and yield stress in MPa. Sources in ``docs/references.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from fesim.errors import MaterialError
from fesim.material.density import BMD_MATERIALS, DENSITY_KINDS, densities
from fesim.material.failure import NO_YIELD, YIELD_STRAIN_COMPRESSION
from fesim.material.registry import Registry

_ALL = (0.0, float("inf"))


@dataclass(frozen=True)
class DensityLaw:
    """A property as a function of one bone density: ``func(rho g/cm^3) -> MPa``.

    Attributes
    ----------
    name : str
    density : {"qct", "ash", "apparent"}
    func : callable
    valid_range : (float, float)
        Densities (g/cm^3, of ``density``) the law is stated for; outside it the law is
        extrapolated (not refused: the cortical shell and voids of every scan fall outside).
    citation : str
    qct_materials : tuple of str
        Calibration materials whose QCT density a ``"qct"`` law takes (all for ash/apparent
        laws: the ash equation takes care of the material).
    strength : str, optional
        Modulus laws only: the density-strength law published with it (default yield law).
    """

    name: str
    density: str
    func: Callable
    valid_range: tuple
    citation: str
    qct_materials: tuple = BMD_MATERIALS
    strength: str | None = None

    def __call__(self, rho):
        return np.asarray(self.func(np.asarray(rho, dtype=float)), dtype=float)

    def describe(self) -> str:
        kind = {"qct": "QCT", "ash": "ash", "apparent": "apparent"}[self.density]
        mat = f" of {'/'.join(self.qct_materials)}" if self.density == "qct" else ""
        return f"{self.name} ({kind} density{mat})"


#: Density-modulus laws: E (MPa). The first is the default.
LAWS = Registry("density-modulus law")
#: Density-strength laws: compressive yield stress (MPa).
STRENGTH_LAWS = Registry("density-strength law")


def _register(registry, name, density, valid_range, citation, qct_materials, strength=None):
    if density not in DENSITY_KINDS:
        raise MaterialError(f"law {name!r}: density must be one of {DENSITY_KINDS}, not {density!r}")

    def deco(func):
        registry.add(DensityLaw(name, density, func, tuple(valid_range), citation, tuple(qct_materials), strength))
        return func

    return deco


def modulus_law(name, *, density, citation, valid_range=_ALL, qct_materials=BMD_MATERIALS, strength=None):
    """Decorator registering ``func(rho) -> E (MPa)`` in :data:`LAWS`."""
    return _register(LAWS, name, density, valid_range, citation, qct_materials, strength)


def strength_law(name, *, density, citation, valid_range=_ALL, qct_materials=BMD_MATERIALS):
    """Decorator registering ``func(rho) -> yield stress (MPa)`` in :data:`STRENGTH_LAWS`."""
    return _register(STRENGTH_LAWS, name, density, valid_range, citation, qct_materials)


_KEYAK = "Keyak piecewise laws, as tabulated in J Orthop Surg Res 2018;13:192, Table 1 (MECHANICAL FINDER default)"
_KELLER = "Keller 1994 (J Biomech 27:1159), vertebra, as tabulated in J Orthop Surg Res 2018;13:192, Table 1"
_KOPPERDAHL = ("Kopperdahl, Morgan & Keaveny 2002 (J Orthop Res 20:801) QCT laws as used by the vertebral-strength "
               "benchmark of Walle, Matheson & Boyd 2025 (GigaScience, doi 10.1093/gigascience/giaf094)")


# ------------------------------------------------------------------------------------------
# Density-modulus laws
# ------------------------------------------------------------------------------------------

@modulus_law("keyak", density="ash", citation=_KEYAK, strength="keyak")
def _keyak_e(rho):
    e = np.where(rho <= 0.27, 33900.0 * np.maximum(rho, 0.0) ** 2.20,
                 np.where(rho < 0.6, 5307.0 * rho + 469.0, 10200.0 * rho**2.01))
    return np.where(rho <= 0, 0.001, e)


@modulus_law("morgan", density="apparent", valid_range=(0.09, 0.35), strength="morgan",
             citation="Morgan, Bayraktar & Keaveny 2003 (J Biomech 36:897), vertebral trabecular bone; "
                      "range: wet apparent densities of vertebral trabecular bone (Ohman-Magi et al. 2021)")
def _morgan_e(rho):
    return 4730.0 * rho**1.56


@modulus_law("kopperdahl", density="qct", qct_materials=("K2HPO4",), strength="kopperdahl",
             citation=f"E = 2980 rho^1.05: {_KOPPERDAHL}")
def _kopperdahl_e(rho):
    return 2980.0 * rho**1.05


@modulus_law("keller", density="ash", citation=_KELLER, strength="keller")
def _keller_e(rho):
    return 1890.0 * rho**1.92


@modulus_law("crawford", density="qct", qct_materials=("K2HPO4",), strength="kopperdahl",
             citation="Crawford, Cann & Keaveny 2003 (Bone 33:744) voxel law E = -34.7 + 3230 rho, "
                      "floored at 0 as in the benchmark of Walle et al. 2025")
def _crawford_e(rho):
    return np.maximum(-34.7 + 3230.0 * rho, 0.0)


# ------------------------------------------------------------------------------------------
# Density-strength laws (compressive yield stress; NO_YIELD where the law gives none)
# ------------------------------------------------------------------------------------------

@strength_law("keyak", density="ash", citation=_KEYAK)
def _keyak_s(rho):
    return np.where(rho <= 0.2, NO_YIELD, np.where(rho < 0.317, 137.0 * np.maximum(rho, 0.0) ** 1.88,
                                                   114.0 * np.maximum(rho, 0.0) ** 1.72))


@strength_law("morgan", density="apparent", valid_range=(0.09, 0.35),
              citation="Morgan 2003 modulus x compressive yield strain 0.84 % (Kopperdahl & Keaveny 1998)")
def _morgan_s(rho):
    return YIELD_STRAIN_COMPRESSION * _morgan_e(rho)


@strength_law("kopperdahl", density="qct", qct_materials=("K2HPO4",),
              citation=f"sigma_y = 37.4 rho^1.39 (compression and tension alike in the benchmark): {_KOPPERDAHL}")
def _kopperdahl_s(rho):
    return 37.4 * rho**1.39


@strength_law("keller", density="ash", citation=_KELLER)
def _keller_s(rho):
    return np.where(rho <= 0.2, NO_YIELD, 284.0 * np.maximum(rho, 0.0) ** 2.27)


# ------------------------------------------------------------------------------------------

def law_density(law: DensityLaw, bmd_mg_cm3, material: str = "K2HPO4", ash_method: str = "identity"):
    """The density (g/cm^3) ``law`` takes, from BMD (mg/cm^3 of ``material``).

    Raises
    ------
    MaterialError
        ``material`` is not one the law (for QCT laws) or ``ash_method`` is defined for.
    """
    if law.density == "qct" and material not in law.qct_materials:
        raise MaterialError(f"law {law.name!r} takes {' or '.join(law.qct_materials)}-equivalent QCT density, "
                            f"but this BMD is {material}-equivalent")
    return densities(bmd_mg_cm3, material, ash_method)[law.density]


def modulus(law: str, bmd_mg_cm3, material: str = "K2HPO4", ash_method: str = "identity") -> np.ndarray:
    """E (MPa) of bone with BMD ``bmd_mg_cm3`` (mg/cm^3 of ``material``) under :data:`LAWS` ``law``."""
    lw = LAWS.get_or_raise(law)
    return lw(law_density(lw, bmd_mg_cm3, material, ash_method))


def yield_stress(law: str, bmd_mg_cm3, material: str = "K2HPO4", ash_method: str = "identity") -> np.ndarray:
    """Compressive yield stress (MPa) under :data:`STRENGTH_LAWS` ``law`` (``NO_YIELD`` where none)."""
    lw = STRENGTH_LAWS.get_or_raise(law)
    return lw(law_density(lw, bmd_mg_cm3, material, ash_method))


def apply_law(law: str, bmd_mg_cm3, ash_method: str = "keyak", material: str = "K2HPO4",
              strength: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """E (MPa) and yield stress (MPa) of bone under modulus law ``law``.

    ``strength`` names the density-strength law (default: the one published with ``law``,
    :attr:`DensityLaw.strength`).
    """
    lw = LAWS.get_or_raise(law)
    e = modulus(law, bmd_mg_cm3, material, ash_method)
    s = yield_stress(strength or lw.strength, bmd_mg_cm3, material, ash_method)
    return e, s
