"""Contract and design tests of the transform-coding methods (issue 11), on generated data."""

from __future__ import annotations

import numpy as np
import pytest
from expression_twin import evaluate as evaluate_tree

from vespa_quant.quantize import expr
from vespa_quant.quantize.base import (
    Calibration,
    bytes_per_vector,
    calibrate,
    doc_view,
    encode,
    query_inputs,
    query_view,
)
from vespa_quant.quantize.methods import transform_coding
from vespa_quant.quantize.methods.transform_coding import design, group_bytes, layout
from vespa_quant.quantize.registry import get_method
from vespa_quant.quantize.scoring import reference_score

NEW = [method.name for method in transform_coding.METHODS]


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module", params=[64, 97], ids=["dim64", "dim97"])
def vectors(request) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors with a decaying spectrum and an offset mean, at an even and an odd dim."""
    dim = request.param
    rng = np.random.default_rng(dim)
    docs = rng.standard_normal((400, dim)) * np.geomspace(1.0, 0.05, dim) + rng.normal(0, 0.2, dim)
    queries = docs[:15] + 0.3 * rng.standard_normal((15, dim)) * np.geomspace(1.0, 0.05, dim)
    return unit(docs), unit(queries)


def _scores(method, calibration, docs, queries) -> np.ndarray:
    return reference_score(query_view(method, queries, calibration),
                           doc_view(method, encode(method, docs, calibration), calibration))


@pytest.mark.parametrize("name", NEW)
def test_tree_equals_the_engine_score(name: str, vectors) -> None:
    docs, queries = vectors
    method = get_method(name)
    calibration = calibrate(method, docs)
    codes = encode(method, docs, calibration)
    tree = method.expression(docs.shape[1])
    assert set(expr.roles(tree)) == {spec.role for spec in method.fields(docs.shape[1])}
    np.testing.assert_allclose(evaluate_tree(tree, query_inputs(method, queries, calibration), codes),
                               _scores(method, calibration, docs, queries), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NEW)
def test_score_is_the_query_against_the_reconstruction(name: str, vectors) -> None:
    """``q . x_hat`` with the decoded document, offset included: the score is an inner product."""
    docs, queries = vectors
    method = get_method(name)
    calibration = calibrate(method, docs)
    decoded = method.reconstruct(encode(method, docs, calibration), calibration.constants)
    np.testing.assert_allclose(queries.astype(np.float64) @ decoded.T, _scores(method, calibration, docs, queries),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("dim", [64, 97, 256, 384, 768, 1024])
def test_bytes_stay_within_the_budget(name: str, dim: int) -> None:
    method = get_method(name)
    assert bytes_per_vector(method, dim) == group_bytes(method.depths(dim)) <= method.budget_bytes
    assert np.all(np.diff(method.depths(dim)) <= 0)  # more bits never follow fewer: bands are contiguous


def test_layouts_at_384_are_the_documented_ones() -> None:
    """Reverse water-filling on the reference spectrum spends every byte of both budgets."""
    assert dict(zip(*np.unique(layout(384, 48), return_counts=True))) == {0: 168, 1: 96, 2: 80, 3: 32, 4: 8}
    assert dict(zip(*np.unique(layout(384, 96), return_counts=True))) == {0: 80, 1: 56, 2: 88, 3: 112, 4: 40, 5: 8}
    assert [bytes_per_vector(get_method(n), 384) for n in NEW] == [48, 96]


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("dim", [64, 97, 256, 384, 768, 1024])
def test_profiles_stay_small_enough_to_inline(name: str, dim: int) -> None:
    """Vespa moves rank expressions over 8192 characters (after unpack_bits expands) to file
    distribution; 45 unpack_bits is the most any layout can take (Lloyd-Max up to 3 bits)."""
    tree = get_method(name).expression(dim)
    assert sum(isinstance(leaf, expr.Bits) for leaf in expr.leaves(tree)) <= 45


def test_design_tables_have_the_known_gaussian_distortions() -> None:
    """Lloyd-Max (Max 1960) for 1-3 bits, the optimal uniform quantizer for 4 bits and up."""
    expected = {1: 0.3634, 2: 0.1175, 3: 0.03455, 4: 0.01154, 5: 0.003495}
    for bits, distortion in expected.items():
        assert design(bits)[2] == pytest.approx(distortion, rel=1e-3)
        levels = design(bits)[1]
        np.testing.assert_allclose(levels, -levels[::-1], atol=1e-9)  # symmetric: the top plane is a sign bit


@pytest.mark.parametrize("name", NEW)
def test_codes_are_the_nearest_levels(name: str, vectors) -> None:
    docs, _ = vectors
    method = get_method(name)
    calibration = calibrate(method, docs)
    # Codes as documents store them: encoded into planes, decoded back (0 for components given no bits).
    codes = method.decoded(method.encode(calibration.rotate(docs), calibration.constants), calibration.constants)
    for bits, index in method.groups(docs.shape[1]):
        z = method.components(calibration.rotate(docs), calibration.constants, index)
        levels = design(bits)[1]
        chosen = np.abs(z - levels[codes[:, index]])
        best = np.abs(z[:, :, None] - levels[None, None, :]).min(axis=2)
        np.testing.assert_allclose(chosen, best, atol=1e-9)
    assert np.all(codes[:, method.depths(docs.shape[1]) == 0] == 0)


@pytest.mark.parametrize("name", NEW)
def test_calibration_round_trip_scores_alike(name: str, vectors, tmp_path) -> None:
    docs, queries = vectors
    method = get_method(name)
    calibration = calibrate(method, docs)
    loaded = Calibration.load(calibration.save(tmp_path / f"{name}.npz"))
    assert loaded.id == calibration.id
    np.testing.assert_array_equal(_scores(method, loaded, docs, queries), _scores(method, calibration, docs, queries))


def test_more_bytes_reconstruct_better(vectors) -> None:
    """The allocation is MSE-driven: the 96-byte instance never reconstructs worse than the 48-byte one."""
    docs, _ = vectors
    errors = []
    for other in NEW:
        method = get_method(other)
        calibration = calibrate(method, docs)
        decoded = method.reconstruct(encode(method, docs, calibration), calibration.constants)
        errors.append(float(np.mean((decoded - docs) ** 2)))
    assert errors[1] <= errors[0]
