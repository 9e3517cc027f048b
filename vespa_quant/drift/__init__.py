"""Streaming drift: how stale a frozen calibration gets as documents arrive, and when to recalibrate."""

from vespa_quant.drift.metrics import DriftMetrics, drift_metrics
from vespa_quant.drift.policy import PolicyRun, RecalibrationPolicy, simulate_policy
from vespa_quant.drift.runner import DriftReport, format_drift_table, run_drift, write_drift

__all__ = [
    "DriftMetrics", "DriftReport", "PolicyRun", "RecalibrationPolicy", "drift_metrics",
    "format_drift_table", "run_drift", "simulate_policy", "write_drift",
]
