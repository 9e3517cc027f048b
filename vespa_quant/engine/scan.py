"""Scans of the engine: Hamming top-k, score top-k and candidate rescoring over one score shape.

The engine asks three things of a prepared corpus (:class:`PackedBits`, :class:`DocScorer`):
the Hamming top-k of each query, the top-k by the method's score, and the scores of given
candidate rows. Ties always go to the lowest row, the rule the engine documents
(:mod:`vespa_quant.engine.local`).
"""

from __future__ import annotations

import numpy as np

from vespa_quant.quantize.scoring import (
    DocView,
    QueryView,
    TableDocs,
    hamming_matrix,
    reference_score,
)

BLOCK = 16_384


def _take(docs: DocView, rows: np.ndarray) -> DocView:
    if isinstance(docs, TableDocs):
        return TableDocs(docs.codes[rows], docs.bits,
                         None if docs.scale is None else docs.scale[rows],
                         None if docs.bias is None else docs.bias[rows])
    return type(docs)(getattr(docs, "vectors" if hasattr(docs, "vectors") else "bits")[rows])  # type: ignore[call-arg]


def _n_rows(docs: DocView) -> int:
    return len(docs.codes if isinstance(docs, TableDocs) else getattr(docs, "vectors", getattr(docs, "bits", None)))


def best_k(keys: np.ndarray, rows: np.ndarray, k: int, descending: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per query the ``k`` best (keys, rows), ordered by key then lowest row."""
    order = np.lexsort((rows, -keys if descending else keys), axis=1)[:, :k]
    return np.take_along_axis(keys, order, axis=1), np.take_along_axis(rows, order, axis=1)


class PackedBits:
    """Packed document bits for Hamming top-k."""

    def __init__(self, bits: np.ndarray) -> None:
        self.bits = np.ascontiguousarray(bits)

    def topk(self, query_bits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        n = len(self.bits)
        k = min(k, n)
        best_d = np.zeros((len(query_bits), 0), dtype=np.int64)
        best_r = np.zeros((len(query_bits), 0), dtype=np.int64)
        for start in range(0, n, BLOCK):
            distances = hamming_matrix(query_bits, self.bits[start:start + BLOCK]).astype(np.int64)
            rows = np.broadcast_to(np.arange(start, start + distances.shape[1]), distances.shape)
            best_d, best_r = best_k(np.concatenate([best_d, distances], axis=1),
                                    np.concatenate([best_r, rows], axis=1), k, descending=False)
        return best_d, best_r


class DocScorer:
    """A method's documents in their score shape (:mod:`vespa_quant.quantize.scoring`)."""

    def __init__(self, docs: DocView) -> None:
        self.docs = docs
        self.n_docs = _n_rows(docs)

    def topk(self, query: QueryView, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self.n_docs)
        n_queries = len(getattr(query, "tables", getattr(query, "queries", getattr(query, "bits", None))))
        best_s = np.zeros((n_queries, 0))
        best_r = np.zeros((n_queries, 0), dtype=np.int64)
        for start in range(0, self.n_docs, BLOCK):
            rows = np.arange(start, min(start + BLOCK, self.n_docs))
            scores = reference_score(query, _take(self.docs, rows))
            best_s, best_r = best_k(np.concatenate([best_s, scores], axis=1),
                                    np.concatenate([best_r, np.broadcast_to(rows, scores.shape)], axis=1),
                                    k, descending=True)
        return best_s, best_r

    def scores_at(self, query: QueryView, rows: np.ndarray) -> np.ndarray:
        """(nq, m) scores of the given rows of each query."""
        out = np.empty(rows.shape)
        for q in range(len(rows)):
            single = _query_row(query, q)
            out[q] = reference_score(single, _take(self.docs, rows[q]))[0]
        return out


def _query_row(query: QueryView, q: int) -> QueryView:
    values = {name: (None if value is None else value[q:q + 1]) for name, value in vars(query).items()}
    return type(query)(**values)


def rerank(scores: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top-``k`` candidates of each query by descending score (ties: lowest row)."""
    return best_k(scores, candidates, min(k, candidates.shape[1]), descending=True)
