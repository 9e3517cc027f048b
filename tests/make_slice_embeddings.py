"""Write ``tests/data/scifact_slice_minilm.npz``: the SciFact slice's embeddings, so the default
test run embeds nothing (issue 9.5).

Vectors are the rows of the full-SciFact all-MiniLM-L6-v2 embeddings (embedding cache, or
computed once) for the slice's documents and queries; the file records the model and the
cache keys of the slice texts, and ``tests/test_slice_embeddings.py`` (``-m slow``) recomputes
them with the model and compares. Run: ``python tests/make_slice_embeddings.py``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import SHARED_DATASETS, SLICE_EMBEDDINGS, SLICE_MODEL, write_slice  # noqa: E402

from vespa_quant.data.beir import load_beir  # noqa: E402
from vespa_quant.embed.cache import cache_key  # noqa: E402
from vespa_quant.embed.embedded import load_embedded  # noqa: E402
from vespa_quant.embed.models import get_model_spec  # noqa: E402


def main() -> None:
    full = load_embedded(SHARED_DATASETS / "scifact", SLICE_MODEL)
    with tempfile.TemporaryDirectory() as tmp:
        sliced = load_beir(write_slice(SHARED_DATASETS / "scifact", Path(tmp) / "slice"))
    doc_row = {doc_id: row for row, doc_id in enumerate(full.dataset.doc_ids)}
    query_row = {query_id: row for row, query_id in enumerate(full.dataset.query_ids)}
    spec = get_model_spec(SLICE_MODEL)
    np.savez_compressed(
        SLICE_EMBEDDINGS,
        model=np.array(spec.name),
        doc_vectors=full.doc_vectors[[doc_row[d] for d in sliced.doc_ids]],
        query_vectors=full.query_vectors[[query_row[q] for q in sliced.query_ids]],
        doc_key=np.array(cache_key(spec.name, "document", spec.document_prompt, sliced.doc_texts)),
        query_key=np.array(cache_key(spec.name, "query", spec.query_prompt, sliced.query_texts)),
    )
    print(f"wrote {SLICE_EMBEDDINGS}: {len(sliced.doc_ids)} documents, {len(sliced.query_ids)} queries")


if __name__ == "__main__":
    main()
