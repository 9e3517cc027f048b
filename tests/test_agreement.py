"""Q1's measures on constructed cases: Kendall's tau-b, the swap rate, the scale-free MSE, and the
scores of given rows (which must equal the engine's definition of each score shape)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from vespa_quant.evaluate.agreement import (
    float32_reference,
    method_mse,
    method_scores_at,
    mse_predicts_ranking,
    rank_agreement,
    relative_mse,
)
from vespa_quant.quantize.base import calibrate, doc_view, encode, query_view
from vespa_quant.quantize.registry import METHODS
from vespa_quant.quantize.scoring import reference_score


def test_identical_order_is_tau_one_and_no_swap() -> None:
    reference = np.array([[5.0, 4.0, 3.0, 2.0, 1.0]])
    tau, swap = rank_agreement(reference, 10 * reference + 3)  # any increasing map keeps the order
    assert tau.tolist() == [1.0] and swap.tolist() == [0.0]


def test_reversed_order_is_tau_minus_one_and_every_pair_swapped() -> None:
    reference = np.array([[5.0, 4.0, 3.0, 2.0, 1.0]])
    tau, swap = rank_agreement(reference, -reference)
    assert tau.tolist() == [-1.0] and swap.tolist() == [1.0]


def test_tau_b_matches_scipy_with_ties_and_a_tie_is_half_a_swap() -> None:
    rng = np.random.default_rng(3)
    reference = rng.standard_normal((6, 30))
    scores = np.round(reference + 0.8 * rng.standard_normal((6, 30)), 0)  # coarse: many ties
    tau, swap = rank_agreement(reference, scores)
    for q in range(6):
        assert tau[q] == pytest.approx(stats.kendalltau(reference[q], scores[q]).statistic, abs=1e-12)
    one = rank_agreement(np.array([[2.0, 1.0]]), np.array([[7.0, 7.0]]))
    assert one[1].tolist() == [0.5] and one[0].tolist() == [0.0]  # all tied: no order, half a swap


def test_documents_a_two_phase_search_drops_rank_last_and_tie() -> None:
    reference = np.array([[4.0, 3.0, 2.0, 1.0]])
    tau, swap = rank_agreement(reference, np.array([[9.0, -np.inf, 8.0, -np.inf]]))
    # pairs: (0,1) ok (0,2) ok (0,3) ok (1,2) flipped (1,3) tied (2,3) ok
    assert swap.tolist() == [pytest.approx(1.5 / 6)]
    assert np.isfinite(tau).all()


def test_relative_mse_ignores_global_scale_and_offset_only() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 8))
    assert relative_mse(x, 3.0 * x + np.arange(8)) == pytest.approx(0.0, abs=1e-12)
    assert relative_mse(x, np.zeros_like(x)) == pytest.approx(1.0)
    per_dim_scale = x * np.linspace(0.5, 2.0, 8)  # not ranking-neutral, so it costs
    assert relative_mse(x, per_dim_scale) > 0.01


@pytest.mark.parametrize("name", [n for n in METHODS if not METHODS[n].always_first_phase])
def test_scores_at_rows_equal_the_reference_score(generated, name: str) -> None:
    """Every registered method: the scores of the float32 top-k equal ``reference_score`` there."""
    docs, queries = generated
    method = METHODS[name]
    calibration = calibrate(method, docs)
    codes = encode(method, docs, calibration)
    reference = float32_reference(docs, queries, depth=20)
    scores = method_scores_at(method, calibration, codes, queries, reference.rows)
    full = reference_score(query_view(method, queries, calibration), doc_view(method, codes, calibration))
    np.testing.assert_allclose(scores, np.take_along_axis(full, reference.rows, axis=1), rtol=1e-9, atol=1e-9)
    if name == "float32":
        np.testing.assert_allclose(scores, reference.scores, rtol=1e-6)
        assert method_mse(method, calibration, codes, docs) == pytest.approx(0.0, abs=1e-12)


def test_two_phase_scores_drop_non_candidates(generated) -> None:
    docs, queries = generated
    method = METHODS["binary_rescore"]
    calibration = calibrate(method, docs)
    codes = encode(method, docs, calibration)
    reference = float32_reference(docs, queries, depth=50)
    scores = method_scores_at(method, calibration, codes, queries, reference.rows, k1=10)
    kept = np.isfinite(scores)
    assert kept.sum(axis=1).max() <= 10 and kept.any()
    np.testing.assert_allclose(scores[kept], reference.scores[kept], rtol=1e-6)  # float32 rescoring


def test_mse_prediction_is_spearman_across_rows() -> None:
    rows = [{"method": f"m{i}", "reconstruction_mse": mse, "swap_rate_top100": swap, "ndcg_at_10": ndcg}
            for i, (mse, swap, ndcg) in enumerate([(0.1, 0.05, 0.66), (0.3, 0.1, 0.64), (0.5, 0.2, 0.6), (0.7, 0.3, 0.61)])]
    prediction = mse_predicts_ranking(rows)
    assert prediction is not None and prediction.n_methods == 4
    assert prediction.rho_swap == pytest.approx(1.0)
    assert prediction.rho_ndcg == pytest.approx(stats.spearmanr([0.1, 0.3, 0.5, 0.7], [0.66, 0.64, 0.6, 0.61]).statistic)
    assert mse_predicts_ranking(rows[:2]) is None
