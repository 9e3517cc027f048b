"""Inner-product top-k and rescoring over stored vectors: float32, int8 codes, bfloat16 cells.

The score ``q . v`` of the float methods and of ``int8_asym`` (``(q * step) . code``) is a GEMM:
blocks of documents are decoded to float32 (int8 and bfloat16; float32 blocks are views) and
multiplied by the float32 queries with BLAS, never upcast to float64; the (queries x block) scores
go through the streaming top-k of :mod:`vespa_quant.engine.topk`, so memory stays at one block.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numba import njit, types
from numba.extending import intrinsic, overload
from threadpoolctl import ThreadpoolController

from vespa_quant.engine import lut, lut16, topk
from vespa_quant.errors import VespaQuantError

DOT_BLOCK_ROWS = 4096
"""Documents per GEMM block: 6 MiB decoded at 384 dims, scores of 1024 queries in 16 MiB (measured
fastest of 1-16 Ki here, beside faiss' 1 Ki x 4 Ki query blocks)."""
DIRECT_QUERIES = 4
"""Fewer queries than this are scored row by row without decoding: a GEMM only pays off when each
decoded block serves several queries."""
DIRECT_TILE = 256
"""Rows per tile of the direct scan: 96 KiB of int8 rows at 384 dims, in L2 across its queries."""
TABLES_UP_TO = 1000
"""Register tables while ``queries x bits`` stays below this, decode + GEMM above (measured
crossovers: ~500 queries at 2 bits, ~250 at 4 bits, on 1M documents, 2 cores)."""
BYTE_TABLES_UP_TO = 128
"""Without register tables, byte tables while ``queries x bits`` stays below this, decode + GEMM
above: a query's byte tables hold 256 floats per code byte, so a batch's tables outgrow L2 (1M
documents, 2 threads, AMD EPYC without AVX-512: byte tables 1.29 s against GEMM 1.97 s at 100
queries of 1-bit codes, 3.25 s against 2.42 s at 200; 1.54 s against 1.54 s at 50 queries of
2-bit codes, 2.95 s against 1.73 s at 100)."""
_controller: list[ThreadpoolController] = []


@intrinsic
def _bitcast_float32(typingctx, value):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float32))
    return types.float32(types.uint32), codegen


def _to_float32(value):
    """A stored cell as float32; uint16 cells are bfloat16 bit patterns (the high half of a float32)."""


@overload(_to_float32)
def _to_float32_impl(value):
    if value == types.uint16:
        return lambda value: _bitcast_float32(np.uint32(value) << np.uint32(16))
    if value == types.int8:
        # Through int32: LLVM then widens 16 cells per instruction (1M x 384 int8, one query:
        # 12.5 ms against 14.9 ms converting int8 to float32 directly).
        return lambda value: np.float32(np.int32(value))
    return lambda value: np.float32(value)


@njit(cache=True, nogil=True)
def _decode_cells(docs, start, out):
    for r in range(out.shape[0]):
        for i in range(out.shape[1]):
            out[r, i] = _to_float32(docs[start + r, i])


@njit(cache=True, nogil=True)
def _decode_codes(codes, levels, stored, start, out):
    per = 8 // stored
    mask = (1 << stored) - 1
    for r in range(out.shape[0]):
        for i in range(out.shape[1]):
            j = i // per
            out[r, i] = levels[i, (codes[start + r, j] >> (8 - stored * (i - j * per + 1))) & mask]


@dataclass(frozen=True)
class PackedCodes:
    """Codes packed by :func:`.lut.pack_codes` with the per-dimension levels that reconstruct them.

    The reconstruction is ``d_hat[i] = levels[i, code_i]``, so ``q . d_hat`` is both a lookup-table
    sum (``tables[q, i, c] = q_i levels[i, c]``; cheap per document, the way for few queries) and a
    GEMM with a decoded block (the way for a batch). binary_asym is ``levels = [-1, +1]``;
    the 2-bit methods are their ``table``.
    """

    codes: np.ndarray
    levels: np.ndarray
    bits: int
    nibbles: np.ndarray | None = field(init=False, default=None)
    """The codes laid out for :mod:`.lut16` (a second copy), where this CPU can run it."""

    def __post_init__(self) -> None:
        stored, per = lut.dims_per_byte(self.bits)
        levels = np.ascontiguousarray(self.levels, dtype=np.float32)
        if levels.ndim != 2 or levels.shape[1] != 1 << self.bits:
            raise VespaQuantError(f"levels must be (d, {1 << self.bits}) for {self.bits} bits, got {levels.shape}")
        codes = np.ascontiguousarray(self.codes).view(np.uint8)
        if codes.ndim != 2 or codes.shape[1] != -(-len(levels) // per):
            raise VespaQuantError(f"codes {codes.shape} do not pack {len(levels)} dims at {self.bits} bits")
        object.__setattr__(self, "levels", levels)
        object.__setattr__(self, "codes", codes)
        if lut16.AVAILABLE and stored <= 4:
            object.__setattr__(self, "nibbles", lut16.prepare_nibbles(codes))

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.codes), len(self.levels)

    def tables(self, queries: np.ndarray) -> np.ndarray:
        """(nq, d, 2**bits) ``q_i levels[i, c]`` for :func:`.lut.build_luts`."""
        return queries.astype(np.float64)[:, :, None] * self.levels[None].astype(np.float64)


