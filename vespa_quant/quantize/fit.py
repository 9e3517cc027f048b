"""Fast calibration primitives: per-dimension medians, quantiles, deviations and 1-D Lloyd-Max.

Calibration reads a whole corpus (or a sample of it) once per method; done naively it costs more
than encoding: ``np.median(corpus.astype(np.float64), axis=0)`` copies the corpus to float64 and
partitions strided columns, and Lloyd iterations that compare every value with every boundary
build an (n, d, levels) array per iteration. Here columns are processed in blocks small enough to
stay in cache (a transposed float32 copy of one block, never of the corpus), and Lloyd-Max sorts
each column once, after which an iteration is a binary search per boundary plus differences of
cumulative sums (the bucket means of a 1-D quantizer are prefix-sum differences over sorted data;
brief, Idea 2).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from numba import njit, prange

from vespa_quant.errors import CalibrationError

BLOCK_BYTES = 32 << 20
"""Bytes of one transposed block of columns."""
DEFAULT_SAMPLE_ROWS = 100_000


def _matrix(corpus: np.ndarray) -> np.ndarray:
    corpus = np.asarray(corpus)
    if corpus.ndim != 2 or len(corpus) == 0:
        raise CalibrationError(f"calibration corpus must be a non-empty (n, d) array, got shape {corpus.shape}")
    return corpus


def _column_blocks(corpus: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(first column, (width, n) float32 contiguous copy) for consecutive blocks of columns."""
    n, d = corpus.shape
    width = max(1, min(d, BLOCK_BYTES // (4 * n)))
    for start in range(0, d, width):
        yield start, np.ascontiguousarray(corpus[:, start:start + width].T, dtype=np.float32)


def calibration_sample(corpus: np.ndarray, max_rows: int = DEFAULT_SAMPLE_ROWS, seed: int = 0) -> np.ndarray:
    """At most ``max_rows`` rows of ``corpus``, drawn without replacement by ``seed``, in corpus order.

    The corpus itself (no copy) when it is small enough. Quantizer constants estimated from 1e5
    rows differ from full-corpus ones by ~1/sqrt(1e5) of a deviation, far below a bucket width.
    """
    corpus = _matrix(corpus)
    if max_rows < 1:
        raise CalibrationError(f"max_rows must be >= 1, got {max_rows}")
    if len(corpus) <= max_rows:
        return corpus
    rows = np.sort(np.random.default_rng(seed).choice(len(corpus), size=max_rows, replace=False))
    return corpus[rows]


def quantiles(corpus: np.ndarray, probabilities: np.ndarray | list[float]) -> np.ndarray:
    """(len(probabilities), d) float32 per-dimension quantiles, numpy's default ("linear") rule.

    One ``np.partition`` per block of columns at the two order statistics around each quantile.
    """
    corpus = _matrix(corpus)
    probabilities = np.atleast_1d(np.asarray(probabilities, dtype=np.float64))
    if np.any((probabilities < 0) | (probabilities > 1)):
        raise CalibrationError(f"quantile probabilities must be in [0, 1], got {probabilities}")
    n, d = corpus.shape
    position = probabilities * (n - 1)
    below = np.floor(position).astype(np.int64)
    above = np.minimum(below + 1, n - 1)
    weight = position - below
    out = np.empty((len(probabilities), d), dtype=np.float32)
    kth = np.unique(np.concatenate([below, above]))
    for start, block in _column_blocks(corpus):
        block.partition(kth, axis=1)
        low, high = block[:, below].astype(np.float64), block[:, above].astype(np.float64)
        out[:, start:start + len(block)] = (low + weight * (high - low)).T
    return out


def median(corpus: np.ndarray) -> np.ndarray:
    """(d,) float32 per-dimension median (the mean of the middle two for even n, as numpy)."""
    return quantiles(corpus, [0.5])[0]


def std(corpus: np.ndarray, accumulator: type = np.float64) -> np.ndarray:
    """(d,) per-dimension standard deviation (population, ddof=0), in the ``accumulator`` dtype.

    Two passes (mean, then squared deviations) over each transposed column block, whose rows are
    contiguous so numpy sums them pairwise: float32 accumulation stays within ~1e-7 relative, and
    there is no cancellation of E[x^2] - E[x]^2.
    """
    corpus = _matrix(corpus)
    out: np.ndarray = np.empty(corpus.shape[1], dtype=accumulator)
    for start, block in _column_blocks(corpus):
        deviation: np.ndarray = block.astype(accumulator, copy=False)
        deviation = deviation - deviation.mean(axis=1, dtype=accumulator, keepdims=True)
        out[start:start + len(block)] = np.sqrt(np.square(deviation).mean(axis=1, dtype=accumulator))
    return out


@njit(parallel=True, cache=True)
def _lloyd_columns(block, levels, iterations):
    """Lloyd-Max on each row of ``block`` (one dimension per row) from ``levels`` (rows x L)."""
    width, n = block.shape
    n_levels = levels.shape[1]
    out = levels.copy()
    for c in prange(width):
        values = np.sort(block[c]).astype(np.float64)
        prefix = np.zeros(n + 1)
        for i in range(n):
            prefix[i + 1] = prefix[i] + values[i]
        level = out[c]
        edges = np.empty(n_levels + 1, dtype=np.int64)
        for _ in range(iterations):
            edges[0] = 0
            edges[n_levels] = n
            for b in range(n_levels - 1):
                edges[b + 1] = np.searchsorted(values, 0.5 * (level[b] + level[b + 1]))
            for b in range(n_levels):
                size = edges[b + 1] - edges[b]
                if size > 0:
                    level[b] = (prefix[edges[b + 1]] - prefix[edges[b]]) / size
            level[:] = np.sort(level)
    return out


def lloyd_max(corpus: np.ndarray, initial_levels: np.ndarray, iterations: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension 1-D Lloyd-Max: (levels (d, L), boundaries (d, L-1)), float64.

    Each iteration sets the boundaries to the midpoints of adjacent levels, assigns a value to the
    bucket of the boundaries at or below it (equal goes up, as ``four_level.bucketize``), and moves
    each level to its bucket's mean; an empty bucket keeps its level, and levels are kept sorted.
    """
    corpus = _matrix(corpus)
    initial = np.asarray(initial_levels, dtype=np.float64)
    if initial.ndim != 2 or len(initial) != corpus.shape[1] or initial.shape[1] < 2:
        raise CalibrationError(f"initial levels must be ({corpus.shape[1]}, L >= 2), got shape {initial.shape}")
    levels = np.empty_like(initial)
    for start, block in _column_blocks(corpus):
        levels[start:start + len(block)] = _lloyd_columns(block, initial[start:start + len(block)], iterations)
    return levels, 0.5 * (levels[:, :-1] + levels[:, 1:])
