"""fesim: CT-based finite-element analysis of pedicle-screw fixation in osteoporotic spines.

Data flows one way through the stages::

    volume -> BMD -> mask / screw plan -> mesh -> model -> solution -> results -> study

Units everywhere: length mm, force N, stress and modulus MPa, density mg/cm^3 (BMD)
or g/cm^3 (ash and apparent density), areal BMD g/cm^2.
"""

__version__ = "0.1.0"

import logging as _logging

# library code logs through logging.getLogger(__name__); applications add handlers
_logging.getLogger(__name__).addHandler(_logging.NullHandler())
