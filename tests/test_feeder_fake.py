"""The feeder, the recalibrator and the Vespa backend against a fake Vespa on 127.0.0.1.

No Vespa can run here, so a small HTTP server plays the parts of Vespa's API that the code uses:
``GET /state/v1/health``; ``POST /document/v1/<ns>/<type>/docid/<id>`` (a put: replaces the whole
document) and ``PUT`` on the same path (a partial update: ``{"fields": {f: {"assign": v}}}``,
silently a no-op with 200 when the document does not exist, as the /document/v1 reference says),
both with gzip bodies as pyvespa compresses large ones and both rejecting fields the generated
schema lacks; and ``POST /search/``. Its search decodes the stored hex cells of the profile's slot
and ranks them with the methods' own numpy scores (the twin of each rank profile) after the exact
Hamming top-``targetHits`` when the YQL has a ``nearestNeighbor``, so hits can be compared with
the local engine row for row; ``<field> contains "<value>"`` matches a string attribute's whole
value, and hits carry the summary fields the YQL selects. (Real Vespa's exact search treats
``targetHits`` as a lower bound and may expose more candidates; the profiles that matter rank by
closeness first, see ``query_body``.)
"""

from __future__ import annotations

import gzip
import json
import re
import socket
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest

from vespa_quant.data.beir import BeirDataset
from vespa_quant.engine.local import Hits, search as local_search
from vespa_quant.errors import VespaError
from vespa_quant.embed.embedded import EmbeddedDataset
from vespa_quant.evaluate.runner import LocalBackend, evaluate
from vespa_quant.evaluate.vespa_backend import VespaBackend
from vespa_quant.feed.documents import decode_tensor_hex
from vespa_quant.feed.feeder import feed, read_manifest
from vespa_quant.feed.manifest import active_calibration
from vespa_quant.feed.recalibrate import recalibrate, switch_active_slot, verify_inactive_slot, write_inactive_slot
from vespa_quant.quantize.base import (
    Calibration, calibrate, encode, field_name, method_slots, nn_input_declarations, query_inputs,
)
from vespa_quant.quantize.bits import hamming_distances
from vespa_quant.quantize.registry import METHODS
from vespa_quant.vespa_app.package import DEFAULT_DIMS, build_schema, calibration_field_name, rank_profile_name

DIMS = (64, 32)
N_DOCS = 200
_NN = re.compile(r"\{targetHits:(\d+), approximate:(?:true|false)\}nearestNeighbor\((\w+), (\w+)\)")
_CONTAINS = re.compile(r'(\w+) contains "([^"]*)"')
_YQL = re.compile(r"select (.+?) from doc where (.+)")
SCHEMA_DIMS = (*DIMS, *DEFAULT_DIMS)
"""Dims the fake's schema has: these tests' and the committed package's (the CLI tests feed 384)."""
PROFILES = {rank_profile_name(m.name, d, slot): (m.name, d, slot)
            for m in METHODS.values() for d in SCHEMA_DIMS for slot in method_slots(m)}


def schema_fields(recalibration_slots: bool = True) -> set[str]:
    """Field names of the generated schema: what the fake accepts in puts and updates."""
    schema = build_schema(list(METHODS.values()), SCHEMA_DIMS, recalibration_slots=recalibration_slots)
    return {f.name for f in schema.document.fields}