def _decode(docs: np.ndarray | PackedCodes, start: int, out: np.ndarray) -> None:
    """Fill ``out`` with the float32 rows ``start..start+len(out)`` of ``docs``."""
    if isinstance(docs, PackedCodes):
        _decode_codes(docs.codes, docs.levels, lut.dims_per_byte(docs.bits)[0], start, out)
    else:
        _decode_cells(docs, start, out)


@njit(cache=True, fastmath={"reassoc", "contract"}, nogil=True)
def _dot(query, doc):
    """float32 ``query . doc``; reassociation lets LLVM split the sum into SIMD lanes."""
    total = np.float32(0.0)
    for i in range(query.shape[0]):
        total += query[i] * _to_float32(doc[i])
    return total


@njit(cache=True, nogil=True)
def _direct_part(queries, docs, first, last, k, part, keys, rows, count, threshold):
    """Tiles of :data:`DIRECT_TILE` rows, each served to every query from L1; the query's k-th
    score is held in a local between pushes (reading it from the array per row, with the row loop
    outside the query loop, measured 24.5 ms against 14.2 ms for one query on 1M x 384 int8)."""
    for start in range(first, last, DIRECT_TILE):
        stop = min(start + DIRECT_TILE, last)
        for q in range(queries.shape[0]):
            query = queries[q]
            limit = threshold[part, q]
            for r in range(start, stop):
                score = _dot(query, docs[r])
                if score > limit:
                    topk.push(keys, rows, count, threshold, part, q, score, r, k)
                    limit = threshold[part, q]


@njit(cache=True, nogil=True)
def _dot_at(queries, docs, rows, out, first, last):
    for q in range(first, last):
        for m in range(rows.shape[1]):
            r = rows[q, m]
            if r >= 0:
                total = 0.0
                for i in range(queries.shape[1]):
                    total += queries[q, i] * _to_float32(docs[r, i])
                out[q, m] = total


def _blas_limit(threads: int):
    """BLAS thread limit for one call (restored on exit)."""
    if not _controller:
        _controller.append(ThreadpoolController())
    return _controller[0].limit(limits=threads, user_api="blas")


def _check(queries: np.ndarray, docs: np.ndarray | PackedCodes) -> tuple[np.ndarray, np.ndarray | PackedCodes]:
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if isinstance(docs, PackedCodes):
        if queries.ndim != 2 or queries.shape[1] != docs.shape[1]:
            raise VespaQuantError(f"queries {queries.shape} and codes of {docs.shape[1]} dims do not match")
        return queries, docs
    if docs.dtype not in (np.float32, np.int8, np.uint16):
        raise VespaQuantError(f"docs must be float32, int8 or uint16 (bfloat16 bits), got {docs.dtype}")
    if queries.ndim != 2 or docs.ndim != 2 or queries.shape[1] != docs.shape[1]:
        raise VespaQuantError(f"queries {queries.shape} and docs {docs.shape} must be (n, d) with the same d")
    return queries, np.ascontiguousarray(docs)


def _direct(queries: np.ndarray, docs: np.ndarray, k: int, parts: int) -> tuple[np.ndarray, np.ndarray]:
    state = topk.buffers(parts, len(queries), k, np.float32)
    topk.run_parts(lambda part: _direct_part(queries, docs, *topk.span(part, parts, len(docs)), k, part, *state),
                   parts)
    return topk.finish(*state[:3], k, -np.inf)


