"""Research analyses of corpus embeddings: per-dim distributions, correlation structure and
reconstruction error against rate-distortion references (research brief Q2, Q3, Q5, Q7, Q8)."""

from vespa_quant.research.distributions import (
    DimensionStats,
    correlation_structure,
    dimension_statistics,
    quantization_mse,
    rate_distortion_references,
    variance_share_curves,
)
from vespa_quant.research.report import analyze, analyze_vectors, format_analysis, write_analysis

__all__ = [
    "DimensionStats", "analyze", "analyze_vectors", "correlation_structure", "dimension_statistics",
    "format_analysis", "quantization_mse", "rate_distortion_references", "variance_share_curves",
    "write_analysis",
]
