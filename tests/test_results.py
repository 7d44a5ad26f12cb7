"""The result contract (fesim.results): one owner per key, validated reading, the same files."""

from __future__ import annotations

import ast
import json
import math
import pickle
import re
from dataclasses import fields
from pathlib import Path

import pytest

from fesim.analysis.strength import StrengthResult
from fesim.errors import ResultError
from fesim.results import (CSV_KEYS, JSON_ORDER, KEYS, RESULT_KEYS, UNSET, AnalysisResult, ScanResult,
                           key_info, keys_markdown)

ROOT = Path(__file__).resolve().parents[1]

#: The contract as the tooling reads it (study runner, report, CLI, README): spelled out here
#: on purpose, so that renaming a key fails this test.
REQUIRED = ["pullout_strength_N", "pullout_stiffness_N_per_mm", "compression_strength_N",
            "compression_stiffness_N_per_mm", "vbmd_screw_mg_cm3", "vbmd_trabecular_mg_cm3", "abmd_g_cm2",
            "n_nodes", "n_elements", "n_dofs", "element_order", "strength_criterion", "fesim_version",
            "timings_s"]


def minimal(**over) -> dict:
    d = {"pullout_strength_N": 812.5, "pullout_stiffness_N_per_mm": 4100.0, "compression_strength_N": 3900.0,
         "compression_stiffness_N_per_mm": 21000.0, "vbmd_screw_mg_cm3": 140.0,
         "vbmd_trabecular_mg_cm3": 110.0, "abmd_g_cm2": 0.81, "n_nodes": 10, "n_elements": 30, "n_dofs": 30,
         "element_order": 1, "strength_criterion": "fake", "fesim_version": "0.1.0", "timings_s": {"read": 0.1}}
    d.update(over)
    return d


def analysis(**over) -> dict:
    d = {"name": "compression", "stiffness_N_per_mm": 2e4, "strength_N": 4e3, "displacement_at_peak_mm": 0.3,
         "surrogate_strength_N": 3.5e3, "curve_displacement_mm": [0.0, 0.1], "curve_force_N": [0.0, 2e3],
         "yielded_volume_mm3": 100.0, "failed_volume_mm3": 10.0, "n_solves": 12, "n_steps": 1,
         "converged_steps": 1, "passed_peak": False, "timings_s": {"total": 1.0}, "criterion": "c", "cg_iterations": 7,
         "strength_criterion": "c", "boundary_conditions": {"fixed": {"n_nodes": 40}}}
    d.update(over)
    return d


def test_required_keys_are_the_tooling_contract():
    assert list(RESULT_KEYS) == REQUIRED
    assert list(CSV_KEYS) == [k for k in REQUIRED if k != "timings_s"]
    required = [f.name for f in fields(ScanResult) if f.metadata and not f.metadata["optional"]]
    assert sorted(required) == sorted(REQUIRED)
    # every contract key has one place in result.json, and a unit string and a description
    contract = [f.name for f in fields(ScanResult) if f.metadata]
    assert sorted(JSON_ORDER) == sorted(contract) and len(set(JSON_ORDER)) == len(JSON_ORDER)
    for k in contract:
        assert key_info(k)["description"], k
    assert key_info("pullout_strength_N")["unit"] == "N" and key_info("abmd_g_cm2")["unit"] == "g/cm^2"
    assert key_info("strength_N", analysis=True)["unit"] == "N"
    assert KEYS.pullout_strength_N == "pullout_strength_N"
    with pytest.raises(AttributeError):
        KEYS.pullout_strength  # noqa: B018 - a misspelt key fails loudly
    with pytest.raises(KeyError):
        key_info("pullout_strength")


def test_analysis_result_holds_every_strength_result_field():
    """A field added to (or removed from) StrengthResult must be added to the contract too."""
    per_element = {"u_peak", "factor_peak", "ratio_peak", "snapshots"}
    strength = [f.name for f in fields(StrengthResult) if f.name not in per_element]
    own = [f.name for f in fields(AnalysisResult)]
    assert own == strength + ["strength_criterion", "boundary_conditions"]


