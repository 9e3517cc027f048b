"""Recalibrate one (method, dim) in a live Vespa with no window in which queries and documents disagree.

Blue/green over the two code slots of a calibrated method (:mod:`vespa_quant.vespa.package`):
queries read the slot ``manifest.json`` marks active (:mod:`vespa_quant.vespa.manifest`), and a
recalibration only ever writes the other one. Three steps, each a public function so a caller (or
a test) can act between them:

1. :func:`write_inactive_slot` learns the new calibration on the corpus (or takes one), saves its
   ``.npz``, encodes every document and sends one partial update per document that assigns the
   inactive slot's code fields and its calibration-id field, nothing else (pyvespa
   ``VespaSync.update_data``, body ``{"fields": {f: {"assign": v}}}``, through the one HTTP policy
   and worker pool, :mod:`vespa_quant.vespa.sending`).
2. :func:`verify_inactive_slot` asks Vespa how many documents hold the new id in that slot
   (``<field> contains "<id>"``, exact on a string attribute) and how many documents there are;
   both must be the corpus size. When they are not, a visit names the documents that lack it. Acknowledgements alone prove nothing: Vespa answers 200 to an
   update of a document that does not exist, and a failed write "may or may not have taken place
   on a subset of the replicas" (/document/v1 reference, "HTTP status codes"; Vespa consistency
   model). After a successful write "changes to the search indexes are immediately visible", so
   the count is conclusive.
3. :func:`switch_active_slot` re-reads the manifest, checks nobody rewrote it since step 1 (its
   ``revision``: a feed's puts would have replaced the documents, slot included), and replaces it
   atomically with the new slot active.

Why there is no window: until step 3 every query reads the old slot, which no step touches; from
step 3 on every query reads the new slot, which step 2 proved complete. Searches may see a
document half-updated while it is being written ("updates are not atomic across index
structures", consistency model), but only in the slot being written, which no query reads. A
failed update or a short count leaves the manifest, and so every query, on the old slot. So does
SIGINT/SIGTERM: the pool stops sending within seconds and
:class:`~vespa_quant.errors.InterruptedRunError` reports how many updates were sent and acknowledged.

Limits: one recalibration per ``calibration_dir`` at a time (step 3 refuses when the manifest
changed under it); no feeding of the same (method, dim) during one (a document put meanwhile
carries the old inactive calibration, so step 2 fails and nothing switches); a search batch that
read the manifest two switches ago would read a slot being rewritten, which the Vespa backend's
per-hit calibration check turns into an error, never into wrong scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from vespa_quant.embed.embedded import EmbeddedDataset
from vespa_quant.errors import InterruptedRunError, VespaError
from vespa_quant.folders import folder_lock
from vespa_quant.quantize.base import Calibration, Quantizer, calibrate, encode
from vespa_quant.vespa.client import HttpPolicy, VespaClient
from vespa_quant.vespa.manifest import (
    manifest_entry,
    manifest_path,
    read_manifest,
    save_calibration,
    with_active_slot,
    write_manifest,
)
from vespa_quant.vespa.naming import calibration_field_name, method_slots
from vespa_quant.vespa.sending import SendOutcome, send_operations
from vespa_quant.vespa.transaction import Probe, held_documents, write_status
from vespa_quant.vespa.wire import documents_count_body, slot_calibration_count_body, update_operations

RECALIBRATE_HINT = "re-run vespa-quant recalibrate"
RECALIBRATE_STATUS = "recalibrate-status.json"


@dataclass(frozen=True)
class SlotWrite:
    """Step 1's outcome: the inactive slot written (or partly written) with ``calibration``."""

    method: str
    dim: int
    slot: str
    active_slot: str
    calibration: Calibration = field(repr=False)
    record: dict[str, str]
    """Manifest record of the new calibration: its id and ``.npz`` file."""
    previous_entry: dict = field(repr=False)
    """The manifest's record of (method, dim) when the write started."""
    manifest_revision: str | None
    """The manifest's revision when the write started; the switch requires it unchanged."""
    n_docs: int
    n_updated: int
    failed_ids: list[str]
    errors: dict[str, str]
    sent: SendOutcome | None = field(default=None, repr=False)
    """Every update's state: acknowledged, failed, sent without an answer, never sent."""

    @property
    def ok(self) -> bool:
        return not self.failed_ids and self.n_updated == self.n_docs

    def summary(self) -> str:
        sent = self.sent
        extra = "" if sent is None else (
            f", {len(sent.unanswered_ids)} unanswered, {len(sent.unsent_ids)} unsent"
            + (f" ({sent.stop_reason})" if sent.stop_reason else ""))
        return (f"recalibration of {self.method}@{self.dim} slot {self.slot}: {self.n_updated}/{self.n_docs} updates "
                f"acknowledged, {len(self.failed_ids)} failed{extra}; queries stay on slot {self.active_slot}, "
                f"manifest unchanged")


