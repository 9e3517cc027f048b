"""Rotations are orthogonal and leave float32 unchanged; the engine's two phases behave."""

from __future__ import annotations

import numpy as np
import pytest

from vespa_quant.engine.local import search
from vespa_quant.errors import VespaQuantError
from vespa_quant.quantize.base import calibrate, encode, query_inputs
from vespa_quant.quantize.registry import get_method
from vespa_quant.quantize.rotation import rotation_matrix


@pytest.mark.parametrize("name", ["hadamard", "qr"])
@pytest.mark.parametrize("dim", [64, 384, 768])
def test_rotations_are_orthogonal_and_seeded(name: str, dim: int) -> None:
    matrix = rotation_matrix(name, dim, 1).astype(np.float64)
    np.testing.assert_allclose(matrix @ matrix.T, np.eye(dim), atol=1e-5)
    assert not np.allclose(matrix, rotation_matrix(name, dim, 2))


@pytest.mark.parametrize("rotation", ["hadamard", "qr"])
def test_rotation_leaves_float32_scores_unchanged(rotation: str, generated) -> None:
    docs, queries = generated
    method = get_method("float32")
    plain, rotated = calibrate(method, docs), calibrate(method, docs, rotation=rotation, seed=5)
    scores = method.score(query_inputs(method, queries, plain), encode(method, docs, plain))
    turned = method.score(query_inputs(method, queries, rotated), encode(method, docs, rotated))
    np.testing.assert_allclose(turned, scores, atol=1e-5)
    assert not np.allclose(encode(method, docs, rotated)["vector"], docs)


@pytest.mark.parametrize("name", ["float32", "int8_asym", "lloyd_max_gauss", "binary_median_asym"])
def test_exhaustive_search_is_the_sorted_full_score(name: str, generated) -> None:
    docs, queries = generated
    method = get_method(name)
    calibration = calibrate(method, docs)
    codes = encode(method, docs, calibration)
    hits = search(method, calibration, codes, queries, k=20, block_size=128)
    full = method.score(query_inputs(method, queries, calibration), codes)
    expected = -np.sort(-full, axis=1)[:, :20]
    np.testing.assert_allclose(hits.scores, expected)
    np.testing.assert_allclose(np.take_along_axis(full, hits.indices, axis=1), hits.scores)


def test_first_phase_with_every_document_equals_float32(generated) -> None:
    docs, queries = generated
    rescore, exact = get_method("binary_rescore"), get_method("float32")
    cal_r, cal_f = calibrate(rescore, docs), calibrate(exact, docs)
    full = search(rescore, cal_r, encode(rescore, docs, cal_r), queries, k=10, k1=len(docs))
    truth = search(exact, cal_f, encode(exact, docs, cal_f), queries, k=10)
    np.testing.assert_array_equal(full.indices, truth.indices)


def test_first_phase_recall_and_candidate_limit(generated) -> None:
    """Hamming candidates hold far more of the float32 top-10 than random ones, rising with k1."""
    docs, queries = generated
    rescore, exact = get_method("binary_rescore"), get_method("float32")
    cal_r, cal_f = calibrate(rescore, docs), calibrate(exact, docs)
    codes = encode(rescore, docs, cal_r)
    truth = search(exact, cal_f, encode(exact, docs, cal_f), queries, k=10).indices
    recalls = []
    for k1 in (60, 200, 600):
        hits = search(rescore, cal_r, codes, queries, k=600, k1=k1)
        assert (hits.indices >= 0).sum(axis=1).max() == k1  # only k1 candidates survive
        recalls.append(np.mean([len(set(t) & set(h)) / 10 for t, h in zip(truth, hits.indices)]))
    assert recalls[0] > 3 * 60 / len(docs), recalls  # random candidates would give k1 / n
    assert recalls[0] < recalls[1] < recalls[2] == 1.0, recalls
    # each query's own source document is its float32 nearest neighbour and survives Hamming
    first = search(rescore, cal_r, codes, queries, k=10, k1=60)
    assert np.mean(first.indices[:, 0] == np.arange(len(queries))) >= 0.9


def test_optional_hamming_phase_for_two_bit_methods(generated) -> None:
    docs, queries = generated
    method = get_method("lloyd_max_gauss")
    calibration = calibrate(method, docs)
    codes = encode(method, docs, calibration)
    narrowed = search(method, calibration, codes, queries, k=100, first_phase="hamming", k1=30)
    assert (narrowed.indices >= 0).sum(axis=1).max() == 30
    int8 = get_method("int8_asym")  # no sign bits: stays exhaustive under "hamming"
    int8_cal = calibrate(int8, docs)
    int8_codes = encode(int8, docs, int8_cal)
    np.testing.assert_array_equal(search(int8, int8_cal, int8_codes, queries, first_phase="hamming").indices,
                                  search(int8, int8_cal, int8_codes, queries, first_phase="none").indices)
    rescore = get_method("binary_rescore")  # defined by its first phase: keeps it under "none"
    rescore_cal = calibrate(rescore, docs)
    kept = search(rescore, rescore_cal, encode(rescore, docs, rescore_cal), queries, first_phase="none", k1=30)
    assert (kept.indices >= 0).sum(axis=1).max() == 30
    with pytest.raises(VespaQuantError, match="auto, hamming or none"):
        search(int8, int8_cal, int8_codes, queries, first_phase="always")


@pytest.mark.parametrize("dim", [20, 64, 384])
def test_hamming_distances_match_bitwise_count(dim: int) -> None:
    from vespa_quant.quantize.bits import hamming_distances, pack_bits, unpack_bits

    rng = np.random.default_rng(dim)
    a, b = rng.standard_normal((5, dim)) > 0, rng.standard_normal((70, dim)) > 0
    expected = (a[:, None, :] != b[None, :, :]).sum(axis=2)
    np.testing.assert_array_equal(hamming_distances(pack_bits(a), pack_bits(b), chunk=16), expected)
    np.testing.assert_array_equal(unpack_bits(pack_bits(a), dim), a.astype(np.float32))
