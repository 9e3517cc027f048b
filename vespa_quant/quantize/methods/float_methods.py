"""Uncompressed and half-precision baselines: ``float32`` and ``bfloat16`` (4 and 2 bytes/dim)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from vespa_quant.quantize.base import Arrays, CodeField, InputSpec
from vespa_quant.quantize.expr import Codes, Expr, QueryInput, dot
from vespa_quant.quantize.scoring import VectorDocs, VectorQueries, vector_cells_as_float


@njit(parallel=True, cache=True)
def _upper_rounded(bits, out):
    """The upper 16 bits of each float32 bit pattern rounded to nearest, ties to even (one pass)."""
    for i in prange(bits.shape[0]):
        value = bits[i]
        out[i] = np.uint16((value + np.uint32(0x7FFF) + ((value >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))


def bfloat16_bits(vectors: np.ndarray) -> np.ndarray:
    """float32 values rounded to the nearest bfloat16 (ties to even), as the 16 stored bits (uint16).

    The upper half of the rounded float32: what a ``tensor<bfloat16>`` cell holds, at half the
    memory of float32 (a 1M x 384 corpus is 768 MB, not 1.5 GB).
    """
    bits = np.ascontiguousarray(vectors, dtype=np.float32).view(np.uint32)
    out = np.empty(bits.shape, dtype=np.uint16)
    _upper_rounded(bits.reshape(-1), out.reshape(-1))
    return out


def round_to_bfloat16(vectors: np.ndarray) -> np.ndarray:
    """float32 values rounded to the nearest bfloat16 (ties to even), kept as float32.

    Feeding values that are exactly representable makes Vespa's own float->bfloat16 conversion
    lossless, so the stored cells equal these values whatever rounding Vespa uses. Works in
    uint32 (no wider temporaries than the input).
    """
    bits = np.ascontiguousarray(vectors, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)
    return rounded.view(np.float32)


@dataclass(frozen=True)
class FloatCells:
    """Stores the vector itself (``cell_type`` cells); the score is the plain inner product."""

    name: str
    cell_type: str = "float"
    needs_calibration: bool = False
    always_first_phase: bool = False

    def fields(self, dim: int) -> list[CodeField]:
        return [CodeField("vector", self.cell_type, dim)]

    def inputs(self, dim: int) -> list[InputSpec]:
        return [InputSpec("q", dim)]

    def expression(self, dim: int) -> Expr:
        return dot(QueryInput("q"), Codes("vector"))

    def calibrate(self, corpus: np.ndarray, queries: np.ndarray | None) -> dict[str, np.ndarray]:
        return {}

    def encode(self, vectors: np.ndarray, constants: Arrays) -> dict[str, np.ndarray]:
        """float32 cells, or for bfloat16 the 16 stored bits of each rounded value (uint16)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        return {"vector": bfloat16_bits(vectors) if self.cell_type == "bfloat16" else vectors}

    def query_inputs(self, queries: np.ndarray, constants: Arrays) -> dict[str, np.ndarray]:
        return {"q": np.asarray(queries, dtype=np.float32)}

    def doc_view(self, codes: Arrays, constants: Arrays) -> VectorDocs:
        return VectorDocs(np.asarray(codes["vector"]))

    def query_view(self, queries: np.ndarray, constants: Arrays) -> VectorQueries:
        return VectorQueries(np.asarray(queries, dtype=np.float32))

    def reconstruct(self, codes: Arrays, constants: Arrays) -> np.ndarray:
        return vector_cells_as_float(np.asarray(codes["vector"]))


METHODS = (FloatCells("float32"), FloatCells("bfloat16", cell_type="bfloat16"))
