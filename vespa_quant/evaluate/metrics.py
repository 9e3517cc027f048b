"""Retrieval metrics per query, and bootstrap intervals over queries.

Everything here is a pure function of in-memory runs, qrels and arrays; reading qrels files and
writing results live elsewhere. Per-query values (not just means) are the unit of everything
downstream: a quantized method is judged by the *paired* difference to float32 on the same
queries, because the query-to-query spread of NDCG@10 on a BEIR set is far larger than the
differences between good quantizers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pytrec_eval

from vespa_quant.errors import VespaQuantError

Run = dict[str, dict[str, float]]
"""Query id -> doc id -> score, the shape pytrec_eval and BEIR use for a ranking."""

Qrels = Mapping[str, Mapping[str, int]]
"""Query id -> doc id -> graded relevance."""


class EvaluationError(VespaQuantError):
    """Inputs to a metric or report do not fit together (shapes, ids, measure names)."""


@dataclass(frozen=True)
class PerQuery:
    """Per-query metric values, aligned to ``query_ids`` (every query of the qrels, sorted)."""

    query_ids: list[str]
    values: dict[str, np.ndarray]


@dataclass(frozen=True)
class PairedResult:
    """Paired bootstrap of ``mean(a - b)`` over queries."""

    delta_mean: float
    ci_low: float
    ci_high: float
    p_value: float


def run_from_topk(
    query_ids: list[str],
    doc_ids: list[str],
    top_indices: np.ndarray,
    top_scores: np.ndarray,
    ignore_identical_ids: bool = True,
) -> Run:
    """Turn a top-k search result (row per query, column per rank) into a :data:`Run`.

    ``top_indices`` index into ``doc_ids``; ``-1`` marks an empty slot (fewer than k hits).
    With ``ignore_identical_ids`` a hit whose doc id equals its query id is dropped, which is
    what BEIR's ``EvaluateRetrieval`` does by default; some BEIR sets (e.g. ArguAna, Quora)
    share ids between queries and documents and would otherwise reward retrieving the query
    itself. If the same doc appears twice in a row, its first (highest-ranked) score is kept.
    """
    top_indices = np.asarray(top_indices)
    top_scores = np.asarray(top_scores)
    if top_indices.ndim != 2 or top_indices.shape != top_scores.shape:
        raise EvaluationError(
            f"top_indices {top_indices.shape} and top_scores {top_scores.shape}: "
            "expected two arrays of the same (n_queries, k) shape"
        )
    if top_indices.shape[0] != len(query_ids):
        raise EvaluationError(
            f"top_indices has {top_indices.shape[0]} rows, expected one per query "
            f"({len(query_ids)} query ids)"
        )
    if not np.issubdtype(top_indices.dtype, np.integer):
        raise EvaluationError(f"top_indices has dtype {top_indices.dtype}, expected integers")
    if top_indices.size and (top_indices.min() < -1 or top_indices.max() >= len(doc_ids)):
        raise EvaluationError(
            f"top_indices range [{top_indices.min()}, {top_indices.max()}] does not fit "
            f"{len(doc_ids)} doc ids (-1 is allowed for 'no hit')"
        )

    doc_id_array = np.asarray(doc_ids, dtype=object)
    scores_f64 = top_scores.astype(np.float64)
    run: Run = {}
    for row, query_id in enumerate(query_ids):
        valid = top_indices[row] >= 0
        hits: dict[str, float] = {}
        row_doc_ids = doc_id_array[top_indices[row][valid]]
        for doc_id, score in zip(row_doc_ids.tolist(), scores_f64[row][valid].tolist()):
            if ignore_identical_ids and doc_id == query_id:
                continue
            hits.setdefault(str(doc_id), float(score))
        run[str(query_id)] = hits
    return run


def per_query_metrics(
    qrels: Qrels,
    run: Mapping[str, Mapping[str, float]],
    measures: Sequence[str] = ("ndcg_cut_10", "recall_100"),
) -> PerQuery:
    """Per-query trec_eval measures for every query in ``qrels``, via pytrec_eval.

    Measures use trec_eval names (``ndcg_cut_10``, ``recall_100``, ``P_5``; the dotted form
    ``ndcg_cut.10`` is accepted too). pytrec_eval only reports queries that appear in the run,
    so queries of the qrels that the run lacks get 0 -- the ``trec_eval -c`` convention, which
    keeps every method averaged over the same query set. Run queries absent from the qrels are
    ignored. Ids are coerced to ``str``, relevance to ``int`` and scores to ``float`` because
    pytrec_eval's C extension rejects anything else.
    """
    if not qrels:
        raise EvaluationError("qrels are empty: expected at least one judged query")
    if not measures:
        raise EvaluationError("no measures requested")
    clean_qrels = {
        str(query_id): {str(doc_id): int(rel) for doc_id, rel in judged.items()}
        for query_id, judged in qrels.items()
    }
    clean_run = {
        str(query_id): {str(doc_id): float(score) for doc_id, score in hits.items()}
        for query_id, hits in run.items()
        if str(query_id) in clean_qrels
    }
    try:
        evaluator = pytrec_eval.RelevanceEvaluator(clean_qrels, set(measures))
    except ValueError as exc:
        raise EvaluationError(f"measures {list(measures)}: {exc}") from exc

    query_ids = sorted(clean_qrels)
    results = evaluator.evaluate(clean_run)
    # An empty ranking for one query is enough to learn which keys each measure produces.
    probe = results if results else evaluator.evaluate({query_ids[0]: {}})
    produced_keys = next(iter(probe.values())).keys()
    result_keys = {measure: measure.replace(".", "_") for measure in measures}
    missing = [m for m, key in result_keys.items() if key not in produced_keys]
    if missing:
        raise EvaluationError(
            f"measures {missing} produced no per-query value (pytrec_eval gave "
            f"{sorted(produced_keys)}); name a cutoff explicitly, e.g. 'ndcg_cut_10'"
        )

    values = {
        measure: np.array(
            [results.get(query_id, {}).get(key, 0.0) for query_id in query_ids],
            dtype=np.float64,
        )
        for measure, key in result_keys.items()
    }
    return PerQuery(query_ids=query_ids, values=values)


def _bootstrap_means(values: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """Means of ``n_resamples`` resamples (with replacement) of a 1-D array, in one draw."""
    rng = np.random.default_rng(seed)
    index = rng.integers(0, values.shape[0], size=(n_resamples, values.shape[0]))
    return values[index].mean(axis=1)


def _check_bootstrap_args(values: np.ndarray, name: str, n_resamples: int, confidence: float) -> None:
    if values.ndim != 1 or values.shape[0] == 0:
        raise EvaluationError(f"{name} has shape {values.shape}, expected a non-empty 1-D array")
    if not np.all(np.isfinite(values)):
        raise EvaluationError(f"{name} contains NaN or infinite values")
    if n_resamples < 1:
        raise EvaluationError(f"n_resamples is {n_resamples}, expected at least 1")
    if not 0.0 < confidence < 1.0:
        raise EvaluationError(f"confidence is {confidence}, expected a value in (0, 1)")


def bootstrap_ci(
    values: np.ndarray,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile-bootstrap interval for the mean of per-query values.

    Queries are the sampling unit (the corpus is fixed), so resampling queries with
    replacement estimates how much the mean would move on another draw of queries of the same
    kind. Percentile intervals (Efron & Tibshirani, ch. 13) are enough at the few hundred
    queries of a BEIR test split; the fixed seed makes reports reproducible.
    """
    values = np.asarray(values, dtype=np.float64)
    _check_bootstrap_args(values, "values", n_resamples, confidence)
    means = _bootstrap_means(values, n_resamples, seed)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def paired_result(delta_mean: float, resampled: np.ndarray, confidence: float = 0.95) -> PairedResult:
    """Percentile CI and two-sided p-value of a mean delta from its bootstrap distribution.

    The p-value is twice the fraction of resampled deltas on the other side of zero from the
    observed one (zero counts against the effect), capped at 1; a zero delta gives p = 1.
    """
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(resampled, [tail, 1.0 - tail])
    if delta_mean > 0:
        p_value = min(1.0, 2.0 * float(np.mean(resampled <= 0.0)))
    elif delta_mean < 0:
        p_value = min(1.0, 2.0 * float(np.mean(resampled >= 0.0)))
    else:
        p_value = 1.0
    return PairedResult(delta_mean=delta_mean, ci_low=float(low), ci_high=float(high), p_value=p_value)


def paired_bootstrap(
    a: np.ndarray,
    b: np.ndarray,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> PairedResult:
    """Paired bootstrap of ``mean(a - b)``, resampling queries jointly for both systems.

    Pairing removes the per-query difficulty both systems share, which is why a 0.005 NDCG
    difference can be significant even though each system's own interval is ten times wider.
    The two-sided p-value is twice the fraction of resampled deltas on the other side of zero
    from the observed delta (a resampled delta of exactly zero counts against the effect),
    capped at 1; an observed delta of zero gives p = 1.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise EvaluationError(
            f"a has shape {a.shape} and b has shape {b.shape}: paired bootstrap needs one "
            "value per query for both systems, in the same query order"
        )
    deltas = a - b
    _check_bootstrap_args(deltas, "a - b", n_resamples, confidence)
    delta_mean = float(deltas.mean())
    resampled = _bootstrap_means(deltas, n_resamples, seed)
    return paired_result(delta_mean, resampled, confidence)
