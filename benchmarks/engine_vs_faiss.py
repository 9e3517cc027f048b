"""Engine scan kernels vs faiss (and sentence-transformers encoding), same codes, same process.

Corpora are synthetic: N(mean, covariance) of all-MiniLM-L6-v2 SciFact documents
(``minilm_scifact_moments.npz``, made by ``minilm_scifact_moments.py``), seeded, L2-normalised.
For each op the peer gets the method's own codes where faiss can hold them: an ``IndexPQ`` whose
fixed centroids are the method's levels computes exactly our 1- and 2-bit scores, an
``IndexScalarQuantizer`` QT_8bit with our min/step computes our int8 score plus a per-query
constant. Where it cannot (QT_4bit has 16 uniform levels), the peer runs on its own codes and both
sides are checked against an exact float64 numpy reference of their own codes. Every check passes
before any time is printed.

Times are medians of interleaved runs (ours, peer, ours, peer, ...), at 1 and 2 threads
(the kernels' ``threads`` / ``faiss.omp_set_num_threads``), for a batch of queries and for single
queries. ``ratio`` = peer_s / ours_s (> 1: we are faster). ``bandwidth_fraction`` = code bytes read
per call / ours_s / read bandwidth at that thread count (numpy sums of 1 GiB on threads, measured
in the same interleaved rounds, median; the ``bw`` column, GB/s):
near 1 a scan is memory-bound; a batch reuses each block across queries, so it is compute-bound
and small. faiss ``IndexFlatIP`` switches to BLAS above ``faiss.cvar.distance_compute_blas_threshold``
queries; both settings (BLAS forced on / faiss default) are timed and the faster is the peer.

On CPUs where OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are set, run with both unset for this command
only (``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/engine_vs_faiss.py``); the
BLAS kernels in use are printed first. Run: ``python benchmarks/engine_vs_faiss.py [--docs 100000
1000000] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import faiss
import numba
import numpy as np
from bench_timing import Op, Ours, Peer, ReadProbe, Result, Search, interleaved, print_row, time_op
from sentence_transformers.quantization import quantize_embeddings
from threadpoolctl import threadpool_info

from vespa_quant.engine import kernels
from vespa_quant.quantize import fit
from vespa_quant.quantize.methods.fitting import gauss_lloyd_max

GAUSS_BOUNDARIES, GAUSS_LEVELS = gauss_lloyd_max(4)
MOMENTS = Path(__file__).with_name("minilm_scifact_moments.npz")
CHUNK = 65536


# --- data ----------------------------------------------------------------------------------

def synthetic(n: int, seed: int) -> Iterator[np.ndarray]:
    """Chunks of ``n`` unit vectors ~ N(mean, covariance) of the MiniLM moments, reproducible per chunk."""
    with np.load(MOMENTS) as moments:
        mean, covariance = moments["mean"].astype(np.float64), moments["covariance"].astype(np.float64)
    factor = np.linalg.cholesky(covariance + 1e-9 * np.eye(len(mean))).astype(np.float32)
    for i, start in enumerate(range(0, n, CHUNK)):
        rng = np.random.default_rng([seed, i])
        x = rng.standard_normal((min(CHUNK, n - start), len(mean)), dtype=np.float32) @ factor.T + mean
        yield (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def encoded(n: int, encode: Callable[[np.ndarray], np.ndarray], seed: int = 1) -> np.ndarray:
    return np.concatenate([encode(chunk) for chunk in synthetic(n, seed)])


# --- checks --------------------------------------------------------------------------------

def same_neighbours(ours: Result, peer: Result, tol: float, what: str, larger_better: bool = True) -> None:
    """Sorted scores agree within ``tol`` and the row sets agree outside ties with the k-th score."""
    for q in range(len(ours[0])):
        a, b = ours[0][q].astype(np.float64), peer[0][q].astype(np.float64)
        scale = max(1.0, float(np.abs(a).max()))
        if not np.allclose(a, b, rtol=0, atol=tol * scale):
            raise SystemExit(f"{what}: query {q} scores differ by {np.abs(a - b).max():.3g}")
        kth = a[-1]
        beats = (a > kth + tol * scale) if larger_better else (a < kth - tol * scale)
        beats_peer = (b > kth + tol * scale) if larger_better else (b < kth - tol * scale)
        if set(ours[1][q][beats]) != set(peer[1][q][beats_peer]):
            raise SystemExit(f"{what}: query {q} neighbours differ beyond ties")


_REFERENCES: dict[tuple[str, bytes], Result] = {}


def exact_topk(queries: np.ndarray, decode: Callable[[int, int], np.ndarray], n: int, k: int,
               name: str = "") -> Result:
    """float64 reference: top-k of ``queries @ decode(start, stop).T`` over blocks (memoised by name)."""
    key = (name, queries.tobytes())
    if name and key in _REFERENCES:
        return _REFERENCES[key]
    best_s = np.full((len(queries), 0), -np.inf)
    best_r = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, n, CHUNK):
        stop = min(start + CHUNK, n)
        s = np.concatenate([best_s, queries.astype(np.float64) @ decode(start, stop).astype(np.float64).T], axis=1)
        r = np.concatenate([best_r, np.broadcast_to(np.arange(start, stop), (len(queries), stop - start))], axis=1)
        keep = np.argsort(-s, axis=1, kind="stable")[:, :k]
        best_s, best_r = np.take_along_axis(s, keep, axis=1), np.take_along_axis(r, keep, axis=1)
    if name:
        _REFERENCES[key] = (best_s, best_r)
    return best_s, best_r


# --- ops: each returns (ours, [(peer name, peer, check)], code bytes per document) ----------

def sign_bits(x: np.ndarray) -> np.ndarray:
    return np.packbits(x > 0, axis=1)


def pq_with_levels(centroids: np.ndarray, codes: np.ndarray) -> faiss.IndexPQ:
    """An IndexPQ (inner product) whose sub-quantizer m decodes byte v to ``centroids[m, v]``."""
    m, _, dsub = centroids.shape
    index = faiss.IndexPQ(m * dsub, m, 8, faiss.METRIC_INNER_PRODUCT)
    faiss.copy_array_to_vector(np.ascontiguousarray(centroids, dtype=np.float32).ravel(), index.pq.centroids)
    index.is_trained = True
    index.add_sa_codes(codes)
    return index


def byte_levels(table: np.ndarray, bits: int) -> np.ndarray:
    """(d, 2**bits) per-dimension levels -> (d / (8/bits), 256, 8/bits) centroids of packed bytes."""
    per = 8 // bits
    values = np.arange(256)
    subs = [table[t::per][:, (values >> (8 - bits * (t + 1))) & ((1 << bits) - 1)] for t in range(per)]
    return np.stack(subs, axis=2)


def faiss_search(index: faiss.Index, k: int) -> Search:
    return lambda queries: index.search(queries, k)


def op_hamming(n: int, k: int) -> Op:
    bits = encoded(n, sign_bits)
    prepared = kernels.prepare_bits(bits)
    index = faiss.IndexBinaryFlat(bits.shape[1] * 8)
    index.add(bits)

    def ours(queries: np.ndarray, threads: int) -> Result:
        return kernels.hamming_topk(sign_bits(queries), prepared, k, threads=threads)

    def peer(queries: np.ndarray) -> Result:
        return index.search(sign_bits(queries), k)

    def check(a: Result, b: Result, queries: np.ndarray) -> None:
        same_neighbours(a, b, 0.0, "hamming", larger_better=False)
    return Op({"hamming": ours}, [("faiss.IndexBinaryFlat", peer, check)], bits.shape[1])


def op_binary_asym(n: int, k: int) -> Op:
    codes = encoded(n, sign_bits)
    packed = kernels.PackedCodes(codes, np.tile([-1.0, 1.0], (384, 1)), 1)
    index = pq_with_levels(byte_levels(packed.levels, 1), codes)

    def check(a: Result, b: Result, queries: np.ndarray) -> None:
        same_neighbours(a, b, 1e-5, "binary_asym vs IndexPQ with +/-1 levels")
    return Op(packed_variants("binary_asym", packed, k), [("faiss.IndexPQ 48x8", faiss_search(index, k), check)],
              codes.shape[1], batch_only=("binary_asym[gemm]",))


def packed_variants(name: str, packed: kernels.PackedCodes, k: int) -> dict[str, Ours]:
    """The engine's call (``name``) and, for comparison, each path forced: GEMM on decoded blocks and
    byte lookup tables (the path of CPUs without AVX-512)."""
    def auto(queries: np.ndarray, threads: int) -> Result:
        return kernels.dot_topk(queries, packed, k, threads=threads)

    def gemm(queries: np.ndarray, threads: int) -> Result:
        return kernels.dot_topk(queries, packed, k, threads=threads, path="gemm")

    def byte_tables(queries: np.ndarray, threads: int) -> Result:
        luts = kernels.build_luts(packed.tables(queries), packed.bits)
        return kernels.lut_topk(luts, packed.codes, k, threads=threads)
    return {name: auto, f"{name}[gemm]": gemm, f"{name}[byte-luts]": byte_tables}


def lloyd_max_gauss_calibration(n: int) -> tuple[np.ndarray, np.ndarray]:
    sample = fit.calibration_sample(np.concatenate(list(synthetic(min(n, 100_000), 1))))
    sigma = fit.std(sample)
    return fit.median(sample).astype(np.float64), np.where(sigma > 0, sigma, 1.0)


def op_lloyd_max_gauss(n: int, k: int) -> Op:
    median, sigma = lloyd_max_gauss_calibration(n)
    table = median[:, None] + sigma[:, None] * GAUSS_LEVELS[None, :]

    def encode(x: np.ndarray) -> np.ndarray:
        z = (x - median) / sigma
        return kernels.pack_codes((z[:, :, None] >= GAUSS_BOUNDARIES).sum(axis=2).astype(np.uint8), 2)
    codes = encoded(n, encode)
    pq = pq_with_levels(byte_levels(table, 2), codes)
    sq = faiss.IndexScalarQuantizer(384, faiss.ScalarQuantizer.QT_4bit, faiss.METRIC_INNER_PRODUCT)
    sq.train(fit.calibration_sample(np.concatenate(list(synthetic(min(n, 100_000), 1)))))
    for chunk in synthetic(n, 1):
        sq.add(chunk)
    sq_codes = faiss.vector_to_array(sq.codes).reshape(n, -1)

    packed = kernels.PackedCodes(codes, table, 2)

    def check_pq(a: Result, b: Result, queries: np.ndarray) -> None:
        same_neighbours(a, b, 1e-5, "lloyd_max_gauss vs IndexPQ with its levels")

    def check_sq(a: Result, b: Result, queries: np.ndarray) -> None:
        few = slice(0, min(8, len(queries)))
        reference = exact_topk(queries[few], lambda s, e: sq.sa_decode(sq_codes[s:e]), n, k, f"sq4 {n}")
        same_neighbours((b[0][few], b[1][few]), reference, 1e-5, "QT_4bit vs its own float64 reference")
        unpacked = lambda s, e: table[np.arange(384), unpack_2bit(codes[s:e])]  # noqa: E731
        same_neighbours((a[0][few], a[1][few]), exact_topk(queries[few], unpacked, n, k, f"lloyd {n}"), 1e-5,
                        "lloyd_max_gauss vs its float64 reference")
    peers: list[Peer] = [("faiss.IndexSQ QT_4bit", faiss_search(sq, k), check_sq),
                         ("faiss.IndexPQ 96x8", faiss_search(pq, k), check_pq)]
    return Op(packed_variants("lloyd_max_gauss", packed, k), peers, codes.shape[1],
              batch_only=("lloyd_max_gauss[gemm]",))


def unpack_2bit(packed: np.ndarray) -> np.ndarray:
    shifts = np.array([6, 4, 2, 0], dtype=np.uint8)
    return ((packed[:, :, None] >> shifts) & 3).reshape(len(packed), -1)


def op_int8(n: int, k: int) -> Op:
    sample = fit.calibration_sample(np.concatenate(list(synthetic(min(n, 100_000), 1))))
    low, high = sample.min(axis=0).astype(np.float64), sample.max(axis=0).astype(np.float64)
    step = np.where(high > low, (high - low) / 255.0, 1.0)
    codes = encoded(n, lambda x: (np.clip(np.round((x - low) / step), 0, 255) - 128).astype(np.int8))
    index = faiss.IndexScalarQuantizer(384, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    faiss.copy_array_to_vector(np.concatenate([low - 0.5 * step, 255 * step]).astype(np.float32), index.sq.trained)
    index.is_trained = True
    index.add_sa_codes(codes.view(np.uint8) ^ np.uint8(0x80))

    def ours(queries: np.ndarray, threads: int) -> Result:
        return kernels.dot_topk((queries * step).astype(np.float32), codes, k, threads=threads)

    def check(a: Result, b: Result, queries: np.ndarray) -> None:
        constant = queries.astype(np.float64) @ low + 128 * (queries.astype(np.float64) @ step)
        same_neighbours(a, (b[0] - constant[:, None], b[1]), 1e-4, "int8_asym vs QT_8bit with its min/step")
    return Op({"int8_asym": ours}, [("faiss.IndexSQ QT_8bit", faiss_search(index, k), check)], 384)


def op_float32(n: int, k: int) -> Op:
    docs = encoded(n, lambda x: x)
    index = faiss.IndexFlatIP(384)
    index.add(docs)
    default_threshold = faiss.cvar.distance_compute_blas_threshold

    def ours(queries: np.ndarray, threads: int) -> Result:
        return kernels.dot_topk(queries, docs, k, threads=threads)

    def peer(blas_from: int) -> Search:
        def search(queries: np.ndarray) -> Result:
            faiss.cvar.distance_compute_blas_threshold = blas_from
            try:
                return index.search(queries, k)
            finally:
                faiss.cvar.distance_compute_blas_threshold = default_threshold
        return search

    def check(a: Result, b: Result, queries: np.ndarray) -> None:
        same_neighbours(a, b, 1e-5, "float32 vs IndexFlatIP")
    return Op({"float32": ours}, [("faiss.IndexFlatIP BLAS", peer(1), check),
                                  (f"faiss.IndexFlatIP default (BLAS from {default_threshold} queries)",
                                   peer(default_threshold), check)], 384 * 4, fastest_peer_only=True)


def calibrate_encode(n: int) -> list[dict]:
    """Encoding throughput (one thread, numpy) vs sentence-transformers' quantize_embeddings."""
    x = np.concatenate(list(synthetic(n, 1)))

    def ours_binary() -> np.ndarray:
        return np.packbits(x > 0, axis=1)

    def ours_int8() -> np.ndarray:
        sample = fit.calibration_sample(x)
        low, high = sample.min(axis=0), sample.max(axis=0)
        step = np.where(high > low, (high - low) / np.float32(255), np.float32(1))
        out = np.empty(x.shape, dtype=np.int8)
        for s in range(0, n, CHUNK):
            block = x[s:s + CHUNK] - low
            block /= step
            np.rint(block, out=block)
            np.clip(block, 0, 255, out=block)
            block -= 128
            out[s:s + CHUNK] = block
        return out

    sample = fit.calibration_sample(x)
    if not np.array_equal(ours_binary() ^ np.uint8(0x80), quantize_embeddings(x, precision="binary").view(np.uint8)):
        raise SystemExit("calibrate_encode_binary: codes differ from sentence-transformers")
    rows = []
    for name, ours, peer in (
        ("calibrate_encode_binary", ours_binary, lambda: quantize_embeddings(x, precision="binary")),
        ("calibrate_encode_int8", ours_int8,
         lambda: quantize_embeddings(x, precision="int8", calibration_embeddings=sample)),
    ):
        ours_s, peer_s = interleaved(ours, peer, 3)
        rows.append({"op": name, "n_docs": n, "threads": 1, "batch": n, "ours_s": ours_s,
                     "peer": "sentence_transformers.quantize_embeddings", "peer_s": peer_s,
                     "ratio": peer_s / ours_s, "bandwidth_fraction": None, "read_bandwidth": None})
    return rows


