"""Scalar quantizers with a per-dimension table: every 1-, 2-, 3- and 4-bit method is one of these.

A scalar-table method assigns each value to one of ``L = 2**bits`` buckets by per-dimension
boundaries and reconstructs it from a per-dimension table, so the asymmetric score is
``sum_i (q_i + s_i) T[i, c_i]`` (``s`` is a query shift, non-zero only for the median-centred
binary method, research brief 1.3: ``s = -m``). The variants differ only in how the
boundaries and the table are fitted, which is data (:mod:`~vespa_quant.quantize.methods.fitting`):

==================== ==== ============================================================
method               bits fitting rule
==================== ==== ============================================================
binary_asym          1    sign, levels -1/+1, no calibration
binary_median_asym   1    median centre, ``(q - m) . sign(d - m)``
quaternary_asym      2    quartile boundaries, bucket means
lloyd_max_gauss      2    median/sigma standardisation, Gaussian Lloyd-Max table (1.2, 1.4)
lloyd_max_gauss_3bit 3    the same with the 8-level Gaussian table
lloyd_max_gauss_4bit 4    the same with the 16-level table (Idea 1, experiment 5)
lloyd_max_empir      2    per-dimension Lloyd iterations on the corpus (Idea 2)
lloyd_max_sphere     2    no calibration: Gaussian table for the unit sphere's N(0, 1/d) (Idea 5)
==================== ==== ============================================================

Storage is ``bits`` packed planes (:mod:`~vespa_quant.quantize.planes`), the most significant
being "above the middle boundary": a sign bit for the Hamming first phase.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vespa_quant.quantize.base import Arrays, CodeField, InputSpec
from vespa_quant.quantize.bits import pack_bits
from vespa_quant.quantize.expr import Expr
from vespa_quant.quantize.methods.fitting import (
    EmpiricalLloydMax,
    FitRule,
    GaussLloydMax,
    MedianSign,
    Quantiles,
    Sign,
    SphereLloydMax,
)
from vespa_quant.quantize.planes import (
    Term,
    all_terms,
    decode_planes,
    encode_planes,
    plane_expression,
    plane_roles,
    plane_weights,
    vanishing_terms,
)
from vespa_quant.quantize.scoring import TableDocs, TableQueries


@dataclass(frozen=True)
class ScalarTable:
    """One scalar-table method: ``bits`` per dimension, boundaries and table from ``fit``."""

    name: str
    bits: int
    fit: FitRule
    gray: bool = False
    always_first_phase: bool = False

    @property
    def needs_calibration(self) -> bool:
        return self.fit.needs_calibration

    @property
    def sign_role(self) -> str:
        return plane_roles(self.bits)[0]

    @property
    def terms(self) -> list[Term]:
        """Plane products in the score; those a fixed design makes vanish are left out."""
        design = self.fit.design_table(1 << self.bits)
        dropped = set() if design is None else vanishing_terms(design, self.bits, self.gray)
        return [term for term in all_terms(self.bits) if term not in dropped]

    def fields(self, dim: int) -> list[CodeField]:
        cells = -(-dim // 8)
        return [CodeField(role, "int8", cells, sign_bits=(k == 0)) for k, role in enumerate(plane_roles(self.bits))]

    def inputs(self, dim: int) -> list[InputSpec]:
        cells = -(-dim // 8)
        _, weights = plane_weights(np.zeros((1, dim, 1 << self.bits)), self.bits, self.gray, self.terms, cells)
        return [InputSpec(name, 8 * cells) for name in weights] + [InputSpec("offset")]

    def expression(self, dim: int) -> Expr:
        return plane_expression(self.terms, self.bits)

    def calibrate(self, corpus: np.ndarray, queries: np.ndarray | None) -> dict[str, np.ndarray]:
        return self.fit.fit(corpus, 1 << self.bits, queries)

    def buckets(self, vectors: np.ndarray, constants: Arrays) -> np.ndarray:
        return self.fit.assign(vectors, constants)

    def encode(self, vectors: np.ndarray, constants: Arrays) -> dict[str, np.ndarray]:
        return encode_planes(self.buckets(vectors, constants), self.bits, self.gray)

    def query_factors(self, queries: np.ndarray, constants: Arrays) -> np.ndarray:
        """(nq, d) ``q + s``, the factor each dimension's level is multiplied by (float64)."""
        factors = np.asarray(queries, dtype=np.float64)
        return factors + constants["query_shift"] if "query_shift" in constants else factors

    def query_tables(self, queries: np.ndarray, constants: Arrays) -> np.ndarray:
        """(nq, d, L) ``(q_i + s_i) T[i, c]`` in float64."""
        return self.query_factors(queries, constants)[:, :, None] * constants["levels"][None, :, :]

    def query_inputs(self, queries: np.ndarray, constants: Arrays) -> dict[str, np.ndarray]:
        cells = -(-queries.shape[1] // 8)
        offset, weights = plane_weights(self.query_tables(queries, constants), self.bits, self.gray,
                                        self.terms, cells)
        return {**weights, "offset": offset}

    def doc_view(self, codes: Arrays, constants: Arrays) -> TableDocs:
        """Codes with the levels ``T``: the factored form ``(q_i + s_i) T[i, c]``."""
        dim = constants["levels"].shape[0]
        return TableDocs(decode_planes(dict(codes), self.bits, self.gray, dim), np.full(dim, self.bits),
                         levels=np.asarray(constants["levels"]))

    def query_view(self, queries: np.ndarray, constants: Arrays) -> TableQueries:
        return TableQueries(np.zeros(len(queries)), factors=self.query_factors(queries, constants).astype(np.float32))

    def sign_query(self, queries: np.ndarray, constants: Arrays) -> np.ndarray:
        """Query bits ``q above the middle boundary``: the convention of the stored top plane."""
        return pack_bits(self.fit.assign(queries, constants) >= (1 << (self.bits - 1)))

    def reconstruct(self, codes: Arrays, constants: Arrays) -> np.ndarray:
        indices = self.doc_view(codes, constants).codes.astype(np.intp)
        levels = self.fit.reconstruction(constants)
        return levels[np.arange(levels.shape[0])[None, :], indices]

    def design_occupancy(self, constants: Arrays) -> np.ndarray | None:
        return self.fit.design_occupancy(1 << self.bits)

    def centre_scale(self, constants: Arrays) -> tuple[np.ndarray, np.ndarray] | None:
        return self.fit.centre_scale(constants)


METHODS = (
    ScalarTable("binary_asym", 1, Sign()),
    ScalarTable("binary_median_asym", 1, MedianSign()),
    ScalarTable("quaternary_asym", 2, Quantiles()),
    ScalarTable("lloyd_max_gauss", 2, GaussLloydMax()),
    ScalarTable("lloyd_max_gauss_3bit", 3, GaussLloydMax()),
    ScalarTable("lloyd_max_gauss_4bit", 4, GaussLloydMax()),
    ScalarTable("lloyd_max_empir", 2, EmpiricalLloydMax()),
    ScalarTable("lloyd_max_sphere", 2, SphereLloydMax()),
)
