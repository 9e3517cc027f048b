"""Uncompressed and half-precision baselines: ``float32`` and ``bfloat16`` (4 and 2 bytes/dim)."""

from __future__ import annotations

from typing import Callable

import numpy as np

from vespa_quant.quantize.base import Arrays, Method, RankExpressions, TensorField


def round_to_bfloat16(vectors: np.ndarray) -> np.ndarray:
    """float32 values rounded to the nearest bfloat16 (ties to even), kept as float32.

    Feeding values that are exactly representable makes Vespa's own float->bfloat16 conversion
    lossless, so the stored cells equal these values whatever rounding Vespa uses.
    """
    bits = np.ascontiguousarray(vectors, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return rounded.astype(np.uint32).view(np.float32)


class _FloatCells(Method):
    """Stores the vector itself; score is the plain inner product."""

    needs_calibration = False
    cell_type = "float"

    def fields(self, dim: int) -> list[TensorField]:
        return [TensorField("vector", self.cell_type, dim)]

    def encode(self, vectors: np.ndarray, constants: Arrays) -> dict[str, np.ndarray]:
        return {"vector": np.ascontiguousarray(vectors, dtype=np.float32)}

    def query_inputs(self, queries: np.ndarray, constants: Arrays) -> dict[str, np.ndarray]:
        return {"q": np.asarray(queries, dtype=np.float32)}

    def score(self, query_inputs: Arrays, codes: Arrays) -> np.ndarray:
        return query_inputs["q"].astype(np.float64) @ codes["vector"].astype(np.float64).T

    def rank_expressions(self, dim: int, field: Callable[[str], str]) -> RankExpressions:
        return RankExpressions(
            inputs={"q": f"tensor<float>(x[{dim}])"},
            first_phase=f"sum(query(q) * attribute({field('vector')}))",
        )


class Float32(_FloatCells):
    name = "float32"


class BFloat16(_FloatCells):
    name = "bfloat16"
    cell_type = "bfloat16"

    def encode(self, vectors: np.ndarray, constants: Arrays) -> dict[str, np.ndarray]:
        return {"vector": round_to_bfloat16(vectors)}
