"""Connected components of voxel masks, shared by the segmentation stages."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

#: 26-connectivity (face, edge and corner neighbours) in 3-D.
BALL26 = np.ones((3, 3, 3), bool)


def largest_component(mask: np.ndarray, structure: np.ndarray | None = BALL26) -> np.ndarray:
    """The largest connected piece of ``mask`` (boolean array of the same shape).

    Parameters
    ----------
    mask : ndarray of bool
        Voxel mask (any dimension matching ``structure``).
    structure : ndarray, optional
        Connectivity as in :func:`scipy.ndimage.label` (default :data:`BALL26`;
        None: face neighbours only).

    Returns
    -------
    ndarray of bool
        ``mask`` itself when it has at most one piece (an empty mask stays empty), else its
        largest piece; of two equally large pieces, the first in label order.
    """
    lab, n = ndi.label(mask, structure=structure)
    if n <= 1:
        return lab > 0
    return lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
