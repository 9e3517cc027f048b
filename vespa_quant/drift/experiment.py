"""Streaming drift of calibrated quantizers: frozen calibrations, drift metrics, a recalibration policy.

This is the library behind ``vespa-quant drift``. Documents arrive in a stream order (a seeded
random permutation, or the corpus file order); a method is calibrated on the first fraction of the
stream (or on another corpus: the cross-domain mode) and that calibration is frozen. The stream is
fed, checkpoint by checkpoint (each ``1/steps`` of it), into a
:class:`~vespa_quant.drift.stream.StreamIndex` (in process, or a live Vespa), and every NDCG@10
is measured by querying that index. Three questions, with paired bootstrap CIs over queries
(brief Q6):

1. *What does a small or foreign calibration cost?* Once the stream is complete, for each
   fraction every document (the early ones too) holds codes of the frozen calibration, and
   NDCG@10 is compared with the same method calibrated on the full corpus and with float32.
2. *Can the cost be seen coming without judgements?* At every checkpoint the drift metrics of
   the documents seen so far against the frozen calibration, next to the NDCG@10 gap between a
   fresh calibration on those documents and the frozen one.
3. *Does a judgement-free rule recover the cost cheaply?* The policy
   (:class:`~vespa_quant.drift.policy.PolicyTracker`) on the same stream, scored by NDCG
   recovered per recalibration.

**What NDCG@10 is over.** Fraction rows (``drift.csv``) and policy rows (``policy.csv``): the
whole corpus, after the stream. Checkpoint rows (``drift_steps.csv``, ``policy_steps.csv``): the
documents present at the checkpoint, the first ``n`` of the stream, with the calibration named;
judged documents that have not arrived count as misses, as a user of the live index sees them.
So checkpoint NDCG grows with ``n`` for every method; compare calibrations at one checkpoint.

**Blue/green does the policy's work.** Slot ``a`` starts with the frozen calibration, active. At
a checkpoint the fresh calibration on the documents present is written into the inactive slot
and verified, both are queried, and the drift metrics (computed client side) and the policy
decide: firing switches the active slot, not firing leaves it (the next checkpoint rewrites the
inactive slot). Once the policy has switched, the frozen calibration may have left both slots;
measuring it then costs one more write of the inactive slot: a measurement of the counterfactual,
not a cost of the policy (``reencoded_docs`` counts what firing re-encodes; ``settings``
``slot_writes`` and ``slot_documents_written`` count every write the run made). Fraction
calibrations are written into the inactive slot in turn after the stream; the active slot stays
the policy's. Quantizers that need no calibration have one slot, no drift by construction, and
are reported as such.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from vespa_quant.drift.metrics import DriftMetrics, drift_metrics, zero_drift
from vespa_quant.drift.policy import PolicyTracker, RecalibrationPolicy
from vespa_quant.drift.runner import METRIC_FIELDS, DriftReport
from vespa_quant.drift.stats import paired_cells, versus_cells
from vespa_quant.drift.stream import LocalStreamIndex, StreamIndex, StreamOrder, prefix_size, stream_order
from vespa_quant.embed.embedded import EmbeddedDataset
from vespa_quant.errors import CalibrationError, VespaQuantError
from vespa_quant.evaluate.metrics import bootstrap_ci
from vespa_quant.evaluate.runner import NDCG, float32_baseline, score_hits
from vespa_quant.quantize.base import Calibration, Quantizer, calibrate

HITS = 100


def check_fractions(fractions: Sequence[float]) -> list[float]:
    """Distinct calibration fractions in (0, 1], sorted: checked by the CLI before anything is embedded."""
    cleaned = sorted({float(f) for f in fractions})
    if not cleaned or any(not 0.0 < f <= 1.0 for f in cleaned):
        raise VespaQuantError(f"calibration fractions {list(fractions)}: expected values in (0, 1]")
    return cleaned


class _Scorer:
    """Per-query NDCG@10 of a calibration over the documents present, measured through the index.

    Memoised by (method, calibration id, documents present). A calibration no slot holds is first
    written into the inactive slot, which replaces what that slot held: at one checkpoint the
    runner measures what must survive (the frozen calibration) before what replaces it (the
    fresh one, which a firing policy then switches to).
    """

    def __init__(self, index: StreamIndex, embedded: EmbeddedDataset, queries: np.ndarray,
                 k1: int | None) -> None:
        self.index, self.embedded, self.queries, self.k1 = index, embedded, queries, k1
        self.n_present = 0
        self.cache: dict[tuple[str, str, int], np.ndarray] = {}
        self.slot_writes = self.documents_written = self.switches = 0

    def add(self, rows: np.ndarray) -> None:
        self.index.add(rows)
        self.n_present += len(rows)

    def switch(self, method: Quantizer, calibration: Calibration) -> None:
        table = self.index.table(method)
        if table.holding(calibration) != table.inactive:
            raise VespaQuantError(f"{method.name}: calibration {calibration.id} is not in the inactive slot")
        self.index.switch(method)
        self.switches += 1

    def __call__(self, method: Quantizer, calibration: Calibration) -> np.ndarray:
        key = (method.name, calibration.id, self.n_present)
        if key not in self.cache:
            if self.index.table(method).holding(calibration) is None:
                self.index.write_inactive(method, calibration)
                self.slot_writes += 1
                self.documents_written += self.n_present
            hits = self.index.search(method, calibration, self.queries, HITS, self.k1)
            self.cache[key] = score_hits(self.embedded, hits)[NDCG]
        return self.cache[key]


def _metric_cells(metrics: DriftMetrics) -> dict:
    return {name: getattr(metrics, name) for name in METRIC_FIELDS}


@dataclass
class _Setup:
    """What every method of one run shares: the stream, checkpoints and the float32 baseline."""

    arrival: np.ndarray
    """Corpus rows in arrival order."""
    stream: np.ndarray
    """Their vectors at the run's dim."""
    sources: list[np.ndarray]
    source_name: str
    cross_domain: bool
    checkpoints: list[int]
    initial_fraction: float
    n_initial: int
    rotation: str
    seed: int
    n_resamples: int
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
              repeats: int = 1, index: StreamIndex | None = None, k1: int | None = None,
              show_progress: bool = False) -> DriftReport:
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

    ``index`` is where the stream goes and every NDCG comes from (default: in process; a
    :class:`~vespa_quant.vespa.stream.VespaStreamIndex` for a live Vespa); ``k1`` searches
    two-phase (Hamming top-``k1`` rescored), default exhaustive. The float32 reference is
    exhaustive search in process, as in ``evaluate``.

    ``repeats`` > 1 (random order only) draws the frozen calibrations of the fraction table from
    ``repeats`` streams (seeds ``seed, seed + 1, ...``) and averages their per-query NDCG, so the
    verdict does not hang on one lucky or unlucky calibration sample: on SciFact/MiniLM single
    calibrations from the same fraction differ by up to ~0.02 NDCG@10. Its intervals then
    resample calibration draws and queries together (:func:`~vespa_quant.drift.stats.crossed_bootstrap`).
    Streaming checkpoints and the policy use the first stream.
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
    if k1 is not None and k1 < 1:
        raise VespaQuantError(f"k1 is {k1}: expected at least 1 first-phase candidate per query")
    policy = policy or RecalibrationPolicy()
    index = index or LocalStreamIndex()
    dim = dim or embedded.native_dim
    docs, queries = embedded.at_dim(dim)
    arrival = stream_order(len(docs), order, seed)
    stream = docs[arrival]
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
        "policy": policy.as_dict(), "backend": index.name, "first_phase_k1": k1,
    })
    setup = _Setup(
        arrival=arrival, stream=stream, sources=sources, source_name=source_name,
        cross_domain=calibrate_on is not None,
        checkpoints=sorted({prefix_size(t / steps, len(stream)) for t in range(1, steps + 1)}),
        initial_fraction=initial_fraction, n_initial=prefix_size(initial_fraction, len(sources[0])),
        rotation=rotation, seed=seed, n_resamples=n_resamples,
        float32_ndcg=float32_baseline(embedded, dim, HITS),
        base={"dataset": embedded.dataset.name, "model": embedded.model, "dim": dim, "order": order,
              "rotation": rotation},
    )
    runs = [_MethodRun(setup, method, policy) for method in methods]
    index.start(EmbeddedDataset(embedded.dataset, embedded.model, docs, queries),
                [(run.method, run.initial) for run in runs])
    scorer = _Scorer(index, embedded, queries, k1)
    progress = tqdm(setup.checkpoints, desc="drift", unit="checkpoint", disable=not show_progress)
    arrived = 0
    for step, n in enumerate(progress, start=1):
        progress.set_postfix_str(f"{n} docs")
        scorer.add(arrival[arrived:n])
        arrived = n
        for run in runs:
            run.checkpoint(step, n, scorer)
    progress.close()
    for run in runs:
        run.finish(fractions, scorer)
        report.fraction_rows += run.fraction_rows
        report.step_rows += run.step_rows
        report.policy_step_rows += run.policy_step_rows
        report.policy_rows.append(run.policy_row(scorer))
    report.settings.update(slot_writes=scorer.slot_writes, slot_documents_written=scorer.documents_written,
                           slot_switches=scorer.switches,
                           seconds=round(time.perf_counter() - started, 2))
    return report


