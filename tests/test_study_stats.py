"""Statistics of fesim.study against scipy/statsmodels (computed here, independently) and formulas."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from fesim.study import stats as st
from fesim.study import tables as tb

TOL = 1e-10


def _fixed(n=21, seed=7):
    rng = np.random.default_rng(seed)
    v = rng.normal(100, 20, n)
    a = 0.8 + 0.002 * v + rng.normal(0, 0.1, n)
    pos = 8 * v + rng.normal(0, 150, n)
    return pos, v, a


def test_correlation_pearson_spearman_match_scipy():
    pos, v, _ = _fixed()
    c = st.correlation(v, pos)
    pr, sr = sps.pearsonr(v, pos), sps.spearmanr(v, pos)
    ci = pr.confidence_interval(0.95)
    assert abs(c.r - pr.statistic) < TOL and abs(c.p - pr.pvalue) < TOL
    assert abs(c.ci_low - ci.low) < TOL and abs(c.ci_high - ci.high) < TOL
    # Fisher z by hand: tanh(atanh r -+ z_.975 / sqrt(n - 3))
    h = sps.norm.ppf(0.975) / math.sqrt(len(v) - 3)
    assert abs(c.ci_low - math.tanh(math.atanh(c.r) - h)) < TOL
    assert abs(c.rho - sr.statistic) < TOL and abs(c.p_rho - sr.pvalue) < TOL
    # Bonett & Wright (2000): variance (1 + rho^2 / 2) / (n - 3) on Fisher's z
    hb = sps.norm.ppf(0.975) * math.sqrt((1 + c.rho ** 2 / 2) / (len(v) - 3))
    assert abs(c.rho_ci_low - math.tanh(math.atanh(c.rho) - hb)) < TOL
    assert abs(c.rho_ci_high - math.tanh(math.atanh(c.rho) + hb)) < TOL
    assert c.rho_ci_low < c.rho < c.rho_ci_high


def test_regression_matches_linregress():
    pos, v, _ = _fixed()
    r, lr = st.regression(v, pos), sps.linregress(v, pos)
    for a, b in ((r.slope, lr.slope), (r.intercept, lr.intercept), (r.r2, lr.rvalue ** 2),
                 (r.p, lr.pvalue), (r.slope_stderr, lr.stderr)):
        assert abs(a - b) < TOL * max(1, abs(b))


def test_change_from_baseline_matches_scipy_and_hand():
    rng = np.random.default_rng(3)
    b = rng.normal(1000, 150, 21)
    f = b * (1 + rng.normal(0.08, 0.05, 21))
    c = st.change_from_baseline(b, f)
    d, pct = f - b, 100 * (f - b) / b
    t = sps.t.ppf(0.975, 20)
    assert abs(c.mean_abs - d.mean()) < TOL * 1e3 and abs(c.sd_abs - d.std(ddof=1)) < TOL * 1e3
    assert abs(c.ci_abs_low - (d.mean() - t * d.std(ddof=1) / math.sqrt(21))) < 1e-9
    assert abs(c.ci_abs_high - (d.mean() + t * d.std(ddof=1) / math.sqrt(21))) < 1e-9
    assert abs(c.mean_pct - pct.mean()) < TOL and abs(c.sd_pct - pct.std(ddof=1)) < TOL
    assert abs(c.ci_pct_low - (pct.mean() - t * pct.std(ddof=1) / math.sqrt(21))) < TOL
    assert abs(c.p_ttest - sps.ttest_rel(f, b).pvalue) < TOL
    assert abs(c.p_wilcoxon - sps.wilcoxon(f, b).pvalue) < TOL
    # exact Wilcoxon p of 5 all-positive differences: 2 / 2^5
    c5 = st.change_from_baseline([100.0, 120, 90, 110, 105], [106.0, 125, 99, 115, 109])
    assert c5.p_wilcoxon == pytest.approx(0.0625, abs=1e-12)


def _long(seed=11, n=21, months=(0, 12, 24), drop=()):
    rng = np.random.default_rng(seed)
    base = rng.normal(1000, 200, n)
    rows = []
    for i in range(n):
        for m in months:
            if (i, m) in drop:
                continue
            rows.append({"patient": f"P{i:02d}", "month": m,
                         "y": base[i] + 3.0 * m + rng.normal(0, 40)})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("drop", [(), ((2, 24), (5, 12), (9, 24))])
def test_mixed_model_matches_statsmodels(drop):
    df = _long(drop=drop)
    mm = st.mixed_model_change(df["patient"].tolist(), df["month"].tolist(), df["y"].tolist())
    ref = smf.mixedlm("y ~ C(month)", df, groups=df["patient"]).fit(reml=True)
    assert mm.converged and mm.n_obs == len(df) and mm.n_patients == 21
    ci = ref.conf_int()
    for m in (12, 24):
        name = f"C(month)[T.{m}]"
        v = mm.visits[m]
        assert abs(v["estimate"] - ref.fe_params[name]) < TOL
        assert abs(v["se"] - ref.bse_fe[name]) < TOL
        assert abs(v["p"] - ref.pvalues[name]) < TOL
        assert abs(v["ci_low"] - ci.loc[name, 0]) < TOL and abs(v["ci_high"] - ci.loc[name, 1]) < TOL
    assert abs(mm.baseline_mean - ref.fe_params["Intercept"]) < TOL
    assert abs(mm.group_var - ref.cov_re.iloc[0, 0]) < 1e-6 * ref.cov_re.iloc[0, 0]
    if not drop:
        # balanced design: the visit effect is the mean paired difference, whatever the variances
        w = df.pivot(index="patient", columns="month", values="y")
        assert abs(mm.visits[24]["estimate"] - (w[24] - w[0]).mean()) < 1e-8


def test_mixed_model_degenerate():
    assert "baseline" in st.mixed_model_change(["a", "b"], [12, 24], [1.0, 2.0]).note
    assert "too few" in st.mixed_model_change(["a", "a", "b", "b"], [0, 12, 0, 12], [1, 2, 3, 4.0]).note


def test_holm_matches_statsmodels_and_hand():
    p = [0.01, 0.04, 0.03, 0.005, float("nan"), 0.2]
    h = st.holm(p)
    ref = multipletests([0.01, 0.04, 0.03, 0.005, 0.2], method="holm")[1]
    assert np.allclose([x for x in h if x == x], ref, atol=TOL, rtol=0) and math.isnan(h[4])
    # by hand: sorted 0.005, 0.01, 0.03, 0.04, 0.2 times 5, 4, 3, 2, 1, running max
    assert h[3] == pytest.approx(0.025, abs=TOL) and h[0] == pytest.approx(0.04, abs=TOL)
    assert h[2] == pytest.approx(0.09, abs=TOL) and h[1] == pytest.approx(0.09, abs=TOL)


def test_compare_arms_matches_scipy():
    rng = np.random.default_rng(2)
    a, b = rng.normal(8, 3, 11), rng.normal(5, 5, 10)
    c = st.compare_arms(a, b, "Dmab", "Placebo")
    t = sps.ttest_ind(a, b, equal_var=False)
    assert abs(c.p_welch - t.pvalue) < TOL
    assert abs(c.p_mannwhitney - sps.mannwhitneyu(a, b, alternative="two-sided").pvalue) < TOL
    # Welch-Satterthwaite CI by hand
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    df = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))
    half = sps.t.ppf(0.975, df) * math.sqrt(va + vb)
    assert abs(c.ci_low - (a.mean() - b.mean() - half)) < TOL
    assert abs(c.ci_high - (a.mean() - b.mean() + half)) < TOL


def test_precision_rms_sd_by_hand():
    pairs = [[100.0, 102.0], [80.0, 79.0], [120.0, 120.0, 123.0]]
    p = st.precision(pairs + [[50.0]])
    sds = [np.std(g, ddof=1) for g in pairs]
    dof = [1, 1, 2]
    rms = math.sqrt(sum(d * s * s for d, s in zip(dof, sds)) / 4)
    assert p.n_subjects == 3 and p.n_scans == 7
    assert abs(p.rms_sd - rms) < TOL and abs(p.lsc - 2.77 * rms) < TOL
    cv = math.sqrt(sum(d * (s / np.mean(g)) ** 2 for d, s, g in zip(dof, sds, pairs)) / 4) * 100
    assert abs(p.rms_cv_pct - cv) < TOL


# --------------------------------------------------------------------------- dependent r

def _steiger_reference(r1, r2, r12, n):
    """Steiger (1980) Z1*, written independently from the general asymptotic covariance of two
    correlations r_jk, r_jh sharing j (Pearson & Filon 1898; Steiger's eq. 3, with rho_jk and
    rho_jh replaced by their mean, eq. 14), divided by the product of the Fisher-z variances."""
    j_k = j_h = (r1 + r2) / 2
    k_h = r12
    # Pearson-Filon: psi = r_kh (1 - r_jk^2 - r_jh^2) - 1/2 r_jk r_jh (1 - r_jk^2 - r_jh^2 - r_kh^2)
    psi = k_h * (1 - j_k ** 2 - j_h ** 2) - 0.5 * j_k * j_h * (1 - j_k ** 2 - j_h ** 2 - k_h ** 2)
    c = psi / ((1 - j_k ** 2) * (1 - j_h ** 2))
    z = (np.arctanh(r1) - np.arctanh(r2)) * np.sqrt((n - 3) / (2 - 2 * c))
    return z, 2 * sps.norm.sf(abs(z))


@pytest.mark.parametrize("r1,r2,r12,n", [(0.63, -0.03, -0.19, 15), (0.83, 0.35, 0.45, 21),
                                        (0.5, 0.6, 0.212, 500), (-0.4, 0.1, 0.3, 40)])
def test_steiger_matches_independent_formula(r1, r2, r12, n):
    z, p = st.steiger_z(r1, r2, r12, n)
    zr, pr = _steiger_reference(r1, r2, r12, n)
    assert abs(z - zr) < TOL and abs(p - pr) < TOL


def test_steiger_and_meng_hold_their_size_under_h0():
    # r(y, x1) = r(y, x2) = 0.5, r(x1, x2) = 0.3, n = 40: both tests reject ~5 % of the time
    rng = np.random.default_rng(0)
    cov = np.array([[1, 0.5, 0.5], [0.5, 1, 0.3], [0.5, 0.3, 1]])
    L = np.linalg.cholesky(cov)
    rej_s = rej_m = 0
    reps = 4000
    for _ in range(reps):
        x = rng.standard_normal((40, 3)) @ L.T
        t = st.compare_dependent(x[:, 0], x[:, 1], x[:, 2])
        rej_s += t.p_steiger < 0.05
        rej_m += t.p < 0.05
    # binomial SE of a 5 % rate over 4000 draws is 0.34 %
    assert 0.035 < rej_s / reps < 0.065 and 0.035 < rej_m / reps < 0.065


def test_meng_example_from_paper_and_formula():
    # Meng, Rosenthal & Rubin (1992) worked example as recorded in this repository since its
    # first version: r1 = .63, r2 = -.03, r12 = -.19, N = 15 -> Z = 1.68, one-sided p = .047.
    t = st.meng_test(0.63, -0.03, -0.19, 15)
    assert t.z == pytest.approx(1.68, abs=5e-3) and t.p / 2 == pytest.approx(0.047, abs=1e-3)
    # the published formula, written out independently
    z1, z2 = np.arctanh(0.63), np.arctanh(-0.03)
    rbar2 = (0.63 ** 2 + 0.03 ** 2) / 2
    f = min(1.0, (1 + 0.19) / (2 * (1 - rbar2)))
    h = (1 - f * rbar2) / (1 - rbar2)
    z = (z1 - z2) * np.sqrt((15 - 3) / (2 * (1 + 0.19) * h))
    assert abs(t.z - z) < TOL and abs(t.p - 2 * sps.norm.sf(z)) < TOL
    # large n: Meng's and Steiger's statistics converge
    big = st.meng_test(0.5, 0.4, 0.3, 100000)
    assert big.z_steiger == pytest.approx(big.z, rel=0.01)


# --------------------------------------------------------------------------- tables

def _rows(n=12, arms=True, repeats=True):
    rng = np.random.default_rng(4)
    rows = []
    for i in range(n):
        b = rng.normal(110, 20)
        for m in (0, 12, 24):
            v = b * (1 + 0.004 * m * (1.5 if i % 2 else 1.0)) + rng.normal(0, 3)
            rows.append({"patient": f"P{i:02d}", "month": m, "pullout_strength_N": 10 * v + rng.normal(0, 60),
                         "compression_strength_N": 40 * v, "vbmd_screw_mg_cm3": v,
                         "vbmd_trabecular_mg_cm3": 0.9 * v, "abmd_g_cm2": 0.3 + 0.003 * v,
                         "dxa_abmd_g_cm2": 0.6 + 0.002 * v + rng.normal(0, 0.08),
                         "arm": ("A" if i % 2 else "B") if arms else None, "repeat": 1})
    if repeats:
        for r in list(rows[:4]):
            rows.append({**r, "repeat": 2, "vbmd_screw_mg_cm3": r["vbmd_screw_mg_cm3"] + 1.0})
    return rows


def test_cohort_statistics_and_table():
    rows = _rows()
    s = tb.cohort_statistics(rows)
    assert s["n_patients"] == 12 and s["n_scans"] == 40 and s["months"] == [0, 12, 24]
    c = s["correlations"][24]["pullout_strength_N|vbmd_screw_mg_cm3"]
    m24 = [r for r in rows if r["month"] == 24 and r["repeat"] == 1]
    ref = sps.pearsonr([r["vbmd_screw_mg_cm3"] for r in m24], [r["pullout_strength_N"] for r in m24])
    assert c["n"] == 12 and abs(c["r"] - ref.statistic) < TOL
    assert s["dependent"][0]["dxa_abmd_g_cm2"]["z_steiger"] is not None
    assert set(s["mixed"]) >= {"pullout_strength_N", "vbmd_screw_mg_cm3"}
    assert s["arms"]["names"] == ["A", "B"] and s["arms"]["n"] == {"A": 6, "B": 6}
    # the repeat scans give precision; every repeat differs by exactly 1 mg/cm^3
    pr = s["precision"]["vbmd_screw_mg_cm3"]
    assert pr["n_subjects"] == 4 and abs(pr["rms_sd"] - 1 / math.sqrt(2)) < TOL
    table = tb.stats_table(s)
    prim = [r for r in table if r["family"] == "primary" and r["p"] is not None]
    assert all(r["p_holm"] is None for r in table if r["family"] == "primary" and r["p"] is None)
    adj = multipletests([r["p"] for r in prim], method="holm")[1]
    assert np.allclose([r["p_holm"] for r in prim], adj, atol=TOL, rtol=0)
    assert all(r["p_holm"] is None for r in table if r["family"] != "primary")
    kinds = {r["analysis"] for r in table}
    assert kinds == {"correlation", "dependent_correlation", "change_from_baseline",
                     "mixed_model_change", "arm_difference", "precision"}
    assert tb.n_primary_tests(table) == len(prim)


# Published worked examples (numbers as printed in the sources, rounded as printed there).
# May & Hittner (1997), Psychological Reports 80:475-480, table of Meng's Z for n = 50 and
# r12 from 0 to .8, for r1, r2 = .5, .2 and .7, .4.
MAY_HITTNER_MENG = {
    (0.5, 0.2): [1.62, 1.70, 1.80, 1.91, 2.06, 2.24, 2.50, 2.87, 3.50],
    (0.7, 0.4): [2.03, 2.10, 2.20, 2.32, 2.47, 2.66, 2.94, 3.35, 4.05],
}


@pytest.mark.parametrize("r1,r2", list(MAY_HITTNER_MENG))
def test_meng_matches_may_hittner_table(r1, r2):
    for r12, published in zip(np.arange(9) / 10, MAY_HITTNER_MENG[(r1, r2)]):
        # the table prints 2 decimals; 2.245 is printed as 2.24, so compare to half a unit
        assert st.meng_test(r1, r2, r12, 50).z == pytest.approx(published, abs=0.0051)


def test_meng_paper_confidence_interval():
    # Meng, Rosenthal & Rubin (1992) p. 173: 95 % CI of z1 - z2 is (-0.129, 1.671)
    t = st.meng_test(0.63, -0.03, -0.19, 15)
    assert t.ci_low == pytest.approx(-0.129, abs=6e-4)
    assert t.ci_high == pytest.approx(1.671, abs=1.1e-3)


def test_steiger_case_a_from_paper():
    # Steiger (1980) p. 249, Case A: r_jk = .4, r_jh = .5, r_kh = .1, N = 103. The paper prints
    # Z = -.8913, computed with the covariance rounded to .0042; unrounded it is -.8887.
    z, p = st.steiger_z(0.4, 0.5, 0.1, 103)
    assert z == pytest.approx(-0.8913, abs=3e-3)
    assert p == pytest.approx(2 * sps.norm.sf(abs(z)), abs=TOL)


def test_meng_and_steiger_match_depcor_program():
    # Silver, Hittner & May (2006), Applied Psychological Measurement 30:152-153 (DEPCOR):
    # r1 = .3, r2 = .4, r12 = .5, N = 100 -> Meng Z = -1.0707 (p .2843), Steiger Z = -1.0718 (p .2838)
    t = st.meng_test(0.3, 0.4, 0.5, 100)
    assert round(t.z, 4) == -1.0707 and round(t.p, 4) == 0.2843
    z, p = st.steiger_z(0.3, 0.4, 0.5, 100)
    assert round(z, 4) == -1.0718 and round(p, 4) == 0.2838
