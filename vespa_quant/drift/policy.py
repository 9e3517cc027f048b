"""When to recalibrate a quantizer, decided from drift metrics alone (no relevance judgements).

A production index cannot measure NDCG as documents arrive, but it can measure how the frozen
calibration fits them (:mod:`vespa_quant.drift.metrics`). The rule here fires on the two kinds of
drift that cost a quantizer accuracy: its centre moving away from the data, and its buckets
filling differently from what they were built for.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from vespa_quant.drift.metrics import OCCUPANCY_EDGE, OCCUPANCY_JS, DriftMetrics, drift_metrics
from vespa_quant.errors import CalibrationError
from vespa_quant.quantize.base import Calibration, Quantizer, calibrate


@dataclass(frozen=True)
class RecalibrationPolicy:
    """Threshold rule: recalibrate when any enabled threshold is exceeded (``None`` disables one).

    Defaults, and why:

    * ``max_centre_shift_sigma = 0.1``: a 4-level Gaussian Lloyd-Max quantizer whose centre is off
      by 0.1 sigma has 1.0% more MSE than the centred one (0.2 sigma: 4.0%; numerical integration
      with the constants of research brief 1.2), about the 1.1% MSE by which Lloyd-Max beats
      equal-count quartiles. It is also the sampling error of a median estimated from ~100
      documents (mean ``|error|`` ~ ``1.25 sigma / sqrt(n) * 0.8``), so calibrations from fewer
      documents are replaced and calibrations from several hundred are not, unless the data moves.
      Not applied to min/max quantizers (``edge_fraction`` occupancy, int8_asym): their 256 levels
      are ~sigma/40 apart, so a moved centre costs nothing until values leave the range, which
      ``max_edge_fraction`` measures directly (and the midrange of a sample is far noisier than a
      median, so this threshold would fire on stationary streams).
    * ``max_occupancy_js = 0.003`` bits, counted *above the divergence measured on the
      calibration documents themselves* (real dimensions are not exactly Gaussian, so Lloyd-Max
      starts above zero): for a Gaussian source this is what a 0.14 sigma centre shift, a 14%
      larger or an 11% smaller sigma does to the Lloyd-Max buckets (a 0.16 sigma shift for the
      median's two), so it catches scale drift, which the centre alone misses, at a similar cost
      level. Quartiles learned from ``n`` documents fill new documents' buckets with a JS of about
      ``0.5 / n`` by sampling alone, so this fires for quartile calibrations from fewer than ~170
      documents, the regime in which the centre threshold fires too.
    * ``max_edge_fraction = 0.005``, also above the calibration documents' own level: one value in
      200 clipped at int8's range ends beyond what the calibration sample already had. On a
      stationary stream the excess is ~0 whatever the calibration size (a new value exceeds the
      max of ``n`` calibration values with probability ``1/(n+1)``, the same share the extremes
      hold in the calibration sample).
    * ``max_scale_ratio`` and ``max_code_change_fraction`` are off: bucket occupancy already
      responds to scale changes in proportion to each method's sensitivity, min/max ranges widen
      with every new document even on stationary streams, and an int8 recalibration changes most
      codes by one step (~sigma/40) without consequence, so neither is a cost signal on its own.
    """

    max_centre_shift_sigma: float | None = 0.1
    max_occupancy_js: float | None = 0.003
    max_edge_fraction: float | None = 0.005
    max_scale_ratio: float | None = None
    max_code_change_fraction: float | None = None

    def reasons(self, metrics: DriftMetrics, baseline: DriftMetrics | None = None) -> tuple[str, ...]:
        """Names of the thresholds ``metrics`` exceed; ``baseline`` is the calibration docs' own."""
        if metrics.calibration_free:
            return ()
        fired: list[str] = []

        def over(name: str, value: float, limit: float | None) -> None:
            if limit is not None and math.isfinite(value) and value > limit:
                fired.append(name)

        if metrics.occupancy_measure != OCCUPANCY_EDGE:
            over("centre_shift_sigma", metrics.centre_shift_sigma, self.max_centre_shift_sigma)
        over("scale_ratio", metrics.scale_ratio, self.max_scale_ratio)
        floor = baseline.occupancy_divergence if baseline is not None else 0.0
        excess = metrics.occupancy_divergence - (floor if math.isfinite(floor) else 0.0)
        if metrics.occupancy_measure == OCCUPANCY_JS:
            over("occupancy_js", excess, self.max_occupancy_js)
        elif metrics.occupancy_measure == OCCUPANCY_EDGE:
            over("edge_fraction", excess, self.max_edge_fraction)
        over("code_change_fraction", metrics.code_change_fraction, self.max_code_change_fraction)
        return tuple(fired)

    def fires(self, metrics: DriftMetrics, baseline: DriftMetrics | None = None) -> bool:
        return bool(self.reasons(metrics, baseline))

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PolicyStep:
    """One checkpoint of a stream: drift against the calibration in force, and the decision."""

    n_seen: int
    metrics: DriftMetrics
    reasons: tuple[str, ...]
    calibration: Calibration
    """The calibration in force after this step (the new one when the rule fired)."""
    recalibrations: int
    """Recalibrations so far, this step included."""
    reencoded_docs: int
    """Documents re-encoded so far: every recalibration re-encodes all documents seen."""

    @property
    def fired(self) -> bool:
        return bool(self.reasons)


@dataclass(frozen=True)
class PolicyRun:
    method: str
    initial: Calibration
    steps: tuple[PolicyStep, ...]

    @property
    def final(self) -> Calibration:
        return self.steps[-1].calibration if self.steps else self.initial

    @property
    def recalibrations(self) -> int:
        return self.steps[-1].recalibrations if self.steps else 0

    @property
    def reencoded_docs(self) -> int:
        return self.steps[-1].reencoded_docs if self.steps else 0


class PolicyTracker:
    """The policy's state along one stream, advanced one checkpoint at a time.

    :func:`simulate_policy` runs it over a whole stream at once; the drift runner advances it at
    each checkpoint of a live index, which then does what the step says (switch to the fresh
    calibration's slot when it fired), so both follow one rule.
    """

    def __init__(self, method: Quantizer, policy: RecalibrationPolicy, initial: Calibration,
                 initial_docs: np.ndarray) -> None:
        self.method, self.policy, self.initial, self.current = method, policy, initial, initial
        self.baseline = drift_metrics(method, initial, initial_docs) if method.needs_calibration else None
        self.recalibrations = self.reencoded = 0
        self.steps: list[PolicyStep] = []

    def check(self, seen: np.ndarray, fresh: Calibration) -> PolicyStep:
        """Drift of the ``len(seen)`` documents seen against the calibration in force, and the decision.

        ``fresh`` is the method's calibration on exactly ``seen``; when the rule fires it becomes
        the calibration in force, and the occupancy baseline becomes its own documents' divergence.
        """
        n = len(seen)
        if not self.method.needs_calibration:
            step = PolicyStep(n, drift_metrics(self.method, self.current, seen), (), self.current, 0, 0)
            self.steps.append(step)
            return step
        metrics = drift_metrics(self.method, self.current, seen, recalibration=fresh)
        reasons = self.policy.reasons(metrics, self.baseline)
        if reasons:
            self.current = fresh
            self.baseline = drift_metrics(self.method, fresh, seen, recalibration=fresh)
            self.recalibrations += 1
            self.reencoded += n
        step = PolicyStep(n, metrics, reasons, self.current, self.recalibrations, self.reencoded)
        self.steps.append(step)
        return step

    def run(self) -> PolicyRun:
        return PolicyRun(self.method.name, self.initial, tuple(self.steps))


def simulate_policy(method: Quantizer, policy: RecalibrationPolicy, initial: Calibration,
                    initial_docs: np.ndarray, stream: np.ndarray, checkpoints: Sequence[int], *,
                    recalibrate: Callable[[int], Calibration] | None = None) -> PolicyRun:
    """Run ``policy`` over ``stream`` (documents in arrival order), checking at each checkpoint.

    At checkpoint ``n`` the first ``n`` stream documents have arrived, each encoded with the
    calibration in force. Their drift against it is measured; if the rule fires, the method is
    recalibrated on all ``n`` and all ``n`` are re-encoded, so every document always shares one
    calibration. ``initial_docs`` are the documents ``initial`` was calibrated on (the stream
    prefix, or another corpus): their own drift metrics are the baseline that occupancy is
    measured above. ``recalibrate(n)`` returns the calibration on ``stream[:n]``, so a caller
    that already has those calibrations shares them; by default it calibrates.
    """
    stream = np.asarray(stream, dtype=np.float32)
    checkpoints = [int(n) for n in checkpoints]
    if any(n < 1 or n > len(stream) for n in checkpoints) or checkpoints != sorted(set(checkpoints)):
        raise CalibrationError(
            f"checkpoints {checkpoints} must be increasing document counts in [1, {len(stream)}]"
        )
    if recalibrate is None:
        def recalibrate(n: int) -> Calibration:
            return calibrate(method, stream[:n], initial.rotation, initial.seed)

    tracker = PolicyTracker(method, policy, initial, initial_docs)
    for n in checkpoints:
        tracker.check(stream[:n], recalibrate(n) if method.needs_calibration else initial)
    return tracker.run()
