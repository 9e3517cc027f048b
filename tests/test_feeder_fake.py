"""The feeder and the Vespa backend against a fake Vespa on 127.0.0.1.

No Vespa can run here, so a small HTTP server plays the parts of Vespa's API that the code uses:
``GET /state/v1/health``, ``POST|PUT /document/v1/<ns>/<type>/docid/<id>`` (gzip bodies, as pyvespa
compresses large ones) and ``POST /search/``. Its search decodes the stored hex cells and ranks
them with the methods' own numpy scores (the twin of each rank profile) after the exact Hamming
top-``targetHits`` when the YQL has a ``nearestNeighbor``, so hits can be compared with the local
engine row for row. (Real Vespa's exact search treats ``targetHits`` as a lower bound and may expose
more candidates; the profiles that matter rank by closeness first, see ``query_body``.)
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
from typing import Iterator
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest

from vespa_quant.data.beir import BeirDataset
from vespa_quant.engine.local import Hits, search as local_search
from vespa_quant.errors import VespaError
from vespa_quant.evaluate.runner import EmbeddedDataset, LocalBackend, evaluate
from vespa_quant.evaluate.vespa_backend import VespaBackend
from vespa_quant.feed.documents import decode_tensor_hex
from vespa_quant.quantize.base import nn_input_declarations
from vespa_quant.feed.feeder import feed, read_manifest
from vespa_quant.quantize.base import Calibration, calibrate, encode, field_name, query_inputs
from vespa_quant.quantize.bits import hamming_distances
from vespa_quant.quantize.registry import METHODS

DIMS = (64, 32)
N_DOCS = 200
_NN = re.compile(r"\{targetHits:(\d+), approximate:(?:true|false)\}nearestNeighbor\((\w+), (\w+)\)")


@dataclass
class FakeVespa:
    """State and failure knobs of the fake; ``url`` once started."""

    permanent: dict[str, int] = field(default_factory=dict)
    """Vespa id -> HTTP status returned for every put of that document."""
    transient: dict[str, int] = field(default_factory=dict)
    """Vespa id -> how many 503s to answer before accepting the put."""
    search_unavailable: int = 0
    """How many searches to answer with 503 before answering normally."""
    docs: dict[str, dict] = field(default_factory=dict)
    puts: int = 0
    searches: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    corpus_order: list[str] = field(default_factory=list)
    """Dataset ids in row order: stored documents are scanned in it, so Hamming ties at the
    ``targetHits`` boundary break as in the local engine (real Vespa breaks them its own way)."""
    url: str = ""
    _codes: dict = field(default_factory=dict)

    def put(self, vespa_id: str, fields: dict) -> tuple[int, dict]:
        with self.lock:
            self.puts += 1
            if vespa_id in self.permanent:
                return self.permanent[vespa_id], {"message": f"fake rejects {vespa_id}"}
            if self.transient.get(vespa_id, 0) > 0:
                self.transient[vespa_id] -= 1
                return 503, {"message": "fake is overloaded"}
            self.docs[vespa_id] = fields
            self._codes.clear()
            return 200, {"id": f"id:vespaquant:doc::{vespa_id}"}

    def codes(self, name: str, dim: int) -> tuple[list[str], dict[str, np.ndarray]]:
        """Stored ids and the decoded codes of ``name`` at ``dim`` (cached until the next put)."""
        with self.lock:
            if (name, dim) not in self._codes:
                rank = {doc_id: row for row, doc_id in enumerate(self.corpus_order)}
                ids = sorted(self.docs, key=lambda i: rank.get(self.docs[i]["doc_id"], len(rank)))
                codes = {
                    spec.role: np.stack([
                        decode_tensor_hex(self.docs[i][field_name(name, dim, spec.role)]["values"], spec.cell_type)
                        for i in ids
                    ])
                    for spec in METHODS[name].fields(dim)
                }
                self._codes[(name, dim)] = (ids, codes)
            return self._codes[(name, dim)]

    def search(self, body: dict) -> tuple[int, dict]:
        with self.lock:
            self.searches += 1
            if self.search_unavailable > 0:
                self.search_unavailable -= 1
                return 503, {"root": {"errors": [{"code": 12, "summary": "Unavailable", "message": "fake"}]}}
        if body["yql"] == "select * from doc where true" and body["hits"] == 0:
            return 200, {"root": {"fields": {"totalCount": len(self.docs)}, "coverage": {"full": True}}}
        name, dim = body["ranking.profile"].rsplit("_", 1)
        method, dim = METHODS[name], int(dim)
        declared = dict(method.rank_expressions(dim, field=lambda r: field_name(name, dim, r)).inputs)
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
        ids, codes = self.codes(name, dim)
        score_inputs = {k: v.reshape(1, -1) if v.ndim else v.reshape(1)
                        for k, v in inputs.items() if k in method.rank_expressions(dim, field=str).inputs}
        scores = method.score(score_inputs, codes)[0]
        nn = _NN.search(body["yql"])
        if nn:
            target, bits_field, tensor = int(nn.group(1)), nn.group(2), nn.group(3)
            role = bits_field.rsplit("_", 1)[1]
            distances = hamming_distances(inputs[tensor][None], codes[role])[0]
            if target < len(ids):  # the local engine's tie-breaking, so candidate sets agree exactly
                mask = np.zeros(len(ids), dtype=bool)
                mask[np.argpartition(distances[None], target - 1, axis=1)[0, :target]] = True
                scores = np.where(mask, scores, -np.inf)
        order = [i for i in np.argsort(-scores, kind="stable") if np.isfinite(scores[i])][: body["hits"]]
        children = [
            {"id": f"id:vespaquant:doc::{ids[i]}", "relevance": float(scores[i]),
             "fields": {"doc_id": self.docs[ids[i]]["doc_id"],
                        "calibration_set": self.docs[ids[i]]["calibration_set"]}}
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

        def do_POST(self) -> None:
            path = urlsplit(self.path).path
            body = self._body()
            prefix = "/document/v1/vespaquant/doc/docid/"
            if path.startswith(prefix):
                self._reply(*fake.put(unquote(path[len(prefix):]), body["fields"]))
            elif path == "/search/":
                self._reply(*fake.search(body))
            else:
                self._reply(404, {"message": f"no handler for {path}"})

        do_PUT = do_POST

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


@pytest.fixture(scope="module")
def embedded(request) -> EmbeddedDataset:
    """200 generated docs (ids with characters a URL path cannot carry raw), 40 queries, qrels."""
    docs, queries = request.getfixturevalue("generated")
    docs = docs[:N_DOCS]
    doc_ids = [f"d{i}" for i in range(len(docs))]
    doc_ids[1], doc_ids[2], doc_ids[3] = "a/b", "..", "Ünïcode id #3"
    query_ids = [f"q{i}" for i in range(len(queries))]
    qrels = {qid: {doc_ids[i]: 1} for i, qid in enumerate(query_ids)}
    dataset = BeirDataset(name="generated", path=Path("."), doc_ids=doc_ids, doc_texts=[""] * len(docs),
                          query_ids=query_ids, query_texts=[""] * len(queries), qrels=qrels,
                          fingerprint="0" * 16)
    return EmbeddedDataset(dataset, "generated", docs, queries)


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
    assert manifest["calibration_set"] == report.calibration_set
    assert {(e["method"], e["dim"]) for e in manifest["calibrations"]} == {(m.name, d) for m in methods for d in DIMS}
    for entry in manifest["calibrations"]:
        assert Calibration.load(tmp_path / entry["file"]).id == entry["id"]
    stored = {fields["doc_id"]: fields for fields in fake.docs.values()}
    assert set(stored) == set(embedded.dataset.doc_ids)
    assert "a/b" not in fake.docs and ".." not in fake.docs  # sent under escaped ids
    docs, _ = embedded.at_dim(32)
    calibration = calibrate(METHODS["lloyd_max_empir"], docs)
    codes = encode(METHODS["lloyd_max_empir"], docs, calibration)
    row = embedded.dataset.doc_ids.index("a/b")
    assert np.array_equal(decode_tensor_hex(stored["a/b"]["lloyd_max_empir_32_lo"]["values"], "int8"), codes["lo"][row])
    assert all(f["calibration_set"] == report.calibration_set for f in stored.values())

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
    fed_set = read_manifest(fed)["calibration_set"]
    other = calibrate(method, docs, seed=1)  # a different calibration id
    backend = VespaBackend(fake.url, embedded.dataset.doc_ids, calibration_dir=fed)
    with pytest.raises(VespaError, match=f"documents were encoded with calibration set {fed_set}, this query uses "
                                         r"[0-9a-f]{16}: re-run vespa-quant feed"):
        backend.search(method, other, encode(method, docs, other), queries, 10)

    calibration = calibrate(method, docs)
    for fields in fake.docs.values():
        fields["calibration_set"] = "0123456789abcdef"  # documents from an older feed
    with pytest.raises(VespaError, match=f"encoded with calibration set 0123456789abcdef, this query uses {fed_set}"):
        backend.search(method, calibration, encode(method, docs, calibration), queries, 10)
    fake.docs[next(iter(fake.docs))]["calibration_set"] = "fedcba9876543210"
    without_manifest = VespaBackend(fake.url, embedded.dataset.doc_ids)
    with pytest.raises(VespaError, match="different calibration sets"):
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