@dataclass(frozen=True)
class SlotCheck:
    """Step 2's outcome: what Vespa counts in the written slot."""

    slot: str
    calibration_id: str
    n_docs: int
    n_with_id: int | None
    """Documents whose slot holds ``calibration_id``; None when the count query failed."""
    n_in_vespa: int | None
    """Documents of type ``doc`` in all; None when the count query failed."""
    lacking_ids: list[str] = field(default_factory=list)
    """When counts fall short: corpus documents Vespa holds without the new id in the slot, or not at all."""

    @property
    def ok(self) -> bool:
        return self.n_with_id == self.n_in_vespa == self.n_docs


@dataclass(frozen=True)
class RecalibrationReport:
    """What :func:`recalibrate` did; ``switched`` is the one-word verdict."""

    method: str
    dim: int
    old_slot: str
    new_slot: str
    old_calibration_id: str
    new_calibration_id: str
    n_docs: int
    n_updated: int
    failed_ids: list[str]
    errors: dict[str, str]
    n_with_new_id: int | None
    count_in_vespa: int | None
    switched: bool
    """True when queries now use ``new_slot``; False leaves them on ``old_slot``, untouched."""
    manifest: Path
    calibration: Calibration = field(repr=False)
    """The new calibration: queries must use it once ``switched``."""
    lacking_ids: list[str] = field(default_factory=list)
    """Documents the verification found without the new id (when it fell short)."""

    @property
    def active_slot(self) -> str:
        return self.new_slot if self.switched else self.old_slot


def _other_slot(method: Quantizer, slot: str) -> str:
    slots = method_slots(method)
    if len(slots) != 2 or slot not in slots:
        raise VespaError(f"{method.name}: no inactive slot besides {slot!r} (slots {slots})")
    return slots[1 - slots.index(slot)]


def write_inactive_slot(app_url: str, embedded: EmbeddedDataset, method: Quantizer, dim: int,
                        calibration_dir: Path, *, new_calibration: Calibration | None = None,
                        concurrency: int = 8, policy: HttpPolicy | None = None,
                        progress: bool = True) -> SlotWrite:
    """Step 1: encode every document with the new calibration into the inactive slot only.

    The new calibration is ``new_calibration``, or ``method`` calibrated on ``embedded`` at ``dim``
    with the manifest's rotation and seed. Its ``.npz`` is saved before any update, so the
    manifest can name it as soon as the slot is verified. Raises
    :class:`~vespa_quant.errors.InterruptedRunError` when SIGINT/SIGTERM stopped the updates.
    """
    if not method.needs_calibration:
        raise VespaError(f"{method.name} needs no calibration: there is nothing to recalibrate")
    if concurrency < 1:
        raise VespaError(f"concurrency={concurrency} must be >= 1")
    with VespaClient(app_url, policy) as client:
        client.health()
        return _write_inactive_slot(client, embedded, method, dim, Path(calibration_dir), new_calibration,
                                    concurrency, progress)


def _write_inactive_slot(client: VespaClient, embedded: EmbeddedDataset, method: Quantizer, dim: int,
                         calibration_dir: Path, new_calibration: Calibration | None, concurrency: int,
                         progress: bool) -> SlotWrite:
    manifest = read_manifest(calibration_dir)
    if manifest.get("model") != embedded.model:
        raise VespaError(f"{manifest_path(calibration_dir)} was fed with model {manifest.get('model')!r}, "
                         f"these embeddings come from {embedded.model!r}")
    entry = manifest_entry(manifest, method.name, dim, calibration_dir)
    active = entry["active_slot"]
    slot = _other_slot(method, active)
    docs, _ = embedded.at_dim(dim)
    if new_calibration is None:
        new_calibration = calibrate(method, docs, rotation=manifest.get("rotation", "none"),
                                    seed=manifest.get("seed", 0))
    elif (new_calibration.method, new_calibration.dim) != (method.name, dim):
        raise VespaError(f"calibration {new_calibration.id} is for {new_calibration.method}@{new_calibration.dim}, "
                         f"not {method.name}@{dim}")
    record = save_calibration(calibration_dir, new_calibration)
    codes = encode(method, docs, new_calibration)
    key = (method.name, dim, slot)
    doc_ids = list(embedded.dataset.doc_ids)

    operations = update_operations(doc_ids, {key: codes}, {method.name: method}, {key: new_calibration.id})
    sent = send_operations(client, doc_ids, operations, operation_type="update", concurrency=concurrency,
                           progress=progress, desc=f"recalibrate {method.name}@{dim} slot {slot}")
    written = SlotWrite(method.name, dim, slot, active, new_calibration, record, entry, manifest.get("revision"),
                        len(doc_ids), sent.n_ok, sent.failed_ids, sent.errors, sent)
    if sent.signal or sent.stop_reason:
        write_status(calibration_dir, RECALIBRATE_STATUS, {"operation": "recalibrate", "method": method.name, "dim": dim, "slot": slot,
                                       "summary": written.summary(), "acknowledged": sent.acknowledged,
                                       "failed": sent.errors, "unanswered": sent.unanswered_ids,
                                       "unsent": sent.unsent_ids})
    if sent.signal:
        raise InterruptedRunError(written.summary())
    if sent.fatal is not None:
        raise VespaError(written.summary())  # the summary names the error that stopped the run
    return written


