"""A study's statistics from its ``results.csv`` rows: the dict of ``stats.json``, the table of ``stats.csv``.

Per visit: descriptive statistics, Pearson and Spearman correlations of each strength with
each BMD measure, least-squares lines, the dependent-correlation tests of r(pullout strength,
screw vBMD) against r(pullout strength, aBMD); changes from baseline (per-patient and from a
linear mixed model); arms compared when the manifest has more than one; precision from repeat
scans. Multiplicity: Holm's adjustment over the *primary* family (Pearson correlations, Meng
tests, mixed-model changes, Welch arm comparisons); the other p-values are supportive.
"""

from __future__ import annotations

from itertools import combinations

from fesim.results import KEYS, key_info

from . import stats as S

#: Columns of the scan list (not of the result) that are measures too: DXA areal BMD and T-score.
DXA_ABMD, DXA_TSCORE = "dxa_abmd_g_cm2", "dxa_tscore"
POS = KEYS.pullout_strength_N
STRENGTHS = (POS, KEYS.compression_strength_N)
BMD_MEASURES = (KEYS.vbmd_screw_mg_cm3, KEYS.vbmd_trabecular_mg_cm3, KEYS.abmd_g_cm2, DXA_ABMD)
#: Measures summarised per visit, with display labels and units (of the result's keys: the
#: result contract, :mod:`fesim.results`).
MEASURES = {
    **{k: (key_info(k)["label"], key_info(k)["unit"])
       for k in (POS, KEYS.pullout_stiffness_N_per_mm, KEYS.compression_strength_N,
                 KEYS.compression_stiffness_N_per_mm, *BMD_MEASURES[:-1])},
    DXA_ABMD: ("DXA aBMD", "g/cm^2"),
    DXA_TSCORE: ("DXA T-score", "SD"),
}
#: (y, x) pairs correlated at every visit: each strength with each BMD measure.
CORRELATION_PAIRS = tuple((y, x) for y in STRENGTHS for x in BMD_MEASURES)
#: Measures whose change from baseline is modelled and compared between arms.
CHANGE_MEASURES = (*STRENGTHS, KEYS.vbmd_screw_mg_cm3, KEYS.vbmd_trabecular_mg_cm3, DXA_ABMD)
ABMD_KEYS = (DXA_ABMD, KEYS.abmd_g_cm2)
PRIMARY = "primary"


def _column(rows, key):
    return [r.get(key) for r in rows]


def _present(rows, key) -> bool:
    return any(r.get(key) not in (None, "") for r in rows)


def primary_rows(rows) -> list[dict]:
    """The rows of first scans (``repeat`` 1 or empty); repeats only serve precision."""
    return [r for r in rows if r.get("repeat") in (None, "", 1)]


