"""Load a retrieval dataset in BEIR's on-disk layout, checking every line.

BEIR folder layout (Thakur et al., 2021)::

    <name>/corpus.jsonl        {"_id", "title"?, "text"} per line
    <name>/queries.jsonl       {"_id", "text"} per line
    <name>/qrels/<split>.tsv   header "query-id corpus-id score", then one judgement per line

The loader reproduces BEIR's ``GenericDataLoader`` semantics so that scores are comparable to
published BEIR numbers: documents are embedded as ``(title + " " + text).strip()`` (the
sentence-transformers convention of BEIR's dense-retrieval models), and only queries that have a
judgement in the chosen split are kept. Unlike BEIR, malformed input is an error naming the file
and line instead of a ``KeyError`` deep inside evaluation, and whatever is dropped or kept
against expectation is summarised in :attr:`BeirDataset.notes` for the CLI to print.

``GenericDataLoader``'s dicts enter through the same checks (:mod:`vespa_quant.data.interop`);
downloads by name live in :mod:`vespa_quant.data.download`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from vespa_quant.errors import DataError

logger = logging.getLogger(__name__)

DATA_ROOT_ENV = "VESPA_QUANT_DATA"
DEFAULT_DATA_ROOT = Path("~/.cache/vespa-quant/datasets")
QRELS_HEADER = ("query-id", "corpus-id", "score")
DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
PREVIEW = 3


@dataclass(frozen=True)
class BeirDataset:
    """One split of a BEIR dataset, in file order, ready to embed and evaluate.

    ``fingerprint`` is the first 16 hex chars of sha256 over the corpus, queries and qrels file
    bytes; results and embedding caches record it so a silently edited dataset is noticed.
    It is computed while loading (a frozen dataclass cannot cache a lazy property).
    ``notes`` are one-line summaries of what loading dropped or tolerated (queries without
    judgements, judged documents missing from the corpus, repeated qrels lines): facts a user
    should see next to a score, not errors.
    """

    name: str
    path: Path
    doc_ids: list[str] = field(repr=False)
    doc_texts: list[str] = field(repr=False)
    query_ids: list[str] = field(repr=False)
    query_texts: list[str] = field(repr=False)
    qrels: dict[str, dict[str, int]] = field(repr=False)
    fingerprint: str
    split: str = "test"
    notes: list[str] = field(default_factory=list, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.doc_ids) != len(self.doc_texts):
            raise DataError(
                f"{self.name}: {len(self.doc_ids)} doc ids but {len(self.doc_texts)} doc texts"
            )
        if len(self.query_ids) != len(self.query_texts):
            raise DataError(
                f"{self.name}: {len(self.query_ids)} query ids but "
                f"{len(self.query_texts)} query texts"
            )

    @property
    def n_judgements(self) -> int:
        """Number of (query, document) judgements, the size BEIR reports for a qrels split."""
        return sum(len(judged) for judged in self.qrels.values())


def resolve_data_root(data_root: str | Path | None = None) -> Path:
    """BEIR datasets folder: the argument, else ``$VESPA_QUANT_DATA``, else the user cache."""
    if data_root is not None:
        return Path(data_root).expanduser()
    from_env = os.environ.get(DATA_ROOT_ENV)
    if from_env:
        return Path(from_env).expanduser()
    return DEFAULT_DATA_ROOT.expanduser()


def looks_like_path(name_or_path: str) -> bool:
    """Whether ``--dataset`` input names a folder rather than a dataset.

    A dataset name never contains a separator, never starts with ``.`` or ``~`` and is never
    absolute; anything that does was typed as a path. Everything else is a name, so a folder
    called ``scifact`` in the current directory cannot shadow ``<data root>/scifact``
    (write ``./scifact`` to mean that folder).
    """
    separators = [os.sep, "/"] + ([os.altsep] if os.altsep else [])
    return (
        any(sep in name_or_path for sep in separators)
        or name_or_path.startswith((".", "~"))
        or os.path.isabs(name_or_path)
    )


def check_dataset_name(name: str) -> str:
    """Return ``name`` if it is one safe folder name; reject anything that could leave the root.

    Names are joined to the data root and to download URLs, so ``..``, absolute paths and
    ``a/../../b`` must never get that far.
    """
    if not DATASET_NAME.fullmatch(name):
        raise DataError(
            f"dataset name {name!r}: expected one folder name of letters, digits, '.', '_' or "
            "'-' that starts with a letter or digit (to load a folder, give a path such as "
            "./my-data)"
        )
    return name


def dataset_folder(name_or_path: str | Path, data_root: str | Path | None = None) -> Path:
    """Folder of a dataset: a path as given, or a name under the data root (maybe absent).

    A :class:`~pathlib.Path` is always a path; a string is a path only when
    :func:`looks_like_path` says so, otherwise it is a name resolved under
    :func:`resolve_data_root`.
    """
    if isinstance(name_or_path, Path) or looks_like_path(name_or_path):
        return Path(name_or_path).expanduser()
    return resolve_data_root(data_root) / check_dataset_name(name_or_path)


def load_beir(
    name_or_path: str | Path,
    split: str = "test",
    data_root: str | Path | None = None,
) -> BeirDataset:
    """Load ``split`` of a BEIR dataset given a folder, or a name looked up under the data root.

    Name or path: see :func:`dataset_folder`. A name that is not yet under the data root is
    downloaded from BEIR's mirror and checked against BEIR's published md5
    (:func:`vespa_quant.data.download.download_beir`), so ``load_beir("scifact")`` works on a
    fresh machine with network and fails with a message saying where to put the folder on one
    without.
    """
    folder = dataset_folder(name_or_path, data_root)
    if not folder.is_dir():
        if isinstance(name_or_path, Path) or looks_like_path(name_or_path):
            raise DataError(f"{name_or_path}: dataset folder not found")
        # Imported here: download depends on this module (names, data root).
        from vespa_quant.data.download import download_beir

        folder = download_beir(str(name_or_path), resolve_data_root(data_root))

    corpus_path = folder / "corpus.jsonl"
    queries_path = folder / "queries.jsonl"
    qrels_path = folder / "qrels" / f"{split}.tsv"
    for required in (corpus_path, queries_path):
        if not required.is_file():
            raise DataError(f"{required}: file not found (expected BEIR layout in {folder})")
    if not qrels_path.is_file():
        available = sorted(p.stem for p in (folder / "qrels").glob("*.tsv"))
        raise DataError(
            f"{qrels_path}: file not found (split {split!r}; available splits: "
            f"{', '.join(available) if available else 'none'})"
        )

    fingerprint = hashlib.sha256()
    doc_ids: list[str] = []
    doc_texts: list[str] = []
    for where, record in _read_jsonl(corpus_path, fingerprint):
        doc_id, text = document_record(record, where)
        doc_ids.append(doc_id)
        doc_texts.append(text)

    all_queries: dict[str, str] = {}
    for where, record in _read_jsonl(queries_path, fingerprint):
        query_id, text = query_record(record, where)
        all_queries[query_id] = text

    judgements = Judgements(f"{qrels_path.parent.name}/{qrels_path.name}")
    _read_qrels(qrels_path, judgements, fingerprint)
    return assemble(
        name=folder.name, path=folder, doc_ids=doc_ids, doc_texts=doc_texts,
        all_queries=all_queries, judgements=judgements, fingerprint=fingerprint.hexdigest()[:16],
        split=split, labels=("corpus.jsonl", "queries.jsonl"),
    )


def document_record(record: Mapping[str, object], where: str) -> tuple[str, str]:
    """``(doc_id, text to embed)`` of one corpus record, or an error naming ``where``.

    The text is ``(title + " " + text).strip()``, BEIR's convention; a document whose title and
    text are both empty would be embedded as the empty string and is rejected.
    """
    doc_id = _record_id(record, where)
    text = record.get("text")
    if not isinstance(text, str):
        raise DataError(f'{where}: {"missing" if text is None else "non-string"} "text"')
    title = record.get("title") or ""
    joined = (str(title) + " " + text).strip()
    if not joined:
        raise DataError(f"{where}: empty document {doc_id!r} (title and text are both empty)")
    return doc_id, joined


def query_record(record: Mapping[str, object], where: str) -> tuple[str, str]:
    """``(query_id, text)`` of one query record, or an error naming ``where``."""
    query_id = _record_id(record, where)
    text = record.get("text")
    if not isinstance(text, str):
        raise DataError(f'{where}: {"missing" if text is None else "non-string"} "text"')
    if not text.strip():
        raise DataError(f'{where}: empty "text" for query {query_id!r}')
    return query_id, text


def _record_id(record: Mapping[str, object], where: str) -> str:
    """The record's ``_id`` as ``str``: BEIR exports sometimes write numeric ids, qrels never."""
    raw = record.get("_id")
    if raw is None:
        raise DataError(f'{where}: missing "_id"')
    record_id = str(raw)
    if not record_id.strip():
        raise DataError(f'{where}: empty "_id"')
    return record_id


