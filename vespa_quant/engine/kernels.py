"""Exact, memory-bounded top-k scans of the in-process engine: the public kernel API.

Every kernel streams over documents in blocks that stay in cache, scores each block against the
queries, and keeps per query and thread only the candidates above the k-th best so far
(:mod:`.topk`): no (n_queries x n_docs) array exists. Threads (``threads``, default all) split the
documents into contiguous row ranges; among equal scores the lowest row wins everywhere, and
results are sorted by (score, row). Scores are float32 and equal the float64 reference of the
quantizers' own scores (``vespa_quant.quantize``) to float32 rounding:

- :func:`hamming_topk` -- binary_hamming's Hamming distance (XOR + POPCNT), :mod:`.hamming`;
- :func:`lut_topk` -- any per-dimension table score ``sum_i tables[q, i, code_i]`` with optional
  RaBitQ-style per-document factors, through per-byte lookup tables (ADC), :mod:`.lut`;
- :func:`dot_topk` -- ``q . v`` over float32 / int8 / bfloat16 cells by float32 GEMM blocks, or
  over :class:`PackedCodes` (1- and 2-bit methods: ``levels[i, code_i]``), choosing lookup tables
  for a few queries and decode + GEMM for a batch, :mod:`.dot`;
- :func:`lut_scores_at`, :func:`dot_scores_at` -- the same scores at given candidate rows, for the
  second phase of a two-phase search.

How the methods map: binary_asym / binary_median_asym are ``PackedCodes(bits, [-1, +1] levels, 1)``
scored with the (centred) query; the 2-bit methods are ``PackedCodes(pack_codes(2 hi + lo, 2),
method.table(constants), 2)``; int8_asym is ``dot_topk(q * step, codes)``; float32 / bfloat16 are
``dot_topk`` on the float32 cells / their upper 16 bits; binary_hamming is :func:`hamming_topk`
(closeness ``1 / (1 + d)`` keeps its order); binary_rescore is :func:`hamming_topk` for ``k1`` then
:func:`dot_scores_at`.

numba compiles each kernel on its first call after install (about 25 s for all of them on the
2-core machine, once; the machine code is cached next to the modules, and a later process loads it
in about a second).
"""

from __future__ import annotations

from vespa_quant.engine.dot import DIRECT_QUERIES, PackedCodes, dot_scores_at, dot_topk
from vespa_quant.engine.hamming import BLOCK_DOCS, HAMMING_PAD, PreparedBits, hamming_topk, prepare_bits
from vespa_quant.engine.lut import build_luts, lut_scores_at, lut_topk, pack_codes

__all__ = [
    "BLOCK_DOCS", "DIRECT_QUERIES", "HAMMING_PAD", "PackedCodes", "PreparedBits", "build_luts",
    "dot_scores_at", "dot_topk", "hamming_topk", "lut_scores_at", "lut_topk", "pack_codes", "prepare_bits",
]
