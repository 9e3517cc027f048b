"""The numbers behind every sentence of the report, computed from result entries (values, no text).

* :func:`budget_lines` - issue 11's acceptance table: at each byte budget, our best row that fits
  against the best peer that fits, and the paired bootstrap of their per-query difference;
* :func:`peer_lines` - every peer against our best row of its size and against float32 itself, the
  lossless ceiling: where not even float32's own ranking is significantly above a peer, no
  quantizer can be shown to beat it on these queries;
* :func:`float32_findings` - brief Q6: which rows differ significantly from float32 (the rows'
  own ``delta_vs_float32_ci``, paired over queries), and whether any beats it;
* :func:`mse_findings` - brief Q1: does reconstruction MSE order methods as ranking fidelity and
  NDCG@10 do, and which pairs at the same size contradict it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from vespa_quant.evaluate.agreement import MSE, SWAP, MsePrediction, mse_predicts_ranking
from vespa_quant.evaluate.metrics import PairedResult, paired_bootstrap
from vespa_quant.evaluate.peers import within_budget
from vespa_quant.evaluate.report import ci_excludes_zero
from vespa_quant.report.load import DatasetResults, Entry

DEFAULT_BUDGETS = (32, 48, 64, 96, 128, 192)
"""Bytes/vector of issue 11's table: 2/3, 1, 4/3, 2, 8/3 and 4 bits per dimension at 384 dims."""


def verdict(result: PairedResult | None) -> str | None:
    """``beats`` / ``loses`` when the 95% CI of (a - b) is above / below 0, else ``ties``."""
    if result is None:
        return None
    if result.ci_low > 0:
        return "beats"
    if result.ci_high < 0:
        return "loses"
    return "ties"


@dataclass(frozen=True)
class BudgetLine:
    budget: int
    ours: Entry | None
    peer: Entry | None
    difference: PairedResult | None
    """Paired bootstrap of ours - peer over queries."""

    @property
    def verdict(self) -> str | None:
        return verdict(self.difference)


def best_within(entries: Sequence[Entry], budget: float, peer: bool) -> Entry | None:
    fitting = [entry for entry in entries if entry.peer == peer and within_budget(entry.row, budget)]
    return max(fitting, key=lambda entry: entry.mean, default=None)


def budget_lines(results: DatasetResults, budgets: Sequence[int] = DEFAULT_BUDGETS, *,
                 n_resamples: int = 1000, seed: int = 0) -> list[BudgetLine]:
    lines = []
    for budget in budgets:
        ours = best_within(results.entries, budget, peer=False)
        peer = best_within(results.entries, budget, peer=True)
        difference = (paired_bootstrap(ours.ndcg, peer.ndcg, n_resamples=n_resamples, seed=seed)
                      if ours is not None and peer is not None else None)
        lines.append(BudgetLine(budget, ours, peer, difference))
    return lines


@dataclass(frozen=True)
class PeerLine:
    """A peer row against our best row that fits its bytes and against float32 (paired, ours - peer)."""

    peer: Entry
    ours: Entry | None
    ours_minus_peer: PairedResult | None
    float32_minus_peer: PairedResult | None

    @property
    def ceiling_verdict(self) -> str | None:
        """``beats`` when even float32 is significantly above the peer, so a quantizer can be too."""
        return verdict(self.float32_minus_peer)

    @property
    def ours_verdict(self) -> str | None:
        return verdict(self.ours_minus_peer)


def peer_lines(results: DatasetResults, *, n_resamples: int = 1000, seed: int = 0) -> list[PeerLine]:
    """One line per peer row at the widest dim, smallest first (ties: the better peer first)."""
    float32 = results.float32
    dim = None if float32 is None else float32.row["dim"]
    peers = sorted((e for e in results.entries if e.peer and (dim is None or e.row["dim"] == dim)),
                   key=lambda e: (e.bytes, -e.mean))

    def difference(a: Entry | None, b: Entry) -> PairedResult | None:
        return None if a is None else paired_bootstrap(a.ndcg, b.ndcg, n_resamples=n_resamples, seed=seed)
    lines = []
    for peer in peers:
        ours = best_within(results.entries, peer.bytes, peer=False)
        lines.append(PeerLine(peer, ours, difference(ours, peer), difference(float32, peer)))
    return lines


