"""Cohort statistics: correlations, regression, changes from baseline, dependent correlations.

All functions drop pairs with a missing value (None or NaN) and return NaN together with a
``note`` instead of raising when there are too few observations (n < 3) or no variance.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as sps

#: Measures summarised per time point, with display labels and units.
MEASURES = {
    "pullout_strength_N": ("Pullout strength", "N"),
    "pullout_stiffness_N_per_mm": ("Pullout stiffness", "N/mm"),
    "compression_strength_N": ("Compression strength", "N"),
    "compression_stiffness_N_per_mm": ("Compression stiffness", "N/mm"),
    "vbmd_screw_mg_cm3": ("Screw-region vBMD", "mg/cm^3"),
    "vbmd_trabecular_mg_cm3": ("Trabecular vBMD", "mg/cm^3"),
    "abmd_g_cm2": ("QCT-derived aBMD", "g/cm^2"),
    "dxa_abmd_g_cm2": ("DXA aBMD", "g/cm^2"),
}
POS = "pullout_strength_N"
#: (y, x) pairs correlated at every time point.
CORRELATION_PAIRS = (
    (POS, "vbmd_screw_mg_cm3"), (POS, "vbmd_trabecular_mg_cm3"), (POS, "abmd_g_cm2"),
    (POS, "dxa_abmd_g_cm2"), ("compression_strength_N", "vbmd_trabecular_mg_cm3"),
)
NAN = float("nan")


@dataclass
class Correlation:
    """Pearson r with two-sided p and Fisher-z confidence interval, plus Spearman rho."""

    n: int
    r: float = NAN
    p: float = NAN
    ci_low: float = NAN
    ci_high: float = NAN
    rho: float = NAN
    p_rho: float = NAN
    note: str = ""


@dataclass
class Regression:
    """Least-squares line ``y = slope * x + intercept`` with R^2 and slope p-value."""

    n: int
    slope: float = NAN
    intercept: float = NAN
    r2: float = NAN
    p: float = NAN
    slope_stderr: float = NAN
    note: str = ""


@dataclass
class Change:
    """Per-patient % change from baseline: mean, SD, paired t-test and Wilcoxon p."""

    n: int
    mean_pct: float = NAN
    sd_pct: float = NAN
    p_ttest: float = NAN
    p_wilcoxon: float = NAN
    note: str = ""


@dataclass
class DependentCorrelationTest:
    """Meng, Rosenthal & Rubin (1992) z-test of r(y, x1) vs r(y, x2) on the same subjects.

    ``ci_low``/``ci_high`` bound the difference of Fisher z values, ``z(r1) - z(r2)``.
    """

    n: int
    r1: float = NAN
    r2: float = NAN
    r12: float = NAN
    z: float = NAN
    p: float = NAN
    ci_low: float = NAN
    ci_high: float = NAN
    note: str = ""


def as_dict(obj) -> dict:
    """A result dataclass as a JSON-friendly dict (NaN -> None)."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in asdict(obj).items()}


def _to_float(values) -> np.ndarray:
    return np.array([NAN if v is None or v == "" else float(v) for v in values], dtype=float)


def paired(x, y) -> tuple[np.ndarray, np.ndarray]:
    """``x`` and ``y`` as float arrays with pairs holding a None/NaN removed."""
    x, y = _to_float(x), _to_float(y)
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in length: {x.size} vs {y.size}")
    ok = np.isfinite(x) & np.isfinite(y)
    return x[ok], y[ok]


def _degenerate(x, y) -> str:
    if x.size < 3:
        return f"n={x.size} < 3"
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return "no variance"
    return ""


