"""Exact, memory-bounded top-k scans of the in-process engine: Hamming, lookup tables, dot products.

Every kernel streams over documents in blocks that stay in cache, scores each block against the
queries, and keeps per query and thread only the candidates above the k-th best so far
(:mod:`vespa_quant.engine.topk`): no (n_queries x n_docs) array exists. Threads split the documents
into contiguous row ranges; among equal scores the lowest row wins, and results are sorted by
(score, row).

The scores are the quantizers' own (``vespa_quant.quantize``), in float32:

- 1- and 2-bit methods score ``sum_i q_i T[i, code_i]`` for a per-dimension table; with the codes
  packed ``8/bits`` dimensions to a byte, that is one read per byte of a per-query 256-entry lookup
  table summing the dimensions of the byte (the product-quantization ADC trick, Jegou et al. 2011),
  i.e. 48 (1-bit) or 96 (2-bit) reads per document at 384 dims instead of 384 multiplies.
- int8, float32 and bfloat16 score ``q . v``: float32 BLAS GEMMs over decoded blocks.
- binary_hamming ranks by Hamming distance: XOR + POPCNT over 64-bit words.

Each kernel is compiled by numba on its first call in a fresh install (2-20 s, once; the machine
code is cached next to this file, later processes load it in ~0.1 s).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

from vespa_quant.engine import topk
from vespa_quant.engine.dot import dot_scores_at, dot_topk
from vespa_quant.errors import VespaQuantError

BLOCK_DOCS = 64
"""Documents per Hamming block, stored word-major so the distance loop vectorises (VPOPCNTQ)."""
LUT_BLOCK_DOCS = 256
"""Documents per lookup-table block: their codes (<= 24 KiB) stay in L1 while every query reads them."""
QUERY_CHUNK = 1024
"""Queries per pass: bounds the candidate buffers (and the GEMM score block) whatever the batch."""
DOT_BLOCK_BYTES = 4 << 20
"""Float32 bytes of one document block of the GEMM path (fits the 2 MiB L2s of two cores)."""
HAMMING_PAD = np.iinfo(np.int32).max

__all__ = ["PreparedBits", "build_luts", "dot_scores_at", "dot_topk", "hamming_topk", "lut_scores_at",
           "lut_topk", "pack_codes", "prepare_bits"]


@intrinsic
def _popcount(typingctx, value):  # type: ignore[no-untyped-def]
    """LLVM ``ctpop`` of a uint64: POPCNT, or VPOPCNTQ in a vectorised loop."""
    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.ctpop(args[0])
    return types.uint64(types.uint64), codegen


def _chunks(n_queries: int) -> range:
    return range(0, n_queries, QUERY_CHUNK)


def _joined(results: list[tuple[np.ndarray, np.ndarray]], k: int, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    if not results:
        return np.empty((0, k), dtype=dtype), np.empty((0, k), dtype=np.int64)
    return np.concatenate([r[0] for r in results]), np.concatenate([r[1] for r in results])


# --- Hamming -------------------------------------------------------------------------------

@dataclass(frozen=True)
class PreparedBits:
    """Packed document bits in the scan layout: (blocks, words, BLOCK_DOCS) uint64.

    Word-major within each block of 64 documents, so the distance loop reads contiguous words of
    64 documents at a time; bytes are zero-padded to whole words (XOR of padding is 0), so any
    ``nbytes`` works. Build it once per corpus with :func:`prepare_bits`.
    """

    words: np.ndarray
    n_docs: int
    nbytes: int


def _padded_words(bits: np.ndarray, rows: int) -> np.ndarray:
    raw = np.ascontiguousarray(bits).view(np.uint8)
    padded = np.zeros((rows, -(-raw.shape[1] // 8) * 8), dtype=np.uint8)
    padded[:len(raw), :raw.shape[1]] = raw
    return padded.view(np.uint64)


def prepare_bits(doc_bits: np.ndarray) -> PreparedBits:
    """(n, nbytes) int8/uint8 packed bits -> :class:`PreparedBits` (one copy of the corpus bits)."""
    if doc_bits.ndim != 2 or doc_bits.dtype.itemsize != 1:
        raise VespaQuantError(f"doc bits must be (n, nbytes) int8/uint8, got {doc_bits.dtype} {doc_bits.shape}")
    n, nbytes = doc_bits.shape
    blocks = max(1, -(-n // BLOCK_DOCS))
    words = _padded_words(doc_bits, blocks * BLOCK_DOCS)
    layout = words.reshape(blocks, BLOCK_DOCS, words.shape[1]).transpose(0, 2, 1)
    return PreparedBits(np.ascontiguousarray(layout), n, nbytes)


@njit(cache=True)
def _block_distances(query_words, block, distance):  # type: ignore[no-untyped-def]
    """Distances of one query to the 64 documents of a block; returns the smallest."""
    word = query_words[0]
    for i in range(BLOCK_DOCS):
        distance[i] = _popcount(word ^ block[0, i])
    for w in range(1, query_words.shape[0]):
        word = query_words[w]
        for i in range(BLOCK_DOCS):
            distance[i] += _popcount(word ^ block[w, i])
    nearest = distance[0]
    for i in range(1, BLOCK_DOCS):
        nearest = min(nearest, distance[i])
    return nearest


@njit(cache=True)
def _hamming_part(query_words, blocks, first, last, n_docs, k, part,  # type: ignore[no-untyped-def]
                  keys, rows, count, threshold):
    distance = np.empty(BLOCK_DOCS, dtype=np.int64)
    for b in range(first, last):
        block = blocks[b]
        for q in range(query_words.shape[0]):
            if -_block_distances(query_words[q], block, distance) <= threshold[part, q]:
                continue
            for i in range(BLOCK_DOCS):
                key = np.int32(-distance[i])
                row = b * BLOCK_DOCS + i
                if key > threshold[part, q] and row < n_docs:
                    topk.push(keys, rows, count, threshold, part, q, key, row, k)


@njit(parallel=True, cache=True)
def _hamming_scan(query_words, blocks, n_docs, k, parts, keys, rows, count, threshold):  # type: ignore[no-untyped-def]
    n_blocks = blocks.shape[0]
    for part in prange(parts):
        _hamming_part(query_words, blocks, part * n_blocks // parts, (part + 1) * n_blocks // parts,
                      n_docs, k, part, keys, rows, count, threshold)


def hamming_topk(query_bits: np.ndarray, doc_bits: np.ndarray | PreparedBits, k: int, *,
                 threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per query the ``k`` nearest documents in Hamming distance: (distances int32, rows int64).

    Sorted by (distance, row); entries past the corpus (k > n_docs) are (2**31 - 1, -1). Pass a
    :class:`PreparedBits` to avoid laying out the corpus again on every call.
    """
    topk.check_k(k)
    docs = doc_bits if isinstance(doc_bits, PreparedBits) else prepare_bits(doc_bits)
    if query_bits.ndim != 2 or query_bits.shape[1] != docs.nbytes:
        raise VespaQuantError(f"query bits have shape {query_bits.shape}, documents {docs.nbytes} bytes")
    words = _padded_words(query_bits, len(query_bits))
    parts = topk.threads_for(threads, docs.words.shape[0])
    results = []
    with topk.LAUNCH_LOCK:
        for s in _chunks(len(words)):
            chunk = words[s:s + QUERY_CHUNK]
            state = topk.buffers(parts, len(chunk), k, np.int32)
            _hamming_scan(chunk, docs.words, docs.n_docs, k, parts, *state)
            results.append(topk.finish(*state[:3], k, topk.INT32_MIN))
    keys, rows = _joined(results, k, np.int32)
    return np.where(rows >= 0, -keys.astype(np.int64), HAMMING_PAD).astype(np.int32), rows


