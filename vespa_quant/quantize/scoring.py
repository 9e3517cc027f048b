"""The three shapes every method's score takes, as values the engine's kernels understand.

A method states its score once per side: :class:`TableDocs` / :class:`VectorDocs` /
:class:`BitDocs` for documents (built from the codes Vespa stores) and the matching query side
(built from the float query and the calibration). The shapes are the asymmetric-distance forms
of the literature:

* **table** (ADC, Jegou et al. 2011): a per-dimension reconstruction table indexed by each
  document's small code, ``s = a_n * sum_i Q[q, i, c_ni] + b_n * g_q + o_q``, where the query
  side folds the query into the table (``Q[q, i, c] = q_i T[i, c] + U[i, c]``); every scalar
  quantizer (1 to 8 bits, fixed or fitted levels, bias-corrected or not) and the per-vector
  corrections of a RaBitQ-style estimator (``a_n``, ``b_n``) fit it;
* **vector**: ``s = q . v_n + o_q`` with stored float32, bfloat16 or int8 cells (GEMM);
* **bits**: ``s = 1 / (1 + hamming(q, d))``, the symmetric binary closeness.

:func:`reference_score` evaluates any pair in float64 numpy: it is the definition the engine's
compiled kernels must equal (to 1e-5) and the Vespa profile must equal (to 1e-4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np

from vespa_quant.errors import CalibrationError


@dataclass(frozen=True)
class TableDocs:
    """Per-dimension codes ``(n, d)`` (uint8, ``< 2**bits[i]``) and optional per-document factors."""

    codes: np.ndarray
    bits: np.ndarray
    """(d,) bits of each dimension's code; 0-bit dimensions hold code 0 only."""
    scale: np.ndarray | None = None
    """(n,) ``a_n``, multiplying the table sum (1 when None)."""
    bias: np.ndarray | None = None
    """(n,) ``b_n``, multiplied by the query's ``bias_coef`` (0 when None)."""
    levels: np.ndarray | None = None
    """(d, L) per-dimension levels when the score factors as ``Q[q, i, c] = u[q, i] * levels[i, c]``
    (every scalar quantizer, transform coding): the queries then give ``factors`` ``u`` instead of
    tables, and the engine can decode a block of documents and multiply it by all queries at once."""


@dataclass(frozen=True)
class TableQueries:
    offset: np.ndarray
    """(nq,) float64 added to every score of the query (ranking-neutral, kept for exactness)."""
    tables: np.ndarray | None = None
    """(nq, d, L) float: ``Q[q, i, c]``, the score contribution of code ``c`` in dimension ``i``."""
    factors: np.ndarray | None = None
    """(nq, d) ``u[q, i]`` of the factored form (documents with ``levels``), instead of ``tables``."""
    bias_coef: np.ndarray | None = None
    """(nq,) ``g_q`` multiplying the documents' ``bias``."""


def query_tables(query: TableQueries, docs: TableDocs) -> np.ndarray:
    """(nq, d, L) tables of ``query`` against ``docs``: given, or ``factors x levels`` (float64)."""
    if query.tables is not None:
        return np.asarray(query.tables, dtype=np.float64)
    if query.factors is None or docs.levels is None:
        raise CalibrationError("a table query needs tables, or factors against documents with levels")
    return np.asarray(query.factors, dtype=np.float64)[:, :, None] * np.asarray(docs.levels, dtype=np.float64)[None]


@dataclass(frozen=True)
class VectorDocs:
    vectors: np.ndarray
    """(n, d) float32, int8, or bfloat16 stored as the upper 16 bits (uint16)."""


@dataclass(frozen=True)
class VectorQueries:
    queries: np.ndarray
    """(nq, d) float32."""
    offset: np.ndarray | None = None


@dataclass(frozen=True)
class BitDocs:
    bits: np.ndarray
    """(n, nbytes) packed bits, most significant bit first."""


@dataclass(frozen=True)
class BitQueries:
    bits: np.ndarray


DocView = Union[TableDocs, VectorDocs, BitDocs]
QueryView = Union[TableQueries, VectorQueries, BitQueries]


def vector_cells_as_float(vectors: np.ndarray) -> np.ndarray:
    """float32 values of stored vector cells (bfloat16 arrives as its upper 16 bits)."""
    if vectors.dtype == np.uint16:
        return (vectors.astype(np.uint32) << 16).view(np.float32)
    return vectors.astype(np.float32)