def fisher_ci(r: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Confidence interval of a Pearson r by Fisher's z: ``tanh(atanh r +- z_a / sqrt(n-3))``."""
    if n <= 3 or not np.isfinite(r):
        return NAN, NAN
    if abs(r) >= 1.0:
        return float(r), float(r)
    half = sps.norm.ppf(0.5 + level / 2) / math.sqrt(n - 3)
    z = math.atanh(r)
    return math.tanh(z - half), math.tanh(z + half)


def correlation(x, y, level: float = 0.95) -> Correlation:
    """Pearson r (p, Fisher-z CI) and Spearman rho (p) of paired samples."""
    x, y = paired(x, y)
    out = Correlation(n=int(x.size))
    out.note = _degenerate(x, y)
    if out.note:
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exact p for n=3 etc.; values are still correct
        pr = sps.pearsonr(x, y)
        sr = sps.spearmanr(x, y)
    out.r, out.p = float(pr.statistic), float(pr.pvalue)
    out.rho, out.p_rho = float(sr.statistic), float(sr.pvalue)
    out.ci_low, out.ci_high = fisher_ci(out.r, out.n, level)
    if out.n == 3:
        out.note = "n=3: no confidence interval"
    return out


def regression(x, y) -> Regression:
    """Ordinary least-squares fit of ``y`` on ``x``."""
    x, y = paired(x, y)
    out = Regression(n=int(x.size))
    if x.size < 3:
        out.note = f"n={x.size} < 3"
    elif np.ptp(x) == 0:
        out.note = "no variance in x"
    elif np.ptp(y) == 0:
        out.note = "no variance in y"
        out.slope, out.intercept = 0.0, float(y[0])
    if out.note:
        return out
    res = sps.linregress(x, y)
    out.slope, out.intercept = float(res.slope), float(res.intercept)
    out.r2, out.p, out.slope_stderr = float(res.rvalue ** 2), float(res.pvalue), float(res.stderr)
    return out


def percent_change(baseline, follow_up) -> Change:
    """% change ``100 (follow_up - baseline) / baseline`` per subject, with paired tests.

    The paired t-test and the Wilcoxon signed-rank test compare follow-up with baseline
    values (two-sided).
    """
    b, f = paired(baseline, follow_up)
    out = Change(n=int(b.size))
    if b.size < 3:
        out.note = f"n={b.size} < 3"
        return out
    if np.any(b == 0):
        out.note = "zero baseline value"
        return out
    pct = 100.0 * (f - b) / b
    out.mean_pct, out.sd_pct = float(pct.mean()), float(pct.std(ddof=1))
    d = f - b
    if np.all(d == 0):
        out.note = "no change in any subject"
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out.p_ttest = float(sps.ttest_rel(f, b).pvalue)
        out.p_wilcoxon = float(sps.wilcoxon(f, b).pvalue)
    return out


def meng_test(r1: float, r2: float, r12: float, n: int, level: float = 0.95) -> DependentCorrelationTest:
    """Compare two dependent correlations sharing a variable (Meng, Rosenthal & Rubin 1992).

    Tests H0: rho(y, x1) = rho(y, x2), given r1 = r(y, x1), r2 = r(y, x2), r12 = r(x1, x2)
    on the same ``n`` subjects::

        z_i = atanh(r_i),  rbar2 = (r1^2 + r2^2) / 2,
        f = min(1, (1 - r12) / (2 (1 - rbar2))),  h = (1 - f rbar2) / (1 - rbar2),
        Z = (z_1 - z_2) sqrt((n - 3) / (2 (1 - r12) h)).

    Returns the two-sided p and a CI of ``z_1 - z_2``.
    """
    out = DependentCorrelationTest(n=int(n), r1=float(r1), r2=float(r2), r12=float(r12))
    if n <= 3:
        out.note = f"n={n} <= 3"
        return out
    if not all(np.isfinite([r1, r2, r12])):
        out.note = "undefined correlation"
        return out
    if max(abs(r1), abs(r2)) >= 1.0 or r12 >= 1.0:
        out.note = "|r| = 1"
        return out
    rbar2 = (r1 * r1 + r2 * r2) / 2.0
    f = min(1.0, (1.0 - r12) / (2.0 * (1.0 - rbar2)))
    h = (1.0 - f * rbar2) / (1.0 - rbar2)
    se = math.sqrt(2.0 * (1.0 - r12) * h / (n - 3))
    dz = math.atanh(r1) - math.atanh(r2)
    out.z = dz / se
    out.p = float(2.0 * sps.norm.sf(abs(out.z)))
    half = sps.norm.ppf(0.5 + level / 2) * se
    out.ci_low, out.ci_high = dz - half, dz + half
    return out


def compare_dependent(y, x1, x2) -> DependentCorrelationTest:
    """Meng test of r(y, x1) vs r(y, x2) on the subjects having all three values."""
    y, x1, x2 = _to_float(y), _to_float(x1), _to_float(x2)
    ok = np.isfinite(y) & np.isfinite(x1) & np.isfinite(x2)
    y, x1, x2 = y[ok], x1[ok], x2[ok]
    note = _degenerate(x1, y) or _degenerate(x2, y) or _degenerate(x1, x2)
    if note:
        return DependentCorrelationTest(n=int(y.size), note=note)
    c = np.corrcoef(np.vstack([y, x1, x2]))
    return meng_test(c[0, 1], c[0, 2], c[1, 2], int(y.size))


def describe(values) -> dict:
    """n, mean and SD (ddof=1) of the finite values."""
    v = _to_float(values)
    v = v[np.isfinite(v)]
    return {"n": int(v.size), "mean": float(v.mean()) if v.size else None,
            "sd": float(v.std(ddof=1)) if v.size > 1 else None}


def _column(rows, key):
    return [r.get(key) for r in rows]


def cohort_statistics(rows, baseline_month: int | None = None) -> dict:
    """All study statistics of a list of ``results.csv`` rows (JSON-serialisable).

    Returns a dict with ``n_patients``, ``months``, ``measures`` (present measure keys),
    ``descriptive[month][measure]``, ``changes[month][measure]`` (vs the first month),
    ``correlations[month]["y|x"]``, ``regressions`` (same keys) and
    ``dependent[month]`` (r(POS, screw vBMD) vs r(POS, aBMD) for each aBMD source).
    """
    months = sorted({int(r["month"]) for r in rows})
    base = months[0] if baseline_month is None and months else baseline_month
    present = [m for m in MEASURES if any(r.get(m) not in (None, "") for r in rows)]
    by_month = {m: [r for r in rows if int(r["month"]) == m] for m in months}
    out = {"n_patients": len({r["patient"] for r in rows}), "n_scans": len(rows),
           "months": months, "baseline_month": base, "measures": present,
           "descriptive": {}, "changes": {}, "correlations": {}, "regressions": {},
           "dependent": {}}
    base_rows = {r["patient"]: r for r in by_month.get(base, [])}
    for m in months:
        mr = by_month[m]
        out["descriptive"][m] = {k: describe(_column(mr, k)) for k in present}
        if m != base:
            both = [(base_rows[r["patient"]], r) for r in mr if r["patient"] in base_rows]
            out["changes"][m] = {k: as_dict(percent_change([b.get(k) for b, _ in both],
                                                           [f.get(k) for _, f in both]))
                                 for k in present}
        pairs = [(y, x) for y, x in CORRELATION_PAIRS if y in present and x in present]
        out["correlations"][m] = {f"{y}|{x}": as_dict(correlation(_column(mr, x), _column(mr, y)))
                                  for y, x in pairs}
        out["regressions"][m] = {f"{y}|{x}": as_dict(regression(_column(mr, x), _column(mr, y)))
                                 for y, x in pairs}
        out["dependent"][m] = {
            a: as_dict(compare_dependent(_column(mr, POS), _column(mr, "vbmd_screw_mg_cm3"),
                                         _column(mr, a)))
            for a in ("dxa_abmd_g_cm2", "abmd_g_cm2")
            if a in present and POS in present and "vbmd_screw_mg_cm3" in present}
    return out
