"""Metrics, bootstrap intervals, result files and the Pareto plot on tiny hand-made data."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from vespa_quant.errors import VespaQuantError
from vespa_quant.evaluate.metrics import (
    PairedResult,
    bootstrap_ci,
    paired_bootstrap,
    per_query_metrics,
    run_from_topk,
)
from vespa_quant.evaluate.plot import pareto_front, pareto_plot
from vespa_quant.evaluate.report import RESULT_FIELDS, format_table, load_results, write_results

DOC_IDS = ["d1", "d2", "d3", "d4", "d5", "d6", "d7", "d8", "d9", "d10", "d11", "d12", "d13", "q1"]
QRELS = {
    "q1": {"d1": 2, "d2": 1, "d3": 0},
    "q2": {"d5": 1, "d6": 1},
}


def _dcg(gains: list[float]) -> float:
    """trec_eval's DCG: linear gain, discount log2(rank + 1) for 1-based ranks."""
    return sum(gain / math.log2(rank + 1) for rank, gain in enumerate(gains, start=1))


def _tiny_run() -> dict[str, dict[str, float]]:
    """q1 ranks d4, d2, d1, d3 (its own id 'q1' first, which must be dropped);
    q2 ranks d6 first and d5 at rank 12, outside the NDCG@10 cutoff but inside R@100."""
    index = {doc_id: i for i, doc_id in enumerate(DOC_IDS)}
    q1 = ["q1", "d4", "d2", "d1", "d3"] + [None] * 7
    q2 = ["d6", "d7", "d8", "d9", "d10", "d11", "d12", "d13", "d1", "d2", "d3", "d5"]
    top_indices = np.array(
        [[index[d] if d is not None else -1 for d in row] for row in (q1, q2)], dtype=np.int64
    )
    top_scores = np.tile(np.linspace(1.0, 0.1, 12, dtype=np.float32), (2, 1))
    return run_from_topk(["q1", "q2"], DOC_IDS, top_indices, top_scores)


def test_per_query_ndcg_matches_hand_computation() -> None:
    result = per_query_metrics(QRELS, _tiny_run())
    assert result.query_ids == ["q1", "q2"]
    expected_q1 = _dcg([0, 1, 2, 0]) / _dcg([2, 1])
    expected_q2 = _dcg([1]) / _dcg([1, 1])
    np.testing.assert_allclose(result.values["ndcg_cut_10"], [expected_q1, expected_q2], rtol=1e-9)
    np.testing.assert_allclose(result.values["recall_100"], [1.0, 1.0])


def test_run_from_topk_drops_identical_ids_and_empty_slots() -> None:
    run = _tiny_run()
    assert list(run["q1"]) == ["d4", "d2", "d1", "d3"]
    assert all(isinstance(score, float) for score in run["q1"].values())
    kept = run_from_topk(
        ["q1"], DOC_IDS, np.array([[13, 0, -1]]), np.array([[0.9, 0.8, 0.0]]),
        ignore_identical_ids=False,
    )
    assert kept == {"q1": {"q1": pytest.approx(0.9), "d1": pytest.approx(0.8)}}


def test_run_from_topk_rejects_out_of_range_indices() -> None:
    with pytest.raises(VespaQuantError, match="does not fit"):
        run_from_topk(["q1"], ["d1"], np.array([[3]]), np.array([[1.0]]))


def test_query_missing_from_run_scores_zero() -> None:
    qrels = {**QRELS, "q3": {"d9": 1}}
    result = per_query_metrics(qrels, _tiny_run(), measures=("ndcg_cut_10", "recall_100", "P_5"))
    assert result.query_ids == ["q1", "q2", "q3"]
    for values in result.values.values():
        assert values.shape == (3,)
        assert values[2] == 0.0
    assert result.values["ndcg_cut_10"][0] > 0.0
    empty = per_query_metrics(qrels, {})
    assert all(np.all(values == 0.0) for values in empty.values.values())


def test_unknown_measure_is_a_package_error() -> None:
    with pytest.raises(VespaQuantError, match="bogus"):
        per_query_metrics(QRELS, _tiny_run(), measures=("bogus",))


def test_bootstrap_ci_contains_mean_and_narrows_with_more_queries() -> None:
    rng = np.random.default_rng(1)
    few = rng.uniform(0.0, 1.0, size=20)
    many = rng.uniform(0.0, 1.0, size=2000)
    low_few, high_few = bootstrap_ci(few)
    low_many, high_many = bootstrap_ci(many)
    assert low_few <= few.mean() <= high_few
    assert low_many <= many.mean() <= high_many
    assert (high_many - low_many) < 0.5 * (high_few - low_few)
    assert bootstrap_ci(few) == (low_few, high_few)


def test_paired_bootstrap_of_identical_arrays_is_zero() -> None:
    values = np.random.default_rng(2).uniform(size=50)
    result = paired_bootstrap(values, values.copy())
    assert result == PairedResult(delta_mean=0.0, ci_low=0.0, ci_high=0.0, p_value=1.0)