@dataclass
class FakeVespa:
    """State and failure knobs of the fake; ``url`` once started."""

    permanent: dict[str, int] = field(default_factory=dict)
    """Vespa id -> HTTP status returned for every put of that document."""
    transient: dict[str, int] = field(default_factory=dict)
    """Vespa id -> how many 503s to answer before accepting the put."""
    failing_updates: dict[str, int] = field(default_factory=dict)
    """Vespa id -> HTTP status returned for every partial update of that document."""
    transient_updates: dict[str, int] = field(default_factory=dict)
    """Vespa id -> how many 503s to answer before applying the partial update."""
    search_unavailable: int = 0
    """How many searches to answer with 503 before answering normally."""
    known_fields: set[str] = field(default_factory=schema_fields)
    """Fields of the deployed schema; a put or update naming another is rejected with 400."""
    after_update: Callable[[int], None] | None = None
    """Called with the number of updates applied so far, after each one, outside the lock."""
    docs: dict[str, dict] = field(default_factory=dict)
    updates: list[tuple[str, dict]] = field(default_factory=list)
    """Every partial-update body received (Vespa id, its ``fields``), in arrival order."""
    update_queries: list[str] = field(default_factory=list)
    """The query string of every partial-update request (``create=false``: never create a document)."""
    puts: int = 0
    searches: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    corpus_order: list[str] = field(default_factory=list)
    """Dataset ids in row order: stored documents are scanned in it, so Hamming ties at the
    ``targetHits`` boundary break as in the local engine (real Vespa breaks them its own way)."""
    url: str = ""
    _codes: dict = field(default_factory=dict)

    def _unknown(self, fields: dict) -> tuple[int, dict] | None:
        unknown = sorted(set(fields) - self.known_fields)
        if unknown:
            return 400, {"message": f"No field '{unknown[0]}' in the structure of type 'doc'"}
        return None

    def put(self, vespa_id: str, fields: dict) -> tuple[int, dict]:
        with self.lock:
            self.puts += 1
            if vespa_id in self.permanent:
                return self.permanent[vespa_id], {"message": f"fake rejects {vespa_id}"}
            if self.transient.get(vespa_id, 0) > 0:
                self.transient[vespa_id] -= 1
                return 503, {"message": "fake is overloaded"}
            if rejected := self._unknown(fields):
                return rejected
            self.docs[vespa_id] = fields
            self._codes.clear()
            return 200, {"id": f"id:vespaquant:doc::{vespa_id}"}

    def update(self, vespa_id: str, operations: dict) -> tuple[int, dict]:
        with self.lock:
            self.updates.append((vespa_id, operations))
            if vespa_id in self.failing_updates:
                return self.failing_updates[vespa_id], {"message": f"fake rejects the update of {vespa_id}"}
            if self.transient_updates.get(vespa_id, 0) > 0:
                self.transient_updates[vespa_id] -= 1
                return 503, {"message": "fake is overloaded"}
            if rejected := self._unknown(operations):
                return rejected
            if any(not isinstance(op, dict) or set(op) != {"assign"} for op in operations.values()):
                return 400, {"message": "the fake supports only assign updates"}
            if vespa_id in self.docs:  # Vespa: an update of a missing document is a no-op answered 200
                for name, op in operations.items():
                    self.docs[vespa_id][name] = op["assign"]
                self._codes.clear()
            applied = len(self.updates)
        if self.after_update is not None:
            self.after_update(applied)
        return 200, {"id": f"id:vespaquant:doc::{vespa_id}"}

    def codes(self, name: str, dim: int, slot: str) -> tuple[list[str], dict[str, np.ndarray]]:
        """Stored ids and the decoded codes of ``name`` at ``dim`` in ``slot`` (cached until the next write).

        A document without the field holds zeros, like an unset dense tensor attribute.
        """
        with self.lock:
            if (name, dim, slot) not in self._codes:
                rank = {doc_id: row for row, doc_id in enumerate(self.corpus_order)}
                ids = sorted(self.docs, key=lambda i: rank.get(self.docs[i]["doc_id"], len(rank)))
                codes = {}
                for spec in METHODS[name].fields(dim):
                    key = field_name(name, dim, spec.role, slot)
                    codes[spec.role] = np.stack([
                        decode_tensor_hex(self.docs[i][key]["values"], spec.cell_type) if key in self.docs[i]
                        else np.zeros(spec.cells, dtype=np.float32 if spec.cell_type != "int8" else np.int8)
                        for i in ids
                    ])
                self._codes[(name, dim, slot)] = (ids, codes)
            return self._codes[(name, dim, slot)]

    def _matches(self, where: str) -> list[str] | None:
        """Stored ids matching a ``true`` or ``<string attribute> contains "<value>"`` clause."""
        with self.lock:
            if where == "true":
                return list(self.docs)
            match = _CONTAINS.fullmatch(where)
            if match is None:
                return None
            name, value = match.groups()
            return [i for i, fields in self.docs.items() if str(fields.get(name, "")).lower() == value.lower()]

    def search(self, body: dict) -> tuple[int, dict]:
        with self.lock:
            self.searches += 1
            if self.search_unavailable > 0:
                self.search_unavailable -= 1
                return 503, {"root": {"errors": [{"code": 12, "summary": "Unavailable", "message": "fake"}]}}
        select, where = _YQL.fullmatch(body["yql"]).groups()
        if "ranking.profile" not in body:
            matched = self._matches(where)
            if matched is None or body.get("hits") != 0:
                return 400, {"root": {"errors": [{"summary": "fake", "message": f"cannot count {where!r}"}]}}
            return 200, {"root": {"fields": {"totalCount": len(matched)}, "coverage": {"full": True}}}
        name, dim, slot = PROFILES[body["ranking.profile"]]
        method = METHODS[name]
        declared = dict(method.rank_expressions(dim, field=lambda r: field_name(name, dim, r, slot)).inputs)
        declared.update(nn_input_declarations(method, dim))  # what the generator must add
        inputs = {}
        for key, value in body.items():
            match = re.fullmatch(r"input\.query\((\w+)\)", key)
            if match is None:
                continue
            if match.group(1) not in declared:
                return 400, {"root": {"errors": [{"summary": "Invalid query parameter",
                                                  "message": f"query({match.group(1)}) is not declared"}]}}
            type_ = declared[match.group(1)]
            dtype = np.float64 if type_ == "double" else np.int8 if "int8" in type_ else np.float32
            inputs[match.group(1)] = np.asarray(value, dtype=dtype)
        ids, codes = self.codes(name, dim, slot)
        score_inputs = {k: v.reshape(1, -1) if v.ndim else v.reshape(1)
                        for k, v in inputs.items() if k in method.rank_expressions(dim, field=str).inputs}
        scores = method.score(score_inputs, codes)[0]
        nn = _NN.search(where)
        if nn:
            target, bits_field, tensor = int(nn.group(1)), nn.group(2), nn.group(3)
            roles = {field_name(name, dim, spec.role, slot): spec.role for spec in method.fields(dim)}
            if bits_field not in roles:
                return 400, {"root": {"errors": [{"summary": "fake", "message": f"{bits_field} is not in {slot}"}]}}
            distances = hamming_distances(inputs[tensor][None], codes[roles[bits_field]])[0]
            if target < len(ids):  # the local engine's tie-breaking, so candidate sets agree exactly
                mask = np.zeros(len(ids), dtype=bool)
                mask[np.argpartition(distances[None], target - 1, axis=1)[0, :target]] = True
                scores = np.where(mask, scores, -np.inf)
        summary = [f.strip() for f in select.split(",")]
        order = [i for i in np.argsort(-scores, kind="stable") if np.isfinite(scores[i])][: body["hits"]]
        children = [
            {"id": f"id:vespaquant:doc::{ids[i]}", "relevance": float(scores[i]),
             "fields": {f: self.docs[ids[i]][f] for f in summary if f in self.docs[ids[i]]}}
            for i in order
        ]
        return 200, {"root": {"fields": {"totalCount": int(np.isfinite(scores).sum())},
                              "coverage": {"coverage": 100, "full": True}, "children": children}}