# --- lookup tables (ADC) -------------------------------------------------------------------

def _dims_per_byte(bits: int) -> tuple[int, int]:
    """(stored bits per code, codes per byte); 3-bit codes are stored as 4-bit nibbles."""
    if bits not in (1, 2, 3, 4, 8):
        raise VespaQuantError(f"bits per code must be 1, 2, 3, 4 or 8, got {bits}")
    stored = 4 if bits == 3 else bits
    return stored, 8 // stored


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """(n, d) codes < 2**bits -> (n, ceil(d / (8/bits))) uint8, first dimension in the high bits.

    For ``bits=1`` this is ``numpy.packbits`` (Vespa's ``unpack_bits`` order), so sign bits stored
    for Hamming search are already packed codes.
    """
    stored, per = _dims_per_byte(bits)
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise VespaQuantError(f"codes must be (n, d), got shape {codes.shape}")
    if codes.size and (codes.min() < 0 or codes.max() >= 1 << bits):
        raise VespaQuantError(f"codes must be in [0, {1 << bits}) for {bits} bits, got [{codes.min()}, {codes.max()}]")
    n, d = codes.shape
    nbytes = -(-d // per)
    padded = np.zeros((n, nbytes * per), dtype=np.uint8)
    padded[:, :d] = codes
    grouped = padded.reshape(n, nbytes, per)
    packed = np.zeros((n, nbytes), dtype=np.uint8)
    for t in range(per):
        packed |= grouped[:, :, t] << np.uint8(8 - stored * (t + 1))
    return packed


def build_luts(tables: np.ndarray, bits: int) -> np.ndarray:
    """(nq, d, 2**bits) per-dimension score tables -> (nq, nbytes, 256) float32 lookup tables.

    ``luts[q, j, v]`` sums ``tables[q, i, code_i(v)]`` over the dimensions ``i`` packed in byte
    ``j`` (:func:`pack_codes` order); padding dimensions contribute 0.
    """
    stored, per = _dims_per_byte(bits)
    tables = np.asarray(tables)
    if tables.ndim != 3 or tables.shape[2] != 1 << bits:
        raise VespaQuantError(f"tables must be (nq, d, {1 << bits}) for {bits} bits, got shape {tables.shape}")
    nq, d, levels = tables.shape
    nbytes = -(-d // per)
    padded = np.zeros((nq, nbytes * per, 1 << stored), dtype=np.float64)
    padded[:, :d, :levels] = tables
    values = np.arange(256)
    luts = np.zeros((nq, nbytes, 256), dtype=np.float64)
    for t in range(per):
        code = (values >> (8 - stored * (t + 1))) & ((1 << stored) - 1)
        luts += padded[:, t::per, :][:, :, code]
    return luts.astype(np.float32)


@njit(cache=True)
def _lut_sum(lut, codes, i):  # type: ignore[no-untyped-def]
    total = np.float32(0.0)
    for j in range(codes.shape[1]):
        total += lut[j, codes[i, j]]
    return total


@njit(cache=True)
def _affine(total, i, q, doc_scale, doc_bias, query_bias):  # type: ignore[no-untyped-def]
    """``doc_scale[i] * total + doc_bias[i] * query_bias[q]`` when the factors are given."""
    if doc_scale.shape[0] == 0:
        return total
    return doc_scale[i] * total + doc_bias[i] * query_bias[q]


@njit(cache=True)
def _lut_part(luts, codes, first, last, k, part, doc_scale, doc_bias, query_bias,  # type: ignore[no-untyped-def]
              keys, rows, count, threshold):
    """Scan rows ``first..last``; four documents per step keep four independent float chains."""
    n_bytes = codes.shape[1]
    for start in range(first, last, LUT_BLOCK_DOCS):
        stop = min(start + LUT_BLOCK_DOCS, last)
        for q in range(luts.shape[0]):
            lut = luts[q]
            i = start
            while i + 4 <= stop:
                a0 = np.float32(0.0)
                a1 = np.float32(0.0)
                a2 = np.float32(0.0)
                a3 = np.float32(0.0)
                for j in range(n_bytes):
                    a0 += lut[j, codes[i, j]]
                    a1 += lut[j, codes[i + 1, j]]
                    a2 += lut[j, codes[i + 2, j]]
                    a3 += lut[j, codes[i + 3, j]]
                group = (a0, a1, a2, a3)
                for g in range(4):
                    key = _affine(group[g], i + g, q, doc_scale, doc_bias, query_bias)
                    if key > threshold[part, q]:
                        topk.push(keys, rows, count, threshold, part, q, key, i + g, k)
                i += 4
            for r in range(i, stop):
                key = _affine(_lut_sum(lut, codes, r), r, q, doc_scale, doc_bias, query_bias)
                if key > threshold[part, q]:
                    topk.push(keys, rows, count, threshold, part, q, key, r, k)


@njit(parallel=True, cache=True)
def _lut_scan(luts, codes, k, parts, doc_scale, doc_bias, query_bias,  # type: ignore[no-untyped-def]
              keys, rows, count, threshold):
    n = codes.shape[0]
    for part in prange(parts):
        _lut_part(luts, codes, part * n // parts, (part + 1) * n // parts, k, part,
                  doc_scale, doc_bias, query_bias, keys, rows, count, threshold)


@njit(parallel=True, cache=True)
def _lut_at(luts, codes, rows, doc_scale, doc_bias, query_bias):  # type: ignore[no-untyped-def]
    out = np.full(rows.shape, -np.inf, dtype=np.float32)
    for q in prange(rows.shape[0]):
        for m in range(rows.shape[1]):
            r = rows[q, m]
            if r >= 0:
                out[q, m] = _affine(_lut_sum(luts[q], codes, r), r, q, doc_scale, doc_bias, query_bias)
    return out


def _lut_inputs(luts: np.ndarray, codes: np.ndarray, doc_scale: np.ndarray | None, doc_bias: np.ndarray | None,
                query_bias: np.ndarray | None) -> tuple[np.ndarray, ...]:
    luts = np.ascontiguousarray(luts, dtype=np.float32)
    codes = np.ascontiguousarray(codes).view(np.uint8)
    if luts.ndim != 3 or luts.shape[2] != 256 or codes.ndim != 2 or luts.shape[1] != codes.shape[1]:
        raise VespaQuantError(f"luts {luts.shape} must be (nq, nbytes, 256) for codes {codes.shape}")
    if (doc_scale is None) != (doc_bias is None) or (doc_bias is None) != (query_bias is None):
        raise VespaQuantError("doc_scale, doc_bias and query_bias go together (all or none)")
    if doc_scale is None:
        none = np.empty(0, dtype=np.float32)
        return luts, codes, none, none, none
    factors = [np.ascontiguousarray(a, dtype=np.float32) for a in (doc_scale, doc_bias, query_bias)]
    if factors[0].shape != (len(codes),) or factors[1].shape != (len(codes),) or factors[2].shape != (len(luts),):
        raise VespaQuantError(f"doc_scale/doc_bias need {len(codes)} values and query_bias {len(luts)}")
    return (luts, codes, *factors)


def _offset(scores: np.ndarray, query_offset: np.ndarray | None) -> np.ndarray:
    if query_offset is None:
        return scores
    return (scores + np.asarray(query_offset, dtype=np.float32)[:, None]).astype(np.float32)


def lut_topk(luts: np.ndarray, codes: np.ndarray, k: int, *, doc_scale: np.ndarray | None = None,
             doc_bias: np.ndarray | None = None, query_bias: np.ndarray | None = None,
             query_offset: np.ndarray | None = None,
             threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of ``doc_scale[n] * sum_j luts[q, j, codes[n, j]] + doc_bias[n] * query_bias[q]
    + query_offset[q]``: (scores float32 (nq, k) descending, rows int64), ties by lowest row.

    The per-document factors are the RaBitQ-style estimator's (Gao & Long 2024): without them the
    score is the plain table sum. The per-query offset does not change the ranking, so it is added
    to the k results only. Missing entries (k > n_docs) are (-inf, -1).
    """
    topk.check_k(k)
    luts, codes, scale, bias, qbias = _lut_inputs(luts, codes, doc_scale, doc_bias, query_bias)
    parts = topk.threads_for(threads, -(-len(codes) // LUT_BLOCK_DOCS))
    results = []
    with topk.LAUNCH_LOCK:
        for s in _chunks(len(luts)):
            chunk = luts[s:s + QUERY_CHUNK]
            state = topk.buffers(parts, len(chunk), k, np.float32)
            _lut_scan(chunk, codes, k, parts, scale, bias, qbias[s:s + QUERY_CHUNK] if len(qbias) else qbias, *state)
            results.append(topk.finish(*state[:3], k, np.float32(-np.inf)))
    scores, rows = _joined(results, k, np.float32)
    return _offset(scores, query_offset), rows


def lut_scores_at(luts: np.ndarray, codes: np.ndarray, rows: np.ndarray, *, doc_scale: np.ndarray | None = None,
                  doc_bias: np.ndarray | None = None, query_bias: np.ndarray | None = None,
                  query_offset: np.ndarray | None = None) -> np.ndarray:
    """The :func:`lut_topk` score of the candidate ``rows`` (nq, m) of each query; -1 -> -inf.

    The second phase of a two-phase search: only the first phase's candidates are read.
    """
    luts, codes, scale, bias, qbias = _lut_inputs(luts, codes, doc_scale, doc_bias, query_bias)
    rows = topk.check_rows(rows, len(luts), len(codes))
    with topk.LAUNCH_LOCK:
        scores = _lut_at(luts, codes, rows, scale, bias, qbias)
    return _offset(scores, query_offset)
