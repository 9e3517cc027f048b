"""Streaming exact top-k shared by the scan kernels (:mod:`vespa_quant.engine.kernels`).

Per (thread part, query) a buffer of (key, row) pairs holds every candidate whose key beats the
threshold, the k-th best key seen so far; when the buffer is full it is cut back to the best k
(a quickselect on distinct (key, position) ranks) and the threshold rises. Larger keys are better (Hamming passes negated
distances). Rows arrive in ascending order within a part, so among equal keys the earlier row is
kept and a later row needs a strictly better key: that is the engine's tie rule (lowest row wins),
and :func:`finish` sorts the merged parts by (key descending, row ascending).

Threads: each part is a GIL-free numba function scanning its own row range into its own buffers,
run on a shared pool of Python threads (:func:`run_parts`). numba's own parallel layers were
measured here at 4-8 ms per launch (OpenMP) and milliseconds of wake-up on a busy machine
(workqueue, which also may not be entered from two Python threads at once); a pool task costs
tens of microseconds, and any caller thread may scan concurrently.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numba import njit, types
from numba.extending import intrinsic, overload

from vespa_quant.errors import VespaQuantError

INT32_MIN = np.iinfo(np.int32).min
QUERY_CHUNK = 1024
"""Queries per pass of a scan: bounds the candidate buffers (and a GEMM's score block) whatever the
batch size."""
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
"""Threads of a scan by default: the cores this process may run on."""
DOCS_PER_PART = 32768
_pool: list[ThreadPoolExecutor] = []


def run_parts(work: Callable[[int], None], parts: int) -> None:
    """``work(part)`` for every part: part 0 on the calling thread, the others on the pool.

    The caller scans too instead of only waiting: one thread fewer to wake per call, which is most
    of the cost of splitting a single query's scan (a few milliseconds at 1M documents).
    """
    if parts == 1:
        work(0)
        return
    if not _pool:
        _pool.append(ThreadPoolExecutor(max_workers=max(CORES, 2), thread_name_prefix="vespa-quant-scan"))
    others = [_pool[0].submit(work, part) for part in range(1, parts)]
    try:
        work(0)
    finally:
        for done in others:
            done.result()


def span(part: int, parts: int, n: int, align: int = 1) -> tuple[int, int]:
    """Items ``[first, last)`` of ``part`` when ``n`` items are split into contiguous parts whose
    bounds are multiples of ``align``."""
    units = -(-n // align)
    return min(n, part * units // parts * align), min(n, (part + 1) * units // parts * align)


def query_chunks(n_queries: int) -> range:
    return range(0, n_queries, QUERY_CHUNK)


def joined(results: list[tuple[np.ndarray, np.ndarray]], k: int, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate per-chunk (keys, rows) results; an empty batch gives (0, k) arrays."""
    if not results:
        return np.empty((0, k), dtype=dtype), np.empty((0, k), dtype=np.int64)
    return np.concatenate([r[0] for r in results]), np.concatenate([r[1] for r in results])


def capacity(k: int) -> int:
    """Buffer slots per (part, query): room for k survivors plus a batch of new candidates."""
    return 2 * k + 64


def buffers(parts: int, nq: int, k: int, dtype: type) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(keys, rows, count, threshold) for ``parts`` x ``nq`` empty buffers."""
    low = INT32_MIN if dtype is np.int32 else -np.inf
    slots = capacity(k)
    return (np.empty((parts, nq, slots), dtype=dtype), np.empty((parts, nq, slots), dtype=np.int64),
            np.zeros((parts, nq), dtype=np.int64), np.full((parts, nq), low, dtype=dtype))


def threads_for(threads: int | None, n_docs: int) -> int:
    """Parts to split a scan of ``n_docs`` documents into: ``threads`` (default :data:`CORES`), but
    at least :data:`DOCS_PER_PART` documents each -- below that, waking a second thread costs more
    than the scan (and on a busy machine, milliseconds)."""
    wanted = CORES if threads is None else threads
    if wanted < 1:
        raise VespaQuantError(f"threads must be >= 1, got {threads}")
    return max(1, min(wanted, n_docs // DOCS_PER_PART))


def check_k(k: int) -> None:
    if k < 1:
        raise VespaQuantError(f"k must be >= 1, got {k}")


def check_rows(rows: np.ndarray, n_queries: int, n_docs: int) -> np.ndarray:
    """Candidate rows of a rescoring call as (n_queries, m) int64 in [-1, n_docs); -1 is absent."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.ndim != 2 or len(rows) != n_queries:
        raise VespaQuantError(f"candidate rows must be ({n_queries}, m), got shape {rows.shape}")
    if rows.size and (rows.max() >= n_docs or rows.min() < -1):
        raise VespaQuantError(f"candidate rows must be in [-1, {n_docs}), got [{rows.min()}, {rows.max()}]")
    return rows


@intrinsic
def _float_bits(typingctx, value):
    """The IEEE-754 bits of a float32, as a uint32."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.uint32))
    return types.uint32(types.float32), codegen


def _ascending(key):
    """A uint64 that orders like ``key`` (float32 or int32)."""


@overload(_ascending)
def _ascending_impl(key):
    if key == types.float32:
        def order(key):
            bits = np.uint64(_float_bits(key))
            return bits ^ np.uint64(0xFFFFFFFF) if bits >> np.uint64(31) else bits | np.uint64(0x80000000)
        return order
    return lambda key: np.uint64(np.uint32(key) ^ np.uint32(0x80000000))


@njit(cache=True, nogil=True)
def _ranks(keys, count):
    """Distinct uint64s ascending in (key descending, position ascending) for ``keys[:count]``."""
    ranks = np.empty(count, dtype=np.uint64)
    for i in range(count):
        ranks[i] = ((np.uint64(0xFFFFFFFF) - _ascending(keys[i])) << np.uint64(32)) | np.uint64(i)
    return ranks


@njit(cache=True, nogil=True)
def _kth_smallest(values, k):
    """The k-th smallest (1-based) of distinct ``values``, reordering them (Hoare quickselect)."""
    low, high, target = 0, values.shape[0] - 1, k - 1
    while low < high:
        mid = (low + high) // 2
        a, b, c = values[low], values[mid], values[high]
        pivot = max(min(a, b), min(max(a, b), c))
        i, j = low, high
        while i <= j:
            while values[i] < pivot:
                i += 1
            while values[j] > pivot:
                j -= 1
            if i <= j:
                values[i], values[j] = values[j], values[i]
                i += 1
                j -= 1
        if target <= j:
            high = j
        elif target >= i:
            low = i
        else:
            break
    return values[target]


@njit(cache=True, nogil=True)
def _heapsort(values, n):
    """Sort ``values[:n]`` ascending in place."""
    for start in range(n // 2 - 1, -1, -1):
        _sift(values, start, n)
    for end in range(n - 1, 0, -1):
        values[0], values[end] = values[end], values[0]
        _sift(values, 0, end)


@njit(cache=True, nogil=True)
def _sift(values, root, end):
    while 2 * root + 1 < end:
        child = 2 * root + 1
        if child + 1 < end and values[child + 1] > values[child]:
            child += 1
        if values[root] >= values[child]:
            return
        values[root], values[child] = values[child], values[root]
        root = child


@njit(cache=True, nogil=True)
def _compact(keys, rows, count, k):
    """Keep the best ``k`` of a full buffer in place, in row order; returns (k, new threshold)."""
    ranks = _ranks(keys, count)
    cut = _kth_smallest(ranks.copy(), k)
    kept = 0
    for i in range(count):
        if ranks[i] <= cut:
            keys[kept] = keys[i]
            rows[kept] = rows[i]
            kept += 1
    threshold = keys[0]
    for i in range(1, kept):
        threshold = min(threshold, keys[i])
    return kept, threshold


@njit(cache=True, nogil=True)
def push(keys, rows, count, threshold, part, q, key, row, k):
    """Add a candidate the caller found above ``threshold[part, q]``."""
    c = count[part, q]
    keys[part, q, c] = key
    rows[part, q, c] = row
    c += 1
    if c == keys.shape[2]:
        c, threshold[part, q] = _compact(keys[part, q], rows[part, q], c, k)
    count[part, q] = c


@njit(cache=True, nogil=True)
def _beats_any(row, threshold):
    """Whether any query's score beats its threshold: one vectorised pass, as few rows do."""
    hit = False
    for q in range(row.shape[0]):
        hit |= row[q] > threshold[q]
    return hit


@njit(cache=True, nogil=True)
def push_block(scores, first_row, part, keys, rows, count, threshold, k):
    """Offer an (m, nq) block of scores (document-major, as a GEMM of documents by queries writes
    it) for rows ``first_row..first_row+m`` to ``part``'s buffers.

    Runs without the GIL, so each thread of a GEMM scan updates its own part concurrently.
    """
    for i in range(scores.shape[0]):
        if not _beats_any(scores[i], threshold[part]):
            continue
        for q in range(scores.shape[1]):
            if scores[i, q] > threshold[part, q]:
                push(keys, rows, count, threshold, part, q, scores[i, q], first_row + i, k)


@njit(cache=True, nogil=True)
def _merge_query(keys, rows, count, q, k, out_keys, out_rows):
    total = 0
    for p in range(keys.shape[0]):
        total += count[p, q]
    all_keys = np.empty(total, dtype=keys.dtype)
    all_rows = np.empty(total, dtype=np.int64)
    at = 0
    for p in range(keys.shape[0]):
        for i in range(count[p, q]):
            all_keys[at] = keys[p, q, i]
            all_rows[at] = rows[p, q, i]
            at += 1
    ranks = _ranks(all_keys, total)
    kept = total
    if total > k:
        cut = _kth_smallest(ranks.copy(), k)
        kept = 0
        for i in range(total):
            if ranks[i] <= cut:
                ranks[kept] = ranks[i]
                kept += 1
    _heapsort(ranks, kept)
    for i in range(kept):
        position = np.int64(ranks[i] & np.uint64(0xFFFFFFFF))
        out_keys[q, i] = all_keys[position]
        out_rows[q, i] = all_rows[position]


@njit(cache=True, nogil=True)
def _finish(keys, rows, count, out_keys, out_rows):
    for q in range(keys.shape[1]):
        _merge_query(keys, rows, count, q, out_keys.shape[1], out_keys, out_rows)


def finish(keys: np.ndarray, rows: np.ndarray, count: np.ndarray, k: int, pad: float) -> tuple[np.ndarray, np.ndarray]:
    """Merge every part's buffer per query: (keys, rows) (nq, k), key descending then row ascending;
    missing entries are (``pad``, -1)."""
    out_keys = np.full((keys.shape[1], k), pad, dtype=keys.dtype)
    out_rows = np.full((keys.shape[1], k), -1, dtype=np.int64)
    _finish(keys, rows, count, out_keys, out_rows)
    return out_keys, out_rows
