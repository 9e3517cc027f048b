"""A numpy evaluator of :mod:`vespa_quant.quantize.expr` trees: the fast unit-test twin of a profile.

It gives each leaf Vespa's meaning (``unpack_bits`` most significant bit first, ``closeness`` =
``1/(1+hamming)``) and evaluates a whole query batch against a whole corpus. It checks that a
method's tree computes its engine score; Vespa's own compiler and evaluator
(``vespa-quant check-package``) check the rendered profile.
"""

from __future__ import annotations

import numpy as np

from vespa_quant.quantize import expr
from vespa_quant.quantize.scoring import hamming_matrix, vector_cells_as_float


def evaluate(tree: expr.Expr, inputs: dict[str, np.ndarray], codes: dict[str, np.ndarray],
             nearest: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """(n_queries, n_docs) values of ``tree``; ``nearest`` maps a Closeness role to query bits."""
    n_queries = len(next(iter(inputs.values())))
    n_docs = len(next(iter(codes.values())))

    def value(node: expr.Expr) -> np.ndarray:
        # Vectors are (q, n, cells) broadcastable; scalars (q, n, 1).
        if isinstance(node, expr.QueryInput):
            array = np.asarray(inputs[node.name], dtype=np.float64)
            return array.reshape(n_queries, 1, -1) if array.ndim == 2 else array.reshape(n_queries, 1, 1)
        if isinstance(node, expr.Codes):
            return vector_cells_as_float(np.asarray(codes[node.role])).astype(np.float64)[None, :, :]
        if isinstance(node, expr.Bits):
            cells = np.ascontiguousarray(codes[node.role]).view(np.uint8)
            return np.unpackbits(cells, axis=1).astype(np.float64)[None, :, :]
        if isinstance(node, expr.Closeness):
            bits = (nearest or {})[node.role]
            return (1.0 / (1.0 + hamming_matrix(bits, codes[node.role])))[:, :, None]
        if isinstance(node, expr.Constant):
            return np.full((1, 1, 1), node.value)
        if isinstance(node, expr.Product):
            result = value(node.factors[0])
            for factor in node.factors[1:]:
                result = result * value(factor)
            return result
        if isinstance(node, expr.Add):
            result = value(node.terms[0])
            for term in node.terms[1:]:
                result = result + value(term)
            return result
        if isinstance(node, expr.Sum):
            return value(node.of).sum(axis=2, keepdims=True)
        raise TypeError(f"unknown node {node!r}")

    return np.broadcast_to(value(tree), (n_queries, n_docs, 1))[:, :, 0]