@dataclass(frozen=True)
class Float32Findings:
    """Rows other than float32 itself, split by their paired interval against float32."""

    compared: tuple[Entry, ...]
    better: tuple[Entry, ...]
    """Interval above 0: significantly better than float32."""
    worse: tuple[Entry, ...]
    above_not_significant: tuple[Entry, ...]
    """Point estimate above float32 but the interval includes 0."""


def float32_findings(results: DatasetResults) -> Float32Findings:
    compared = tuple(entry for entry in results.entries
                     if entry.row["method"] != "float32" and entry.row.get("delta_vs_float32_ci") is not None)
    better = tuple(e for e in compared if ci_excludes_zero(e.row["delta_vs_float32_ci"])
                   and float(e.row["delta_vs_float32_ci"][0]) > 0)
    worse = tuple(e for e in compared if ci_excludes_zero(e.row["delta_vs_float32_ci"])
                  and float(e.row["delta_vs_float32_ci"][1]) < 0)
    above = tuple(e for e in compared if e not in better and float(e.row.get("delta_vs_float32") or 0.0) > 0)
    return Float32Findings(compared, better, worse, above)


@dataclass(frozen=True)
class Contradiction:
    """Two rows of the same size where the one with the lower MSE has the lower NDCG@10."""

    lower_mse: Entry
    higher_mse: Entry
    difference: PairedResult
    """Paired bootstrap of NDCG@10, lower-MSE row minus higher-MSE row (negative)."""


@dataclass(frozen=True)
class MseFindings:
    dim: int
    prediction: MsePrediction | None
    swap_vs_ndcg: tuple[float, float] | None
    """Spearman (rho, p) of swap rate with NDCG@10 over every row that has a swap rate."""
    contradictions: tuple[Contradiction, ...]


def mse_findings(results: DatasetResults, *, n_resamples: int = 1000, seed: int = 0) -> MseFindings:
    """Brief Q1 at the widest dim (MSE of different dims measures different vectors)."""
    dim = max(int(entry.row["dim"]) for entry in results.entries)
    at_dim = [entry for entry in results.entries if int(entry.row["dim"]) == dim and entry.row["method"] != "float32"]
    prediction = mse_predicts_ranking([entry.row for entry in at_dim])
    with_swap = [entry for entry in at_dim if entry.row.get(SWAP) is not None]
    swap_vs_ndcg = None
    if len(with_swap) >= 3:
        swaps = np.array([entry.row[SWAP] for entry in with_swap])
        means = np.array([entry.mean for entry in with_swap])
        if np.ptp(swaps) > 0 and np.ptp(means) > 0:
            result = stats.spearmanr(swaps, means)
            swap_vs_ndcg = (float(result.statistic), float(result.pvalue))
    with_mse = [entry for entry in at_dim if entry.row.get(MSE) is not None]
    contradictions = []
    for i, a in enumerate(with_mse):
        for b in with_mse[i + 1:]:
            if a.bytes != b.bytes or a.row[MSE] == b.row[MSE]:
                continue
            low, high = (a, b) if a.row[MSE] < b.row[MSE] else (b, a)
            if low.mean < high.mean:
                difference = paired_bootstrap(low.ndcg, high.ndcg, n_resamples=n_resamples, seed=seed)
                contradictions.append(Contradiction(low, high, difference))
    contradictions.sort(key=lambda c: c.difference.delta_mean)
    return MseFindings(dim, prediction, swap_vs_ndcg, tuple(contradictions))
