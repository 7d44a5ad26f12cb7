"""Constants of the bone failure model (strains are fractions, not %).

On-axis yield strains of human vertebral trabecular bone, Kopperdahl & Keaveny 1998
(J Biomech 31:601): 0.84 +- 0.06 % in compression, 0.78 +- 0.04 % in tension; the tensile
yield strain is independent of density. Used by :class:`fesim.analysis.strength.FailureModel`
and by the ``morgan`` density-strength law (sigma_y = E x 0.84 %).
"""

YIELD_STRAIN_COMPRESSION = 0.0084
YIELD_STRAIN_TENSION = 0.0078
#: Yield stress (MPa) standing for "never yields" where a strength law gives no value
#: (Keyak and Keller below ash density 0.2 g/cm^3 use 1e20, as tabulated).
NO_YIELD = 1.0e20
