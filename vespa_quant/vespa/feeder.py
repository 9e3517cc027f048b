"""Calibrate, encode and feed a corpus into the deployed Vespa application, as a transaction.

The I/O edge of the store stage (STYLE 4): every method x dim is calibrated on the full corpus
(or, with ``keep_calibrations``, the manifest's calibrations are reused, every slot with its own),
each calibration is saved under its content-addressed name, and one document per corpus row,
holding every method's codes and the calibration id of each slot, is put through the one HTTP
policy (:mod:`vespa_quant.vespa.client`, :mod:`vespa_quant.vespa.sending`). A put replaces the
whole document, so it writes every slot the plan lists.

The manifest changes only after Vespa holds and verifies what it describes
(:mod:`vespa_quant.vespa.transaction`): plan beside the old manifest, visit what Vespa already
holds, send only the documents it lacks or holds with other calibration ids (a re-run resumes),
visit again, switch atomically. A failed, stalled or interrupted feed leaves the previous
manifest as it was and reports, in :class:`FeedReport` and ``feed-status.json``, which documents
were skipped (already held), acknowledged, verified, failed (with the error), sent without an
answer and never sent. One feed or recalibration per ``calibration_dir`` at a time (a lock).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from vespa_quant.embed.embedded import EmbeddedDataset
from vespa_quant.errors import InterruptedRunError, VespaError
from vespa_quant.folders import folder_lock
from vespa_quant.quantize.base import Calibration, Quantizer, calibrate, encode, shared_sign_bits, sign_role
from vespa_quant.vespa.client import HttpPolicy, VespaClient
from vespa_quant.vespa.manifest import (
    MANIFEST,
    load_slot_calibration,
    manifest_entry,
    manifest_path,
    read_manifest,
    save_calibration,
)
from vespa_quant.vespa.naming import DOCUMENT_TYPE, NAMESPACE, calibration_field_name, field_name, signs_field
from vespa_quant.vespa.sending import SendOutcome, send_operations
from vespa_quant.vespa.transaction import (
    STATUS,
    Held,
    Probe,
    commit_pending,
    current_revision,
    held_documents,
    pending_path,
    write_pending,
    write_status,
)
from vespa_quant.vespa.wire import SlotKey, calibration_set_id, documents_count_body, feed_documents

__all__ = ["MANIFEST", "FeedReport", "feed", "put_rows", "read_manifest"]


def _shown(ids: Sequence[str], limit: int = 5) -> str:
    return ", ".join(ids[:limit]) + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


@dataclass(frozen=True)
class FeedReport:
    """What one ``feed`` call did, document by document; ``complete`` is the one-word verdict."""

    endpoint: str
    n_docs: int
    skipped_ids: list[str]
    """Already held by Vespa exactly as planned before this run: not sent again (resume)."""
    sent: SendOutcome
    verified_ids: list[str]
    """Held by Vespa after the run with this plan's calibration ids (empty when the run stopped early)."""
    unverified_ids: list[str]
    """Acknowledged, yet Vespa does not hold them as sent (an answer of 200 without storing)."""
    foreign_docs: int | None
    """Stored documents that are not corpus documents (None: not visited after sending)."""
    count_in_vespa: int | None
    calibration_set: str
    """A label of the active calibrations (:func:`~vespa_quant.vespa.wire.calibration_set_id`), for logs."""
    committed: bool
    """True when ``manifest.json`` now describes this feed; False leaves the previous manifest untouched."""
    manifest: Path
    pending: Path
    status_file: Path | None = None
    verify_error: str | None = None
    """Why the verification after sending could not run to the end (a visit or count that failed)."""
    calibrations: dict[tuple[str, int], Calibration] = field(default_factory=dict, repr=False)
    """The calibration of each (method, dim)'s active slot: the one queries must use."""

    @property
    def complete(self) -> bool:
        return self.committed

    @property
    def n_fed(self) -> int:
        return self.sent.n_ok

    @property
    def failed_ids(self) -> list[str]:
        return self.sent.failed_ids

    @property
    def errors(self) -> dict[str, str]:
        return self.sent.errors

    def summary(self) -> str:
        """One line: how many documents are in which state, and what happened to the manifest."""
        sent = self.sent
        parts = [f"{len(self.verified_ids)}/{self.n_docs} documents verified in Vespa"
                 if sent.stop_reason is None else f"{sent.n_ok} acknowledged",
                 f"{sent.n_sent} sent", f"{len(self.skipped_ids)} already held"]
        for label, ids in (("failed", sent.failed_ids), ("unanswered", sent.unanswered_ids),
                           ("unsent", sent.unsent_ids), ("acknowledged but not held", self.unverified_ids)):
            if ids:
                parts.append(f"{len(ids)} {label} ({_shown(ids)})")
        if self.foreign_docs:
            parts.append(f"{self.foreign_docs} stored documents not in the corpus")
        if self.count_in_vespa is not None:
            parts.append(f"Vespa counts {self.count_in_vespa}")
        if self.sent.stop_reason:
            parts.append(f"stopped: {self.sent.stop_reason}")
        if self.verify_error:
            parts.append(f"verification failed: {self.verify_error}")
        verdict = (f"{self.manifest} switched" if self.committed else
                   f"{self.manifest.name} unchanged, plan kept in {self.pending.name}; re-run to resume")
        return f"feed to {self.endpoint}: " + ", ".join(parts) + f"; {verdict}"

    def status(self) -> dict:
        """Every document's state, for ``feed-status.json``."""
        return {"operation": "feed", "endpoint": self.endpoint, "n_docs": self.n_docs, "committed": self.committed,
                "stop_reason": self.sent.stop_reason, "summary": self.summary(),
                "skipped": self.skipped_ids, "acknowledged": self.sent.acknowledged, "verified": self.verified_ids,
                "failed": self.sent.errors, "unanswered": self.sent.unanswered_ids, "unsent": self.sent.unsent_ids,
                "acknowledged_not_held": self.unverified_ids}


