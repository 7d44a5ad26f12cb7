"""Screw geometry shared by the planning, meshing and analysis stages."""

from __future__ import annotations

from dataclasses import dataclass, asdict

import numpy as np

#: Titanium alloy screw material (domain.md section 3): E in MPa, Poisson's ratio.
TITANIUM_E_MPA = 110_000.0
TITANIUM_NU = 0.3


@dataclass
class ScrewPlan:
    """A screw modelled as a solid cylinder.

    Attributes
    ----------
    side : str
        ``"left"`` or ``"right"`` (patient side) or a user name.
    entry : ndarray, shape (3,)
        LPS position (mm) of the screw head centre, where it enters the bone.
    direction : ndarray, shape (3,)
        Unit vector from head to tip (LPS).
    length_mm, diameter_mm : float
        Cylinder length and outer diameter (mm). Defaults 40 x 6.5 mm (traditional trajectory).
    trajectory : str
        ``"traditional"``, ``"cortical"`` or ``"user"``.
    E_mpa, nu : float
        Elastic constants of the screw material (titanium by default).
    """

    side: str
    entry: np.ndarray
    direction: np.ndarray
    length_mm: float = 40.0
    diameter_mm: float = 6.5
    trajectory: str = "traditional"
    E_mpa: float = TITANIUM_E_MPA
    nu: float = TITANIUM_NU

    def __post_init__(self):
        self.entry = np.asarray(self.entry, dtype=float).reshape(3)
        d = np.asarray(self.direction, dtype=float).reshape(3)
        n = np.linalg.norm(d)
        if not np.isfinite(n) or n == 0:
            raise ValueError("screw direction must be a non-zero vector")
        self.direction = d / n
        if self.length_mm <= 0 or self.diameter_mm <= 0:
            raise ValueError("screw length and diameter must be positive")

    @property
    def radius_mm(self) -> float:
        return 0.5 * self.diameter_mm

    @property
    def tip(self) -> np.ndarray:
        return self.entry + self.length_mm * self.direction

    @property
    def volume_mm3(self) -> float:
        return float(np.pi * self.radius_mm**2 * self.length_mm)

    def signed_distance(self, xyz) -> np.ndarray:
        """Signed distance (mm) from points (..., 3) to the cylinder; negative inside."""
        p = np.asarray(xyz, dtype=float) - self.entry
        t = p @ self.direction
        radial = np.linalg.norm(p - t[..., None] * self.direction, axis=-1) - self.radius_mm
        axial = np.abs(t - 0.5 * self.length_mm) - 0.5 * self.length_mm
        outside = np.hypot(np.maximum(radial, 0), np.maximum(axial, 0))
        inside = np.minimum(np.maximum(radial, axial), 0)
        return outside + inside

    def contains(self, xyz, tol: float = 0.0) -> np.ndarray:
        return self.signed_distance(xyz) <= tol

    def to_dict(self) -> dict:
        d = asdict(self)
        d["entry"] = [float(v) for v in self.entry]
        d["direction"] = [float(v) for v in self.direction]
        d["tip"] = [float(v) for v in self.tip]
        return d