def cohort_statistics(rows, baseline_month: int | None = None) -> dict:
    """All study statistics of a list of ``results.csv`` rows (JSON-serialisable after ``json``).

    Returns a dict with ``n_patients``, ``n_scans``, ``months``, ``baseline_month``,
    ``measures`` (present keys), ``descriptive[month][measure]``, ``changes[month][measure]``,
    ``correlations[month]["y|x"]``, ``regressions`` (same keys), ``dependent[month][abmd]``,
    ``mixed[measure]``, ``arms`` (``{"names": [...], "by_month": {month: {measure: [..]}}}``)
    and ``precision[measure]``.
    """
    all_rows = list(rows)
    rows = primary_rows(all_rows)
    months = sorted({int(r["month"]) for r in rows})
    base = (months[0] if months else 0) if baseline_month is None else int(baseline_month)
    present = [m for m in MEASURES if _present(rows, m)]
    by_month = {m: [r for r in rows if int(r["month"]) == m] for m in months}
    out = {"n_patients": len({r["patient"] for r in rows}), "n_scans": len(all_rows),
           "months": months, "baseline_month": base, "measures": present,
           "descriptive": {}, "changes": {}, "correlations": {}, "regressions": {},
           "dependent": {}, "mixed": {}, "arms": {}, "precision": {}}
    base_rows = {r["patient"]: r for r in by_month.get(base, [])}
    pairs = [(y, x) for y, x in CORRELATION_PAIRS if y in present and x in present]
    for m in months:
        mr = by_month[m]
        out["descriptive"][m] = {k: S.describe(_column(mr, k)) for k in present}
        if m != base:
            both = [(base_rows[r["patient"]], r) for r in mr if r["patient"] in base_rows]
            out["changes"][m] = {k: S.as_dict(S.change_from_baseline([b.get(k) for b, _ in both],
                                                                     [f.get(k) for _, f in both]))
                                 for k in present if k != DXA_TSCORE}
        out["correlations"][m] = {f"{y}|{x}": S.as_dict(S.correlation(_column(mr, x), _column(mr, y)))
                                  for y, x in pairs}
        out["regressions"][m] = {f"{y}|{x}": S.as_dict(S.regression(_column(mr, x), _column(mr, y)))
                                 for y, x in pairs}
        out["dependent"][m] = {
            a: S.as_dict(S.compare_dependent(_column(mr, POS), _column(mr, KEYS.vbmd_screw_mg_cm3),
                                             _column(mr, a)))
            for a in ABMD_KEYS if a in present and POS in present and KEYS.vbmd_screw_mg_cm3 in present}
    for k in CHANGE_MEASURES:
        if k in present:
            out["mixed"][k] = S.as_dict(S.mixed_model_change(
                _column(rows, "patient"), [int(r["month"]) for r in rows], _column(rows, k), base))
    out["arms"] = _arms(rows, months, base, base_rows, present)
    out["precision"] = _precision(all_rows, present)
    return out


def _arms(rows, months, base, base_rows, present) -> dict:
    arm_of = {r["patient"]: r.get("arm") for r in rows if r.get("arm") not in (None, "")}
    names = sorted({str(a) for a in arm_of.values()})
    if len(names) < 2:
        return {}
    res = {"names": names, "n": {a: sum(1 for v in arm_of.values() if str(v) == a) for a in names},
           "by_month": {}}
    for m in months:
        if m == base:
            continue
        mr = [r for r in rows if int(r["month"]) == m and r["patient"] in base_rows]
        res["by_month"][m] = {}
        for k in CHANGE_MEASURES:
            if k not in present:
                continue
            pct = {a: [] for a in names}
            for r in mr:
                b, f, arm = base_rows[r["patient"]].get(k), r.get(k), arm_of.get(r["patient"])
                if arm is not None and b not in (None, "", 0) and f not in (None, ""):
                    pct[str(arm)].append(100.0 * (float(f) - float(b)) / float(b))
            res["by_month"][m][k] = [S.as_dict(S.compare_arms(pct[a], pct[b], a, b))
                                     for a, b in combinations(names, 2)]
    return res


def repeat_pairs(rows, key) -> list[tuple[float, float]]:
    """``(first scan, first repeat)`` values of ``key`` per patient and visit with a repeat scan."""
    groups = {}
    for r in rows:
        groups.setdefault((r["patient"], int(r["month"])), {})[int(r.get("repeat") or 1)] = r.get(key)
    out = []
    for g in groups.values():
        reps = sorted(k for k in g if k > 1)
        if 1 in g and reps and g[1] not in (None, "") and g[reps[0]] not in (None, ""):
            out.append((float(g[1]), float(g[reps[0]])))
    return out


def _precision(all_rows, present) -> dict:
    groups = {}
    for r in all_rows:
        groups.setdefault((r["patient"], int(r["month"])), []).append(r)
    reps = [g for g in groups.values() if len(g) > 1]
    if not reps:
        return {}
    return {k: S.as_dict(S.precision([_column(g, k) for g in reps]))
            for k in present if k not in (DXA_ABMD, DXA_TSCORE)}


STATS_COLUMNS = ("analysis", "month", "y", "x", "method", "n", "estimate", "ci_low", "ci_high",
                 "estimate_pct", "ci_pct_low", "ci_pct_high", "statistic", "p", "family",
                 "p_holm", "note")


