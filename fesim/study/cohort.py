"""Run the per-scan pipeline over a cohort, with resume and failure isolation.

Layout of ``out_dir``::

    scans/<scan_id>/result.json    per-scan result
    scans/<scan_id>/inputs.json    what produced it (path, options), for resume
    scans/<scan_id>/scan.log       the scan's log (stages, warnings, errors)
    scans/<scan_id>/...            the per-scan function's other outputs (VTU, curves)
    results.csv                    one row per successful scan
    failures.json                  scans that failed in the last run, with the error

``scan_id`` is ``<patient>_m<month>``, with ``_r<k>`` appended for a repeat scan (k >= 2).

A scan whose ``result.json`` is valid (:meth:`fesim.results.ScanResult.from_json`: every key
of :data:`~fesim.results.RESULT_KEYS`, values of the right kind) and whose ``inputs.json``
matches the current inputs is not rerun. The inputs include the fesim build (version and
:func:`fesim.provenance.code_fingerprint`), so results of another build of fesim's code are
rerun, with one notice per run saying so.

No partial file is ever visible: each scan runs in a hidden staging folder
(``scans/.partial-<random>/<scan_id>``) which is renamed to ``scans/<scan_id>`` once the scan
has finished (failed scans too, for their log); the tables are written atomically. A run killed
at any point and rerun redoes only the scans without a valid result, and, since every scan
starts from the same global random state (:data:`SCAN_SEED`), ends with the same results as an
uninterrupted run.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
import shutil
import threading
import time
import traceback
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fesim.errors import InputError, ManifestError, ResultError
from fesim.io.atomic import atomic_write_json, atomic_write_text, json_default as _json_default  # noqa: F401
from fesim.results import CSV_KEYS, RESULT_KEYS, ScanResult  # noqa: F401 (RESULT_KEYS: the runner's contract)

log = logging.getLogger(__name__)

#: Columns taken from the scan list rather than from result.json.
SCAN_COLUMNS = ("patient", "month")
INPUT_COLUMNS = ("repeat", "arm", "visit_date", "dxa_tscore", "dxa_abmd_g_cm2")
_RESERVED = {"patient", "month", "path", *INPUT_COLUMNS}
_STAGING = ".partial-"
#: Seed of numpy's global random state at the start of every scan (reproducible reruns).
SCAN_SEED = 0
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
BACKENDS = ("local", "processes", "dask")


@dataclass
class Scan:
    """One scan of the cohort, normalised from a dict or a ScanSpec-like object.

    ``extra`` holds any further fields (e.g. ``density_scale``, ``phantom_seed``), passed to
    the per-scan function as keyword arguments.
    """

    patient: str
    month: int
    path: str | None = None
    dxa_abmd_g_cm2: float | None = None
    extra: dict = field(default_factory=dict)
    repeat: int = 1
    arm: str | None = None
    dxa_tscore: float | None = None
    visit_date: str | None = None

    @property
    def scan_id(self) -> str:
        return f"{self.patient}_m{self.month}" + (f"_r{self.repeat}" if self.repeat != 1 else "")


def _as_scan(item) -> Scan:
    if isinstance(item, Scan):
        return item
    if isinstance(item, dict):
        d = dict(item)
    elif hasattr(item, "as_scan"):
        d = item.as_scan()
    elif hasattr(item, "_asdict"):  # namedtuple
        d = item._asdict()
    else:
        try:
            d = dict(vars(item))
        except TypeError:
            raise InputError(f"cannot read a scan from {type(item).__name__}") from None
    patient = str(d.get("patient", "")).strip()
    if not _SAFE_ID.match(patient) or len(patient) > 64:
        raise InputError(f"patient ID {patient!r} must be 1-64 letters, digits, '.', '_' or '-' "
                         f"(it names the output folder)")
    m = d.get("month")
    try:
        month = int(m) if isinstance(m, (int, float)) else int(str(m).strip())
    except (TypeError, ValueError, OverflowError):
        month = -1
    if month < 0 or month != m and isinstance(m, float):
        raise InputError(f"month of {patient} must be a non-negative integer, got {m!r}")
    dxa = d.get("dxa_abmd_g_cm2")
    if dxa in (None, ""):
        dxa = None
    else:
        try:
            dxa = float(dxa)
        except (TypeError, ValueError):
            dxa = math.nan
        if not (math.isfinite(dxa) and dxa > 0):
            raise InputError(f"dxa_abmd_g_cm2 of {patient} month {month} must be a positive "
                             f"number of g/cm^2, got {d['dxa_abmd_g_cm2']!r}")
    path = d.get("path")
    path = None if path in (None, "") else str(path)
    extra = {k: v for k, v in d.items() if k not in _RESERVED}
    try:
        repeat = int(d.get("repeat") or 1)
    except (TypeError, ValueError):
        repeat = 0
    if repeat < 1:
        raise InputError(f"repeat of {patient} month {month} must be a positive integer, "
                         f"got {d.get('repeat')!r}")
    tscore = d.get("dxa_tscore")
    if tscore in (None, ""):
        tscore = None
    else:
        try:
            tscore = float(tscore)
        except (TypeError, ValueError):
            tscore = math.nan
        if not math.isfinite(tscore):
            raise InputError(f"dxa_tscore of {patient} month {month} must be a number, "
                             f"got {d['dxa_tscore']!r}")
    arm = d.get("arm")
    arm = None if arm in (None, "") else str(arm)
    date = d.get("visit_date")
    date = None if date in (None, "") else str(date)
    return Scan(patient, month, path, dxa, extra, repeat, arm, tscore, date)


def normalise_scans(scans) -> list[Scan]:
    """Validate a scan list; raise :class:`InputError` on bad fields or duplicate visits."""
    out = [_as_scan(s) for s in scans]
    if not out:
        raise InputError("the cohort has no scans")
    ids = [s.scan_id for s in out]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise InputError(f"duplicate patient/month/repeat in the scan list: {', '.join(dup)}")
    return out


def _read_manifest_rows(path: Path):
    """``(fieldnames, rows)`` of a manifest CSV; :class:`ManifestError` for what is not one."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc.strerror or exc}") from None
    if b"\x00" in raw:
        raise ManifestError(f"manifest {path.name} is not a text CSV file (it holds NUL bytes)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"manifest {path.name} is not UTF-8 text (byte {exc.start}); save it as UTF-8 CSV") from None
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
        return reader.fieldnames, list(reader)
    except csv.Error as exc:
        raise ManifestError(f"manifest {path.name} is malformed CSV (line {reader.line_num}: {exc})") from None


def load_manifest(path, allow_outside: bool = False) -> list[dict]:
    """Read a cohort manifest CSV with columns ``patient,month,path[,dxa_abmd_g_cm2]``.

    Relative scan paths are resolved against the manifest's folder. Other columns are ignored
    (with a warning). Scans must lie inside the manifest's folder (the study folder, links
    resolved) unless ``allow_outside``: a manifest cannot make fesim read elsewhere.

    Raises
    ------
    InputError
        Missing file or column, bad month, missing scan path, duplicate visit.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"manifest not found: {path}")
    fieldnames, records = _read_manifest_rows(path)
    missing = {"patient", "month", "path"} - {c.strip() for c in fieldnames or () if c}
    if missing:
        raise ManifestError(f"manifest {path.name} lacks column(s): {', '.join(sorted(missing))}")
    known = ("patient", "month", "path", "dxa_abmd_g_cm2")
    ignored = [c for c in fieldnames if c and c.strip() not in known]
    rows = [{k.strip(): (v if isinstance(v, str) else "").strip() for k, v in r.items()
             if k and k.strip() in known} for r in records]
    if ignored:
        log.warning("manifest %s: ignoring column(s) %s", path.name, ", ".join(ignored))
    for r in rows:
        p = Path(r["path"]).expanduser()
        p = p if p.is_absolute() else (path.parent / p)
        if not r["path"] or not p.exists():
            raise InputError(f"manifest {path.name}: scan of {r['patient']} month {r['month']} "
                             f"not found: {r['path'] or '(empty)'}")
        given, r["path"] = r["path"], str(p.resolve())
        if not allow_outside and not p.resolve().is_relative_to(path.parent.resolve()):
            raise ManifestError(f"manifest {path.name}: scan of {r['patient']} month {r['month']} is "
                                f"outside the study folder {path.parent.resolve()}: {given} (move it "
                                f"in, or allow it with --allow-outside-paths)")
        if r.get("dxa_abmd_g_cm2", None) == "":
            r["dxa_abmd_g_cm2"] = None
    normalise_scans(rows)
    return rows


def read_valid_result(path) -> ScanResult | None:
    """The result in ``path``, or None when missing, unreadable or not a valid result."""
    try:
        return ScanResult.from_json(path)
    except ResultError:
        return None


def _inputs_record(scan: Scan, options: dict) -> dict:
    from fesim.provenance import build_record

    # round-trip through JSON so that the comparison on resume sees the same types
    rec = {"path": scan.path, "options": options, "extra": scan.extra, "fesim": build_record()}
    return json.loads(json.dumps(rec, default=_json_default, sort_keys=True))


def _is_done(scan_dir: Path, scan: Scan, options: dict) -> tuple[ScanResult | None, str | None]:
    """``(result, None)`` for a finished scan to reuse, else ``(None, why)``: ``"build"`` when
    only the fesim build differs (or was not recorded), ``"inputs"`` or ``"result"`` otherwise."""
    res = read_valid_result(scan_dir / "result.json")
    if res is None:
        return None, "result"
    inputs = scan_dir / "inputs.json"
    if inputs.exists():
        try:
            rec = json.loads(inputs.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None, "inputs"
        now = _inputs_record(scan, options)
        if rec != now:
            same_inputs = isinstance(rec, dict) and {k: v for k, v in rec.items() if k != "fesim"} \
                == {k: v for k, v in now.items() if k != "fesim"}
            return None, "build" if same_inputs else "inputs"
    return res, None


def _scan_log(path: Path) -> logging.Handler:
    """A FileHandler on the ``fesim`` logger for this thread's records only."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    me = threading.get_ident()
    handler.addFilter(lambda rec: rec.thread == me)
    return handler


def _commit(stage: Path, final: Path) -> None:
    """Make the finished staging folder ``stage`` the scan folder ``final``."""
    if final.exists():  # a failed or outdated earlier run of this scan
        os.replace(final, stage.parent / f"old-{final.name}")
    os.replace(stage, final)
    shutil.rmtree(stage.parent, ignore_errors=True)


def _run_task(run_one, scan: Scan, scan_dir: str, options: dict):
    """Run one scan; never raises. Returns ``(result, None)`` or ``(None, error dict)``.

    The scan runs in a staging folder that replaces ``scan_dir`` when it ends.
    """
    final = Path(scan_dir)
    stage = final.parent / f"{_STAGING}{uuid.uuid4().hex}" / final.name
    stage.mkdir(parents=True)
    pkg = logging.getLogger("fesim")
    handler, level = _scan_log(stage / "scan.log"), pkg.level
    pkg.addHandler(handler)
    if pkg.getEffectiveLevel() > logging.INFO:
        pkg.setLevel(logging.INFO)
    log.info("scan %s: %s, options %s", scan.scan_id, scan.path, {**options, **scan.extra})
    t_wall, t_cpu = time.perf_counter(), time.process_time()
    # every scan starts from the same global random state (AMG set-up draws from it), so its
    # result does not depend on which worker runs it or on what that worker ran before
    rng_state = np.random.get_state()
    np.random.seed(SCAN_SEED)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = run_one(scan.path, stage, **options, **scan.extra)
        for w in caught:
            log.warning("%s", w.message)
        if not isinstance(res, dict):
            raise TypeError(f"per-scan function returned {type(res).__name__}, not dict")
        res = ScanResult.from_dict(res)
        atomic_write_json(stage / "result.json", res.to_dict())
        atomic_write_json(stage / "inputs.json", _inputs_record(scan, options))
        log.info("scan %s done in %.1f s (CPU %.1f s)", scan.scan_id,
                 time.perf_counter() - t_wall, time.process_time() - t_cpu)
        out = res, None
    except Exception as exc:  # noqa: BLE001 - one bad scan must not stop the cohort
        (stage / "result.json").unlink(missing_ok=True)
        log.exception("scan %s failed", scan.scan_id)
        out = None, {"error_type": type(exc).__name__, "error": str(exc) or repr(exc),
                     "traceback": traceback.format_exc(limit=-3)}
    finally:
        np.random.set_state(rng_state)
        pkg.removeHandler(handler)
        pkg.setLevel(level)
        handler.close()
    _commit(stage, final)
    return out


def _default_run_one():
    from fesim.pipeline import run_scan  # lazy: the study layer must not need the FE stack

    return run_scan


def _collect(future):
    # a worker that died (out of memory, segfault) fails its scan, not the cohort
    try:
        return future.result()
    except Exception as exc:  # noqa: BLE001
        return None, {"error_type": type(exc).__name__, "error": str(exc) or repr(exc),
                      "traceback": ""}


def _execute(todo, run_one, out_dir: Path, options, backend, n_workers, scheduler_address,
             after=None):
    """Yield ``(scan, result, error)`` for each scan in ``todo`` as it finishes.

    ``after`` maps a scan_id to the scans that may start only once it has succeeded (the
    follow-ups of a baseline); they fail without running when it fails.
    """
    after = dict(after or {})
    waiting = {s.scan_id for group in after.values() for s in group}
    first = [s for s in todo if s.scan_id not in waiting]

    def task(s):
        return (_run_task, run_one, s, str(out_dir / "scans" / s.scan_id), options)

    def released(s, err):
        """Scans to start now that ``s`` has ended, and the failures of those that cannot."""
        group = after.pop(s.scan_id, [])
        if err is None:
            return group, []
        why = {"error_type": "BaselineError", "traceback": "",
               "error": f"baseline scan {s.scan_id} failed ({err['error_type']}), so this follow-up "
                        "cannot be registered to it; fix the baseline or use --longitudinal off"}
        return [], [(f, None, dict(why)) for f in group]

    if backend == "local" or not todo:
        queue = list(first)
        while queue:
            s = queue.pop(0)
            fn, *args = task(s)
            res, err = fn(*args)
            yield s, res, err
            more, failed = released(s, err)
            queue += more
            yield from failed
        return
    if backend == "processes":
        from concurrent.futures import FIRST_COMPLETED, wait

        from ..resources import process_pool

        with process_pool(n_workers) as pool:
            futs = {pool.submit(*task(s)): s for s in first}
            while futs:
                done, _ = wait(futs, return_when=FIRST_COMPLETED)
                for f in sorted(done, key=lambda f: todo.index(futs[f])):
                    s = futs.pop(f)
                    res, err = _collect(f)
                    yield s, res, err
                    more, failed = released(s, err)
                    futs.update({pool.submit(*task(m)): m for m in more})
                    yield from failed
        return
    import dask
    from dask.distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler_address is None:
        # dask's nannies set MALLOC_TRIM_THRESHOLD_=65536, which returns every freed array to the
        # OS: the FE pipeline then spends ~30 % more CPU on page faults (measured: 18.5 s vs
        # 12.8 s CPU for one demo scan). Keep the thread limits, leave malloc its default.
        key = "distributed.nanny.pre-spawn-environ"
        environ = {k: v for k, v in (dask.config.get(key, default={}) or {}).items()
                   if k != "MALLOC_TRIM_THRESHOLD_"}
        with dask.config.set({key: environ}):
            cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                   dashboard_address=":0", silence_logs=logging.ERROR)
    client = Client(cluster if cluster is not None else scheduler_address)
    try:
        by_key = {}

        def submit(s):
            f = client.submit(*task(s), pure=False, key=f"fesim-scan-{s.scan_id}-{uuid.uuid4().hex[:12]}")
            by_key[f.key] = s
            return f

        pending = as_completed([submit(s) for s in first])
        for f in pending:
            s = by_key[f.key]
            res, err = _collect(f)
            yield s, res, err
            more, failed = released(s, err)
            for m in more:
                pending.add(submit(m))
            yield from failed
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def default_longitudinal(options: dict, default_runner: bool) -> str:
    """"mesh" (tetrahedral meshes) or "plan" (voxel meshes) with the default per-scan function,
    "off" with a custom one (which may not take the ``longitudinal``/``baseline`` arguments)."""
    if not default_runner:
        return "off"
    return "mesh" if (options or {}).get("mesh", "tet") == "tet" else "plan"