def _check_request(methods: Sequence[Quantizer], dims: Sequence[int], concurrency: int) -> None:
    if not methods or not dims:
        raise VespaError("feed needs at least one method and one dim")
    names = [method.name for method in methods]
    if len(set(names)) != len(names) or len(set(dims)) != len(dims):
        raise VespaError(f"methods {names} or dims {dims} contain repeats")
    if concurrency < 1:
        raise VespaError(f"concurrency={concurrency} must be >= 1")


def _dataset_record(embedded: EmbeddedDataset) -> dict:
    return {
        "dataset": embedded.dataset.name,
        "dataset_fingerprint": embedded.dataset.fingerprint,
        "model": embedded.model,
        "n_docs": len(embedded.dataset.doc_ids),
    }


def _fresh_calibrations(embedded: EmbeddedDataset, methods: Sequence[Quantizer], dims: Sequence[int], *,
                        rotation: str, seed: int, calibration_dir: Path) -> tuple[dict, dict[SlotKey, Calibration]]:
    """Calibrate every method x dim on the corpus; the manifest puts each in slot ``a``, active."""
    Path(calibration_dir).mkdir(parents=True, exist_ok=True)
    by_slot: dict[SlotKey, Calibration] = {}
    entries = []
    for dim in dims:
        docs, _ = embedded.at_dim(dim)
        for method in methods:
            calibration = calibrate(method, docs, rotation=rotation, seed=seed)
            by_slot[(method.name, dim, "a")] = calibration
            entries.append({"method": method.name, "dim": dim, "active_slot": "a",
                            "slots": {"a": save_calibration(calibration_dir, calibration)}})
    manifest = {"rotation": rotation, "seed": seed, **_dataset_record(embedded), "namespace": NAMESPACE,
                "document_type": DOCUMENT_TYPE,
                "calibrations": sorted(entries, key=lambda e: (e["method"], e["dim"]))}
    return manifest, by_slot