class Judgements:
    """Qrels as they are read, with the first origin of each judgement for error messages.

    A pair judged twice with different scores is an error (which one would BEIR keep? the last,
    silently); the same score twice is harmless and only noted.
    """

    def __init__(self, label: str) -> None:
        self.label = label
        self.qrels: dict[str, dict[str, int]] = {}
        self.first_seen: dict[tuple[str, str], str] = {}
        self.query_origin: dict[str, str] = {}
        self.repeats: list[str] = []

    def add(self, query_id: str, doc_id: str, score: int, where: str) -> None:
        """Record one judgement; ``where`` is its place within ``label`` (e.g. ``line 7``)."""
        judged = self.qrels.setdefault(query_id, {})
        self.query_origin.setdefault(query_id, where)
        if doc_id in judged:
            if judged[doc_id] != score:
                raise DataError(
                    f"{self.label} {where}: ({query_id!r}, {doc_id!r}) judged {score} here but "
                    f"{judged[doc_id]} on {self.first_seen[(query_id, doc_id)]}"
                )
            self.repeats.append(where)
            return
        judged[doc_id] = score
        self.first_seen[(query_id, doc_id)] = where


def assemble(
    *,
    name: str,
    path: Path,
    doc_ids: list[str],
    doc_texts: list[str],
    all_queries: dict[str, str],
    judgements: Judgements,
    fingerprint: str,
    split: str,
    labels: tuple[str, str],
) -> BeirDataset:
    """The dataset of one split, with its notes: the part shared by files and BEIR's dicts.

    Judged queries missing from the queries are dropped (they could never be retrieved for, and
    BEIR itself fails on them with a ``KeyError``); unjudged queries are not evaluated (BEIR's
    rule); judged documents missing from the corpus are kept, because pytrec_eval then counts
    them as relevant but unretrieved, which is what BEIR's published numbers do.
    """
    corpus_label, queries_label = labels
    qrels_label = judgements.label
    notes: list[str] = []
    if judgements.repeats:
        notes.append(
            f"{qrels_label}: {len(judgements.repeats)} judgement(s) repeat an earlier line "
            f"with the same score and were counted once (first on {judgements.repeats[0]})"
        )
        logger.warning("%s", notes[-1])
    unknown = [q for q in judgements.qrels if q not in all_queries]
    if unknown:
        shown = ", ".join(_with_origin(q, judgements.query_origin[q]) for q in unknown[:PREVIEW])
        notes.append(
            f"{qrels_label}: dropped {len(unknown)} judged quer{'y' if len(unknown) == 1 else 'ies'}"
            f" missing from {queries_label}: {shown}{_more(unknown)}"
        )
        logger.warning("%s", notes[-1])
    qrels = {q: judged for q, judged in judgements.qrels.items() if q in all_queries}
    if not qrels:
        raise DataError(
            f"{qrels_label}: no judged query of split {split!r} is in {queries_label}"
        )
    unjudged = len(all_queries) - len(qrels)
    if unjudged:
        notes.append(
            f"{queries_label}: {unjudged} of {len(all_queries)} queries have no judgement in "
            f"split {split!r} and are not evaluated"
        )
    known_docs = set(doc_ids)
    missing = [(q, d) for q, judged in qrels.items() for d in judged if d not in known_docs]
    if missing:
        shown = ", ".join(f"{d!r} (query {q!r})" for q, d in missing[:PREVIEW])
        notes.append(
            f"{qrels_label}: {len(missing)} judged document(s) missing from {corpus_label}, "
            f"kept as relevant but unretrievable (as BEIR scores them): {shown}{_more(missing)}"
        )
    query_ids = [query_id for query_id in all_queries if query_id in qrels]
    return BeirDataset(
        name=name,
        path=path,
        doc_ids=doc_ids,
        doc_texts=doc_texts,
        query_ids=query_ids,
        query_texts=[all_queries[query_id] for query_id in query_ids],
        qrels=qrels,
        fingerprint=fingerprint,
        split=split,
        notes=notes,
    )


