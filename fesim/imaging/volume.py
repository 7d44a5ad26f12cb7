"""The image volume passed between imaging stages.

Convention (used by every fesim stage):

* ``data[i, j, k]``: ``i`` runs along the image rows' direction (DICOM column index),
  ``j`` along the columns' direction (DICOM row index), ``k`` along the slice normal.
* World coordinates are patient **LPS** millimetres, as in DICOM:
  ``x_world = origin + direction @ (spacing * [i, j, k])``. ``direction`` holds unit axis
  vectors as **columns**.
* NIfTI (RAS) inputs are converted to LPS on reading.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np


@dataclass
class Volume:
    """A 3-D scalar image on a regular grid in patient LPS millimetres.

    Attributes
    ----------
    data : ndarray, shape (nx, ny, nz)
        Voxel values (HU for CT, mg/cm^3 for a calibrated BMD volume, labels for a mask).
    spacing : ndarray, shape (3,)
        Voxel size along i, j, k in mm.
    origin : ndarray, shape (3,)
        LPS position (mm) of the centre of voxel (0, 0, 0).
    direction : ndarray, shape (3, 3)
        Unit axis vectors of i, j, k as columns (LPS).
    meta : dict
        Non-identifying information (modality, series UID hash, units, ...).
    """

    data: np.ndarray
    spacing: np.ndarray
    origin: np.ndarray = field(default_factory=lambda: np.zeros(3))
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.spacing = np.asarray(self.spacing, dtype=float).reshape(3)
        self.origin = np.asarray(self.origin, dtype=float).reshape(3)
        self.direction = np.asarray(self.direction, dtype=float).reshape(3, 3)
        if self.data.ndim != 3:
            raise ValueError(f"volume data must be 3-D, got shape {self.data.shape}")
        if np.any(self.spacing <= 0):
            raise ValueError(f"voxel spacing must be positive, got {self.spacing}")

    @property
    def shape(self) -> tuple:
        return self.data.shape

    @property
    def voxel_volume_mm3(self) -> float:
        """Volume of one voxel in mm^3."""
        return float(np.prod(self.spacing))

    @property
    def affine(self) -> np.ndarray:
        """4x4 matrix mapping homogeneous voxel indices (i, j, k, 1) to LPS mm."""
        a = np.eye(4)
        a[:3, :3] = self.direction * self.spacing[None, :]
        a[:3, 3] = self.origin
        return a

    def index_to_world(self, ijk) -> np.ndarray:
        """Voxel indices (..., 3), possibly fractional, to LPS mm (..., 3)."""
        ijk = np.asarray(ijk, dtype=float)
        return ijk @ (self.direction * self.spacing[None, :]).T + self.origin

    def world_to_index(self, xyz) -> np.ndarray:
        """LPS mm (..., 3) to fractional voxel indices (..., 3)."""
        xyz = np.asarray(xyz, dtype=float)
        m = np.linalg.inv(self.direction * self.spacing[None, :])
        return (xyz - self.origin) @ m.T

    def with_data(self, data: np.ndarray, **meta) -> "Volume":
        """A volume on the same grid with other voxel values."""
        if data.shape != self.data.shape:
            raise ValueError(f"shape {data.shape} differs from grid {self.data.shape}")
        return replace(self, data=data, meta={**self.meta, **meta})

    def same_grid(self, other: "Volume", tol: float = 1e-3) -> bool:
        """True when ``other`` has the same shape and affine (within ``tol`` mm)."""
        return self.shape == other.shape and np.allclose(self.affine, other.affine, atol=tol)

    def sample(self, xyz, order: int = 1, cval: float = 0.0) -> np.ndarray:
        """Interpolate the volume at LPS points ``xyz`` (..., 3).

        ``order=1`` is trilinear; points outside the grid get ``cval``.
        """
        from scipy.ndimage import map_coordinates

        xyz = np.asarray(xyz, dtype=float)
        m_inv = np.linalg.inv(self.direction * self.spacing[None, :])
        # indices as (3, N), the layout map_coordinates reads fastest
        ijk = np.einsum("ij,nj->in", m_inv, np.ascontiguousarray(xyz.reshape(-1, 3)) - self.origin)
        vals = map_coordinates(self.data, ijk, order=order, mode="constant", cval=cval)
        return vals.reshape(xyz.shape[:-1])


def crop(image: Volume, mask: np.ndarray, margin: int) -> tuple[Volume, tuple]:
    """Sub-volume of ``image``'s grid around boolean array ``mask`` plus ``margin`` voxels.

    Returns the sub-volume (holding ``mask`` cropped, with the right origin) and the index
    slices of the box in ``image``.
    """
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(axis=0) - margin, 0)
    hi = np.minimum(idx.max(axis=0) + margin + 1, image.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    sub = Volume(mask[box], image.spacing, image.index_to_world(lo), image.direction, dict(image.meta))
    return sub, box