def hamming_matrix(query_bits: np.ndarray, doc_bits: np.ndarray) -> np.ndarray:
    """(nq, n) Hamming distances in plain numpy: the reference, for small inputs only."""
    q = np.unpackbits(np.ascontiguousarray(query_bits).view(np.uint8), axis=1).astype(np.int32)
    d = np.unpackbits(np.ascontiguousarray(doc_bits).view(np.uint8), axis=1).astype(np.int32)
    return q.sum(axis=1)[:, None] + d.sum(axis=1)[None, :] - 2 * (q @ d.T)


def reference_score(query: QueryView, docs: DocView) -> np.ndarray:
    """(nq, n) scores in float64: the definition of each shape, for tests and small corpora."""
    if isinstance(query, TableQueries) and isinstance(docs, TableDocs):
        n, d = docs.codes.shape
        tables = query_tables(query, docs)
        if tables.shape[1] != d:
            raise CalibrationError(f"query tables cover {tables.shape[1]} dims, codes {d}")
        codes = docs.codes.astype(np.intp)
        scores = np.zeros((len(tables), n))
        for i in range(d):
            scores += tables[:, i, :][:, codes[:, i]]
        if docs.scale is not None:
            scores *= docs.scale.astype(np.float64)[None, :]
        if docs.bias is not None and query.bias_coef is not None:
            scores += query.bias_coef.astype(np.float64)[:, None] * docs.bias.astype(np.float64)[None, :]
        return scores + query.offset.astype(np.float64)[:, None]
    if isinstance(query, VectorQueries) and isinstance(docs, VectorDocs):
        scores = query.queries.astype(np.float64) @ vector_cells_as_float(docs.vectors).astype(np.float64).T
        return scores if query.offset is None else scores + query.offset[:, None]
    if isinstance(query, BitQueries) and isinstance(docs, BitDocs):
        return 1.0 / (1.0 + hamming_matrix(query.bits, docs.bits))
    raise CalibrationError(f"query shape {type(query).__name__} cannot score documents of shape {type(docs).__name__}")


def reference_score_at(query: QueryView, docs: DocView, rows: np.ndarray, block: int = 32) -> np.ndarray:
    """(nq, k) float64 scores of the documents ``rows[q]`` for each query ``q``: :func:`reference_score`
    restricted to given rows, for measuring how a method orders a known candidate list (the
    float32 top-100 of each query, brief Q1) without scoring the whole corpus.

    Vectorised over blocks of ``block`` queries, so the temporaries are ``block x k x d``.
    """
    rows = np.asarray(rows, dtype=np.intp)
    if rows.ndim != 2:
        raise CalibrationError(f"rows have shape {rows.shape}, expected (n_queries, k)")
    out = np.empty(rows.shape, dtype=np.float64)
    tables = query_tables(query, docs) if isinstance(query, TableQueries) and isinstance(docs, TableDocs) else None
    for start in range(0, len(rows), block):
        part, at = slice(start, start + block), rows[start:start + block]
        if isinstance(query, TableQueries) and isinstance(docs, TableDocs):
            codes = docs.codes[at].astype(np.intp).transpose(0, 2, 1)  # (b, d, k)
            assert tables is not None
            scores = np.take_along_axis(tables[part], codes, axis=2).sum(axis=1)
            if docs.scale is not None:
                scores *= docs.scale.astype(np.float64)[at]
            if docs.bias is not None and query.bias_coef is not None:
                scores += query.bias_coef[part].astype(np.float64)[:, None] * docs.bias.astype(np.float64)[at]
            out[part] = scores + query.offset[part].astype(np.float64)[:, None]
        elif isinstance(query, VectorQueries) and isinstance(docs, VectorDocs):
            vectors = vector_cells_as_float(docs.vectors[at]).astype(np.float64)
            scores = np.einsum("bd,bkd->bk", query.queries[part].astype(np.float64), vectors)
            out[part] = scores if query.offset is None else scores + query.offset[part][:, None]
        elif isinstance(query, BitQueries) and isinstance(docs, BitDocs):
            query_bits = np.unpackbits(np.ascontiguousarray(query.bits[part]).view(np.uint8), axis=1)
            doc_bits = np.unpackbits(np.ascontiguousarray(docs.bits[at]).view(np.uint8), axis=2)
            distance = (query_bits[:, None, :] != doc_bits).sum(axis=2)
            out[part] = 1.0 / (1.0 + distance)
        else:
            raise CalibrationError(f"query shape {type(query).__name__} cannot score documents of shape "
                                   f"{type(docs).__name__}")
    return out