def test_paired_bootstrap_detects_a_real_shift() -> None:
    rng = np.random.default_rng(3)
    b = rng.uniform(size=200)
    a = b + 0.05 + rng.normal(scale=0.02, size=200)
    result = paired_bootstrap(a, b)
    assert result.delta_mean == pytest.approx(np.mean(a - b))
    assert 0.0 < result.ci_low <= result.delta_mean <= result.ci_high
    assert result.p_value < 0.01
    reverse = paired_bootstrap(b, a)
    assert reverse.ci_high < 0.0 and reverse.p_value < 0.01


def _rows() -> list[dict]:
    base = {"dataset": "scifact", "model": "minilm", "n_queries": np.int64(300), "n_docs": 5183}
    return [
        {**base, "dim": 384, "method": "float32", "rotation": "none", "bits_per_dim": 32,
         "bytes_per_vector": 1536, "ndcg_at_10": np.float32(0.645), "ndcg_at_10_ci": (0.61, 0.68),
         "recall_at_100": 0.92, "delta_vs_float32_ci": None, "backend": "engine"},
        {**base, "dim": 384, "method": "int8", "rotation": "none", "bits_per_dim": 8,
         "bytes_per_vector": 384, "ndcg_at_10": 0.643, "ndcg_at_10_ci": np.array([0.61, 0.675]),
         "recall_at_100": 0.918, "delta_vs_float32_ci": [-0.004, 0.001], "backend": "engine",
         "latency_ms_p50": 1.5},
        {**base, "dim": 384, "method": "binary", "rotation": "hadamard", "bits_per_dim": 1,
         "bytes_per_vector": 48, "ndcg_at_10": 0.55, "ndcg_at_10_ci": [0.51, 0.59],
         "recall_at_100": 0.85, "delta_vs_float32_ci": [-0.12, -0.07], "delta_vs_float32": -0.095},
        {**base, "dim": 128, "method": "int8", "rotation": "none", "bits_per_dim": 8,
         "bytes_per_vector": 128, "ndcg_at_10": 0.60, "ndcg_at_10_ci": [0.56, 0.64],
         "recall_at_100": 0.9, "delta_vs_float32_ci": [-0.06, -0.03]},
    ]


def test_write_and_load_round_trip(tmp_path: Path) -> None:
    json_path, csv_path = write_results(_rows(), tmp_path / "out")
    assert json_path.name == "results.json" and csv_path.name == "results.csv"
    assert sorted(p.name for p in json_path.parent.iterdir()) == ["results.csv", "results.json"]

    loaded = load_results(json_path)
    assert load_results(json_path.parent) == loaded
    assert json.loads(json_path.read_text()) == loaded
    assert loaded[0]["ndcg_at_10"] == pytest.approx(0.645)
    assert loaded[0]["n_queries"] == 300 and isinstance(loaded[0]["n_queries"], int)
    assert loaded[1]["ndcg_at_10_ci"] == [0.61, 0.675]
    assert loaded[0]["delta_vs_float32_ci"] is None
    assert loaded[1]["latency_ms_p50"] == 1.5

    with csv_path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        csv_rows = list(reader)
    assert header[:3] == list(RESULT_FIELDS[:3])
    for column in ("ndcg_at_10_ci_low", "ndcg_at_10_ci_high", "delta_vs_float32_ci_low",
                   "delta_vs_float32_ci_high", "backend", "latency_ms_p50"):
        assert column in header
    assert "ndcg_at_10_ci" not in header
    assert len(csv_rows) == 4
    assert float(csv_rows[1]["ndcg_at_10_ci_high"]) == pytest.approx(0.675)
    assert csv_rows[0]["delta_vs_float32_ci_low"] == ""
    assert csv_rows[2]["latency_ms_p50"] == ""


def test_write_results_requires_every_field(tmp_path: Path) -> None:
    row = dict(_rows()[0])
    del row["n_docs"]
    with pytest.raises(VespaQuantError, match="n_docs"):
        write_results([row], tmp_path)
    assert not (tmp_path / "results.json").exists()


def test_format_table_lists_every_method_and_marks_significant_deltas() -> None:
    table = format_table(_rows())
    lines = table.splitlines()
    for method in ("float32", "int8", "binary"):
        assert method in table
    body = lines[2:-1]
    assert [line.split()[2] for line in body] == ["384", "384", "384", "128"]
    assert body[0].split()[3] == "float32" and body[2].split()[3] == "binary"
    assert "-0.0950 [-0.1200, -0.0700]*" in body[2]
    assert "]*" in body[3]
    assert "*" not in body[0] + body[1]
    assert len({len(line) for line in lines[:2]}) == 1


def test_pareto_front_keeps_non_dominated_points() -> None:
    sizes = np.array([1536, 384, 48, 128, 384])
    ndcg = np.array([0.645, 0.643, 0.55, 0.50, 0.60])
    assert pareto_front(sizes, ndcg).tolist() == [2, 1, 0]


def test_pareto_plot_writes_png(tmp_path: Path) -> None:
    path = pareto_plot(_rows(), tmp_path / "plots" / "pareto.png", title="scifact / minilm")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 1000


def test_pareto_plot_refuses_duplicate_points(tmp_path: Path) -> None:
    rows = _rows()
    with pytest.raises(VespaQuantError, match="one dataset and model"):
        pareto_plot(rows + [dict(rows[1], dataset="nfcorpus")], tmp_path / "p.png")
