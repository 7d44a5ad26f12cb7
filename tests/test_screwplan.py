"""Screw geometry: signed distance, closest surface point and volume for both tip shapes."""

import numpy as np
import pytest

from fesim.imaging.screwplan import ScrewPlan
from fesim.mesh.levelset import screw_closest_point


def _points(screw, n, seed):
    rng = np.random.default_rng(seed)
    along = np.outer(rng.uniform(-6.0, screw.length_mm + 6.0, n), screw.direction)
    return screw.entry + along + rng.normal(0.0, 4.0, (n, 3))


@pytest.mark.parametrize("shape", ["round", "flat"])
def test_closest_point_lies_on_surface_at_signed_distance(shape):
    s = ScrewPlan("x", [1.0, 2.0, 3.0], [0.3, -0.9, 0.1], 40.0, 6.5, tip_shape=shape)
    x = _points(s, 20_000, 1)
    cp = screw_closest_point(s, x)
    sd = s.signed_distance(x)
    assert np.abs(s.signed_distance(cp)).max() < 1e-10
    assert np.allclose(np.linalg.norm(x - cp, axis=1), np.abs(sd), atol=1e-10)
    assert (sd < 0).any() and (sd > 0).any()


@pytest.mark.parametrize("shape", ["round", "flat"])
def test_volume_matches_signed_distance(shape):
    s = ScrewPlan("x", [0.0, 0.0, 0.0], [0.0, 0.0, 1.0], 30.0, 6.0, tip_shape=shape)
    # exact quadrature of the indicator on a fine grid around the screw
    h = 0.1
    g = np.arange(-3.5 + h / 2, 3.5, h)
    z = np.arange(-0.5 + h / 2, 30.5, h)
    X, Y, Z = np.meshgrid(g, g, z, indexing="ij")
    inside = s.signed_distance(np.stack([X, Y, Z], axis=-1)) < 0
    assert inside.sum() * h**3 == pytest.approx(s.volume_mm3, rel=5e-3)


def test_round_tip_is_a_hemisphere():
    s = ScrewPlan("x", [0.0, 0.0, 0.0], [0.0, 0.0, 1.0], 40.0, 6.5)
    R = s.radius_mm
    assert s.tip_shape == "round" and s.shaft_length_mm == pytest.approx(40.0 - R)
    assert s.signed_distance(np.array([0.0, 0.0, 40.0])) == pytest.approx(0.0, abs=1e-12)
    # on the flat cylinder's tip rim the round screw is R (1 - 1/sqrt 2) away
    rim = np.array([R / np.sqrt(2), 0.0, 40.0 - R + R / np.sqrt(2)])
    assert s.signed_distance(rim) == pytest.approx(0.0, abs=1e-12)
    corner = np.array([R, 0.0, 40.0])
    assert s.signed_distance(corner) == pytest.approx(R * (np.sqrt(2) - 1), rel=1e-12)
    flat = ScrewPlan("x", [0.0, 0.0, 0.0], [0.0, 0.0, 1.0], 40.0, 6.5, tip_shape="flat")
    assert flat.signed_distance(corner) == pytest.approx(0.0, abs=1e-12)


def test_bad_tip_shape_is_refused():
    with pytest.raises(ValueError, match="tip_shape"):
        ScrewPlan("x", [0.0, 0.0, 0.0], [0.0, 0.0, 1.0], tip_shape="pointed")
    with pytest.raises(ValueError, match="at least as long"):
        ScrewPlan("x", [0.0, 0.0, 0.0], [0.0, 0.0, 1.0], length_mm=2.0, diameter_mm=6.5)
