"""Exact top-k of per-dimension table scores through per-byte lookup tables (ADC).

1- to 8-bit methods score ``sum_i q_i T[i, code_i]`` (or any per-query table ``tables[q, i, c]``).
With the codes packed ``8/bits`` dimensions per byte, a per-query table of 256 entries per byte
holds the summed contribution of that byte's dimensions, so a document costs one table read per
byte -- 48 reads (1-bit) or 96 (2-bit) at 384 dims instead of 384 multiply-adds: the
product-quantization asymmetric distance computation (Jegou, Douze & Schmid 2011). Sums are
float32; a block of 256 documents is scored against every query before moving on, so the codes
are read from memory once per batch.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from vespa_quant.engine import topk
from vespa_quant.errors import VespaQuantError

LUT_BLOCK_DOCS = 256
"""Documents per block: their codes (<= 24 KiB at 96 bytes) stay in L1 while every query reads them."""


def dims_per_byte(bits: int) -> tuple[int, int]:
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
    stored, per = dims_per_byte(bits)
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise VespaQuantError(f"codes must be (n, d), got shape {codes.shape}")
    if codes.size and (codes.min() < 0 or codes.max() >= 1 << bits):
        raise VespaQuantError(f"codes must be in [0, {1 << bits}) for {bits} bits, got [{codes.min()}, {codes.max()}]")
    n, d = codes.shape
    packed = np.zeros((n, -(-d // per)), dtype=np.uint8)
    _pack(np.ascontiguousarray(codes, dtype=np.uint8), stored, per, packed)
    return packed


@njit(parallel=True, cache=True)
def _pack(codes, stored, per, out):
    """One pass: code ``i`` of a row goes to byte ``i // per`` at shift ``8 - stored * (i % per + 1)``."""
    for r in prange(codes.shape[0]):
        for i in range(codes.shape[1]):
            out[r, i // per] |= np.uint8(codes[r, i] << (8 - stored * (i % per + 1)))


def build_luts(tables: np.ndarray, bits: int) -> np.ndarray:
    """(nq, d, 2**bits) per-dimension score tables -> (nq, nbytes, 256) float32 lookup tables.

    ``luts[q, j, v]`` sums ``tables[q, i, code_i(v)]`` over the dimensions ``i`` packed in byte
    ``j`` (:func:`pack_codes` order); padding dimensions contribute 0.
    """
    stored, per = dims_per_byte(bits)
    tables = np.asarray(tables)
    if tables.ndim != 3 or tables.shape[2] != 1 << bits:
        raise VespaQuantError(f"tables must be (nq, d, {1 << bits}) for {bits} bits, got shape {tables.shape}")
    return fold_tables(tables, stored, per, -(-tables.shape[1] // per)).astype(np.float32)


def fold_tables(tables: np.ndarray, stored: int, per: int, groups: int) -> np.ndarray:
    """(nq, d, levels) -> (nq, groups, 2**(stored*per)) float64: entry ``v`` of group ``g`` sums the
    tables of dimensions ``g*per .. g*per+per-1`` at the codes packed in ``v``, first dimension in
    the high bits. Built one dimension at a time from the last, each step prepending the next
    higher code field, so 256 entries cost ~2 x 256 additions (not 256 x per) with numpy's inner
    loop running over the entries built so far."""
    nq, d, levels = tables.shape
    padded = np.zeros((nq, groups * per, 1 << stored), dtype=np.float64)
    padded[:, :d, :levels] = tables
    grouped = padded.reshape(nq, groups, per, 1 << stored)
    folded = grouped[:, :, per - 1, :]
    for t in range(per - 2, -1, -1):
        folded = (grouped[:, :, t, :, None] + folded[:, :, None, :]).reshape(nq, groups, -1)
    return folded


@njit(cache=True, nogil=True)
def _lut_sum(lut, codes, i):
    total = np.float32(0.0)
    for j in range(codes.shape[1]):
        total += lut[j, codes[i, j]]
    return total


@njit(cache=True, nogil=True)
def _affine(total, i, q, doc_scale, doc_bias, query_bias):
    """``doc_scale[i] * total + doc_bias[i] * query_bias[q]`` when the factors are given."""
    if doc_scale.shape[0] == 0:
        return total
    return doc_scale[i] * total + doc_bias[i] * query_bias[q]


@njit(cache=True, nogil=True)
def _lut_part(luts, codes, first, last, k, part, doc_scale, doc_bias, query_bias,
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


@njit(cache=True, nogil=True)
def _lut_at(luts, codes, rows, doc_scale, doc_bias, query_bias, out, first, last):
    for q in range(first, last):
        for m in range(rows.shape[1]):
            r = rows[q, m]
            if r >= 0:
                out[q, m] = _affine(_lut_sum(luts[q], codes, r), r, q, doc_scale, doc_bias, query_bias)


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
    parts = topk.threads_for(threads, len(codes))
    results = []
    for s in topk.query_chunks(len(luts)):
        chunk = luts[s:s + topk.QUERY_CHUNK]
        state = topk.buffers(parts, len(chunk), k, np.float32)
        chunk_bias = qbias[s:s + topk.QUERY_CHUNK] if len(qbias) else qbias

        def scan(part: int) -> None:
            first, last = topk.span(part, parts, len(codes), LUT_BLOCK_DOCS)
            _lut_part(chunk, codes, first, last, k, part, scale, bias, chunk_bias, *state)
        topk.run_parts(scan, parts)
        results.append(topk.finish(*state[:3], k, -np.inf))
    scores, rows = topk.joined(results, k, np.float32)
    return _offset(scores, query_offset), rows


def lut_scores_at(luts: np.ndarray, codes: np.ndarray, rows: np.ndarray, *, doc_scale: np.ndarray | None = None,
                  doc_bias: np.ndarray | None = None, query_bias: np.ndarray | None = None,
                  query_offset: np.ndarray | None = None, threads: int | None = None) -> np.ndarray:
    """The :func:`lut_topk` score of the candidate ``rows`` (nq, m) of each query; -1 -> -inf.

    The second phase of a two-phase search: only the first phase's candidates are read.
    """
    luts, codes, scale, bias, qbias = _lut_inputs(luts, codes, doc_scale, doc_bias, query_bias)
    rows = topk.check_rows(rows, len(luts), len(codes))
    scores = np.full(rows.shape, -np.inf, dtype=np.float32)
    parts = topk.threads_for(threads, rows.size)
    topk.run_parts(lambda part: _lut_at(luts, codes, rows, scale, bias, qbias, scores,
                                        *topk.span(part, parts, len(rows))), parts)
    return _offset(scores, query_offset)
