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

Names stored in the label file itself (``Volume.meta["label_names"]``) win over the
built-in tables whenever they name any vertebra.
"""

from __future__ import annotations

import re

from fesim.errors import InputError


class LabelError(InputError):
    """A vertebra level or label-value list cannot be resolved in a label convention."""


def _levels(first: int, names: list[str], step: int = 1) -> dict[int, str]:
    return {first + step * n: name for n, name in enumerate(names)}


_C = [f"C{n}" for n in range(1, 8)]
_T = [f"T{n}" for n in range(1, 13)]
_L = [f"L{n}" for n in range(1, 6)]

CONVENTIONS: dict[str, dict[int, str]] = {
    # descending values from S1 upwards
    "totalseg_v2": _levels(26, ["S1"] + _L[::-1] + _T[::-1] + _C[::-1]),
    "totalseg_v1": _levels(18, _L[::-1] + _T[::-1] + _C[::-1]),
    "verse": {**_levels(1, _C + _T + _L), 25: "L6", 28: "T13"},
    "bodies_per_level": _levels(1, _C + _T + _L),
}

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
    key = ALIASES.get(convention.lower(), convention.lower())
    if key not in CONVENTIONS:
        raise LabelError(
            f"unknown label convention {convention!r}; known: {', '.join(sorted(CONVENTIONS))}"
        )
    return CONVENTIONS[key]


def vertebra_names(names_from_file: dict | None) -> dict[int, str]:
    """The entries of a file's label table that name a vertebra, as canonical levels."""
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
