"""``fesim study``: manifest -> validated scans -> per-scan runs (resumable) -> report.

:func:`run_study` is the whole study in one call; the scan list can come from a manifest
(:func:`fesim.study.manifest.load_study`) or from any generator of scan dicts (the synthetic
cohort of ``fesim demo``), so that a cohort generator only has to produce
``{"patient", "month", "path", ...}`` dicts.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from fesim.io.atomic import atomic_write_json
from .cohort import BACKENDS, load_failures, load_results_csv, run_cohort
from .manifest import Study, load_study

log = logging.getLogger(__name__)
DEFAULT_BACKEND = "dask"


def effective_options(run_options: dict, default_runner: bool) -> dict:
    """Every run option as the per-scan analysis sees it (defaults filled in) for the methods."""
    if not default_runner:
        return dict(run_options)
    from dataclasses import asdict

    from fesim.pipeline import RunOptions

    return asdict(RunOptions.from_dict(run_options))


def run_study(study, out_dir, options=None, run_options: dict | None = None,
              backend: str | None = None, n_workers: int | None = None,
              scheduler_address: str | None = None, run_one=None, progress=None,
              notes=(), report: bool = True, longitudinal: str | None = None) -> list[dict]:
    """Run a study end to end and write ``results.csv``, ``stats.csv``, the report and figures.

    Parameters
    ----------
    study : path of a manifest CSV, or :class:`~fesim.study.manifest.Study`
    out_dir : path
        Output folder (see :mod:`fesim.study.cohort` for its layout).
    options : path of a TOML options file, or dict, optional
        Used with a manifest path (see :mod:`fesim.study.manifest`).
    run_options : dict, optional
        Run options overriding the options file's ``[run]`` section.
    backend : {"local", "processes", "dask"}, optional
        Default: the options file's, else ``dask`` (a local cluster unless
        ``scheduler_address`` is given).
    n_workers, scheduler_address : optional
        As in :func:`fesim.study.cohort.run_cohort` (``[study] workers``/``scheduler``).
    run_one : callable, optional
        Per-scan function (default :func:`fesim.pipeline.run_scan`).
    progress : bool, optional
        Progress line with ETA on stderr (default: when stderr is a terminal).
    notes : sequence of str
        Remarks quoted at the top of the report (added to ``[study] notes``).
    report : bool
        Write the report (False: results tables only).
    longitudinal : {"off", "plan", "mesh"}, optional
        Longitudinal consistency (:func:`fesim.study.cohort.run_cohort`); default the options
        file's ``[study] longitudinal``, else :func:`fesim.study.cohort.default_longitudinal`
        ("mesh" with the default per-scan function and tetrahedral meshes).

    Returns
    -------
    list of dict
        The ``results.csv`` rows.
    """
    if not isinstance(study, Study):
        study = load_study(study, options)
    s = study.settings
    run = {**study.run_options, **(run_options or {})}
    scheduler_address = scheduler_address or s.get("scheduler")
    backend = backend or ("dask" if scheduler_address else s.get("backend", DEFAULT_BACKEND))
    if backend not in BACKENDS:
        from fesim.errors import InputError

        raise InputError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    n_workers = n_workers or s.get("workers")
    from .cohort import default_longitudinal

    longitudinal = longitudinal or s.get("longitudinal") or default_longitudinal(run, run_one is None)
    out = Path(out_dir)
    t0 = time.perf_counter()
    config = {"options": effective_options(run, run_one is None), "backend": backend,
              "workers": n_workers, "scheduler": scheduler_address,
              "baseline_month": s.get("baseline_month"), "longitudinal": longitudinal}
    atomic_write_json(out / "study.json", {**config, "n_scans": len(study.scans)})
    rows = run_cohort(study.scans, out, run_one=run_one, backend=backend, n_workers=n_workers,
                      scheduler_address=scheduler_address, options=run, progress=progress,
                      longitudinal=longitudinal, baseline_month=s.get("baseline_month"))
    n_fail = len(load_failures(out))
    log.info("study: %d scans analysed, %d failed, in %.1f s", len(rows), n_fail,
             time.perf_counter() - t0)
    if report and rows:
        from .report import write_report

        write_report(load_results_csv(out / "results.csv"), out,
                     notes=[*s.get("notes", []), *notes], config=config,
                     baseline_month=s.get("baseline_month"))
    return rows
