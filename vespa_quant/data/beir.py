"""Load a retrieval dataset in BEIR's on-disk layout.

BEIR folder layout (Thakur et al., 2021)::

    <name>/corpus.jsonl        {"_id", "title"?, "text"} per line
    <name>/queries.jsonl       {"_id", "text"} per line
    <name>/qrels/<split>.tsv   header "query-id corpus-id score", then one judgement per line

The loader reproduces BEIR's ``GenericDataLoader`` semantics so that scores are comparable to
published BEIR numbers: documents are embedded as ``(title + " " + text).strip()`` (the
sentence-transformers convention of BEIR's dense-retrieval models), and only queries that have a
judgement in the chosen split are kept. Unlike BEIR, malformed input is an error naming the file
and line instead of a ``KeyError`` deep inside evaluation.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from vespa_quant.errors import DataError

BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"
DATA_ROOT_ENV = "VESPA_QUANT_DATA"
DEFAULT_DATA_ROOT = Path("~/.cache/vespa-quant/datasets")
QRELS_HEADER = ("query-id", "corpus-id", "score")


@dataclass(frozen=True)
class BeirDataset:
    """One split of a BEIR dataset, in file order, ready to embed and evaluate.

    ``fingerprint`` is the first 16 hex chars of sha256 over the corpus, queries and qrels file
    bytes; results and embedding caches record it so a silently edited dataset is noticed.
    It is computed while loading (a frozen dataclass cannot cache a lazy property).
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


def load_beir(
    name_or_path: str | Path,
    split: str = "test",
    data_root: str | Path | None = None,
) -> BeirDataset:
    """Load ``split`` of a BEIR dataset given a folder, or a name looked up under the data root.

    A name that is not yet under the data root is downloaded from BEIR's public mirror, so
    ``load_beir("scifact")`` works on a fresh machine with network and fails with a message
    saying where to put the folder on one without.
    """
    as_path = Path(name_or_path).expanduser()
    if as_path.is_dir():
        folder = as_path
    elif _looks_like_path(str(name_or_path)):
        raise DataError(f"{name_or_path}: dataset folder not found")
    else:
        root = resolve_data_root(data_root)
        folder = root / str(name_or_path)
        if not folder.is_dir():
            folder = download_beir(str(name_or_path), root)

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
    for _, record in _read_jsonl(corpus_path, fingerprint):
        title = record.get("title") or ""
        doc_ids.append(record["_id"])
        doc_texts.append((str(title) + " " + record["text"]).strip())

    all_queries: dict[str, str] = {}
    for _, record in _read_jsonl(queries_path, fingerprint):
        all_queries[record["_id"]] = record["text"]

    qrels = _read_qrels(qrels_path, set(all_queries), fingerprint)
    query_ids = [query_id for query_id in all_queries if query_id in qrels]
    return BeirDataset(
        name=folder.name,
        path=folder,
        doc_ids=doc_ids,
        doc_texts=doc_texts,
        query_ids=query_ids,
        query_texts=[all_queries[query_id] for query_id in query_ids],
        qrels=qrels,
        fingerprint=fingerprint.hexdigest()[:16],
        split=split,
    )


def download_beir(name: str, data_root: str | Path) -> Path:
    """Download and unzip BEIR's ``{name}.zip`` into ``data_root``; return the dataset folder.

    Streams to a ``.part`` file and renames it only when complete, so an interrupted download
    never leaves a truncated zip that a later run would trust.
    """
    import requests
    from tqdm.auto import tqdm

    root = Path(data_root).expanduser()
    url = BEIR_URL.format(name=name)
    hint = (
        f"place the BEIR folder at {root / name} yourself, or point --data-root / "
        f"${DATA_ROOT_ENV} at a folder that holds it"
    )
    zip_path = root / f"{name}.zip"
    part_path = root / f"{name}.zip.part"
    try:
        root.mkdir(parents=True, exist_ok=True)
        with requests.get(url, stream=True, timeout=60) as response:
            if response.status_code == 404:
                raise DataError(f"{name}: not a BEIR dataset ({url} answered 404); {hint}")
            response.raise_for_status()
            total = int(response.headers.get("content-length", 0)) or None
            with open(part_path, "wb") as out, tqdm(
                total=total, unit="B", unit_scale=True, desc=f"download {name}"
            ) as progress:
                for chunk in response.iter_content(chunk_size=1 << 20):
                    out.write(chunk)
                    progress.update(len(chunk))
        os.replace(part_path, zip_path)
        with zipfile.ZipFile(zip_path) as archive:
            archive.extractall(root)
    except requests.RequestException as exc:
        raise DataError(f"{name}: could not download {url} ({exc}); {hint}") from exc
    except zipfile.BadZipFile as exc:
        raise DataError(f"{zip_path}: not a valid zip archive ({exc}); {hint}") from exc
    except OSError as exc:
        raise DataError(f"{name}: could not save the download under {root} ({exc})") from exc
    finally:
        part_path.unlink(missing_ok=True)
    zip_path.unlink(missing_ok=True)

    folder = root / name
    if not folder.is_dir():
        raise DataError(f"{zip_path}: archive did not contain a {name}/ folder; {hint}")
    return folder


