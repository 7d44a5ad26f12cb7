"""A study killed with SIGKILL at staggered times and rerun ends exactly as an uninterrupted run.

The study runs ``fesim study`` in a subprocess (its own process group, so the kill takes its
worker processes too) on a tiny quick model: phantom scans of 1 x 1 x 1.5 mm voxels, tet4,
3 mm, linear surrogate strength, processes backend with 2 workers. While each run is alive the
output folder is polled, and every visible file must be complete; after each kill, scans that
had finished must never be recomputed.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from fesim.study.cohort import RESULT_KEYS
from study_helpers import (QUICK_RUN, worker_env, write_manifest, write_options,
                           write_phantom_scans)

#: Kill points (12): times as fractions of the uninterrupted run's wall time, and one kill
#: the moment the run has finished a scan (:data:`AFTER_A_SCAN`). A killed scan restarts from
#: scratch, so a run finishes scans only when it outlives start-up plus one scan (about half
#: the uninterrupted run): short kills first, then the kill after a scan, which lands with some
#: scans done whatever the machine's load (a late time, 0.7, missed it when the reruns ran
#: slower than the timed run, e.g. beside other test workers), then short ones again, so that
#: most kills land before the study completes whatever the machine's speed.
AFTER_A_SCAN = "after a scan"
KILL_FRACTIONS = (0.02, 0.05, 0.08, 0.1, 0.12, 0.15, 0.22, 0.3, AFTER_A_SCAN, 0.05, 0.12, 0.2)


def _visible(root: Path):
    """Files a user can see: none inside a hidden staging folder or with a hidden name."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for f in filenames:
            if not f.startswith("."):
                yield Path(dirpath) / f


def _check_complete(path: Path) -> str | None:
    """None if ``path`` is a complete file of its kind, else what is wrong."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:  # replaced or moved between listing and reading
        return None
    name = path.name
    try:
        if name == "result.json":
            res = json.loads(data)
            missing = [k for k in RESULT_KEYS if k not in res]
            return f"lacks {missing}" if missing else None
        if name.endswith(".json"):
            json.loads(data)
        elif name.endswith((".vtu", ".pvd")):
            ET.fromstring(data)
        elif name.endswith(".png"):
            if not (data.startswith(b"\x89PNG") and data.rstrip().endswith(b"IEND\xaeB`\x82")):
                return "truncated PNG"
        elif name.endswith(".csv"):
            rows = list(csv.reader(data.decode().splitlines()))
            if not rows or any(len(r) != len(rows[0]) for r in rows) or not data.endswith(b"\n"):
                return "ragged or unterminated CSV"
        elif name.endswith(".html"):
            if not data.rstrip().endswith(b"</html>"):
                return "truncated HTML"
    except (ValueError, ET.ParseError, UnicodeDecodeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _run(args, cwd, kill_after=None, poll=None, kill_when=None):
    """Run the CLI; SIGKILL its process group at ``kill_after`` s or once ``kill_when()``."""
    proc = subprocess.Popen([sys.executable, "-m", "fesim", *args], cwd=cwd, env=worker_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    t0 = time.monotonic()
    try:
        while proc.poll() is None:
            if (kill_after is not None and time.monotonic() - t0 >= kill_after) or \
                    (kill_when is not None and kill_when()):
                os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its worker processes
                break
            if poll is not None:
                poll()
            time.sleep(0.05)
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, out.decode(), err.decode(), time.monotonic() - t0


def _done_scans(out: Path) -> dict:
    """``{scan folder: (inode, mtime_ns)}`` of each result.json (a recomputed scan changes them)."""
    return {p.parent.name: (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in (out / "scans").glob("*/result.json")} if (out / "scans").is_dir() else {}


def _comparable(result_json: Path) -> dict:
    res = json.loads(result_json.read_text())
    res.pop("timings_s")
    for a in res.get("analyses", {}).values():
        a.pop("timings_s", None)
    return res


@pytest.mark.slow
def test_sigkill_at_staggered_times_then_rerun_matches_uninterrupted(tmp_path):
    scans = write_phantom_scans(tmp_path / "in", [("P01", 0, 3, 0.62), ("P01", 12, 3, 0.70),
                                                  ("P02", 0, 4, 0.75)])
    man = write_manifest(tmp_path / "m.csv", scans)
    opts = write_options(tmp_path / "o.toml", QUICK_RUN, {"backend": "processes", "workers": 2})
    args = [str(man), "--options", str(opts), "--out"]

    rc, out, err, t_full = _run(["study", *args, "ref"], tmp_path)
    assert rc == 0, err
    ref = tmp_path / "ref"

    work = tmp_path / "killed"
    problems, history = [], []

    def poll():
        for f in _visible(work):
            bad = _check_complete(f)
            if bad:
                problems.append(f"{f.relative_to(work)}: {bad}")

    for frac in KILL_FRACTIONS:
        before = _done_scans(work)
        if frac == AFTER_A_SCAN:
            rc, out, err, t = _run(["study", *args, "killed"], tmp_path, poll=poll,
                                   kill_when=lambda: len(_done_scans(work)) > len(before))
        else:
            rc, out, err, t = _run(["study", *args, "killed"], tmp_path, kill_after=frac * t_full,
                                   poll=poll)
        poll()
        after = _done_scans(work)
        # a scan finished before this run is never recomputed by it
        redone = [k for k, v in before.items() if after.get(k) != v]
        history.append({"kill_s": round(t, 1), "at": frac, "rc": rc, "done_before": len(before),
                        "done_after": len(after), "redone": redone})
        assert not redone, history
    assert not problems, problems[:10]
    assert sum(h["rc"] == -signal.SIGKILL for h in history) >= 10, history
    # at least one kill landed while some but not all scans were done
    assert any(0 < h["done_after"] < len(scans) and h["rc"] != 0 for h in history), history

    before = _done_scans(work)
    rc, out, err, _ = _run(["study", *args, "killed"], tmp_path, poll=poll)
    assert rc == 0, err
    assert not problems, problems[:10]
    assert all(_done_scans(work)[k] == v for k, v in before.items())
    assert (work / "results.csv").read_bytes() == (ref / "results.csv").read_bytes()
    assert (work / "stats.csv").read_bytes() == (ref / "stats.csv").read_bytes()
    assert json.loads((work / "stats.json").read_text()) == json.loads((ref / "stats.json").read_text())
    for s in ("P01_m0", "P01_m12", "P02_m0"):
        assert _comparable(work / "scans" / s / "result.json") == _comparable(ref / "scans" / s / "result.json")
    assert not list((work / "scans").glob(".partial-*"))
    print(f"\nuninterrupted run {t_full:.1f} s; kill points: {history}")