def stats_table(st: dict) -> list[dict]:
    """The statistics of :func:`cohort_statistics` as tidy rows (``stats.csv``).

    ``p_holm`` is Holm-adjusted over the rows of ``family`` "primary"; empty for the others.
    """
    rows = []

    def add(analysis, month, y, x, method, n, estimate=None, ci=(None, None), p=None,
            statistic=None, pct=None, ci_pct=(None, None), family="supportive", note=""):
        rows.append({"analysis": analysis, "month": month, "y": y, "x": x, "method": method,
                     "n": n, "estimate": estimate, "ci_low": ci[0], "ci_high": ci[1],
                     "estimate_pct": pct, "ci_pct_low": ci_pct[0], "ci_pct_high": ci_pct[1],
                     "statistic": statistic, "p": p, "family": family, "p_holm": None,
                     "note": note})

    for m in st["months"]:
        for key, c in st["correlations"][m].items():
            y, x = key.split("|")
            add("correlation", m, y, x, "Pearson", c["n"], c["r"], (c["ci_low"], c["ci_high"]),
                c["p"], family=PRIMARY, note=c["note"])
            add("correlation", m, y, x, "Spearman", c["n"], c["rho"],
                (c["rho_ci_low"], c["rho_ci_high"]), c["p_rho"], note=c["note"])
        for a, t in st["dependent"][m].items():
            x = f"{KEYS.vbmd_screw_mg_cm3} vs {a}"
            diff = None if t["r1"] is None or t["r2"] is None else t["r1"] - t["r2"]
            add("dependent_correlation", m, POS, x, "Meng-Rosenthal-Rubin", t["n"], diff,
                p=t["p"], statistic=t["z"], family=PRIMARY, note=t["note"])
            add("dependent_correlation", m, POS, x, "Steiger", t["n"], diff,
                p=t["p_steiger"], statistic=t["z_steiger"], note=t["note"])
        for k, c in st["changes"].get(m, {}).items():
            add("change_from_baseline", m, k, "", "paired t (per patient)", c["n"], c["mean_abs"],
                (c["ci_abs_low"], c["ci_abs_high"]), c["p_ttest"], pct=c["mean_pct"],
                ci_pct=(c["ci_pct_low"], c["ci_pct_high"]), note=c["note"])
            add("change_from_baseline", m, k, "", "Wilcoxon signed-rank", c["n"], p=c["p_wilcoxon"],
                note=c["note"])
    for k, mm in st["mixed"].items():
        for m, v in mm["visits"].items():
            add("mixed_model_change", int(m), k, "", "linear mixed model (random intercept, REML)",
                mm["n_obs"], v["estimate"], (v["ci_low"], v["ci_high"]), v["p"], pct=v["pct"],
                family=PRIMARY, note=mm["note"])
    for m, by_k in st["arms"].get("by_month", {}).items():
        for k, comps in by_k.items():
            for c in comps:
                x = f"{c['arm_a']} - {c['arm_b']} (% change)"
                add("arm_difference", m, k, x, "Welch t", c["n_a"] + c["n_b"], c["difference"],
                    (c["ci_low"], c["ci_high"]), c["p_welch"], family=PRIMARY, note=c["note"])
                add("arm_difference", m, k, x, "Mann-Whitney U", c["n_a"] + c["n_b"],
                    p=c["p_mannwhitney"], note=c["note"])
    for k, pr in st["precision"].items():
        add("precision", None, k, "", "RMS-SD of repeat scans (LSC = 2.77 RMS-SD)", pr["n_subjects"],
            pr["rms_sd"], pct=pr["rms_cv_pct"], note=pr["note"])
        add("precision", None, k, "", "least significant change (2.77 RMS-SD)", pr["n_subjects"],
            pr["lsc"], pct=pr["lsc_pct"], note=pr["note"])
    prim = [i for i, r in enumerate(rows) if r["family"] == PRIMARY]
    adj = S.holm([rows[i]["p"] for i in prim])
    for i, p in zip(prim, adj):
        rows[i]["p_holm"] = None if p != p else p
    return rows


def n_primary_tests(table) -> int:
    """Number of primary p-values the Holm adjustment ran over."""
    return sum(1 for r in table if r["family"] == PRIMARY and r["p"] is not None)
