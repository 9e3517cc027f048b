"""Rotations and the in-process engine: exhaustive and two-phase search, the tie rules, the first phase."""

from __future__ import annotations

import numpy as np
import pytest

from vespa_quant.engine.local import LocalIndex, search
from vespa_quant.errors import VespaQuantError
from vespa_quant.quantize.base import (
    calibrate,
    doc_view,
    encode,
    first_phase_query,
    query_view,
    shared_sign_bits,
)
from vespa_quant.quantize.registry import METHODS, get_method
from vespa_quant.quantize.rotation import pca_rotation, rotation_matrix
from vespa_quant.quantize.scoring import hamming_matrix, reference_score


@pytest.mark.parametrize("name", ["hadamard", "qr"])
@pytest.mark.parametrize("dim", [64, 97, 384])
def test_seeded_rotations_are_orthogonal_and_seeded(name: str, dim: int) -> None:
    matrix = rotation_matrix(name, dim, 1).astype(np.float64)
    np.testing.assert_allclose(matrix @ matrix.T, np.eye(dim), atol=1e-5)
    assert not np.allclose(matrix, rotation_matrix(name, dim, 2))


def test_pca_rotation_orders_variance_and_is_orthogonal(generated) -> None:
    docs, _ = generated
    matrix = pca_rotation(docs).astype(np.float64)
    np.testing.assert_allclose(matrix @ matrix.T, np.eye(docs.shape[1]), atol=1e-5)
    variances = (docs @ matrix.T).var(axis=0)
    assert np.all(np.diff(variances) <= 1e-7)


@pytest.mark.parametrize("rotation", ["hadamard", "qr", "pca"])
def test_rotation_leaves_float32_scores_unchanged(rotation: str, generated) -> None:
    docs, queries = generated
    method = get_method("float32")
    plain, rotated = calibrate(method, docs), calibrate(method, docs, rotation=rotation, seed=5)

    def scores(calibration):
        return reference_score(query_view(method, queries, calibration),
                               doc_view(method, encode(method, docs, calibration), calibration))

    np.testing.assert_allclose(scores(rotated), scores(plain), atol=1e-5)
    assert not np.allclose(encode(method, docs, rotated)["vector"], docs)


def _full_scores(method, calibration, codes, queries) -> np.ndarray:
    return reference_score(query_view(method, queries, calibration), doc_view(method, codes, calibration))


@pytest.mark.parametrize("name", [n for n, m in METHODS.items() if not m.always_first_phase])
def test_exhaustive_search_is_the_sorted_full_score(name: str, generated) -> None:
    docs, queries = generated
    method = get_method(name)
    calibration = calibrate(method, docs)
    codes = encode(method, docs, calibration)
    hits = search(method, calibration, codes, queries, k=20)
    full = _full_scores(method, calibration, codes, queries)
    np.testing.assert_allclose(hits.scores, -np.sort(-full, axis=1)[:, :20], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(full, hits.indices, axis=1), hits.scores, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(METHODS))
def test_two_phase_rescores_exactly_the_hamming_top_k1(name: str, generated) -> None:
    """Candidates are the k1 smallest Hamming distances, ties to the lowest rows; the result is
    those candidates ranked by the method's score, ties to the lowest row."""
    docs, queries = generated
    method = get_method(name)
    calibration = calibrate(method, docs)
    codes = encode(method, docs, calibration)
    signs = shared_sign_bits(docs)
    k1 = 37
    hits = search(method, calibration, codes, queries, k=20, k1=k1, signs=signs)
    own = getattr(method, "sign_role", None)
    distances = hamming_matrix(first_phase_query(method, queries, calibration), codes[own] if own else signs)
    full = _full_scores(method, calibration, codes, queries)
    for q in range(len(queries)):
        candidates = np.lexsort((np.arange(len(docs)), distances[q]))[:k1]
        ranked = candidates[np.lexsort((candidates, -full[q, candidates]))][:20]
        np.testing.assert_array_equal(hits.indices[q], ranked)


def test_hamming_ties_at_the_threshold_go_to_the_lowest_rows() -> None:
    bits = np.zeros((6, 1), dtype=np.int8)
    bits[[1, 4], 0] = np.int8(-128)  # distance 1 from the all-zero query at rows 1 and 4
    index = LocalIndex(get_method("binary_hamming"), calibrate(get_method("binary_hamming"), np.ones((2, 8))),
                       {"bits": bits})
    np.testing.assert_array_equal(index.candidates(np.full((1, 8), -1.0), 3), [[0, 2, 3]])


def test_first_phase_with_every_document_equals_float32(generated) -> None:
    docs, queries = generated
    rescore, exact = get_method("binary_rescore"), get_method("float32")
    cal_r, cal_f = calibrate(rescore, docs), calibrate(exact, docs)
    full = search(rescore, cal_r, encode(rescore, docs, cal_r), queries, k=10, k1=len(docs))
    truth = search(exact, cal_f, encode(exact, docs, cal_f), queries, k=10)
    np.testing.assert_array_equal(full.indices, truth.indices)


def test_first_phase_recall_rises_with_k1(generated) -> None:
    """Hamming candidates hold far more of the float32 top-10 than random ones, rising with k1."""
    docs, queries = generated
    rescore, exact = get_method("binary_rescore"), get_method("float32")
    cal_r, cal_f = calibrate(rescore, docs), calibrate(exact, docs)
    codes = encode(rescore, docs, cal_r)
    truth = search(exact, cal_f, encode(exact, docs, cal_f), queries, k=10).indices
    recalls = []
    for k1 in (60, 200, 600):
        hits = search(rescore, cal_r, codes, queries, k=10, k1=k1)
        recalls.append(np.mean([len(set(t) & set(h)) / 10 for t, h in zip(truth, hits.indices)]))
    assert recalls[0] > 3 * 60 / len(docs), recalls  # random candidates would give k1 / n
    assert recalls[0] < recalls[1] < recalls[2] == 1.0, recalls


def test_counts_are_checked(generated) -> None:
    docs, queries = generated
    method = get_method("int8_asym")
    calibration = calibrate(method, docs)
    codes = encode(method, docs, calibration)
    with pytest.raises(VespaQuantError, match="at least 1"):
        search(method, calibration, codes, queries, k=0)
    with pytest.raises(VespaQuantError, match="k1"):
        search(method, calibration, codes, queries, k=10, k1=0)
    with pytest.raises(VespaQuantError, match="no sign bits"):
        search(method, calibration, codes, queries, k=10, k1=20)