def longitudinal_links(scans, mode: str, out_dir: Path, baseline_month: int | None = None):
    """Scans with their longitudinal role set, and ``{baseline scan_id: [follow-ups]}``.

    With ``mode`` not "off", each patient with more than one scan has a baseline (the first
    scan of ``baseline_month``, default the patient's first month), run with
    ``longitudinal=mode``; every other scan of the patient is a follow-up of it (``baseline``
    = its output folder), repeat scans of the baseline visit included.
    """
    from dataclasses import replace

    if mode == "off":
        return list(scans), {}
    by_patient = {}
    for s in scans:
        by_patient.setdefault(s.patient, []).append(s)
    role, follow = {}, {}
    for pid, group in by_patient.items():
        if len(group) < 2:
            continue
        month = baseline_month if baseline_month is not None else min(s.month for s in group)
        base = [s for s in group if s.month == month and s.repeat == 1]
        if not base:
            continue
        base = base[0]
        role[base.scan_id] = {"longitudinal": mode}
        for s in group:
            if s is not base:
                role[s.scan_id] = {"longitudinal": mode,
                                   "baseline": str(Path(out_dir).resolve() / "scans" / base.scan_id)}
                follow.setdefault(base.scan_id, []).append(s.scan_id)
    out = [replace(s, extra={**s.extra, **role[s.scan_id]}) if s.scan_id in role else s for s in scans]
    return out, follow


