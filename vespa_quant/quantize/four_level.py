"""Two-bit methods: ``quaternary_asym``, ``lloyd_max_gauss``, ``lloyd_max_empir``.

Each assigns every value to one of four buckets and reconstructs it from a per-dimension table
``T[i, code]``. The code is stored as two packed bit planes, ``hi = code >> 1`` and
``lo = code & 1``, so Vespa memory really is 2 bits/dim. Any 4-entry table is affine in the
planes plus their product::

    T[c] = T0 + (T2 - T0) hi + (T1 - T0) lo + (T3 - T2 - T1 + T0) hi lo

so ``q . T[code]`` is one weighted sum over unpacked planes, the weights computed per query by the
client (vespa-notes, "Multi-bit codes"). For symmetric tables (Gaussian Lloyd-Max) the product
weight is zero and the term is dropped. ``hi`` is the "above the middle boundary" bit, a sign bit
usable for a Hamming first phase.
"""

from __future__ import annotations

from typing import Callable, ClassVar

import numpy as np

from vespa_quant.quantize.base import Arrays, Method, RankExpressions, TensorField, robust_scale
from vespa_quant.quantize.bits import pack_bits, unpack_bits

GAUSS_BOUNDARIES = np.array([-0.9816, 0.0, 0.9816])
"""4-level Lloyd-Max boundaries for N(0, 1) (research brief 1.2)."""
GAUSS_LEVELS = np.array([-1.5104, -0.4528, 0.4528, 1.5104])
"""4-level Lloyd-Max reconstruction levels for N(0, 1) (research brief 1.2)."""
GAUSS_OCCUPANCY = np.diff(
    np.concatenate([[0.0], 0.5 * (1 + np.vectorize(__import__("math").erf)(GAUSS_BOUNDARIES / np.sqrt(2))), [1.0]])
)
"""Fraction of a Gaussian falling in each Lloyd-Max bucket (about 0.163, 0.337, 0.337, 0.163)."""


def bucketize(values: np.ndarray, boundaries: np.ndarray) -> np.ndarray:
    """(n, d) codes 0..3 against per-dimension (d, 3) boundaries; equal goes to the upper bucket."""
    return (values[:, :, None] >= boundaries[None, :, :]).sum(axis=2).astype(np.uint8)


