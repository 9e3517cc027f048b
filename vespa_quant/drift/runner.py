"""Streaming drift of calibrated quantizers: frozen calibrations, drift metrics, a recalibration policy.

This is the library behind ``vespa-quant drift``. Documents arrive in a stream order (a seeded
random permutation, or the corpus file order); a method is calibrated on the first fraction of the
stream (or on another corpus: the cross-domain mode) and that calibration is frozen. Three
questions are answered, each with NDCG@10 on the whole corpus and paired bootstrap CIs over
queries (brief Q6):

1. *What does a small or foreign calibration cost?* For each fraction, every document (the early
   ones too) is encoded with the frozen calibration, and NDCG@10 is compared with the same method
   calibrated on the full corpus and with float32.
2. *Can the cost be seen coming without judgements?* At every checkpoint (each ``1/steps`` of the
   stream) the drift metrics of the documents seen so far against the frozen calibration, next to
   the NDCG@10 gap between a fresh calibration on those documents and the frozen one.
3. *Does a judgement-free rule recover the cost cheaply?* :func:`simulate_policy` on the same
   stream, scored by NDCG recovered per recalibration.

Quantizers that need no calibration have no drift by construction and are reported as such.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
from tqdm.auto import tqdm

from vespa_quant.drift.metrics import drift_metrics, zero_drift
from vespa_quant.drift.policy import RecalibrationPolicy, simulate_policy
from vespa_quant.errors import CalibrationError, VespaQuantError
from vespa_quant.evaluate.metrics import PairedResult, bootstrap_ci, paired_bootstrap, paired_result
from vespa_quant.embed.embedded import EmbeddedDataset
from vespa_quant.evaluate.runner import NDCG, LocalBackend, score_hits
from vespa_quant.quantize.base import Calibration, Quantizer, calibrate, encode
from vespa_quant.quantize.registry import get_method

StreamOrder = Literal["random", "given"]

DRIFT_JSON, DRIFT_CSV, DRIFT_STEPS_CSV = "drift.json", "drift.csv", "drift_steps.csv"
POLICY_CSV, POLICY_STEPS_CSV, DRIFT_PNG = "policy.csv", "policy_steps.csv", "drift.png"

METRIC_FIELDS = ("centre_shift_sigma", "centre_shift_sigma_max", "scale_ratio",
                 "occupancy_divergence", "occupancy_measure", "code_change_fraction")


@dataclass
class DriftReport:
    """Everything one drift run measured, as plain rows ready for JSON/CSV.

    ``fraction_rows``: one per (method, calibration fraction). ``step_rows``: one per (method,
    checkpoint), drift against the calibration frozen at ``settings["initial_fraction"]``.
    ``policy_rows``: one per method, the policy's outcome. ``policy_step_rows``: one per (method,
    checkpoint), drift against the calibration in force under the policy, and its decision.
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


def stream_order(n_docs: int, order: StreamOrder, seed: int) -> np.ndarray:
    """Arrival order of the documents: a seeded permutation, or the corpus file order."""
    if order == "random":
        return np.random.default_rng(seed).permutation(n_docs)
    if order == "given":
        return np.arange(n_docs)
    raise VespaQuantError(f"stream order {order!r}: expected 'random' or 'given'")


def prefix_size(fraction: float, n_docs: int) -> int:
    """Documents in the first ``fraction`` of a stream of ``n_docs`` (at least one)."""
    return max(1, min(n_docs, math.ceil(round(fraction * n_docs, 9))))


def check_fractions(fractions: Sequence[float]) -> list[float]:
    """Distinct calibration fractions in (0, 1], sorted: checked by the CLI before anything is embedded."""
    cleaned = sorted({float(f) for f in fractions})
    if not cleaned or any(not 0.0 < f <= 1.0 for f in cleaned):
        raise VespaQuantError(f"calibration fractions {list(fractions)}: expected values in (0, 1]")
    return cleaned


class _Scorer:
    """Per-query NDCG@10 of a calibration on the whole corpus, memoised by calibration id."""

    def __init__(self, embedded: EmbeddedDataset, docs: np.ndarray, queries: np.ndarray) -> None:
        self.embedded, self.docs, self.queries = embedded, docs, queries
        self.backend = LocalBackend()
        self.cache: dict[tuple[str, str], np.ndarray] = {}

    def __call__(self, method: Quantizer, calibration: Calibration) -> np.ndarray:
        key = (method.name, calibration.id)
        if key not in self.cache:
            codes = encode(method, self.docs, calibration)
            hits = self.backend.search(method, calibration, codes, self.queries, 100).hits
            self.cache[key] = score_hits(self.embedded, hits)[NDCG]
        return self.cache[key]