def _handler(fake: FakeVespa) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()  # no Nagle: headers and body leave as separate writes
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, *args) -> None:
            pass

        def _reply(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> dict:
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.headers.get("Content-Encoding") == "gzip":
                raw = gzip.decompress(raw)
            return json.loads(raw)

        def do_GET(self) -> None:
            if self.path == "/state/v1/health":
                self._reply(200, {"status": {"code": "up"}})
            else:
                self._reply(404, {"message": "not found"})

        def _document(self, write: Callable[[str, dict], tuple[int, dict]]) -> bool:
            path = urlsplit(self.path).path
            prefix = "/document/v1/vespaquant/doc/docid/"
            if not path.startswith(prefix):
                return False
            self._reply(*write(unquote(path[len(prefix):]), self._body()["fields"]))
            return True

        def do_POST(self) -> None:
            if self._document(fake.put):
                return
            path = urlsplit(self.path).path
            if path == "/search/":
                self._reply(*fake.search(self._body()))
            else:
                self._reply(404, {"message": f"no handler for {path}"})

        def do_PUT(self) -> None:
            fake.update_queries.append(urlsplit(self.path).query)
            if not self._document(fake.update):
                self._reply(405, {"message": f"PUT {self.path}: only document updates"})

    return Handler


@contextmanager
def serving() -> Iterator[FakeVespa]:
    state = FakeVespa()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def fake() -> Iterator[FakeVespa]:
    with serving() as state:
        yield state


def generated_corpus(generated: tuple[np.ndarray, np.ndarray], n_docs: int) -> EmbeddedDataset:
    """The first ``n_docs`` generated docs (ids with characters a URL path cannot carry raw), 40 queries."""
    docs, queries = generated
    docs = docs[:n_docs]
    doc_ids = [f"d{i}" for i in range(len(docs))]
    doc_ids[1], doc_ids[2], doc_ids[3] = "a/b", "..", "Ünïcode id #3"
    query_ids = [f"q{i}" for i in range(len(queries))]
    qrels = {qid: {doc_ids[i]: 1} for i, qid in enumerate(query_ids)}
    dataset = BeirDataset(name="generated", path=Path("."), doc_ids=doc_ids, doc_texts=[""] * len(docs),
                          query_ids=query_ids, query_texts=[""] * len(queries), qrels=qrels,
                          fingerprint=f"{n_docs:016d}")
    return EmbeddedDataset(dataset, "generated", docs, queries)


@pytest.fixture(scope="module")
def embedded(request) -> EmbeddedDataset:
    """200 generated docs, 40 queries, qrels."""
    return generated_corpus(request.getfixturevalue("generated"), N_DOCS)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_feed_writes_every_document_calibration_and_manifest(fake: FakeVespa, embedded: EmbeddedDataset,
                                                             tmp_path: Path) -> None:
    methods = list(METHODS.values())
    report = feed(fake.url, embedded, methods, DIMS, calibration_dir=tmp_path, progress=False)
    n = len(embedded.dataset.doc_ids)
    assert (report.n_fed, report.failed_ids, report.errors, report.count_in_vespa) == (n, [], {}, n)
    assert report.complete and report.n_docs == n
    manifest = read_manifest(tmp_path)
    assert {(e["method"], e["dim"]) for e in manifest["calibrations"]} == {(m.name, d) for m in methods for d in DIMS}
    for entry in manifest["calibrations"]:
        assert entry["active_slot"] == "a" and set(entry["slots"]) == {"a"}
        record = entry["slots"]["a"]
        assert Calibration.load(tmp_path / record["file"]).id == record["id"]
        assert record["file"] == f"{entry['method']}_{entry['dim']}_{record['id']}.npz"
        assert report.calibrations[(entry["method"], entry["dim"])].id == record["id"]
    stored = {fields["doc_id"]: fields for fields in fake.docs.values()}
    assert set(stored) == set(embedded.dataset.doc_ids)
    assert "a/b" not in fake.docs and ".." not in fake.docs  # sent under escaped ids
    docs, _ = embedded.at_dim(32)
    calibration = calibrate(METHODS["lloyd_max_empir"], docs)
    codes = encode(METHODS["lloyd_max_empir"], docs, calibration)
    row = embedded.dataset.doc_ids.index("a/b")
    assert np.array_equal(decode_tensor_hex(stored["a/b"]["lloyd_max_empir_32_lo"]["values"], "int8"), codes["lo"][row])
    ids = {calibration_field_name(e["method"], e["dim"]): e["slots"]["a"]["id"] for e in manifest["calibrations"]
           if METHODS[e["method"]].needs_calibration}
    assert "lloyd_max_empir_32_calibration" in ids and "float32_32_calibration" not in ids
    for fields in stored.values():  # each document records the calibration of each of its codes
        assert {name: fields[name] for name in ids} == ids
        assert not any(name.endswith("_b") for name in fields)  # a fresh feed writes slot a only

    again = feed(fake.url, embedded, methods[:2], DIMS, calibration_dir=tmp_path / "again", progress=False)
    assert again.count_in_vespa == n and again.complete  # puts overwrite: a re-run never duplicates


def test_feed_reports_failures_and_retries_transient_ones(fake: FakeVespa, embedded: EmbeddedDataset,
                                                          tmp_path: Path) -> None:
    fake.permanent = {"d10": 400, "~YS9i": 507}  # "~YS9i" is how "a/b" travels
    fake.transient = {"d20": 2, "d30": 99}
    methods = [METHODS["float32"], METHODS["binary_asym"]]
    report = feed(fake.url, embedded, methods, DIMS, calibration_dir=tmp_path, max_retries=2,
                  retry_wait=0.01, progress=False)
    n = len(embedded.dataset.doc_ids)
    assert report.failed_ids == ["a/b", "d10", "d30"]  # corpus order
    assert report.errors["d10"] == "HTTP 400: fake rejects d10"
    assert report.errors["a/b"].startswith("HTTP 507")
    assert report.errors["d30"] == "HTTP 503: fake is overloaded"
    assert report.n_fed == n - 3 and report.count_in_vespa == n - 3 and not report.complete
    assert fake.transient["d30"] == 99 - 3  # first round + 2 retry rounds


def test_feed_names_the_url_when_nothing_listens(embedded: EmbeddedDataset, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(VespaError, match=re.escape(f"nothing listens on {url}: start Vespa with `docker compose up -d`")):
        feed(url + "/", embedded, [METHODS["float32"]], DIMS, calibration_dir=tmp_path, progress=False)
    assert not (tmp_path / "manifest.json").exists()


@pytest.fixture(scope="module")
def fed(embedded: EmbeddedDataset, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeVespa, Path]]:
    """One fake holding every method at every dim, for tests that only search."""
    with serving() as state:
        state.corpus_order = list(embedded.dataset.doc_ids)
        calibration_dir = tmp_path_factory.mktemp("calibrations")
        feed(state.url, embedded, list(METHODS.values()), DIMS, calibration_dir=calibration_dir, progress=False)
        yield state, calibration_dir


def assert_same_ranking(found: Hits, local: Hits, full_scores: np.ndarray) -> None:
    """Equal score sequences, each hit's score is its row's true score, equal sets above ties."""
    np.testing.assert_allclose(found.scores, local.scores, rtol=1e-5, atol=1e-6)
    valid = found.indices >= 0
    np.testing.assert_array_equal(valid, local.indices >= 0)
    rows = np.nonzero(valid)
    np.testing.assert_allclose(found.scores[rows], full_scores[rows[0], found.indices[rows]], rtol=1e-5, atol=1e-6)
    for i in range(len(found.indices)):
        boundary = local.scores[i][valid[i]].min()
        above = lambda hits: set(hits.indices[i][hits.scores[i] > boundary + 1e-6].tolist())  # noqa: E731
        assert above(found) == above(local)


@pytest.mark.parametrize("name,first_phase", [
    ("float32", "auto"), ("bfloat16", "auto"), ("int8_asym", "auto"), ("binary_median_asym", "auto"),
    ("binary_hamming", "auto"), ("binary_rescore", "auto"), ("lloyd_max_empir", "auto"),
    ("binary_asym", "hamming"), ("quaternary_asym", "hamming"),
])
def test_vespa_backend_hits_equal_the_local_engine(fed: tuple[FakeVespa, Path], embedded: EmbeddedDataset,
                                                   name: str, first_phase: str) -> None:
    fake, calibration_dir = fed
    method = METHODS[name]
    docs, queries = embedded.at_dim(64)
    calibration = calibrate(method, docs)
    codes = encode(method, docs, calibration)
    backend = VespaBackend(fake.url, embedded.dataset.doc_ids, first_phase=first_phase, k1=50,
                           calibration_dir=calibration_dir)
    found = backend.search(method, calibration, codes, queries, 20)
    local = local_search(method, calibration, codes, queries, k=20, first_phase=first_phase, k1=50)
    assert_same_ranking(found.hits, local, method.score(query_inputs(method, queries, calibration), codes))
    assert found.latencies_ms.shape == (len(queries),) and np.all(found.latencies_ms > 0)


def test_evaluate_on_vespa_equals_local(fed: tuple[FakeVespa, Path], embedded: EmbeddedDataset) -> None:
    fake, calibration_dir = fed
    methods = [METHODS["float32"], METHODS["binary_hamming"], METHODS["quaternary_asym"]]
    backend = VespaBackend(fake.url, embedded.dataset.doc_ids, k1=100, calibration_dir=calibration_dir)
    on_vespa = evaluate(embedded, methods, DIMS, backend=backend, n_resamples=20, show_progress=False)
    local = evaluate(embedded, methods, DIMS, backend=LocalBackend(k1=100), n_resamples=20, show_progress=False)
    for ours, theirs in zip(on_vespa.rows, local.rows):
        assert (ours["method"], ours["dim"]) == (theirs["method"], theirs["dim"])
        assert ours["ndcg_at_10"] == pytest.approx(theirs["ndcg_at_10"], abs=1e-9)
        assert ours["backend"] == "vespa" and ours["latency_ms_p50"] > 0


def test_vespa_backend_detects_calibration_mismatch(fake: FakeVespa, embedded: EmbeddedDataset,
                                                    tmp_path: Path) -> None:
    method = METHODS["int8_asym"]
    fed = tmp_path
    feed(fake.url, embedded, [method], (64,), calibration_dir=fed, progress=False)
    docs, queries = embedded.at_dim(64)
    calibration = calibrate(method, docs)
    fed_id = calibration.id
    other = calibrate(method, docs, seed=1)  # a different calibration id
    backend = VespaBackend(fake.url, embedded.dataset.doc_ids, calibration_dir=fed)
    with pytest.raises(VespaError, match=f"the active slot a of int8_asym@64 holds codes of calibration {fed_id} "
                                         rf"\(int8_asym_64_{fed_id}.npz\), this query uses calibration {other.id}: "
                                         "query with that calibration, or re-run vespa-quant feed / recalibrate"):
        backend.search(method, other, encode(method, docs, other), queries, 10)

    field = calibration_field_name("int8_asym", 64)
    for fields in fake.docs.values():
        fields[field] = "0123456789abcdef"  # documents from an older feed
    with pytest.raises(VespaError, match=r"query 0: document '.*' holds codes of calibration 0123456789abcdef in "
                                         f"slot a of int8_asym@64, this query uses calibration {fed_id}: "
                                         "re-run vespa-quant feed / recalibrate"):
        backend.search(method, calibration, encode(method, docs, calibration), queries, 10)
    for fields in fake.docs.values():
        fields[field] = fed_id
    fake.docs[next(iter(fake.docs))][field] = "fedcba9876543210"  # one stale document
    without_manifest = VespaBackend(fake.url, embedded.dataset.doc_ids)
    with pytest.raises(VespaError, match=f"holds codes of calibration fedcba9876543210 in slot a of int8_asym@64, "
                                         f"this query uses calibration {fed_id}"):
        without_manifest.search(method, calibration, encode(method, docs, calibration), queries, len(docs))


def test_vespa_backend_unknown_ids_missing_methods_and_retries(fake: FakeVespa, embedded: EmbeddedDataset,
                                                               tmp_path: Path) -> None:
    method = METHODS["float32"]
    feed(fake.url, embedded, [method], (64,), calibration_dir=tmp_path / "fed", progress=False)
    docs, queries = embedded.at_dim(64)
    calibration = calibrate(method, docs)
    codes = encode(method, docs, calibration)
    renamed = ["x" + doc_id for doc_id in embedded.dataset.doc_ids]
    with pytest.raises(VespaError, match=r"returned document '.*', which is not one of the 200 corpus ids"):
        VespaBackend(fake.url, renamed).search(method, calibration, codes, queries, 10)

    fake.search_unavailable = 2
    found = VespaBackend(fake.url, embedded.dataset.doc_ids, retry_wait=0.01).search(method, calibration, codes,
                                                                                    queries[:3], 10)
    assert np.all(found.hits.indices >= 0)
    fake.search_unavailable = 10
    with pytest.raises(VespaError, match=r"failed with HTTP 503: Unavailable: fake"):
        VespaBackend(fake.url, embedded.dataset.doc_ids, retry_wait=0.01, max_retries=1,
                     concurrency=1).search(method, calibration, codes, queries[:1], 10)

    subset = tmp_path / "subset"
    feed(fake.url, embedded, [METHODS["binary_asym"]], (64,), calibration_dir=subset, progress=False)
    with pytest.raises(VespaError, match=r"has no calibration for float32@64: re-run vespa-quant feed"):
        VespaBackend(fake.url, embedded.dataset.doc_ids, calibration_dir=subset).search(
            method, calibration, codes, queries, 10)
    with pytest.raises(VespaError, match="nothing listens|refused or dropped"):
        VespaBackend(f"http://127.0.0.1:{_free_port()}", embedded.dataset.doc_ids, retry_wait=0.01,
                     max_retries=1).search(method, calibration, codes, queries[:1], 10)


# --- recalibration: blue/green code slots ------------------------------------------------------

def _fed_slots(fake: FakeVespa, embedded: EmbeddedDataset, methods: list, calibration_dir: Path) -> None:
    fake.corpus_order = list(embedded.dataset.doc_ids)
    report = feed(fake.url, embedded, methods, (64,), calibration_dir=calibration_dir, progress=False)
    assert report.complete


def _entry(calibration_dir: Path, method: str, dim: int = 64) -> dict:
    return next(e for e in read_manifest(calibration_dir)["calibrations"] if (e["method"], e["dim"]) == (method, dim))


def _same_hits(found, expected) -> None:
    np.testing.assert_array_equal(found.hits.indices, expected.hits.indices)
    np.testing.assert_array_equal(found.hits.scores, expected.hits.scores)


def test_recalibration_writes_only_the_inactive_slot_and_switches_after_verification(
        fake: FakeVespa, embedded: EmbeddedDataset, tmp_path: Path) -> None:
    method = METHODS["lloyd_max_gauss"]
    _fed_slots(fake, embedded, [method, METHODS["int8_asym"], METHODS["float32"]], tmp_path)
    docs, queries = embedded.at_dim(64)
    old, new = calibrate(method, docs), calibrate(method, docs[:40])
    assert old.id != new.id
    old_codes, new_codes = encode(method, docs, old), encode(method, docs, new)
    backend = VespaBackend(fake.url, embedded.dataset.doc_ids, k1=50, calibration_dir=tmp_path)
    before = backend.search(method, old, old_codes, queries, 20)
    stored_before = {vespa_id: dict(fields) for vespa_id, fields in fake.docs.items()}
    manifest_before = (tmp_path / "manifest.json").read_bytes()

    during: list = []

    def query_mid_write(n_updates: int) -> None:  # a query while half the documents are rewritten
        if n_updates == N_DOCS // 2:
            try:
                during.append(backend.search(method, old, old_codes, queries, 20))
            except Exception as exc:  # noqa: BLE001 - surfaced by the assertion below
                during.append(exc)

    fake.after_update = query_mid_write
    written = write_inactive_slot(fake.url, embedded, method, 64, tmp_path, new_calibration=new, progress=False)
    fake.after_update = None
    assert written.ok and (written.slot, written.active_slot, written.n_updated) == ("b", "a", N_DOCS)

    slot_b = {"lloyd_max_gauss_64_calibration_b", "lloyd_max_gauss_64_hi_b", "lloyd_max_gauss_64_lo_b"}
    assert len(fake.updates) == N_DOCS and set(fake.update_queries) == {"create=false"}
    assert all(set(operations) == slot_b for _, operations in fake.updates)  # no other field is touched
    row = embedded.dataset.doc_ids.index("a/b")
    for vespa_id, fields in fake.docs.items():
        assert {k: v for k, v in fields.items() if k not in slot_b} == stored_before[vespa_id]
        assert fields["lloyd_max_gauss_64_calibration_b"] == new.id
    hi_b = decode_tensor_hex(fake.docs["~YS9i"]["lloyd_max_gauss_64_hi_b"]["values"], "int8")
    assert np.array_equal(hi_b, new_codes["hi"][row])
    assert (tmp_path / "manifest.json").read_bytes() == manifest_before  # nothing switched yet

    assert len(during) == 1 and not isinstance(during[0], Exception), during
    _same_hits(during[0], before)  # during the write: the old slot, untouched
    _same_hits(backend.search(method, old, old_codes, queries, 20), before)  # written, not yet switched
    with pytest.raises(VespaError, match=f"the active slot a of lloyd_max_gauss@64 holds codes of calibration "
                                         f"{old.id} .* this query uses calibration {new.id}"):
        backend.search(method, new, new_codes, queries, 20)

    check = verify_inactive_slot(fake.url, written)
    assert check.ok and (check.n_with_id, check.n_in_vespa, check.n_docs) == (N_DOCS, N_DOCS, N_DOCS)
    assert (tmp_path / "manifest.json").read_bytes() == manifest_before  # verifying switches nothing
    switch_active_slot(tmp_path, written, check)

    entry = _entry(tmp_path, "lloyd_max_gauss")
    assert entry["active_slot"] == "b"
    assert entry["slots"]["a"] == {"id": old.id, "file": f"lloyd_max_gauss_64_{old.id}.npz"}
    assert entry["slots"]["b"] == {"id": new.id, "file": f"lloyd_max_gauss_64_{new.id}.npz"}
    assert active_calibration(tmp_path, "lloyd_max_gauss", 64).id == new.id
    after = backend.search(method, new, new_codes, queries, 20)
    local = local_search(method, new, new_codes, queries, k=20, first_phase="auto", k1=50)
    assert_same_ranking(after.hits, local, method.score(query_inputs(method, queries, new), new_codes))
    with pytest.raises(VespaError, match=f"active slot b of lloyd_max_gauss@64 holds codes of calibration {new.id}"):
        backend.search(method, old, old_codes, queries, 20)
    other = METHODS["int8_asym"]  # other methods are untouched and still answer from their slot a
    other_cal = calibrate(other, docs)
    assert _entry(tmp_path, "int8_asym")["active_slot"] == "a"
    backend.search(other, other_cal, encode(other, docs, other_cal), queries, 10)


def test_recalibrate_switches_slots_back_and_forth(fake: FakeVespa, embedded: EmbeddedDataset, tmp_path: Path) -> None:
    method = METHODS["int8_asym"]
    _fed_slots(fake, embedded, [method], tmp_path)
    docs, queries = embedded.at_dim(64)
    fed = calibrate(method, docs)
    first = recalibrate(fake.url, embedded, method, 64, tmp_path, new_calibration=calibrate(method, docs[:60]),
                        progress=False)
    assert first.switched and (first.old_slot, first.new_slot, first.active_slot) == ("a", "b", "b")
    assert (first.old_calibration_id, first.n_with_new_id, first.count_in_vespa) == (fed.id, N_DOCS, N_DOCS)
    assert all(set(ops) == {"int8_asym_64_calibration_b", "int8_asym_64_codes_b"} for _, ops in fake.updates)

    fake.updates.clear()
    second = recalibrate(fake.url, embedded, method, 64, tmp_path, progress=False)  # calibrates on the corpus
    assert second.switched and (second.old_slot, second.new_slot) == ("b", "a")
    assert second.new_calibration_id == fed.id and second.calibration.id == fed.id
    assert len(fake.updates) == N_DOCS
    assert all(set(ops) == {"int8_asym_64_calibration", "int8_asym_64_codes"} for _, ops in fake.updates)
    codes = encode(method, docs, fed)
    found = VespaBackend(fake.url, embedded.dataset.doc_ids, calibration_dir=tmp_path).search(
        method, fed, codes, queries, 10)
    local = local_search(method, fed, codes, queries, k=10)
    assert_same_ranking(found.hits, local, method.score(query_inputs(method, queries, fed), codes))


def test_a_failed_update_leaves_the_active_slot_unchanged(fake: FakeVespa, embedded: EmbeddedDataset,
                                                         tmp_path: Path) -> None:
    method = METHODS["binary_median_asym"]
    _fed_slots(fake, embedded, [method], tmp_path)
    docs, queries = embedded.at_dim(64)
    old, new = calibrate(method, docs), calibrate(method, docs[:30])
    manifest_before = (tmp_path / "manifest.json").read_bytes()
    fake.failing_updates = {"d7": 500}
    fake.transient_updates = {"d8": 2}
    report = recalibrate(fake.url, embedded, method, 64, tmp_path, new_calibration=new, max_retries=2,
                         retry_wait=0.01, progress=False)
    assert not report.switched and report.active_slot == "a"
    assert report.failed_ids == ["d7"] and report.errors["d7"] == "HTTP 500: fake rejects the update of d7"
    assert report.n_updated == N_DOCS - 1 and report.n_with_new_id is None
    assert fake.transient_updates["d8"] == 0  # a transient failure is sent again
    assert (tmp_path / "manifest.json").read_bytes() == manifest_before
    codes = encode(method, docs, old)
    found = VespaBackend(fake.url, embedded.dataset.doc_ids, calibration_dir=tmp_path).search(
        method, old, codes, queries, 10)  # queries keep reading slot a
    assert_same_ranking(found.hits, local_search(method, old, codes, queries, k=10),
                        method.score(query_inputs(method, queries, old), codes))

    written = write_inactive_slot(fake.url, embedded, method, 64, tmp_path, new_calibration=new, progress=False)
    with pytest.raises(VespaError, match=r"binary_median_asym@64: 1 of 200 updates of slot b failed, e\.g\. d7 "
                                         r"\(HTTP 500: fake rejects the update of d7\); the active slot stays a"):
        switch_active_slot(tmp_path, written, verify_inactive_slot(fake.url, written))
    assert (tmp_path / "manifest.json").read_bytes() == manifest_before


def test_verification_catches_what_acknowledgements_miss(fake: FakeVespa, embedded: EmbeddedDataset,
                                                         tmp_path: Path) -> None:
    method = METHODS["quaternary_asym"]
    _fed_slots(fake, embedded, [method], tmp_path)
    docs, _ = embedded.at_dim(64)
    new = calibrate(method, docs[:50])
    manifest_before = (tmp_path / "manifest.json").read_bytes()
    missing = fake.docs.pop("d5")  # Vespa acknowledges an update of a missing document with 200
    report = recalibrate(fake.url, embedded, method, 64, tmp_path, new_calibration=new, progress=False)
    assert report.n_updated == N_DOCS and not report.failed_ids
    assert not report.switched and (report.n_with_new_id, report.count_in_vespa) == (N_DOCS - 1, N_DOCS - 1)
    assert (tmp_path / "manifest.json").read_bytes() == manifest_before
    written = write_inactive_slot(fake.url, embedded, method, 64, tmp_path, new_calibration=new, progress=False)
    with pytest.raises(VespaError, match=f"Vespa counts 199 documents whose slot b holds calibration {new.id} "
                                         "and 199 documents in all, the corpus has 200; the active slot stays a"):
        switch_active_slot(tmp_path, written, verify_inactive_slot(fake.url, written))

    fake.docs["d5"] = missing
    written = write_inactive_slot(fake.url, embedded, method, 64, tmp_path, new_calibration=new, progress=False)
    check = verify_inactive_slot(fake.url, written)
    assert check.ok
    feed(fake.url, embedded, [method], (64,), calibration_dir=tmp_path, progress=False)  # puts empty slot b
    with pytest.raises(VespaError, match="was rewritten while slot b of quaternary_asym@64 was written"):
        switch_active_slot(tmp_path, written, check)
    assert _entry(tmp_path, "quaternary_asym")["active_slot"] == "a"


def test_documents_fed_after_a_recalibration_carry_every_slot(fake: FakeVespa, embedded: EmbeddedDataset,
                                                              generated, tmp_path: Path) -> None:
    method, free = METHODS["lloyd_max_empir"], METHODS["float32"]
    _fed_slots(fake, embedded, [method, free], tmp_path)
    docs, _ = embedded.at_dim(64)
    old, new = calibrate(method, docs), calibrate(method, docs[:50])
    assert recalibrate(fake.url, embedded, method, 64, tmp_path, new_calibration=new, progress=False).switched

    grown = generated_corpus(generated, N_DOCS + 10)  # ten new documents arrive
    fake.corpus_order = list(grown.dataset.doc_ids)
    report = feed(fake.url, grown, [method, free], (64,), calibration_dir=tmp_path, keep_calibrations=True,
                  progress=False)
    assert report.complete and report.n_docs == N_DOCS + 10
    assert report.calibrations[("lloyd_max_empir", 64)].id == new.id
    entry = _entry(tmp_path, "lloyd_max_empir")
    assert entry["active_slot"] == "b" and {s: r["id"] for s, r in entry["slots"].items()} == {"a": old.id, "b": new.id}
    assert read_manifest(tmp_path)["n_docs"] == N_DOCS + 10
    for fields in fake.docs.values():
        assert fields["lloyd_max_empir_64_calibration"] == old.id
        assert fields["lloyd_max_empir_64_calibration_b"] == new.id
    grown_docs, queries = grown.at_dim(64)
    codes = encode(method, grown_docs, new)
    found = VespaBackend(fake.url, grown.dataset.doc_ids, calibration_dir=tmp_path).search(
        method, new, codes, queries, 10)
    assert_same_ranking(found.hits, local_search(method, new, codes, queries, k=10),
                        method.score(query_inputs(method, queries, new), codes))

    with pytest.raises(VespaError, match=r"keep_calibrations feeds exactly the \(method, dim\)s of .*manifest.json: "
                                         r"missing \[\('float32', 64\)\]"):
        feed(fake.url, grown, [method], (64,), calibration_dir=tmp_path, keep_calibrations=True, progress=False)


def test_recalibrate_refuses_what_it_cannot_switch(fake: FakeVespa, embedded: EmbeddedDataset, tmp_path: Path) -> None:
    method = METHODS["int8_asym"]
    fake.known_fields = schema_fields(recalibration_slots=False)  # a package generated without slot b
    _fed_slots(fake, embedded, [method, METHODS["float32"]], tmp_path)
    with pytest.raises(VespaError, match="float32 needs no calibration: there is nothing to recalibrate"):
        recalibrate(fake.url, embedded, METHODS["float32"], 64, tmp_path, progress=False)
    with pytest.raises(VespaError, match=r"has no calibration for int8_asym@32: re-run vespa-quant feed"):
        recalibrate(fake.url, embedded, method, 32, tmp_path, progress=False)
    docs, _ = embedded.at_dim(64)
    with pytest.raises(VespaError, match="is for int8_asym@32, not int8_asym@64"):
        recalibrate(fake.url, embedded, method, 64, tmp_path, new_calibration=calibrate(method, embedded.at_dim(32)[0]),
                    progress=False)
    report = recalibrate(fake.url, embedded, method, 64, tmp_path, new_calibration=calibrate(method, docs[:20]),
                         max_retries=0, progress=False)
    assert not report.switched and len(report.failed_ids) == N_DOCS
    assert report.errors["d0"] == "HTTP 400: No field 'int8_asym_64_calibration_b' in the structure of type 'doc'"
    assert _entry(tmp_path, "int8_asym")["active_slot"] == "a"
