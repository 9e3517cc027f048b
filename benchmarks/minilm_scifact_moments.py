"""Write ``minilm_scifact_moments.npz``: mean and covariance of all-MiniLM-L6-v2 SciFact documents.

The engine benchmark draws its synthetic corpora from N(mean, covariance) so that the per-dimension
spread, offsets and correlations the quantizers see match a real embedding model. Reads only the
embedding cache (``~/.cache/vespa-quant/embeddings``) and refuses to run on a cache miss, so it
never loads the model. Run: ``python benchmarks/minilm_scifact_moments.py [--data ../shared/datasets]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from vespa_quant.data.beir import load_beir
from vespa_quant.embed.cache import cache_path
from vespa_quant.embed.embedded import load_embedded

MODEL = "all-MiniLM-L6-v2"
OUT = Path(__file__).with_name("minilm_scifact_moments.npz")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="../shared/datasets")
    args = parser.parse_args()
    folder = Path(args.data) / "scifact"
    dataset = load_beir(folder)
    for kind, texts in (("document", dataset.doc_texts), ("query", dataset.query_texts)):
        path = cache_path(MODEL, texts, kind)
        if not path.is_file():
            raise SystemExit(f"{kind} embeddings not cached at {path}; not embedding here")
    docs = load_embedded(folder, MODEL, show_progress=False).doc_vectors.astype(np.float64)
    np.savez(OUT, mean=docs.mean(axis=0).astype(np.float32),
             covariance=np.cov(docs, rowvar=False).astype(np.float32),
             n_docs=np.array(len(docs)), source=np.array(f"{MODEL} on BEIR SciFact corpus, {len(docs)} documents"))
    print(f"wrote {OUT} from {len(docs)} documents x {docs.shape[1]} dims")


if __name__ == "__main__":
    main()
