"""Peers on generated data: names, bytes from the index, rows aligned with ours, scores we can
recompute without the library, and the paired comparison with our best row at the budget."""

from __future__ import annotations

import numpy as np
import pytest

from vespa_quant.errors import VespaQuantError
from vespa_quant.evaluate.agreement import float32_reference
from vespa_quant.evaluate.peers import (
    PEER_FAMILIES,
    SentenceTransformersPeer,
    parse_peers,
    peer_configs,
)
from vespa_quant.evaluate.report import RESULT_FIELDS
from vespa_quant.evaluate.runner import evaluate
from vespa_quant.quantize.registry import get_method

OURS = ("float32", "binary_asym", "lloyd_max_gauss", "int8_asym")
FAST_FAMILIES = tuple(family for family in PEER_FAMILIES if family not in ("opq", "st"))
"""OPQ trains for seconds even on 600 vectors (it runs in the slow SciFact test), and importing
sentence-transformers takes ~12 s: their rows are checked with ``-m slow``."""


@pytest.fixture(scope="module")
def with_peers(generated_embedded):
    methods = [get_method(name) for name in OURS]
    return evaluate(generated_embedded, methods, [64], peers=FAST_FAMILIES, n_resamples=200, show_progress=False)


def test_peer_rows_are_named_by_configuration_with_bytes_from_the_index(with_peers) -> None:
    rows = {row["method"]: row for row in with_peers.rows}
    expected_bytes = {"faiss_pq8x8": 8, "faiss_pq16x4": 8, "faiss_pq16x8": 16, "faiss_pq32x4": 16,
                      "faiss_sq4": 32, "faiss_sq8": 64}
    for name, size in expected_bytes.items():
        assert rows[name]["bytes_per_vector"] == size, name
        assert rows[name]["bits_per_dim"] == size * 8 / 64
    for bits in (1, 2, 4):  # RaBitQ stores its correction factors beside the bits
        assert rows[f"faiss_rr_rabitq{bits}"]["bytes_per_vector"] > bits * 8
    for row in with_peers.rows:
        assert set(RESULT_FIELDS) <= set(row)
        assert row["peer"] is (row["method"] not in OURS)
        assert row["kendall_tau_top100"] is not None and -1 <= row["kendall_tau_top100"] <= 1
        assert 0 <= row["swap_rate_top100"] <= 1
    assert rows["float32"]["kendall_tau_top100"] == pytest.approx(1.0)
    assert rows["float32"]["swap_rate_top100"] == 0.0
    assert rows["faiss_sq8"]["reconstruction_mse"] < rows["faiss_sq4"]["reconstruction_mse"] < 0.1
    assert rows["faiss_rr_rabitq1"]["reconstruction_mse"] is None  # its decode is not what it scores with


def test_peer_per_query_values_align_with_ours(with_peers, generated_embedded) -> None:
    by_method: dict[str, list[str]] = {}
    for record in with_peers.per_query:
        by_method.setdefault(record["method"], []).append(record["query_id"])
    order = sorted(generated_embedded.dataset.qrels)
    assert len(by_method) == len(with_peers.rows)
    assert all(ids == order for ids in by_method.values())


def test_peers_are_compared_with_our_best_row_within_their_bytes(with_peers) -> None:
    rows = {row["method"]: row for row in with_peers.rows}
    ndcg = {}
    for record in with_peers.per_query:
        ndcg.setdefault(record["method"], []).append(record["ndcg_at_10"])
    # 8 B at 64 dims: of ours only binary_asym fits; 64 B: int8_asym, lloyd_max_gauss or binary_asym.
    assert rows["faiss_pq8x8"]["best_ours_at_budget"] == "binary_asym"
    fitting = [name for name in OURS if rows[name]["bytes_per_vector"] <= 64]
    assert rows["faiss_sq8"]["best_ours_at_budget"] == max(fitting, key=lambda n: rows[n]["ndcg_at_10"])
    row = rows["faiss_pq8x8"]
    assert row["delta_vs_best_ours"] == pytest.approx(np.mean(ndcg["faiss_pq8x8"]) - np.mean(ndcg["binary_asym"]))
    low, high = row["delta_vs_best_ours_ci"]
    assert low <= row["delta_vs_best_ours"] <= high
    assert "index_factory(64, 'PQ8x8np', METRIC_INNER_PRODUCT)" in row["peer_config"]


