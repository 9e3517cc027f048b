"""What corpus embeddings look like, one dimension at a time and jointly, and how much of them each
2-bit and 1-bit quantizer keeps.

Pure functions of a ``(n, d)`` array of corpus vectors; no new quantizer and no I/O. They serve
the research brief's analysis experiments (Part V, 1, 3, 4, 8):

* :func:`dimension_statistics` - shape of every marginal (Q2: is Lloyd-Max's Gaussian assumption
  right?) and the median offset ``||m||^2 / d`` (Q3, Q8: does it predict when median centring helps?);
* :func:`correlation_structure` - how far the covariance is from diagonal (Q5: is there
  redundancy a product quantizer could exploit?);
* :func:`quantization_mse` - reconstruction error of the methods that define a reconstruction,
  next to rate-distortion references (Q7, Part V 8).

Dimensions that are constant in the data (all-MiniLM-L6-v2 has three: two at ~1e-33 and one at
~1e-8) have no shape to measure. They are *dead*: masked out by the rule drift uses
(:func:`vespa_quant.drift.metrics.live_dimensions`: spread below 1e-6 of the median dimension's),
so every summary is over live dimensions and never NaN.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, fields

import numpy as np
from scipy import stats

from vespa_quant.drift.metrics import live_dimensions
from vespa_quant.errors import VespaQuantError
from vespa_quant.quantize.base import DriftHooks, Quantizer, calibrate
from vespa_quant.quantize.methods.scalar_table import ScalarTable
from vespa_quant.quantize.registry import get_method

DEFAULT_KS: tuple[int, ...] = (8, 16, 32, 64, 128, 256)
"""Numbers of leading components/dimensions at which :func:`correlation_structure` compares
variance shares; values above the vectors' dim are skipped."""

RECONSTRUCTION_METHODS: tuple[str, ...] = (
    "lloyd_max_gauss", "lloyd_max_empir", "quaternary_asym", "binary_median_asym", "binary_asym",
)
"""Quantizers :func:`quantization_mse` can reconstruct: the 2-bit table methods and the two
asymmetric sign-bit methods (``binary_hamming``/``binary_rescore`` store the same bits as
``binary_asym`` but do not score through a reconstruction)."""

SIGN_BIT_METHODS: tuple[str, ...] = ("binary_median_asym", "binary_asym")

RATE_BITS: tuple[int, ...] = (1, 2)
"""Rates (bits/dim) of the methods compared, at which the rate-distortion references are given."""

MIN_VECTORS = 4
"""Unbiased sample skewness and kurtosis need at least four values per dimension."""

ROW_BLOCK = 65536
"""Rows reconstructed at a time, to bound memory on large corpora (STYLE.md 5)."""


def _as_matrix(vectors: np.ndarray, what: str = "vectors") -> np.ndarray:
    values = np.asarray(vectors, dtype=np.float64)
    if values.ndim != 2:
        raise VespaQuantError(f"{what} have shape {values.shape}, expected (n, dim)")
    if len(values) < MIN_VECTORS:
        raise VespaQuantError(f"{what}: {len(values)} vectors, need at least {MIN_VECTORS}")
    if not np.all(np.isfinite(values)):
        raise VespaQuantError(f"{what} contain NaN or infinite values")
    return values


def _live_mask(values: np.ndarray, what: str = "vectors") -> np.ndarray:
    live = live_dimensions(values.std(axis=0))
    if not live.any():
        raise VespaQuantError(f"{what}: every one of {values.shape[1]} dims is constant")
    return live


