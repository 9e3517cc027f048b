"""Distribution analysis on generated data whose answers are known in closed form."""

from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from vespa_quant.data.beir import BeirDataset
from vespa_quant.embed.embedded import EmbeddedDataset
from vespa_quant.errors import VespaQuantError
from vespa_quant.research import (
    analyze,
    analyze_vectors,
    correlation_structure,
    dimension_statistics,
    format_analysis,
    quantization_mse,
    write_analysis,
)
from vespa_quant.research.report import ANALYSIS_CSV, ANALYSIS_JSON, ANALYSIS_PNG, PER_DIMENSION

N, DIM = 20000, 16
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def gaussian() -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.standard_normal((N, DIM)) * np.linspace(1.0, 0.2, DIM)


@pytest.fixture(scope="module")
def laplace() -> np.ndarray:
    return np.random.default_rng(2).laplace(0.0, 0.5, (N, DIM))


def with_dead_dims(vectors: np.ndarray) -> np.ndarray:
    """all-MiniLM-L6-v2's constant dims: two at ~1e-33, one at ~1e-8 with a tiny wobble."""
    vectors = np.array(vectors, dtype=np.float64)
    vectors[:, 3] = 1e-33
    vectors[:, 7] = -2e-33
    vectors[:, 11] = 3e-9 + 1e-18 * np.random.default_rng(3).standard_normal(len(vectors))
    return vectors


def test_gaussian_data_has_no_excess_kurtosis_and_prefers_gaussian(gaussian):
    summary = dimension_statistics(gaussian).summary()
    assert abs(summary["excess_kurtosis_mean"]) < 0.1
    assert summary["abs_skewness_mean"] < 0.05
    assert summary["gaussian_preferred_fraction"] >= 0.9
    assert summary["dead_dims"] == 0 and summary["live_dims"] == DIM


def test_laplace_data_has_excess_kurtosis_three_and_prefers_laplace(laplace):
    summary = dimension_statistics(laplace).summary()
    assert summary["excess_kurtosis_mean"] == pytest.approx(3.0, abs=0.5)
    assert summary["gaussian_preferred_fraction"] <= 0.1


def test_median_offset_is_squared_median_norm_over_dim():
    rng = np.random.default_rng(4)
    offset = rng.normal(0.0, 0.3, DIM)
    vectors = offset + 0.05 * rng.standard_normal((N, DIM))
    statistics = dimension_statistics(vectors)
    np.testing.assert_allclose(statistics.median, offset, atol=2e-3)
    assert statistics.summary()["median_offset"] == pytest.approx(np.sum(offset ** 2) / DIM, rel=0.02)


def test_dead_dims_are_excluded_and_nothing_is_nan(gaussian):
    vectors = with_dead_dims(gaussian[:2000])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        statistics = dimension_statistics(vectors)
        summary = statistics.summary()
        structure = correlation_structure(vectors, ks=(4, 8))
        errors = quantization_mse(vectors)
    assert summary["dead_dims"] == 3 and summary["live_dims"] == DIM - 3
    assert not statistics.live[[3, 7, 11]].any()
    assert np.isnan(statistics.excess_kurtosis[[3, 7, 11]]).all()
    for values in (summary, structure, errors):
        assert all(math.isfinite(value) for value in values.values()), values
    assert errors["lloyd_max_gauss"] == pytest.approx(0.1175, abs=0.01)


def test_pca_finds_rotated_low_rank_structure():
    rng = np.random.default_rng(5)
    latent = rng.standard_normal((4000, 4)) * np.array([4.0, 3.0, 2.5, 2.0])
    low_rank = np.hstack([latent, np.zeros((4000, 60))]) + 0.1 * rng.standard_normal((4000, 64))
    rotation, _ = np.linalg.qr(rng.standard_normal((64, 64)))
    structure = correlation_structure(low_rank @ rotation.T, ks=(8, 32))
    assert structure["pca_variance_share_at_8"] > 0.95
    assert structure["dims_variance_share_at_8"] < 0.3
    assert structure["pca_variance_share_at_8"] - structure["dims_variance_share_at_8"] > 0.6
    assert structure["mean_abs_correlation"] > 0.2