OPS: dict[str, Callable[[int, int], Op]] = {
    "hamming": op_hamming, "binary_asym": op_binary_asym, "lloyd_max_gauss": op_lloyd_max_gauss,
    "int8_asym": op_int8, "float32": op_float32}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ops", nargs="+", default=list(OPS) + ["calibrate_encode"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    for lib in threadpool_info():
        print(f"# {lib['internal_api']} {lib.get('version')} {lib.get('architecture', '')} "
              f"{Path(lib['filepath']).name}")
    print(f"# numba {numba.__version__}, faiss {faiss.__version__}, numpy {np.__version__}; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores (other processes skew 2-thread rows)")
    probes = {t: ReadProbe(t) for t in args.threads}
    print("# read bandwidth at the start: " + ", ".join(f"{t} thread(s) {p.best_of(5) / 1e9:.1f} GB/s"
                                                        for t, p in probes.items()))
    print("# ratio = peer_s / ours_s; times are medians, seconds per call; bw_frac = code bytes per call / "
          "ours_s / read bandwidth; bw = that read bandwidth, GB/s, measured in the same rounds")
    print(f"{'op':27s} {'n_docs':>9s} {'th':>2s} {'batch':>7s} {'ours_s':>10s} {'peer_s':>10s} {'ratio':>7s} "
          f"{'bw_frac':>9s} {'bw':>5s}  peer")
    queries = next(synthetic(args.queries, 2))
    results: list[dict] = []
    for n in args.docs:
        for name in args.ops:
            if name == "calibrate_encode":
                rows = calibrate_encode(min(n, 1_000_000))
            else:
                if name == "float32" and n * 384 * 4 * 2 > 16 << 30:
                    print(f"{name}: skipped at {n} docs (ours + faiss copy exceed 16 GiB)")
                    continue
                op, rows = OPS[name](n, args.k), []
                for threads in args.threads:
                    faiss.omp_set_num_threads(threads)
                    timed = time_op(op, queries, n, threads, probes[threads], args.repeats)
                    for row in timed:
                        print_row(row)
                    rows += timed
                del op
            if name == "calibrate_encode":
                for row in rows:
                    print_row(row)
            results += rows
    print(f"# load average at the end {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