@dataclass(frozen=True)
class DimensionStats:
    """Per-dimension (length ``d``) statistics of ``n_vectors`` corpus vectors.

    ``std`` is the population deviation (ddof 0), the same as :func:`robust_scale` calibrates
    with and the Gaussian maximum-likelihood scale. Shape statistics (``skewness``,
    ``excess_kurtosis``, the two log-likelihoods) are NaN on dead dims; :meth:`summary` reads
    only ``live`` dims.
    """

    n_vectors: int
    mean: np.ndarray
    median: np.ndarray
    std: np.ndarray
    skewness: np.ndarray
    """Sample skewness, bias-corrected (``scipy.stats.skew(bias=False)``)."""
    excess_kurtosis: np.ndarray
    """Fisher kurtosis, bias-corrected: 0 for a Gaussian, 3 for a Laplace."""
    gaussian_loglik: np.ndarray
    """Mean log-likelihood per value of the maximum-likelihood Gaussian, ``-log(2 pi e s^2) / 2``."""
    laplace_loglik: np.ndarray
    """Mean log-likelihood per value of the maximum-likelihood Laplace, ``-log(2 e b)`` with
    location the median and ``b`` the mean absolute deviation from it."""
    live: np.ndarray
    """True for dims with non-negligible spread."""

    def __post_init__(self) -> None:
        for spec in fields(self):
            value = getattr(self, spec.name)
            if isinstance(value, np.ndarray):
                value.setflags(write=False)

    @property
    def dim(self) -> int:
        return len(self.mean)

    def summary(self) -> dict[str, float | int]:
        """Scalar statistics over live dims (research brief Q2, Q3, Q8).

        * ``excess_kurtosis_mean``/``_median`` - Q8's "mean kurtosis" minus 3; > 0 is heavier
          tails than the Gaussian Lloyd-Max constants assume.
        * ``abs_skewness_mean`` - asymmetry, which moves a dim's median off its mean.
        * ``median_offset`` - ``||m||^2 / d`` with ``m`` the per-dim median and ``d`` all dims
          (Q3's predictor of the benefit of median centring).
        * ``median_offset_relative`` - ``||m||^2`` over the total variance: the same offset in
          units of the spread binarisation has to resolve, comparable across models and dims.
        * ``gaussian_preferred_fraction`` - share of live dims whose maximum-likelihood Gaussian
          has a higher likelihood than the maximum-likelihood Laplace (Q2). Both have two
          parameters, so comparing likelihoods is comparing AIC.
        """
        live = self.live
        kurtosis = self.excess_kurtosis[live]
        variance = self.std[live] ** 2
        median_norm2 = float(np.sum(self.median ** 2))
        return {
            "n_vectors": self.n_vectors,
            "live_dims": int(live.sum()),
            "dead_dims": int((~live).sum()),
            "excess_kurtosis_mean": float(np.mean(kurtosis)),
            "excess_kurtosis_median": float(np.median(kurtosis)),
            "abs_skewness_mean": float(np.mean(np.abs(self.skewness[live]))),
            "median_offset": median_norm2 / self.dim,
            "median_offset_relative": median_norm2 / float(np.sum(variance)),
            "gaussian_preferred_fraction": float(
                np.mean(self.gaussian_loglik[live] > self.laplace_loglik[live])
            ),
        }


def dimension_statistics(vectors: np.ndarray) -> DimensionStats:
    """Moments, median and Gaussian-vs-Laplace fit of every dimension of ``vectors`` (n, d).

    The fits are closed-form maximum likelihood (Gaussian: mean and population deviation;
    Laplace: median and mean absolute deviation), so no optimiser runs per dimension.
    """
    values = _as_matrix(vectors)
    n, dim = values.shape
    live = _live_mask(values)
    mean = values.mean(axis=0)
    median = np.median(values, axis=0)
    std = values.std(axis=0)

    def on_live(per_live: np.ndarray) -> np.ndarray:
        full = np.full(dim, np.nan)
        full[live] = per_live
        return full

    active = values[:, live]
    skewness = on_live(stats.skew(active, axis=0, bias=False))
    kurtosis = on_live(stats.kurtosis(active, axis=0, fisher=True, bias=False))
    gaussian = on_live(-0.5 * np.log(2.0 * math.pi * math.e * std[live] ** 2))
    laplace_scale = np.mean(np.abs(active - median[live]), axis=0)
    laplace = on_live(-np.log(2.0 * math.e * laplace_scale))
    return DimensionStats(n, mean, median, std, skewness, kurtosis, gaussian, laplace, live)


