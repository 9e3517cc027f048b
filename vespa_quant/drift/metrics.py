"""How far documents arriving after calibration have moved from what the calibration assumed.

In production a quantizer is calibrated once and new documents keep being encoded with those
frozen constants (research brief, Idea 5: "maximum streaming robustness"). These metrics say,
from the vectors alone and without relevance judgements, how stale a calibration has become.
Every metric compares the frozen calibration with the one the same method would learn from the
documents seen so far, through the method's own hooks (``centre_scale``, ``buckets``,
``design_occupancy``), so like is compared with like: the median and sigma of Lloyd-Max, the
quartiles of quaternary, the min/max of int8.

Values are measured after the calibration's rotation (the space the codes live in). Dimensions
that are constant in the data (all-MiniLM-L6-v2 has three, ~1e-33 and ~1e-8; research README)
have no sigma to measure a shift in and are left out of the sigma-unit and occupancy averages;
they never change code, so they still count (as unchanged) in ``code_change_fraction``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from vespa_quant.errors import CalibrationError
from vespa_quant.quantize.base import ROTATION_KEY, Calibration, DriftHooks, Quantizer, calibrate, encode

DEGENERATE_RELATIVE_SCALE = 1e-6
"""A dimension whose spread is below this fraction of the median dimension's spread is constant."""

OCCUPANCY_JS = "jensen_shannon"
"""Occupancy measure of quantizers with a designed occupancy: mean per-dimension JS divergence."""
OCCUPANCY_EDGE = "edge_fraction"
"""Occupancy measure of bucket quantizers without one (int8_asym): fraction of values in the edge codes."""
OCCUPANCY_NONE = "none"


@dataclass(frozen=True)
class DriftMetrics:
    """Drift of ``n_seen`` documents against one frozen calibration of ``method``.

    ``centre_shift_sigma``: mean over dimensions of ``|c_seen - c_cal| / s_cal``, with ``(c, s)``
    the method's centre and scale (``Quantizer.centre_scale``) of the frozen calibration and of a
    calibration recomputed on the seen documents; ``centre_shift_sigma_max`` is the worst
    dimension. For Lloyd-Max and binary_median_asym this is exactly
    ``|median(seen) - median_cal| / sigma_cal``.

    ``scale_ratio``: mean ``|log(s_seen / s_cal)|``.

    ``occupancy_divergence``: how the frozen buckets are filled by the seen documents, measured as
    named by ``occupancy_measure``: ``jensen_shannon`` = mean per-dimension Jensen-Shannon
    divergence (bits, in [0, 1]) between observed bucket occupancy and ``design_occupancy``
    (1/2, 1/2 for a median; 0.163, 0.337, 0.337, 0.163 for Gaussian Lloyd-Max; 1/4 each for
    quartiles); ``edge_fraction`` = fraction of values that land in the lowest or highest code,
    where a min/max quantizer (int8_asym) clips everything outside its calibrated range.

    ``code_change_fraction``: fraction of (document, dimension) codes of the seen documents that
    differ between the frozen calibration and the recomputed one.

    Quantizers that need no calibration have exact zeros and ``calibration_free=True``.
    """

    method: str
    n_seen: int
    calibration_free: bool
    centre_shift_sigma: float
    centre_shift_sigma_max: float
    scale_ratio: float
    occupancy_divergence: float
    occupancy_measure: str
    code_change_fraction: float

    def as_row(self) -> dict:
        return asdict(self)


def zero_drift(method: Quantizer, n_seen: int) -> DriftMetrics:
    """The drift of a calibration-free method: none, by construction."""
    return DriftMetrics(method.name, n_seen, True, 0.0, 0.0, 0.0, 0.0, OCCUPANCY_NONE, 0.0)


def live_dimensions(spread: np.ndarray) -> np.ndarray:
    """Mask of dimensions whose spread is not negligible next to the median dimension's."""
    spread = np.asarray(spread, dtype=np.float64)
    reference = np.median(spread[np.isfinite(spread)]) if np.any(np.isfinite(spread)) else 0.0
    return np.isfinite(spread) & (spread > DEGENERATE_RELATIVE_SCALE * reference)


def jensen_shannon(observed: np.ndarray, design: np.ndarray) -> np.ndarray:
    """Per-row Jensen-Shannon divergence in bits between (rows, K) occupancies and a (K,) design.

    Bounded in [0, 1] and finite when a bucket is empty, unlike KL, which matters because a
    shifted dimension can empty the outer buckets completely.
    """
    observed = np.asarray(observed, dtype=np.float64)
    design = np.broadcast_to(np.asarray(design, dtype=np.float64), observed.shape)
    mixture = 0.5 * (observed + design)

    def kl_to_mixture(p: np.ndarray) -> np.ndarray:
        ratio = np.divide(p, mixture, out=np.ones_like(p), where=p > 0)
        return np.sum(p * np.log2(ratio), axis=-1)

    return np.clip(0.5 * kl_to_mixture(observed) + 0.5 * kl_to_mixture(design), 0.0, 1.0)


def bucket_occupancy(buckets: np.ndarray, n_buckets: int) -> np.ndarray:
    """(dim, n_buckets) fraction of the rows of a (n, dim) bucket-index array in each bucket."""
    n, dim = buckets.shape
    flat = (np.arange(dim)[None, :] * n_buckets + buckets.astype(np.int64)).ravel()
    counts = np.bincount(flat, minlength=dim * n_buckets).reshape(dim, n_buckets)
    return counts / max(n, 1)