def _paired(prefix: str, a: np.ndarray, b: np.ndarray, n_resamples: int, seed: int) -> dict:
    result = paired_bootstrap(a, b, n_resamples=n_resamples, seed=seed)
    return {prefix: result.delta_mean, f"{prefix}_ci": [result.ci_low, result.ci_high],
            f"{prefix}_p": result.p_value}


def crossed_bootstrap(deltas: np.ndarray, n_resamples: int = 1000, seed: int = 0,
                      confidence: float = 0.95) -> PairedResult:
    """Bootstrap of the mean of a (draws, queries) array of paired deltas, resampling both axes.

    Two independent sources of luck enter a frozen calibration's NDCG: which documents it was
    learned on (rows) and which queries judge it (columns). Resampling rows and columns
    independently with replacement (the crossed-design bootstrap) puts both in the interval;
    with one row it is :func:`~vespa_quant.evaluate.metrics.paired_bootstrap`'s query
    resampling. The p-value follows ``paired_bootstrap``'s convention.
    """
    deltas = np.atleast_2d(np.asarray(deltas, dtype=np.float64))
    if deltas.shape[0] == 1:
        return paired_bootstrap(deltas[0], np.zeros(deltas.shape[1]), n_resamples=n_resamples,
                                seed=seed, confidence=confidence)
    n_draws, n_queries = deltas.shape
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, n_draws, size=(n_resamples, n_draws))
    columns = rng.integers(0, n_queries, size=(n_resamples, n_queries))
    column_means = deltas[:, columns].mean(axis=2).T  # (resamples, draws)
    resampled = np.take_along_axis(column_means, rows, axis=1).mean(axis=1)
    delta_mean = float(deltas.mean())
    return paired_result(delta_mean, resampled, confidence)


def _versus(prefix: str, per_draw: np.ndarray, reference: np.ndarray, n_resamples: int, seed: int) -> dict:
    if per_draw.shape[0] == 1:
        return _paired(prefix, per_draw[0], reference, n_resamples, seed)
    result = crossed_bootstrap(per_draw - reference[None, :], n_resamples, seed)
    return {prefix: result.delta_mean, f"{prefix}_ci": [result.ci_low, result.ci_high],
            f"{prefix}_p": result.p_value}


def _metric_cells(metrics) -> dict:
    return {name: getattr(metrics, name) for name in METRIC_FIELDS}


@dataclass
class _Setup:
    """What every method of one run shares: streams, checkpoints, the scorer and the float32 baseline."""

    stream: np.ndarray
    sources: list[np.ndarray]
    source_name: str
    cross_domain: bool
    checkpoints: list[int]
    initial_fraction: float
    n_initial: int
    rotation: str
    seed: int
    n_resamples: int
    scorer: _Scorer
    float32_ndcg: np.ndarray
    base: dict

    @property
    def policy_checkpoints(self) -> list[int]:
        """In domain, recalibrating on a subset of the calibration documents is pointless."""
        return self.checkpoints if self.cross_domain else [n for n in self.checkpoints if n > self.n_initial]


