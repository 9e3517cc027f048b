"""Contract tests over every registered method (STYLE 16), and the brief's methods against plain definitions."""

from __future__ import annotations

import numpy as np
import pytest
from expression_twin import evaluate as evaluate_tree

from vespa_quant.errors import CalibrationError, VespaQuantError
from vespa_quant.quantize import expr
from vespa_quant.quantize.base import (
    Calibration,
    DriftHooks,
    Reconstructs,
    SignBits,
    bytes_per_vector,
    calibrate,
    disk_bytes_per_vector,
    doc_view,
    encode,
    query_inputs,
    query_view,
    sign_query,
)
from vespa_quant.quantize.methods.fitting import BRIEF_GAUSS_4
from vespa_quant.quantize.registry import METHODS, discover, get_method, parse_methods
from vespa_quant.quantize.scoring import reference_score

BRIEF_TEN = ("float32", "bfloat16", "int8_asym", "binary_asym", "binary_median_asym", "binary_hamming",
             "binary_rescore", "quaternary_asym", "lloyd_max_gauss", "lloyd_max_empir")
EXPECTED_BYTES = {"float32": 1536, "bfloat16": 768, "int8_asym": 384, "binary_asym": 48,
                  "binary_median_asym": 48, "binary_hamming": 48, "binary_rescore": 48,
                  "quaternary_asym": 96, "lloyd_max_gauss": 96, "lloyd_max_empir": 96}


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module", params=[64, 97], ids=["dim64", "dim97"])
def vectors(request) -> tuple[np.ndarray, np.ndarray]:
    """Skewed, offset dims and two dead dims (~1e-33 like all-MiniLM-L6-v2's), at an even and an odd dim."""
    dim = request.param
    rng = np.random.default_rng(dim)
    scale = np.linspace(2.0, 0.3, dim)
    docs = rng.standard_normal((500, dim)) * scale + rng.normal(0, 0.3, dim)
    docs[:, :8] = np.abs(docs[:, :8]) ** 1.5
    queries = docs[:20] + 0.5 * rng.standard_normal((20, dim)) * scale
    docs, queries = unit(docs), unit(queries)
    docs[:, [10, 20]] = 1e-33
    queries[:, [10, 20]] = 1e-33
    return docs, queries


def test_registry_discovers_the_brief_methods_first() -> None:
    assert tuple(METHODS)[:10] == BRIEF_TEN
    assert discover().keys() == METHODS.keys()


def test_method_lists_are_checked() -> None:
    with pytest.raises(VespaQuantError, match="more than once"):
        parse_methods("float32,float32")
    with pytest.raises(VespaQuantError, match="names no method"):
        parse_methods(",")
    with pytest.raises(VespaQuantError, match="unknown method 'nope'"):
        parse_methods("nope")


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("rotation", ["none", "pca"])
def test_contract(name: str, rotation: str, vectors) -> None:
    """Codes match the declared fields; the score tree, the engine's score shape and bytes agree."""
    docs, queries = vectors
    dim = docs.shape[1]
    method = get_method(name)
    calibration = calibrate(method, docs, rotation=rotation, seed=1)
    codes = encode(method, docs, calibration)
    specs = {spec.role: spec for spec in method.fields(dim)}
    assert set(codes) == set(specs)
    dtypes = {"int8": np.int8, "float": np.float32, "bfloat16": np.uint16}
    for role, spec in specs.items():
        assert codes[role].shape == (len(docs), spec.cells) and codes[role].dtype == dtypes[spec.cell_type]
    assert bytes_per_vector(method, dim) == sum(s.bytes for s in specs.values() if not s.paged)
    inputs = query_inputs(method, queries, calibration)
    declared = {spec.name: spec for spec in method.inputs(dim)}
    assert set(inputs) == set(declared)
    for input_name, spec in declared.items():
        assert inputs[input_name].shape == ((len(queries),) if spec.cells is None else (len(queries), spec.cells))
    tree = method.expression(dim)
    assert set(expr.input_names(tree)) <= set(declared) and set(expr.roles(tree)) <= set(specs)
    nearest = {method.sign_role: sign_query(method, queries, calibration)} if isinstance(method, SignBits) else {}
    reference = reference_score(query_view(method, queries, calibration), doc_view(method, codes, calibration))
    np.testing.assert_allclose(evaluate_tree(tree, inputs, codes, nearest), reference, rtol=1e-5, atol=1e-5)
    assert np.all(np.isfinite(reference))


