"""Homogeneous materials of implants and embedding: screws and PMMA end caps."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SolidMaterial:
    """Linear-elastic solid: E and yield stress in MPa, Poisson's ratio (-)."""

    name: str
    E_mpa: float
    nu: float
    yield_mpa: float
    citation: str


#: Pedicle-screw titanium alloy: E 110 GPa, nu 0.3 (spine FE practice, BMC Musculoskelet Disord
#: 2017, doi 10.1186/s12891-017-1623-0); tensile yield ~880 MPa (Ti-6Al-4V handbook value).
TITANIUM = SolidMaterial("Ti-6Al-4V", 110_000.0, 0.3, 880.0,
                         "E, nu: BMC Musculoskelet Disord 2017 (doi 10.1186/s12891-017-1623-0); "
                         "yield: Ti-6Al-4V data sheet (MatWeb)")
#: PMMA end caps of compression tests: E 2 500 MPa, nu 0.3, yield 70 MPa (Walle et al. 2025).
PMMA = SolidMaterial("PMMA", 2_500.0, 0.3, 70.0,
                     "Walle, Matheson & Boyd 2025 (GigaScience, doi 10.1093/gigascience/giaf094)")

#: Implant and embedding materials by name.
SOLIDS = {m.name: m for m in (TITANIUM, PMMA)}
