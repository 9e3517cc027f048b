"""A drift run's report: its rows, the printed table and the files written.

The rows are measured by :func:`vespa_quant.drift.experiment.run_drift` (what each NDCG@10 is
over is defined there); this module only holds them and renders them, so a run on the in-process
index and one on Vespa are written by the same code into the same columns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

DRIFT_JSON, DRIFT_CSV, DRIFT_STEPS_CSV = "drift.json", "drift.csv", "drift_steps.csv"
POLICY_CSV, POLICY_STEPS_CSV, DRIFT_PNG = "policy.csv", "policy_steps.csv", "drift.png"

METRIC_FIELDS = ("centre_shift_sigma", "centre_shift_sigma_max", "scale_ratio",
                 "occupancy_divergence", "occupancy_measure", "code_change_fraction")


@dataclass
class DriftReport:
    """Everything one drift run measured, as plain rows ready for JSON/CSV.

    ``fraction_rows``: one per (method, calibration fraction), NDCG@10 on the whole corpus.
    ``step_rows``: one per (method, checkpoint), drift against the calibration frozen at
    ``settings["initial_fraction"]``, NDCG@10 over the documents present. ``policy_rows``: one per
    method, the policy's outcome on the whole corpus. ``policy_step_rows``: one per (method,
    checkpoint), drift against the calibration in force under the policy, its decision, and the
    NDCG@10 over the documents present with the calibration in force after it.
    """

    settings: dict
    fraction_rows: list[dict] = field(default_factory=list)
    step_rows: list[dict] = field(default_factory=list)
    policy_rows: list[dict] = field(default_factory=list)
    policy_step_rows: list[dict] = field(default_factory=list)

    def significant_losses(self) -> list[dict]:
        """Rows at the smallest fraction whose paired CI vs full calibration lies below zero."""
        smallest = min(self.settings["fractions"])
        return [row for row in self.fraction_rows
                if row["calibration_fraction"] == smallest and row["significant"] and row["delta_vs_full"] < 0]


# ----------------------------------------------------------------------------- output


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return format(value, spec)


def _ci(value, interval, spec: str = "+.4f") -> str:
    return f"{_fmt(value, spec)} [{_fmt(interval[0], spec)}, {_fmt(interval[1], spec)}]"


def _render(headers: list[str], lines: list[list[str]], right: set[int]) -> list[str]:
    widths = [max([len(h)] + [len(line[i]) for line in lines]) for i, h in enumerate(headers)]

    def one(cells: list[str]) -> str:
        return "  ".join(format(c, (">" if i in right else "<") + str(w))
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [one(headers), "  ".join("-" * w for w in widths), *[one(line) for line in lines]]


def _percent(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def significance_sentence(report: DriftReport) -> str:
    """The report's conclusion, generated from the rows: who loses NDCG at the smallest fraction."""
    smallest = min(report.settings["fractions"])
    where = report.settings["calibrate_on"] or report.settings["dataset"]
    rows = [r for r in report.fraction_rows if r["calibration_fraction"] == smallest]
    losing = [r for r in rows if r["significant"] and r["delta_vs_full"] < 0]
    gaining = [r for r in rows if r["significant"] and r["delta_vs_full"] > 0]
    steady = [r for r in rows if not r["significant"] and not r["calibration_free"]]
    free = [r["method"] for r in rows if r["calibration_free"]]

    def listed(selection: list[dict]) -> str:
        return "; ".join(
            f"{r['method']} {_ci(r['delta_vs_full'], r['delta_vs_full_ci'])} (p={r['delta_vs_full_p']:.3f})"
            for r in selection) or "none"

    repeats = report.settings.get("repeats", 1)
    test = ("paired bootstrap over queries" if repeats == 1 else
            f"mean of {repeats} calibration draws, bootstrap over draws and queries")
    head = (f"Quantizers losing significant NDCG@10 when calibrated on {_percent(smallest)} of {where} vs "
            f"100% of {report.settings['dataset']} ({test}, 95% CI of the delta excludes 0): {listed(losing)}.")
    parts = [head]
    if gaining:
        parts.append(f"Significantly better with the small calibration: {listed(gaining)}.")
    parts.append(f"No significant difference: {listed(steady)}.")
    if free:
        parts.append(f"Calibration-free (zero drift by construction): {', '.join(free)}.")
    return "\n".join(parts)