def run_drift(embedded: EmbeddedDataset, methods: Sequence[Quantizer], fractions: Sequence[float],
              order: StreamOrder = "random", seed: int = 0,
              calibrate_on: EmbeddedDataset | None = None, steps: int = 10,
              n_resamples: int = 1000, *, rotation: str = "none", dim: int | None = None,
              initial_fraction: float | None = None, policy: RecalibrationPolicy | None = None,
              repeats: int = 1, show_progress: bool = False) -> DriftReport:
    """Frozen-calibration NDCG, streaming drift and the recalibration policy for ``methods``.

    ``fractions`` are prefixes of the calibration stream: of ``embedded``'s stream, or in
    cross-domain mode of ``calibrate_on``'s (same model and dim required; its stream uses the same
    ``order`` and ``seed``). The "full" reference is always ``embedded`` calibrated on all its own
    documents. Streaming checkpoints are at ``1/steps, 2/steps, ..., 1`` of ``embedded``'s stream;
    drift there is measured against the calibration frozen at ``initial_fraction`` of the
    calibration stream (default: the smallest fraction in domain, the whole other corpus in
    cross-domain mode), which is also where the policy starts. The policy only considers
    checkpoints with more documents than it was calibrated on, in domain. ``rotation`` and
    ``seed`` are the calibration's, ``seed`` also seeds the stream and the bootstrap.

    ``repeats`` > 1 (random order only) draws the frozen calibrations of the fraction table from
    ``repeats`` streams (seeds ``seed, seed + 1, ...``) and averages their per-query NDCG, so the
    verdict does not hang on one lucky or unlucky calibration sample: on SciFact/MiniLM single
    calibrations from the same fraction differ by up to ~0.02 NDCG@10. Its intervals then
    resample calibration draws and queries together (:func:`crossed_bootstrap`). Streaming
    checkpoints and the policy use the first stream.
    """
    started = time.perf_counter()
    fractions = check_fractions(fractions)
    if steps < 1:
        raise VespaQuantError(f"steps is {steps}, expected at least 1")
    if repeats < 1 or (repeats > 1 and order != "random"):
        raise VespaQuantError(f"repeats is {repeats}: expected 1, or more with order='random' "
                              "(every repeat of the given order is the same stream)")
    if not methods:
        raise VespaQuantError("no methods to run")
    policy = policy or RecalibrationPolicy()
    dim = dim or embedded.native_dim
    docs, queries = embedded.at_dim(dim)
    stream = docs[stream_order(len(docs), order, seed)]
    if calibrate_on is not None:
        if calibrate_on.model != embedded.model or calibrate_on.native_dim != embedded.native_dim:
            raise CalibrationError(
                f"cannot calibrate on {calibrate_on.dataset.name} ({calibrate_on.model}, "
                f"{calibrate_on.native_dim} dims) to serve {embedded.dataset.name} ({embedded.model}, "
                f"{embedded.native_dim} dims): model and dim must match"
            )
        other = calibrate_on.at_dim(dim)[0]
        sources = [other[stream_order(len(other), order, seed + r)] for r in range(repeats)]
        initial_fraction = 1.0 if initial_fraction is None else initial_fraction
    else:
        sources = [stream, *(docs[stream_order(len(docs), order, seed + r)] for r in range(1, repeats))]
        initial_fraction = fractions[0] if initial_fraction is None else initial_fraction
    check_fractions([initial_fraction])
    source_name = (calibrate_on or embedded).dataset.name

    report = DriftReport(settings={
        "dataset": embedded.dataset.name, "model": embedded.model, "dim": dim, "order": order,
        "seed": seed, "rotation": rotation, "calibrate_on": source_name if calibrate_on else None,
        "fractions": fractions, "steps": steps, "initial_fraction": initial_fraction,
        "n_docs": len(docs), "n_queries": len(embedded.dataset.qrels),
        "n_calibration_source_docs": len(sources[0]), "n_resamples": n_resamples, "repeats": repeats,
        "policy": policy.as_dict(),
    })
    scorer = _Scorer(embedded, docs, queries)
    float32 = get_method("float32")
    setup = _Setup(
        stream=stream, sources=sources, source_name=source_name, cross_domain=calibrate_on is not None,
        checkpoints=sorted({prefix_size(t / steps, len(stream)) for t in range(1, steps + 1)}),
        initial_fraction=initial_fraction, n_initial=prefix_size(initial_fraction, len(sources[0])),
        rotation=rotation, seed=seed, n_resamples=n_resamples, scorer=scorer,
        float32_ndcg=scorer(float32, calibrate(float32, docs, rotation, seed)),
        base={"dataset": embedded.dataset.name, "model": embedded.model, "dim": dim, "order": order,
              "rotation": rotation},
    )
    progress = tqdm(methods, desc="drift", unit="method", disable=not show_progress)
    for method in progress:
        progress.set_postfix_str(method.name)
        _run_method(setup, method, fractions, policy, report)
    progress.close()
    report.settings["seconds"] = round(time.perf_counter() - started, 2)
    return report


