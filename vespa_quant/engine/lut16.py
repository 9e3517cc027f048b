"""Exact table-score top-k with 16-entry float32 lookup tables held in AVX-512 registers.

The per-byte tables of :mod:`.lut` cost one memory read per byte and document. Split each byte
into its two nibbles instead: a nibble's table has 16 float32 entries -- exactly one 512-bit
register -- and ``VPERMPS`` looks up 16 documents at once, each lane indexed by the nibble of its
own document. This is faiss' "fast scan" (Andre et al. 2015, with 4-bit codes and ``PSHUFB`` on
8-bit quantized tables), kept exact by using float32 tables: twice as many lookups as bytes, but
16 per instruction, and the tables of a query (16 floats per nibble: 6 KiB for 384 1-bit dims)
stay in L1.

Documents are laid out once (:func:`prepare_nibbles`) as blocks of 16, 32-bit-word-major, so
lane ``i`` of word ``w`` holds bytes ``4w..4w+3`` of document ``i`` and shifting the word by
``4s`` puts nibble ``s`` in every lane's low bits (``VPERMPS`` reads only those). Works for codes of
1, 2 and 4 (and 3, stored as 4) bits, whose dimensions never straddle a nibble. Only used where
the CPU has AVX-512 (:data:`AVAILABLE`); elsewhere the byte tables of :mod:`.lut` are the path.
"""

from __future__ import annotations

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from vespa_quant.engine import lut, topk
from vespa_quant.engine.prefetch import CACHE_LINE, prefetch
from vespa_quant.errors import VespaQuantError

LANES = 16
AVAILABLE = bool(llvm.get_host_cpu_features().get("avx512f", False))
"""Whether this CPU runs the kernel (VPERMPS on 512-bit registers needs AVX-512F)."""
BLOCKS_PER_STEP = 16
"""Blocks of 16 documents scored per query before moving to the next query (256 documents; even)."""
PREFETCH_BLOCKS = 8
"""How far ahead the first query of a step requests blocks (:mod:`.prefetch`)."""


@intrinsic
def _score_pair(typingctx, out, luts, lut_at, words, word_at, n_words):
    """Table sums of two consecutive blocks (32 documents) into ``out[0:32]``.

    For each word ``w`` and shift ``s``, lane ``i`` adds ``luts.flat[lut_at + 16 (8w + s) +
    nibble_s(word_w of document i)]``. Each table load serves both blocks, and two accumulators per
    block (even and odd shifts) keep four independent add chains in flight.
    """
    def codegen(context, builder, signature, args):
        floats = ir.VectorType(ir.FloatType(), LANES)
        ints = ir.VectorType(ir.IntType(32), LANES)
        intp = context.get_value_type(types.intp)

        def base(i: int, at: ir.Value) -> ir.Value:
            return builder.gep(context.make_array(signature.args[i])(context, builder, args[i]).data, [at])

        def vector(pointer: ir.Value, kind: ir.Type) -> ir.Value:
            return builder.load(builder.bitcast(pointer, kind.as_pointer()), align=4)
        permute = cgutils.get_or_insert_function(builder.module, ir.FunctionType(floats, [floats, ints]),
                                                 "llvm.x86.avx512.permvar.sf.512")
        zero = ir.Constant(floats, [0.0] * LANES)
        acc = [cgutils.alloca_once_value(builder, zero) for _ in range(4)]
        lut_base, word_base = base(1, args[2]), base(3, args[4])
        second = builder.mul(args[5], ir.Constant(intp, LANES))
        with cgutils.for_range(builder, args[5]) as loop:
            word_at = builder.mul(loop.index, ir.Constant(intp, LANES))
            first_words = vector(builder.gep(word_base, [word_at]), ints)
            second_words = vector(builder.gep(word_base, [builder.add(word_at, second)]), ints)
            table_at = builder.mul(loop.index, ir.Constant(intp, 8 * LANES))
            for s in range(8):
                table = vector(builder.gep(lut_base, [builder.add(table_at, ir.Constant(intp, LANES * s))]), floats)
                for block, packed in enumerate((first_words, second_words)):
                    index = builder.lshr(packed, ir.Constant(ints, 4 * s)) if s else packed
                    slot = acc[2 * block + s % 2]
                    builder.store(builder.fadd(builder.load(slot), builder.call(permute, [table, index])), slot)
        out_base = base(0, ir.Constant(intp, 0))
        for block in range(2):
            total = builder.fadd(builder.load(acc[2 * block]), builder.load(acc[2 * block + 1]))
            target = builder.gep(out_base, [ir.Constant(intp, LANES * block)])
            builder.store(total, builder.bitcast(target, floats.as_pointer()), align=4)
        return context.get_dummy_value()
    return types.void(out, luts, types.intp, words, types.intp, types.intp), codegen


