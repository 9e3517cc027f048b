"""Shared fixtures: tiny generated embeddings shaped like real ones, and the shared data folder."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

SHARED_DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
SLICE_EMBEDDINGS = Path(__file__).resolve().parent / "data" / "scifact_slice_minilm.npz"
"""Committed embeddings of the SciFact slice (``tests/make_slice_embeddings.py``): the default
run seeds the embedding cache with them and never loads the model."""
SLICE_MODEL = "all-MiniLM-L6-v2"


def unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="session")
def generated() -> tuple[np.ndarray, np.ndarray]:
    """(docs, queries): 600 x 64 unit vectors with skewed, offset dims and two dead dims.

    Queries are noisy copies of documents, so retrieval has a right answer; the dead dims are
    ~1e-33 everywhere like all-MiniLM-L6-v2's, to prove calibration stays finite.
    """
    rng = np.random.default_rng(7)
    scale = np.linspace(2.0, 0.3, 64)
    docs = rng.standard_normal((600, 64)) * scale + rng.normal(0, 0.3, 64)
    docs[:, :8] = np.abs(docs[:, :8]) ** 1.5
    queries = docs[:40] + 0.5 * rng.standard_normal((40, 64)) * scale
    docs, queries = unit_rows(docs), unit_rows(queries)
    docs[:, [10, 20]] = 1e-33
    queries[:, [10, 20]] = 1e-33
    return docs, queries


@pytest.fixture(scope="session")
def scifact_dir() -> Path:
    folder = Path(os.environ.get("VESPA_QUANT_DATA", SHARED_DATASETS)) / "scifact"
    if not (folder / "corpus.jsonl").is_file():
        pytest.skip(f"SciFact not found at {folder}: put ../shared/datasets beside the repo or set VESPA_QUANT_DATA")
    return folder


SLICE_QUERIES, SLICE_OTHER_DOCS = 30, 220


def write_slice(scifact: Path, dest: Path) -> Path:
    """A BEIR folder with SciFact's first test queries, their relevant docs and some other docs."""
    qrels = list(csv.reader((scifact / "qrels" / "test.tsv").open(), delimiter="\t"))[1:]
    queries = {json.loads(line)["_id"]: line for line in (scifact / "queries.jsonl").open()}
    kept = list(dict.fromkeys(row[0] for row in qrels))[:SLICE_QUERIES]
    relevant = {row[1] for row in qrels if row[0] in kept}
    docs = []
    for line in (scifact / "corpus.jsonl").open():
        if json.loads(line)["_id"] in relevant or len(docs) < len(relevant) + SLICE_OTHER_DOCS:
            docs.append(line)
    (dest / "qrels").mkdir(parents=True)
    (dest / "corpus.jsonl").write_text("".join(docs))
    (dest / "queries.jsonl").write_text("".join(queries[q] for q in kept))
    with (dest / "qrels" / "test.tsv").open("w") as handle:
        handle.write("query-id\tcorpus-id\tscore\n")
        handle.writelines("\t".join(row) + "\n" for row in qrels if row[0] in kept)
    return dest


@pytest.fixture(scope="session")
def scifact_slice(scifact_dir: Path, tmp_path_factory) -> Path:
    return write_slice(scifact_dir, tmp_path_factory.mktemp("data") / "scifact-slice")


def seed_slice_cache(slice_dir: Path, cache: Path) -> Path:
    """Put the committed slice embeddings into ``cache`` under the keys of the slice's texts.

    Fails, naming the fix, when the slice's texts no longer hash to the keys the file records
    (the slice definition or the SciFact copy changed).
    """
    from vespa_quant.data.beir import load_beir
    from vespa_quant.embed.cache import cache_key, seed_cache
    from vespa_quant.embed.models import get_model_spec

    stored = np.load(SLICE_EMBEDDINGS)
    spec = get_model_spec(str(stored["model"]))
    sliced = load_beir(slice_dir)
    keys = (cache_key(spec.name, "document", spec.document_prompt, sliced.doc_texts),
            cache_key(spec.name, "query", spec.query_prompt, sliced.query_texts))
    if keys != (str(stored["doc_key"]), str(stored["query_key"])):
        pytest.fail(f"{SLICE_EMBEDDINGS} was made from other slice texts: run python tests/make_slice_embeddings.py")
    seed_cache(spec.name, sliced.doc_texts, "document", stored["doc_vectors"], cache)
    seed_cache(spec.name, sliced.query_texts, "query", stored["query_vectors"], cache)
    return cache


@pytest.fixture(scope="session")
def slice_cache(scifact_slice: Path, tmp_path_factory) -> Path:
    """One embedding cache for the whole session, seeded with the committed slice embeddings."""
    return seed_slice_cache(scifact_slice, tmp_path_factory.mktemp("embedding-cache"))


@pytest.fixture(scope="session")
def scifact_slice_embedded(scifact_slice: Path, slice_cache: Path):
    from vespa_quant.embed.embedded import load_embedded

    return load_embedded(scifact_slice, "all-MiniLM-L6-v2", cache_dir=slice_cache, show_progress=False)


def write_generated_beir(docs: np.ndarray, queries: np.ndarray, dest: Path) -> Path:
    """A BEIR folder for generated vectors, with .npy/.ids files beside it to bring as embeddings.

    Query ``i`` is a noisy copy of document ``i`` (the ``generated`` fixture), so it judges that
    document relevant (2) and the next one partly (1): graded qrels, as NFCorpus has.
    """
    dest.mkdir(parents=True, exist_ok=True)
    doc_ids = [f"d{i}" for i in range(len(docs))]
    query_ids = [f"q{i}" for i in range(len(queries))]
    (dest / "corpus.jsonl").write_text("".join(json.dumps({"_id": d, "title": "", "text": f"doc {d}"}) + "\n"
                                               for d in doc_ids))
    (dest / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": f"query {q}"}) + "\n"
                                                for q in query_ids))
    (dest / "qrels").mkdir(exist_ok=True)
    lines = ["query-id\tcorpus-id\tscore\n"]
    for i, q in enumerate(query_ids):
        lines += [f"{q}\t{doc_ids[i]}\t2\n", f"{q}\t{doc_ids[(i + 1) % len(doc_ids)]}\t1\n"]
    (dest / "qrels" / "test.tsv").write_text("".join(lines))
    for kind, ids, vectors in (("docs", doc_ids, docs), ("queries", query_ids, queries)):
        np.save(dest / f"{kind}.npy", np.asarray(vectors, dtype=np.float32))
        (dest / f"{kind}.ids").write_text("\n".join(ids) + "\n")
    return dest


@pytest.fixture(scope="session")
def generated_embedded(generated, tmp_path_factory):
    """The ``generated`` vectors as an embedded BEIR dataset (bring-your-own embeddings)."""
    from vespa_quant.embed.embedded import load_embedded

    folder = write_generated_beir(*generated, tmp_path_factory.mktemp("generated") / "generated")
    return load_embedded(folder, "generated-model", show_progress=False,
                         precomputed={"document": (folder / "docs.npy", folder / "docs.ids"),
                                      "query": (folder / "queries.npy", folder / "queries.ids")})
