"""Write the study report: ``report.html`` (self-contained), ``summary.md``, ``stats.json``,
``stats.csv``, PNG figures and one ParaView ``.pvd`` per patient across visits.

The report is built once as a list of blocks (headings, paragraphs, tables, figures) and
rendered twice, to Markdown and to HTML with the figures embedded as base64, so the two always
say the same. Every file is written atomically.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import platform
from pathlib import Path

from fesim.errors import InputError
from fesim.results import KEYS, key_info
from fesim.io.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from fesim.study import figures as F
from fesim.study.tables import (ABMD_KEYS, BMD_MEASURES, DXA_ABMD, MEASURES, POS, STATS_COLUMNS, STRENGTHS,
                                cohort_statistics, n_primary_tests, primary_rows, stats_table)

#: Figures always drawn (file names under ``figures/``); scatter plots are added per pair.
FIGURES = {
    "spaghetti": "fig_change_spaghetti.png",
    "curves_pullout": "fig_curves_pullout.png",
    "curves_compression": "fig_curves_compression.png",
    "bland_altman": "fig_precision_bland_altman.png",
}
#: Measures whose repeat-scan agreement the Bland-Altman figure shows.
PRECISION_FIGURE_KEYS = (KEYS.pullout_strength_N, KEYS.compression_strength_N, KEYS.vbmd_screw_mg_cm3,
                         KEYS.vbmd_trabecular_mg_cm3, KEYS.abmd_g_cm2, KEYS.pullout_stiffness_N_per_mm)
_SHORT = {DXA_ABMD: "DXA aBMD", **{k: key_info(k)["short"] for k in BMD_MEASURES if k != DXA_ABMD}}


def _f(v, d=2) -> str:
    return "n/a" if v is None else f"{v:.{d}f}"


def _dec(v) -> int:
    a = abs(v) if v is not None else 0
    return 1 if a >= 100 else 2 if a >= 1 else 3


def _p(p) -> str:
    return "n/a" if p is None else "< 0.001" if p < 0.001 else f"{p:.3f}"


def _ci(lo, hi, d=2) -> str:
    return "n/a" if lo is None else f"[{lo:.{d}f}, {hi:.{d}f}]"


def versions() -> dict:
    """Versions of fesim, Python and the numerical libraries the statistics used."""
    import matplotlib
    import numpy
    import scipy
    import statsmodels

    from fesim import __version__

    return {"fesim": __version__, "python": platform.python_version(), "numpy": numpy.__version__,
            "scipy": scipy.__version__, "statsmodels": statsmodels.__version__,
            "matplotlib": matplotlib.__version__}


def methods_text(rows, st, config: dict, n_primary: int) -> str:
    """The methods paragraph, generated from the rows, the run configuration and versions."""
    def uniq(key):
        vals = sorted({str(r.get(key)) for r in rows if r.get(key) not in (None, "")})
        return ", ".join(vals) or "not recorded"

    v = versions()
    opts = config.get("options", {})
    order = uniq(KEYS.element_order)
    mesh = ""
    if opts.get("mesh_size_mm") is not None:
        mesh = (f" Meshes were conforming {'tet10' if order == '2' else 'tet4' if order == '1' else 'tet'} "
                f"meshes of {opts['mesh_size_mm']:g} mm bulk and "
                f"{opts.get('screw_mesh_size_mm', 1.0):g} mm screw-interface element size")
        n_el = sorted(float(r[KEYS.n_elements]) for r in rows if r.get(KEYS.n_elements) not in (None, ""))
        mesh += f" (median {n_el[len(n_el) // 2]:,.0f} elements)." if n_el else "."
    law = f" Moduli from the '{opts['law']}' density-modulus law." if opts.get("law") else ""
    acc = (f" Secant accuracy preset '{opts['strength_accuracy']}'."
           if opts.get("strength_accuracy") and opts.get("strength") != "surrogate" else "")
    backend = (f" Scans were run with the '{config['backend']}' backend"
               f"{' on ' + str(config['workers']) + ' workers' if config.get('workers') else ''}."
               if config.get("backend") else "")
    return (
        f"Each QCT scan was analysed with fesim {v['fesim']} (Python {v['python']}, NumPy "
        f"{v['numpy']}).{mesh}{law} Pullout and compression strength: {uniq(KEYS.strength_criterion)}."
        f"{acc}{backend} Statistics used SciPy {v['scipy']} and statsmodels {v['statsmodels']}. Per "
        "visit, measures are mean ± SD with a t-based 95 % CI of the mean; associations are "
        "Pearson r with a 95 % CI from Fisher's z transform and Spearman rho with the CI of "
        "Bonett & Wright (2000). The correlations of pullout strength with screw-region vBMD and "
        "with areal BMD, which share pullout strength, are compared with the z-test of Meng, "
        "Rosenthal & Rubin (1992) and with Steiger's (1980) Z. Changes from baseline are given per "
        "patient (absolute and %, mean, SD, t-based 95 % CI; paired t-test, Wilcoxon signed-rank "
        "test) and as the visit effects of a linear mixed model with a random intercept per patient "
        "(REML; statsmodels MixedLM), which uses every available visit. "
        + ("Arms are compared on the per-patient % change by Welch's t-test and the Mann-Whitney U "
           "test. " if st["arms"] else "")
        + ("Precision from repeat scans is the root-mean-square SD and CV (Glüer et al. 1995), "
           "with the least significant change 2.77 × RMS-SD. " if st["precision"] else "")
        + _longitudinal_method(config.get("longitudinal"), rows)
        + f"Multiplicity: p-values of the {n_primary} primary tests (Pearson correlations, Meng "
        "tests, mixed-model changes" + (", arm comparisons" if st["arms"] else "")
        + ") are Holm-adjusted (p_holm in stats.csv); the other p-values are supportive and "
        "unadjusted.")


def _longitudinal_method(mode, rows) -> str:
    modes = {str(r[KEYS.longitudinal_mode]) for r in rows if r.get(KEYS.longitudinal_mode) not in (None, "")}
    mode = ", ".join(sorted(modes)) if modes else (mode or "off")
    if mode == "off":
        return "Each scan was analysed on its own (longitudinal consistency off). "
    return (f"Longitudinal consistency '{mode}': each follow-up (repeat scans included) was "
            "registered rigidly to its patient's baseline scan (normalised cross-correlation of the "
            "calibrated BMD over the dilated baseline vertebra) and analysed in the baseline's frame "
            "with the baseline's screw plan and measurement regions"
            + (", on the baseline's mesh with the follow-up's BMD" if mode == "mesh" else "")
            + "; follow-ups that did not register (mask Dice, volume or BMD correlation out of "
            "limits) were refused. ")


def _scatter_pairs(st) -> list[tuple[str, str]]:
    return [(y, x) for y in STRENGTHS for x in BMD_MEASURES
            if y in st["measures"] and x in st["measures"]]


def _blocks(rows, st, table, notes, config, figs) -> list[tuple]:
    """The report as blocks: ("h", level, text), ("p", text), ("table", header, rows), ("fig", caption, name)."""
    months = st["months"]
    b = [("h", 1, "fesim study report"),
         ("p", f"Cohort: {st['n_patients']} patients, {st['n_scans']} scans, visits at "
               f"{', '.join(f'month {m}' for m in months)} (baseline month {st['baseline_month']}).")]
    b += [("note", n) for n in notes]

    b.append(("h", 2, "Measures per visit (mean ± SD [95 % CI])"))
    tab = []
    for k in st["measures"]:
        cells = []
        for m in months:
            d = st["descriptive"][m][k]
            dd = _dec(d["mean"])
            cells.append("n/a" if d["mean"] is None else
                         f"{d['mean']:.{dd}f} ± {_f(d['sd'], dd)} {_ci(d['ci_low'], d['ci_high'], dd)} (n={d['n']})")
        tab.append([f"{MEASURES[k][0]} ({MEASURES[k][1]})", *cells])
    b.append(("table", ["Measure", *[f"month {m}" for m in months]], tab))

    b.append(("h", 2, "Correlations per visit"))
    for m in months:
        b.append(("h", 3, f"Month {m}"))
        tab = []
        for key, c in st["correlations"][m].items():
            y, x = key.split("|")
            tab.append([MEASURES[y][0], MEASURES[x][0], str(c["n"]),
                        _f(c["r"]), _ci(c["ci_low"], c["ci_high"]), _p(c["p"]),
                        _f(c["rho"]), _ci(c["rho_ci_low"], c["rho_ci_high"]), _p(c["p_rho"]),
                        c["note"]])
        b.append(("table", ["Strength", "BMD measure", "n", "Pearson r", "95 % CI", "p",
                            "Spearman rho", "95 % CI", "p", "note"], tab))
        dep = st["dependent"][m]
        if dep:
            tab = [[f"r(POS, screw vBMD) = {_f(t['r1'])} vs r(POS, {_SHORT[a]}) = {_f(t['r2'])}",
                    _f(t["r12"]), str(t["n"]), _f(t["z"]), _p(t["p"]), _f(t["z_steiger"]),
                    _p(t["p_steiger"]), t["note"]] for a, t in dep.items()]
            b.append(("p", f"Month {m}: dependent-correlation test, screw-region vBMD vs areal BMD "
                           "as predictors of pullout strength (POS):"))
            b.append(("table", ["Comparison", "r between predictors", "n", "Meng z", "p",
                                "Steiger Z", "p", "note"], tab))

    b.append(("h", 2, "Change from baseline"))
    tab = []
    for m, ch in st["changes"].items():
        for k, c in ch.items():
            d = _dec(c["mean_abs"])
            tab.append([MEASURES[k][0], str(m), str(c["n"]),
                        f"{_f(c['mean_abs'], d)} ± {_f(c['sd_abs'], d)} {_ci(c['ci_abs_low'], c['ci_abs_high'], d)}",
                        f"{_f(c['mean_pct'], 1)} ± {_f(c['sd_pct'], 1)} {_ci(c['ci_pct_low'], c['ci_pct_high'], 1)}",
                        _p(c["p_ttest"]), _p(c["p_wilcoxon"])])
    if tab:
        b.append(("p", "Per patient (mean ± SD [95 % CI]):"))
        b.append(("table", ["Measure", "Month", "n", "Absolute change", "% change", "paired t p",
                            "Wilcoxon p"], tab))
    tab = []
    holm = {(r["y"], r["month"]): r["p_holm"] for r in table if r["analysis"] == "mixed_model_change"}
    for k, mm in st["mixed"].items():
        if not mm["visits"]:
            tab.append([MEASURES[k][0], "", "", "", "", "", mm["note"]])
        for m, v in mm["visits"].items():
            d = _dec(v["estimate"])
            tab.append([MEASURES[k][0], str(m), f"{v['estimate']:.{d}f} {_ci(v['ci_low'], v['ci_high'], d)}",
                        _f(v["pct"], 1), _p(v["p"]), _p(holm.get((k, int(m)))),
                        mm["note"] or f"{mm['n_obs']} scans, {mm['n_patients']} patients"])
    if tab:
        b.append(("p", "Linear mixed model over all visits (random intercept per patient, REML): "
                       "estimated change from baseline [95 % CI]:"))
        b.append(("table", ["Measure", "Month", "Change [95 % CI]", "% of baseline mean", "p",
                            "p (Holm)", "note"], tab))

    if st["arms"]:
        b.append(("h", 2, "Arms"))
        b.append(("p", "Arms: " + ", ".join(f"{a} (n = {n})" for a, n in st["arms"]["n"].items())
                  + ". Difference of the mean % change from baseline:"))
        tab = []
        for m, by_k in st["arms"]["by_month"].items():
            for k, comps in by_k.items():
                for c in comps:
                    tab.append([MEASURES[k][0], str(m), f"{c['arm_a']} - {c['arm_b']}",
                                f"{_f(c['difference'], 1)} {_ci(c['ci_low'], c['ci_high'], 1)}",
                                _p(c["p_welch"]), _p(c["p_mannwhitney"]), c["note"]])
        b.append(("table", ["Measure", "Month", "Arms", "Difference, % [95 % CI]", "Welch p",
                            "Mann-Whitney p", "note"], tab))
    if st["precision"]:
        b.append(("h", 2, "Precision (repeat scans)"))
        tab = [[MEASURES[k][0], str(p["n_subjects"]), str(p["n_scans"]), _f(p["rms_sd"], 3),
                _f(p["rms_cv_pct"], 2), _f(p["lsc"], 3), _f(p["lsc_pct"], 2)]
               for k, p in st["precision"].items()]
        b.append(("table", ["Measure", "subjects", "scans", "RMS-SD", "RMS-CV %", "LSC", "LSC %"], tab))
        b.append(("p", "Repeat scans: same patient and visit, repositioned and rescanned. RMS-SD and "
                       "RMS-CV over subjects (Glüer et al. 1995); LSC = 2.77 × RMS-SD is the least "
                       "change of one patient's value that exceeds the measurement error at 95 % "
                       f"confidence. Longitudinal mode of these numbers: {_mode_text(rows, config)}."))

    b += _longitudinal_blocks(rows, config)
    if figs:
        b.append(("h", 2, "Figures"))
        b += [("fig", cap, name) for cap, name, _ in figs]
    b += [("h", 2, "Methods"), ("p", methods_text(rows, st, config, n_primary_tests(table)))]
    return b


def _mode_text(rows, config) -> str:
    modes = sorted({str(r[KEYS.longitudinal_mode]) for r in rows if r.get(KEYS.longitudinal_mode) not in (None, "")})
    return ", ".join(modes) if modes else str((config or {}).get("longitudinal") or "off")


_MODE_MEANING = {
    "off": "every scan planned, meshed and measured on its own",
    "plan": "each follow-up registered rigidly to its patient's baseline and analysed with the "
            "baseline's screw plan and measurement regions (its own mesh)",
    "mesh": "each follow-up registered rigidly to its patient's baseline and its BMD mapped onto "
            "the baseline's mesh, with the baseline's screws and regions (same mesh, new densities)",
}


def _longitudinal_blocks(rows, config) -> list[tuple]:
    """The section saying which longitudinal mode produced the numbers, with registration residuals."""
    mode = _mode_text(rows, config)
    b = [("h", 2, "Longitudinal consistency"),
         ("p", f"Mode: {mode} ({'; '.join(_MODE_MEANING.get(m, m) for m in mode.split(', '))}). "
               "Patients with a single scan are always analysed on their own.")]
    tab = [[str(r["patient"]), str(r["month"]), str(r.get("repeat") or 1),
            _f(r.get(KEYS.registration_rotation_deg), 2), _f(r.get(KEYS.registration_shift_mm), 2),
            _f(r.get(KEYS.registration_dice), 3), _f(r.get(KEYS.registration_correlation), 3),
            _f(r.get(KEYS.registration_rms_bmd_mg_cm3), 1)]
           for r in rows if r.get(KEYS.registration_dice) not in (None, "")]
    if tab:
        b.append(("p", "Registration of each follow-up to its baseline (rigid, vertebra BMD; the "
                       "transform's rotation and shift, mask Dice, BMD correlation and RMS BMD "
                       "difference after registration):"))
        b.append(("table", ["Patient", "Month", "Repeat", "Rotation (°)", "Shift (mm)", "Dice", "r BMD",
                            "RMS ΔBMD (mg/cm³)"], tab))
    return b


def _markdown(blocks) -> str:
    out = []
    for blk in blocks:
        if blk[0] == "h":
            out += ["#" * blk[1] + " " + blk[2], ""]
        elif blk[0] == "p":
            out += [blk[1], ""]
        elif blk[0] == "note":
            out += [f"> {blk[1]}", ""]
        elif blk[0] == "table":
            out.append("| " + " | ".join(blk[1]) + " |")
            out.append("|" + "---|" * len(blk[1]))
            out += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in blk[2]]
            out.append("")
        elif blk[0] == "fig":
            out += [f"![{blk[1]}](figures/{blk[2]})", ""]
    return "\n".join(out)


_CSS = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:0.85em}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}th{background:#eee}"
        "blockquote{background:#fff6dd;border-left:4px solid #e0b000;margin:1em 0;padding:0.5em 1em}"
        "figure{margin:1em 0}img{max-width:100%}figcaption{font-size:0.85em;color:#555}")


def _html(blocks, png: dict) -> str:
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           "<title>fesim study report</title>", f"<style>{_CSS}</style></head><body>"]
    for blk in blocks:
        if blk[0] == "h":
            out.append(f"<h{blk[1]}>{e(blk[2])}</h{blk[1]}>")
        elif blk[0] == "p":
            out.append(f"<p>{e(blk[1])}</p>")
        elif blk[0] == "note":
            out.append(f"<blockquote>{e(blk[1])}</blockquote>")
        elif blk[0] == "table":
            out.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in blk[1]) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in blk[2]]
            out.append("</table>")
        elif blk[0] == "fig":
            data = base64.b64encode(png[blk[2]]).decode("ascii")
            out.append(f'<figure><img alt="{e(blk[1])}" src="data:image/png;base64,{data}">'
                       f"<figcaption>{e(blk[1])}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)


def _stats_csv(table) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=STATS_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in table:
        w.writerow({k: "" if v is None else f"{v:.12g}" if isinstance(v, float) else v
                    for k, v in r.items()})
    return buf.getvalue()


def write_patient_pvds(rows, scans_dir, out_dir) -> list[Path]:
    """One ``patients/<patient>_<case>.pvd`` per patient and load case, visits as time (month)."""
    from fesim.io.vtk import write_pvd

    written = []
    scans_dir, out_dir = Path(scans_dir), Path(out_dir)
    for p in sorted({r["patient"] for r in rows}):
        months = sorted(int(r["month"]) for r in rows if r["patient"] == p)
        for case in F.CURVE_CASES:
            entries = [(m, scans_dir / f"{p}_m{m}" / f"{case}.vtu") for m in months]
            entries = [(m, f) for m, f in entries if f.is_file()]
            if entries:
                written.append(write_pvd(out_dir / "patients" / f"{p}_{case}.pvd", entries))
    return written


def write_report(rows, out_dir, notes=(), figures: bool = True, scans_dir=None,
                 config: dict | None = None, baseline_month: int | None = None) -> dict:
    """Write the study report for a study's result rows.

    Parameters
    ----------
    rows : list of dict
        ``results.csv`` rows (from :func:`fesim.study.cohort.run_cohort` or
        :func:`fesim.study.cohort.load_results_csv`).
    out_dir : path
        Folder to write into (created): ``report.html``, ``summary.md``, ``stats.json``,
        ``stats.csv``, ``figures/*.png``, ``patients/*.pvd``.
    notes : sequence of str
        Remarks quoted at the top of the report (e.g. that the cohort is synthetic).
    figures : bool
        Draw the figures.
    scans_dir : path, optional
        The study's ``scans`` folder: force-displacement curves and VTU files are read from it
        (default ``out_dir/scans``; skipped when absent).
    config : dict, optional
        ``{"options": run options, "backend": ..., "workers": ...}`` for the methods paragraph.
    baseline_month : int, optional
        Default: the first visit.

    Returns
    -------
    dict
        The statistics written to ``stats.json``.
    """
    rows = [r for r in rows if any(r.get(k) not in (None, "") for k in STRENGTHS)]
    if not rows:
        raise InputError("no successful scans to report on (see failures.json of the study run)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scans_dir = Path(scans_dir) if scans_dir is not None else out_dir / "scans"
    st = cohort_statistics(rows, baseline_month)
    table = stats_table(st)
    prim = primary_rows(rows)
    figs = []
    if figures:
        for y, x in _scatter_pairs(st):
            figs.append((f"{MEASURES[y][0]} vs {MEASURES[x][0]} per visit (least-squares line, "
                         "Pearson r [95 % CI])", f"fig_{y.split('_')[0]}_vs_{x}.png",
                         F.scatter(st, prim, y, x)))
        keys = [k for k in (*STRENGTHS, KEYS.vbmd_screw_mg_cm3, *ABMD_KEYS) if k in st["measures"]][:4]
        figs.append(("Per-patient trajectories with the visit mean ± 95 % CI", FIGURES["spaghetti"],
                     F.spaghetti(st, prim, keys)))
        curves = F.load_curves(scans_dir, prim) if scans_dir.is_dir() else {}
        ba = F.bland_altman(rows, [k for k in PRECISION_FIGURE_KEYS if k in st["precision"]])
        if ba is not None:
            figs.append(("Precision: Bland-Altman plots of repeat scans (repeat - first, % of the "
                         "pair's mean; mean difference and 95 % limits of agreement)",
                         FIGURES["bland_altman"], ba))
        for case, key in (("pullout", "curves_pullout"), ("compression", "curves_compression")):
            png = F.curves(curves, case)
            if png is not None:
                figs.append((f"Force-displacement curves per patient, {case}"
                             + (" (left screw solid, right dashed)" if case == "pullout" else "")
                             + ", one colour per visit", FIGURES[key], png))
        for _, name, png in figs:
            atomic_write_bytes(out_dir / "figures" / name, png)
    if scans_dir.is_dir():
        write_patient_pvds(prim, scans_dir, out_dir)
    blocks = _blocks(rows, st, table, list(notes), config or {}, figs)
    atomic_write_text(out_dir / "summary.md", _markdown(blocks))
    atomic_write_text(out_dir / "report.html", _html(blocks, {n: png for _, n, png in figs}))
    atomic_write_text(out_dir / "stats.csv", _stats_csv(table))
    atomic_write_json(out_dir / "stats.json", json.loads(json.dumps(st, allow_nan=False)))
    return st
