"""A fake Vespa on 127.0.0.1 for the feeder, recalibration, backend and CLI tests.

No Vespa can run here, so a small HTTP server plays the parts of Vespa's API that the code uses:
``GET /state/v1/health``; ``POST /document/v1/<ns>/<type>/docid/<id>`` (a put: replaces the whole
document) and ``PUT`` on the same path (a partial update: ``{"fields": {f: {"assign": v}}}``,
silently a no-op with 200 when the document does not exist, as the /document/v1 reference says),
both with gzip bodies as pyvespa compresses large ones and both rejecting fields the generated
schema lacks; ``GET /document/v1/vespaquant/doc/docid`` (a visit: ``fieldSet=doc:f1,f2``, pages and
``continuation``); and ``POST /search/``. Faults (``fault_vespa.FaultPlan``: random statuses,
dropped connections, stalls) apply to any request once it is read; ``unstored`` makes writes
answer 200 without storing. Its search decodes the stored hex cells of the profile's slot
and evaluates the method's score tree on them (``expression_twin``, the numpy twin of each rank
profile): for an exhaustive profile over every document; for a two-phase profile over the exact
Hamming top-``targetHits`` of the ``nearestNeighbor`` field (ties to the lowest corpus row, as
the engine), of which the best ``ranking.globalPhase.rerankCount`` by closeness are rescored,
as Vespa's global phase does. ``<field> contains "<value>"`` matches a string attribute's whole
value, and hits carry the summary fields the YQL selects.
"""

from __future__ import annotations

import functools
import gzip
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote, urlsplit

import numpy as np
import pytest
from expression_twin import evaluate as evaluate_tree

from vespa_quant.data.beir import BeirDataset
from vespa_quant.embed.embedded import EmbeddedDataset
from vespa_quant.quantize.registry import METHODS
from vespa_quant.quantize.scoring import hamming_matrix
from vespa_quant.vespa.expressions import input_type
from vespa_quant.vespa.naming import (
    NN_INPUT,
    field_name,
    first_phase_field,
    has_exhaustive_profile,
    method_slots,
    rank_profile_name,
    signs_field,
)
from vespa_quant.vespa.package import DEFAULT_DIMS, build_schema
from vespa_quant.vespa.wire import decode_tensor_hex

if TYPE_CHECKING:
    from fault_vespa import FaultPlan

DIMS = (64, 32)
N_DOCS = 200
_NN = re.compile(r"\{targetHits:(\d+), approximate:(?:true|false)\}nearestNeighbor\((\w+), (\w+)\)")
_CONTAINS = re.compile(r'(\w+) contains "([^"]*)"')
_YQL = re.compile(r"select (.+?) from doc where (.+)")
SCHEMA_DIMS = (*DIMS, *DEFAULT_DIMS)
"""Dims the fake's schema has: these tests' and the committed package's (the CLI tests feed 384)."""
PROFILES = {rank_profile_name(m.name, d, slot, exhaustive=exhaustive): (m.name, d, slot, exhaustive)
            for m in METHODS.values() for d in SCHEMA_DIMS for slot in method_slots(m)
            for exhaustive in ((False, True) if has_exhaustive_profile(m) else (False,))}


