"""The published spine-benchmark protocol: options, extruded disks, axial-only loading, reported numbers."""

import json

import numpy as np
import pytest

from fesim.analysis.loadcases import BodyFrame, compression_case
from fesim.analysis.protocols import (PROTOCOLS, axial_compression_case, benchmark_numbers, body_frame_rotation,
                                      to_body_frame)
from fesim.imaging.caps import generated_caps
from fesim.synthetic.phantom import PhantomSpec, make_phantom, write_phantom
from fesim.imaging.segmentation import subregions
from fesim.mesh.mesher import mesh_vertebra
from fesim.pipeline import RunOptions, run_scan

QUICK = dict(mesh_size_mm=3.0, element_order=1, strength_accuracy="screening")


@pytest.fixture(scope="module")
def phantom():
    ph = make_phantom(PhantomSpec(seed=5, density_scale=0.65))
    mask = ph.labels.with_data((ph.labels.data == 1).astype(np.uint8))
    return ph, mask, subregions(mask)


def test_protocol_sets_its_options():
    opts = RunOptions.from_dict({"protocol": "spine-benchmark", "caps": "none", "law": "keyak"})
    for k, v in PROTOCOLS["spine-benchmark"].options.items():
        assert getattr(opts, k) == v
    assert RunOptions.from_dict({}).protocol == "fesim"
    from fesim.errors import InputError

    with pytest.raises(InputError, match="protocol must be one of"):
        RunOptions.from_dict({"protocol": "faim"})


def test_extruded_caps_follow_the_endplate(phantom):
    """Extruded disks are the endplate surface moved 5 mm: every footprint column is 5 mm thick."""
    ph, mask, regions = phantom
    frame = regions.meta["frame"]
    lower, upper = generated_caps(mask, np.isin(regions.data, (1, 2)), frame, 5.0, shape="extruded")
    h = float(np.max(mask.spacing))
    for cap in (lower, upper):
        pts = cap.index_to_world(np.argwhere(cap.data > 0)) - frame["body_center"]
        uv = np.round(np.column_stack([pts @ frame["ml_axis"], pts @ frame["ap_axis"]]) / h).astype(int)
        s = pts @ frame["body_axis"]
        _, inv, counts = np.unique(uv, axis=0, return_inverse=True, return_counts=True)
        lo = np.full(counts.size, np.inf)
        hi = np.full(counts.size, -np.inf)
        np.minimum.at(lo, inv.ravel(), s)
        np.maximum.at(hi, inv.ravel(), s)
        full = counts >= 3
        thick = hi[full] - lo[full] + h
        assert abs(np.median(thick) - 5.0) <= h, np.median(thick)


def test_axial_only_case_is_statically_determinate_across_the_axis(phantom):
    ph, mask, regions = phantom
    mesh = mesh_vertebra(mask, [], size_mm=3.0)
    bf = BodyFrame.from_regions(regions)
    case = compression_case(mesh, bf)
    body = to_body_frame(mesh, bf)
    R = body_frame_rotation(bf)
    assert np.allclose(R @ R.T, np.eye(3)) and np.linalg.det(R) > 0
    assert np.allclose(body.points, (mesh.points - bf.center) @ R.T)
    ax = axial_compression_case(body, case)
    assert ax.fixed_components == (2,) and ax.driven_components == (2,)
    assert np.allclose(ax.direction, [0, 0, -1])
    # three single constraints across the axis: x, y at one node, y at another
    assert sum(len(c) * len(n) for n, c in ax.extra_fixed) == 3


def test_benchmark_numbers_from_a_curve():
    class R:
        stiffness_N_per_mm = 20000.0
        curve_displacement_mm = [0.0, 0.5, 1.0, 1.5, 2.5, 3.0]
        curve_force_N = [0.0, 3000.0, 4000.0, 3500.0, 5000.0, 4000.0]
        passed_peak = True

    out = benchmark_numbers(R, PROTOCOLS["spine-benchmark"])
    # the largest force up to 2 mm: 4000 at 1 mm (the 5000 at 2.5 mm is beyond the protocol's 2 mm)
    assert out.failure_load_N == pytest.approx(4250.0)  # interpolated at 2.0 mm
    assert out.stiffness_N_per_mm == 20000.0
    assert out.failure_displacement_mm == 2.0 and out.curve_complete


def test_phantom_under_the_protocol(tmp_path):
    root = tmp_path / "scan"
    write_phantom(make_phantom(PhantomSpec(seed=5, density_scale=0.65)), root)
    res = run_scan(root / "dicom", tmp_path / "out", protocol="spine-benchmark", **QUICK)
    saved = json.loads((tmp_path / "out" / "result.json").read_text())
    assert saved["protocol"] == "spine-benchmark"
    assert res["options"]["law"] == "kopperdahl" and res["options"]["caps"] == "pmma"
    assert np.isnan(res["pullout_strength_N"])
    bc = res["analyses"]["compression"]["boundary_conditions"]
    assert bc["fixed"]["on"] == "caps" and bc["driven"]["on"] == "caps"
    assert "axial displacement only" in bc["protocol"]
    assert 0 < res["benchmark_failure_load_N"] <= res["compression_strength_N"] + 1e-9
    assert res["benchmark_stiffness_N_per_mm"] == res["compression_stiffness_N_per_mm"]
    assert "sigma_y / E" in res["analyses"]["compression"]["strength_criterion"]