def _looks_like_path(name: str) -> bool:
    """A dataset *name* never contains a separator, so such input was meant as a folder."""
    return os.sep in name or "/" in name or name.startswith((".", "~"))


def _read_jsonl(path: Path, fingerprint: "hashlib._Hash") -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, record)`` with a string ``_id`` and ``text``; feed bytes to the hash.

    Blank lines are skipped (trailing newlines are common); ids are coerced to ``str`` because
    some BEIR exports write numeric ids and qrels always compare them as strings.
    """
    seen: dict[str, int] = {}
    with open(path, "rb") as lines:
        for line_number, raw in enumerate(lines, start=1):
            fingerprint.update(raw)
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise DataError(f"{path.name} line {line_number}: not valid JSON ({exc})") from exc
            if not isinstance(record, dict):
                raise DataError(f"{path.name} line {line_number}: expected a JSON object")
            if record.get("_id") is None:
                raise DataError(f'{path.name} line {line_number}: missing "_id"')
            if not isinstance(record.get("text"), str):
                problem = "missing" if record.get("text") is None else "non-string"
                raise DataError(f'{path.name} line {line_number}: {problem} "text"')
            record_id = str(record["_id"])
            if record_id in seen:
                raise DataError(
                    f"{path.name} line {line_number}: duplicate _id {record_id!r} "
                    f"(first on line {seen[record_id]})"
                )
            seen[record_id] = line_number
            record["_id"] = record_id
            yield line_number, record


def _read_qrels(
    path: Path, known_query_ids: set[str], fingerprint: "hashlib._Hash"
) -> dict[str, dict[str, int]]:
    """Parse a BEIR qrels TSV into ``{query_id: {doc_id: score}}``.

    Judged documents absent from the corpus are kept: pytrec_eval treats them as unretrieved
    relevant documents, which is what BEIR's published numbers do. A judged *query* absent from
    queries.jsonl is an error, because it would silently vanish from every metric.
    """
    qrels: dict[str, dict[str, int]] = {}
    display = f"{path.parent.name}/{path.name}"
    header_seen = False
    with open(path, "rb") as lines:
        for line_number, raw in enumerate(lines, start=1):
            fingerprint.update(raw)
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                raise DataError(f"{display} line {line_number}: not valid UTF-8 ({exc})") from exc
            columns = line.split("\t")
            if line_number == 1:
                if tuple(c.strip().lower() for c in columns) != QRELS_HEADER:
                    raise DataError(
                        f"{display} line 1: missing header, expected "
                        f"{chr(9).join(QRELS_HEADER)!r} separated by tabs, got {line!r}"
                    )
                header_seen = True
                continue
            if not line.strip():
                continue
            if len(columns) != 3:
                raise DataError(
                    f"{display} line {line_number}: expected 3 tab-separated columns "
                    f"(query-id, corpus-id, score), got {len(columns)}"
                )
            query_id, doc_id, score_text = (c.strip() for c in columns)
            try:
                score = int(score_text)
            except ValueError as exc:
                raise DataError(
                    f"{display} line {line_number}: score {score_text!r} is not an integer"
                ) from exc
            if query_id not in known_query_ids:
                raise DataError(
                    f"{display} line {line_number}: query id {query_id!r} is not in queries.jsonl"
                )
            qrels.setdefault(query_id, {})[doc_id] = score
    if not header_seen:
        raise DataError(f"{display} line 1: missing header (file is empty)")
    return qrels