@pytest.mark.parametrize("name", [n for n, m in METHODS.items() if isinstance(m, SignBits)])
def test_sign_bits_are_the_stored_convention(name: str, vectors) -> None:
    """Query bits of a document's own vector equal that document's stored sign bits."""
    docs, _ = vectors
    method = get_method(name)
    calibration = calibrate(method, docs)
    stored = encode(method, docs, calibration)[method.sign_role]
    np.testing.assert_array_equal(sign_query(method, docs, calibration), stored)


@pytest.mark.parametrize("name", [n for n, m in METHODS.items() if m.needs_calibration])
def test_calibration_round_trip_and_tamper_detection(name: str, tmp_path, vectors) -> None:
    docs, _ = vectors
    method = get_method(name)
    calibration = calibrate(method, docs, rotation="qr", seed=3)
    loaded = Calibration.load(calibration.save(tmp_path / "cal.npz"))
    assert (loaded.id, loaded.rotation, loaded.seed) == (calibration.id, "qr", 3)
    np.testing.assert_array_equal(loaded.arrays["rotation"], calibration.arrays["rotation"])
    assert calibrate(method, docs[:100]).id != calibration.id
    arrays = dict(np.load(tmp_path / "cal.npz"))
    key = next(k for k in arrays if k not in ("__meta__", "rotation"))
    arrays[key] = arrays[key] + 1.0
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(CalibrationError, match="does not match"):
        Calibration.load(tmp_path / "bad.npz")


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated", b"not a zip at all"])
def test_unreadable_calibration_is_one_line(content: bytes, tmp_path) -> None:
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    with pytest.raises(CalibrationError, match="bad.npz"):
        Calibration.load(path)


def test_foreign_npz_is_not_a_calibration(tmp_path) -> None:
    np.savez(tmp_path / "foreign.npz", weights=np.ones(3))
    with pytest.raises(CalibrationError, match="no __meta__"):
        Calibration.load(tmp_path / "foreign.npz")


def test_bytes_of_the_brief_methods() -> None:
    assert {name: bytes_per_vector(get_method(name), 384) for name in EXPECTED_BYTES} == EXPECTED_BYTES
    assert disk_bytes_per_vector(get_method("binary_rescore"), 384) == 384 * 4


def _sign(mask: np.ndarray) -> np.ndarray:
    return np.where(mask, 1.0, -1.0)


def _bucket(values: np.ndarray, boundaries: np.ndarray) -> np.ndarray:
    """Reference bucketing, one dimension at a time: equal to a boundary goes up."""
    return np.stack([np.searchsorted(boundaries[j], values[:, j], side="right") for j in range(values.shape[1])], axis=1)