def verify_inactive_slot(app_url: str, written: SlotWrite, policy: HttpPolicy | None = None,
                         doc_ids: list[str] | None = None) -> SlotCheck:
    """Step 2: count, in Vespa, the documents holding the new calibration id in the written slot.

    When the counts fall short and ``doc_ids`` (the corpus) is given, a visit names the documents
    lacking the new id.
    """
    with VespaClient(app_url, policy) as client:
        timeout = 0.8 * client.policy.attempt_timeout  # Vespa gives up before the client does
        body = slot_calibration_count_body(written.method, written.dim, written.slot, written.calibration.id, timeout)
        check = SlotCheck(written.slot, written.calibration.id, written.n_docs, client.count(body),
                          client.count(documents_count_body(timeout)))
        if check.ok or doc_ids is None:
            return check
        field_ = calibration_field_name(written.method, written.dim, written.slot)
        held = held_documents(client, doc_ids, Probe({field_: written.calibration.id}))
    return replace(check, lacking_ids=[doc_id for doc_id in doc_ids if doc_id not in held.matching])


def switch_active_slot(calibration_dir: Path, written: SlotWrite, check: SlotCheck) -> Path:
    """Step 3: make the written slot active in ``manifest.json``, atomically, if steps 1 and 2 succeeded."""
    what = f"{written.method}@{written.dim}"
    stays = f"the active slot stays {written.active_slot}: {RECALIBRATE_HINT}"
    if not written.ok:
        shown = ", ".join(f"{doc_id} ({written.errors[doc_id]})" for doc_id in written.failed_ids[:3])
        raise VespaError(f"{what}: {written.n_docs - written.n_updated} of {written.n_docs} updates of slot "
                         f"{written.slot} failed, e.g. {shown or 'unacknowledged'}; {stays}")
    if (check.slot, check.calibration_id) != (written.slot, written.calibration.id):
        raise VespaError(f"{what}: the check is of slot {check.slot} calibration {check.calibration_id}, "
                         f"the write of slot {written.slot} calibration {written.calibration.id}")
    if not check.ok:
        lacking = (f" (lacking it: {', '.join(check.lacking_ids[:5])}"
                   + (f" and {len(check.lacking_ids) - 5} more" if len(check.lacking_ids) > 5 else "") + ")"
                   if check.lacking_ids else "")
        raise VespaError(
            f"{what}: Vespa counts {check.n_with_id} documents whose slot {check.slot} holds calibration "
            f"{check.calibration_id} and {check.n_in_vespa} documents in all, the corpus has {check.n_docs}"
            f"{lacking}; {stays}"
        )
    current = read_manifest(calibration_dir)
    if current.get("revision") != written.manifest_revision:
        raise VespaError(f"{manifest_path(calibration_dir)} was rewritten while slot {written.slot} of {what} was "
                         f"written (a feed or another recalibration); {stays}")
    return write_manifest(calibration_dir, with_active_slot(current, written.method, written.dim, written.slot,
                                                            written.record, calibration_dir))


def recalibrate(app_url: str, embedded: EmbeddedDataset, method: Quantizer, dim: int, calibration_dir: Path, *,
                new_calibration: Calibration | None = None, concurrency: int = 8, policy: HttpPolicy | None = None,
                progress: bool = True) -> RecalibrationReport:
    """Write the inactive slot, verify it in Vespa, and only then switch queries to it.

    Failed updates or a short count are reported with ``switched=False`` (the manifest, and every
    query, stays on the old slot); a re-run writes the inactive slot again from scratch. Holds
    ``calibration_dir``'s lock throughout: one feed or recalibration at a time.
    """
    with folder_lock(Path(calibration_dir), "--calibration-dir"):
        written = write_inactive_slot(app_url, embedded, method, dim, calibration_dir,
                                      new_calibration=new_calibration, concurrency=concurrency, policy=policy,
                                      progress=progress)
        check = (verify_inactive_slot(app_url, written, policy, list(embedded.dataset.doc_ids))
                 if written.ok else None)
        switched = check is not None and check.ok
        manifest = (switch_active_slot(calibration_dir, written, check) if switched and check is not None
                    else manifest_path(calibration_dir))
    return RecalibrationReport(
        method=method.name, dim=dim, old_slot=written.active_slot, new_slot=written.slot,
        old_calibration_id=written.previous_entry["slots"][written.active_slot]["id"],
        new_calibration_id=written.calibration.id, n_docs=written.n_docs, n_updated=written.n_updated,
        failed_ids=written.failed_ids, errors=written.errors,
        n_with_new_id=None if check is None else check.n_with_id,
        count_in_vespa=None if check is None else check.n_in_vespa,
        switched=switched, manifest=manifest, calibration=written.calibration,
        lacking_ids=[] if check is None else check.lacking_ids,
    )
