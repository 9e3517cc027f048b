"""`vespa-quant evaluate` of every method on a large synthetic corpus: wall time and peak memory.

Issue 10's acceptance: all methods on 1M documents and 1,000 queries (bring-your-own ``.npy``)
in under 3 minutes with peak RSS under 3 GiB. The corpus is drawn to match the mean and
covariance of real all-MiniLM-L6-v2 SciFact embeddings (``minilm_scifact_moments.npz``,
seeded, then L2-normalised); each query is a noisy copy of one document, which is its one
relevant document, so NDCG is meaningful. The corpus folder and the ``.npy`` files are written
once under ``--work`` and reused. The evaluation runs as a child process (the real command line),
and its peak RSS is read from the operating system (``getrusage`` of the child).

    python benchmarks/evaluate_at_scale.py --docs 1000000 --queries 1000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

MOMENTS = Path(__file__).resolve().parent / "minilm_scifact_moments.npz"


def synthetic_corpus(work: Path, n_docs: int, n_queries: int, seed: int = 0) -> Path:
    """A BEIR folder plus ``docs.npy``/``queries.npy`` (with ``.ids``) under ``work``; made once."""
    folder = work / f"synthetic-{n_docs}-{n_queries}"
    if (folder / "done").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    moments = np.load(MOMENTS)
    rng = np.random.default_rng(seed)
    factor = np.linalg.cholesky(moments["covariance"].astype(np.float64) + 1e-9 * np.eye(len(moments["mean"])))
    docs = np.lib.format.open_memmap(folder / "docs.npy", mode="w+", dtype=np.float32,
                                     shape=(n_docs, len(moments["mean"])))
    for start in range(0, n_docs, 100_000):
        block = moments["mean"] + rng.standard_normal((min(100_000, n_docs - start), factor.shape[0])) @ factor.T
        docs[start:start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    targets = rng.choice(n_docs, size=n_queries, replace=False)
    noisy = docs[targets] + 1.5 * rng.standard_normal((n_queries, docs.shape[1])) * np.sqrt(np.diag(moments["covariance"]))
    np.save(folder / "queries.npy", (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32))
    docs.flush()
    (folder / "docs.ids").write_text("".join(f"d{i}\n" for i in range(n_docs)))
    (folder / "queries.ids").write_text("".join(f"q{i}\n" for i in range(n_queries)))
    with (folder / "corpus.jsonl").open("w") as corpus:
        corpus.writelines(json.dumps({"_id": f"d{i}", "title": "", "text": f"synthetic document {i}"}) + "\n"
                          for i in range(n_docs))
    with (folder / "queries.jsonl").open("w") as queries:
        queries.writelines(json.dumps({"_id": f"q{i}", "text": f"synthetic query {i}"}) + "\n" for i in range(n_queries))
    (folder / "qrels").mkdir(exist_ok=True)
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{t}\t1\n" for i, t in enumerate(targets)))
    (folder / "done").write_text("ok\n")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--methods", default="all")
    parser.add_argument("--k1", type=int, default=None, help="Two-phase search with k1 candidates (default: exhaustive).")
    parser.add_argument("--work", type=Path, default=Path("out/scale"))
    args = parser.parse_args()
    folder = synthetic_corpus(args.work, args.docs, args.queries)
    command = [sys.executable, "-m", "vespa_quant", "evaluate", "--dataset", str(folder.resolve()),
               "--model", "synthetic-minilm", "--methods", args.methods, "--resamples", "200",
               "--doc-embeddings", str(folder / "docs.npy"), "--query-embeddings", str(folder / "queries.npy"),
               "--output", str(args.work / f"results-{args.docs}")]
    if args.k1:
        command += ["--k1", str(args.k1)]
    started = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "TQDM_DISABLE": "1"})
    seconds = time.perf_counter() - started
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 / 1024  # Linux: KiB
    print(f"evaluate of {args.methods} methods on {args.docs:,} documents x {args.queries:,} queries"
          f"{f', k1={args.k1}' if args.k1 else ', exhaustive'}: {seconds:.1f} s wall, peak RSS {peak_gib:.2f} GiB")


if __name__ == "__main__":
    main()
