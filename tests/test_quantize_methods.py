"""Every method: stored shapes and bytes, exact numpy reference scores, finite calibration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vespa_quant.errors import CalibrationError
from vespa_quant.quantize.base import Calibration, calibrate, encode, query_inputs
from vespa_quant.quantize.four_level import GAUSS_BOUNDARIES, GAUSS_LEVELS
from vespa_quant.quantize.registry import METHODS, get_method

EXPECTED_BYTES = {  # at dim 64
    "float32": 256, "bfloat16": 128, "int8_asym": 64, "binary_asym": 8, "binary_median_asym": 8,
    "binary_hamming": 8, "binary_rescore": 8, "quaternary_asym": 16, "lloyd_max_gauss": 16,
    "lloyd_max_empir": 16,
}


def test_registry_has_the_ten_methods() -> None:
    assert sorted(METHODS) == sorted(EXPECTED_BYTES)


@pytest.mark.parametrize("name", sorted(EXPECTED_BYTES))
def test_codes_have_the_declared_shapes_and_bytes(name: str, generated) -> None:
    docs, _ = generated
    method = get_method(name)
    codes = encode(method, docs, calibrate(method, docs))
    fields = {f.role: f for f in method.fields(64)}
    assert set(codes) == set(fields)
    dtype = {"int8": np.int8, "float": np.float32, "bfloat16": np.float32}
    for role, array in codes.items():
        assert array.shape == (len(docs), fields[role].cells)
        assert array.dtype == dtype[fields[role].cell_type]
    assert method.bytes_per_vector(64) == EXPECTED_BYTES[name]
    assert method.bits_per_dim(64) == EXPECTED_BYTES[name] * 8 / 64


def test_binary_rescore_keeps_its_float_copy_on_disk() -> None:
    method = get_method("binary_rescore")
    assert method.disk_bytes_per_vector(384) == 384 * 4
    assert method.bytes_per_vector(384) == 48


def _sign(mask: np.ndarray) -> np.ndarray:
    return np.where(mask, 1.0, -1.0)


def _bucket(values: np.ndarray, boundaries: np.ndarray) -> np.ndarray:
    """Reference bucketing, one dimension at a time: equal to a boundary goes up."""
    return np.stack(
        [np.searchsorted(boundaries[j], values[:, j], side="right") for j in range(values.shape[1])], axis=1
    )


def reference_scores(name: str, docs: np.ndarray, queries: np.ndarray, constants) -> np.ndarray:
    """The brief's definitions written plainly: q . d_hat (up to a per-query constant for int8)."""
    q, d = queries.astype(np.float64), docs.astype(np.float64)
    if name in ("float32", "binary_rescore"):
        return q @ d.T
    if name == "bfloat16":
        return q @ torch.from_numpy(docs).to(torch.bfloat16).to(torch.float64).numpy().T
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
        m, s = constants["median"], constants["sigma"]
        codes = _bucket((d - m) / s, np.tile(GAUSS_BOUNDARIES, (d.shape[1], 1)))
        return q @ (m + s * GAUSS_LEVELS[codes]).T
    codes = _bucket(d, constants["boundaries"])
    reconstruction = np.take_along_axis(constants["levels"].T, codes, axis=0)
    return q @ reconstruction.T


@pytest.mark.parametrize("name", sorted(EXPECTED_BYTES))
def test_score_equals_the_reference_definition(name: str, generated) -> None:
    docs, queries = generated
    method = get_method(name)
    calibration = calibrate(method, docs)
    scores = method.score(query_inputs(method, queries, calibration), encode(method, docs, calibration))
    expected = reference_scores(name, docs, queries, calibration.arrays)
    if name == "int8_asym":  # affine reconstructions differ by a per-query constant only
        scores, expected = scores - scores[:, :1], expected - expected[:, :1]
    np.testing.assert_allclose(scores, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", sorted(EXPECTED_BYTES))
def test_degenerate_dimensions_stay_finite(name: str, generated) -> None:
    docs, queries = generated
    constant = docs.copy()
    constant[:, 5] = 0.0  # exactly zero variance
    method = get_method(name)
    calibration = calibrate(method, constant)
    scores = method.score(query_inputs(method, queries, calibration), encode(method, constant, calibration))
    assert np.all(np.isfinite(scores))


def test_four_level_codes_fill_quartiles(generated) -> None:
    docs, _ = generated
    method = get_method("quaternary_asym")
    calibration = calibrate(method, docs)
    codes = method.buckets(docs, calibration.arrays)
    occupancy = np.stack([(codes[:, 0] == k).mean() for k in range(4)])
    np.testing.assert_allclose(occupancy, 0.25, atol=0.01)


def test_lloyd_max_empir_lowers_mse_versus_gauss(generated) -> None:
    docs, _ = generated
    errors = {}
    for name in ("lloyd_max_gauss", "lloyd_max_empir"):
        method = get_method(name)
        constants = calibrate(method, docs).arrays
        codes = method.buckets(docs, constants)
        table = method.table(constants)
        reconstruction = np.take_along_axis(table.T, codes.astype(np.int64), axis=0)
        errors[name] = np.mean((docs - reconstruction) ** 2)
    assert errors["lloyd_max_empir"] <= errors["lloyd_max_gauss"]


def test_calibration_round_trip_and_tamper_detection(tmp_path, generated) -> None:
    docs, _ = generated
    calibration = calibrate(get_method("lloyd_max_gauss"), docs, rotation="qr", seed=3)
    path = calibration.save(tmp_path / "cal.npz")
    loaded = Calibration.load(path)
    assert loaded.id == calibration.id and loaded.rotation == "qr" and loaded.seed == 3
    other = calibrate(get_method("lloyd_max_gauss"), docs[:100])
    assert other.id != calibration.id
    arrays = dict(np.load(path))
    arrays["sigma"] = arrays["sigma"] * 2
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(CalibrationError, match="does not match"):
        Calibration.load(tmp_path / "bad.npz")


def test_wrong_dimension_is_named(generated) -> None:
    docs, queries = generated
    method = get_method("binary_median_asym")
    calibration = calibrate(method, docs)
    with pytest.raises(CalibrationError, match=r"\(n, 64\)"):
        query_inputs(method, queries[:, :32], calibration)
    with pytest.raises(CalibrationError, match="is for binary_median_asym"):
        encode(get_method("lloyd_max_gauss"), docs, calibration)