def _run_method(setup: _Setup, method: Quantizer, fractions: list[float], policy: RecalibrationPolicy,
                report: DriftReport) -> None:
    """Append ``method``'s fraction, checkpoint and policy rows to ``report``."""
    free = not method.needs_calibration
    fresh: dict[int, Calibration] = {}

    def fresh_on(n: int) -> Calibration:
        """The calibration on the first ``n`` stream documents, shared by checkpoints and policy."""
        if n not in fresh:
            fresh[n] = calibrate(method, setup.stream[:n], setup.rotation, setup.seed)
        return fresh[n]

    scorer, n_resamples, seed = setup.scorer, setup.n_resamples, setup.seed
    rows = {**setup.base, "method": method.name, "calibration_free": free}
    full = fresh_on(len(setup.stream))
    full_ndcg = scorer(method, full)
    full_cells = {"full_ndcg_at_10": float(full_ndcg.mean()),
                  "full_ndcg_at_10_ci": list(bootstrap_ci(full_ndcg, n_resamples, seed))}

    frozen_first_draw: dict[float, Calibration] = {}
    for fraction in fractions:
        n_cal = prefix_size(fraction, len(setup.sources[0]))
        frozen = [full] if free else [calibrate(method, drawn[:n_cal], setup.rotation, seed)
                                      for drawn in setup.sources]
        frozen_first_draw[fraction] = frozen[0]
        per_draw = np.stack([scorer(method, calibration) for calibration in frozen])
        ndcg = per_draw.mean(axis=0)
        versus_full = _versus("delta_vs_full", per_draw, full_ndcg, n_resamples, seed)
        low, high = versus_full["delta_vs_full_ci"]
        report.fraction_rows.append({
            **rows, "calibration_dataset": setup.source_name, "calibration_fraction": fraction,
            "n_calibration_docs": n_cal, "repeats": len(frozen),
            "ndcg_at_10": float(ndcg.mean()),
            "ndcg_at_10_ci": list(bootstrap_ci(ndcg, n_resamples, seed)),
            "ndcg_at_10_per_repeat": [float(v) for v in per_draw.mean(axis=1)],
            **full_cells, **versus_full, "significant": bool(low > 0 or high < 0),
            "float32_ndcg_at_10": float(setup.float32_ndcg.mean()),
            **_versus("delta_vs_float32", per_draw, setup.float32_ndcg, n_resamples, seed),
            "calibration_id": frozen[0].id,
        })

    initial = frozen_first_draw.get(setup.initial_fraction)
    if initial is None:
        initial = full if free else calibrate(method, setup.sources[0][:setup.n_initial], setup.rotation, seed)
    initial_ndcg = scorer(method, initial)
    for step, n in enumerate(setup.checkpoints, start=1):
        if free:
            metrics, step_ndcg = zero_drift(method, n), initial_ndcg
        else:
            metrics = drift_metrics(method, initial, setup.stream[:n], recalibration=fresh_on(n))
            step_ndcg = scorer(method, fresh_on(n))
        report.step_rows.append({
            **rows, "step": step, "corpus_fraction": n / len(setup.stream), "n_seen": n,
            "calibration_fraction": setup.initial_fraction, "n_calibration_docs": setup.n_initial,
            **_metric_cells(metrics),
            "frozen_ndcg_at_10": float(initial_ndcg.mean()), "fresh_ndcg_at_10": float(step_ndcg.mean()),
            **_paired("ndcg_gap", step_ndcg, initial_ndcg, n_resamples, seed),
        })

    checkpoints = setup.policy_checkpoints
    run = simulate_policy(method, policy, initial, setup.sources[0][:setup.n_initial], setup.stream,
                          checkpoints, recalibrate=fresh_on)
    for step in run.steps:
        report.policy_step_rows.append({
            **rows, "corpus_fraction": step.n_seen / len(setup.stream), "n_seen": step.n_seen,
            **_metric_cells(step.metrics), "fired": step.fired, "reasons": ",".join(step.reasons),
            "recalibrations": step.recalibrations, "reencoded_docs": step.reencoded_docs,
            "ndcg_at_10": float(scorer(method, step.calibration).mean()),
            "calibration_id": step.calibration.id,
        })
    final_ndcg = scorer(method, run.final)
    recovered = _paired("recovered", final_ndcg, initial_ndcg, n_resamples, seed)
    gap = float(full_ndcg.mean() - initial_ndcg.mean())
    report.policy_rows.append({
        **rows, "calibration_fraction": setup.initial_fraction, "n_calibration_docs": setup.n_initial,
        "checkpoints": len(checkpoints), "recalibrations": run.recalibrations,
        "reencoded_docs": run.reencoded_docs,
        "frozen_ndcg_at_10": float(initial_ndcg.mean()), "policy_ndcg_at_10": float(final_ndcg.mean()),
        "full_ndcg_at_10": float(full_ndcg.mean()), **recovered, "gap_to_full": gap,
        "recovered_share_of_gap": recovered["recovered"] / gap if abs(gap) > 1e-12 else math.nan,
        "recovered_per_recalibration": (recovered["recovered"] / run.recalibrations
                                        if run.recalibrations else math.nan),
        # The reference rule "recalibrate at every checkpoint" ends on the full calibration.
        "every_step_recovered_per_recalibration": gap / len(checkpoints) if checkpoints and not free else math.nan,
        "every_step_reencoded_docs": sum(checkpoints) if not free else 0,
    })


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
