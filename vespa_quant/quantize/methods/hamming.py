"""Methods defined by a Hamming first phase on sign bits: ``binary_hamming`` and ``binary_rescore``.

Both store the sign bits of ``binary_asym`` (``x > 0``, packed) and always retrieve the
Hamming top-k1 first (Vespa: exact or HNSW ``nearestNeighbor`` with ``distance-metric:
hamming``); they differ in what ranks those candidates. Without that first phase they would be
other methods (exhaustive Hamming, or float32), so they have no exhaustive form.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vespa_quant.quantize.base import Arrays, CodeField, InputSpec
from vespa_quant.quantize.bits import pack_bits
from vespa_quant.quantize.expr import Closeness, Codes, Expr, QueryInput, dot
from vespa_quant.quantize.scoring import BitDocs, BitQueries, VectorDocs, VectorQueries

SIGN_INPUT = "q_bits"
"""The packed query bits both methods declare: the nearestNeighbor's query tensor."""


def _cells(dim: int) -> int:
    return -(-dim // 8)


@dataclass(frozen=True)
class BinaryHamming:
    """Symmetric: both sides binarised, score ``closeness = 1 / (1 + hamming)``."""

    name: str = "binary_hamming"
    needs_calibration: bool = False
    always_first_phase: bool = True
    sign_role: str = "bits"

    def fields(self, dim: int) -> list[CodeField]:
        return [CodeField("bits", "int8", _cells(dim), sign_bits=True)]

    def inputs(self, dim: int) -> list[InputSpec]:
        return [InputSpec(SIGN_INPUT, _cells(dim), "int8")]

    def expression(self, dim: int) -> Expr:
        return Closeness("bits")

    def calibrate(self, corpus: np.ndarray, queries: np.ndarray | None) -> dict[str, np.ndarray]:
        return {}

    def encode(self, vectors: np.ndarray, constants: Arrays) -> dict[str, np.ndarray]:
        return {"bits": pack_bits(np.asarray(vectors) > 0)}

    def sign_query(self, queries: np.ndarray, constants: Arrays) -> np.ndarray:
        return pack_bits(np.asarray(queries) > 0)

    def query_inputs(self, queries: np.ndarray, constants: Arrays) -> dict[str, np.ndarray]:
        return {SIGN_INPUT: self.sign_query(queries, constants)}

    def doc_view(self, codes: Arrays, constants: Arrays) -> BitDocs:
        return BitDocs(np.asarray(codes["bits"]))

    def query_view(self, queries: np.ndarray, constants: Arrays) -> BitQueries:
        return BitQueries(self.sign_query(queries, constants))


@dataclass(frozen=True)
class BinaryRescore(BinaryHamming):
    """Hamming top-k1 on sign bits, then exact float32 rescoring of those k1.

    The float32 copy is a paged attribute: on disk, read only for the k1 candidates, so memory
    holds d/8 bytes per document (the 4d bytes on disk are reported separately).
    """

    name: str = "binary_rescore"

    def fields(self, dim: int) -> list[CodeField]:
        return super().fields(dim) + [CodeField("vector", "float", dim, paged=True)]

    def inputs(self, dim: int) -> list[InputSpec]:
        return [InputSpec("q", dim), *super().inputs(dim)]

    def expression(self, dim: int) -> Expr:
        return dot(QueryInput("q"), Codes("vector"))

    def encode(self, vectors: np.ndarray, constants: Arrays) -> dict[str, np.ndarray]:
        return {**super().encode(vectors, constants), "vector": np.ascontiguousarray(vectors, dtype=np.float32)}

    def query_inputs(self, queries: np.ndarray, constants: Arrays) -> dict[str, np.ndarray]:
        return {"q": np.asarray(queries, dtype=np.float32), **super().query_inputs(queries, constants)}

    def doc_view(self, codes: Arrays, constants: Arrays) -> VectorDocs:  # type: ignore[override]
        return VectorDocs(np.asarray(codes["vector"], dtype=np.float32))

    def query_view(self, queries: np.ndarray, constants: Arrays) -> VectorQueries:  # type: ignore[override]
        return VectorQueries(np.asarray(queries, dtype=np.float32))


METHODS = (BinaryHamming(), BinaryRescore())
