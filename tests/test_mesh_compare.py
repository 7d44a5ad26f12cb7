"""The mesher comparison benchmark skips external meshers that are not installed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_meshers.py"


def _load():
    spec = importlib.util.spec_from_file_location("compare_meshers", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_worker_reports_missing_mesher(tmp_path):
    mod = _load()
    mod.WORKERS["surely_absent_mesher"] = (None, "none")
    phi = np.ones((4, 4, 4))
    np.savez(tmp_path / "in.npz", phi=phi, spacing=np.ones(3), origin=np.zeros(3),
             direction=np.eye(3), size=2.0)
    mod.worker(str(tmp_path / "in.npz"), str(tmp_path), ["surely_absent_mesher"])
    import json
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["surely_absent_mesher"]["status"] == "not installed"


def test_driver_without_environment_says_skipped(tmp_path, capsys, monkeypatch):
    mod = _load()
    monkeypatch.setattr(mod, "_cases", lambda: iter([]))
    rows = mod.main(["--python", str(tmp_path / "no_python")])
    out = capsys.readouterr().out
    assert "external meshers skipped" in out and rows == []