def bucket_means(values: np.ndarray, codes: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """(d, 4) mean of the values in each bucket; an empty bucket keeps ``fallback``."""
    n, dim = values.shape
    flat = (np.arange(dim)[None, :] * 4 + codes).ravel()
    sums = np.bincount(flat, weights=values.astype(np.float64).ravel(), minlength=dim * 4)
    counts = np.bincount(flat, minlength=dim * 4)
    means = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
    return np.where(counts > 0, means, fallback.ravel()).reshape(dim, 4)


class FourLevel(Method):
    """Shared storage, query inputs, score and rank expression of every 2-bit table method."""

    hamming_role = "hi"
    symmetric_table: ClassVar[bool] = False

    def boundaries(self, constants: Arrays) -> np.ndarray:
        """(d, 3) bucket boundaries in the input space."""
        raise NotImplementedError

    def table(self, constants: Arrays) -> np.ndarray:
        """(d, 4) reconstruction value of each code in the input space."""
        raise NotImplementedError

    def fields(self, dim: int) -> list[TensorField]:
        cells = -(-dim // 8)
        return [TensorField("hi", "int8", cells, hamming=True), TensorField("lo", "int8", cells)]

    def buckets(self, vectors: np.ndarray, constants: Arrays) -> np.ndarray:
        return bucketize(vectors, self.boundaries(constants))

    def encode(self, vectors: np.ndarray, constants: Arrays) -> dict[str, np.ndarray]:
        codes = self.buckets(vectors, constants)
        return {"hi": pack_bits(codes >> 1), "lo": pack_bits(codes & 1)}

    def hamming_query(self, queries: np.ndarray, constants: Arrays) -> np.ndarray:
        return pack_bits(queries >= self.boundaries(constants)[:, 1])

    def query_inputs(self, queries: np.ndarray, constants: Arrays) -> dict[str, np.ndarray]:
        table = self.table(constants)
        q = queries.astype(np.float64)
        inputs = {
            "w_hi": q * (table[:, 2] - table[:, 0]),
            "w_lo": q * (table[:, 1] - table[:, 0]),
            "offset": q @ table[:, 0],
        }
        if not self.symmetric_table:
            inputs["w_both"] = q * (table[:, 3] - table[:, 2] - table[:, 1] + table[:, 0])
        return {k: v.astype(np.float32) if v.ndim == 2 else v for k, v in inputs.items()}

    def score(self, query_inputs: Arrays, codes: Arrays) -> np.ndarray:
        dim = query_inputs["w_hi"].shape[1]
        hi = unpack_bits(codes["hi"], dim).astype(np.float64)
        lo = unpack_bits(codes["lo"], dim).astype(np.float64)
        scores = query_inputs["w_hi"].astype(np.float64) @ hi.T
        scores += query_inputs["w_lo"].astype(np.float64) @ lo.T
        if not self.symmetric_table:
            scores += query_inputs["w_both"].astype(np.float64) @ (hi * lo).T
        return scores + query_inputs["offset"][:, None]

    def rank_expressions(self, dim: int, field: Callable[[str], str]) -> RankExpressions:
        hi = f"unpack_bits(attribute({field('hi')}))"
        lo = f"unpack_bits(attribute({field('lo')}))"
        vector = f"tensor<float>(x[{dim}])"
        inputs = {"w_hi": vector, "w_lo": vector, "offset": "double"}
        terms = f"query(w_hi) * {hi} + query(w_lo) * {lo}"
        if not self.symmetric_table:
            inputs["w_both"] = vector
            terms += f" + query(w_both) * {hi} * {lo}"
        return RankExpressions(inputs=inputs, first_phase=f"sum({terms}) + query(offset)")


class QuaternaryAsym(FourLevel):
    """Per-dimension quartile boundaries, per-bucket means as levels (research README)."""

    name = "quaternary_asym"

    def calibrate(self, corpus: np.ndarray) -> dict[str, np.ndarray]:
        values = corpus.astype(np.float64)
        boundaries = np.quantile(values, [0.25, 0.5, 0.75], axis=0).T
        fallback = np.column_stack([
            boundaries[:, 0], boundaries[:, :2].mean(axis=1), boundaries[:, 1:].mean(axis=1), boundaries[:, 2]
        ])
        levels = bucket_means(values, bucketize(values, boundaries), fallback)
        return {"boundaries": boundaries, "levels": levels}

    def boundaries(self, constants: Arrays) -> np.ndarray:
        return constants["boundaries"]

    def table(self, constants: Arrays) -> np.ndarray:
        return constants["levels"]

    def design_occupancy(self, constants: Arrays) -> np.ndarray:
        return np.full(4, 0.25)

    def centre_scale(self, constants: Arrays) -> tuple[np.ndarray, np.ndarray]:
        b = constants["boundaries"]
        return b[:, 1], (b[:, 2] - b[:, 0]) / 1.349  # IQR of a Gaussian is 1.349 sigma


class LloydMaxGauss(FourLevel):
    """Standardise by corpus median and sigma, then the fixed Gaussian Lloyd-Max table (brief 1.4)."""

    name = "lloyd_max_gauss"
    symmetric_table = True

    def calibrate(self, corpus: np.ndarray) -> dict[str, np.ndarray]:
        median, sigma = robust_scale(corpus)
        return {"median": median, "sigma": sigma}

    def boundaries(self, constants: Arrays) -> np.ndarray:
        return constants["median"][:, None] + constants["sigma"][:, None] * GAUSS_BOUNDARIES[None, :]

    def buckets(self, vectors: np.ndarray, constants: Arrays) -> np.ndarray:
        z = (vectors.astype(np.float64) - constants["median"]) / constants["sigma"]
        return (z[:, :, None] >= GAUSS_BOUNDARIES[None, None, :]).sum(axis=2).astype(np.uint8)

    def hamming_query(self, queries: np.ndarray, constants: Arrays) -> np.ndarray:
        return pack_bits(queries >= constants["median"])

    def table(self, constants: Arrays) -> np.ndarray:
        return constants["median"][:, None] + constants["sigma"][:, None] * GAUSS_LEVELS[None, :]

    def design_occupancy(self, constants: Arrays) -> np.ndarray:
        return GAUSS_OCCUPANCY

    def centre_scale(self, constants: Arrays) -> tuple[np.ndarray, np.ndarray]:
        return constants["median"], constants["sigma"]


class LloydMaxEmpir(FourLevel):
    """Per-dimension 1-D Lloyd iterations on the corpus (brief, Idea 2), from the Gaussian start."""

    name = "lloyd_max_empir"
    iterations: ClassVar[int] = 20

    def calibrate(self, corpus: np.ndarray) -> dict[str, np.ndarray]:
        values = corpus.astype(np.float64)
        median, sigma = robust_scale(values)
        levels = median[:, None] + sigma[:, None] * GAUSS_LEVELS[None, :]
        for _ in range(self.iterations):
            boundaries = 0.5 * (levels[:, :-1] + levels[:, 1:])
            levels = bucket_means(values, bucketize(values, boundaries), levels)
            levels = np.sort(levels, axis=1)
        boundaries = 0.5 * (levels[:, :-1] + levels[:, 1:])
        return {"boundaries": boundaries, "levels": levels, "median": median, "sigma": sigma}

    def boundaries(self, constants: Arrays) -> np.ndarray:
        return constants["boundaries"]

    def table(self, constants: Arrays) -> np.ndarray:
        return constants["levels"]

    def design_occupancy(self, constants: Arrays) -> np.ndarray:
        return GAUSS_OCCUPANCY

    def centre_scale(self, constants: Arrays) -> tuple[np.ndarray, np.ndarray]:
        return constants["median"], constants["sigma"]
