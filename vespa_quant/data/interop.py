"""BEIR's in-memory format in and out: the dicts of ``GenericDataLoader(...).load(split)``.

BEIR is the ecosystem's interface for retrieval datasets: HF-hosted copies, custom loaders and
other toolkits hand over ``corpus`` (``{doc_id: {"title", "text"}}``), ``queries``
(``{query_id: text}``) and ``qrels`` (``{query_id: {doc_id: score}}``). :func:`from_beir` builds
our :class:`~vespa_quant.data.beir.BeirDataset` from them with the checks our file reader
applies (naming the dict entry instead of a file line), so a dataset that arrives as dicts gets
the same guarantees and the same notes as one read from a folder.
"""

from __future__ import annotations

import hashlib
import json
import numbers
from collections.abc import Mapping
from pathlib import Path

from vespa_quant.data.beir import (
    BeirDataset,
    Judgements,
    assemble,
    dataset_folder,
    document_record,
    query_record,
)
from vespa_quant.errors import DataError

Corpus = dict[str, dict[str, str]]
Queries = dict[str, str]
Qrels = dict[str, dict[str, int]]


def from_beir(
    corpus: Mapping[str, Mapping[str, object]],
    queries: Mapping[str, object],
    qrels: Mapping[str, Mapping[str, object]],
    *,
    name: str,
    split: str = "test",
    path: str | Path | None = None,
) -> BeirDataset:
    """Our dataset from BEIR's three dicts, validated like a folder read by ``load_beir``.

    Example::

        from beir.datasets.data_loader import GenericDataLoader
        from vespa_quant.data import from_beir

        corpus, queries, qrels = GenericDataLoader("datasets/scifact").load(split="test")
        dataset = from_beir(corpus, queries, qrels, name="scifact")

    Documents keep the corpus dict's order (rows of every embedding matrix follow it), queries
    the queries dict's order. ``fingerprint`` hashes the content, not file bytes, so it differs
    from the fingerprint of the same data read from files.
    """
    fingerprint = hashlib.sha256()
    doc_ids: list[str] = []
    doc_texts: list[str] = []
    seen_docs: set[str] = set()
    for key, document in corpus.items():
        where = f"corpus[{key!r}]"
        if not isinstance(document, Mapping):
            raise DataError(f"{where}: expected a dict with 'text' and optional 'title', "
                            f"got {type(document).__name__}")
        doc_id, text = document_record({**document, "_id": key}, where)
        if doc_id in seen_docs:
            raise DataError(f"{where}: duplicate id {doc_id!r} (ids are compared as strings)")
        seen_docs.add(doc_id)
        doc_ids.append(doc_id)
        doc_texts.append(text)
        _hash(fingerprint, "d", doc_id, text)

    all_queries: dict[str, str] = {}
    for key, raw_text in queries.items():
        query_id, query_text = query_record({"_id": key, "text": raw_text}, f"queries[{key!r}]")
        if query_id in all_queries:
            raise DataError(f"queries[{key!r}]: duplicate id {query_id!r} (ids are compared as strings)")
        all_queries[query_id] = query_text
        _hash(fingerprint, "q", query_id, query_text)

    judgements = Judgements("qrels")
    for query_key, judged in qrels.items():
        if not isinstance(judged, Mapping):
            raise DataError(f"qrels[{query_key!r}]: expected a dict of doc id -> score, "
                            f"got {type(judged).__name__}")
        for doc_key, score in judged.items():
            where = f"[{query_key!r}][{doc_key!r}]"
            if isinstance(score, bool) or not isinstance(score, numbers.Integral):
                raise DataError(f"qrels{where}: score {score!r} is not an integer")
            query_id, doc_id = str(query_key), str(doc_key)
            if not query_id.strip() or not doc_id.strip():
                raise DataError(f"qrels{where}: empty {'query' if not query_id.strip() else 'doc'} id")
            judgements.add(query_id, doc_id, int(score), where)
    for query_id, judged in sorted(judgements.qrels.items()):
        for doc_id, score in sorted(judged.items()):
            _hash(fingerprint, "r", query_id, doc_id, score)

    return assemble(
        name=name, path=Path(path) if path is not None else Path(name), doc_ids=doc_ids,
        doc_texts=doc_texts, all_queries=all_queries, judgements=judgements,
        fingerprint=fingerprint.hexdigest()[:16], split=split, labels=("corpus", "queries"),
    )


def to_beir(dataset: BeirDataset) -> tuple[Corpus, Queries, Qrels]:
    """``(corpus, queries, qrels)`` as ``GenericDataLoader.load`` returns them, for BEIR's tools.

    Example::

        from beir.retrieval.evaluation import EvaluateRetrieval
        corpus, queries, qrels = to_beir(load_beir("scifact"))
        ndcg, _map, recall, precision = EvaluateRetrieval.evaluate(qrels, results, [10, 100])

    Each document's title is already joined into its text (what we embed), so the title is
    empty: BEIR's models embed ``(title + " " + text).strip()``, which is then exactly our text.
    Only judged queries are exported, as BEIR's loader does.
    """
    corpus = {doc_id: {"title": "", "text": text}
              for doc_id, text in zip(dataset.doc_ids, dataset.doc_texts)}
    queries = dict(zip(dataset.query_ids, dataset.query_texts))
    qrels = {query_id: dict(judged) for query_id, judged in dataset.qrels.items()}
    return corpus, queries, qrels


def load_with_beir(name_or_path: str | Path, split: str = "test",
                   data_root: str | Path | None = None) -> BeirDataset:
    """Read a folder with BEIR's own ``GenericDataLoader``, then check it with :func:`from_beir`.

    Useful to confirm that BEIR and we see the same dataset. :func:`~vespa_quant.data.beir.load_beir`
    is the better reader: BEIR's fails with a bare ``KeyError`` or ``JSONDecodeError`` where ours
    names file and line. This one never downloads.
    """
    from beir.datasets.data_loader import GenericDataLoader

    folder = dataset_folder(name_or_path, data_root)
    try:
        corpus, queries, qrels = GenericDataLoader(data_folder=str(folder)).load(split=split)
    except (ValueError, KeyError, IndexError, OSError) as exc:
        raise DataError(
            f"{folder}: BEIR's GenericDataLoader failed ({type(exc).__name__}: {exc}); "
            "vespa_quant.data.load_beir names the file and line"
        ) from exc
    return from_beir(corpus, queries, qrels, name=folder.name, split=split, path=folder)


def _hash(digest: hashlib._Hash, *fields: object) -> None:
    digest.update(json.dumps(fields, ensure_ascii=False).encode("utf-8"))
    digest.update(b"\n")
