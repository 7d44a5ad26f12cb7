"""The result contract of one scan: what ``result.json`` holds and ``results.csv`` tabulates.

:class:`ScanResult` (one scan) and :class:`AnalysisResult` (one load case: ``compression``,
``pullout_left``, ``pullout_right``) own every result key: its name (the field's name), unit,
description and, for the scan, its place in ``results.csv``. The pipeline builds a
:class:`ScanResult` and writes :meth:`ScanResult.to_dict`; the study reads results back with
:meth:`ScanResult.from_dict` / :meth:`ScanResult.from_json`, which validate them, and names
columns by :data:`KEYS` (``KEYS.pullout_strength_N``), never by a spelled-out string.

This module imports no stage: the study reads results without the FE stack.
``python -m fesim.results`` prints the Markdown table of ``docs/results.md``.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from .errors import ResultError


class _Unset:
    """Marks an optional key a result does not hold (absent from result.json, unlike null)."""

    def __repr__(self):
        return "UNSET"

    def __bool__(self):
        return False

    def __reduce__(self):  # one instance, also across processes (pickled by name)
        return "UNSET"


#: Value of an optional field whose key the result does not hold.
UNSET = _Unset()

# kinds of value a key may hold, with the check the reader applies
_KINDS = {
    "number": lambda v: isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)),
    "int": lambda v: isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_)),
    "bool": lambda v: isinstance(v, (bool, np.bool_)),
    "str": lambda v: isinstance(v, str),
    "dict": lambda v: isinstance(v, dict),
    "list": lambda v: isinstance(v, list),
}


def key(unit: str, description: str, kind: str, *, label: str | None = None, short: str | None = None,
        nullable: bool = False, optional: bool = False):
    """A result field with its metadata.

    Parameters
    ----------
    unit : unit of the value ("" for none)
    description : what the value is (the docs table)
    kind : one of ``number``, ``int``, ``bool``, ``str``, ``dict``, ``list`` (checked on reading)
    label, short : display names in study tables and figures (long, short)
    nullable : the value may be null (None)
    optional : the key may be absent (default :data:`UNSET`); a required key has no default
    """
    if kind not in _KINDS:
        raise ValueError(f"unknown kind {kind!r}")
    meta = dict(unit=unit, description=description, kind=kind, label=label, short=short,
                nullable=nullable, optional=optional)
    return field(default=UNSET, metadata=meta) if optional else field(metadata=meta)


def _check(cls, d: dict, where: str) -> dict:
    """The typed values of ``cls``'s fields in ``d``; :class:`ResultError` naming what is wrong."""
    if not isinstance(d, dict):
        raise ResultError(f"{where} is a {type(d).__name__}, not a JSON object")
    missing = [f.name for f in fields(cls) if f.metadata and not f.metadata["optional"] and f.name not in d]
    if missing:
        raise ResultError(f"{where} lacks key(s): {', '.join(missing)}")
    out = {}
    for f in fields(cls):
        if not f.metadata or f.name not in d:
            continue
        v, m = d[f.name], f.metadata
        if not (v is None and m["nullable"]) and not _KINDS[m["kind"]](v):
            raise ResultError(f"{where}: {f.name} must be a {m['kind']}"
                              f"{' or null' if m['nullable'] else ''}, got {v!r}")
        out[f.name] = v
    return out


def _as_dict(obj) -> dict:
    return {f.name: getattr(obj, f.name) for f in fields(obj)
            if f.metadata and getattr(obj, f.name) is not UNSET}