def _edge_codes(method: DriftHooks, constants, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest code per dimension, found by bucketing values far outside any range."""
    extremes = np.array([[-1e30] * dim, [1e30] * dim], dtype=np.float32)
    edges = np.asarray(method.buckets(extremes, constants))
    return edges[0], edges[1]


def _changed_codes(method: Quantizer, frozen: Calibration, fresh: Calibration,
                   rotated: np.ndarray, seen: np.ndarray) -> float:
    """Share of (document, dimension) codes that differ; both calibrations share one rotation."""
    if isinstance(method, DriftHooks):
        before = method.buckets(rotated, frozen.constants)
        after = method.buckets(rotated, fresh.constants)
        return float(np.mean(np.asarray(before) != np.asarray(after)))
    # No per-dimension buckets: compare the stored cells themselves, every field together.
    old, new = encode(method, seen, frozen), encode(method, seen, fresh)
    changed = sum(int(np.count_nonzero(old[role] != new[role])) for role in old)
    return changed / max(sum(old[role].size for role in old), 1)


def drift_metrics(method: Quantizer, calibration: Calibration, seen_vectors: np.ndarray, *,
                  recalibration: Calibration | None = None) -> DriftMetrics:
    """Drift of ``seen_vectors`` (unrotated, as given to ``calibrate``) against ``calibration``.

    ``recalibration`` is the calibration of ``method`` on exactly ``seen_vectors`` with the same
    rotation and seed; it is computed when not given (pass it when the caller needs it anyway).
    """
    seen = np.asarray(seen_vectors, dtype=np.float32)
    if seen.ndim != 2 or len(seen) == 0:
        raise CalibrationError(f"seen vectors must be a non-empty (n, dim) array, got {seen.shape}")
    if calibration.method != method.name:
        raise CalibrationError(f"calibration {calibration.id} is for {calibration.method}, not {method.name}")
    if seen.shape[1] != calibration.dim:
        raise CalibrationError(
            f"seen vectors have {seen.shape[1]} dims, calibration {calibration.id} expects {calibration.dim}"
        )
    if not method.needs_calibration:
        return zero_drift(method, len(seen))
    fresh = recalibration if recalibration is not None else calibrate(
        method, seen, calibration.rotation, calibration.seed, like=calibration)
    if (fresh.method, fresh.dim, fresh.rotation, fresh.seed) != (
            method.name, calibration.dim, calibration.rotation, calibration.seed):
        raise CalibrationError(
            f"recalibration {fresh.id} ({fresh.method}, {fresh.dim} dims, rotation {fresh.rotation} "
            f"seed {fresh.seed}) does not match calibration {calibration.id} ({calibration.method}, "
            f"{calibration.dim} dims, rotation {calibration.rotation} seed {calibration.seed})"
        )
    if not np.array_equal(fresh.arrays.get(ROTATION_KEY, np.zeros(0)), calibration.arrays.get(ROTATION_KEY, np.zeros(0))):
        # A learned rotation (pca) differs between corpora: compare both calibrations in the frozen space.
        fresh = calibrate(method, seen, calibration.rotation, calibration.seed, like=calibration)
    rotated = calibration.rotate(seen).astype(np.float64)
    seen_std = rotated.std(axis=0)
    live = live_dimensions(seen_std)

    centre_shift = centre_shift_max = scale_ratio = math.nan
    hooks = method if isinstance(method, DriftHooks) else None
    frozen_cs = hooks.centre_scale(calibration.constants) if hooks else None
    fresh_cs = hooks.centre_scale(fresh.constants) if hooks else None
    if frozen_cs is not None and fresh_cs is not None:
        (c_cal, s_cal), (c_seen, s_seen) = frozen_cs, fresh_cs
        unit = np.asarray(s_cal, dtype=np.float64)
        live_unit = live & live_dimensions(unit)
        if np.any(live_unit):
            shift = np.abs(np.asarray(c_seen, np.float64) - c_cal)[live_unit] / unit[live_unit]
            centre_shift, centre_shift_max = float(shift.mean()), float(shift.max())
            ratio_live = live_unit & live_dimensions(s_seen)
            scale_ratio = float(np.mean(np.abs(np.log(
                np.asarray(s_seen, np.float64)[ratio_live] / unit[ratio_live]))))
        else:
            centre_shift = centre_shift_max = 0.0

    occupancy, measure = math.nan, OCCUPANCY_NONE
    if hooks is not None:
        buckets = np.asarray(hooks.buckets(rotated.astype(np.float32), calibration.constants))
        design = hooks.design_occupancy(calibration.constants)
        if design is not None:
            observed = bucket_occupancy(buckets, len(design))
            per_dim = jensen_shannon(observed, design)
            occupancy, measure = float(per_dim[live].mean()) if np.any(live) else 0.0, OCCUPANCY_JS
        else:
            low, high = _edge_codes(hooks, calibration.constants, calibration.dim)
            at_edge = (buckets == low[None, :]) | (buckets == high[None, :])
            occupancy = float(at_edge[:, live].mean()) if np.any(live) else 0.0
            measure = OCCUPANCY_EDGE

    return DriftMetrics(
        method=method.name, n_seen=len(seen), calibration_free=False,
        centre_shift_sigma=centre_shift, centre_shift_sigma_max=centre_shift_max,
        scale_ratio=scale_ratio, occupancy_divergence=occupancy, occupancy_measure=measure,
        code_change_fraction=_changed_codes(method, calibration, fresh, rotated.astype(np.float32), seen),
    )
