"""A study's inputs: the CSV manifest (one row per scan) and the TOML file of study options.

Manifest columns (header names; order free)::

    patient          pseudonymous ID (letters, digits, '.', '_', '-')          required
    month | visit_date   months since baseline, or an ISO date (YYYY-MM-DD)    one required
    path             DICOM folder or NIfTI CT file (relative to the manifest)   required
    labels           label map (NIfTI) on the CT grid                           optional
    level            vertebra in the label map, e.g. L4                         optional
    dxa_abmd_g_cm2   DXA areal BMD, g/cm^2                                       optional
    dxa_tscore       DXA T-score                                                optional
    arm              treatment arm                                              optional
    repeat           1 for the first scan of a visit, 2, 3 for repeat scans     optional

With dates, the month of a visit is the whole number of months (30.4375 days) since the
patient's earliest date. Options file (TOML)::

    [study]                 # all optional
    baseline_month = 0
    backend = "processes"   # local | processes | dask
    workers = 2
    scheduler = "tcp://host:8786"
    notes = ["Remarks quoted at the top of the report"]
    longitudinal = "mesh"   # off | plan | mesh: follow-ups registered to baseline (fesim.longitudinal)
    [run]                   # any fesim.pipeline.RunOptions field
    mesh_size_mm = 2.0

:func:`load_study` checks everything up front and raises one :class:`ManifestError` listing
every problem (missing files, bad values, duplicate visits, unknown levels, patients without a
baseline visit).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

from fesim.errors import ManifestError

COLUMNS = ("patient", "month", "visit_date", "path", "labels", "level", "dxa_abmd_g_cm2",
           "dxa_tscore", "arm", "repeat")
STUDY_KEYS = {"baseline_month": int, "backend": str, "workers": int, "scheduler": str, "notes": list,
              "longitudinal": str}
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
DAYS_PER_MONTH = 30.4375


@dataclass
class Study:
    """A validated study: scan dicts for :func:`fesim.study.cohort.run_cohort`, options."""

    scans: list
    run_options: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)


def read_options(path) -> tuple[dict, dict, list[str]]:
    """``(run options, study settings, problems)`` of a TOML options file."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    from fesim.pipeline import RunOptions

    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}, {}, [f"options file not found: {path}"]
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        return {}, {}, [f"options file {path.name} is not valid TOML: {exc}"]
    problems = []
    unknown = set(data) - {"run", "study"}
    if unknown:
        problems.append(f"options file: unknown section(s) {', '.join(sorted(unknown))} "
                        "(use [run] and [study])")
    run, study = dict(data.get("run", {})), dict(data.get("study", {}))
    names = {f.name for f in fields(RunOptions)}
    for k in sorted(set(run) - names):
        problems.append(f"options file [run]: unknown option {k!r}")
    for k in sorted(set(study) - set(STUDY_KEYS)):
        problems.append(f"options file [study]: unknown key {k!r} "
                        f"(known: {', '.join(STUDY_KEYS)})")
    for k, typ in STUDY_KEYS.items():
        if k in study and not isinstance(study[k], typ):
            problems.append(f"options file [study]: {k} must be {typ.__name__}, got {study[k]!r}")
    if isinstance(study.get("longitudinal"), str) and study["longitudinal"] not in ("off", "plan", "mesh"):
        problems.append(f"options file [study]: longitudinal must be off, plan or mesh, "
                        f"got {study['longitudinal']!r}")
    for k in ("rod_densities", "screw_entry", "screw_direction", "export"):
        if isinstance(run.get(k), list):
            run[k] = tuple(run[k])
    return run, study, problems


def _month_of(row, first_date) -> int:
    d = dt.date.fromisoformat(row["visit_date"])
    return int(round((d - first_date).days / DAYS_PER_MONTH))


