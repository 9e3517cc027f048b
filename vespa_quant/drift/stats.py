"""Intervals of a drift run's NDCG deltas, as the report cells they fill (brief Q6)."""

from __future__ import annotations

import numpy as np

from vespa_quant.evaluate.metrics import PairedResult, paired_bootstrap, paired_result


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


def paired_cells(prefix: str, a: np.ndarray, b: np.ndarray, n_resamples: int, seed: int) -> dict:
    """``prefix``, ``prefix_ci`` and ``prefix_p`` of the paired bootstrap of per-query ``a - b``."""
    result = paired_bootstrap(a, b, n_resamples=n_resamples, seed=seed)
    return {prefix: result.delta_mean, f"{prefix}_ci": [result.ci_low, result.ci_high],
            f"{prefix}_p": result.p_value}


def versus_cells(prefix: str, per_draw: np.ndarray, reference: np.ndarray, n_resamples: int, seed: int) -> dict:
    """As :func:`paired_cells` for (draws, queries) against one reference; crossed over draws when several."""
    if per_draw.shape[0] == 1:
        return paired_cells(prefix, per_draw[0], reference, n_resamples, seed)
    result = crossed_bootstrap(per_draw - reference[None, :], n_resamples, seed)
    return {prefix: result.delta_mean, f"{prefix}_ci": [result.ci_low, result.ci_high],
            f"{prefix}_p": result.p_value}