def test_independent_axis_aligned_dims_gain_nothing_from_pca():
    rng = np.random.default_rng(6)
    vectors = rng.standard_normal((4000, 64)) * np.linspace(2.0, 0.2, 64)
    structure = correlation_structure(vectors, ks=(8, 32, 64, 128))
    for k in (8, 32):
        assert structure[f"pca_variance_share_at_{k}"] == pytest.approx(
            structure[f"dims_variance_share_at_{k}"], abs=0.02)
    assert structure["pca_variance_share_at_64"] == pytest.approx(1.0)
    assert "pca_variance_share_at_128" not in structure
    assert structure["mean_abs_correlation"] < 0.03


def test_gaussian_reconstruction_error_matches_lloyd_max_constants(gaussian):
    errors = quantization_mse(gaussian)
    assert errors["lloyd_max_gauss"] == pytest.approx(0.1175, abs=0.01)
    assert errors["lloyd_max_gauss"] > errors["gauss_rd_2bit"] == 0.0625
    assert errors["lloyd_max_empir"] <= errors["lloyd_max_gauss"] + 1e-3
    assert errors["quaternary_asym"] == pytest.approx(0.1395, abs=0.01)  # quartiles, centroid levels
    assert errors["binary_median_asym"] == pytest.approx(1 - 2 / math.pi, abs=0.01)
    assert errors["binary_median_asym"] > errors["gauss_rd_1bit"] == 0.25
    assert errors["shannon_lb_2bit"] == pytest.approx(0.0625, rel=0.03)


def test_median_centring_lowers_error_of_offset_dims():
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((5000, 8)) + 1.5
    errors = quantization_mse(vectors, ["binary_asym", "binary_median_asym"])
    assert errors["binary_median_asym"] < 0.5 * errors["binary_asym"]


def test_quantization_mse_rejects_methods_without_reconstruction(gaussian):
    with pytest.raises(VespaQuantError, match="int8_asym has no reconstruction"):
        quantization_mse(gaussian[:100], ["int8_asym"])


def test_too_few_vectors_is_an_error_naming_the_need():
    with pytest.raises(VespaQuantError, match="at least 4"):
        dimension_statistics(np.zeros((2, 8)))


def generated_embedded(docs: np.ndarray) -> EmbeddedDataset:
    dataset = BeirDataset("generated", Path("generated"), [f"d{i}" for i in range(len(docs))],
                          [""] * len(docs), [], [], {}, "0" * 16)
    return EmbeddedDataset(dataset, "toy-model", docs.astype(np.float32), np.zeros((0, docs.shape[1]), np.float32))


def test_analyze_writes_json_csv_png_and_formats_a_table(generated, tmp_path):
    docs, _ = generated
    rows = analyze(generated_embedded(docs), [64, 32], ks=(8, 32))
    assert [row["dim"] for row in rows] == [64, 32]
    assert rows[0]["dataset"] == "generated" and rows[0]["model"] == "toy-model"
    assert rows[0]["dead_dims"] == 2 and rows[1]["dead_dims"] == 2
    assert len(rows[1][PER_DIMENSION]["excess_kurtosis"]) == 32

    paths = write_analysis(rows, tmp_path / "out")
    assert [path.name for path in paths] == [ANALYSIS_JSON, ANALYSIS_CSV, ANALYSIS_PNG, "table.txt"]
    assert all(path.stat().st_size > 0 for path in paths)
    assert paths[2].read_bytes()[:8] == PNG_MAGIC
    saved = json.loads(paths[0].read_text())
    assert saved[0]["mse_lloyd_max_gauss"] == pytest.approx(rows[0]["mse_lloyd_max_gauss"])
    assert saved[0][PER_DIMENSION]["excess_kurtosis"][10] is None  # dead dim: NaN -> null
    records = list(csv.DictReader(paths[1].open()))
    assert len(records) == 2 and PER_DIMENSION not in records[0]
    assert float(records[1]["median_offset"]) == pytest.approx(rows[1]["median_offset"])

    table = format_analysis(rows)
    assert "d=64" in table and "median_offset" in table and "nan" not in table.lower()


def test_analyze_needs_dims(generated):
    with pytest.raises(VespaQuantError, match="no dims"):
        analyze(generated_embedded(generated[0]), [])


def test_rows_read_back_from_json_plot_again(generated, tmp_path):
    row = analyze_vectors(generated[0], dataset="generated", model="toy-model", ks=(8,))
    json_path = write_analysis([row], tmp_path / "first")[0]
    again = write_analysis(json.loads(json_path.read_text()), tmp_path / "second")
    assert again[2].read_bytes()[:8] == PNG_MAGIC