def load_study(manifest, options=None, baseline_month: int | None = None,
               allow_outside: bool = False) -> Study:
    """Read and validate a manifest (and options file); raise :class:`ManifestError` listing all problems.

    Parameters
    ----------
    manifest : path
        CSV file (see the module docstring).
    options : path or dict, optional
        TOML options file, or an already-read ``{"run": {...}, "study": {...}}`` dict.
    baseline_month : int, optional
        Overrides ``[study] baseline_month`` (default 0).
    allow_outside : bool
        Accept scans and label maps outside the manifest's folder (links resolved); by default
        a manifest cannot make fesim read elsewhere.
    """
    from fesim.study.cohort import _read_manifest_rows

    from fesim.imaging.labels import CONVENTIONS, normalize_level

    known_levels = {name for table in CONVENTIONS.values() for name in table.values()}

    manifest = Path(manifest)
    if isinstance(options, dict):
        run, study, problems = dict(options.get("run", {})), dict(options.get("study", {})), []
    elif options is not None:
        run, study, problems = read_options(options)
    else:
        run, study, problems = {}, {}, []
    if baseline_month is not None:
        study["baseline_month"] = int(baseline_month)
    base = int(study.get("baseline_month", 0))
    if not manifest.is_file():
        raise ManifestError(manifest, problems + [f"manifest not found: {manifest}"])
    fieldnames, records = _read_manifest_rows(manifest)  # NUL bytes, encoding, quoting refused
    header = [c.strip() for c in fieldnames or () if c]
    raw = [{k.strip(): (v if isinstance(v, str) else "").strip() for k, v in r.items() if k} for r in records]
    missing = [c for c in ("patient", "path") if c not in header]
    if "month" not in header and "visit_date" not in header:
        missing.append("month or visit_date")
    if missing:
        raise ManifestError(manifest, problems + [f"missing column(s): {', '.join(missing)}"])
    ignored = [c for c in header if c not in COLUMNS]
    if ignored:
        problems.append(f"unknown column(s) {', '.join(ignored)} (known: {', '.join(COLUMNS)})")
    if not raw:
        problems.append("the manifest has no rows")

    rows, first_dates = [], {}
    for i, r in enumerate(raw, start=2):  # line numbers as a spreadsheet shows them
        where = f"line {i}"
        pid = r.get("patient", "")
        if not _SAFE_ID.match(pid):
            problems.append(f"{where}: patient ID {pid!r} must be letters, digits, '.', '_' or '-'")
            continue
        where += f" ({pid})"
        if r.get("visit_date"):
            try:
                d = dt.date.fromisoformat(r["visit_date"])
                first_dates[pid] = min(first_dates.get(pid, d), d)
            except ValueError:
                problems.append(f"{where}: visit_date {r['visit_date']!r} is not a YYYY-MM-DD date")
                continue
        elif not r.get("month"):
            problems.append(f"{where}: no month or visit_date")
            continue
        else:
            try:
                if int(r["month"]) < 0:
                    raise ValueError
            except ValueError:
                problems.append(f"{where}: month {r['month']!r} is not a non-negative integer")
                continue
        for key in ("path", "labels"):
            if not r.get(key):
                if key == "path":
                    problems.append(f"{where}: no scan path")
                continue
            p = Path(r[key]).expanduser()
            p = p if p.is_absolute() else manifest.parent / p
            what = "scan" if key == "path" else "label map"
            if not p.exists():
                problems.append(f"{where}: {what} not found: {r[key]}")
            elif not allow_outside and not p.resolve().is_relative_to(manifest.parent.resolve()):
                problems.append(f"{where}: {what} {r[key]} is outside the study folder "
                                f"{manifest.parent.resolve()} (move it in, or allow it with --allow-outside-paths)")
            r[key] = str(p.resolve())
        if r.get("level") and normalize_level(r["level"]) not in known_levels:
            problems.append(f"{where}: unknown vertebral level {r['level']!r} (e.g. L4, T12)")
        for key, positive in (("dxa_abmd_g_cm2", True), ("dxa_tscore", False)):
            if r.get(key):
                try:
                    v = float(r[key])
                    if not math.isfinite(v) or (positive and v <= 0):
                        raise ValueError
                except ValueError:
                    problems.append(f"{where}: {key} {r[key]!r} is not a "
                                    f"{'positive ' if positive else ''}number")
        if r.get("repeat") and not (r["repeat"].isdigit() and int(r["repeat"]) >= 1):
            problems.append(f"{where}: repeat {r['repeat']!r} is not a positive integer")
        rows.append((i, r))

    scans, seen = [], {}
    for i, r in rows:
        if r.get("visit_date"):
            if r["patient"] not in first_dates:
                continue
            month = _month_of(r, first_dates[r["patient"]])
        else:
            month = int(r["month"])
        key = (r["patient"], month, int(r["repeat"]) if r.get("repeat", "").isdigit() else 1)
        if key in seen:
            problems.append(f"line {i} ({r['patient']}): duplicate visit month {month}"
                            f"{' repeat ' + str(key[2]) if key[2] > 1 else ''} (also line {seen[key]}); "
                            "give repeat scans a 'repeat' number")
            continue
        seen[key] = i
        scan = {"patient": r["patient"], "month": month, "path": r.get("path") or None}
        for k in ("dxa_abmd_g_cm2", "dxa_tscore", "arm", "repeat", "visit_date", "labels", "level"):
            if r.get(k):
                scan[k] = r[k]
        scans.append(scan)
    months_of = {}
    for s in scans:
        months_of.setdefault(s["patient"], set()).add(s["month"])
    for pid, ms in months_of.items():
        if base not in ms:
            problems.append(f"patient {pid} has no baseline visit (month {base}); visits: "
                            f"{', '.join(str(m) for m in sorted(ms))}")
    arms = {}
    for s in scans:
        arms.setdefault(s["patient"], set()).add(s.get("arm"))
    for pid, a in arms.items():
        if len(a) > 1:
            problems.append(f"patient {pid} is in more than one arm: "
                            f"{', '.join(sorted(str(x) for x in a))}")
    if problems:
        raise ManifestError(manifest, problems)
    # a per-scan label map or level overrides the options file's, which fills the gaps
    for key in ("labels", "level"):
        if any(key in s for s in scans):
            default = run.pop(key, None)
            for s in scans:
                if key not in s and default is not None:
                    s[key] = default
    return Study(scans, run, study)