def _kept_calibrations(embedded: EmbeddedDataset, methods: Sequence[Quantizer], dims: Sequence[int], *,
                       calibration_dir: Path) -> tuple[dict, dict[SlotKey, Calibration]]:
    """Every slot's calibration as the manifest records it, for exactly the methods x dims it lists.

    A put replaces the whole document, so feeding fewer (method, dim)s than the manifest lists
    would empty the others' fields while the manifest still promised them.
    """
    manifest = read_manifest(calibration_dir)
    if manifest.get("model") != embedded.model:
        raise VespaError(f"{Path(calibration_dir) / MANIFEST} was fed with model {manifest.get('model')!r}, "
                         f"these embeddings come from {embedded.model!r}")
    listed = {(entry["method"], entry["dim"]) for entry in manifest["calibrations"]}
    asked = {(method.name, dim) for method in methods for dim in dims}
    if listed != asked:
        raise VespaError(
            f"keep_calibrations feeds exactly the (method, dim)s of {Path(calibration_dir) / MANIFEST}: "
            f"missing {sorted(listed - asked)}, not in the manifest {sorted(asked - listed)}"
        )
    by_slot: dict[SlotKey, Calibration] = {}
    for method in methods:
        for dim in dims:
            entry = manifest_entry(manifest, method.name, dim, calibration_dir)
            for slot in entry["slots"]:
                by_slot[(method.name, dim, slot)] = load_slot_calibration(calibration_dir, entry, slot)
    return {**manifest, **_dataset_record(embedded)}, by_slot


def _probe(methods: Sequence[Quantizer], dims: Sequence[int], by_slot: dict[SlotKey, Calibration],
           signs: bool) -> Probe:
    """What a document of this plan holds: every slot's calibration id; one code field of each calibration-free
    method (which has no id to compare) and the shared sign bits must be present."""
    calibrated = {method.name for method in methods if method.needs_calibration}
    equal = {calibration_field_name(name, dim, slot): calibration.id
             for (name, dim, slot), calibration in by_slot.items() if name in calibrated}
    present = [field_name(m.name, dim, min(m.fields(dim), key=lambda spec: spec.bytes).role)
               for m in methods if not m.needs_calibration for dim in dims]
    present += [signs_field(dim) for dim in dims] if signs else []
    return Probe(equal, tuple(present))


def feed(app_url: str, embedded: EmbeddedDataset, methods: Sequence[Quantizer], dims: Sequence[int], *,
         rotation: str = "none", seed: int = 0, calibration_dir: Path, keep_calibrations: bool = False,
         concurrency: int = 8, policy: HttpPolicy | None = None, progress: bool = True) -> FeedReport:
    """Calibrate (or reuse the manifest's calibrations), encode, send what Vespa lacks, verify, switch.

    A fresh feed learns every method x dim on the corpus with ``rotation`` and ``seed`` and plans
    slot ``a`` only, active. ``keep_calibrations=True`` feeds exactly the (method, dim)s the
    manifest lists, each slot with its recorded calibration, keeping the active slots: the way to
    add documents after a recalibration. Raises :class:`VespaError` before any work when nothing
    answers at ``app_url``, and :class:`~vespa_quant.errors.InterruptedRunError` (after writing
    ``feed-status.json``) when SIGINT/SIGTERM stopped the run. Otherwise returns the report;
    ``report.complete`` says whether the manifest now describes this feed.
    """
    methods, dims, calibration_dir = list(methods), list(dims), Path(calibration_dir)
    _check_request(methods, dims, concurrency)
    with folder_lock(calibration_dir, "--calibration-dir"), VespaClient(app_url, policy) as client:
        client.health()
        base_revision = current_revision(calibration_dir)
        if keep_calibrations:
            manifest, by_slot = _kept_calibrations(embedded, methods, dims, calibration_dir=calibration_dir)
        else:
            manifest, by_slot = _fresh_calibrations(embedded, methods, dims, rotation=rotation, seed=seed,
                                                    calibration_dir=calibration_dir)
        doc_ids = list(embedded.dataset.doc_ids)
        signs_needed = any(sign_role(method) is None for method in methods)
        probe = _probe(methods, dims, by_slot, signs_needed)
        before = held_documents(client, doc_ids, probe)
        write_pending(calibration_dir, manifest)
        rows = np.array([row for row, doc_id in enumerate(doc_ids) if doc_id not in before.matching], dtype=np.int64)
        sent = send_operations(client, [doc_ids[row] for row in rows],
                               _operations(embedded, methods, dims, by_slot, rows, signs_needed),
                               operation_type="feed", concurrency=concurrency, progress=progress, desc="feed")
        after: Held | None = None
        count, verify_error = None, None
        if sent.stop_reason is None:
            try:
                after = held_documents(client, doc_ids, probe)
                count = client.count(documents_count_body(0.8 * client.policy.attempt_timeout))
            except VespaError as exc:
                verify_error = str(exc)
        active = {(e["method"], e["dim"]): by_slot[(e["method"], e["dim"], e["active_slot"])]
                  for e in manifest["calibrations"]}
        verified = [d for d in doc_ids if after is not None and d in after.matching]
        acknowledged = set(sent.acknowledged)
        report = FeedReport(
            endpoint=client.url, n_docs=len(doc_ids), skipped_ids=[d for d in doc_ids if d in before.matching],
            sent=sent, verified_ids=verified,
            unverified_ids=[] if after is None else [d for d in doc_ids if d in acknowledged and d not in after.matching],
            foreign_docs=None if after is None else after.foreign, count_in_vespa=count,
            calibration_set=calibration_set_id(active), committed=False, manifest=manifest_path(calibration_dir),
            pending=pending_path(calibration_dir), calibrations=active, verify_error=verify_error,
        )
        if after is not None and len(verified) == len(doc_ids) and after.foreign == 0 and count == len(doc_ids):
            commit_pending(calibration_dir, base_revision)
            report = replace(report, committed=True)
        report = replace(report, status_file=write_status(calibration_dir, STATUS, report.status()))
    if sent.signal:
        raise InterruptedRunError(report.summary())
    if sent.fatal is not None:
        raise VespaError(report.summary())  # the summary names the error that stopped the run
    return report


