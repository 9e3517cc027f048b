"""BEIR loader: BEIR semantics on tiny generated folders, every malformed input, real SciFact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vespa_quant.data import beir
from vespa_quant.data.beir import BeirDataset, load_beir
from vespa_quant.errors import DataError

CORPUS = [
    {"_id": "d1", "title": "Title one", "text": "Body one."},
    {"_id": "d2", "title": "", "text": "Body two."},
    {"_id": "d3", "text": "  Body three.  "},
]
QUERIES = [
    {"_id": "q1", "text": "first query"},
    {"_id": "q2", "text": "unjudged query"},
    {"_id": "q3", "text": "third query"},
]
QRELS = "query-id\tcorpus-id\tscore\nq3\td2\t1\nq1\td1\t2\nq1\tnot-in-corpus\t1\n"


def write_dataset(
    root: Path,
    corpus: list[dict] | str = CORPUS,
    queries: list[dict] | str = QUERIES,
    qrels: str = QRELS,
    split: str = "test",
) -> Path:
    """A BEIR folder under ``root/tiny``; str arguments are written verbatim (for bad input)."""
    folder = root / "tiny"
    (folder / "qrels").mkdir(parents=True)
    for name, records in (("corpus.jsonl", corpus), ("queries.jsonl", queries)):
        content = records if isinstance(records, str) else "".join(
            json.dumps(r) + "\n" for r in records
        )
        (folder / name).write_text(content, encoding="utf-8")
    (folder / "qrels" / f"{split}.tsv").write_text(qrels, encoding="utf-8")
    return folder


def test_tiny_dataset_follows_beir_conventions(tmp_path: Path) -> None:
    dataset = load_beir(write_dataset(tmp_path))
    assert dataset.name == "tiny"
    assert dataset.split == "test"
    assert dataset.doc_ids == ["d1", "d2", "d3"]
    assert dataset.doc_texts == ["Title one Body one.", "Body two.", "Body three."]
    # Only judged queries survive, in queries.jsonl order (not qrels order).
    assert dataset.query_ids == ["q1", "q3"]
    assert dataset.query_texts == ["first query", "third query"]
    # A judged doc missing from the corpus is kept for pytrec_eval.
    assert dataset.qrels == {"q1": {"d1": 2, "not-in-corpus": 1}, "q3": {"d2": 1}}
    assert dataset.n_judgements == 3
    assert len(dataset.fingerprint) == 16
    int(dataset.fingerprint, 16)


def test_fingerprint_tracks_file_contents(tmp_path: Path) -> None:
    first = load_beir(write_dataset(tmp_path / "a"))
    same = load_beir(write_dataset(tmp_path / "b"))
    edited = load_beir(write_dataset(tmp_path / "c", qrels=QRELS.replace("\t2\n", "\t1\n")))
    assert first.fingerprint == same.fingerprint
    assert first.fingerprint != edited.fingerprint


def test_name_resolves_under_data_root_and_env(tmp_path: Path, monkeypatch) -> None:
    write_dataset(tmp_path)
    assert load_beir("tiny", data_root=tmp_path).doc_ids == ["d1", "d2", "d3"]
    monkeypatch.setenv("VESPA_QUANT_DATA", str(tmp_path))
    assert load_beir("tiny").query_ids == ["q1", "q3"]


def test_other_split(tmp_path: Path) -> None:
    folder = write_dataset(tmp_path, split="dev", qrels="query-id\tcorpus-id\tscore\nq2\td3\t1\n")
    assert load_beir(folder, split="dev").query_ids == ["q2"]
    with pytest.raises(DataError, match=r"test\.tsv: file not found.*available splits: dev"):
        load_beir(folder)


def test_download_failure_explains_how_to_work_offline(tmp_path: Path, monkeypatch) -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on: connection refused, at once
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("VESPA_QUANT_BEIR_URL", f"http://127.0.0.1:{port}/datasets")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with pytest.raises(DataError) as caught:
        load_beir("nfcorpus", data_root=tmp_path)
    message = str(caught.value)
    assert "nfcorpus" in message and f"127.0.0.1:{port}/datasets/nfcorpus.zip" in message
    assert "--data-root" in message and "VESPA_QUANT_DATA" in message
    assert "\n" not in message
    assert not list(tmp_path.iterdir())


def test_missing_folder_given_as_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="dataset folder not found"):
        load_beir(tmp_path / "nowhere")


@pytest.mark.parametrize("missing", ["corpus.jsonl", "queries.jsonl"])
def test_missing_file(tmp_path: Path, missing: str) -> None:
    folder = write_dataset(tmp_path)
    (folder / missing).unlink()
    with pytest.raises(DataError, match=rf"{missing}: file not found"):
        load_beir(folder)


OK_LINE = '{"_id": "d1", "text": "ok"}\n'
BAD_JSONL = [
    # (file, content, expected message)
    ("corpus", OK_LINE + '{"_id": "d2", "text": \n', "corpus.jsonl line 2: not valid JSON"),
    ("corpus", OK_LINE + '\n{"text": "no id"}\n', 'corpus.jsonl line 3: missing "_id"'),
    ("corpus", '{"_id": "d1", "title": "a title"}\n', 'corpus.jsonl line 1: missing "text"'),
    ("corpus", '["d1", "text"]\n', "corpus.jsonl line 1: expected a JSON object"),
    ("corpus", '{"_id": "d1", "text": 5}\n', 'corpus.jsonl line 1: non-string "text"'),
    ("corpus", OK_LINE + '{"_id": "", "text": "b"}\n', 'corpus.jsonl line 2: empty "_id"'),
    ("corpus", OK_LINE + '{"_id": "  ", "text": "b"}\n', 'corpus.jsonl line 2: empty "_id"'),
    (
        "corpus",
        OK_LINE + '{"_id": "d2", "title": " ", "text": ""}\n',
        "corpus.jsonl line 2: empty document 'd2' \\(title and text are both empty\\)",
    ),
    ("queries", '{"_id": "q1", "text": "  "}\n', "queries.jsonl line 1: empty \"text\" for query 'q1'"),
    (
        "corpus",
        OK_LINE + '{"_id": "d2", "text": "b"}\n{"_id": "d1", "text": "c"}\n',
        r"corpus.jsonl line 3: duplicate _id 'd1' \(first on line 1\)",
    ),
    ("queries", '{"_id": "q1", "text": "a"}\nnot json\n', "queries.jsonl line 2: not valid JSON"),
    ("queries", '{"text": "a"}\n', 'queries.jsonl line 1: missing "_id"'),
    ("queries", '{"_id": "q1"}\n', 'queries.jsonl line 1: missing "text"'),
    (
        "queries",
        '{"_id": "q1", "text": "a"}\n{"_id": "q1", "text": "b"}\n',
        "queries.jsonl line 2: duplicate _id 'q1'",
    ),
]


@pytest.mark.parametrize(("which", "content", "expected"), BAD_JSONL)
def test_malformed_jsonl(tmp_path: Path, which: str, content: str, expected: str) -> None:
    kwargs = {which: content}
    if which == "queries":
        kwargs["qrels"] = "query-id\tcorpus-id\tscore\n"
    folder = write_dataset(tmp_path, **kwargs)
    with pytest.raises(DataError, match=expected):
        load_beir(folder)


HEADER = "query-id\tcorpus-id\tscore\n"
BAD_QRELS = [
    ("q1\td1\t1\n", "qrels/test.tsv line 1: missing header"),
    ("", "qrels/test.tsv line 1: missing header"),
    (HEADER + "q1\td1\n", "qrels/test.tsv line 2: expected 3 tab-separated columns"),
    (HEADER + "q1\td1\t1\nq3 d2 1\n", "qrels/test.tsv line 3: expected 3 tab-separated columns"),
    (HEADER + "q1\td1\t1\t9\n", "qrels/test.tsv line 2: expected 3 .*, got 4"),
    (HEADER + "q1\td1\t0.5\n", "qrels/test.tsv line 2: score '0.5' is not an integer"),
    (HEADER + "q1\t\t1\n", "qrels/test.tsv line 2: empty corpus-id"),
    (
        HEADER + "q1\td1\t1\nq3\td2\t1\nq1\td1\t2\n",
        r"qrels/test.tsv line 4: \('q1', 'd1'\) judged 2 here but 1 on line 2",
    ),
    (HEADER + "q9\td1\t1\n", "qrels/test.tsv: no judged query of split 'test' is in queries.jsonl"),
]


@pytest.mark.parametrize(("qrels", "expected"), BAD_QRELS)
def test_malformed_qrels(tmp_path: Path, qrels: str, expected: str) -> None:
    folder = write_dataset(tmp_path, qrels=qrels)
    with pytest.raises(DataError, match=expected):
        load_beir(folder)


def test_qrels_with_crlf_and_numeric_ids(tmp_path: Path) -> None:
    folder = write_dataset(
        tmp_path,
        corpus=[{"_id": 7, "text": "numeric id"}],
        queries=[{"_id": 1, "text": "numeric query id"}],
        qrels="query-id\tcorpus-id\tscore\r\n1\t7\t1\r\n",
    )
    dataset = load_beir(folder)
    assert dataset.doc_ids == ["7"]
    assert dataset.qrels == {"1": {"7": 1}}


def test_dataset_rejects_mismatched_lengths() -> None:
    with pytest.raises(DataError, match="2 doc ids but 1 doc texts"):
        BeirDataset("x", Path("."), ["a", "b"], ["t"], [], [], {}, "0" * 16)


def test_scifact_test_split(scifact_dir: Path) -> None:
    dataset = load_beir(scifact_dir)
    assert len(dataset.doc_ids) == 5183
    assert len(dataset.query_ids) == 300
    assert dataset.n_judgements == 339
    assert set(dataset.qrels) == set(dataset.query_ids)
    assert "scifact" in repr(dataset) and "doc_texts" not in repr(dataset)
    assert dataset.notes == []


def test_title_alone_is_a_document(tmp_path: Path) -> None:
    corpus = [{"_id": "d1", "title": "Only a title", "text": ""}]
    dataset = load_beir(write_dataset(tmp_path, corpus=corpus, qrels=HEADER + "q1\td1\t1\n"))
    assert dataset.doc_texts == ["Only a title"]


# --- notes: what loading dropped or tolerated ---------------------------------------------


def test_notes_summarise_dropped_queries_and_missing_documents(tmp_path: Path, caplog) -> None:
    qrels = QRELS + "q9\td1\t1\nq8\td2\t1\nq1\td1\t2\n"
    with caplog.at_level("WARNING", logger="vespa_quant.data.beir"):
        dataset = load_beir(write_dataset(tmp_path, qrels=qrels))
    assert dataset.query_ids == ["q1", "q3"]
    assert set(dataset.qrels) == {"q1", "q3"}
    assert dataset.notes == [
        "qrels/test.tsv: 1 judgement(s) repeat an earlier line with the same score and were "
        "counted once (first on line 7)",
        "qrels/test.tsv: dropped 2 judged queries missing from queries.jsonl: 'q9' (line 5), "
        "'q8' (line 6)",
        "queries.jsonl: 1 of 3 queries have no judgement in split 'test' and are not evaluated",
        "qrels/test.tsv: 1 judged document(s) missing from corpus.jsonl, kept as relevant but "
        "unretrievable (as BEIR scores them): 'not-in-corpus' (query 'q1')",
    ]
    # Repeats and dropped judged queries are also logged; unjudged queries are normal in BEIR.
    assert [r.getMessage() for r in caplog.records] == dataset.notes[:2]


def test_clean_dataset_has_no_notes(tmp_path: Path) -> None:
    corpus = [{"_id": "d1", "text": "a"}, {"_id": "d2", "text": "b"}]
    queries = [{"_id": "q1", "text": "x"}]
    dataset = load_beir(write_dataset(tmp_path, corpus, queries, HEADER + "q1\td2\t1\n"))
    assert dataset.notes == []


def test_notes_preview_is_bounded(tmp_path: Path) -> None:
    qrels = HEADER + "q1\td1\t1\n" + "".join(f"q1\tgone{i}\t1\n" for i in range(5))
    dataset = load_beir(write_dataset(tmp_path, qrels=qrels))
    (missing,) = [note for note in dataset.notes if "missing from corpus" in note]
    assert missing.startswith("qrels/test.tsv: 5 judged document(s)")
    assert missing.endswith("'gone2' (query 'q1') and 2 more")


# --- name or path (issue 8) -----------------------------------------------------------------


def test_bare_name_resolves_under_data_root_not_current_folder(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "root"
    write_dataset(root)
    decoy = tmp_path / "cwd"
    write_dataset(decoy, corpus=[{"_id": "decoy", "text": "wrong folder"}],
                  qrels=HEADER + "q1\tdecoy\t1\n")
    monkeypatch.chdir(decoy)  # ./tiny exists here, but a bare name means the data root
    assert load_beir("tiny", data_root=root).doc_ids == ["d1", "d2", "d3"]
    assert load_beir("./tiny", data_root=root).doc_ids == ["decoy"]
    assert load_beir(Path("tiny"), data_root=root).doc_ids == ["decoy"]


@pytest.mark.parametrize(
    ("given", "is_path"),
    [("scifact", False), ("cqadupstack.android", False), ("./scifact", True), ("../x", True),
     ("..", True), ("~/data/scifact", True), ("/abs/scifact", True), ("a/b", True),
     (".hidden", True)],
)
def test_looks_like_path(given: str, is_path: bool) -> None:
    assert beir.looks_like_path(given) is is_path


@pytest.mark.parametrize("name", ["..", ".", "/abs", "a/../../b", "", "-x", "a\x00b", "sci fact"])
def test_unsafe_dataset_names_are_rejected(name: str) -> None:
    with pytest.raises(DataError, match=r"dataset name .*: expected one folder name") as caught:
        beir.check_dataset_name(name)
    assert "\n" not in str(caught.value)


def test_path_like_dataset_that_does_not_exist(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    for given in ("a/../../b", "../nowhere", "/nonexistent/scifact"):
        with pytest.raises(DataError, match=r"dataset folder not found"):
            load_beir(given, data_root=tmp_path)