def _with_origin(query_id: str, origin: str) -> str:
    return f"{query_id!r} ({origin})" if origin.startswith("line") else repr(query_id)


def _more(items: list) -> str:
    return f" and {len(items) - PREVIEW} more" if len(items) > PREVIEW else ""


def _read_jsonl(path: Path, fingerprint: hashlib._Hash) -> Iterator[tuple[str, dict]]:
    """Yield ``("<file> line <n>", record)`` per JSON object; feed every byte to the hash.

    Blank lines are skipped (trailing newlines are common). Ids must be unique within a file:
    BEIR would keep the last of two, silently.
    """
    seen: dict[str, int] = {}
    with open(path, "rb") as lines:
        for line_number, raw in enumerate(lines, start=1):
            fingerprint.update(raw)
            if not raw.strip():
                continue
            where = f"{path.name} line {line_number}"
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise DataError(f"{where}: not valid JSON ({exc})") from exc
            if not isinstance(record, dict):
                raise DataError(f"{where}: expected a JSON object")
            record_id = _record_id(record, where)
            if record_id in seen:
                raise DataError(
                    f"{where}: duplicate _id {record_id!r} (first on line {seen[record_id]})"
                )
            seen[record_id] = line_number
            yield where, record


def _read_qrels(path: Path, judgements: Judgements, fingerprint: hashlib._Hash) -> None:
    """Parse a BEIR qrels TSV (header, then ``query-id corpus-id score``) into ``judgements``."""
    display = judgements.label
    header_seen = False
    with open(path, "rb") as lines:
        for line_number, raw in enumerate(lines, start=1):
            fingerprint.update(raw)
            where = f"{display} line {line_number}"
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                raise DataError(f"{where}: not valid UTF-8 ({exc})") from exc
            columns = line.split("\t")
            if line_number == 1:
                if tuple(c.strip().lower() for c in columns) != QRELS_HEADER:
                    raise DataError(
                        f"{where}: missing header, expected "
                        f"{chr(9).join(QRELS_HEADER)!r} separated by tabs, got {line!r}"
                    )
                header_seen = True
                continue
            if not line.strip():
                continue
            if len(columns) != 3:
                raise DataError(
                    f"{where}: expected 3 tab-separated columns "
                    f"(query-id, corpus-id, score), got {len(columns)}"
                )
            query_id, doc_id, score_text = (c.strip() for c in columns)
            if not query_id or not doc_id:
                raise DataError(f"{where}: empty {'query-id' if not query_id else 'corpus-id'}")
            try:
                score = int(score_text)
            except ValueError as exc:
                raise DataError(f"{where}: score {score_text!r} is not an integer") from exc
            judgements.add(query_id, doc_id, score, f"line {line_number}")
    if not header_seen:
        raise DataError(f"{display} line 1: missing header (file is empty)")