class _MethodRun:
    """One method along the stream: its calibrations, its policy, and its rows as they are measured."""

    def __init__(self, setup: _Setup, method: Quantizer, policy: RecalibrationPolicy) -> None:
        self.setup, self.method = setup, method
        self.free = not method.needs_calibration
        self._fresh: dict[int, Calibration] = {}
        self.full = self.fresh_on(len(setup.stream))
        self.initial = self.full if self.free else calibrate(
            method, setup.sources[0][:setup.n_initial], setup.rotation, setup.seed)
        self.tracker = PolicyTracker(method, policy, self.initial, setup.sources[0][:setup.n_initial])
        self.rows = {**setup.base, "method": method.name, "calibration_free": self.free}
        self.fraction_rows: list[dict] = []
        self.step_rows: list[dict] = []
        self.policy_step_rows: list[dict] = []

    def fresh_on(self, n: int) -> Calibration:
        """The calibration on the first ``n`` stream documents, shared by checkpoints and policy."""
        if n not in self._fresh:
            self._fresh[n] = calibrate(self.method, self.setup.stream[:n], self.setup.rotation, self.setup.seed)
        return self._fresh[n]

    def checkpoint(self, step: int, n: int, scorer: _Scorer) -> None:
        """Measure the first ``n`` documents: drift, frozen vs fresh NDCG, and the policy's decision."""
        setup, method, initial = self.setup, self.method, self.initial
        seen = setup.stream[:n]
        fresh = initial if self.free else self.fresh_on(n)
        metrics = zero_drift(method, n) if self.free else drift_metrics(method, initial, seen, recalibration=fresh)
        decision = self.tracker.check(seen, fresh) if n in setup.policy_checkpoints else None
        frozen_ndcg = scorer(method, initial)
        if decision is not None and not decision.fired:
            scorer(method, decision.calibration)  # the active slot
        fresh_ndcg = scorer(method, fresh)
        if decision is not None and decision.fired:
            scorer.switch(method, decision.calibration)
        self.step_rows.append({
            **self.rows, "step": step, "corpus_fraction": n / len(setup.stream), "n_seen": n,
            "calibration_fraction": setup.initial_fraction, "n_calibration_docs": setup.n_initial,
            **_metric_cells(metrics),
            "frozen_ndcg_at_10": float(frozen_ndcg.mean()), "fresh_ndcg_at_10": float(fresh_ndcg.mean()),
            **paired_cells("ndcg_gap", fresh_ndcg, frozen_ndcg, setup.n_resamples, setup.seed),
        })
        if decision is None:
            return
        self.policy_step_rows.append({
            **self.rows, "corpus_fraction": n / len(setup.stream), "n_seen": n,
            **_metric_cells(decision.metrics), "fired": decision.fired, "reasons": ",".join(decision.reasons),
            "recalibrations": decision.recalibrations, "reencoded_docs": decision.reencoded_docs,
            "ndcg_at_10": float(scorer(method, decision.calibration).mean()),
            "calibration_id": decision.calibration.id,
        })

    def finish(self, fractions: list[float], scorer: _Scorer) -> None:
        """The fraction rows, on the complete stream: each frozen calibration written and queried in turn."""
        setup, method = self.setup, self.method
        n_resamples, seed = setup.n_resamples, setup.seed
        full_ndcg = scorer(method, self.full)
        full_cells = {"full_ndcg_at_10": float(full_ndcg.mean()),
                      "full_ndcg_at_10_ci": list(bootstrap_ci(full_ndcg, n_resamples, seed))}
        for fraction in fractions:
            n_cal = prefix_size(fraction, len(setup.sources[0]))
            frozen = [self.full] if self.free else [calibrate(method, drawn[:n_cal], setup.rotation, seed)
                                                    for drawn in setup.sources]
            per_draw = np.stack([scorer(method, calibration) for calibration in frozen])
            ndcg = per_draw.mean(axis=0)
            versus_full = versus_cells("delta_vs_full", per_draw, full_ndcg, n_resamples, seed)
            low, high = versus_full["delta_vs_full_ci"]
            self.fraction_rows.append({
                **self.rows, "calibration_dataset": setup.source_name, "calibration_fraction": fraction,
                "n_calibration_docs": n_cal, "repeats": len(frozen),
                "ndcg_at_10": float(ndcg.mean()),
                "ndcg_at_10_ci": list(bootstrap_ci(ndcg, n_resamples, seed)),
                "ndcg_at_10_per_repeat": [float(v) for v in per_draw.mean(axis=1)],
                **full_cells, **versus_full, "significant": bool(low > 0 or high < 0),
                "float32_ndcg_at_10": float(setup.float32_ndcg.mean()),
                **versus_cells("delta_vs_float32", per_draw, setup.float32_ndcg, n_resamples, seed),
                "calibration_id": frozen[0].id,
            })

    def policy_row(self, scorer: _Scorer) -> dict:
        """The policy's outcome on the whole corpus (measured at the last checkpoint, the complete stream)."""
        setup, method = self.setup, self.method
        run = self.tracker.run()
        checkpoints = setup.policy_checkpoints
        initial_ndcg, final_ndcg = scorer(method, self.initial), scorer(method, run.final)
        full_ndcg = scorer(method, self.full)
        recovered = paired_cells("recovered", final_ndcg, initial_ndcg, setup.n_resamples, setup.seed)
        gap = float(full_ndcg.mean() - initial_ndcg.mean())
        return {
            **self.rows, "calibration_fraction": setup.initial_fraction, "n_calibration_docs": setup.n_initial,
            "checkpoints": len(checkpoints), "recalibrations": run.recalibrations,
            "reencoded_docs": run.reencoded_docs,
            "frozen_ndcg_at_10": float(initial_ndcg.mean()), "policy_ndcg_at_10": float(final_ndcg.mean()),
            "full_ndcg_at_10": float(full_ndcg.mean()), **recovered, "gap_to_full": gap,
            "recovered_share_of_gap": recovered["recovered"] / gap if abs(gap) > 1e-12 else math.nan,
            "recovered_per_recalibration": (recovered["recovered"] / run.recalibrations
                                            if run.recalibrations else math.nan),
            # The reference rule "recalibrate at every checkpoint" ends on the full calibration.
            "every_step_recovered_per_recalibration": (gap / len(checkpoints) if checkpoints and not self.free
                                                       else math.nan),
            "every_step_reencoded_docs": sum(checkpoints) if not self.free else 0,
        }
