"""The in-process engine: exact search with the same two-phase semantics as the Vespa profiles.

Two modes, the same two a Vespa rank profile has (:mod:`vespa_quant.vespa.package`):

* **two-phase** (``k1`` given): the Hamming top-``k1`` on packed sign bits (the method's own, or
  the shared sign bits of the raw vector for methods that store none; Vespa: ``nearestNeighbor``
  with ``targetHits: k1`` and ``first-phase: closeness``), then the method's asymmetric score on
  exactly those ``k1`` candidates (Vespa: ``global-phase`` with ``rerank-count: k1``);
* **exhaustive** (``k1`` None): the method's score over every document. Methods defined by the
  Hamming first phase (binary_hamming, binary_rescore) always use it (``k1`` defaults to 100).

Ties. At the ``k1``-th Hamming distance the lowest document rows win; among equal final scores
the lowest row ranks first. Vespa keeps, on each content node, the first documents it visits
(local id order) at the threshold distance, and orders equal global-phase scores by the order the
hits arrived in; with a single node fed in row order the two agree, otherwise only tied documents
can differ (the comparison tests tolerate exact ties and nothing else, STYLE 16).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vespa_quant.engine import kernels, scan
from vespa_quant.errors import VespaQuantError
from vespa_quant.quantize.base import (
    Arrays,
    Calibration,
    Quantizer,
    doc_view,
    first_phase_query,
    query_view,
    sign_role,
)

DEFAULT_K1 = 100


@dataclass(frozen=True)
class Hits:
    """Per query, the ``k`` best documents (row indices into the corpus, -1 = none) and their scores."""

    indices: np.ndarray
    scores: np.ndarray


def check_search_counts(k: int, k1: int | None) -> None:
    if k < 1:
        raise VespaQuantError(f"hits per query must be at least 1, got {k}")
    if k1 is not None and k1 < 1:
        raise VespaQuantError(f"k1 (first-phase candidates per query) must be at least 1, got {k1}")


class LocalIndex:
    """One method's encoded corpus, prepared once for any number of searches.

    ``signs`` are the shared sign bits (:func:`~vespa_quant.quantize.base.shared_sign_bits` of the raw documents); they are
    needed only for a two-phase search of a method that stores no sign bits of its own.
    """

    def __init__(self, method: Quantizer, calibration: Calibration, codes: Arrays,
                 signs: np.ndarray | None = None) -> None:
        self.method, self.calibration, self.codes = method, calibration, codes
        self.n_docs = len(next(iter(codes.values())))
        self._scorer: scan.DocScorer | None = None
        role = sign_role(method)
        bits = codes[role] if role is not None else signs
        self.first_phase_bits = None if bits is None else kernels.prepare_bits(np.asarray(bits))

    @property
    def scorer(self) -> scan.DocScorer:
        """The documents in their kernel layout, built on first use (candidates alone need only the bits)."""
        if self._scorer is None:
            self._scorer = scan.DocScorer(lambda chunk: doc_view(self.method, chunk, self.calibration), self.codes)
        return self._scorer

    def candidates(self, queries: np.ndarray, k1: int) -> np.ndarray:
        """(nq, min(k1, n)) rows of the Hamming top-``k1`` (ties: lowest rows)."""
        if self.first_phase_bits is None:
            raise VespaQuantError(f"{self.method.name} stores no sign bits and no shared sign bits were "
                                  "given: a two-phase search needs one of them")
        return scan.hamming_candidates(self.first_phase_bits, first_phase_query(self.method, queries, self.calibration),
                                       min(k1, self.n_docs))

    def search(self, queries: np.ndarray, k: int = 100, k1: int | None = None) -> Hits:
        """Top-``k`` per query, by descending score (exhaustive, or two-phase with ``k1``)."""
        check_search_counts(k, k1)
        if self.method.always_first_phase and k1 is None:
            k1 = DEFAULT_K1
        view = query_view(self.method, queries, self.calibration)
        k = min(k, self.n_docs)  # a corpus smaller than k gives every document, no padding
        if k1 is None:
            scores, rows = self.scorer.topk(view, k)
        else:
            candidates = self.candidates(queries, k1)
            scores, rows = scan.rerank(self.scorer.scores_at(view, candidates), candidates, k)
        return Hits(rows, scores)


def search(method: Quantizer, calibration: Calibration, codes: Arrays, queries: np.ndarray, *,
           k: int = 100, k1: int | None = None, signs: np.ndarray | None = None) -> Hits:
    """Top-``k`` documents per query (see :class:`LocalIndex`)."""
    return LocalIndex(method, calibration, codes, signs).search(queries, k=k, k1=k1)
