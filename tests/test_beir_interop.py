"""BEIR as the judge: its loader reads our datasets as we do, its evaluator scores our hits as we do."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATASETS

from vespa_quant.data import BeirDataset, from_beir, load_beir, load_with_beir, to_beir
from vespa_quant.embed.embedded import EmbeddedDataset
from vespa_quant.engine.local import Hits, search
from vespa_quant.errors import DataError
from vespa_quant.evaluate.interop import results_dict
from vespa_quant.evaluate.runner import NDCG, RECALL, score_hits
from vespa_quant.quantize.base import calibrate, encode
from vespa_quant.quantize.registry import METHODS

DATA = Path(os.environ.get("VESPA_QUANT_DATA", SHARED_DATASETS))


def beir_folder(name: str) -> Path:
    folder = DATA / name
    if not (folder / "corpus.jsonl").is_file():
        pytest.skip(f"{name} not found at {folder}: put ../shared/datasets beside the repo or "
                    "set VESPA_QUANT_DATA")
    return folder


# --- loading: ours and GenericDataLoader agree -----------------------------------------------


@pytest.mark.parametrize("name", ["scifact", "nfcorpus"])
def test_both_readers_give_the_same_dataset(name: str) -> None:
    from beir.datasets.data_loader import GenericDataLoader

    folder = beir_folder(name)
    ours = load_beir(folder)
    corpus, queries, qrels = GenericDataLoader(data_folder=str(folder)).load(split="test")

    theirs = from_beir(corpus, queries, qrels, name=name)
    assert theirs.doc_ids == ours.doc_ids
    assert theirs.doc_texts == ours.doc_texts
    assert dict(zip(theirs.query_ids, theirs.query_texts)) == dict(zip(ours.query_ids, ours.query_texts))
    assert theirs.qrels == ours.qrels

    # And the other way round: what we export is what BEIR's loader returns.
    our_corpus, our_queries, our_qrels = to_beir(ours)
    assert our_queries == queries and our_qrels == qrels
    beir_texts = {doc_id: ((doc["title"] or "") + " " + doc["text"]).strip()
                  for doc_id, doc in corpus.items()}
    assert {doc_id: doc["text"] for doc_id, doc in our_corpus.items()} == beir_texts


def test_load_with_beir_wraps_beirs_failures(tmp_path: Path) -> None:
    (tmp_path / "broken").mkdir()
    with pytest.raises(DataError, match=r"broken: BEIR's GenericDataLoader failed \(ValueError"):
        load_with_beir(tmp_path / "broken")


# --- from_beir: the reader's checks, for dicts -----------------------------------------------

CORPUS = {"d1": {"title": "T", "text": "one"}, "d2": {"title": None, "text": "two"}}
QUERIES = {"q1": "first", "q2": "second"}
QRELS = {"q1": {"d1": 1}, "q2": {"d2": 2}}


def test_from_beir_builds_our_dataset() -> None:
    dataset = from_beir(CORPUS, QUERIES, QRELS, name="tiny")
    assert (dataset.name, dataset.split, dataset.path) == ("tiny", "test", Path("tiny"))
    assert dataset.doc_texts == ["T one", "two"]
    assert dataset.query_ids == ["q1", "q2"] and dataset.notes == []
    assert len(dataset.fingerprint) == 16
    assert from_beir(CORPUS, QUERIES, {"q1": {"d1": 1}, "q2": {"d2": 1}}, name="tiny").fingerprint \
        != dataset.fingerprint
    again = from_beir(*to_beir(dataset), name="tiny")
    assert (again.doc_ids, again.doc_texts, again.query_ids, again.query_texts, again.qrels) == (
        dataset.doc_ids, dataset.doc_texts, dataset.query_ids, dataset.query_texts, dataset.qrels)


def test_from_beir_coerces_numeric_ids_like_the_reader() -> None:
    dataset = from_beir({7: {"text": "x"}}, {1: "q"}, {1: {7: 1}}, name="numeric")
    assert (dataset.doc_ids, dataset.query_ids, dataset.qrels) == (["7"], ["1"], {"1": {"7": 1}})


BAD_DICTS = [
    ({"d1": {"title": "T"}}, QUERIES, QRELS, "corpus\\['d1'\\]: missing \"text\""),
    ({"d1": "just text"}, QUERIES, QRELS, "corpus\\['d1'\\]: expected a dict with 'text'"),
    ({"": {"text": "x"}}, QUERIES, QRELS, "corpus\\['']: empty \"_id\""),
    ({"d1": {"title": "", "text": " "}}, QUERIES, QRELS, "corpus\\['d1'\\]: empty document 'd1'"),
    ({7: {"text": "a"}, "7": {"text": "b"}}, QUERIES, QRELS, "corpus\\['7'\\]: duplicate id '7'"),
    (CORPUS, {"q1": ""}, QRELS, "queries\\['q1'\\]: empty \"text\" for query 'q1'"),
    (CORPUS, {"q1": 3}, QRELS, "queries\\['q1'\\]: non-string \"text\""),
    (CORPUS, QUERIES, {"q1": {"d1": 0.5}}, "qrels\\['q1'\\]\\['d1'\\]: score 0.5 is not an integer"),
    (CORPUS, QUERIES, {"q1": {"d1": True}}, "qrels\\['q1'\\]\\['d1'\\]: score True is not an integer"),
    (CORPUS, QUERIES, {"q1": ["d1"]}, "qrels\\['q1'\\]: expected a dict of doc id -> score"),
    (CORPUS, QUERIES, {"q9": {"d1": 1}}, "qrels: no judged query of split 'test' is in queries"),
]


@pytest.mark.parametrize(("corpus", "queries", "qrels", "expected"), BAD_DICTS)
def test_from_beir_rejects_what_the_reader_rejects(corpus, queries, qrels, expected: str) -> None:
    with pytest.raises(DataError, match=expected):
        from_beir(corpus, queries, qrels, name="bad")


def test_from_beir_notes() -> None:
    dataset = from_beir(CORPUS, {**QUERIES, "q3": "unjudged"},
                        {**QRELS, "q9": {"d1": 1}, "q1": {"d1": 1, "gone": 1}}, name="tiny")
    assert dataset.query_ids == ["q1", "q2"]
    assert dataset.notes == [
        "qrels: dropped 1 judged query missing from queries: 'q9'",
        "queries: 1 of 3 queries have no judgement in split 'test' and are not evaluated",
        "qrels: 1 judged document(s) missing from corpus, kept as relevant but unretrievable "
        "(as BEIR scores them): 'gone' (query 'q1')",
    ]


# --- evaluation: BEIR's EvaluateRetrieval scores our hits as we do ---------------------------


def beir_means(qrels: dict, results: dict, monkeypatch) -> tuple[dict, dict]:
    """BEIR's (NDCG, Recall) means, unrounded, and as BEIR returns them (rounded to 5 places).

    BEIR rounds its means to 5 decimals; shadowing ``round`` in its module gives the value it
    computed, so the comparison can be exact to 1e-9 instead of to 5e-6.
    """
    from beir.retrieval import evaluation
    from beir.retrieval.evaluation import EvaluateRetrieval

    copy = {q: dict(hits) for q, hits in results.items()}
    ndcg, _, recall, _ = EvaluateRetrieval.evaluate(qrels, copy, [10, 100])
    with monkeypatch.context() as patch:
        patch.setattr(evaluation, "round", lambda value, ndigits=None: value, raising=False)
        exact_ndcg, _, exact_recall, _ = EvaluateRetrieval.evaluate(
            qrels, {q: dict(hits) for q, hits in results.items()}, [10, 100])
    return ({"ndcg": exact_ndcg["NDCG@10"], "recall": exact_recall["Recall@100"]},
            {"ndcg": ndcg["NDCG@10"], "recall": recall["Recall@100"]})


def assert_beir_agrees(embedded: EmbeddedDataset, hits: Hits, monkeypatch) -> float:
    ours = score_hits(embedded, hits)
    exact, rounded = beir_means(embedded.dataset.qrels, results_dict(embedded.dataset, hits),
                                monkeypatch)
    assert abs(exact["ndcg"] - ours[NDCG].mean()) <= 1e-9
    assert abs(exact["recall"] - ours[RECALL].mean()) <= 1e-9
    assert rounded["ndcg"] == round(float(ours[NDCG].mean()), 5)
    return float(ours[NDCG].mean())


@pytest.fixture(scope="module")
def generated_embedded(generated) -> EmbeddedDataset:
    """The shared generated vectors as a dataset: graded qrels, a judged doc missing from the
    corpus, and one doc whose id equals its query's (both evaluators must drop that hit)."""
    docs, queries = generated
    doc_ids = [f"d{i}" for i in range(len(docs))]
    doc_ids[7] = "q7"
    query_ids = [f"q{i}" for i in range(len(queries))]
    qrels = {q: {doc_ids[i]: 2, doc_ids[(i + 40) % len(docs)]: 1} for i, q in enumerate(query_ids)}
    qrels["q3"]["not-in-corpus"] = 1
    dataset = BeirDataset("generated", Path("generated"), doc_ids, [f"text {i}" for i in doc_ids],
                          query_ids, [f"query {q}" for q in query_ids], qrels, "0" * 16)
    return EmbeddedDataset(dataset, "generated", docs, queries)