def _operations(embedded: EmbeddedDataset, methods: Sequence[Quantizer], dims: Sequence[int],
                by_slot: dict[SlotKey, Calibration], rows: np.ndarray, signs_needed: bool) -> Iterable[dict]:
    """The puts of ``rows``, lazily: codes are encoded per dim and hex-encoded a chunk of documents at a time."""
    if not len(rows):
        return iter(())
    doc_ids = embedded.dataset.doc_ids
    codes: dict[SlotKey, dict[str, np.ndarray]] = {}
    signs: dict[int, np.ndarray] = {}
    for dim in dims:
        docs = embedded.at_dim(dim)[0][rows]
        if signs_needed:
            signs[dim] = shared_sign_bits(docs)
        for key, calibration in by_slot.items():
            if key[1] == dim:
                method = next(m for m in methods if m.name == key[0])
                codes[key] = encode(method, docs, calibration)
    calibration_ids = {key: calibration.id for key, calibration in by_slot.items()}
    return feed_documents([doc_ids[row] for row in rows], codes, {m.name: m for m in methods}, calibration_ids,
                          signs)


def put_rows(app_url: str, embedded: EmbeddedDataset, rows: Sequence[int] | np.ndarray, methods: Sequence[Quantizer],
             dims: Sequence[int], *, calibration_dir: Path, concurrency: int = 8, policy: HttpPolicy | None = None,
             progress: bool = True) -> SendOutcome:
    """Put only the corpus rows ``rows``, every slot the manifest lists encoded with its calibration.

    For documents that arrive a batch at a time into an index that already holds others
    (streaming drift, :mod:`vespa_quant.vespa.stream`): ``feed(..., keep_calibrations=True)``
    restricted to ``rows``, except that the manifest is neither rewritten nor verified, since the
    index holds more than this batch; the caller counts. A signal or a fatal error raises, as in
    :func:`feed`.
    """
    methods, dims = list(methods), list(dims)
    _check_request(methods, dims, concurrency)
    _, by_slot = _kept_calibrations(embedded, methods, dims, calibration_dir=Path(calibration_dir))
    rows = np.asarray(rows, dtype=np.int64)
    doc_ids = [embedded.dataset.doc_ids[row] for row in rows]
    signs_needed = any(sign_role(method) is None for method in methods)
    with VespaClient(app_url, policy) as client:
        sent = send_operations(client, doc_ids, _operations(embedded, methods, dims, by_slot, rows, signs_needed),
                               operation_type="feed", concurrency=concurrency, progress=progress, desc="put")
    if sent.signal:
        raise InterruptedRunError(f"put to {client.url} interrupted by {sent.signal}: {sent.n_ok} of {len(doc_ids)} "
                                  "documents acknowledged")
    if sent.fatal is not None:
        raise sent.fatal
    return sent
