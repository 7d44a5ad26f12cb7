"""Statistical tests of a cohort study: correlations, dependent correlations, changes, mixed model.

The tests come from scipy and statsmodels; only what neither provides is written here (the
Spearman CI of Bonett & Wright, the dependent-correlation tests of Steiger and of Meng,
Rosenthal & Rubin, the precision figures of Glüer et al.). All functions drop pairs with a
missing value (None or NaN) and return NaN together with a ``note`` instead of raising when
there are too few observations or no variance. Aggregation over a study's rows is in
:mod:`fesim.study.tables`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats as sps

NAN = float("nan")


@dataclass
class Correlation:
    """Pearson r (two-sided p, Fisher-z CI) and Spearman rho (p, Bonett-Wright CI)."""

    n: int
    r: float = NAN
    p: float = NAN
    ci_low: float = NAN
    ci_high: float = NAN
    rho: float = NAN
    p_rho: float = NAN
    rho_ci_low: float = NAN
    rho_ci_high: float = NAN
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
    """Per-patient change from baseline, absolute (units of the measure) and in %.

    Mean, SD and t-based 95 % CI of each; paired t-test and Wilcoxon signed-rank p.
    """

    n: int
    mean_abs: float = NAN
    sd_abs: float = NAN
    ci_abs_low: float = NAN
    ci_abs_high: float = NAN
    mean_pct: float = NAN
    sd_pct: float = NAN
    ci_pct_low: float = NAN
    ci_pct_high: float = NAN
    p_ttest: float = NAN
    p_wilcoxon: float = NAN
    note: str = ""


@dataclass
class DependentCorrelationTest:
    """Test of r(y, x1) = r(y, x2) on the same subjects (two correlations sharing y).

    ``z``/``p``: Meng, Rosenthal & Rubin (1992), with ``ci_low``/``ci_high`` bounding the
    difference of Fisher z values ``z(r1) - z(r2)``; ``z_steiger``/``p_steiger``: Steiger (1980).
    """

    n: int
    r1: float = NAN
    r2: float = NAN
    r12: float = NAN
    z: float = NAN
    p: float = NAN
    ci_low: float = NAN
    ci_high: float = NAN
    z_steiger: float = NAN
    p_steiger: float = NAN
    note: str = ""


@dataclass
class MixedModelChange:
    """Change from baseline per visit from a linear mixed model (random intercept per patient).

    ``visits[month]`` holds ``estimate`` (units of the measure), ``se``, ``ci_low``,
    ``ci_high``, ``p`` and ``pct`` (estimate / baseline mean x 100).
    """

    n_obs: int
    n_patients: int
    baseline_mean: float = NAN
    visits: dict = field(default_factory=dict)
    group_var: float = NAN
    residual_var: float = NAN
    converged: bool = False
    method: str = "REML"
    note: str = ""


@dataclass
class ArmComparison:
    """Two arms' values compared: Welch t-test (difference a - b with CI) and Mann-Whitney U."""

    arm_a: str
    arm_b: str
    n_a: int
    n_b: int
    mean_a: float = NAN
    mean_b: float = NAN
    difference: float = NAN
    ci_low: float = NAN
    ci_high: float = NAN
    p_welch: float = NAN
    p_mannwhitney: float = NAN
    note: str = ""


@dataclass
class Precision:
    """Short-term precision from repeat scans (Glüer et al. 1995): root-mean-square SD and CV.

    ``lsc`` is the least significant change at 95 % confidence, 2.77 x RMS-SD.
    """

    n_subjects: int
    n_scans: int
    rms_sd: float = NAN
    rms_cv_pct: float = NAN
    lsc: float = NAN
    lsc_pct: float = NAN
    note: str = ""


