"""Scan kernels against float64 numpy references: exact scores, same neighbours apart from ties,
and the tie rule (lowest row first) where scores are exactly equal."""

from __future__ import annotations

import numpy as np
import pytest

from vespa_quant.engine import kernels, lut16, topk
from vespa_quant.errors import VespaQuantError

RNG = np.random.default_rng(11)


@pytest.fixture(autouse=True)
def split_small_scans(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let ``threads=2`` really split these tiny corpora, so the merge of parts is exercised."""
    monkeypatch.setattr(topk, "DOCS_PER_PART", 1)


def reference_topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(nq, n) float64 scores -> top-k by (score descending, row ascending), padded (-inf, -1)."""
    nq, n = scores.shape
    rows = np.full((nq, k), -1, dtype=np.int64)
    out = np.full((nq, k), -np.inf)
    for q in range(nq):
        order = np.lexsort((np.arange(n), -scores[q]))[:k]
        rows[q, :len(order)] = order
        out[q, :len(order)] = scores[q, order]
    return out, rows


def assert_same_topk(scores: np.ndarray, rows: np.ndarray, reference: np.ndarray, k: int,
                     tol: float = 1e-5) -> None:
    """Scores equal the reference at the returned rows, are sorted, and the rows are the reference's
    top-k except for documents tied (within ``tol``) with the k-th score."""
    ref_scores, ref_rows = reference_topk(reference, k)
    assert scores.shape == rows.shape == (len(reference), k)
    for q in range(len(reference)):
        valid = rows[q] >= 0
        assert valid.sum() == min(k, reference.shape[1])
        np.testing.assert_allclose(scores[q, valid], reference[q, rows[q, valid]], rtol=tol, atol=tol)
        assert np.all(np.diff(scores[q, valid]) <= 0)
        kth = ref_scores[q, valid.sum() - 1]
        assert set(ref_rows[q][ref_scores[q] > kth + tol]) <= set(rows[q, valid])
        assert np.all(reference[q, rows[q, valid]] >= kth - tol)
        assert len(set(rows[q, valid])) == valid.sum()


def assert_ties_by_row(scores: np.ndarray, rows: np.ndarray) -> None:
    for q in range(len(scores)):
        valid = rows[q] >= 0
        same = np.diff(scores[q, valid]) == 0
        assert np.all(np.diff(rows[q, valid])[same] > 0)


def unpack_codes(packed: np.ndarray, bits: int, dim: int) -> np.ndarray:
    stored = 4 if bits == 3 else bits
    per = 8 // stored
    shifts = 8 - stored * (np.arange(per) + 1)
    codes = (packed[:, :, None] >> shifts[None, None, :]) & ((1 << stored) - 1)
    return codes.reshape(len(packed), -1)[:, :dim]


def table_scores(tables: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """float64 ``sum_i tables[q, i, codes[n, i]]``."""
    dims = np.arange(codes.shape[1])
    return np.stack([tables[q][dims, codes].sum(axis=1) for q in range(len(tables))])


# --- packing and tables -----------------------------------------------------------------------

@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("dim", [97, 8, 5])
def test_pack_codes_round_trips(bits: int, dim: int) -> None:
    codes = RNG.integers(0, 1 << bits, (30, dim)).astype(np.uint8)
    packed = kernels.pack_codes(codes, bits)
    per = 2 if bits == 3 else 8 // bits
    assert packed.shape == (30, -(-dim // per)) and packed.dtype == np.uint8
    np.testing.assert_array_equal(unpack_codes(packed, bits, dim), codes)


def test_one_bit_codes_are_numpy_packbits() -> None:
    bits = RNG.integers(0, 2, (20, 97)).astype(np.uint8)
    np.testing.assert_array_equal(kernels.pack_codes(bits, 1), np.packbits(bits, axis=1))


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_luts_sum_the_tables_of_each_byte(bits: int) -> None:
    dim = 97
    tables = RNG.standard_normal((3, dim, 1 << bits))
    codes = RNG.integers(0, 1 << bits, (50, dim))
    luts = kernels.build_luts(tables, bits)
    packed = kernels.pack_codes(codes, bits)
    via_luts = luts[:, np.arange(packed.shape[1]), packed].sum(axis=2)
    np.testing.assert_allclose(via_luts, table_scores(tables, codes), rtol=1e-5, atol=1e-5)


def test_bad_bits_and_codes_are_named() -> None:
    with pytest.raises(VespaQuantError, match="bits per code"):
        kernels.pack_codes(np.zeros((2, 3), np.uint8), 5)
    with pytest.raises(VespaQuantError, match=r"\[0, 4\)"):
        kernels.pack_codes(np.full((2, 3), 4, np.uint8), 2)
    with pytest.raises(VespaQuantError, match="tables must be"):
        kernels.build_luts(np.zeros((1, 3, 3)), 2)


# --- lookup-table top-k -----------------------------------------------------------------------

@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("n_queries,k", [(5, 10), (1, 7), (4, 1000)])
def test_lut_topk_matches_table_reference(bits: int, n_queries: int, k: int) -> None:
    dim, n_docs = 97, 701
    tables = RNG.standard_normal((n_queries, dim, 1 << bits))
    codes = RNG.integers(0, 1 << bits, (n_docs, dim))
    scores, rows = kernels.lut_topk(kernels.build_luts(tables, bits), kernels.pack_codes(codes, bits), k)
    assert scores.dtype == np.float32 and rows.dtype == np.int64
    assert_same_topk(scores, rows, table_scores(tables, codes), k)
    assert np.all(rows[:, n_docs:] == -1) and np.all(np.isneginf(scores[:, n_docs:]))


def test_lut_topk_per_document_factors_and_query_offset() -> None:
    dim, n_docs, nq, k = 97, 500, 6, 20
    tables = RNG.standard_normal((nq, dim, 2))
    codes = RNG.integers(0, 2, (n_docs, dim))
    scale, bias = RNG.uniform(0.5, 2, n_docs), RNG.standard_normal(n_docs)
    query_bias, offset = RNG.standard_normal(nq), RNG.standard_normal(nq)
    scores, rows = kernels.lut_topk(kernels.build_luts(tables, 1), kernels.pack_codes(codes, 1), k,
                                    doc_scale=scale, doc_bias=bias, query_bias=query_bias, query_offset=offset)
    reference = scale * table_scores(tables, codes) + np.outer(query_bias, bias) + offset[:, None]
    assert_same_topk(scores, rows, reference, k)
    with pytest.raises(VespaQuantError, match="go together"):
        kernels.lut_topk(kernels.build_luts(tables, 1), kernels.pack_codes(codes, 1), k, doc_scale=scale)


@pytest.mark.parametrize("threads", [1, 2])
def test_lut_ties_keep_the_lowest_rows(threads: int) -> None:
    """Integer tables make every sum exact, so ties are real and the order must match exactly."""
    dim, n_docs, k = 24, 3000, 50
    tables = RNG.integers(-2, 3, (3, dim, 4)).astype(np.float64)
    codes = RNG.integers(0, 4, (n_docs, dim))
    scores, rows = kernels.lut_topk(kernels.build_luts(tables, 2), kernels.pack_codes(codes, 2), k, threads=threads)
    ref_scores, ref_rows = reference_topk(table_scores(tables, codes), k)
    np.testing.assert_array_equal(rows, ref_rows)
    np.testing.assert_array_equal(scores, ref_scores)


def test_lut_scores_at_rescore_candidates() -> None:
    dim, n_docs = 97, 300
    tables = RNG.standard_normal((4, dim, 4))
    codes = RNG.integers(0, 4, (n_docs, dim))
    candidates = RNG.integers(-1, n_docs, (4, 30))
    got = kernels.lut_scores_at(kernels.build_luts(tables, 2), kernels.pack_codes(codes, 2), candidates)
    reference = np.take_along_axis(table_scores(tables, codes), np.maximum(candidates, 0), axis=1)
    np.testing.assert_allclose(got[candidates >= 0], reference[candidates >= 0], rtol=1e-5, atol=1e-5)
    assert np.all(np.isneginf(got[candidates < 0]))
    with pytest.raises(VespaQuantError, match="candidate rows"):
        kernels.lut_scores_at(kernels.build_luts(tables, 2), kernels.pack_codes(codes, 2), candidates + n_docs)


# --- Hamming ----------------------------------------------------------------------------------

def hamming_reference(queries: np.ndarray, docs: np.ndarray) -> np.ndarray:
    return np.unpackbits(queries[:, None, :].view(np.uint8) ^ docs[None].view(np.uint8), axis=2).sum(axis=2)


@pytest.mark.parametrize("nbytes", [13, 48, 1])
@pytest.mark.parametrize("n_queries,k", [(6, 25), (1, 5), (3, 2000)])
@pytest.mark.parametrize("threads", [1, 2])
def test_hamming_topk_matches_reference_with_ties(nbytes: int, n_queries: int, k: int, threads: int) -> None:
    n_docs = 1001
    docs = RNG.integers(-128, 128, (n_docs, nbytes)).astype(np.int8)
    queries = RNG.integers(-128, 128, (n_queries, nbytes)).astype(np.int8)
    distances, rows = kernels.hamming_topk(queries, docs, k, threads=threads)
    ref_scores, ref_rows = reference_topk(-hamming_reference(queries, docs).astype(np.float64), k)
    np.testing.assert_array_equal(rows, ref_rows)
    valid = ref_rows >= 0
    np.testing.assert_array_equal(distances[valid], -ref_scores[valid])
    assert np.all(distances[~valid] == kernels.HAMMING_PAD) and distances.dtype == np.int32


def test_prepared_bits_are_reused() -> None:
    docs = RNG.integers(0, 256, (200, 7), dtype=np.uint8)
    queries = RNG.integers(0, 256, (3, 7), dtype=np.uint8)
    prepared = kernels.prepare_bits(docs)
    assert prepared.n_docs == 200 and prepared.words.shape == (4, 1, kernels.BLOCK_DOCS) and prepared.rows.shape == (200, 1)
    for got, want in zip(kernels.hamming_topk(queries, prepared, 9), kernels.hamming_topk(queries, docs, 9)):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(VespaQuantError, match="7 bytes"):
        kernels.hamming_topk(queries[:, :6], prepared, 9)


# --- dot products ---------------------------------------------------------------------------

def round_to_bfloat16_bits(values: np.ndarray) -> np.ndarray:
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    return (bits >> 16).astype(np.uint16)


def bfloat16_values(cells: np.ndarray) -> np.ndarray:
    return (cells.astype(np.uint32) << 16).view(np.float32)


@pytest.mark.parametrize("cell", ["float32", "int8", "bfloat16"])
@pytest.mark.parametrize("n_queries,k", [(12, 15), (1, 4), (9, 900)])
@pytest.mark.parametrize("threads", [1, 2])
def test_dot_topk_matches_float64_gemm(cell: str, n_queries: int, k: int, threads: int) -> None:
    dim, n_docs = 97, 777
    vectors = RNG.standard_normal((n_docs, dim)).astype(np.float32)
    docs = {"float32": vectors, "int8": RNG.integers(-128, 128, (n_docs, dim)).astype(np.int8),
            "bfloat16": round_to_bfloat16_bits(vectors)}[cell]
    values = bfloat16_values(docs) if cell == "bfloat16" else docs
    queries = RNG.standard_normal((n_queries, dim)).astype(np.float32)
    scores, rows = kernels.dot_topk(queries, docs, k, threads=threads)
    reference = queries.astype(np.float64) @ values.astype(np.float64).T
    assert_same_topk(scores, rows, reference, k, tol=1e-5 * (100 if cell == "int8" else 1))


@pytest.mark.parametrize("n_queries", [2, 9], ids=["row-by-row", "gemm"])
@pytest.mark.parametrize("threads", [1, 2])
def test_dot_topk_ties_keep_the_lowest_rows(n_queries: int, threads: int) -> None:
    """Duplicated documents tie exactly: the earlier copy must come first, across block edges."""
    base = RNG.integers(-3, 4, (40, 16)).astype(np.int8)
    docs = np.tile(base, (300, 1))
    queries = RNG.integers(-2, 3, (n_queries, 16)).astype(np.float32)
    scores, rows = kernels.dot_topk(queries, docs, 700, threads=threads)
    ref_scores, ref_rows = reference_topk(queries.astype(np.float64) @ docs.T.astype(np.float64), 700)
    np.testing.assert_array_equal(rows, ref_rows)
    np.testing.assert_array_equal(scores, ref_scores)
    assert_ties_by_row(scores, rows)


@pytest.mark.parametrize("cell", ["float32", "int8", "bfloat16"])
def test_dot_scores_at_rescore_candidates(cell: str) -> None:
    vectors = RNG.standard_normal((200, 97)).astype(np.float32)
    docs = {"float32": vectors, "int8": RNG.integers(-128, 128, (200, 97)).astype(np.int8),
            "bfloat16": round_to_bfloat16_bits(vectors)}[cell]
    values = (bfloat16_values(docs) if cell == "bfloat16" else docs).astype(np.float64)
    queries = RNG.standard_normal((5, 97)).astype(np.float32)
    candidates = RNG.integers(-1, 200, (5, 40))
    got = kernels.dot_scores_at(queries, docs, candidates)
    reference = np.einsum("qd,qmd->qm", queries.astype(np.float64), values[np.maximum(candidates, 0)])
    np.testing.assert_allclose(got[candidates >= 0], reference[candidates >= 0], rtol=1e-5, atol=1e-4)
    assert np.all(np.isneginf(got[candidates < 0]))


def test_dot_rejects_other_cells() -> None:
    with pytest.raises(VespaQuantError, match="float32, int8 or uint16"):
        kernels.dot_topk(np.zeros((1, 4)), np.zeros((3, 4), dtype=np.float64), 1)
    with pytest.raises(VespaQuantError, match="same d"):
        kernels.dot_topk(np.zeros((1, 5)), np.zeros((3, 4), dtype=np.float32), 1)


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("n_queries", [1, 9])
@pytest.mark.parametrize("path", ["auto", "tables", "gemm"])
@pytest.mark.parametrize("threads", [1, 2])
def test_packed_codes_score_their_reconstruction(bits: int, n_queries: int, path: str, threads: int) -> None:
    """``q . levels[i, code_i]`` whichever path: binary_asym is levels [-1, +1], 2-bit methods their table."""
    dim, n_docs, k = 97, 900, 30
    levels = np.sort(RNG.standard_normal((dim, 1 << bits)), axis=1)
    codes = RNG.integers(0, 1 << bits, (n_docs, dim))
    packed = kernels.PackedCodes(kernels.pack_codes(codes, bits), levels, bits)
    queries = RNG.standard_normal((n_queries, dim)).astype(np.float32)
    scores, rows = kernels.dot_topk(queries, packed, k, threads=threads, path=path)
    reconstruction = levels.astype(np.float32).astype(np.float64)[np.arange(dim), codes]
    assert_same_topk(scores, rows, queries.astype(np.float64) @ reconstruction.T, k)


def test_packed_codes_check_their_shape() -> None:
    with pytest.raises(VespaQuantError, match="do not pack 97 dims"):
        kernels.PackedCodes(np.zeros((5, 12), np.uint8), np.zeros((97, 2)), 1)
    with pytest.raises(VespaQuantError, match=r"levels must be \(d, 4\)"):
        kernels.PackedCodes(np.zeros((5, 25), np.uint8), np.zeros((97, 2)), 2)


@pytest.mark.skipif(not lut16.AVAILABLE, reason="register lookup tables need AVX-512")
@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("n_docs", [1, 31, 1000])
@pytest.mark.parametrize("threads", [1, 2])
def test_register_tables_match_byte_tables_with_exact_ties(bits: int, n_docs: int, threads: int) -> None:
    """Integer tables: every sum is exact, so scores, order and the lowest-row tie rule must agree."""
    dim, k = 97, 40
    tables = RNG.integers(-3, 4, (5, dim, 1 << bits)).astype(np.float64)
    packed = kernels.pack_codes(RNG.integers(0, 1 << bits, (n_docs, dim)), bits)
    got = lut16.nibble_topk(lut16.nibble_luts(tables, bits), lut16.prepare_nibbles(packed), n_docs, k,
                            threads=threads)
    want = kernels.lut_topk(kernels.build_luts(tables, bits), packed, k)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])


def test_scans_may_run_from_several_threads_at_once() -> None:
    """Every part is a GIL-free kernel with its own buffers: concurrent callers get their own answers."""
    from concurrent.futures import ThreadPoolExecutor

    docs = RNG.integers(0, 256, (3000, 13), dtype=np.uint8)
    queries = RNG.integers(0, 256, (8, 13), dtype=np.uint8)
    prepared = kernels.prepare_bits(docs)
    want = [kernels.hamming_topk(queries[i:i + 1], prepared, 20, threads=1) for i in range(8)]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda i: kernels.hamming_topk(queries[i:i + 1], prepared, 20, threads=2), range(8)))
    for (gd, gr), (wd, wr) in zip(got, want):
        np.testing.assert_array_equal(gr, wr)
        np.testing.assert_array_equal(gd, wd)
