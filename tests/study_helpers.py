"""Helpers of the study tests that worker processes must import (not a test module)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Tiny, quick model for tests that run the real pipeline: tet4, 3 mm, linear surrogate strength.
QUICK_RUN = {"mesh_size_mm": 3.0, "screw_mesh_size_mm": 1.5, "element_order": 1,
             "strength": "surrogate"}


def worker_env() -> dict:
    """Environment for subprocesses: this worktree and the tests folder importable, 1 thread."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def pid_run_one(scan_path, out_dir, density_scale=1.0, **options):
    """A deterministic per-scan function that also records which process ran it."""
    if "bad" in str(scan_path):
        raise ValueError(f"cannot mesh {scan_path}")
    time.sleep(0.3)  # long enough for both workers to take tasks
    vs = 120.0 * density_scale
    res = {
        "pullout_strength_N": 0.045 * vs ** 1.8, "pullout_stiffness_N_per_mm": 30.0 * vs,
        "compression_strength_N": 0.9 * vs ** 1.7, "compression_stiffness_N_per_mm": 200.0 * vs,
        "vbmd_screw_mg_cm3": vs, "vbmd_trabecular_mg_cm3": 0.8 * vs, "abmd_g_cm2": 0.006 * vs,
        "n_nodes": 1, "n_elements": 1, "n_dofs": 3, "element_order": 1,
        "strength_criterion": "fake", "fesim_version": "test", "timings_s": {},
    }
    (Path(out_dir) / "worker_pid.txt").write_text(str(os.getpid()))
    return res


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dask_cli() -> list[str] | None:
    exe = Path(sys.executable).parent / "dask"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("dask")
    return [found] if found else None


def start_process(cmd, log_path, **kw) -> subprocess.Popen:
    """Start ``cmd`` in its own session (killable as a group), output to ``log_path``."""
    fh = open(log_path, "wb")
    try:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=worker_env(),
                                start_new_session=True, **kw)
    finally:
        fh.close()


def stop_process(proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL it if it has not exited within ``timeout_s``."""
    import signal

    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout_s)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=timeout_s)


def write_phantom_scans(folder: Path, visits, spacing_mm=(1.0, 1.0, 1.5)) -> list[dict]:
    """One phantom DICOM series per ``(patient, month, seed, density_scale)``; scan dicts."""
    from fesim.synthetic.phantom import PhantomSpec, make_phantom, write_phantom

    scans = []
    for patient, month, seed, scale in visits:
        d = Path(folder) / f"{patient}_m{month}"
        if not (d / "dicom").exists():
            write_phantom(make_phantom(PhantomSpec(seed=seed, density_scale=scale,
                                                   spacing_mm=spacing_mm)), d)
        scans.append({"patient": patient, "month": month, "path": str(d / "dicom"),
                      "dxa_abmd_g_cm2": round(0.6 + 0.2 * scale, 3)})
    return scans


def write_manifest(path: Path, scans) -> Path:
    import csv

    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["patient", "month", "path", "dxa_abmd_g_cm2"])
        w.writeheader()
        w.writerows(scans)
    return path


def write_options(path: Path, run: dict, study: dict | None = None) -> Path:
    def val(v):
        return f'"{v}"' if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else repr(v)

    lines = ["[run]"] + [f"{k} = {val(v)}" for k, v in run.items()]
    if study:
        lines += ["[study]"] + [f"{k} = {val(v)}" for k, v in study.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def env_run_one(scan_path, out_dir, **options):
    """:func:`pid_run_one` that also reports the worker's MALLOC_TRIM_THRESHOLD_ ("" if unset)."""
    res = pid_run_one(scan_path, out_dir, **options)
    res["malloc_trim"] = os.environ.get("MALLOC_TRIM_THRESHOLD_", "")
    return res
