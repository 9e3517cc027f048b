"""A method's documents, prepared once for the engine's compiled kernels (:mod:`.kernels`).

:class:`DocScorer` takes the score shape a method states (:mod:`vespa_quant.quantize.scoring`)
and lays the documents out for the kernel that runs that shape fastest, exactly:

* **table** codes (every scalar quantizer, transform coding): when the score factors as
  ``u[q, i] * levels[i, c]`` the codes become packed codes with their levels (:mod:`.dot`): 16-entry
  register tables (:mod:`.lut16`) for 1-4 bits where the CPU has them, else byte tables for a few
  queries and decode + float32 GEMM for a batch; otherwise (per-document factors, a bias) the
  dimensions are grouped by bits and scored by per-byte lookup tables (ADC, :mod:`.lut`);
* **vector** cells (float32, int8, bfloat16 bits): float32 GEMM blocks or row dots (:mod:`.dot`);
* **bits** (binary_hamming): XOR + popcount over 64-bit words (:mod:`.hamming`).

Documents are converted to a layout in row chunks, so a 1M-document corpus never exists as a
(n, d) table of codes in memory. Candidate rescoring (the second phase) reads only the candidates.
Ties go to the lowest row everywhere (the rule of :mod:`vespa_quant.engine.local`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypedDict

import numpy as np

from vespa_quant.engine import kernels
from vespa_quant.errors import VespaQuantError
from vespa_quant.quantize.base import Arrays, columns
from vespa_quant.quantize.scoring import (
    BitDocs,
    BitQueries,
    DocView,
    QueryView,
    TableDocs,
    TableQueries,
    VectorDocs,
    VectorQueries,
)

CHUNK_ROWS = 65_536
"""Rows converted to the kernel layout at once: bounds the (rows, d) temporaries of a conversion."""


def _chunks(codes: Arrays, n_docs: int) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    for start in range(0, n_docs, CHUNK_ROWS):
        yield start, {role: array[start:start + CHUNK_ROWS] for role, array in codes.items()}



class DocFactors(TypedDict):
    """The per-document keyword arguments of the lookup-table kernels (all None: no factors)."""

    doc_scale: np.ndarray | None
    doc_bias: np.ndarray | None
    query_bias: np.ndarray | None

class _TableLayout:
    """Table codes in the layout of their kernel.

    Factored documents (``levels`` given, no per-document factors) become one
    :class:`~vespa_quant.engine.dot.PackedCodes`: codes of one depth of at most 4 bits packed
    several per byte (register or byte tables, or decode + GEMM), any other mix of depths one code
    byte per coded dimension (decode + GEMM for a batch). Otherwise dimensions are grouped by bits,
    packed per group, and scored by byte lookup tables with the per-document factors.
    """

    def __init__(self, first: TableDocs, n_docs: int) -> None:
        self.bits = np.asarray(first.bits, dtype=np.int64)
        self.coded = np.flatnonzero(self.bits > 0)
        self.zero = np.flatnonzero(self.bits == 0)
        self.factored = first.levels is not None and first.scale is None and first.bias is None
        depths = sorted(set(self.bits[self.coded].tolist()))
        self.packed_bits = depths[0] if len(depths) == 1 and depths[0] <= 4 else 8
        if self.factored:
            assert first.levels is not None
            levels = np.zeros((len(self.coded), 1 << self.packed_bits), dtype=np.float32)
            width = min(first.levels.shape[1], levels.shape[1])
            levels[:, :width] = first.levels[self.coded, :width]
            self.levels = levels
            self.groups = [(self.packed_bits, self.coded)]
        else:
            self.groups = [(int(b), np.flatnonzero(self.bits == b)) for b in depths]
        self.stored = [8 if b > 4 else b for b, _ in self.groups]
        widths = [-(-len(index) // (8 // stored)) for (_, index), stored in zip(self.groups, self.stored)]
        self.offsets = np.cumsum([0, *widths])
        self.packed = np.zeros((n_docs, int(self.offsets[-1])), dtype=np.uint8)
        self.scale = None if first.scale is None else np.zeros(n_docs, dtype=np.float32)
        self.bias = None if first.bias is None else np.zeros(n_docs, dtype=np.float32)
        self.doc_levels = first.levels

    def fill(self, start: int, view: TableDocs) -> None:
        stop = start + len(view.codes)
        for (_bits, index), stored, at in zip(self.groups, self.stored, self.offsets):
            whole = len(index) == view.codes.shape[1]  # every dimension: no gathered copy
            packed = kernels.pack_codes(view.codes if whole else view.codes[:, columns(index)], stored)
            self.packed[start:stop, at:at + packed.shape[1]] = packed
        if self.scale is not None and view.scale is not None:
            self.scale[start:stop] = view.scale
        if self.bias is not None and view.bias is not None:
            self.bias[start:stop] = view.bias

    def finish(self) -> None:
        self.codes = kernels.PackedCodes(self.packed, self.levels, self.packed_bits) if self.factored else None

    def tables(self, query: TableQueries) -> np.ndarray:
        """(nq, d, L) tables of every dimension (factors x levels for a factored query)."""
        if query.tables is not None:
            return np.asarray(query.tables)
        if query.factors is None or self.doc_levels is None:
            raise VespaQuantError("a table query needs tables, or factors against documents with levels")
        return np.asarray(query.factors, dtype=np.float64)[:, :, None] * np.asarray(self.doc_levels)[None]

    def constant(self, query: TableQueries, tables: np.ndarray | None = None) -> np.ndarray:
        """The per-query offset plus what the 0-bit dimensions contribute (their one code, 0)."""
        offset = np.asarray(query.offset, dtype=np.float64)
        if len(self.zero):
            if tables is None and query.factors is not None and self.doc_levels is not None:
                return offset + (np.asarray(query.factors, dtype=np.float64)[:, self.zero]
                                 * np.asarray(self.doc_levels)[self.zero, 0]).sum(axis=1)
            tables = self.tables(query) if tables is None else tables
            offset = offset + tables[:, self.zero, 0].astype(np.float64).sum(axis=1)
        return offset

    def luts(self, query: TableQueries) -> tuple[np.ndarray, np.ndarray]:
        """(byte lookup tables (nq, bytes, 256), offset (nq,) incl. the 0-bit dimensions' constant)."""
        tables = self.tables(query)
        parts = [kernels.build_luts(_widened(tables[:, index, :1 << min(bits, 8)], stored), stored)
                 for (bits, index), stored in zip(self.groups, self.stored)]
        return np.concatenate(parts, axis=1), self.constant(query, tables)

    def doc_factors(self, query: TableQueries) -> DocFactors:
        """The kernels' per-document factors: all three or none (a missing one is neutral)."""
        if self.scale is None and self.bias is None:
            return {"doc_scale": None, "doc_bias": None, "query_bias": None}
        n_queries = len(query.offset)
        return {"doc_scale": self.scale if self.scale is not None else np.ones(len(self.packed), dtype=np.float32),
                "doc_bias": self.bias if self.bias is not None else np.zeros(len(self.packed), dtype=np.float32),
                "query_bias": (np.asarray(query.bias_coef, dtype=np.float32) if query.bias_coef is not None
                               and self.bias is not None else np.zeros(n_queries, dtype=np.float32))}

    def factors(self, query: TableQueries) -> np.ndarray | None:
        """The coded dimensions' query factors, when the packed-codes kernels apply."""
        if self.codes is None or query.factors is None or query.tables is not None:
            return None
        return np.ascontiguousarray(np.asarray(query.factors, dtype=np.float32)[:, self.coded])


def _widened(tables: np.ndarray, stored: int) -> np.ndarray:
    """Pad ``(nq, d, L)`` tables to ``2**stored`` entries (codes never reach the padding)."""
    if tables.shape[2] == 1 << stored:
        return tables
    out = np.zeros((*tables.shape[:2], 1 << stored), dtype=tables.dtype)
    out[:, :, :min(tables.shape[2], 1 << stored)] = tables[:, :, :1 << stored]
    return out


class DocScorer:
    """One method's encoded corpus in the layout of its kernel (see the module docstring)."""

    def __init__(self, view_of: Callable[[Arrays], DocView], codes: Arrays) -> None:
        self.n_docs = len(next(iter(codes.values())))
        chunks = _chunks(codes, self.n_docs)
        start, first_codes = next(chunks)
        first = view_of(first_codes)
        self.kind: type = type(first)
        if isinstance(first, TableDocs):  # converted chunk by chunk: the (n, d) codes never exist at once
            self.table = _TableLayout(first, self.n_docs)
            self.table.fill(start, first)
            for start, chunk in chunks:
                view = view_of(chunk)
                assert isinstance(view, TableDocs)
                self.table.fill(start, view)
            self.table.finish()
            return
        whole = view_of(codes) if self.n_docs > CHUNK_ROWS else first  # views of cells and bits copy nothing
        if isinstance(whole, VectorDocs):
            self.vectors = np.asarray(whole.vectors)
        elif isinstance(whole, BitDocs):
            self.raw_bits = np.asarray(whole.bits)
            self.bits = kernels.prepare_bits(self.raw_bits)
        else:
            raise VespaQuantError(f"unknown document score shape {type(first).__name__}")

    def topk(self, query: QueryView, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Per query the ``k`` best (scores, rows), by descending score then lowest row."""
        if isinstance(query, TableQueries) and self.kind is TableDocs:
            layout = self.table
            factors = layout.factors(query)
            if factors is not None and layout.codes is not None:
                scores, rows = kernels.dot_topk(factors, layout.codes, k)
                return _offset(scores, rows, layout.constant(query)), rows
            luts, offset = layout.luts(query)
            scores, rows = kernels.lut_topk(luts, layout.packed, k, **layout.doc_factors(query))
            return _offset(scores, rows, offset), rows
        if isinstance(query, VectorQueries) and self.kind is VectorDocs:
            scores, rows = kernels.dot_topk(np.asarray(query.queries, dtype=np.float32), self.vectors, k)
            return _offset(scores, rows, query.offset), rows
        if isinstance(query, BitQueries) and self.kind is BitDocs:
            distances, rows = kernels.hamming_topk(np.asarray(query.bits), self.bits, k)
            return np.where(rows >= 0, 1.0 / (1.0 + distances.astype(np.float64)), -np.inf), rows
        raise VespaQuantError(f"query shape {type(query).__name__} cannot score {self.kind.__name__} documents")

    def scores_at(self, query: QueryView, rows: np.ndarray) -> np.ndarray:
        """(nq, m) scores of the candidate ``rows`` of each query (-1 -> -inf)."""
        rows = np.asarray(rows, dtype=np.int64)
        if isinstance(query, TableQueries) and self.kind is TableDocs:
            layout = self.table
            factors = layout.factors(query)
            if factors is not None and layout.codes is not None:  # byte tables of the packed codes
                luts = kernels.build_luts(layout.codes.tables(factors), layout.packed_bits)
                return _offset(kernels.lut_scores_at(luts, layout.codes.codes, rows), rows, layout.constant(query))
            luts, offset = layout.luts(query)
            scores = kernels.lut_scores_at(luts, layout.packed, rows, **layout.doc_factors(query))
            return _offset(scores, rows, offset)
        if isinstance(query, VectorQueries) and self.kind is VectorDocs:
            scores = kernels.dot_scores_at(np.asarray(query.queries, dtype=np.float32), self.vectors, rows)
            return _offset(scores, rows, query.offset)
        if isinstance(query, BitQueries) and self.kind is BitDocs:
            return closeness_at(np.asarray(query.bits), self.raw_bits, rows)
        raise VespaQuantError(f"query shape {type(query).__name__} cannot score {self.kind.__name__} documents")


def _offset(scores: np.ndarray, rows: np.ndarray, offset: np.ndarray | None) -> np.ndarray:
    """float64 scores with the per-query offset added (missing entries stay -inf)."""
    scores = np.asarray(scores, dtype=np.float64)
    if offset is not None:
        scores = scores + np.asarray(offset, dtype=np.float64)[:, None]
    return np.where(rows >= 0, scores, -np.inf)


def closeness_at(query_bits: np.ndarray, doc_bits: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``1 / (1 + hamming)`` of the candidate rows (few per query: a direct popcount)."""
    taken = np.ascontiguousarray(doc_bits).view(np.uint8)[np.maximum(rows, 0)]  # (nq, m, bytes)
    differing = np.bitwise_count(taken ^ np.ascontiguousarray(query_bits).view(np.uint8)[:, None, :])
    closeness = 1.0 / (1.0 + differing.sum(axis=2, dtype=np.int64))
    return np.where(rows >= 0, closeness, -np.inf)


def hamming_candidates(prepared: kernels.PreparedBits, query_bits: np.ndarray, k1: int) -> np.ndarray:
    """(nq, min(k1, n)) rows of the Hamming top-``k1`` (ties: lowest rows)."""
    return kernels.hamming_topk(np.asarray(query_bits), prepared, k1)[1]


def rerank(scores: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top-``k`` candidates of each query by descending score, ties by lowest row."""
    order = np.lexsort((candidates, -scores), axis=1)[:, :min(k, candidates.shape[1])]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(candidates, order, axis=1)
