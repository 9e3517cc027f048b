"""Inner-product top-k and rescoring over stored vectors: float32, int8 codes, bfloat16 cells.

The score ``q . v`` of the float methods and of ``int8_asym`` (``(q * step) . code``) is a GEMM:
blocks of documents are decoded to float32 (int8 and bfloat16; float32 blocks are views) and
multiplied by the float32 queries with BLAS, never upcast to float64; the (queries x block) scores
go through the streaming top-k of :mod:`vespa_quant.engine.topk`, so memory stays at one block.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic, overload
from threadpoolctl import ThreadpoolController

from vespa_quant.engine import topk
from vespa_quant.errors import VespaQuantError

DOT_BLOCK_ROWS = 8192
"""Documents per GEMM block: few enough Python steps per scan, scores of 1024 queries in 32 MiB."""
QUERY_CHUNK = 1024
PARALLEL_PUSH_QUERIES = 8
"""Below this many queries the top-k update of a block runs on the calling thread (no launch)."""
_controller: list[ThreadpoolController] = []


@intrinsic
def _bitcast_float32(typingctx, value):  # type: ignore[no-untyped-def]
    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.bitcast(args[0], context.get_value_type(types.float32))
    return types.float32(types.uint32), codegen


def _to_float32(value):  # type: ignore[no-untyped-def]
    """A stored cell as float32; uint16 cells are bfloat16 bit patterns (the high half of a float32)."""


@overload(_to_float32)
def _to_float32_impl(value):  # type: ignore[no-untyped-def]
    if value == types.uint16:
        return lambda value: _bitcast_float32(np.uint32(value) << np.uint32(16))
    return lambda value: np.float32(value)


@njit(parallel=True, cache=True)
def _decode(docs, start, out):  # type: ignore[no-untyped-def]
    for r in prange(out.shape[0]):
        for i in range(out.shape[1]):
            out[r, i] = _to_float32(docs[start + r, i])


@njit(cache=True)
def _push_serial(scores, first_row, keys, rows, count, threshold, k):  # type: ignore[no-untyped-def]
    for q in range(scores.shape[0]):
        for i in range(scores.shape[1]):
            if scores[q, i] > threshold[0, q]:
                topk.push(keys, rows, count, threshold, 0, q, scores[q, i], first_row + i, k)


@njit(parallel=True, cache=True)
def _dot_at(queries, docs, rows):  # type: ignore[no-untyped-def]
    out = np.full(rows.shape, -np.inf, dtype=np.float32)
    for q in prange(rows.shape[0]):
        for m in range(rows.shape[1]):
            r = rows[q, m]
            if r >= 0:
                total = 0.0
                for i in range(queries.shape[1]):
                    total += queries[q, i] * _to_float32(docs[r, i])
                out[q, m] = total
    return out


def _blas_limit(threads: int | None):  # type: ignore[no-untyped-def]
    """BLAS thread limit for one call (restored on exit); ``None`` leaves BLAS as configured."""
    if not _controller:
        _controller.append(ThreadpoolController())
    return _controller[0].limit(limits=threads, user_api="blas")


def _check(queries: np.ndarray, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if docs.dtype not in (np.float32, np.int8, np.uint16):
        raise VespaQuantError(f"docs must be float32, int8 or uint16 (bfloat16 bits), got {docs.dtype}")
    if queries.ndim != 2 or docs.ndim != 2 or queries.shape[1] != docs.shape[1]:
        raise VespaQuantError(f"queries {queries.shape} and docs {docs.shape} must be (n, d) with the same d")
    return queries, np.ascontiguousarray(docs)


def _scan(queries: np.ndarray, docs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    state = topk.buffers(1, len(queries), k, np.float32)
    push = topk.push_block if len(queries) >= PARALLEL_PUSH_QUERIES else _push_serial
    decoded = None if docs.dtype == np.float32 else np.empty((min(DOT_BLOCK_ROWS, len(docs)), docs.shape[1]),
                                                             dtype=np.float32)
    scores = np.empty((len(queries), DOT_BLOCK_ROWS), dtype=np.float32)
    for start in range(0, len(docs), DOT_BLOCK_ROWS):
        stop = min(start + DOT_BLOCK_ROWS, len(docs))
        if decoded is None:
            block = docs[start:stop]
        else:
            block = decoded[:stop - start]
            _decode(docs, start, block)
        out = scores if stop - start == DOT_BLOCK_ROWS else np.empty((len(queries), stop - start), np.float32)
        np.matmul(queries, block.T, out=out)
        push(out, start, *state, k)
    return topk.finish(*state[:3], k, np.float32(-np.inf))


def dot_topk(queries: np.ndarray, docs: np.ndarray, k: int, *,
             threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` documents by ``q . v``: (scores float32 (nq, k) descending, rows int64), ties by
    lowest row; missing entries (k > n_docs) are (-inf, -1).

    ``docs`` are float32, int8 (``int8_asym`` codes, with the query already scaled by the step) or
    uint16 holding bfloat16 bit patterns. ``threads`` caps the BLAS and numba threads of the call.
    """
    topk.check_k(k)
    queries, docs = _check(queries, docs)
    results = []
    with topk.LAUNCH_LOCK, _blas_limit(threads):
        for s in range(0, len(queries), QUERY_CHUNK):
            results.append(_scan(queries[s:s + QUERY_CHUNK], docs, k))
    if not results:
        return np.empty((0, k), np.float32), np.empty((0, k), np.int64)
    return np.concatenate([r[0] for r in results]), np.concatenate([r[1] for r in results])


def dot_scores_at(queries: np.ndarray, docs: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``q . v`` of the candidate ``rows`` (nq, m) of each query (float64 sums, float32 out);
    -1 -> -inf. The rescoring phase of a two-phase search: reads only the candidates' vectors."""
    queries, docs = _check(queries, docs)
    rows = topk.check_rows(rows, len(queries), len(docs))
    with topk.LAUNCH_LOCK:
        return _dot_at(queries, docs, rows)
