"""Streaming drift on a live Vespa: documents put in stream order, blue/green slots, queries per checkpoint.

:class:`VespaStreamIndex` is the Vespa implementation of :class:`vespa_quant.drift.stream.StreamIndex`,
built only from this subpackage's public steps, so a drift run exercises exactly what production
uses:

* arrivals go through the feeder's put path (:func:`~vespa_quant.vespa.feeder.put_rows`): one
  put per document holding every method's codes, each slot the manifest lists encoded with that
  slot's calibration, followed by a count of the documents Vespa holds;
* a slot write is :func:`~vespa_quant.vespa.recalibrate.write_inactive_slot` (partial updates of
  the present documents' inactive slot) then :func:`~vespa_quant.vespa.recalibrate.verify_inactive_slot`
  (Vespa counts the documents carrying the new id in that slot); a switch is
  :func:`~vespa_quant.vespa.recalibrate.switch_active_slot`, the atomic manifest flip;
* a search is the :class:`~vespa_quant.vespa.backend.VespaBackend` on the slot that holds the
  calibration, whose every hit must carry that calibration's id, with the present documents' ids,
  so each hit maps back to its corpus row.

The index must start empty: "the documents present" is then exactly what Vespa holds, and a
search needs no filter. Vespa has no transactions across documents, so a run that fails midway
(a put or an update not acknowledged, or a short count) raises at once, with the active slots,
and so every query, as they were; the documents put so far stay, and a new run needs an empty
index again. Ties: Vespa orders equal scores by local document id, which on one node follows
arrival order; puts of one batch are concurrent, so equal-score documents of one batch may rank
in another order than the in-process index's (stream order) -- only exact ties can differ.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vespa_quant.drift.stream import SlotTable, present_hits, slot_holding
from vespa_quant.embed.embedded import EmbeddedDataset
from vespa_quant.engine.local import Hits
from vespa_quant.errors import VespaError
from vespa_quant.quantize.base import Calibration, Quantizer, encode
from vespa_quant.vespa.backend import VespaBackend
from vespa_quant.vespa.client import START_HINT, HttpPolicy, VespaClient, check_endpoint
from vespa_quant.vespa.feeder import put_rows
from vespa_quant.vespa.manifest import manifest_entry, manifest_path, read_manifest, save_calibration, write_manifest
from vespa_quant.vespa.naming import DOCUMENT_TYPE, NAMESPACE
from vespa_quant.vespa.recalibrate import (
    SlotCheck,
    SlotWrite,
    switch_active_slot,
    verify_inactive_slot,
    write_inactive_slot,
)
from vespa_quant.vespa.wire import documents_count_body

EMPTY_HINT = "streaming drift fills an empty index: `vespa-quant down && vespa-quant up` gives one"


@dataclass
class VespaStreamIndex:
    """:class:`~vespa_quant.drift.stream.StreamIndex` on the Vespa at ``endpoint``.

    ``calibration_dir`` receives the run's ``manifest.json`` and every calibration written (it
    describes what this index holds; an older manifest there is replaced). The deployed package
    must have the fields of every method at the run's dim (``vespa-quant deploy --dims``).
    """

    endpoint: str
    calibration_dir: Path
    concurrency: int = 8
    policy: HttpPolicy = field(default_factory=HttpPolicy)
    """Timeouts, deadlines and retries of every request (:mod:`vespa_quant.vespa.client`)."""
    name: str = "vespa"
    tables: dict[str, SlotTable] = field(default_factory=dict, init=False, repr=False)
    _corpus: EmbeddedDataset | None = field(default=None, init=False, repr=False)
    _methods: list[Quantizer] = field(default_factory=list, init=False, repr=False)
    _present: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64), init=False, repr=False)
    _written: dict[str, tuple[SlotWrite, SlotCheck]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.endpoint = self.endpoint.rstrip("/")
        self.calibration_dir = Path(self.calibration_dir)

    def _count(self) -> int:
        with VespaClient(self.endpoint, self.policy) as client:
            try:
                return client.count(documents_count_body(0.8 * client.policy.attempt_timeout))
            except VespaError as exc:
                raise VespaError(f"{self.endpoint}/search/ could not count the documents of type {DOCUMENT_TYPE!r} "
                                 f"({exc}): is the application deployed? {START_HINT}") from None

    def check(self) -> None:
        """Fail before any work unless Vespa answers ``/state/v1/health`` and holds no documents."""
        check_endpoint(self.endpoint, self.policy)
        held = self._count()
        if held:
            raise VespaError(f"Vespa at {self.endpoint} holds {held} document{'s' if held > 1 else ''}; {EMPTY_HINT}")

    @property
    def corpus(self) -> EmbeddedDataset:
        if self._corpus is None:
            raise VespaError("the stream index has not been started")
        return self._corpus

    @property
    def dim(self) -> int:
        return self.corpus.native_dim

    def start(self, corpus: EmbeddedDataset, initial: Sequence[tuple[Quantizer, Calibration]]) -> None:
        """Check the index is empty, then write a manifest whose slot ``a`` of each method records its calibration."""
        self.check()
        self._corpus, self._methods = corpus, [method for method, _ in initial]
        self._present = np.zeros(0, dtype=np.int64)
        self._written.clear()
        self.calibration_dir.mkdir(parents=True, exist_ok=True)
        first = initial[0][1]
        write_manifest(self.calibration_dir, {
            "rotation": first.rotation, "seed": first.seed, "dataset": corpus.dataset.name,
            "dataset_fingerprint": corpus.dataset.fingerprint, "model": corpus.model,
            "n_docs": len(corpus.dataset.doc_ids), "namespace": NAMESPACE, "document_type": DOCUMENT_TYPE,
            "calibrations": sorted(({"method": method.name, "dim": self.dim, "active_slot": "a",
                                     "slots": {"a": save_calibration(self.calibration_dir, calibration)}}
                                    for method, calibration in initial), key=lambda e: e["method"]),
        })
        self.tables = {method.name: SlotTable.start(method, calibration) for method, calibration in initial}

    def add(self, rows: np.ndarray) -> None:
        """Put the arrivals, then check that Vespa holds exactly the documents present."""
        rows = np.asarray(rows, dtype=np.int64)
        sent = put_rows(self.endpoint, self.corpus, rows, self._methods, [self.dim],
                        calibration_dir=self.calibration_dir, concurrency=self.concurrency, policy=self.policy,
                        progress=False)
        if sent.failed_ids:
            shown = ", ".join(f"{doc_id} ({sent.errors[doc_id]})" for doc_id in sent.failed_ids[:3])
            raise VespaError(f"{len(sent.failed_ids)} of {len(rows)} puts failed, e.g. {shown}; "
                             f"the stream stops here, the active slots are unchanged")
        self._present = np.concatenate([self._present, rows])
        held = self._count()
        if held != len(self._present):
            raise VespaError(f"Vespa at {self.endpoint} counts {held} documents, {len(self._present)} have "
                             f"arrived: documents of another run are indexed; {EMPTY_HINT}")
        for table in self.tables.values():
            table.after_put()

    def table(self, method: Quantizer) -> SlotTable:
        return self.tables[method.name]

    def _present_corpus(self) -> EmbeddedDataset:
        """The corpus as it stands: the present documents only, what a slot write must cover."""
        corpus, rows = self.corpus, self._present
        dataset = dataclasses.replace(corpus.dataset, doc_ids=[corpus.dataset.doc_ids[i] for i in rows],
                                      doc_texts=[corpus.dataset.doc_texts[i] for i in rows])
        return EmbeddedDataset(dataset, corpus.model, corpus.doc_vectors[rows], corpus.query_vectors)

    def write_inactive(self, method: Quantizer, calibration: Calibration) -> None:
        """Partial updates of the inactive slot of every present document, then Vespa's count of them."""
        table = self.table(method)
        entry = manifest_entry(read_manifest(self.calibration_dir), method.name, self.dim, self.calibration_dir)
        if entry["active_slot"] != table.active:
            raise VespaError(f"{method.name}@{self.dim}: {manifest_path(self.calibration_dir)} marks slot "
                             f"{entry['active_slot']} active, this stream slot {table.active}: another run or "
                             f"`vespa-quant recalibrate` changed it; {EMPTY_HINT}")
        table.discard_inactive()  # from the first update on, the slot is a mix until verified
        written = write_inactive_slot(self.endpoint, self._present_corpus(), method, self.dim, self.calibration_dir,
                                      new_calibration=calibration, concurrency=self.concurrency,
                                      policy=self.policy, progress=False)
        what = f"{method.name}@{self.dim}: slot {written.slot}"
        stays = f"the active slot stays {written.active_slot}"
        if not written.ok:
            shown = ", ".join(f"{doc_id} ({written.errors[doc_id]})" for doc_id in written.failed_ids[:3])
            raise VespaError(f"{what}: {written.n_docs - written.n_updated} of {written.n_docs} updates failed, "
                             f"e.g. {shown or 'unacknowledged'}; {stays}")
        check = verify_inactive_slot(self.endpoint, written, self.policy)
        if not check.ok:
            raise VespaError(f"{what}: Vespa counts {check.n_with_id} documents holding calibration "
                             f"{calibration.id} and {check.n_in_vespa} in all, {check.n_docs} are present; {stays}")
        table.written(calibration)
        self._written[method.name] = (written, check)

    def switch(self, method: Quantizer) -> None:
        """Flip the manifest to the inactive slot, after this run's own verified write of what it holds.

        When the slot's content predates the last write (held since an earlier switch), documents
        arrived since that write, or the manifest moved since (another method switched), the slot
        is written and verified again first: the flip always follows a proof of the present state.
        """
        table = self.table(method)
        held = table.held[table.inactive] if table.inactive else None
        if held is None:
            raise VespaError(f"{method.name}@{self.dim}: the inactive slot holds no complete calibration to switch to")
        last = self._written.get(method.name)
        if (last is None or last[0].calibration.id != held.id or last[1].n_docs != len(self._present)
                or last[0].manifest_revision != read_manifest(self.calibration_dir).get("revision")):
            self.write_inactive(method, held)
            last = self._written[method.name]
        switch_active_slot(self.calibration_dir, *last)
        table.switched()
        del self._written[method.name]

    def search(self, method: Quantizer, calibration: Calibration, queries: np.ndarray, k: int,
               k1: int | None) -> Hits:
        """The slot's profile on Vespa, over the present documents (ids in arrival order)."""
        slot = slot_holding(self, method, calibration)
        ids = [self.corpus.dataset.doc_ids[i] for i in self._present]
        backend = VespaBackend(self.endpoint, ids, concurrency=self.concurrency, policy=self.policy, slot=slot)
        # Vespa scores the codes it stores; the backend checks these against the ids, row for row.
        codes = encode(method, self.corpus.doc_vectors[self._present], calibration)
        return present_hits(backend.search(method, calibration, codes, queries, k, k1).hits, self._present)