def prepare_nibbles(codes: np.ndarray) -> np.ndarray:
    """(n, nbytes) packed codes -> (blocks, words, 16) uint32: 16 documents per block, word-major,
    an even number of blocks (they are scored in pairs)."""
    codes = np.ascontiguousarray(codes).view(np.uint8)
    n, nbytes = codes.shape
    blocks, n_words = 2 * max(1, -(-n // (2 * LANES))), -(-nbytes // 4)
    padded = np.zeros((blocks * LANES, n_words * 4), dtype=np.uint8)
    padded[:n, :nbytes] = codes
    words = padded.view("<u4").reshape(blocks, LANES, n_words).transpose(0, 2, 1)
    return np.ascontiguousarray(words, dtype=np.uint32)


def nibble_luts(tables: np.ndarray, bits: int) -> np.ndarray:
    """(nq, d, 2**bits) tables -> (nq, words * 8, 16) float32: per 32-bit word and shift, the
    16-entry table of that nibble (the sum of its dimensions' table values)."""
    stored, per_byte = lut.dims_per_byte(bits)
    if stored == 8:
        raise VespaQuantError("nibble tables need codes of at most 4 bits")
    tables = np.asarray(tables)
    n_bytes = -(-tables.shape[1] // per_byte)
    n_words = -(-n_bytes // 4)
    by_nibble = lut.fold_tables(tables, stored, per_byte // 2, n_words * 8)
    # nibble 2j is the high half of byte j; a little-endian word's shift 4s reads byte s // 2,
    # high half when s is odd
    shift = np.arange(8)
    word_order = (np.arange(n_words)[:, None] * 8 + 2 * (shift // 2) + 1 - shift % 2).ravel()
    return np.ascontiguousarray(by_nibble[:, word_order], dtype=np.float32)


@njit(cache=True, fastmath={"nnan", "nsz"}, nogil=True)
def _largest(scores):
    """Vectorised max of a pair's 32 scores: most pairs hold no candidate and are skipped on it."""
    best = scores[0]
    for i in range(1, scores.shape[0]):
        best = max(best, scores[i])
    return best


@njit(cache=True, nogil=True)
def _nibble_part(luts, words, n_docs, first, last, k, part,
                 keys, rows, count, threshold):
    """Score block pairs ``first..last`` (even block numbers) for every query."""
    n_words = words.shape[1]
    per_query = luts.shape[1] * LANES
    scores = np.zeros(2 * LANES, dtype=np.float32)
    flat = words.reshape(-1)
    pair = 2 * n_words * LANES
    for start in range(first, last, BLOCKS_PER_STEP):
        stop = min(start + BLOCKS_PER_STEP, last)
        for q in range(luts.shape[0]):
            for b in range(start, stop, 2):
                ahead = (b + PREFETCH_BLOCKS) * n_words * LANES
                if q == 0 and ahead + pair <= flat.shape[0]:
                    for at in range(ahead, ahead + pair, CACHE_LINE // 4):
                        prefetch(flat, at)
                _score_pair(scores, luts, q * per_query, words, b * n_words * LANES, n_words)
                if _largest(scores) <= threshold[part, q]:
                    continue
                for i in range(2 * LANES):
                    row = b * LANES + i
                    if scores[i] > threshold[part, q] and row < n_docs:
                        topk.push(keys, rows, count, threshold, part, q, scores[i], row, k)


def nibble_topk(luts: np.ndarray, words: np.ndarray, n_docs: int, k: int, *,
                threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of the table sums of :func:`nibble_luts` over :func:`prepare_nibbles` documents:
    (scores float32 descending, rows int64), ties by lowest row, (-inf, -1) past the corpus."""
    if not AVAILABLE:
        raise VespaQuantError("this CPU has no AVX-512: use lut.lut_topk")
    topk.check_k(k)
    luts = np.ascontiguousarray(luts, dtype=np.float32)
    if luts.ndim != 3 or luts.shape[1:] != (words.shape[1] * 8, LANES):
        raise VespaQuantError(f"nibble tables {luts.shape} do not fit documents of {words.shape[1]} words")
    parts = topk.threads_for(threads, n_docs)
    results = []
    for s in topk.query_chunks(len(luts)):
        chunk = luts[s:s + topk.QUERY_CHUNK]
        state = topk.buffers(parts, len(chunk), k, np.float32)

        def scan(part: int) -> None:
            first, last = topk.span(part, parts, words.shape[0], 2)
            _nibble_part(chunk, words, n_docs, first, last, k, part, *state)
        topk.run_parts(scan, parts)
        results.append(topk.finish(*state[:3], k, -np.inf))
    return topk.joined(results, k, np.float32)