def run_cohort(scans, out_dir, run_one=None, backend: str = "local", n_workers: int | None = None,
               scheduler_address: str | None = None, options: dict | None = None,
               progress=None, longitudinal: str | None = None,
               baseline_month: int | None = None) -> list[dict]:
    """Run the per-scan pipeline on every scan, resuming finished ones.

    Parameters
    ----------
    scans : sequence of dict or ScanSpec-like
        Each with ``patient``, ``month`` and ``path`` (None for a phantom scan), optionally
        ``dxa_abmd_g_cm2`` (g/cm^2, copied to the results); further fields are passed to
        ``run_one`` as keyword arguments.
    out_dir : path
        Output folder (created).
    run_one : callable, optional
        ``run_one(scan_path, out_dir, **options) -> dict``; defaults to
        ``fesim.pipeline.run_scan``. Must be picklable for the ``processes``/``dask`` backends.
    backend : {"local", "processes", "dask"}
        Serial in this process, a process pool, or ``dask.distributed``.
    n_workers : int, optional
        Parallel workers (default: number of CPUs, at most the number of scans to run).
    scheduler_address : str, optional
        Existing dask scheduler to use instead of starting a LocalCluster.
    options : dict, optional
        Keyword arguments for every ``run_one`` call (mesh size, element order, ...).
    progress : bool, optional
        Show a progress line with ETA on stderr; default (None): only when stderr is a terminal.
    longitudinal : {"off", "plan", "mesh"}, optional
        Longitudinal consistency for patients with several scans (:mod:`fesim.longitudinal`,
        :func:`longitudinal_links`); default :func:`default_longitudinal`.
        Baselines run first; each follow-up starts when its baseline has succeeded.
    baseline_month : int, optional
        The baseline visit (default: each patient's first month).

    Returns
    -------
    list of dict
        One row per successful scan, in scan-list order, with the ``results.csv`` columns.
        Failures are logged and listed in ``out_dir/failures.json``.
    """
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    scans = normalise_scans(scans)
    options = dict(options or {})
    clash = sorted(set(options) & ({k for s in scans for k in s.extra} | {"longitudinal", "baseline"}))
    if clash:
        raise InputError(f"option(s) also given per scan: {', '.join(clash)}")
    mode = longitudinal or default_longitudinal(options, run_one is None)
    if mode not in ("off", "plan", "mesh"):
        raise InputError(f"longitudinal must be off, plan or mesh, not {mode!r}")
    run_one = run_one or _default_run_one()
    # absolute: workers of a dask scheduler run in their own working directories
    out_dir = Path(out_dir).resolve()
    scans, follow = longitudinal_links(scans, mode, out_dir, baseline_month)
    (out_dir / "scans").mkdir(parents=True, exist_ok=True)
    for stale in (out_dir / "scans").glob(_STAGING + "*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)

    results, failures, todo, n_other_build = {}, {}, [], 0
    for s in scans:
        res, why = _is_done(out_dir / "scans" / s.scan_id, s, options)
        if res is None:
            todo.append(s)
            n_other_build += why == "build"
        else:
            results[s.scan_id] = res
    if n_other_build:
        log.warning("results from a different fesim build: rerunning %d scan(s) (%s)",
                    n_other_build, out_dir)
    ids = {s.scan_id: s for s in todo}
    # a follow-up waits for its baseline only when that still has to run
    after = {b: [ids[f] for f in fs if f in ids] for b, fs in follow.items() if b in ids}
    log.info("cohort: %d scans, %d already done, %d to run (%s)",
             len(scans), len(results), len(todo), backend)
    n_workers = max(1, min(n_workers or os.cpu_count() or 1, max(len(todo), 1)))

    def save():
        # rewritten after every scan so that the tables show progress and survive a kill
        rows = [result_row(s, results[s.scan_id]) for s in scans if s.scan_id in results]
        write_results_csv(rows, out_dir / "results.csv")
        atomic_write_json(out_dir / "failures.json",
                          [failures[s.scan_id] for s in scans if s.scan_id in failures])
        return rows

    rows = save()
    from fesim.progress import Progress

    bar = Progress(len(todo), "study", "scans", enabled=progress)
    try:
        for k, (s, res, err) in enumerate(_execute(todo, run_one, out_dir, options, backend,
                                                   n_workers, scheduler_address, after), 1):
            if err is None:
                results[s.scan_id] = res
                log.info("[%d/%d] scan %s done", k, len(todo), s.scan_id)
            else:
                failures[s.scan_id] = {"patient": s.patient, "month": s.month, "path": s.path,
                                       **err}
                log.warning("[%d/%d] scan %s failed: %s: %s (log: %s)", k, len(todo), s.scan_id,
                            err["error_type"], err["error"],
                            out_dir / "scans" / s.scan_id / "scan.log")
            rows = save()
            bar.update(failed=err is not None, note=s.scan_id)
    finally:
        bar.close()
    return rows


def result_row(scan: Scan, result: ScanResult | dict) -> dict:
    """One scan's ``results.csv`` row: patient, month, :meth:`ScanResult.csv_row
    <fesim.results.ScanResult.csv_row>` (a result's columns holding an input's name aside), inputs."""
    if not isinstance(result, ScanResult):
        result = ScanResult.from_dict(result)
    row = {"patient": scan.patient, "month": scan.month}
    row.update({k: v for k, v in result.csv_row().items() if k not in row and k not in INPUT_COLUMNS})
    row.update({k: getattr(scan, k) for k in INPUT_COLUMNS})
    return row


def csv_columns(rows) -> list[str]:
    """Fixed column order: patient, month, :data:`~fesim.results.CSV_KEYS`, extra result keys
    (sorted), inputs."""
    fixed = list(SCAN_COLUMNS) + list(CSV_KEYS)
    extra = sorted({k for r in rows for k in r} - set(fixed) - set(INPUT_COLUMNS))
    return fixed + extra + list(INPUT_COLUMNS)


def write_results_csv(rows, path) -> None:
    """Write rows to a CSV atomically; None and NaN become empty cells."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=csv_columns(rows), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if v is None or (isinstance(v, float) and math.isnan(v)) else v
                    for k, v in r.items()})
    atomic_write_text(Path(path), buf.getvalue())


def _parse_cell(v: str):
    if v == "":
        return None
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    return v


def load_results_csv(path) -> list[dict]:
    """Read a ``results.csv`` back into rows with numbers parsed (empty cells -> None)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"results file not found: {path}")
    with path.open(newline="", encoding="utf-8") as fh:
        text = {"patient", "arm", "visit_date"}  # IDs keep their leading zeros
        rows = [{k: (v if k in text and v != "" else _parse_cell(v)) for k, v in r.items()}
                for r in csv.DictReader(fh)]
    return rows


def load_failures(out_dir) -> list[dict]:
    """The failures recorded by the last :func:`run_cohort` in ``out_dir`` (empty if none)."""
    p = Path(out_dir) / "failures.json"
    return json.loads(p.read_text(encoding="utf-8")) if p.exists() else []
