"""Recalibrate one (method, dim) in a live Vespa with no window in which queries and documents disagree.

Blue/green over the two code slots of a calibrated method (:mod:`vespa_quant.vespa.package`):
queries read the slot ``manifest.json`` marks active (:mod:`vespa_quant.vespa.manifest`), and a
recalibration only ever writes the other one. Three steps, each a public function so a caller (or
a test) can act between them:

1. :func:`write_inactive_slot` learns the new calibration on the corpus (or takes one), saves its
   ``.npz``, encodes every document and sends one partial update per document that assigns the
   inactive slot's code fields and its calibration-id field, nothing else (pyvespa
   ``feed_iterable(..., operation_type="update")``, body ``{"fields": {f: {"assign": v}}}``).
2. :func:`verify_inactive_slot` asks Vespa how many documents hold the new id in that slot
   (``<field> contains "<id>"``, exact on a string attribute) and how many documents there are;
   both must be the corpus size. Acknowledgements alone prove nothing: Vespa answers 200 to an
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
failed update or a short count leaves the manifest, and so every query, on the old slot.

Limits: one recalibration per ``calibration_dir`` at a time (step 3 refuses when the manifest
changed under it); no feeding of the same (method, dim) during one (a document put meanwhile
carries the old inactive calibration, so step 2 fails and nothing switches); a search batch that
read the manifest two switches ago would read a slot being rewritten, which the Vespa backend's
per-hit calibration check turns into an error, never into wrong scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from vespa_quant.errors import VespaError
from vespa_quant.embed.embedded import EmbeddedDataset
from vespa_quant.vespa.wire import slot_calibration_count_body, update_operations
from vespa_quant.vespa.feeder import check_listening, count_documents, send_operations
from vespa_quant.vespa.manifest import (
    manifest_entry,
    manifest_path,
    read_manifest,
    save_calibration,
    with_active_slot,
    write_manifest,
)
from vespa_quant.quantize.base import Calibration, Quantizer, calibrate, encode
from vespa_quant.vespa.naming import method_slots

RECALIBRATE_HINT = "re-run vespa-quant recalibrate"


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

    @property
    def ok(self) -> bool:
        return not self.failed_ids and self.n_updated == self.n_docs


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
                        concurrency: int = 8, max_retries: int = 3, retry_wait: float = 0.5,
                        progress: bool = True) -> SlotWrite:
    """Step 1: encode every document with the new calibration into the inactive slot only.

    The new calibration is ``new_calibration``, or ``method`` calibrated on ``embedded`` at ``dim``
    with the manifest's rotation and seed. Its ``.npz`` is saved before any update, so the
    manifest can name it as soon as the slot is verified.
    """
    url = app_url.rstrip("/")
    if not method.needs_calibration:
        raise VespaError(f"{method.name} needs no calibration: there is nothing to recalibrate")
    if concurrency < 1 or max_retries < 0:
        raise VespaError(f"concurrency={concurrency} must be >= 1 and max_retries={max_retries} >= 0")
    check_listening(url)
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

    def operations(rows: np.ndarray) -> Iterable[dict]:
        subset = codes if len(rows) == len(doc_ids) else {role: array[rows] for role, array in codes.items()}
        return update_operations([doc_ids[i] for i in rows], {key: subset}, {method.name: method},
                                 {key: new_calibration.id})

    sent = send_operations(url, doc_ids, operations, operation_type="update", concurrency=concurrency,
                           max_retries=max_retries, retry_wait=retry_wait, progress=progress,
                           desc=f"recalibrate {method.name}@{dim} slot {slot}")
    return SlotWrite(method.name, dim, slot, active, new_calibration, record, entry, manifest.get("revision"),
                     len(doc_ids), sent.n_ok, sent.failed_ids, sent.errors)


def verify_inactive_slot(app_url: str, written: SlotWrite, timeout: float = 10.0) -> SlotCheck:
    """Step 2: count, in Vespa, the documents holding the new calibration id in the written slot."""
    url = app_url.rstrip("/")
    body = slot_calibration_count_body(written.method, written.dim, written.slot, written.calibration.id, timeout)
    return SlotCheck(written.slot, written.calibration.id, written.n_docs,
                     count_documents(url, timeout, body), count_documents(url, timeout))


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
        raise VespaError(
            f"{what}: Vespa counts {check.n_with_id} documents whose slot {check.slot} holds calibration "
            f"{check.calibration_id} and {check.n_in_vespa} documents in all, the corpus has {check.n_docs}; {stays}"
        )
    current = read_manifest(calibration_dir)
    if current.get("revision") != written.manifest_revision:
        raise VespaError(f"{manifest_path(calibration_dir)} was rewritten while slot {written.slot} of {what} was "
                         f"written (a feed or another recalibration); {stays}")
    return write_manifest(calibration_dir, with_active_slot(current, written.method, written.dim, written.slot,
                                                            written.record, calibration_dir))


def recalibrate(app_url: str, embedded: EmbeddedDataset, method: Quantizer, dim: int, calibration_dir: Path, *,
                new_calibration: Calibration | None = None, concurrency: int = 8, max_retries: int = 3,
                retry_wait: float = 0.5, progress: bool = True) -> RecalibrationReport:
    """Write the inactive slot, verify it in Vespa, and only then switch queries to it.

    Failed updates or a short count are reported with ``switched=False`` (the manifest, and every
    query, stays on the old slot); a re-run writes the inactive slot again from scratch.
    """
    written = write_inactive_slot(app_url, embedded, method, dim, calibration_dir,
                                  new_calibration=new_calibration, concurrency=concurrency,
                                  max_retries=max_retries, retry_wait=retry_wait, progress=progress)
    check = verify_inactive_slot(app_url, written) if written.ok else None
    switched = check is not None and check.ok
    manifest = switch_active_slot(calibration_dir, written, check) if switched else manifest_path(calibration_dir)
    return RecalibrationReport(
        method=method.name, dim=dim, old_slot=written.active_slot, new_slot=written.slot,
        old_calibration_id=written.previous_entry["slots"][written.active_slot]["id"],
        new_calibration_id=written.calibration.id, n_docs=written.n_docs, n_updated=written.n_updated,
        failed_ids=written.failed_ids, errors=written.errors,
        n_with_new_id=None if check is None else check.n_with_id,
        count_in_vespa=None if check is None else check.n_in_vespa,
        switched=switched, manifest=manifest, calibration=written.calibration,
    )