def format_drift_table(report: DriftReport) -> str:
    """Text report: frozen-calibration table, final-checkpoint drift, policy, conclusion."""
    s = report.settings
    where = s["calibrate_on"] or s["dataset"]
    out = [f"drift: {s['dataset']} / {s['model']} @ {s['dim']}d, order={s['order']}, seed={s['seed']}, "
           f"rotation={s['rotation']}, calibrated on {where}, {s['n_docs']} docs, {s['n_queries']} queries",
           "", "NDCG@10 with a frozen calibration (all docs encoded with it) vs the full-corpus calibration "
           "and float32; * = CI excludes 0"]
    repeats = s.get("repeats", 1)
    if repeats > 1:
        out[-1] += (f"; mean of {repeats} calibration draws (streams seeded {s['seed']}..{s['seed'] + repeats - 1}), "
                    "Δ CIs resample draws and queries")
    lines = []
    for r in report.fraction_rows:
        mark = "*" if r["significant"] else ""
        float_mark = "*" if (r["delta_vs_float32_ci"][0] > 0 or r["delta_vs_float32_ci"][1] < 0) else ""
        draws = r["ndcg_at_10_per_repeat"]
        lines.append([r["method"], _percent(r["calibration_fraction"]), str(r["n_calibration_docs"]),
                      _ci(r["ndcg_at_10"], r["ndcg_at_10_ci"], ".4f"),
                      *([f"{min(draws):.4f}..{max(draws):.4f}"] if repeats > 1 else []),
                      _fmt(r["full_ndcg_at_10"], ".4f"),
                      _ci(r["delta_vs_full"], r["delta_vs_full_ci"]) + mark,
                      _ci(r["delta_vs_float32"], r["delta_vs_float32_ci"]) + float_mark])
    out += _render(["method", "calib", "docs", "NDCG@10 [CI]", *(["draws range"] if repeats > 1 else []),
                    "full", "Δ vs full [CI]", "Δ vs float32 [CI]"], lines, {1, 2, 4 + (repeats > 1)})

    last = {}
    for r in report.step_rows:
        last[r["method"]] = r
    out += ["", f"Drift of the whole corpus against the calibration frozen at {_percent(s['initial_fraction'])} "
            f"of {where} (per-checkpoint values in {DRIFT_STEPS_CSV})"]
    lines = []
    for r in last.values():
        if r["calibration_free"]:
            lines.append([r["method"], "0", "0", "0", "0 (calibration-free)", "0", "0"])
            continue
        lines.append([r["method"], _fmt(r["centre_shift_sigma"], ".3f"), _fmt(r["centre_shift_sigma_max"], ".3f"),
                      _fmt(r["scale_ratio"], ".3f"),
                      f"{_fmt(r['occupancy_divergence'], '.4f')} ({r['occupancy_measure']})",
                      _fmt(r["code_change_fraction"], ".3f"),
                      _ci(r["ndcg_gap"], r["ndcg_gap_ci"])])
    out += _render(["method", "centre σ", "max σ", "|log scale|", "occupancy", "codes changed",
                    "fresh − frozen NDCG [CI]"], lines, {1, 2, 3, 5})

    out += ["", "Recalibration policy (drift metrics only; thresholds "
            + ", ".join(f"{k}={v}" for k, v in s["policy"].items() if v is not None) + ")"]
    lines = []
    for r in report.policy_rows:
        if r["calibration_free"]:
            lines.append([r["method"], "0", "0", _fmt(r["frozen_ndcg_at_10"], ".4f"),
                          _fmt(r["policy_ndcg_at_10"], ".4f"), "+0.0000 (calibration-free)", "n/a", "n/a"])
            continue
        lines.append([r["method"], str(r["recalibrations"]), str(r["reencoded_docs"]),
                      _fmt(r["frozen_ndcg_at_10"], ".4f"), _fmt(r["policy_ndcg_at_10"], ".4f"),
                      _ci(r["recovered"], r["recovered_ci"]), _fmt(r["recovered_per_recalibration"], "+.4f"),
                      _fmt(r["every_step_recovered_per_recalibration"], "+.4f")])
    out += _render(["method", "recals", "re-encoded", "frozen", "policy", "recovered [CI]", "per recal",
                    "per recal (every step)"], lines, {1, 2, 3, 4, 6, 7})
    out += ["", significance_sentence(report)]
    return "\n".join(out)


def _write_csv(rows: list[dict], path: Path) -> Path:
    from vespa_quant.evaluate.report import csv_text
    from vespa_quant.files import atomic_write_text

    return atomic_write_text(path, csv_text(rows))


def write_drift(report: DriftReport, out_dir: Path, *, title: str | None = None) -> list[Path]:
    """drift.json (everything), drift.csv (fractions), drift_steps.csv, policy.csv, policy_steps.csv,
    drift.png and table.txt (the printed table) in ``out_dir``, written as a set
    (:func:`vespa_quant.folders.write_folder`); returns the paths written."""
    import json

    from vespa_quant.drift.plot import drift_plot
    from vespa_quant.evaluate.report import to_builtin
    from vespa_quant.files import atomic_write_text
    from vespa_quant.folders import write_folder

    document = {
        "settings": report.settings, "fractions": report.fraction_rows, "steps": report.step_rows,
        "policy": report.policy_rows, "policy_steps": report.policy_step_rows,
        "significant_losses": [
            {k: r[k] for k in ("method", "calibration_fraction", "delta_vs_full", "delta_vs_full_ci",
                               "delta_vs_full_p")}
            for r in report.significant_losses()
        ],
        "conclusion": significance_sentence(report),
    }

    def write(staging: Path) -> list[Path]:
        return [
            atomic_write_text(staging / DRIFT_JSON, json.dumps(to_builtin(document), indent=2, allow_nan=False) + "\n"),
            _write_csv(report.fraction_rows, staging / DRIFT_CSV),
            _write_csv(report.step_rows, staging / DRIFT_STEPS_CSV),
            _write_csv(report.policy_rows, staging / POLICY_CSV),
            _write_csv(report.policy_step_rows, staging / POLICY_STEPS_CSV),
            drift_plot(report, staging / DRIFT_PNG, title=title),
            atomic_write_text(staging / "table.txt", format_drift_table(report) + "\n"),
        ]

    return write_folder(Path(out_dir), write)