@pytest.mark.parametrize("method_name", list(METHODS))
def test_beir_evaluator_agrees_on_every_method(generated_embedded: EmbeddedDataset,
                                               method_name: str, monkeypatch) -> None:
    method = METHODS[method_name]
    docs, queries = generated_embedded.doc_vectors, generated_embedded.query_vectors
    calibration = calibrate(method, docs)
    hits = search(method, calibration, encode(method, docs, calibration), queries, k=100)
    assert 0.0 < assert_beir_agrees(generated_embedded, hits, monkeypatch) <= 1.0


def test_results_dict_keeps_every_query_and_marks_no_hit(generated_embedded: EmbeddedDataset,
                                                        monkeypatch) -> None:
    dataset = generated_embedded.dataset
    n = len(dataset.query_ids)
    indices = np.full((n, 3), -1)
    scores = np.full((n, 3), -np.inf)
    indices[0], scores[0] = [0, 7, 40], [0.9, 0.8, 0.7]  # q0: its two relevant docs
    indices[7, 0], scores[7, 0] = 7, 0.5                  # q7: only "itself" (doc id 'q7')
    hits = Hits(indices, scores)
    results = results_dict(dataset, hits)
    assert list(results) == dataset.query_ids
    assert results["q0"] == {"d0": 0.9, "q7": 0.8, "d40": 0.7}
    assert results["q7"] == {"q7": 0.5} and results["q1"] == {}
    assert_beir_agrees(generated_embedded, hits, monkeypatch)


@pytest.mark.slow
def test_beir_evaluator_agrees_on_full_scifact(scifact_dir: Path, monkeypatch) -> None:
    """Every registered method on full SciFact with all-MiniLM-L6-v2, from cached embeddings."""
    from vespa_quant.embed.cache import cache_path
    from vespa_quant.embed.embedded import load_embedded

    model = "all-MiniLM-L6-v2"
    dataset = load_beir(scifact_dir)
    for kind, texts in (("document", dataset.doc_texts), ("query", dataset.query_texts)):
        if not cache_path(model, texts, kind).is_file():
            pytest.skip(f"no cached {model} {kind} embeddings of SciFact at "
                        f"{cache_path(model, texts, kind)}; this test never embeds")
    embedded = load_embedded(scifact_dir, model, show_progress=False)
    docs, queries = embedded.at_dim(embedded.native_dim)
    scores = {}
    for method in METHODS.values():
        calibration = calibrate(method, docs, rotation="none", seed=0)
        hits = search(method, calibration, encode(method, docs, calibration), queries, k=100)
        scores[method.name] = assert_beir_agrees(embedded, hits, monkeypatch)
    assert 0.6 < scores["float32"] < 0.7
