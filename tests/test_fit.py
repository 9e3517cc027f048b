"""Calibration primitives against the straightforward numpy computations they replace."""

from __future__ import annotations

import numpy as np
import pytest

from vespa_quant.errors import CalibrationError
from vespa_quant.quantize import fit

RNG = np.random.default_rng(5)
GAUSS_LEVELS = np.array([-1.5104, -0.4528, 0.4528, 1.5104])


@pytest.fixture(scope="module", params=[(2001, 97), (1000, 8)], ids=["odd", "even"])
def corpus(request: pytest.FixtureRequest) -> np.ndarray:
    n, d = request.param
    values = RNG.standard_normal((n, d)) * np.linspace(0.1, 2, d) + RNG.normal(0, 1, d)
    values[:, 0] = np.abs(values[:, 0]) ** 2  # skewed
    values[:, 1] = np.round(values[:, 1])  # many ties
    values[:, 2] = 1e-33  # dead, like MiniLM's
    return values.astype(np.float32)


def test_median_and_quantiles_equal_numpy(corpus: np.ndarray) -> None:
    wide = corpus.astype(np.float64)
    np.testing.assert_allclose(fit.median(corpus), np.median(wide, axis=0), rtol=1e-6)
    probabilities = [0.0, 0.1, 0.25, 0.5, 0.75, 0.999, 1.0]
    got = fit.quantiles(corpus, probabilities)
    assert got.dtype == np.float32 and got.shape == (7, corpus.shape[1])
    np.testing.assert_allclose(got, np.quantile(wide, probabilities, axis=0), rtol=1e-6)


@pytest.mark.parametrize("accumulator", [np.float32, np.float64])
def test_std_equals_numpy(corpus: np.ndarray, accumulator: type) -> None:
    got = fit.std(corpus, accumulator=accumulator)
    assert got.dtype == accumulator
    np.testing.assert_allclose(got, corpus.astype(np.float64).std(axis=0), rtol=1e-6, atol=1e-38)


def lloyd_reference(values: np.ndarray, levels: np.ndarray, iterations: int) -> np.ndarray:
    """The (n, d, L) compare-every-value Lloyd iteration of ``LloydMaxEmpir``."""
    values = values.astype(np.float64)
    for _ in range(iterations):
        boundaries = 0.5 * (levels[:, :-1] + levels[:, 1:])
        codes = (values[:, :, None] >= boundaries[None]).sum(axis=2)
        for c in range(levels.shape[1]):
            inside = codes == c
            counts = inside.sum(axis=0)
            sums = np.where(inside, values, 0).sum(axis=0)
            levels[:, c] = np.where(counts > 0, sums / np.maximum(counts, 1), levels[:, c])
        levels = np.sort(levels, axis=1)
    return levels


@pytest.mark.parametrize("iterations", [0, 1, 20])
def test_lloyd_max_equals_compare_everything_reference(corpus: np.ndarray, iterations: int) -> None:
    wide = corpus.astype(np.float64)
    start = np.median(wide, axis=0)[:, None] + wide.std(axis=0)[:, None] * GAUSS_LEVELS[None, :]
    levels, boundaries = fit.lloyd_max(corpus, start, iterations)
    want = lloyd_reference(corpus, start.copy(), iterations)
    np.testing.assert_allclose(levels, want, rtol=1e-6, atol=1e-30)
    np.testing.assert_allclose(boundaries, 0.5 * (want[:, :-1] + want[:, 1:]), rtol=1e-6, atol=1e-30)


def test_calibration_sample_is_seeded_and_bounded() -> None:
    corpus = RNG.standard_normal((500, 4)).astype(np.float32)
    assert fit.calibration_sample(corpus, 1000) is corpus
    sample = fit.calibration_sample(corpus, 100, seed=3)
    assert sample.shape == (100, 4)
    np.testing.assert_array_equal(sample, fit.calibration_sample(corpus, 100, seed=3))
    assert not np.array_equal(sample, fit.calibration_sample(corpus, 100, seed=4))
    rows = [int(np.flatnonzero((corpus == row).all(axis=1))[0]) for row in sample]
    assert rows == sorted(set(rows))


def test_bad_inputs_are_named() -> None:
    with pytest.raises(CalibrationError, match="non-empty"):
        fit.median(np.zeros((0, 3), np.float32))
    with pytest.raises(CalibrationError, match=r"\[0, 1\]"):
        fit.quantiles(np.zeros((3, 3), np.float32), [1.5])
    with pytest.raises(CalibrationError, match="initial levels"):
        fit.lloyd_max(np.zeros((3, 3), np.float32), np.zeros((2, 4)))