@pytest.mark.slow  # imports sentence-transformers
def test_sentence_transformers_rows_have_the_bytes_of_their_codes(generated_embedded) -> None:
    result = evaluate(generated_embedded, [get_method("float32")], [64], peers=("st",), n_resamples=20,
                      show_progress=False)
    rows = {row["method"]: row for row in result.rows}
    assert rows["st_ubinary"]["bytes_per_vector"] == 8 and rows["st_uint8"]["bytes_per_vector"] == 64


@pytest.mark.slow  # imports sentence-transformers
def test_sentence_transformers_uint8_equals_exhaustive_dequantized_scores(generated) -> None:
    """With every document a first-phase candidate, the recipe is exhaustive q . dequantize(codes),
    which numpy computes from the bucket definition alone."""
    docs, queries = generated
    fitted = SentenceTransformersPeer("st_uint8", "uint8").fit(docs, seed=0)
    k = len(docs) // fitted.rescore_multiplier  # rescore_multiplier * k = every document
    hits = fitted.search(queries, k)
    low, high = docs.min(axis=0), docs.max(axis=0)
    step = np.where(high > low, (high - low) / 255, 1)
    codes = np.clip(np.floor((docs - low) / step), 0, 255)
    expected = np.sort(queries.astype(np.float64) @ (codes * step + low).T, axis=1)[:, ::-1][:, :k]
    np.testing.assert_allclose(hits.scores, expected, rtol=1e-5, atol=1e-6)
    assert fitted.bytes_per_vector == docs.shape[1]


@pytest.mark.slow  # imports sentence-transformers
def test_sentence_transformers_binary_rescores_with_unpacked_bits(generated) -> None:
    docs, queries = generated
    fitted = SentenceTransformersPeer("st_ubinary", "ubinary").fit(docs, seed=0)
    hits = fitted.search(queries, 20)
    bits = (docs > 0).astype(np.float64)
    expected = np.take_along_axis(queries.astype(np.float64) @ bits.T, hits.indices, axis=1)
    np.testing.assert_allclose(hits.scores, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fitted.scores_at(queries, hits.indices), expected, rtol=1e-5, atol=1e-6)
    assert fitted.bytes_per_vector == docs.shape[1] // 8


def test_faiss_scores_of_given_rows_are_its_search_scores(generated) -> None:
    docs, queries = generated
    for peer in peer_configs(64, ("pq", "sq", "rabitq")):
        fitted = peer.fit(docs, seed=0)
        hits = fitted.search(queries, 15)
        np.testing.assert_allclose(fitted.scores_at(queries, hits.indices), hits.scores, rtol=1e-4, atol=1e-5,
                                   err_msg=peer.name)
    reference = float32_reference(docs, queries, depth=15)
    assert reference.rows.shape == (len(queries), 15)


def test_parse_peers() -> None:
    assert parse_peers(None) == () and parse_peers("none") == ()
    assert parse_peers("faiss") == PEER_FAMILIES
    assert parse_peers("sq,pq,sq") == ("sq", "pq")
    with pytest.raises(VespaQuantError, match="unknown peer 'lsh'"):
        parse_peers("lsh")
    assert [peer.name for peer in peer_configs(97)] == [
        "faiss_sq4", "faiss_sq8", "faiss_rr_rabitq1", "faiss_rr_rabitq2", "faiss_rr_rabitq4", "st_ubinary", "st_uint8"]
