"""Figures of the study report, returned as PNG bytes.

Drawn with matplotlib's Agg canvas directly (no pyplot), so a report never touches the
caller's matplotlib backend or global state.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from .tables import MEASURES, repeat_pairs

CURVE_CASES = ("pullout_left", "pullout_right", "compression")


def _fig(w, h):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig, dpi=100) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _label(key) -> str:
    name, unit = MEASURES.get(key, (key, ""))
    unit = unit.replace("^2", "$^2$").replace("^3", "$^3$")
    return f"{name} ({unit})" if unit else name


def _num(rows, key):
    return np.array([np.nan if r.get(key) in (None, "") else float(r[key]) for r in rows])


def scatter(st, rows, ykey, xkey) -> bytes:
    """``ykey`` against ``xkey``, one panel per visit, least-squares line and Pearson r (CI)."""
    months = st["months"]
    fig = _fig(3.3 * len(months), 3.2)
    axes = np.atleast_1d(fig.subplots(1, len(months), sharey=True))
    for ax, m in zip(axes, months):
        mr = [r for r in rows if int(r["month"]) == m]
        x, y = _num(mr, xkey), _num(mr, ykey)
        ok = np.isfinite(x) & np.isfinite(y)
        ax.scatter(x[ok], y[ok], s=16, color="tab:blue")
        reg = st["regressions"][m].get(f"{ykey}|{xkey}")
        cor = st["correlations"][m].get(f"{ykey}|{xkey}")
        if reg and reg["slope"] is not None and ok.sum() >= 2:
            xs = np.linspace(x[ok].min(), x[ok].max(), 2)
            ax.plot(xs, reg["slope"] * xs + reg["intercept"], color="tab:red", lw=1)
        txt = "r n/a"
        if cor and cor["r"] is not None:
            txt = f"r = {cor['r']:.2f}"
            if cor["ci_low"] is not None:
                txt += f" [{cor['ci_low']:.2f}, {cor['ci_high']:.2f}]"
        ax.set_title(f"month {m}: {txt}, n = {int(ok.sum())}", fontsize=8)
        ax.set_xlabel(_label(xkey), fontsize=8)
    axes[0].set_ylabel(_label(ykey), fontsize=8)
    return _png(fig)


def spaghetti(st, rows, keys) -> bytes:
    """Per-patient trajectories (grey) with the visit means and their 95 % CI (red)."""
    fig = _fig(3.3 * len(keys), 3.1)
    axes = np.atleast_1d(fig.subplots(1, len(keys)))
    patients = sorted({r["patient"] for r in rows})
    for ax, k in zip(axes, keys):
        for p in patients:
            pts = sorted((int(r["month"]), float(r[k])) for r in rows
                         if r["patient"] == p and r.get(k) not in (None, ""))
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=2, lw=0.6, color="0.6")
        d = [(m, st["descriptive"][m][k]) for m in st["months"]
             if st["descriptive"][m][k]["mean"] is not None]
        if d:
            ms = np.array([m for m, _ in d], dtype=float)
            mean = np.array([v["mean"] for _, v in d])
            lo = np.array([v["ci_low"] if v["ci_low"] is not None else v["mean"] for _, v in d])
            hi = np.array([v["ci_high"] if v["ci_high"] is not None else v["mean"] for _, v in d])
            ax.errorbar(ms, mean, yerr=[mean - lo, hi - mean], marker="s", lw=2, capsize=4,
                        color="tab:red", label="mean ± 95 % CI")
            ax.legend(fontsize=7)
        ax.set_xlabel("month")
        ax.set_ylabel(_label(k), fontsize=8)
        ax.set_xticks(st["months"])
    return _png(fig)


def read_curve(path) -> tuple[np.ndarray, np.ndarray] | None:
    """(displacement mm, force N) of a ``<case>_curve.csv``, or None when absent or unreadable."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            data = [(float(a), float(b)) for a, b in list(csv.reader(fh))[1:]]
    except (OSError, ValueError):
        return None
    return (np.array([a for a, _ in data]), np.array([b for _, b in data])) if data else None


