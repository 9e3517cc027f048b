"""The Vespa search backend: the same queries as the local engine, answered by a live Vespa.

Documents are fed beforehand (:mod:`vespa_quant.vespa.feeder`); here each query becomes one
``POST /search/`` body (:func:`vespa_quant.vespa.wire.query_body`) on the method's rank
profile, sent by pyvespa's ``VespaSync.query`` from the bounded worker pool
(:mod:`vespa_quant.vespa.sending`) under the one HTTP policy (:mod:`vespa_quant.vespa.client`):
429 and 5xx (soft timeout is off, so an overloaded query fails with 504 rather than returning a
truncated ranking) and dropped connections are retried with capped, jittered backoff, within
the deadline. Each hit's ``doc_id`` field maps back to a corpus row; an answer of another shape
is an error naming the endpoint and the shape expected.

Why not pyvespa's ``query_many``: its ``AdaptiveThrottler`` halves concurrency whenever more than
10% of answers are errors (down to one query at a time under the transient 5xx the policy
retries), its default retry ignores the status code, and it reports no per-query latency, which
the results record.

Calibration slots: a calibrated method's documents hold two code slots, and the calibration
manifest says which one is active (:mod:`vespa_quant.vespa.manifest`). Each search reads the
manifest once and sends every query of the batch to the active slot's rank profile; every hit
returns that slot's calibration id, which must be the manifest's (and the query's), so scores from
codes of another calibration can never be reported. A recalibration rewrites only the inactive
slot and flips the manifest after checking every document, so a batch that started before the
flip keeps reading untouched codes and one that starts after reads complete ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vespa_quant.engine.local import DEFAULT_K1, Hits
from vespa_quant.errors import VespaError
from vespa_quant.evaluate.runner import BackendHits
from vespa_quant.quantize.base import Arrays, Calibration, Quantizer, first_phase_query, query_inputs
from vespa_quant.vespa.client import Answer, HttpPolicy, VespaClient, server_message, shown
from vespa_quant.vespa.manifest import active_calibration, manifest_entry, manifest_path, read_manifest
from vespa_quant.vespa.naming import DOC_ID_FIELD, calibration_field_name
from vespa_quant.vespa.sending import run_pool
from vespa_quant.vespa.wire import iter_rows, query_body

HITS_SHAPE = '{"root": {"children": [{"relevance": <number>, "fields": {"doc_id": ...}}]}}'


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
    policy: HttpPolicy = field(default_factory=HttpPolicy)
    """Timeouts and retries; each query's Vespa-side ``timeout`` is the policy's attempt timeout."""
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
        timeout = 0.8 * self.policy.attempt_timeout  # Vespa gives up (504) before the client does
        bodies = [
            query_body(method, calibration.dim, row, hits=hits, k1=k1,
                       nn_query=None if nn is None else nn[i], timeout=timeout, slot=slot)
            for i, row in enumerate(iter_rows(query_inputs(method, queries, calibration)))
        ]
        url = self.endpoint + "/search/"
        with VespaClient(self.endpoint, self.policy) as client:
            run = run_pool(client, enumerate(bodies), lambda body: client.query(body, f"query ({body['ranking.profile']})"),
                           total=len(bodies), concurrency=self.concurrency, handle_signals=False)
        if run.fatal is not None:
            raise run.fatal
        if run.stop_reason is not None or len(run.answers) < len(bodies):
            raise VespaError(f"searching {url} stopped after {len(run.answers)} of {len(bodies)} queries: "
                             f"{run.stop_reason or 'interrupted'}")
        indices = np.full((len(bodies), k), -1, dtype=np.int64)
        scores = np.full((len(bodies), k), -np.inf)
        latencies = np.empty(len(bodies))
        for i in range(len(bodies)):
            answer = run.answers[i]
            what = f"query {i} ({bodies[i]['ranking.profile']})"
            latencies[i] = answer.latency_ms
            for j, (doc_id, relevance, fields) in enumerate(self._hits(answer, url, what)[:k]):
                if doc_id not in self._rows:
                    raise VespaError(
                        f"{what}: Vespa returned document {doc_id!r}, which is not one of the "
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
                scores[i, j] = relevance
        return BackendHits(Hits(indices, scores), latencies)

    @staticmethod
    def _hits(answer: Answer, url: str, what: str) -> list[tuple[str, float, dict]]:
        """(doc_id, relevance, summary fields) of each hit; one-line errors for failures and wrong shapes."""
        if not answer.ok:
            raise VespaError(f"{what} to {url} failed with "
                             + (f"HTTP {answer.status}: " if answer.status else "") + answer.message)
        payload = answer.payload
        root = payload.get("root") if isinstance(payload, dict) else None
        if not isinstance(root, dict):
            raise VespaError(f"{what}: {url} answered {shown(payload)}, expected {HITS_SHAPE}")
        if root.get("errors"):
            raise VespaError(f"{what} to {url} returned errors: {server_message(payload)}")
        coverage = root.get("coverage", {})
        if isinstance(coverage, dict) and (coverage.get("full") is False or coverage.get("degraded")):
            raise VespaError(
                f"{what}: Vespa searched only {coverage.get('coverage')}% of the documents "
                f"(degraded: {coverage.get('degraded')}); results would be incomplete"
            )
        children = root.get("children", [])
        hits = []
        for hit in children if isinstance(children, list) else [None]:
            fields = hit.get("fields") if isinstance(hit, dict) else None
            relevance = hit.get("relevance") if isinstance(hit, dict) else None
            if not isinstance(fields, dict) or not isinstance(relevance, (int, float)) or isinstance(relevance, bool) \
                    or not isinstance(fields.get(DOC_ID_FIELD), str):
                raise VespaError(f"{what}: {url} answered a hit {shown(hit)}, expected {HITS_SHAPE}")
            hits.append((fields[DOC_ID_FIELD], float(relevance), fields))
        return hits
