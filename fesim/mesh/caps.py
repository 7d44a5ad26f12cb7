"""Label the end-cap elements of a mesh of vertebra + caps (PMMA or disc layers)."""

from __future__ import annotations

import numpy as np

from ..imaging.volume import Volume
from .tetmesh import REGION_BONE, REGION_CAP_LOWER, REGION_CAP_UPPER, TetMesh


def assign_cap_regions(mesh: TetMesh, lower: Volume, upper: Volume) -> TetMesh:
    """Bone elements whose centroid lies in a cap mask become region 20 (lower) or 21 (upper).

    The cap masks are sampled trilinearly at the centroids (>= 0.5 counts as inside).
    Screws keep their regions.
    """
    c = mesh.centroids()
    region = mesh.region.copy()
    bone = region == REGION_BONE
    for vol, code in ((lower, REGION_CAP_LOWER), (upper, REGION_CAP_UPPER)):
        inside = vol.with_data(vol.data.astype(np.float32)).sample(c) >= 0.5
        region[bone & inside] = code
    return TetMesh(mesh.points, mesh.cells, region, dict(mesh.info))
