"""Vertebra label conventions of common segmentation tools and level resolution.

Built-in conventions (label value -> vertebra level):

``"totalseg_v2"`` (aliases ``"total"``, ``"totalsegmentator"``)
    TotalSegmentator v2 task "total": S1 = 26, L5 = 27, L4 = 28, L3 = 29, L2 = 30, L1 = 31,
    T12 = 32 ... T1 = 43, C7 = 44 ... C1 = 50. Confirmed against the label table stored in
    TotalSegmentator's own ``example_ct_labels.nii.gz`` and ``totalsegmentator/map_to_binary.py``
    (github.com/wasserth/TotalSegmentator).
``"totalseg_v1"``
    TotalSegmentator v1 (104 classes): L5 = 18, L4 = 19, L3 = 20, L2 = 21, L1 = 22,
    T12 = 23 ... T1 = 34, C7 = 35 ... C1 = 41 (no separate S1; sacrum = 92). Confirmed against
    the ``total_v1`` class map kept in ``totalsegmentator/map_to_binary.py``.
``"verse"``
    VerSe challenge: C1..C7 = 1..7, T1..T12 = 8..19, L1..L5 = 20..24, L6 = 25, T13 = 28.
``"bodies_per_level"``
    The per-level vertebral-body map beside the test CT (shared/data README): same numbers
    as VerSe for C1..L5 (T12 = 19, L1 = 20, ..., L5 = 24); its XML label table agrees.

Names stored in the label file itself (``Volume.meta["label_names"]``: TotalSegmentator's
``--ml`` output carries them as a Caret XML table in a NIfTI header extension, written by
``add_label_map_to_nifti`` in ``totalsegmentator/nifti_ext_header.py``; or a JSON sidecar,
see :func:`read_label_map`) win over the built-in tables whenever they name any vertebra.

Convention ``"auto"`` (:func:`detect_convention`) takes such names when the file has them,
and otherwise infers the numbering from the values present and their anatomy: a convention
fits when no value exceeds its class count, some values are vertebrae in it, and those
vertebrae lie in its order along the spine (cranial levels higher in the patient's
superior axis) about a level's height apart. Several fits that read the values as different
levels are refused, naming the candidates.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fesim.errors import InputError
from fesim.registry import Registry


class LabelError(InputError):
    """A vertebra level or label-value list cannot be resolved in a label convention."""


def _levels(first: int, names: list[str], step: int = 1) -> dict[int, str]:
    return {first + step * n: name for n, name in enumerate(names)}


_C = [f"C{n}" for n in range(1, 8)]
_T = [f"T{n}" for n in range(1, 13)]
_L = [f"L{n}" for n in range(1, 6)]


@dataclass(frozen=True)
class Convention:
    """A vertebra numbering: label value -> level, and the tool's largest label value.

    Attributes
    ----------
    name : str
    table : dict
        Label value -> canonical level name (``"L4"``).
    n_classes : int
        Largest label value the tool writes (any structure): a map holding a larger value
        is not in this convention.
    description : str
    """

    name: str
    table: dict
    n_classes: int
    description: str = ""

    def describe(self) -> str:
        return f"{self.name}: {self.description}"


#: The label conventions (registry: ``--convention`` choices come from here).
LABEL_CONVENTIONS = Registry("label convention", error=LabelError)
LABEL_CONVENTIONS.add(Convention(
    "totalseg_v2", _levels(26, ["S1"] + _L[::-1] + _T[::-1] + _C[::-1]), 117,
    "TotalSegmentator v2 'total' (L4 = 28, S1 = 26, T12 = 32)"))
LABEL_CONVENTIONS.add(Convention(
    "totalseg_v1", _levels(18, _L[::-1] + _T[::-1] + _C[::-1]), 104,
    "TotalSegmentator v1, 104 classes (L4 = 19, T12 = 23)"))
LABEL_CONVENTIONS.add(Convention(
    "verse", {**_levels(1, _C + _T + _L), 25: "L6", 28: "T13"}, 28,
    "VerSe challenge (C1 = 1, L4 = 23, L6 = 25, T13 = 28)"))
LABEL_CONVENTIONS.add(Convention(
    "bodies_per_level", _levels(1, _C + _T + _L), 24,
    "per-level vertebral bodies, VerSe numbers C1..L5 (L4 = 23)"))


class _Tables(Mapping):
    """Read-only view ``{name: table}`` of :data:`LABEL_CONVENTIONS`."""

    def __getitem__(self, name):
        return LABEL_CONVENTIONS[name].table

    def __iter__(self):
        return iter(LABEL_CONVENTIONS)

    def __len__(self):
        return len(LABEL_CONVENTIONS)


#: Label value -> level table of each registered convention (a view of the registry).
CONVENTIONS: Mapping = _Tables()
#: Canonical order along the spine, cranial to caudal (T13 and L6 where they occur).
SPINE_ORDER = _C + _T + ["T13"] + _L + ["L6", "S1"]

ALIASES = {"total": "totalseg_v2", "totalsegmentator": "totalseg_v2", "v2": "totalseg_v2",
           "v1": "totalseg_v1", "totalseg": "totalseg_v2"}

_LEVEL_RE = re.compile(r"^(?:vertebrae?[_\s-]*)?([CTLS])[_\s-]*(\d{1,2})$", re.IGNORECASE)


def normalize_level(name: str) -> str | None:
    """Canonical level name (``"L4"``) of ``"L4"``, ``"l4"``, ``"vertebrae_L4"``; else None."""
    m = _LEVEL_RE.match(str(name).strip())
    if m is None:
        return None
    return f"{m.group(1).upper()}{int(m.group(2))}"


def convention_table(convention: str) -> dict[int, str]:
    """Label value -> canonical level name of a built-in convention."""
    return LABEL_CONVENTIONS.get_or_raise(canonical_convention(convention)).table


def canonical_convention(name: str) -> str:
    """The registered name of ``name`` or of its alias (``"total"`` -> ``"totalseg_v2"``)."""
    key = str(name).strip().lower()
    return ALIASES.get(key, key)


def vertebra_names(names_from_file: dict | None) -> dict[int, str]:
    """The entries of a file's label table that name a vertebra, as canonical levels.

    A table of placeholder names ``"L<value>"`` for every value (what TotalSegmentator's
    ``add_label_map_to_nifti`` writes when given no names) names nothing.
    """
    names_from_file = names_from_file or {}
    if names_from_file and all(str(n).strip() == f"L{int(v)}" for v, n in names_from_file.items()):
        return {}
    out = {}
    for value, name in (names_from_file or {}).items():
        level = normalize_level(name)
        if level is not None:
            out[int(value)] = level
    return out


def parse_label_values(text: str) -> set[int]:
    """Label values from ``"1,2,3,4"`` (commas or spaces; ranges ``"1-4"`` allowed)."""
    values: set[int] = set()
    for tok in re.split(r"[,\s]+", str(text).strip()):
        if not tok:
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", tok)
        if m is None:
            raise LabelError(f"bad label value {tok!r} in {text!r}; expected integers like 1,2,3")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) else lo
        if hi < lo:
            raise LabelError(f"bad label range {tok!r}")
        values.update(range(lo, hi + 1))
    if not values:
        raise LabelError("empty list of label values")
    if 0 in values:
        raise LabelError("label value 0 is background and cannot be part of a vertebra")
    return values


def resolve_level(level, convention: str = "totalseg_v2", names_from_file: dict | None = None) -> set[int]:
    """Label values that make up one vertebra.

    Parameters
    ----------
    level : str, int or iterable of int
        A level name (``"L4"``, ``"vertebrae_L4"``), a value list (``"1,2,3,4"``), or label
        values given directly; value lists are accepted as one vertebra as they are.
    convention : str
        Built-in convention used when the file carries no vertebra names.
    names_from_file : dict, optional
        Label table read from the file (``Volume.meta["label_names"]``); wins over
        ``convention`` whenever it names at least one vertebra.

    Returns
    -------
    set of int

    Raises
    ------
    LabelError
        Unknown convention, unparsable level, or a level absent from the table used.
    """
    if isinstance(level, (int,)) and not isinstance(level, bool):
        return parse_label_values(str(level))
    if not isinstance(level, str):
        try:
            return parse_label_values(",".join(str(int(v)) for v in level))
        except (TypeError, ValueError):
            raise LabelError(f"cannot interpret level {level!r}") from None
    if re.fullmatch(r"[\d,\s-]+", level.strip()):
        return parse_label_values(level)
    canon = normalize_level(level)
    if canon is None:
        raise LabelError(f"cannot interpret vertebra level {level!r}; use e.g. 'L4' or '1,2,3,4'")
    from_file = vertebra_names(names_from_file)
    table = from_file if from_file else convention_table(convention)
    source = "the label file's own table" if from_file else f"convention {convention!r}"
    values = {v for v, name in table.items() if name == canon}
    if not values:
        raise LabelError(f"level {canon} is not in {source}")
    return values


def level_name(value: int, convention: str = "totalseg_v2", names_from_file: dict | None = None) -> str | None:
    """Canonical level name of one label value, or None when it is not a vertebra."""
    table = vertebra_names(names_from_file) or convention_table(convention)
    return table.get(int(value))


# ----------------------------------------------------------------------------- detection

@dataclass
class Detection:
    """Outcome of :func:`detect_convention`.

    Attributes
    ----------
    name : str
        Registered convention, or ``"file"`` when the map's own label names are used.
    table : dict
        Label value -> level used to read the map.
    reason : str
        How it was decided (for logs and messages).
    same_as : tuple of str
        Other conventions that read the values present the same way.
    """

    name: str
    table: dict
    reason: str
    same_as: tuple = ()


#: Largest standard deviation (mm) along the superior axis of one vertebra's voxels (a
#: vertebra about 50 mm tall with its arch gives about 14 mm).
MAX_LEVEL_SPREAD_MM = 20.0


def _value_stats(labels) -> dict:
    """Label value -> (voxel count, centroid LPS mm, SD of z in mm) of the non-zero values.

    Centroid and spread are computed only for values that some registered convention calls
    a vertebra (None for the others), in one pass over the map, so a full-body multi-organ
    map costs little more than its vertebrae.
    """
    data = np.asarray(labels.data)
    if data.dtype.kind not in "u":
        from fesim.imaging.nifti import check_label_map

        check_label_map(labels)  # non-negative integers, else NiftiError
        data = data.astype(np.int64)
    flat = data.ravel()
    top = int(flat.max()) if flat.size else 0
    if top == 0:
        return {}
    if top <= 1_000_000:
        counts_all = np.bincount(flat, minlength=top + 1)
        present = np.flatnonzero(counts_all[1:]) + 1
    else:
        present, cnt = np.unique(flat[flat != 0], return_counts=True)
        counts_all = dict(zip(present.tolist(), cnt.tolist()))
    present = [int(v) for v in present]
    wanted = sorted(set(present) & {v for c in LABEL_CONVENTIONS.values() for v in c.table})
    out = {v: (int(counts_all[v]), None, None) for v in present}
    if not wanted:
        return out
    lut = np.zeros(max(wanted) + 1, np.int64)
    lut[wanted] = np.arange(1, len(wanted) + 1)
    code = np.zeros(flat.shape, np.int64)
    small = flat <= max(wanted)
    code[small] = lut[flat[small]]
    nz = np.flatnonzero(code)
    inv = code[nz] - 1
    counts = np.bincount(inv, minlength=len(wanted)).astype(float)
    ijk = np.stack(np.unravel_index(nz, data.shape), axis=1).astype(float)
    mean = np.stack([np.bincount(inv, weights=ijk[:, a], minlength=len(wanted)) for a in range(3)],
                    axis=1) / counts[:, None]
    world = labels.index_to_world(mean)
    # Spread along the patient's superior axis: z is linear in the voxel indices.
    z = ijk @ (labels.direction[2] * labels.spacing)
    zmean = np.bincount(inv, weights=z, minlength=len(wanted)) / counts
    zstd = np.sqrt(np.maximum(np.bincount(inv, weights=z * z, minlength=len(wanted)) / counts - zmean**2, 0.0))
    for n, v in enumerate(wanted):
        out[v] = (int(counts[n]), world[n], float(zstd[n]))
    return out


def _misfit(conv: Convention, stats: dict) -> tuple[str | None, dict]:
    """Why the values of a map do not fit ``conv`` (None when they do), and its reading."""
    present = sorted(stats)
    if present[-1] > conv.n_classes:
        return f"value {present[-1]} exceeds its {conv.n_classes} classes", {}
    reading = {v: conv.table[v] for v in present if v in conv.table}
    if not reading:
        return "no value present is a vertebra in it", {}
    for v in sorted(reading):
        if stats[v][2] > MAX_LEVEL_SPREAD_MM:
            return (f"value {v} ({reading[v]}) spreads {stats[v][2]:.0f} mm (SD) along the spine: not "
                    "one vertebra"), reading
    order = sorted(reading, key=lambda v: SPINE_ORDER.index(reading[v]))
    for up, lo in zip(order[:-1], order[1:]):
        steps = SPINE_ORDER.index(reading[lo]) - SPINE_ORDER.index(reading[up])
        cu, cl = stats[up][1], stats[lo][1]
        if cu[2] <= cl[2]:
            return (f"{up} ({reading[up]}) lies below {lo} ({reading[lo]}): the values run the other way "
                    "along the spine"), reading
        gap = float(np.linalg.norm(cu - cl)) / steps
        if not 8.0 <= gap <= 60.0:
            return (f"{reading[up]} and {reading[lo]} lie {gap:.0f} mm per level apart (expected "
                    "8-60 mm)"), reading
    return None, reading


def _describe_reading(reading: dict) -> str:
    vals = sorted(reading)
    if len(vals) <= 3:
        return ", ".join(f"{v}={reading[v]}" for v in vals)
    return f"{vals[0]}={reading[vals[0]]} ... {vals[-1]}={reading[vals[-1]]}"


def detect_convention(labels) -> Detection:
    """The vertebra numbering of a label map, from its own names or from its values.

    Parameters
    ----------
    labels : Volume
        Label map in LPS mm (its ``meta["label_names"]`` is used when it names vertebrae).

    Returns
    -------
    Detection

    Raises
    ------
    LabelError
        The map's own table names no vertebra; no registered convention fits the values
        (with the reason for each); or several fit and read the values as different levels
        (naming each candidate and its reading). Pass ``--convention`` to decide.
    """
    names = labels.meta.get("label_names") or {}
    from_file = vertebra_names(names)
    if from_file:
        return Detection("file", from_file, "label names stored with the map")
    if names and not all(str(n).strip() == f"L{int(v)}" for v, n in names.items()):
        shown = ", ".join(f"{k}={names[k]}" for k in sorted(names)[:8])
        raise LabelError(f"the label map's own table names no vertebra ({shown}"
                         f"{', ...' if len(names) > 8 else ''}); give --label-values")
    stats = _value_stats(labels)
    if not stats:
        raise LabelError("the label map is empty (no non-zero value)")
    fits, misfits = {}, {}
    for conv in LABEL_CONVENTIONS.values():
        why, reading = _misfit(conv, stats)
        if why is None:
            fits.setdefault(tuple(sorted(reading.items())), []).append(conv.name)
        else:
            misfits[conv.name] = why
    present = sorted(stats)
    shown = present if len(present) <= 12 else present[:6] + ["..."] + present[-3:]
    if not fits:
        reasons = "; ".join(f"{k}: {v}" for k, v in misfits.items())
        raise LabelError(f"no known label convention fits the values present {shown} ({reasons}); "
                         "give --convention or --label-values")
    if len(fits) > 1:
        cands = "; ".join(f"{' = '.join(group)} ({_describe_reading(dict(reading))})"
                          for reading, group in fits.items())
        raise LabelError(f"ambiguous label convention: the values present {shown} fit {cands}; "
                         "give --convention (" + " or ".join(g[0] for g in fits.values()) + ")")
    (reading, group), = fits.items()
    table = LABEL_CONVENTIONS[group[0]].table
    why = (f"values {_describe_reading(dict(reading))} fit {group[0]} only"
           if len(reading) > 1 else f"value {_describe_reading(dict(reading))} fits {group[0]} only")
    return Detection(group[0], table, why, tuple(group[1:]))


def resolve_level_in_map(level, labels, convention: str = "auto") -> tuple[set[int], str]:
    """Label values of one vertebra in a given label map, and how the numbering was chosen.

    Parameters
    ----------
    level : str, int or iterable of int
        As for :func:`resolve_level`; value lists are taken as they are.
    labels : Volume
        The label map (its names and values are used with ``convention="auto"``).
    convention : str
        ``"auto"`` (default) or a registered convention or alias, which overrides detection
        (names stored in the file still win, as with :func:`resolve_level`).

    Returns
    -------
    (set of int, str)
        The values and a one-line account (``"convention verse (values 18=T11 ... 24=L5 fit
        verse only)"``).

    Raises
    ------
    LabelError
        Unknown convention, undetectable or ambiguous numbering, or a level absent from the map.
    """
    names = labels.meta.get("label_names")
    if not isinstance(level, str) or re.fullmatch(r"[\d,\s-]+", level.strip()):
        return resolve_level(level, "totalseg_v2", None), "label values given"
    if str(convention).strip().lower() != "auto":
        conv = canonical_convention(convention)
        values = resolve_level(level, conv, names)
        how = "label names stored with the map" if vertebra_names(names) else f"convention {conv} (given)"
        present = set(np.unique(labels.data).tolist()) - {0}
        if not values & present:
            hint = ""
            try:
                det = detect_convention(labels)
                hint = f"; the map's values fit {det.name} (--convention auto)" if det.name != conv else ""
            except LabelError:
                pass
            shown = sorted(present)[:40]
            raise LabelError(f"level {normalize_level(level)} = value(s) {sorted(values)} in {how} is not "
                             f"in the label map (present: {shown}){hint}")
        return values & present, how
    det = detect_convention(labels)
    canon = normalize_level(level)
    if canon is None:
        raise LabelError(f"cannot interpret vertebra level {level!r}; use e.g. 'L4' or '1,2,3,4'")
    values = {v for v, name in det.table.items() if name == canon}
    how = det.reason if det.name == "file" else f"convention {det.name} detected ({det.reason})"
    present = set(np.unique(labels.data).tolist())
    if not values & present:
        seen = sorted({det.table[v] for v in present if v in det.table}, key=SPINE_ORDER.index)
        raise LabelError(f"level {canon} is not in the label map ({how}; levels present: "
                         f"{', '.join(seen) or 'none'})")
    return values & present, how


def read_label_map(path):
    """Read a NIfTI label map with its names: from the header or from a JSON sidecar.

    The sidecar is ``<name>.json`` beside ``<name>.nii(.gz)``, holding ``{"28":
    "vertebrae_L4", ...}``, or the same under a ``"labels"`` key, or ``{"labels":
    {"vertebrae_L4": 28, ...}}`` (name -> value, as nnU-Net's ``dataset.json``). Names in
    the header win.

    Returns
    -------
    Volume
        As :func:`fesim.imaging.nifti.read_nifti` with ``kind="labels"``; ``meta["label_names"]``
        from the sidecar when the header has none (``meta["label_names_source"]`` says which).
    """
    from fesim.imaging.nifti import read_nifti

    vol = read_nifti(path, kind="labels")
    if vol.meta.get("label_names"):
        vol.meta["label_names_source"] = "header"
        return vol
    p = Path(path)
    stem = p.name[:-7] if p.name.endswith(".nii.gz") else p.stem
    side = p.with_name(stem + ".json")
    if side.is_file():
        names = _sidecar_names(side)
        if names:
            vol.meta["label_names"] = names
            vol.meta["label_names_source"] = side.name
    return vol


def _sidecar_names(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise LabelError(f"unreadable label sidecar {path.name}: {exc}") from None
    if isinstance(doc, dict) and isinstance(doc.get("labels"), dict):
        doc = doc["labels"]
    if not isinstance(doc, dict):
        raise LabelError(f"label sidecar {path.name}: expected a JSON object of value: name")
    names = {}
    for k, v in doc.items():
        if str(k).strip().isdigit() and isinstance(v, str):
            names[int(k)] = v
        elif isinstance(v, int) and not isinstance(v, bool) and str(v) != "0":
            names[int(v)] = str(k)
    return names
