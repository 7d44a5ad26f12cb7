"""The material model: density chain, bone laws, failure constants, implant materials.

One owner for every material fact. Layout:

* :mod:`.density` -- BMD (K2HPO4 or HA, mg/cm^3) -> QCT / ash / apparent density (g/cm^3);
  :data:`ASH_EQUATIONS`, each defined for the calibration material(s) it names.
* :mod:`.laws` -- :data:`LAWS` (density-modulus) and :data:`STRENGTH_LAWS` (density-yield stress).
* :mod:`.failure` -- yield strains of the failure model (Kopperdahl & Keaveny 1998).
* :mod:`.solids` -- :data:`TITANIUM` screws, :data:`PMMA` caps.
* :mod:`.assign` -- per-element :class:`Materials` from element BMD and element groups.

This package imports nothing from ``fesim.imaging``, ``mesh``, ``fem``, ``analysis`` or
``study``: they import from it.
"""

from fesim.material.assign import BoneProperties, Materials, assign_materials, bone_properties
from fesim.material.density import (
    ASH_APPARENT_RATIO, ASH_EQUATIONS, BMD_MATERIALS, DENSITY_KINDS, AshEquation, ash_to_apparent,
    bmd_material_of, bmd_to_qct, check_ash_equation, check_bmd_material, densities, qct_to_ash)
from fesim.material.failure import NO_YIELD, YIELD_STRAIN_COMPRESSION, YIELD_STRAIN_TENSION
from fesim.material.laws import (
    LAWS, STRENGTH_LAWS, DensityLaw, apply_law, modulus, modulus_law, strength_law, yield_stress)
from fesim.material.registry import Registry
from fesim.material.solids import PMMA, SOLIDS, TITANIUM, SolidMaterial

__all__ = [
    "ASH_APPARENT_RATIO", "ASH_EQUATIONS", "BMD_MATERIALS", "DENSITY_KINDS", "LAWS", "NO_YIELD", "PMMA",
    "SOLIDS", "STRENGTH_LAWS", "TITANIUM", "YIELD_STRAIN_COMPRESSION", "YIELD_STRAIN_TENSION",
    "AshEquation", "BoneProperties", "DensityLaw", "Materials", "Registry", "SolidMaterial",
    "apply_law", "ash_to_apparent", "assign_materials", "bmd_material_of", "bmd_to_qct",
    "bone_properties", "check_ash_equation", "check_bmd_material", "densities", "modulus",
    "modulus_law", "qct_to_ash", "strength_law", "yield_stress",
]
