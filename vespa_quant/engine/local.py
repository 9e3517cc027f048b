"""The in-process engine: exact two-phase search over codes, the embedded default backend.

Same semantics as the Vespa rank profiles: an optional first phase keeps, per query, the ``k1``
documents nearest in Hamming distance on the method's packed sign bits (Vespa: exact
``nearestNeighbor`` with ``targetHits: k1``); the method's own score then ranks those (or every
document when there is no first phase). Work is blockwise over documents to bound memory
(the pattern of faiss ``contrib/exhaustive_search.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from vespa_quant.errors import VespaQuantError
from vespa_quant.quantize.base import Arrays, Calibration, Method, hamming_query, query_inputs
from vespa_quant.quantize.bits import hamming_distances

FirstPhase = Literal["auto", "hamming", "none"]


@dataclass(frozen=True)
class Hits:
    """Per query, the ``k`` best documents (row indices into the corpus) and their scores."""

    indices: np.ndarray
    scores: np.ndarray


def uses_first_phase(method: Method, first_phase: FirstPhase) -> bool:
    """Whether ``method`` searches with a Hamming first phase under the requested policy.

    ``auto``: only the methods defined by it (binary_hamming, binary_rescore). ``hamming``: also
    every other method that stores sign bits; methods without them stay exhaustive. ``none``:
    exhaustive wherever the phase is optional; the methods defined by it keep it, since without
    it they would be other methods (exhaustive Hamming, or float32).
    """
    if first_phase not in ("auto", "hamming", "none"):
        raise VespaQuantError(f"first phase must be auto, hamming or none, got {first_phase!r}")
    if method.always_first_phase:
        return True
    return first_phase == "hamming" and method.hamming_role is not None


def _slice(codes: Arrays, start: int, stop: int) -> dict[str, np.ndarray]:
    return {role: array[start:stop] for role, array in codes.items()}


def _merge_top_k(scores: np.ndarray, indices: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if scores.shape[1] > k:
        keep = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        scores = np.take_along_axis(scores, keep, axis=1)
        indices = np.take_along_axis(indices, keep, axis=1)
    return scores, indices


def first_phase_candidates(method: Method, calibration: Calibration, codes: Arrays,
                           queries: np.ndarray, k1: int) -> np.ndarray:
    """(n_queries, n_docs) boolean mask of the Hamming top-``k1`` documents of each query."""
    distances = hamming_distances(hamming_query(method, queries, calibration), codes[method.hamming_role])
    n_docs = distances.shape[1]
    mask = np.zeros(distances.shape, dtype=bool)
    if k1 >= n_docs:
        mask[:] = True
        return mask
    nearest = np.argpartition(distances, k1 - 1, axis=1)[:, :k1]
    np.put_along_axis(mask, nearest, True, axis=1)
    return mask


def search(method: Method, calibration: Calibration, codes: Arrays, queries: np.ndarray, *,
           k: int = 100, first_phase: FirstPhase = "auto", k1: int = 100,
           block_size: int = 16384) -> Hits:
    """Top-``k`` documents per query, sorted by descending score."""
    inputs = query_inputs(method, queries, calibration)
    n_docs = len(next(iter(codes.values())))
    candidates = (
        first_phase_candidates(method, calibration, codes, queries, k1)
        if uses_first_phase(method, first_phase) else None
    )
    best_scores = np.full((len(queries), 0), -np.inf)
    best_indices = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, n_docs, block_size):
        stop = min(start + block_size, n_docs)
        scores = method.score(inputs, _slice(codes, start, stop))
        if candidates is not None:
            scores = np.where(candidates[:, start:stop], scores, -np.inf)
        indices = np.broadcast_to(np.arange(start, stop), scores.shape)
        best_scores, best_indices = _merge_top_k(
            np.concatenate([best_scores, scores], axis=1),
            np.concatenate([best_indices, indices], axis=1), k,
        )
    order = np.argsort(-best_scores, axis=1, kind="stable")
    scores = np.take_along_axis(best_scores, order, axis=1)
    indices = np.take_along_axis(best_indices, order, axis=1)
    return Hits(np.where(np.isfinite(scores), indices, -1), scores)
