"""Our Hamming first phase vs faiss.IndexBinaryFlat, same codes, same process.

Prints wall time per query batch and the ratio ours/faiss, and checks both return the same
distances. Run: ``python benchmarks/hamming_vs_faiss.py [--docs N] [--dim D]``.
"""

from __future__ import annotations

import argparse
import time

import faiss
import numpy as np

from vespa_quant.quantize.bits import hamming_distances, pack_bits


def best_of(repeats: int, work) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = work()
        best = min(best, time.perf_counter() - started)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    docs = pack_bits(rng.standard_normal((args.docs, args.dim)) > 0)
    queries = pack_bits(rng.standard_normal((args.queries, args.dim)) > 0)

    def ours():
        distances = hamming_distances(queries, docs)
        top = np.argpartition(distances, args.k - 1, axis=1)[:, : args.k]
        return np.sort(np.take_along_axis(distances, top, axis=1), axis=1)

    index = faiss.IndexBinaryFlat(args.dim)
    index.add(docs.view(np.uint8))

    def theirs():
        distances, _ = index.search(queries.view(np.uint8), args.k)
        return distances

    ours_s, ours_d = best_of(args.repeats, ours)
    faiss_s, faiss_d = best_of(args.repeats, theirs)
    same = np.array_equal(ours_d, faiss_d)
    print(f"{args.queries} queries x {args.docs} docs x {args.dim} bits, top-{args.k}, best of {args.repeats}")
    print(f"{'engine':28s} {'seconds':>9s} {'ms/query':>9s}")
    print(f"{'vespa-quant numpy scan':28s} {ours_s:9.3f} {1000 * ours_s / args.queries:9.3f}")
    print(f"{'faiss.IndexBinaryFlat':28s} {faiss_s:9.3f} {1000 * faiss_s / args.queries:9.3f}")
    print(f"ratio ours/faiss: {ours_s / faiss_s:.1f}x   identical top-k distances: {same}")


if __name__ == "__main__":
    main()
