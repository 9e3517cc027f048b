"""Streaming drift: how stale a frozen calibration gets as documents arrive, and when to recalibrate."""

from vespa_quant.drift.experiment import run_drift
from vespa_quant.drift.metrics import DriftMetrics, drift_metrics
from vespa_quant.drift.policy import PolicyRun, RecalibrationPolicy, simulate_policy
from vespa_quant.drift.runner import DriftReport, format_drift_table, write_drift
from vespa_quant.drift.stream import LocalStreamIndex, StreamIndex

__all__ = [
    "DriftMetrics", "DriftReport", "LocalStreamIndex", "PolicyRun", "RecalibrationPolicy", "drift_metrics",
    "StreamIndex", "format_drift_table", "run_drift", "simulate_policy", "write_drift",
]