def load_curves(scans_dir, rows) -> dict:
    """``{patient: {month: {case: (d, F)}}}`` from each scan folder's curve CSVs."""
    out = {}
    for r in rows:
        sid = f"{r['patient']}_m{int(r['month'])}"
        for case in CURVE_CASES:
            c = read_curve(Path(scans_dir) / sid / f"{case}_curve.csv")
            if c is not None:
                out.setdefault(r["patient"], {}).setdefault(int(r["month"]), {})[case] = c
    return out


def curves(curves_by_patient, case_prefix: str) -> bytes | None:
    """Force-displacement curves per patient (one panel each), one line per visit.

    ``case_prefix`` "pullout" draws the left screw (the right one dashed), "compression" the
    compression case. None when no curve exists.
    """
    patients = [p for p in sorted(curves_by_patient)
                if any(c.startswith(case_prefix) for v in curves_by_patient[p].values() for c in v)]
    if not patients:
        return None
    months = sorted({m for p in patients for m in curves_by_patient[p]})
    colors = {m: c for m, c in zip(months, ("tab:blue", "tab:orange", "tab:green", "tab:red",
                                            "tab:purple", "tab:brown", "tab:pink", "tab:gray"))}
    ncol = min(7, len(patients))
    nrow = -(-len(patients) // ncol)
    fig = _fig(1.9 * ncol, 1.7 * nrow + 0.4)
    axes = np.atleast_1d(fig.subplots(nrow, ncol, sharex=True, sharey=True)).ravel()
    for ax, p in zip(axes, patients):
        for m, cases in sorted(curves_by_patient[p].items()):
            for case, (d, f) in sorted(cases.items()):
                if case.startswith(case_prefix):
                    ax.plot(d, f, lw=0.9, color=colors.get(m, "k"),
                            ls="--" if case.endswith("right") else "-",
                            label=f"month {m}" if not case.endswith("right") else None)
        ax.set_title(p, fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in axes[len(patients):]:
        ax.set_visible(False)
    h, lab = axes[0].get_legend_handles_labels()
    if h:
        fig.legend(h, lab, loc="outside upper center", ncol=len(h), fontsize=7)
    fig.supxlabel("displacement (mm)", fontsize=8)
    fig.supylabel("force (N)", fontsize=8)
    return _png(fig, dpi=90)


def bland_altman(rows, keys) -> bytes | None:
    """Bland-Altman plots of repeat scans, one panel per measure: the difference (repeat - first,
    % of the pair's mean) against the pair's mean, with the mean difference and its 95 % limits
    of agreement (mean ± 1.96 SD). None when no measure has a repeat pair."""
    panels = [(k, np.array(repeat_pairs(rows, k))) for k in keys]
    panels = [(k, p) for k, p in panels if len(p)]
    if not panels:
        return None
    ncol = min(3, len(panels))
    nrow = -(-len(panels) // ncol)
    fig = _fig(3.3 * ncol, 2.9 * nrow)
    axes = np.atleast_1d(fig.subplots(nrow, ncol)).ravel()
    for ax, (k, p) in zip(axes, panels):
        mean = p.mean(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            diff = 100.0 * (p[:, 1] - p[:, 0]) / mean
        ok = np.isfinite(diff)
        ax.scatter(mean[ok], diff[ok], s=16, color="tab:blue")
        if ok.sum():
            md = float(diff[ok].mean())
            sd = float(diff[ok].std(ddof=1)) if ok.sum() > 1 else 0.0
            ax.axhline(md, color="tab:red", lw=1, label=f"mean {md:+.2f} %")
            for v in (md - 1.96 * sd, md + 1.96 * sd):
                ax.axhline(v, color="tab:red", lw=0.8, ls="--")
            ax.legend(fontsize=7, title=f"limits ±{1.96 * sd:.2f} %", title_fontsize=7)
        ax.axhline(0.0, color="0.6", lw=0.6)
        ax.set_xlabel(f"mean of the pair: {_label(k)}", fontsize=8)
        ax.set_ylabel("repeat - first (% of mean)", fontsize=8)
        ax.set_title(f"{MEASURES.get(k, (k,))[0]}, n = {int(ok.sum())}", fontsize=8)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    return _png(fig)
