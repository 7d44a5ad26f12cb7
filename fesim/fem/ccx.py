"""Cross-check runner: solve a :class:`~fesim.fem.model.Model` with CalculiX (``ccx``).

:func:`write_job` writes the model with fesim's one deck writer
(:func:`fesim.io.abaqus.write_inp`: C3D4 / C3D10, C3D8 for hex8 with full integration; here one
material per distinct ``(E, nu)``, ``*BOUNDARY`` for every constrained unknown, ``*CLOAD`` for
non-zero nodal forces, ``*NODE PRINT`` of U and RF). :func:`run_ccx` runs it in a temporary
folder and parses the ``.dat`` file.

Precision: the deck carries 13 significant digits; CalculiX prints results with 7
(``%14.6E``), i.e. a relative rounding error below 5e-7 per value. Node order of C3D10
equals VTK's, so the connectivity is written unchanged (1-based).

CalculiX's ``RF`` is the internal nodal force ``K u``; :class:`CcxResult` stores
``reactions = K u - f`` like :class:`~fesim.fem.model.Solution`.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import SolverError
from ..io.abaqus import write_inp


@dataclass
class CcxResult:
    """CalculiX solution: displacements (N, 3) mm, reactions (3N,) N, wall time (s)."""

    u: np.ndarray
    reactions: np.ndarray
    wall_s: float
    info: dict = field(default_factory=dict)


def ccx_executable(name: str = "ccx") -> str | None:
    """Path of the CalculiX executable, or ``None`` when it is not installed."""
    return shutil.which(os.environ.get("FESIM_CCX", name))


def job_step(model) -> dict:
    """The model's constraints and loads as one deck step (:func:`fesim.io.abaqus.write_inp`):
    a ``*BOUNDARY`` line per constrained unknown, a ``*CLOAD`` line per non-zero nodal force."""
    node, comp = model.bc_dofs // 3, model.bc_dofs % 3 + 1
    nz = np.nonzero(model.forces)[0]
    return {"name": "static",
            "boundary": list(zip(node.tolist(), comp.tolist(), comp.tolist(), model.bc_values.tolist())),
            "cload": list(zip((nz // 3).tolist(), (nz % 3 + 1).tolist(), model.forces[nz].tolist()))}


def write_job(model, path, reactions: bool = True) -> Path:
    """Write ``model`` as a CalculiX job deck: exact materials (one per distinct ``(E, nu)``),
    13 significant digits, displacements (and reactions) printed to the ``.dat`` file."""
    write_inp(path, model.mesh, model.E, model.nu, n_bins=None, steps=[job_step(model)], digits=13,
              output="dat", reactions=reactions)
    return Path(path)


def _dat_block(text: str, header: str, n_nodes: int) -> np.ndarray | None:
    start = text.find(header)
    if start < 0:
        return None
    body = text[text.index("\n", start) + 1:].lstrip("\n")
    end = body.find("\n\n")
    block = body if end < 0 else body[:end]
    vals = np.array(block.split(), dtype=float).reshape(-1, 4)
    out = np.zeros((n_nodes, 3))
    out[vals[:, 0].astype(np.int64) - 1] = vals[:, 1:]
    return out


def read_dat(path, n_nodes: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Displacements and RF (N, 3) from a CalculiX ``.dat`` file (``None`` when absent)."""
    text = Path(path).read_text()
    return (_dat_block(text, "displacements (vx,vy,vz)", n_nodes),
            _dat_block(text, "forces (fx,fy,fz)", n_nodes))


def _limit_memory(max_bytes):
    def fn():
        resource.setrlimit(resource.RLIMIT_AS, (int(max_bytes), int(max_bytes)))
    return fn


def run_ccx(model, workdir=None, timeout: float | None = None, threads: int = 2,
            max_memory_bytes: float | None = None, reactions: bool = True,
            keep: bool = False) -> CcxResult:
    """Solve ``model`` with CalculiX's default (SPOOLES direct) solver.

    Parameters
    ----------
    model : fesim.fem.model.Model
    workdir : folder for the job; a temporary folder (removed afterwards unless ``keep``)
        when ``None``
    timeout : wall-time limit in s for ``ccx``
    threads : OpenMP threads for ``ccx``
    max_memory_bytes : address-space limit of the ``ccx`` process (protects shared machines)
    reactions : parse reaction forces as well

    Returns
    -------
    CcxResult
        ``wall_s`` is the ``ccx`` run time only (deck writing and parsing excluded); ``info``
        has ``write_s``, ``parse_s``, ``peak_rss_bytes`` and ``workdir`` (when kept).

    Raises
    ------
    SolverError
        When ``ccx`` is not installed, fails, runs out of time or memory, or writes no results.
    """
    exe = ccx_executable()
    if exe is None:
        raise SolverError("CalculiX (ccx) is not installed or not on PATH")
    tmp = None
    if workdir is None:
        tmp = tempfile.mkdtemp(prefix="fesim_ccx_")
        workdir = tmp
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    try:
        t = time.perf_counter()
        write_job(model, work / "job.inp", reactions=reactions)
        write_s = time.perf_counter() - t
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), CCX_NPROC_EQUATION_SOLVER=str(threads),
                   CCX_NPROC_STIFFNESS=str(threads), CCX_NPROC_RESULTS=str(threads))
        pre = _limit_memory(max_memory_bytes) if max_memory_bytes else None
        t = time.perf_counter()
        try:
            with open(work / "ccx.log", "w") as log:
                proc = subprocess.Popen([exe, "-i", "job"], cwd=work, env=env, stdout=log,
                                        stderr=subprocess.STDOUT, preexec_fn=pre)
                try:
                    _, status, ru = _wait(proc, timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                    raise SolverError(f"ccx did not finish within {timeout:g} s") from None
        finally:
            wall = time.perf_counter() - t
        rc = os.waitstatus_to_exitcode(status)
        tail = (work / "ccx.log").read_text(errors="replace")[-400:].strip().replace("\n", " | ")
        if rc != 0:
            raise SolverError(f"ccx failed (exit {rc}): {tail[-200:]}")
        t = time.perf_counter()
        u, rf = read_dat(work / "job.dat", model.n_nodes)
        if u is None:
            raise SolverError(f"ccx wrote no displacements: {tail[-200:]}")
        r = None if rf is None else rf.ravel() - model.forces
        info = {"write_s": write_s, "parse_s": time.perf_counter() - t,
                "peak_rss_bytes": ru.ru_maxrss * 1024, "threads": threads}
        if keep or tmp is None:
            info["workdir"] = str(work)
        return CcxResult(u, r, wall, info)
    finally:
        if tmp is not None and not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def _wait(proc, timeout):
    """``os.wait4`` (for the child's peak memory) with an optional deadline in s."""
    if timeout is None:
        pid, status, ru = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        return pid, status, ru
    deadline = time.monotonic() + timeout
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return pid, status, ru
        if time.monotonic() > deadline:
            raise subprocess.TimeoutExpired(proc.args, timeout)
        time.sleep(0.05)