def _covariance(values: np.ndarray) -> np.ndarray:
    centred = values - values.mean(axis=0)
    return centred.T @ centred / (len(values) - 1)


def variance_share_curves(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pca, dims): share of the total variance in the first ``k`` principal components and in the
    first ``k`` original (Matryoshka-ordered) dims, for ``k = 1..d`` (entry ``k - 1``).

    PCA's curve is the most any ``k`` orthogonal directions can hold (Ky Fan), so a gap between
    the two is variance that a rotation or a product quantizer could pack into fewer codes
    (research brief Q5's suggested experiment).
    """
    values = _as_matrix(vectors)
    covariance = _covariance(values)
    eigenvalues = np.clip(np.linalg.eigvalsh(covariance)[::-1], 0.0, None)
    total = float(np.trace(covariance))
    if total <= 0.0:
        raise VespaQuantError(f"vectors: every one of {values.shape[1]} dims is constant")
    pca = np.minimum(np.cumsum(eigenvalues) / total, 1.0)
    dims = np.cumsum(np.diag(covariance)) / total
    return pca, dims


def correlation_structure(vectors: np.ndarray, ks: Iterable[int] = DEFAULT_KS) -> dict[str, float]:
    """How far the covariance of ``vectors`` (n, d) is from diagonal (research brief Q5, Part V 3).

    * ``mean_abs_correlation``/``max_abs_correlation`` - over the off-diagonal Pearson
      correlations between live dims; near 0 means scalar quantization loses little to
      correlations.
    * ``pca_variance_share_at_{k}``/``dims_variance_share_at_{k}`` - for each ``k`` in ``ks``
      not above ``d``, the variance share of the first ``k`` principal components and of the
      first ``k`` original dims (:func:`variance_share_curves`).
    """
    values = _as_matrix(vectors)
    live = _live_mask(values)
    if live.sum() < 2:
        raise VespaQuantError("vectors: correlations need at least 2 non-constant dims")
    covariance = _covariance(values[:, live])
    spread = np.sqrt(np.diag(covariance))
    correlation = np.abs(covariance / np.outer(spread, spread))
    np.fill_diagonal(correlation, np.nan)
    result = {
        "mean_abs_correlation": float(np.nanmean(correlation)),
        "max_abs_correlation": float(np.nanmax(correlation)),
    }
    pca, dims = variance_share_curves(values)
    for k in sorted(set(int(k) for k in ks)):
        if k < 1:
            raise VespaQuantError(f"ks: {k} is not a positive number of components")
        if k <= values.shape[1]:
            result[f"pca_variance_share_at_{k}"] = float(pca[k - 1])
            result[f"dims_variance_share_at_{k}"] = float(dims[k - 1])
    return result


def rate_distortion_references(vectors: np.ndarray, bits: Iterable[int] = RATE_BITS) -> dict[str, float]:
    """Rate-distortion references at ``R`` bits/dim, normalised by the total variance of live dims.

    * ``gauss_rd_{R}bit`` - ``D(R) = 2^(-2R)``, the distortion-rate function of a Gaussian of the
      same variance (brief Q7: 0.25 at 1 bit, 0.0625 at 2). The Gaussian is the hardest source
      of a given variance, so this is an *upper* bound on what the best quantizer of these
      marginals could reach; a scalar quantizer above it is beaten by vector quantization.
    * ``shannon_lb_{R}bit`` - the Shannon lower bound ``e^(2h) / (2 pi e) 2^(-2R)`` per dim,
      ``h`` its differential entropy (nats) estimated with ``scipy.stats.differential_entropy``,
      each dim capped at its Gaussian value (estimation noise can exceed it; the true bound
      cannot). Below it no quantizer at ``R`` bits/dim can go (brief Part V 8), so the true
      minimum for these marginals lies between the two.

    Both treat dims separately: with correlated dims (:func:`correlation_structure`) joint coding
    can do better still.
    """
    values = _as_matrix(vectors)
    active = values[:, _live_mask(values)]
    variance = active.var(axis=0)
    entropy_power = np.exp(2.0 * stats.differential_entropy(active, axis=0)) / (2.0 * math.pi * math.e)
    shannon = np.minimum(entropy_power, variance)
    references: dict[str, float] = {}
    for rate in bits:
        references[f"gauss_rd_{rate}bit"] = 2.0 ** (-2 * rate)
    for rate in bits:
        references[f"shannon_lb_{rate}bit"] = float(np.sum(shannon) / np.sum(variance) * 2.0 ** (-2 * rate))
    return references


def reconstruction_table(method: Quantizer, corpus: np.ndarray, constants) -> np.ndarray:
    """(d, K) value each code of ``method`` stands for, in the input space.

    Multi-level table methods have one (their fitted ``levels``). The sign-bit methods score with a
    +/-1 code around a centre ``c`` (the median for ``binary_median_asym``, 0 for
    ``binary_asym``); the 2-level Lloyd reconstruction with that fixed boundary is taken as
    ``c -/+ E|x - c|`` per dim, ``E`` over ``corpus`` (brief 1.3: exact for a distribution
    symmetric about ``c``). This measures what the bits keep, not what the score uses: the
    asymmetric score implies one common scale for all dims, which the query absorbs only when
    every dim has the same ``E|x - c|``.
    """
    if isinstance(method, ScalarTable) and method.bits > 1:
        return method.fit.reconstruction(constants)
    if isinstance(method, ScalarTable) and method.name in SIGN_BIT_METHODS:
        centre_scale = method.centre_scale(constants)
        centre = np.zeros(corpus.shape[1]) if centre_scale is None else np.asarray(centre_scale[0], np.float64)
        spread = np.mean(np.abs(corpus - centre), axis=0)
        return np.column_stack([centre - spread, centre + spread])
    raise VespaQuantError(
        f"{method.name} has no reconstruction to measure; expected one of {', '.join(RECONSTRUCTION_METHODS)}"
    )


def _resolve(methods: Iterable[Quantizer | str]) -> list[Quantizer]:
    return [get_method(method) if isinstance(method, str) else method for method in methods]


def quantization_mse(vectors: np.ndarray, methods: Iterable[Quantizer | str] = RECONSTRUCTION_METHODS,
                     bits: Iterable[int] = RATE_BITS) -> dict[str, float]:
    """Reconstruction MSE of each method over the live dims of ``vectors``, divided by their total
    variance, plus :func:`rate_distortion_references` (research brief Q7, Part V 8).

    Each method is calibrated on the very vectors it reconstructs (live dims only: a dead dim's
    reconstruction is arbitrary - :func:`robust_scale` gives it scale 1 - and the same for every
    document, so it cannot change a ranking). Keys are method names and the reference names.
    On Gaussian data ``lloyd_max_gauss`` gives 0.1175 (brief 1.2) and the sign-bit methods
    ``1 - 2/pi = 0.3634`` (brief Q4).
    """
    values = _as_matrix(vectors)
    active = values[:, _live_mask(values)]
    total_variance = float(np.sum(active.var(axis=0))) * len(active)
    columns = np.arange(active.shape[1])[None, :]
    result: dict[str, float] = {}
    for method in _resolve(methods):
        if not isinstance(method, DriftHooks):
            raise VespaQuantError(f"{method.name} assigns no per-dimension codes to reconstruct")
        calibration = calibrate(method, active)
        table = reconstruction_table(method, active, calibration.constants)
        squared_error = 0.0
        for start in range(0, len(active), ROW_BLOCK):
            block = active[start:start + ROW_BLOCK]
            codes = np.asarray(method.buckets(block.astype(np.float32), calibration.constants)).astype(np.intp)
            squared_error += float(np.sum((block - table[columns, codes]) ** 2))
        result[method.name] = squared_error / total_variance
    result.update(rate_distortion_references(active, bits))
    return result