def _gemm(queries: np.ndarray, docs: np.ndarray | PackedCodes, k: int, parts: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode + GEMM + top-k over blocks; ``parts`` Python threads each scan a contiguous range with
    single-threaded BLAS (numpy and the kernels release the GIL). A BLAS library's own threads
    would be woken per block, which costs milliseconds on a busy machine for small blocks."""
    n, dim = docs.shape
    state = topk.buffers(parts, len(queries), k, np.float32)
    plain = isinstance(docs, np.ndarray) and docs.dtype == np.float32

    def scan(part: int) -> None:
        decoded = None if plain else np.empty((min(DOT_BLOCK_ROWS, n), dim), dtype=np.float32)
        scores = np.empty((DOT_BLOCK_ROWS, len(queries)), dtype=np.float32)
        first, last = topk.span(part, parts, n)
        for start in range(first, last, DOT_BLOCK_ROWS):
            stop = min(start + DOT_BLOCK_ROWS, last)
            if decoded is None and isinstance(docs, np.ndarray):
                block = docs[start:stop]
            else:
                assert decoded is not None
                block = decoded[:stop - start]
                _decode(docs, start, block)
            out = scores[:stop - start]
            np.matmul(block, queries.T, out=out)
            topk.push_block(out, start, part, *state, k)
    topk.run_parts(scan, parts)
    return topk.finish(*state[:3], k, -np.inf)


def _tables_topk(queries: np.ndarray, docs: PackedCodes, k: int, threads: int | None) -> tuple[np.ndarray, np.ndarray]:
    tables = docs.tables(queries)
    if docs.nibbles is not None:
        return lut16.nibble_topk(lut16.nibble_luts(tables, docs.bits), docs.nibbles, len(docs.codes), k,
                                 threads=threads)
    return lut.lut_topk(lut.build_luts(tables, docs.bits), docs.codes, k, threads=threads)


def dot_topk(queries: np.ndarray, docs: np.ndarray | PackedCodes, k: int, *, threads: int | None = None,
             path: Literal["auto", "tables", "gemm"] = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` documents by ``q . v``: (scores float32 (nq, k) descending, rows int64), ties by
    lowest row; missing entries (k > n_docs) are (-inf, -1).

    ``docs`` are float32, int8 (``int8_asym`` codes, with the query already scaled by the step),
    uint16 holding bfloat16 bit patterns, or :class:`PackedCodes`. ``threads`` is the number of
    threads of the call (BLAS itself runs single-threaded in each). From :data:`DIRECT_QUERIES` queries on, blocks are decoded to
    float32 once and multiplied by all queries in one GEMM; below, each row is dotted with each
    query directly. Packed codes of at most 4 bits go through register lookup tables
    (:mod:`.lut16`) whenever the CPU has them -- faster than the GEMM even for a batch -- and
    otherwise through byte lookup tables (:mod:`.lut`) while ``queries x bits`` stays below
    :data:`BYTE_TABLES_UP_TO` (or below :data:`DIRECT_QUERIES` queries, whatever the bits);
    ``path`` forces "tables" or "gemm" (for measurements).
    """
    topk.check_k(k)
    if path not in ("auto", "tables", "gemm"):
        raise VespaQuantError(f"path must be auto, tables or gemm, got {path!r}")
    queries, docs = _check(queries, docs)
    if isinstance(docs, PackedCodes):
        # Register tables cost ~bits per query and document, the decoded GEMM ~1 per block shared by
        # all queries: for big batches the GEMM wins (1M docs x 1000 queries, 4 bits: 5.5 s vs 12.9 s).
        registers = docs.nibbles is not None and len(queries) * docs.bits < TABLES_UP_TO
        byte_tables = docs.nibbles is None and len(queries) * docs.bits < BYTE_TABLES_UP_TO
        tables = registers or byte_tables or len(queries) < DIRECT_QUERIES
        if path == "tables" or (path == "auto" and tables):
            return _tables_topk(queries, docs, k, threads)
    parts = topk.threads_for(threads, docs.shape[0])
    if isinstance(docs, np.ndarray) and len(queries) < DIRECT_QUERIES:
        return _direct(queries, docs, k, parts)
    results = []
    with _blas_limit(1):
        for s in topk.query_chunks(len(queries)):
            results.append(_gemm(queries[s:s + topk.QUERY_CHUNK], docs, k, parts))
    return topk.joined(results, k, np.float32)


def dot_scores_at(queries: np.ndarray, docs: np.ndarray, rows: np.ndarray, *,
                  threads: int | None = None) -> np.ndarray:
    """``q . v`` of the candidate ``rows`` (nq, m) of each query (float64 sums, float32 out);
    -1 -> -inf. The rescoring phase of a two-phase search: reads only the candidates' vectors."""
    queries, cells = _check(queries, docs)
    if isinstance(cells, PackedCodes):
        raise VespaQuantError("rescore packed codes with lut_scores_at (tables from PackedCodes.tables)")
    rows = topk.check_rows(rows, len(queries), len(cells))
    scores = np.full(rows.shape, -np.inf, dtype=np.float32)
    parts = topk.threads_for(threads, rows.size)
    topk.run_parts(lambda part: _dot_at(queries, cells, rows, scores, *topk.span(part, parts, len(rows))), parts)
    return scores