def _bfloat16(x: np.ndarray) -> np.ndarray:
    """float32 rounded to bfloat16 (nearest, ties to even), written plainly on the bit pattern;
    :func:`test_plain_bfloat16_rounding_is_torchs` checks it against torch."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return rounded.astype(np.uint32).view(np.float32)


@pytest.mark.slow  # imports torch: ~4 s
def test_plain_bfloat16_rounding_is_torchs() -> None:
    import torch

    x = np.random.default_rng(0).standard_normal(100_000).astype(np.float32)
    x[:3] = [1.00390625, 1.01171875, -1.00390625]  # exact ties between two bfloat16 values
    expected = torch.from_numpy(x).to(torch.bfloat16).to(torch.float32).numpy()
    np.testing.assert_array_equal(_bfloat16(x), expected)


def brief_scores(name: str, docs: np.ndarray, queries: np.ndarray, constants) -> np.ndarray:
    """The brief's definitions written plainly: q . d_hat (up to a per-query constant)."""
    q, d = queries.astype(np.float64), docs.astype(np.float64)
    if name in ("float32", "binary_rescore"):
        return q @ d.T
    if name == "bfloat16":
        return q @ _bfloat16(docs).astype(np.float64).T
    if name == "int8_asym":
        levels = np.clip(np.round((d - constants["low"]) / constants["step"]), 0, 255)
        return q @ (constants["low"] + levels * constants["step"]).T
    if name == "binary_asym":
        return q @ _sign(d > 0).T
    if name == "binary_median_asym":
        m = constants["median"]
        return (q - m) @ _sign(d > m).T
    if name == "binary_hamming":
        differing = (q > 0)[:, None, :] != (d > 0)[None, :, :]
        return 1.0 / (1.0 + differing.sum(axis=2))
    if name == "lloyd_max_gauss":
        boundaries, levels = BRIEF_GAUSS_4
        m, s = constants["median"], constants["sigma"]
        codes = _bucket((d - m) / s, np.tile(boundaries, (d.shape[1], 1)))
        return q @ (m + s * levels[codes]).T
    codes = _bucket(d, constants["boundaries"])
    return q @ np.take_along_axis(constants["levels"].T, codes, axis=0).T


@pytest.mark.parametrize("name", BRIEF_TEN)
def test_brief_methods_equal_their_definitions(name: str, vectors) -> None:
    docs, queries = vectors
    method = get_method(name)
    calibration = calibrate(method, docs)
    scores = reference_score(query_view(method, queries, calibration),
                             doc_view(method, encode(method, docs, calibration), calibration))
    expected = brief_scores(name, docs, queries, calibration.arrays)
    # Affine reconstructions (int8) differ by a per-query constant only.
    scores, expected = scores - scores[:, :1], expected - expected[:, :1]
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)


def test_quartile_codes_fill_quartiles(vectors) -> None:
    docs, _ = vectors
    method = get_method("quaternary_asym")
    assert isinstance(method, DriftHooks)
    codes = method.buckets(docs, calibrate(method, docs).constants)
    np.testing.assert_allclose([(codes[:, 0] == k).mean() for k in range(4)], 0.25, atol=0.01)


def test_more_levels_and_fitted_levels_lower_mse(vectors) -> None:
    docs, _ = vectors
    live = np.ones(docs.shape[1], dtype=bool)
    live[[10, 20]] = False
    errors = {}
    for name in ("lloyd_max_gauss", "lloyd_max_empir", "lloyd_max_gauss_3bit", "lloyd_max_gauss_4bit"):
        method = get_method(name)
        assert isinstance(method, Reconstructs)
        calibration = calibrate(method, docs)
        reconstruction = method.reconstruct(encode(method, docs, calibration), calibration.constants)
        errors[name] = float(np.mean((docs - reconstruction)[:, live] ** 2))
    assert errors["lloyd_max_empir"] <= errors["lloyd_max_gauss"]
    assert errors["lloyd_max_gauss_4bit"] < errors["lloyd_max_gauss_3bit"] < errors["lloyd_max_gauss"]


def test_wrong_dimension_is_named(vectors) -> None:
    docs, queries = vectors
    method = get_method("binary_median_asym")
    calibration = calibrate(method, docs)
    with pytest.raises(CalibrationError, match=rf"\(n, {docs.shape[1]}\)"):
        query_inputs(method, queries[:, :32], calibration)
    with pytest.raises(CalibrationError, match="is for binary_median_asym"):
        encode(get_method("lloyd_max_gauss"), docs, calibration)