def as_dict(obj) -> dict:
    """A result dataclass as a JSON-friendly dict (NaN -> None, also in nested dicts)."""
    def clean(v):
        if isinstance(v, float) and math.isnan(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        return v

    return {k: clean(v) for k, v in asdict(obj).items()}


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


def spearman_ci(rho: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """CI of Spearman's rho (Bonett & Wright 2000): Fisher z with variance ``(1 + rho^2/2)/(n-3)``."""
    if n <= 3 or not np.isfinite(rho):
        return NAN, NAN
    if abs(rho) >= 1.0:
        return float(rho), float(rho)
    half = sps.norm.ppf(0.5 + level / 2) * math.sqrt((1.0 + rho * rho / 2.0) / (n - 3))
    z = math.atanh(rho)
    return math.tanh(z - half), math.tanh(z + half)


def correlation(x, y, level: float = 0.95) -> Correlation:
    """Pearson r (p, Fisher-z CI from scipy) and Spearman rho (p, CI) of paired samples."""
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
    if out.n > 3:
        ci = pr.confidence_interval(level)
        out.ci_low, out.ci_high = float(ci.low), float(ci.high)
        out.rho_ci_low, out.rho_ci_high = spearman_ci(out.rho, out.n, level)
    else:
        out.note = "n=3: no confidence interval"
    return out


def regression(x, y) -> Regression:
    """Ordinary least-squares fit of ``y`` on ``x`` (scipy ``linregress``)."""
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


def change_from_baseline(baseline, follow_up, level: float = 0.95) -> Change:
    """Change ``follow_up - baseline`` per subject, absolute and in % of baseline.

    CIs are t-based (scipy ``ttest_rel`` / ``ttest_1samp`` ``confidence_interval``); the paired
    t-test and Wilcoxon signed-rank test compare follow-up with baseline (two-sided).
    """
    b, f = paired(baseline, follow_up)
    out = Change(n=int(b.size))
    if b.size < 3:
        out.note = f"n={b.size} < 3"
        return out
    d = f - b
    out.mean_abs, out.sd_abs = float(d.mean()), float(d.std(ddof=1))
    if np.all(b != 0):
        pct = 100.0 * d / b
        out.mean_pct, out.sd_pct = float(pct.mean()), float(pct.std(ddof=1))
    else:
        out.note = "zero baseline value: no % change"
    if np.all(d == d[0]):
        out.note = out.note or "the same change in every subject"
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = sps.ttest_rel(f, b)
        out.p_ttest = float(t.pvalue)
        ci = t.confidence_interval(level)
        out.ci_abs_low, out.ci_abs_high = float(ci.low), float(ci.high)
        if np.isfinite(out.mean_pct):
            ci = sps.ttest_1samp(pct, 0.0).confidence_interval(level)
            out.ci_pct_low, out.ci_pct_high = float(ci.low), float(ci.high)
        out.p_wilcoxon = float(sps.wilcoxon(f, b).pvalue) if np.any(d != 0) else NAN
    return out


def percent_change(baseline, follow_up) -> Change:
    """Alias of :func:`change_from_baseline` (kept for existing callers)."""
    return change_from_baseline(baseline, follow_up)


def _check_three(r1, r2, r12, n) -> str:
    if n <= 3:
        return f"n={n} <= 3"
    if not all(np.isfinite([r1, r2, r12])):
        return "undefined correlation"
    if max(abs(r1), abs(r2)) >= 1.0 or abs(r12) >= 1.0:
        return "|r| = 1"
    return ""


def meng_test(r1: float, r2: float, r12: float, n: int, level: float = 0.95) -> DependentCorrelationTest:
    """Compare two dependent correlations sharing a variable (Meng, Rosenthal & Rubin 1992).

    Tests H0: rho(y, x1) = rho(y, x2), given r1 = r(y, x1), r2 = r(y, x2), r12 = r(x1, x2)
    on the same ``n`` subjects::

        z_i = atanh(r_i),  rbar2 = (r1^2 + r2^2) / 2,
        f = min(1, (1 - r12) / (2 (1 - rbar2))),  h = (1 - f rbar2) / (1 - rbar2),
        Z = (z_1 - z_2) sqrt((n - 3) / (2 (1 - r12) h)).

    Returns the two-sided p and a CI of ``z_1 - z_2``; Steiger's Z is filled in too.
    """
    out = DependentCorrelationTest(n=int(n), r1=float(r1), r2=float(r2), r12=float(r12))
    out.note = _check_three(r1, r2, r12, n)
    if out.note:
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
    out.z_steiger, out.p_steiger = steiger_z(r1, r2, r12, n)
    return out


def steiger_z(r1: float, r2: float, r12: float, n: int) -> tuple[float, float]:
    """Steiger's (1980) Z of two dependent correlations r(y, x1), r(y, x2) sharing ``y``.

    Fisher-z difference over its asymptotic SD, with the covariance of the two correlations
    (Pearson & Filon) evaluated at the pooled ``rbar = (r1 + r2) / 2`` (Steiger's eq. 14-15)::

        psi = r12 (1 - 2 rbar^2) - rbar^2 (1 - 2 rbar^2 - r12^2) / 2,  s = psi / (1 - rbar^2)^2,
        Z = (atanh r1 - atanh r2) sqrt(n - 3) / sqrt(2 - 2 s).

    Returns ``(Z, two-sided p)``; NaN for n <= 3 or |r| = 1.
    """
    if _check_three(r1, r2, r12, n):
        return NAN, NAN
    rb = (r1 + r2) / 2.0
    psi = r12 * (1.0 - 2.0 * rb * rb) - 0.5 * rb * rb * (1.0 - 2.0 * rb * rb - r12 * r12)
    s = psi / (1.0 - rb * rb) ** 2
    if s >= 1.0:  # only for r1, r2, r12 that are not a valid (positive definite) correlation matrix
        return NAN, NAN
    z = (math.atanh(r1) - math.atanh(r2)) * math.sqrt(n - 3) / math.sqrt(2.0 - 2.0 * s)
    return float(z), float(2.0 * sps.norm.sf(abs(z)))


def compare_dependent(y, x1, x2) -> DependentCorrelationTest:
    """Meng's and Steiger's tests of r(y, x1) vs r(y, x2) on the subjects having all three."""
    y, x1, x2 = _to_float(y), _to_float(x1), _to_float(x2)
    ok = np.isfinite(y) & np.isfinite(x1) & np.isfinite(x2)
    y, x1, x2 = y[ok], x1[ok], x2[ok]
    note = _degenerate(x1, y) or _degenerate(x2, y) or _degenerate(x1, x2)
    if note:
        return DependentCorrelationTest(n=int(y.size), note=note)
    c = np.corrcoef(np.vstack([y, x1, x2]))
    return meng_test(c[0, 1], c[0, 2], c[1, 2], int(y.size))


def mixed_model_change(patients, months, values, baseline_month: int = 0,
                       level: float = 0.95) -> MixedModelChange:
    """Linear mixed model ``value ~ C(month)`` with a random intercept per patient (REML).

    Fitted with statsmodels ``MixedLM``; the coefficient of each follow-up month is the
    model-estimated change from ``baseline_month``. Patients missing a visit still contribute
    their other visits.
    """
    import pandas as pd
    import statsmodels.formula.api as smf
    from statsmodels.tools.sm_exceptions import ConvergenceWarning

    v = _to_float(values)
    ok = np.isfinite(v)
    df = pd.DataFrame({"patient": np.asarray(patients, dtype=object)[ok],
                       "month": np.asarray(months, dtype=int)[ok], "y": v[ok]})
    out = MixedModelChange(n_obs=len(df), n_patients=int(df["patient"].nunique()))
    visits = sorted(df["month"].unique())
    if baseline_month not in visits or len(visits) < 2:
        out.note = "needs the baseline and at least one follow-up visit"
        return out
    if out.n_patients < 3 or out.n_obs <= out.n_patients + len(visits):
        out.note = f"too few observations ({out.n_obs} from {out.n_patients} patients)"
        return out
    if np.ptp(df["y"].to_numpy()) == 0:
        out.note = "no variance"
        return out
    formula = f"y ~ C(month, Treatment(reference={int(baseline_month)}))"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = smf.mixedlm(formula, df, groups=df["patient"]).fit(reml=True)
    conv = [w for w in caught if issubclass(w.category, ConvergenceWarning)]
    ci = fit.conf_int(alpha=1.0 - level)
    out.baseline_mean = float(fit.fe_params["Intercept"])
    for m in visits:
        if m == baseline_month:
            continue
        name = f"C(month, Treatment(reference={int(baseline_month)}))[T.{m}]"
        est = float(fit.fe_params[name])
        out.visits[int(m)] = {"estimate": est, "se": float(fit.bse_fe[name]),
                              "ci_low": float(ci.loc[name, 0]), "ci_high": float(ci.loc[name, 1]),
                              "p": float(fit.pvalues[name]),
                              "pct": 100.0 * est / out.baseline_mean if out.baseline_mean else NAN}
    out.group_var = float(fit.cov_re.iloc[0, 0])
    out.residual_var = float(fit.scale)
    out.converged = bool(fit.converged) and not conv
    if not out.converged:
        out.note = "; ".join(sorted({str(w.message) for w in conv})) or "did not converge"
    return out


def compare_arms(values_a, values_b, arm_a: str = "A", arm_b: str = "B",
                 level: float = 0.95) -> ArmComparison:
    """Welch's t-test (difference of means a - b, CI) and Mann-Whitney U of two arms."""
    a, b = _to_float(values_a), _to_float(values_b)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    out = ArmComparison(arm_a, arm_b, int(a.size), int(b.size))
    if a.size < 2 or b.size < 2:
        out.note = "fewer than 2 subjects in an arm"
        return out
    out.mean_a, out.mean_b = float(a.mean()), float(b.mean())
    out.difference = out.mean_a - out.mean_b
    if np.ptp(np.concatenate([a, b])) == 0:
        out.note = "no variance"
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = sps.ttest_ind(a, b, equal_var=False)
        ci = t.confidence_interval(level)
        out.p_welch = float(t.pvalue)
        out.ci_low, out.ci_high = float(ci.low), float(ci.high)
        out.p_mannwhitney = float(sps.mannwhitneyu(a, b, alternative="two-sided").pvalue)
    return out


def precision(groups) -> Precision:
    """Precision from repeat scans: ``groups`` is a list of per-subject value lists (>= 2 each).

    RMS-SD ``sqrt(sum(d_j SD_j^2) / sum(d_j))`` over subjects (d_j = degrees of freedom
    ``n_j - 1``), RMS-CV the same of ``SD_j / mean_j`` in %, LSC = 2.77 RMS-SD (Glüer et al.
    1995, Osteoporos Int 5:262).
    """
    vals = [_to_float(g) for g in groups]
    vals = [g[np.isfinite(g)] for g in vals]
    vals = [g for g in vals if g.size >= 2]
    out = Precision(n_subjects=len(vals), n_scans=int(sum(g.size for g in vals)))
    if not vals:
        out.note = "no subject with repeat scans"
        return out
    dof = np.array([g.size - 1 for g in vals], dtype=float)
    var = np.array([g.var(ddof=1) for g in vals])
    mean = np.array([g.mean() for g in vals])
    out.rms_sd = float(math.sqrt((dof * var).sum() / dof.sum()))
    if np.all(mean != 0):
        out.rms_cv_pct = float(100.0 * math.sqrt((dof * var / mean ** 2).sum() / dof.sum()))
        out.lsc_pct = 2.77 * out.rms_cv_pct
    out.lsc = 2.77 * out.rms_sd
    return out


def holm(pvalues) -> list[float]:
    """Holm-adjusted p-values (statsmodels ``multipletests``); NaN entries stay NaN."""
    from statsmodels.stats.multitest import multipletests

    p = _to_float(pvalues)
    out = np.full(p.size, NAN)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method="holm")[1]
    return [float(v) for v in out]


def describe(values, level: float = 0.95) -> dict:
    """n, mean, SD (ddof=1) and t-based CI of the mean of the finite values."""
    v = _to_float(values)
    v = v[np.isfinite(v)]
    out = {"n": int(v.size), "mean": float(v.mean()) if v.size else None,
           "sd": float(v.std(ddof=1)) if v.size > 1 else None, "ci_low": None, "ci_high": None}
    if v.size > 1 and np.ptp(v) > 0:
        ci = sps.ttest_1samp(v, 0.0).confidence_interval(level)
        out["ci_low"], out["ci_high"] = float(ci.low), float(ci.high)
    return out
