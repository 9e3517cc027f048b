"""The research brief's all-MiniLM-L6-v2 SciFact row (Part II 2.1), on the full dataset.

Slow: embeds 5,183 documents on first run (about 6 minutes on 2 cores; cached afterwards).
Run with ``pytest -m slow``.
"""

from __future__ import annotations

import pytest

from vespa_quant.embed.embedded import load_embedded
from vespa_quant.evaluate.runner import evaluate
from vespa_quant.quantize.registry import get_method

BRIEF_MINILM_SCIFACT = {  # research/open-questions.md, 2.1, miniLM (384d) column
    "float32": (0.6451, 0.002), "int8_asym": (0.6469, 0.003), "lloyd_max_gauss": (0.6576, 0.002),
    "quaternary_asym": (0.6523, 0.002), "binary_median_asym": (0.6138, 0.002),
    "binary_asym": (0.6228, 0.002),
}


@pytest.mark.slow
def test_brief_row_is_reproduced(scifact_dir) -> None:
    embedded = load_embedded(scifact_dir, "all-MiniLM-L6-v2")
    assert len(embedded.dataset.doc_ids) == 5183 and len(embedded.dataset.query_ids) == 300
    methods = [get_method(name) for name in BRIEF_MINILM_SCIFACT]
    rows = evaluate(embedded, methods, [384], n_resamples=100, show_progress=False).rows
    measured = {row["method"]: row["ndcg_at_10"] for row in rows}
    for name, (published, tolerance) in BRIEF_MINILM_SCIFACT.items():
        assert abs(measured[name] - published) <= tolerance, (name, measured[name], published)