def test_minimal_result_round_trips_and_keeps_extra_keys():
    d = minimal(mesh_h_mm=2.0, scan_id=None)
    r = ScanResult.from_dict(d)
    assert r.pullout_strength_N == 812.5 and r.scan_id is None and r.analyses is UNSET
    assert r.extra == {"mesh_h_mm": 2.0}
    assert r.to_dict() == d  # absent keys stay absent, null stays null
    assert list(r.to_dict())[:2] == ["scan_id", "pullout_strength_N"]  # result.json's order
    row = r.csv_row()
    assert list(row)[:len(CSV_KEYS)] == list(CSV_KEYS)
    assert list(row)[len(CSV_KEYS):] == ["mesh_h_mm", "scan_id"]  # then the other scalars, sorted
    back = pickle.loads(pickle.dumps(r))  # the process and dask backends ship results pickled
    assert back.analyses is UNSET and back.to_dict() == d


def test_nan_strength_without_screws_is_valid():
    r = ScanResult.from_dict(minimal(pullout_strength_N=float("nan")))
    assert math.isnan(r.pullout_strength_N) and not r.has_screws


@pytest.mark.parametrize("bad, message", [
    ({"n_nodes": None}, "lacks"),
    ({"compression_strength_N": "3900"}, "compression_strength_N must be a number"),
    ({"n_elements": 3.5}, "n_elements must be a int"),
    ({"fesim_version": " "}, "fesim_version is empty"),
    ({"pullout_strength_N": True}, "must be a number"),
    ({"analyses": {"compression": analysis(strength_N=None)}}, "analyses.compression: strength_N"),
    ({"analyses": {"pullout_left": {"name": "pullout_left"}}}, "analyses.pullout_left lacks key(s): "
                                                               "stiffness_N_per_mm"),
    ({"benchmark_curve_complete": "yes"}, "benchmark_curve_complete must be a bool"),
])
def test_malformed_results_are_refused_naming_the_key(bad, message):
    d = minimal(**bad)
    if bad.get("n_nodes", 0) is None:
        del d["n_nodes"]
    with pytest.raises(ResultError) as exc:
        ScanResult.from_dict(d)
    assert message in str(exc.value)


def test_from_json_reads_and_refuses(tmp_path):
    p = tmp_path / "result.json"
    d = minimal(analyses={"compression": analysis()})
    p.write_text(json.dumps(d))
    r = ScanResult.from_json(p)
    assert isinstance(r.analyses["compression"], AnalysisResult)
    assert r.analyses["compression"].strength_N == 4e3
    assert r.to_dict() == d
    p.write_text("{")
    with pytest.raises(ResultError, match="not valid JSON"):
        ScanResult.from_json(p)
    with pytest.raises(ResultError, match="cannot read"):
        ScanResult.from_json(tmp_path / "missing.json")
    p.write_text("[1, 2]")
    with pytest.raises(ResultError, match="not a JSON object"):
        ScanResult.from_json(p)


def test_analysis_from_strength_result():
    kw = {k: v for k, v in analysis().items() if k not in ("strength_criterion", "boundary_conditions")}
    res = StrengthResult(**kw)
    a = AnalysisResult.from_strength(res, {"fixed": {"n_nodes": 40}})
    assert a.to_dict() == analysis()


def test_docs_table_is_generated_from_the_contract():
    text = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    assert text.endswith(keys_markdown()), "docs/results.md is stale: python -m fesim.results"


def test_readme_names_contract_keys_only():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    para = text[text.index("`result.json` holds"):]
    para = para[:para.index("\n\n")]
    named = re.findall(r"`([A-Za-z_0-9]+)`", para)
    assert named and all(k in RESULT_KEYS for k in named), named
    assert sorted(named) == sorted(REQUIRED)


# keys that other records share by name (run options, the mesh quality report, support audits,
# provenance, the mask check, the longitudinal baseline record): those records spell them, not the result
_SHARED = {"n_nodes", "n_elements", "element_order", "voxel_size_mm", "ash_conversion", "screws",
           "calibration", "protocol", "fesim_version", "options", "name", "criterion", "timings_s",
           "warnings", "longitudinal", "scan_id"}


def test_no_module_but_the_contract_spells_a_result_key():
    keys = {f.name for cls in (ScanResult, AnalysisResult) for f in fields(cls) if f.metadata} - _SHARED
    found = []
    for path in sorted((ROOT / "fesim").rglob("*.py")):
        if path.name == "results.py" and path.parent.name == "fesim":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in keys:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value}")
    assert not found, found
