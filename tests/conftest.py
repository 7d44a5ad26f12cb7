"""Shared test fixtures: external tools and the real CT data beside the project."""

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    env = os.environ.get("FESIM_TEST_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data"


def _tool_missing(msg: str):
    """An external tool is absent: skip locally, fail in CI (FESIM_REQUIRE_TOOLS=1)."""
    if os.environ.get("FESIM_REQUIRE_TOOLS") == "1":
        pytest.fail(msg)
    pytest.skip(msg)


def require_tool(name: str) -> str:
    """Path of an external program; skip when absent, fail in CI (FESIM_REQUIRE_TOOLS=1)."""
    path = shutil.which(name)
    if path is None:
        _tool_missing(f"{name} not found on PATH (CI installs it: see .ci/run)")
    return path


@pytest.fixture
def ccx():
    return require_tool("ccx")


@pytest.fixture
def pvpython():
    return require_tool("pvpython")


def real_data_dir() -> Path:
    """The TotalSegmentator example folder of ../shared/data; skip (with the reason) when absent."""
    d = shared_data_dir() / "totalsegmentator"
    if not (d / "example_ct_labels.nii.gz").is_file():
        pytest.skip(f"real CT data not found at {d} (set FESIM_TEST_DATA or place ../shared/data)")
    return d


def pv_check_script() -> Path:
    """../shared/tools/pv_check.py; skip when absent, fail in CI (FESIM_REQUIRE_TOOLS=1)."""
    script = ROOT.parent / "shared" / "tools" / "pv_check.py"
    if not script.is_file():
        _tool_missing(f"{script} not found")
    return script


@pytest.fixture
def real_data() -> Path:
    return real_data_dir()


#: Test files by measured wall time, longest first (``--durations`` of the whole suite,
#: main at 3b19690). Under pytest-xdist (``make test``: ``--dist loadfile
#: --no-loadscope-reorder``) each file goes to one worker, in this order before the others, so
#: that the long files start first and the short ones fill in at the end (longest first keeps
#: the two workers' finishing times close). Only the order of whole files changes; a file
#: missing here runs after these, in collection order.
XDIST_LONG_FIRST = ("test_synthetic_cohort.py", "test_study_kill.py", "test_longitudinal.py",
                    "test_examples.py", "test_convergence.py", "test_pipeline.py",
                    "test_study_dask.py", "test_reproducibility.py", "test_deidentification.py",
                    "test_vertebrae.py", "test_material.py", "test_planning_robust.py",
                    "test_strength_bmd.py", "test_voxel.py", "test_caps.py")


def pytest_collection_modifyitems(config, items):
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return  # a plain run keeps pytest's order
    rank = {name: k for k, name in enumerate(XDIST_LONG_FIRST)}
    items.sort(key=lambda it: rank.get(it.path.name, len(rank)))  # stable: files stay contiguous