@functools.cache
def schema_fields(recalibration_slots: bool = True) -> frozenset[str]:
    """Field names of the generated schema: what the fake accepts in puts and updates (built once:
    generating every profile takes ~0.4 s, and every test starts a fake)."""
    schema = build_schema(list(METHODS.values()), SCHEMA_DIMS, recalibration_slots=recalibration_slots)
    return frozenset(f.name for f in schema.document.fields)


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
    faults: FaultPlan | None = None
    """Random faults on every request (``fault_vespa.FaultPlan``): statuses, dropped connections, stalls."""
    unstored: set[str] | None = None
    """Vespa ids whose puts and updates are answered 200 and not applied (None: every write is applied);
    ``{"*"}`` drops every write."""
    health: str = "up"
    visits: int = 0
    search_answer: tuple[int, object] | None = None
    """When set, every search is answered with this (status, JSON) instead: answers of the wrong shape."""
    known_fields: frozenset[str] = field(default_factory=schema_fields)
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
            if not self._unstored(vespa_id):
                self.docs[vespa_id] = fields
                self._codes.clear()
            return 200, {"id": f"id:vespaquant:doc::{vespa_id}"}

    def _unstored(self, vespa_id: str) -> bool:
        return self.unstored is not None and ("*" in self.unstored or vespa_id in self.unstored)

    def visit(self, params: dict[str, str]) -> tuple[int, dict]:
        """``GET /document/v1/vespaquant/doc/docid`` with ``fieldSet=doc:f1,f2``, pages of ``wantedDocumentCount``."""
        field_set = params.get("fieldSet", "[all]")
        if params.get("cluster") not in (None, "content") or not field_set.startswith("doc:"):
            return 400, {"message": f"fake visits cluster 'content' with fieldSet doc:..., got {params}"}
        wanted = set(field_set[len("doc:"):].split(","))
        start, size = int(params.get("continuation", 0)), int(params.get("wantedDocumentCount", 1000))
        with self.lock:
            self.visits += 1
            ids = list(self.docs)[start:start + size]
            documents = [{"id": f"id:vespaquant:doc::{i}",
                          "fields": {k: v for k, v in self.docs[i].items() if k in wanted}} for i in ids]
            more = start + size < len(self.docs)
        page = {"pathId": "/document/v1/vespaquant/doc/docid", "documents": documents, "documentCount": len(ids)}
        return 200, {**page, "continuation": str(start + size)} if more else page

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
            if vespa_id in self.docs and not self._unstored(vespa_id):  # Vespa: updating a missing document: 200
                for name, op in operations.items():
                    self.docs[vespa_id][name] = op["assign"]
                self._codes.clear()
            applied = len(self.updates)
        if self.after_update is not None:
            self.after_update(applied)
        return 200, {"id": f"id:vespaquant:doc::{vespa_id}"}

    def codes(self, name: str, dim: int, slot: str) -> tuple[list[str], dict[str, np.ndarray]]:
        """Stored ids (in corpus order) and the decoded codes of ``name`` at ``dim`` in ``slot``, plus
        the shared sign bits under the role ``signs`` (cached until the next write).

        A document without the field holds zeros, like an unset dense tensor attribute.
        """
        with self.lock:
            if (name, dim, slot) not in self._codes:
                rank = {doc_id: row for row, doc_id in enumerate(self.corpus_order)}
                ids = sorted(self.docs, key=lambda i: rank.get(self.docs[i]["doc_id"], len(rank)))
                layout = {field_name(name, dim, spec.role, slot): (spec.role, spec.cell_type, spec.cells)
                          for spec in METHODS[name].fields(dim)}
                layout[signs_field(dim)] = ("signs", "int8", -(-dim // 8))
                codes = {}
                for key, (role, cell_type, cells) in layout.items():
                    codes[role] = np.stack([
                        decode_tensor_hex(self.docs[i][key]["values"], cell_type) if key in self.docs[i]
                        else np.zeros(cells, dtype=np.float32 if cell_type != "int8" else np.int8)
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
            if self.search_answer is not None:
                return self.search_answer  # type: ignore[return-value]
        select, where = _YQL.fullmatch(body["yql"]).groups()
        if "ranking.profile" not in body:
            matched = self._matches(where)
            if matched is None or body.get("hits") != 0:
                return 400, {"root": {"errors": [{"summary": "fake", "message": f"cannot count {where!r}"}]}}
            return 200, {"root": {"fields": {"totalCount": len(matched)}, "coverage": {"full": True}}}
        name, dim, slot, exhaustive = PROFILES[body["ranking.profile"]]
        method = METHODS[name]
        declared = {spec.name: input_type(spec) for spec in method.inputs(dim)}
        if not exhaustive and NN_INPUT not in declared and not any("int8" in t for t in declared.values()):
            declared[NN_INPUT] = f"tensor<int8>(x[{-(-dim // 8)}])"  # what the generator must add
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
            inputs[match.group(1)] = np.asarray(value, dtype=dtype).reshape(1, -1) if type_ != "double" \
                else np.asarray([value], dtype=np.float64)
        ids, codes = self.codes(name, dim, slot)
        tree = method.expression(dim)
        nn = _NN.search(where)
        if exhaustive:
            if nn or where != "true":
                return 400, {"root": {"errors": [{"summary": "fake", "message": f"exhaustive with {where!r}"}]}}
            scores = evaluate_tree(tree, inputs, codes)[0]
        else:
            if not nn:
                return 400, {"root": {"errors": [{"summary": "fake", "message": "two-phase needs nearestNeighbor"}]}}
            target, bits_field, tensor = int(nn.group(1)), nn.group(2), nn.group(3)
            if bits_field != first_phase_field(method, dim, slot):
                return 400, {"root": {"errors": [{"summary": "fake", "message": f"{bits_field} is not the first-phase field"}]}}
            role = "signs" if bits_field == signs_field(dim) else next(
                spec.role for spec in method.fields(dim) if field_name(name, dim, spec.role, slot) == bits_field)
            distances = hamming_matrix(inputs[tensor], codes[role])[0]
            rerank = int(body.get("ranking.globalPhase.rerankCount", target))
            kept = np.lexsort((np.arange(len(ids)), distances))[:min(target, rerank)]
            scores = np.full(len(ids), -np.inf)
            nearest = {role: inputs[tensor]}
            scores[kept] = evaluate_tree(tree, inputs, {r: c[kept] for r, c in codes.items()}, nearest)[0]
        summary = [f.strip() for f in select.split(",")]
        order = [i for i in np.lexsort((np.arange(len(ids)), -scores)) if np.isfinite(scores[i])][: body["hits"]]
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

        def _read(self) -> bytes:
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            return gzip.decompress(raw) if self.headers.get("Content-Encoding") == "gzip" else raw

        def _faulted(self) -> bool:
            """Apply the injected fault, if any, after the request was read (as a real server would)."""
            if fake.faults is None:
                return False
            fault = fake.faults.decide(self.command, urlsplit(self.path).path)
            if fault is None:
                return False
            kind, value = fault
            if kind == "stall":
                time.sleep(value)
                return False
            if kind == "drop":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return True
            message = f"fault injected: HTTP {value}"
            self._reply(int(value), {"message": message, "root": {"errors": [{"summary": "fault", "message": message}]}})
            return True

        def _document(self, body: bytes, write: Callable[[str, dict], tuple[int, dict]]) -> bool:
            path = urlsplit(self.path).path
            prefix = "/document/v1/vespaquant/doc/docid/"
            if not path.startswith(prefix):
                return False
            self._reply(*write(unquote(path[len(prefix):]), json.loads(body)["fields"]))
            return True

        def do_GET(self) -> None:
            if self._faulted():
                return
            url = urlsplit(self.path)
            if url.path == "/state/v1/health":
                self._reply(200, {"status": {"code": fake.health}})
            elif url.path == "/document/v1/vespaquant/doc/docid":
                self._reply(*fake.visit(dict(parse_qsl(url.query))))
            else:
                self._reply(404, {"message": "not found"})

        def do_POST(self) -> None:
            body = self._read()
            if self._faulted() or self._document(body, fake.put):
                return
            path = urlsplit(self.path).path
            if path == "/search/":
                self._reply(*fake.search(json.loads(body)))
            else:
                self._reply(404, {"message": f"no handler for {path}"})

        def do_PUT(self) -> None:
            body = self._read()
            if self._faulted():
                return
            fake.update_queries.append(urlsplit(self.path).query)
            if not self._document(body, fake.update):
                self._reply(405, {"message": f"PUT {self.path}: only document updates"})

    return Handler


class QuietServer(ThreadingHTTPServer):
    """A threading server that does not print tracebacks when a client hung up first (stalls, drops)."""

    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass


@contextmanager
def serving(faults: FaultPlan | None = None) -> Iterator[FakeVespa]:
    state = FakeVespa(faults=faults)
    server = QuietServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.005}, daemon=True)
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
