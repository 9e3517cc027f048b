"""One figure per drift run: NDCG@10 and every drift metric against corpus fraction.

Panels (a) and (b) answer "what does a small calibration cost": NDCG@10 of the frozen
calibration against the fraction it was learned on (float32 and the full calibration for
reference), and its paired delta to the full calibration with CI, which is far tighter than
either NDCG's own interval. The other panels show, checkpoint by checkpoint, the NDCG gap a
fresh calibration would close and the judgement-free metrics that should see it coming.
Calibration-free methods are drawn once, as a grey zero line, in the drift panels.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from vespa_quant.files import save_figure

if TYPE_CHECKING:
    from vespa_quant.drift.runner import DriftReport

_PANELS = (
    ("ndcg_gap", "(c) NDCG@10 gap: fresh − frozen"),
    ("centre_shift_sigma", "(d) centre shift (σ, mean over dims)"),
    ("scale_ratio", "(e) scale change |log(s_seen / s_cal)|"),
    ("occupancy_divergence", "(f) occupancy: JS bits (solid) / edge fraction (dashed)"),
    ("code_change_fraction", "(g) fraction of codes changed by recalibration"),
)


def _values(rows: list[dict], key: str) -> np.ndarray:
    return np.array([np.nan if r[key] is None or (isinstance(r[key], float) and not math.isfinite(r[key]))
                     else float(r[key]) for r in rows])


def drift_plot(report: DriftReport, path: Path, title: str | None = None) -> Path:
    """Save a 2x4 panel PNG (dpi 100) of ``report``; bare Agg canvas, no pyplot global state."""
    methods = list(dict.fromkeys(r["method"] for r in report.fraction_rows))
    colour = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    free = {r["method"] for r in report.fraction_rows if r["calibration_free"]}
    s = report.settings

    figure = Figure(figsize=(18, 9))
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, 4).ravel()
    calibrated = [m for m in methods if m not in free]
    offsets = {m: 1.0 + 0.04 * (i - (len(calibrated) - 1) / 2) for i, m in enumerate(calibrated)}

    ax = axes[0]
    for method in methods:
        rows = [r for r in report.fraction_rows if r["method"] == method]
        ax.plot(_values(rows, "calibration_fraction"), _values(rows, "ndcg_at_10"), color=colour[method],
                linestyle=":" if method in free else "-", marker="o", markersize=4, linewidth=1.2)
        if method not in free:
            ax.plot([1.0], [rows[0]["full_ndcg_at_10"]], marker="*", markersize=10, color=colour[method])
    ax.axhline(report.fraction_rows[0]["float32_ndcg_at_10"], color="0.2", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel(f"calibration fraction of {s['calibrate_on'] or s['dataset']} (log)")
    ax.set_ylabel("NDCG@10")
    ax.set_title("(a) NDCG@10, frozen calibration; ★ full calibration, -- float32", fontsize=9)

    ax = axes[1]
    for method in calibrated:
        rows = [r for r in report.fraction_rows if r["method"] == method]
        x = _values(rows, "calibration_fraction") * offsets[method]
        y = _values(rows, "delta_vs_full")
        ci = np.array([r["delta_vs_full_ci"] for r in rows], dtype=np.float64)
        ax.errorbar(x, y, yerr=np.stack([y - ci[:, 0], ci[:, 1] - y]).clip(min=0), color=colour[method],
                    marker="o", markersize=4, capsize=2, linewidth=1.2)
    ax.axhline(0.0, color="0.6", linestyle=":", linewidth=1.5)
    ax.set_xscale("log")
    ax.set_xlabel(f"calibration fraction of {s['calibrate_on'] or s['dataset']} (log)")
    ax.set_title("(b) Δ NDCG@10 frozen − full calibration (paired 95% CI)", fontsize=9)
    for ax in axes[:2]:
        ax.grid(True, which="both", alpha=0.3)

    for ax, (key, label) in zip(axes[2:], _PANELS):
        for method in methods:
            if method in free:
                continue
            rows = [r for r in report.step_rows if r["method"] == method]
            x = _values(rows, "corpus_fraction")
            y = _values(rows, key)
            dashed = key == "occupancy_divergence" and rows and rows[0]["occupancy_measure"] == "edge_fraction"
            ax.plot(x, y, color=colour[method], marker="o", markersize=3, linewidth=1.2,
                    linestyle="--" if dashed else "-")
            if key == "ndcg_gap":
                fired = [r for r in report.policy_step_rows if r["method"] == method and r["fired"]]
                gap = {r["n_seen"]: r["ndcg_gap"] for r in rows}
                ax.plot([r["corpus_fraction"] for r in fired], [gap.get(r["n_seen"], np.nan) for r in fired],
                        linestyle="", marker="x", markersize=8, color=colour[method])
        if free:
            ax.axhline(0.0, color="0.6", linestyle=":", linewidth=1.5)
        ax.set_xlabel("corpus fraction seen")
        ax.set_title(label + (" (x = policy recalibrates)" if key == "ndcg_gap" else ""), fontsize=9)
        ax.grid(True, alpha=0.3)
    axes[-1].set_axis_off()

    handles = [Line2D([], [], color=colour[m], linestyle=":" if m in free else "-", marker="o",
                      label=m + (" (calibration-free: zero drift)" if m in free else "")) for m in methods]
    axes[-1].legend(handles=handles, loc="center", fontsize=8, frameon=False,
                    title=f"drift frozen at {s['initial_fraction']:g} of {s['calibrate_on'] or s['dataset']}")
    default_title = f"drift: {s['dataset']} / {s['model']} @ {s['dim']}d, order={s['order']}, seed={s['seed']}"
    figure.suptitle(title or default_title, fontsize=11)
    figure.tight_layout(rect=(0, 0, 1, 0.96))

    return save_figure(figure, Path(path))
