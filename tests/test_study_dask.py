"""The dask backend against a real scheduler and two workers, each a separate process on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fesim.study import cohort as co
from study_helpers import (QUICK_RUN, dask_cli, free_port, pid_run_one, start_process,
                           stop_process, worker_env, write_manifest, write_options,
                           write_phantom_scans)

import dask.distributed as distributed  # noqa: E402  (a core dependency: never skipped)


@pytest.fixture
def dask_cluster(tmp_path):
    """``tcp://127.0.0.1:PORT`` of a scheduler with two single-threaded workers (own processes)."""
    cli = dask_cli()
    if cli is None:  # installed with dask[distributed]: skip locally, fail in CI
        from conftest import _tool_missing

        _tool_missing("the dask command line (dask scheduler / dask worker) is not installed")
    port = free_port()
    addr = f"tcp://127.0.0.1:{port}"
    procs = []
    try:
        procs.append(start_process([*cli, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                    "--no-dashboard"], tmp_path / "scheduler.log"))
        for i in range(2):
            procs.append(start_process([*cli, "worker", addr, "--host", "127.0.0.1", "--nthreads", "1",
                                        "--nworkers", "1", "--no-dashboard", "--name", f"w{i}",
                                        "--local-directory", str(tmp_path / f"w{i}")],
                                       tmp_path / f"worker{i}.log"))
        with distributed.Client(addr, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
            assert len(client.scheduler_info()["workers"]) == 2
        yield addr
    finally:
        for p in reversed(procs):
            stop_process(p)


def test_study_through_real_scheduler_and_two_workers(tmp_path, dask_cluster):
    scans = [{"patient": f"P{i}", "month": m, "path": f"/scan/{i}", "density_scale": 0.6 + 0.1 * i + m / 200}
             for i in range(4) for m in (0, 12)]
    scans[3]["path"] = "/scan/bad"
    rows = co.run_cohort(scans, tmp_path / "dask", run_one=pid_run_one, backend="dask",
                         scheduler_address=dask_cluster)
    local = co.run_cohort(scans, tmp_path / "local", run_one=pid_run_one)
    assert rows == local and len(rows) == 7
    fails = co.load_failures(tmp_path / "dask")
    assert [(f["patient"], f["month"]) for f in fails] == [("P1", 12)] and "cannot mesh" in fails[0]["error"]
    pids = {(tmp_path / "dask" / "scans" / f"{r['patient']}_m{r['month']}" / "worker_pid.txt").read_text()
            for r in rows}
    assert len(pids) == 2 and str(__import__("os").getpid()) not in pids  # both workers, not us
    # resume through the cluster: nothing left to do but the failed scan
    again = co.run_cohort(scans, tmp_path / "dask", run_one=pid_run_one, backend="dask",
                          scheduler_address=dask_cluster)
    assert again == rows


@pytest.mark.slow
def test_fesim_study_cli_on_real_scans_through_the_cluster(tmp_path, dask_cluster):
    scans = write_phantom_scans(tmp_path / "in", [("P01", 0, 3, 0.62), ("P01", 12, 3, 0.70),
                                                  ("P02", 0, 4, 0.75)])
    man = write_manifest(tmp_path / "m.csv", scans)
    opts = write_options(tmp_path / "o.toml", {**QUICK_RUN, "write_vtk": False})
    proc = subprocess.run([sys.executable, "-m", "fesim", "study", str(man), "--out", "out",
                           "--options", str(opts), "--scheduler", dask_cluster],
                          cwd=tmp_path, env=worker_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert "3/3 scan(s) analysed" in proc.stdout
    rows = co.load_results_csv(tmp_path / "out" / "results.csv")
    assert len(rows) == 3 and all(r["pullout_strength_N"] > 0 for r in rows)
    cfg = json.loads((tmp_path / "out" / "study.json").read_text())
    assert cfg["backend"] == "dask" and cfg["scheduler"] == dask_cluster
    assert (tmp_path / "out" / "report.html").stat().st_size > 10000
    # the workers run in their own working directories: the scans' files must still land in
    # the study's folder (a follow-up reads its baseline's files from there)
    assert len(list((tmp_path / "out" / "scans").glob("*/result.json"))) == 3


def test_local_cluster_workers_keep_the_default_malloc_trim(tmp_path):
    code = ("from fesim.study.cohort import run_cohort\n"
            "from study_helpers import env_run_one\n"
            "if __name__ == '__main__':\n"
            f"    rows = run_cohort([{{'patient': 'P1', 'month': 0}}], {str(tmp_path)!r}, run_one=env_run_one,"
            " backend='dask', n_workers=1)\n"
            "    print('TRIM=' + repr(rows[0]['malloc_trim']))\n")
    (tmp_path / "run.py").write_text(code)
    env = worker_env()
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    proc = subprocess.run([sys.executable, str(tmp_path / "run.py")], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "TRIM=''" in proc.stdout  # not set in the worker (dask's default sets 65536)
