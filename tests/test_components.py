"""fesim.imaging.components: the largest connected piece of a mask."""

import numpy as np

from fesim.imaging.components import largest_component


def test_largest_piece_kept_and_connectivity_respected():
    m = np.zeros((8, 8, 8), bool)
    m[0, 0, 0] = True                  # a speck
    m[3:6, 3:6, 3:6] = True            # 27 voxels
    m[6, 6, 6] = True                  # touches the cube at a corner only
    out = largest_component(m)
    assert out.dtype == bool and out.sum() == 28 and out[6, 6, 6] and not out[0, 0, 0]
    # face neighbours only: the corner voxel is a piece of its own
    face = largest_component(m, structure=None)
    assert face.sum() == 27 and not face[6, 6, 6]


def test_one_piece_or_empty_mask_unchanged():
    m = np.zeros((4, 5, 6), bool)
    assert not largest_component(m).any()
    m[1:3, 1:4, 2:5] = True
    assert np.array_equal(largest_component(m), m)


def test_equal_pieces_first_in_label_order():
    m = np.zeros((3, 9, 3), bool)
    m[:, 0:2, :] = True
    m[:, 5:7, :] = True
    out = largest_component(m)
    assert out.sum() == 18 and out[:, 0:2, :].all() and not out[:, 5:7, :].any()