@dataclass(kw_only=True)
class AnalysisResult:
    """One load case's outcome in ``result.json`` (``analyses.<case>``)."""

    name: str = key("", "load case: compression, pullout_left or pullout_right", "str")
    stiffness_N_per_mm: float = key("N/mm", "initial (linear) stiffness: reaction per unit applied displacement",
                                    "number")
    strength_N: float = key("N", "peak of the force-displacement curve", "number")
    displacement_at_peak_mm: float = key("mm", "applied displacement at the peak", "number")
    surrogate_strength_N: float = key("N", "linear surrogate: load at which 2 % of the bone volume exceeds "
                                           "its yield strain", "number")
    curve_displacement_mm: list = key("mm", "applied displacement of each load step (from 0)", "list")
    curve_force_N: list = key("N", "reaction force of each load step", "list")
    yielded_volume_mm3: float = key("mm^3", "bone volume yielded at the peak", "number")
    failed_volume_mm3: float = key("mm^3", "bone volume on the failure branch at the end of the curve", "number")
    n_solves: int = key("", "sparse linear solves", "int")
    n_steps: int = key("", "load steps traced", "int")
    converged_steps: int = key("", "load steps whose secant iterations converged", "int")
    passed_peak: bool = key("", "the curve was traced past its peak", "bool")
    timings_s: dict = key("s", "wall time per part of the analysis and solver statistics", "dict")
    criterion: str = key("", "how the strength is defined (failure model)", "str")
    cg_iterations: int = key("", "CG iterations of all solves (a direct solve counts 1)", "int", optional=True)
    strength_criterion: str = key("", "the same as criterion (the key the scan's result uses)", "str")
    boundary_conditions: dict = key("", "audit of the supported and driven node sets (n_nodes, area_mm2, "
                                        "axial extent, tilt; docs/supports.md)", "dict")

    @classmethod
    def from_strength(cls, res, boundary_conditions: dict) -> "AnalysisResult":
        """From a :class:`fesim.analysis.strength.StrengthResult` and its load case's audit."""
        own = {f.name: getattr(res, f.name) for f in fields(cls)
               if f.name not in ("strength_criterion", "boundary_conditions")}
        return cls(**own, strength_criterion=res.criterion, boundary_conditions=boundary_conditions)

    @classmethod
    def from_dict(cls, d: dict, where: str = "analysis") -> "AnalysisResult":
        """Read and validate one ``analyses.<case>`` entry (:class:`ResultError` if malformed)."""
        return cls(**_check(cls, d, where))

    def to_dict(self) -> dict:
        return _as_dict(self)


