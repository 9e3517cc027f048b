"""The Vespa search backend: the same queries as the local engine, answered by a live Vespa.

Documents are fed beforehand (:mod:`vespa_quant.vespa.feeder`); here each query becomes one
``POST /search/`` body (:func:`vespa_quant.vespa.documents.query_body`) on the method's rank
profile, sent concurrently from a thread pool with one ``requests`` session per thread. 429, 502,
503 and 504 (soft timeout is off, so an overloaded query fails with 504 rather than returning a
truncated ranking) and dropped connections are retried with exponential backoff. Each hit's
``doc_id`` field maps back to a corpus row.

Calibration slots: a calibrated method's documents hold two code slots, and the calibration
manifest says which one is active (:mod:`vespa_quant.vespa.manifest`). Each search reads the
manifest once and sends every query of the batch to the active slot's rank profile; every hit
returns that slot's calibration id, which must be the manifest's (and the query's), so scores from
codes of another calibration can never be reported. A recalibration rewrites only the inactive
slot and flips the manifest after checking every document, so a batch that started before the
flip keeps reading untouched codes and one that starts after reads complete ones.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests

from vespa_quant.engine.local import DEFAULT_K1, Hits
from vespa_quant.errors import VespaError
from vespa_quant.evaluate.runner import BackendHits
from vespa_quant.quantize.base import Arrays, Calibration, Quantizer, first_phase_query, query_inputs
from vespa_quant.vespa.manifest import active_calibration, manifest_entry, manifest_path, read_manifest
from vespa_quant.vespa.naming import DOC_ID_FIELD, calibration_field_name
from vespa_quant.vespa.wire import iter_rows, query_body

RETRY_STATUS = frozenset({429, 502, 503, 504})


def _error_text(response: requests.Response) -> str:
    try:
        errors = response.json()["root"]["errors"]
        return "; ".join(f"{e.get('summary', '')}: {e.get('message', '')}".strip(": ") for e in errors)
    except (ValueError, KeyError, TypeError):
        return response.text.strip()[:500] or response.reason or "no message"


@dataclass
class VespaBackend:
    """:class:`~vespa_quant.evaluate.runner.SearchBackend` answered by Vespa at ``endpoint``.

    ``doc_ids`` are the corpus ids in row order (``EmbeddedDataset.dataset.doc_ids``). With
    ``calibration_dir`` (the feeder's output) queries go to the manifest's active slot, whose
    calibration must be the query's, and every hit of a calibrated method must carry that
    calibration's id; without it, queries go to ``slot`` (default ``a``) and every hit must carry
    the id of the calibration the query was computed with (how streaming drift reads an inactive
    slot it has just written and verified, :mod:`vespa_quant.vespa.stream`).
    """

    endpoint: str
    doc_ids: list[str]
    concurrency: int = 8
    calibration_dir: Path | None = None
    timeout: float = 10.0
    max_retries: int = 3
    retry_wait: float = 0.2
    name: str = "vespa"
    slot: str = "a"
    _rows: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.endpoint = self.endpoint.rstrip("/")
        self._rows = {str(doc_id): row for row, doc_id in enumerate(self.doc_ids)}
        if len(self._rows) != len(self.doc_ids):
            raise VespaError("doc_ids contain repeats: hits could not be mapped back to rows")

    def served_calibration(self, method: Quantizer, dim: int) -> Calibration | None:
        """The manifest's active-slot calibration: after a recalibration, queries follow it."""
        if self.calibration_dir is None:
            return None
        return active_calibration(self.calibration_dir, method.name, dim)

    def active_slot(self, method: Quantizer, calibration: Calibration) -> tuple[str, str]:
        """(slot, calibration id) queries of ``method`` at ``calibration.dim`` must use and see.

        From the manifest when there is one, after checking the query's calibration is the one
        the active slot holds; ``self.slot`` and the query's own calibration otherwise.
        """
        if self.calibration_dir is None:
            return self.slot, calibration.id
        entry = manifest_entry(read_manifest(self.calibration_dir), method.name, calibration.dim,
                               self.calibration_dir)
        slot = entry["active_slot"]
        fed = entry["slots"][slot]
        if fed["id"] != calibration.id:
            raise VespaError(
                f"{manifest_path(self.calibration_dir)}: the active slot {slot} of {method.name}@{calibration.dim} "
                f"holds codes of calibration {fed['id']} ({fed['file']}), this query uses calibration "
                f"{calibration.id}: query with that calibration, or re-run vespa-quant feed / recalibrate"
            )
        return slot, fed["id"]

    def search(self, method: Quantizer, calibration: Calibration, codes: Arrays,
               queries: np.ndarray, k: int, k1: int | None = None, signs: np.ndarray | None = None) -> BackendHits:
        """Top-``k`` hits of every query from Vespa (``signs`` are unused: Vespa stores its own)."""
        n_docs = len(next(iter(codes.values())))
        if n_docs != len(self.doc_ids):
            raise VespaError(f"codes hold {n_docs} documents but the backend knows {len(self.doc_ids)} doc ids")
        slot, expected = self.active_slot(method, calibration)
        stored_field = calibration_field_name(method.name, calibration.dim, slot) if method.needs_calibration else None
        if k1 is None and method.always_first_phase:
            k1 = DEFAULT_K1
        hits = k if k1 is None else min(k, k1)
        nn = None if k1 is None else first_phase_query(method, queries, calibration)
        bodies = [
            query_body(method, calibration.dim, row, hits=hits, k1=k1,
                       nn_query=None if nn is None else nn[i], timeout=self.timeout, slot=slot)
            for i, row in enumerate(iter_rows(query_inputs(method, queries, calibration)))
        ]
        sessions: list[requests.Session] = []
        local = threading.local()
        lock = threading.Lock()

        def session() -> requests.Session:
            if not hasattr(local, "session"):
                local.session = requests.Session()
                with lock:
                    sessions.append(local.session)
            return local.session

        def run(i: int) -> tuple[dict, float]:
            return self._post(session(), bodies[i], f"query {i} ({bodies[i]['ranking.profile']})")

        try:
            with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
                answers = list(pool.map(run, range(len(bodies))))
        finally:
            for s in sessions:
                s.close()

        indices = np.full((len(bodies), k), -1, dtype=np.int64)
        scores = np.full((len(bodies), k), -np.inf)
        latencies = np.empty(len(bodies))
        for i, (payload, latency_ms) in enumerate(answers):
            latencies[i] = latency_ms
            for j, hit in enumerate(payload.get("root", {}).get("children", [])[:k]):
                fields = hit.get("fields", {})
                doc_id = fields.get(DOC_ID_FIELD)
                if doc_id not in self._rows:
                    raise VespaError(
                        f"query {i}: Vespa returned document {doc_id!r}, which is not one of the "
                        f"{len(self.doc_ids)} corpus ids: the index holds other documents; feed this "
                        f"dataset into an empty Vespa"
                    )
                if stored_field is not None and fields.get(stored_field) != expected:
                    raise VespaError(
                        f"query {i}: document {doc_id!r} holds codes of calibration "
                        f"{fields.get(stored_field)} in slot {slot} of {method.name}@{calibration.dim}, "
                        f"this query uses calibration {expected}: re-run vespa-quant feed / recalibrate"
                    )
                indices[i, j] = self._rows[doc_id]
                scores[i, j] = float(hit["relevance"])
        return BackendHits(Hits(indices, scores), latencies)

    def _post(self, session: requests.Session, body: dict, what: str) -> tuple[dict, float]:
        """One query with retries; returns the JSON answer and the last attempt's latency in ms."""
        url = self.endpoint + "/search/"
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            started = time.perf_counter()
            try:
                response = session.post(url, json=body, timeout=self.timeout + 5)
            except (requests.ConnectionError, requests.Timeout) as exc:
                if last:
                    problem = ("did not answer within " f"{self.timeout + 5:g} s"
                               if isinstance(exc, requests.Timeout) else "refused or dropped the connection")
                    raise VespaError(f"{what}: {url} {problem} after {attempt + 1} attempts") from exc
                time.sleep(self.retry_wait * 2 ** attempt)
                continue
            latency_ms = (time.perf_counter() - started) * 1000.0
            if response.status_code in RETRY_STATUS and not last:
                time.sleep(self.retry_wait * 2 ** attempt)
                continue
            if response.status_code != 200:
                raise VespaError(f"{what} to {url} failed with HTTP {response.status_code}: {_error_text(response)}")
            try:
                payload = response.json()
            except ValueError as exc:
                raise VespaError(f"{what}: {url} answered with non-JSON text") from exc
            root = payload.get("root", {})
            if root.get("errors"):
                raise VespaError(f"{what} to {url} returned errors: {_error_text(response)}")
            coverage = root.get("coverage", {})
            if coverage.get("full") is False or coverage.get("degraded"):
                raise VespaError(
                    f"{what}: Vespa searched only {coverage.get('coverage')}% of the documents "
                    f"(degraded: {coverage.get('degraded')}); results would be incomplete"
                )
            return payload, latency_ms
        raise AssertionError("unreachable")
