"""Write the study report: ``summary.md``, ``stats.json`` and PNG figures.

Figures are drawn with matplotlib's Agg canvas directly (no pyplot), so writing a report
never touches the caller's matplotlib backend or global state.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fesim.errors import InputError
from fesim.io.atomic import atomic_path
from fesim.study.cohort import atomic_write_json, atomic_write_text
from fesim.study.stats import MEASURES, POS, cohort_statistics

FIGURES = {
    "pos_vbmd": "fig_pullout_vs_screw_vbmd.png",
    "pos_abmd": "fig_pullout_vs_abmd.png",
    "trajectories": "fig_trajectories.png",
}
_ABMD_LABEL = {"dxa_abmd_g_cm2": "DXA aBMD", "abmd_g_cm2": "QCT-derived aBMD"}


def _f(v, digits=2) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _decimals(v) -> int:
    a = abs(v)
    return 1 if a >= 100 else 2 if a >= 1 else 3


def _pm(mean, sd) -> str:
    """``mean ± sd`` with decimals chosen from the size of the mean."""
    if mean is None:
        return "n/a"
    d = _decimals(mean)
    return f"{mean:.{d}f} ± {'n/a' if sd is None else f'{sd:.{d}f}'}"


def _p(p) -> str:
    return "n/a" if p is None else "< 0.001" if p < 0.001 else f"{p:.3f}"


def _peq(p) -> str:
    return "p < 0.001" if p is not None and p < 0.001 else f"p = {_p(p)}"


def _corr_line(c: dict) -> str:
    if c["r"] is None:
        return f"n = {c['n']}: not computed ({c['note']})"
    ci = f"[{_f(c['ci_low'])}, {_f(c['ci_high'])}]" if c["ci_low"] is not None else "[CI n/a]"
    return (f"r = {c['r']:.2f} {ci}, {_peq(c['p'])}; Spearman rho = {_f(c['rho'])}, "
            f"{_peq(c['p_rho'])}; n = {c['n']}")


def _abmd_keys(st) -> list[str]:
    return [k for k in ("dxa_abmd_g_cm2", "abmd_g_cm2") if k in st["measures"]]


def _methods(rows, st) -> str:
    def uniq(key):
        vals = sorted({str(r.get(key)) for r in rows if r.get(key) not in (None, "")})
        return ", ".join(vals) or "not recorded"

    n_el = [float(r["n_elements"]) for r in rows if r.get("n_elements") not in (None, "")]
    n_dof = [float(r["n_dofs"]) for r in rows if r.get("n_dofs") not in (None, "")]
    mesh = (f" Meshes had {np.median(n_el):,.0f} elements and {np.median(n_dof):,.0f} degrees of "
            f"freedom (median over scans)." if n_el and n_dof else "")
    return (
        f"Each QCT scan was processed with fesim {uniq('fesim_version')} (element order "
        f"{uniq('element_order')}).{mesh} Pullout and compression strength were obtained with the "
        f"strength criterion '{uniq('strength_criterion')}'. Per time point, measures are "
        "summarised as mean ± SD; changes are per-patient percentages from baseline tested with "
        "a two-sided paired t-test and a Wilcoxon signed-rank test. Associations are Pearson r "
        "with a 95 % confidence interval from Fisher's z transform (and Spearman rho); the "
        "correlations of pullout strength with screw-region vBMD and with areal BMD, which share "
        "pullout strength, are compared with the z-test of Meng, Rosenthal & Rubin (1992). "
        "p-values are not adjusted for multiple comparisons.")


def _markdown(rows, st, notes, figures) -> str:
    months = st["months"]
    out = ["# fesim cohort study report", "",
           f"Cohort: {st['n_patients']} patients, {st['n_scans']} scans, time points "
           f"{', '.join(f'month {m}' for m in months)} (baseline month {st['baseline_month']}).", ""]
    out += [f"> {n}" for n in notes] + ([""] if notes else [])

    out += ["## Measures per time point (mean ± SD)", "",
            "| Measure | " + " | ".join(f"month {m}" for m in months) + " |",
            "|---|" + "---|" * len(months)]
    for k in st["measures"]:
        label, unit = MEASURES[k]
        cells = []
        for m in months:
            d = st["descriptive"][m][k]
            cells.append("n/a" if d["mean"] is None else f"{_pm(d['mean'], d['sd'])} (n={d['n']})")
        out.append(f"| {label} ({unit}) | " + " | ".join(cells) + " |")

    out += ["", "## Change from baseline", "",
            "| Measure | Month | n | % change, mean ± SD | paired t p | Wilcoxon p |",
            "|---|---|---|---|---|---|"]
    for m, ch in st["changes"].items():
        for k, c in ch.items():
            pct = ("n/a" if c["mean_pct"] is None else
                   f"{c['mean_pct']:+.1f} ± {_f(c['sd_pct'], 1)}")
            out.append(f"| {MEASURES[k][0]} | {m} | {c['n']} | {pct} | {_p(c['p_ttest'])} | "
                       f"{_p(c['p_wilcoxon'])} |")
    if not st["changes"]:
        out.append("| (only one time point) | | | | | |")

    out += ["", "## Correlations per time point", ""]
    for m in months:
        cr = st["correlations"][m]
        out += [f"### Month {m}: pullout strength vs screw-region vBMD", ""]
        c = cr.get(f"{POS}|vbmd_screw_mg_cm3")
        out += [_corr_line(c) if c else "not available", ""]
        c = cr.get(f"{POS}|vbmd_trabecular_mg_cm3")
        if c:
            out += [f"Pullout strength vs trabecular vBMD: {_corr_line(c)}", ""]
        out += [f"### Month {m}: pullout strength vs areal BMD", ""]
        for a in _abmd_keys(st):
            out += [f"- {_ABMD_LABEL[a]}: {_corr_line(cr[f'{POS}|{a}'])}"]
        out += [""] if _abmd_keys(st) else ["not available", ""]
        out += [f"### Month {m}: compression strength vs trabecular vBMD", ""]
        c = cr.get("compression_strength_N|vbmd_trabecular_mg_cm3")
        out += [_corr_line(c) if c else "not available", ""]
        out += [f"### Month {m}: screw-region vBMD vs areal BMD as predictors of pullout strength", ""]
        for a, t in st["dependent"][m].items():
            line = (f"not computed ({t['note']})" if t["z"] is None else
                    f"r(POS, vBMD) = {t['r1']:.2f} vs r(POS, {_ABMD_LABEL[a]}) = {t['r2']:.2f} "
                    f"(r between predictors {t['r12']:.2f}): Meng z = {t['z']:.2f}, "
                    f"{_peq(t['p'])}, n = {t['n']}")
            out.append(f"- vs {_ABMD_LABEL[a]}: {line}")
        out += [""] if st["dependent"][m] else ["not available", ""]

    if figures:
        out += ["## Figures", ""]
        out += [f"![{cap}]({name})" + "\n" for cap, name in figures]
    out += ["## Methods", "", _methods(rows, st), ""]
    return "\n".join(out)


def _scatter_figure(st, rows, xkey, xlabel, path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    months = st["months"]
    fig = Figure(figsize=(3.6 * len(months), 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(1, len(months), sharey=True))
    for ax, m in zip(axes, months):
        pts = np.array([(r[xkey], r[POS]) for r in rows if int(r["month"]) == m
                        and r.get(xkey) not in (None, "") and r.get(POS) not in (None, "")],
                       dtype=float).reshape(-1, 2)
        ax.scatter(pts[:, 0], pts[:, 1], s=18, color="tab:blue")
        reg = st["regressions"][m].get(f"{POS}|{xkey}")
        cor = st["correlations"][m].get(f"{POS}|{xkey}")
        if reg and reg["slope"] is not None and pts.shape[0] >= 2:
            xs = np.linspace(pts[:, 0].min(), pts[:, 0].max(), 2)
            ax.plot(xs, reg["slope"] * xs + reg["intercept"], color="tab:red", lw=1)
        r_txt = f"r = {cor['r']:.2f}" if cor and cor["r"] is not None else "r n/a"
        ax.set_title(f"month {m} ({r_txt}, n = {pts.shape[0]})", fontsize=9)
        ax.set_xlabel(xlabel)
    axes[0].set_ylabel("pullout strength (N)")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)


def _trajectory_figure(st, rows, path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = [k for k in (POS, "compression_strength_N", "vbmd_screw_mg_cm3", *_abmd_keys(st)[:1])
            if k in st["measures"]]
    fig = Figure(figsize=(3.6 * len(keys), 3.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(1, len(keys)))
    patients = sorted({r["patient"] for r in rows})
    for ax, k in zip(axes, keys):
        for p in patients:
            pts = sorted((int(r["month"]), float(r[k])) for r in rows
                         if r["patient"] == p and r.get(k) not in (None, ""))
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, lw=0.8, color="0.55")
        means = [(m, st["descriptive"][m][k]["mean"]) for m in st["months"]
                 if st["descriptive"][m][k]["mean"] is not None]
        if means:
            ax.plot(*zip(*means), marker="s", lw=2, color="tab:red", label="mean")
            ax.legend(fontsize=8)
        ax.set_xlabel("month")
        unit = MEASURES[k][1].replace("^2", "$^2$").replace("^3", "$^3$")
        ax.set_ylabel(f"{MEASURES[k][0]} ({unit})", fontsize=9)
        ax.set_xticks(st["months"])
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)


def write_report(rows, out_dir, notes=(), figures: bool = True) -> dict:
    """Write ``summary.md``, ``stats.json`` and figures for a cohort's result rows.

    Parameters
    ----------
    rows : list of dict
        ``results.csv`` rows (from :func:`fesim.study.cohort.run_cohort` or
        :func:`fesim.study.cohort.load_results_csv`).
    out_dir : path
        Folder to write into (created).
    notes : sequence of str
        Remarks quoted at the top of the report (e.g. that the cohort is synthetic).
    figures : bool
        Draw the PNG figures (needs matplotlib).

    Returns
    -------
    dict
        The statistics written to ``stats.json``.
    """
    rows = [r for r in rows if r.get(POS) not in (None, "")]
    if not rows:
        raise InputError("no successful scans to report on (see failures.json of the cohort run)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    st = cohort_statistics(rows)
    figs = []
    if figures:
        _scatter_figure(st, rows, "vbmd_screw_mg_cm3", "screw-region vBMD (mg/cm$^3$)",
                        out_dir / FIGURES["pos_vbmd"])
        figs.append(("Pullout strength vs screw-region vBMD", FIGURES["pos_vbmd"]))
        if _abmd_keys(st):
            a = _abmd_keys(st)[0]
            _scatter_figure(st, rows, a, f"{_ABMD_LABEL[a]} (g/cm$^2$)", out_dir / FIGURES["pos_abmd"])
            figs.append((f"Pullout strength vs {_ABMD_LABEL[a]}", FIGURES["pos_abmd"]))
        _trajectory_figure(st, rows, out_dir / FIGURES["trajectories"])
        figs.append(("Per-patient trajectories", FIGURES["trajectories"]))
    atomic_write_text(out_dir / "summary.md", _markdown(rows, st, list(notes), figs))
    atomic_write_json(out_dir / "stats.json", json.loads(json.dumps(st, allow_nan=False)))
    return st