@dataclass(kw_only=True)
class ScanResult:
    """One scan's result: the fields are ``result.json``'s keys, in the file's order (keyword
    arguments only, so that required and optional keys can keep that order).

    Keys outside the contract, as a custom per-scan function of the cohort runner may return
    them, are kept in ``extra`` (written after the contract's keys).
    """

    scan_id: str | None = key("", "pseudonymous scan identifier (salted hash) or series key", "str",
                              nullable=True, optional=True)
    pullout_strength_N: float = key(
        "N", "pullout strength (peak force, or the linear surrogate with --strength surrogate), mean over "
             "the screws (NaN without screws)", "number", label="Pullout strength")
    pullout_stiffness_N_per_mm: float = key(
        "N/mm", "pullout stiffness, mean over the screws (NaN without screws)", "number",
        label="Pullout stiffness")
    compression_strength_N: float = key(
        "N", "vertebral compression strength (peak force, or the linear surrogate)", "number",
        label="Compression strength")
    compression_stiffness_N_per_mm: float = key(
        "N/mm", "vertebral compression stiffness", "number", label="Compression stiffness")
    vbmd_trabecular_mg_cm3: float = key(
        "mg/cm^3", "trabecular vBMD: mean BMD in the central elliptical ROI of the vertebral body", "number",
        label="Trabecular vBMD", short="trabecular vBMD")
    vbmd_integral_mg_cm3: float = key(
        "mg/cm^3", "integral vBMD: mineral content of the whole body (cortex included, posterior elements "
                   "excluded) over its volume", "number", optional=True)
    abmd_g_cm2: float = key(
        "g/cm^2", "QCT-derived areal BMD: mineral content of the body over its projected area on the coronal "
                  "plane, as a PA DXA scan sees it", "number", label="QCT-derived aBMD", short="QCT aBMD")
    vbmd_screw_mg_cm3: float = key(
        "mg/cm^3", "mean BMD of the bone in a cylinder around each screw path, mean over the screws (NaN without "
                   "screws)", "number", label="Screw-region vBMD", short="screw vBMD")
    vbmd_screw_per_screw_mg_cm3: list = key("mg/cm^3", "screw-region vBMD of each screw", "list", optional=True)
    n_nodes: int = key("", "mesh nodes", "int")
    n_elements: int = key("", "mesh elements", "int")
    n_dofs: int = key("", "unknowns (3 per node)", "int")
    element_order: int = key("", "1 (tet4, hex8) or 2 (tet10)", "int")
    mesh_type: str = key("", "cell type of the mesh: tet4, tet10 or hex8", "str", optional=True)
    voxel_size_mm: float | None = key("mm", "voxel mesh edge (null for a tet mesh)", "number", nullable=True,
                                      optional=True)
    strength_criterion: str = key("", "how the compression strength is defined (failure model or surrogate)",
                                  "str")
    fesim_version: str = key("", "fesim version that wrote the result", "str")
    timings_s: dict = key("s", "wall time per stage and load case", "dict")
    calibration: dict = key(
        "", "HU -> BMD calibration: slope, intercept, r2, method, BMD material, fitted points, details", "dict",
        optional=True)
    screws: list = key(
        "", "screw plans: side, entry, direction and tip (LPS mm), length, diameter, trajectory, material",
        "list", optional=True)
    mesh_quality: dict = key(
        "", "mesh quality: element volumes, dihedral angles, radius ratios, counts and volumes per region",
        "dict", optional=True)
    material_law: str = key("", "density-modulus law", "str", optional=True)
    ash_conversion: str = key("", "QCT density -> ash density equation", "str", optional=True)
    analyses: dict = key("", "per load case: the fields of AnalysisResult", "dict", optional=True)
    options: dict = key("", "the run options (RunOptions)", "dict", optional=True)
    protocol: str = key("", "analysis protocol (fesim, spine-benchmark)", "str", optional=True)
    provenance: dict = key("", "fesim and library versions, the options, SHA-256 of the scan and label inputs",
                           "dict", optional=True)
    identifiers: dict = key("", "DICOM patient and study identifiers (only with --keep-identifiers)", "dict",
                            optional=True)
    benchmark_stiffness_N_per_mm: float = key("N/mm", "spine-benchmark protocol: stiffness", "number",
                                              optional=True)
    benchmark_failure_load_N: float = key(
        "N", "spine-benchmark protocol: peak force up to the failure displacement", "number", optional=True)
    benchmark_failure_displacement_mm: float = key("mm", "spine-benchmark protocol: failure displacement",
                                                   "number", optional=True)
    benchmark_curve_complete: bool = key(
        "", "spine-benchmark protocol: the curve reached the failure displacement or passed its peak", "bool",
        optional=True)
    longitudinal: dict = key("", "longitudinal consistency: mode, role (baseline, follow-up, off), baseline scan, "
                                 "registration record, frame of the geometry (docs/study.md)", "dict",
                             optional=True)
    longitudinal_mode: str = key("", "longitudinal consistency mode that produced the numbers: off, plan, mesh",
                                 "str", optional=True)
    registration_dice: float = key("", "follow-up registered to baseline: Dice of the vertebra masks", "number",
                                   optional=True)
    registration_correlation: float = key("", "follow-up registered to baseline: BMD correlation in the vertebra",
                                          "number", optional=True)
    registration_rms_bmd_mg_cm3: float = key("mg/cm^3", "follow-up registered to baseline: RMS BMD difference",
                                             "number", optional=True)
    registration_rotation_deg: float = key("deg", "follow-up registered to baseline: rotation angle", "number",
                                           optional=True)
    registration_shift_mm: float = key("mm", "follow-up registered to baseline: translation length", "number",
                                       optional=True)
    warnings: list = key("", "warnings raised while analysing the scan (sorted, unique)", "list", optional=True)
    extra: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ building
    def with_benchmark(self, numbers) -> "ScanResult":
        """Set the ``benchmark_*`` keys from :func:`fesim.analysis.protocols.benchmark_numbers`."""
        self.benchmark_stiffness_N_per_mm = numbers.stiffness_N_per_mm
        self.benchmark_failure_load_N = numbers.failure_load_N
        self.benchmark_failure_displacement_mm = numbers.failure_displacement_mm
        self.benchmark_curve_complete = numbers.curve_complete
        return self

    # ------------------------------------------------------------------ writing
    def to_dict(self) -> dict:
        """The ``result.json`` object: the keys it holds in :data:`JSON_ORDER`, then ``extra``."""
        d = _as_dict(self)
        if isinstance(self.analyses, dict):
            d[KEYS.analyses] = {k: a.to_dict() if isinstance(a, AnalysisResult) else a
                                for k, a in self.analyses.items()}
        return {**d, **self.extra}

    def csv_row(self) -> dict:
        """The scan's ``results.csv`` cells: :data:`RESULT_KEYS` (timings aside), then every
        other scalar key it holds, sorted (lists and objects are not tabulated)."""
        d = self.to_dict()
        row = {k: d[k] for k in CSV_KEYS}
        row.update({k: d[k] for k in sorted(d) if k not in row and k != KEYS.timings_s
                    and not isinstance(d[k], (dict, list))})
        return row

    # ------------------------------------------------------------------ reading
    @classmethod
    def from_dict(cls, d: dict, where: str = "result") -> "ScanResult":
        """Read and validate a result object.

        Raises
        ------
        ResultError
            Not an object, a key of :data:`RESULT_KEYS` missing, a value of the wrong kind
            (e.g. a strength that is not a number), an empty ``fesim_version`` or a malformed
            ``analyses`` entry.
        """
        own = _check(cls, d, where)
        if not own[KEYS.fesim_version].strip():
            raise ResultError(f"{where}: fesim_version is empty; cannot tell which fesim wrote it")
        if isinstance(own.get(KEYS.analyses), dict):
            own[KEYS.analyses] = {k: AnalysisResult.from_dict(a, f"{where}: analyses.{k}")
                                  for k, a in own[KEYS.analyses].items()}
        extra = {k: v for k, v in d.items() if k not in own}
        return cls(**own, extra=extra)

    @classmethod
    def from_json(cls, path) -> "ScanResult":
        """Read and validate ``result.json`` (:class:`ResultError` if unreadable or malformed)."""
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ResultError(f"cannot read {path}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise ResultError(f"{path} is not valid JSON ({exc})") from None
        return cls.from_dict(d, where=str(path))

    @property
    def has_screws(self) -> bool:
        """Whether the scan has a pullout result (a finite pullout strength)."""
        return not math.isnan(self.pullout_strength_N)


def _contract(cls):
    return [f for f in fields(cls) if f.metadata]


#: Every key name of the scan contract, as attributes: ``KEYS.pullout_strength_N`` is
#: ``"pullout_strength_N"`` (a misspelt key is an AttributeError, not a silent None).
KEYS = SimpleNamespace(**{f.name: f.name for f in _contract(ScanResult)})
#: The keys of one analysis (``analyses.<case>``), as attributes.
ANALYSIS_KEYS = SimpleNamespace(**{f.name: f.name for f in _contract(AnalysisResult)})

#: Keys every per-scan result must hold, in the order of the leading ``results.csv`` columns.
RESULT_KEYS = (KEYS.pullout_strength_N, KEYS.pullout_stiffness_N_per_mm, KEYS.compression_strength_N,
               KEYS.compression_stiffness_N_per_mm, KEYS.vbmd_screw_mg_cm3, KEYS.vbmd_trabecular_mg_cm3,
               KEYS.abmd_g_cm2, KEYS.n_nodes, KEYS.n_elements, KEYS.n_dofs, KEYS.element_order,
               KEYS.strength_criterion, KEYS.fesim_version, KEYS.timings_s)
#: The leading ``results.csv`` columns taken from a result (timings are not tabulated).
CSV_KEYS = tuple(k for k in RESULT_KEYS if k != KEYS.timings_s)
#: Order of the keys in ``result.json``: the fields' order.
JSON_ORDER = tuple(f.name for f in _contract(ScanResult))
def key_info(name: str, analysis: bool = False) -> dict:
    """``unit``, ``description``, ``kind``, ``label``, ``short`` of a scan key (or, with
    ``analysis``, of an analysis key); :class:`KeyError` for a key outside the contract."""
    for f in _contract(AnalysisResult if analysis else ScanResult):
        if f.name == name:
            return dict(f.metadata)
    raise KeyError(f"{name!r} is not a {'analysis' if analysis else 'scan'} result key")


def keys_markdown() -> str:
    """The tables of ``docs/results.md``: every key with its unit and description."""
    def table(cls, order):
        info = {f.name: f.metadata for f in _contract(cls)}
        lines = ["| key | unit | required | description |", "|---|---|---|---|"]
        for name in order:
            m = info[name]
            lines.append(f"| `{name}` | {m['unit'] or '-'} | {'no' if m['optional'] else 'yes'} | "
                         f"{m['description']} |")
        return "\n".join(lines)

    return ("## result.json\n\n" + table(ScanResult, JSON_ORDER)
            + "\n\n## result.json → analyses.<case>\n\n"
            + table(AnalysisResult, [f.name for f in _contract(AnalysisResult)]) + "\n")


if __name__ == "__main__":
    print(keys_markdown(), end="")
