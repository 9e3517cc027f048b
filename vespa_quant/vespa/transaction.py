"""Feed transactions: ``manifest.json`` only ever describes documents Vespa was seen to hold.

The manifest is what queries trust (:mod:`vespa_quant.vespa.manifest`): which calibration each
code slot holds. A feed therefore changes it last, in four steps:

1. **Plan**: the new manifest is written *beside* the old one, as ``manifest.pending.json``
   (:func:`write_pending`); ``manifest.json`` is untouched.
2. **Resume**: Vespa is visited for each stored document's ``doc_id``, calibration-id fields
   and the presence of the other fields the plan writes (:func:`held_documents`). Documents that
   already hold exactly what the plan describes are not sent again; the rest are.
3. **Send** (:mod:`vespa_quant.vespa.sending`), then **verify**: the same visit again. A
   document is *verified* when Vespa holds it with this plan's calibration ids; an
   acknowledged put that Vespa does not hold (a 200 without storing) stays *unverified*.
4. **Switch**: only when every corpus document is verified, Vespa holds no other documents, and
   its search API counts exactly the corpus, :func:`commit_pending` replaces ``manifest.json``
   with the pending plan (one ``os.replace``) and removes the plan. Otherwise the previous
   manifest stays, and ``feed-status.json`` (:func:`write_status`) lists every document's state.

Why visiting rather than a local journal of acknowledged ids: Vespa is the truth. A journal says
what was sent, not what is held (a ``vespa-quant down`` or a redeploy empties Vespa; another feed
overwrites it), and the visit doubles as the verification step. Its cost is one read of two
short string fields per document (``fieldSet=doc:doc_id,<calibration fields>``), a second visit
after sending.

Between steps 3 and 4 the documents already rewritten hold the new calibration while the manifest
still names the old one: queries through the old manifest then fail on the Vespa backend's
per-hit calibration check (one line), never return scores computed from mismatched codes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vespa_quant.errors import VespaError
from vespa_quant.files import atomic_write_text
from vespa_quant.vespa.client import VespaClient
from vespa_quant.vespa.manifest import manifest_path, validate_manifest, write_manifest
from vespa_quant.vespa.naming import DOC_ID_FIELD
from vespa_quant.vespa.wire import dataset_document_id

PENDING = "manifest.pending.json"
STATUS = "feed-status.json"


def pending_path(calibration_dir: Path) -> Path:
    return Path(calibration_dir) / PENDING


def current_revision(calibration_dir: Path) -> str | None:
    """The ``revision`` of ``manifest.json`` now (None when there is none or it is unreadable)."""
    try:
        manifest = json.loads(manifest_path(calibration_dir).read_text())
    except (OSError, ValueError):
        return None
    return manifest.get("revision") if isinstance(manifest, dict) else None


def write_pending(calibration_dir: Path, manifest: dict) -> Path:
    """Step 1: the plan, beside ``manifest.json``, which stays as it was."""
    validate_manifest(manifest, pending_path(calibration_dir))
    return atomic_write_text(pending_path(calibration_dir), json.dumps(manifest, indent=2) + "\n")


def commit_pending(calibration_dir: Path, base_revision: str | None) -> Path:
    """Step 4: make the pending plan ``manifest.json`` atomically, if nobody rewrote the manifest meanwhile."""
    if current_revision(calibration_dir) != base_revision:
        raise VespaError(f"{manifest_path(calibration_dir)} changed while this feed ran (another feed or a "
                         f"recalibration); not switched, the plan stays in {pending_path(calibration_dir)}")
    plan = json.loads(pending_path(calibration_dir).read_text())
    written = write_manifest(calibration_dir, plan)
    pending_path(calibration_dir).unlink()
    return written


@dataclass(frozen=True)
class Probe:
    """What a stored document must hold to count as this plan's: equal string fields, present fields."""

    equal: dict[str, str]
    """Calibration-id field -> the id every document must hold there."""
    present: tuple[str, ...] = ()
    """Fields that must be set (codes of calibration-free methods, shared sign bits); values are not compared."""

    @property
    def fields(self) -> list[str]:
        return [*self.equal, *self.present]


@dataclass(frozen=True)
class Held:
    """What a visit found: corpus documents holding the probe, the others, and documents not in the corpus."""

    matching: frozenset[str]
    differing: dict[str, str]
    """Dataset id -> the first field that is missing or holds another value."""
    foreign: int
    n_stored: int


def held_documents(client: VespaClient, doc_ids: Sequence[str], probe: Probe) -> Held:
    """Steps 2 and 3: visit every stored document and compare it with ``probe``."""
    corpus = set(doc_ids)
    matching: set[str] = set()
    differing: dict[str, str] = {}
    foreign = stored = 0
    for document in client.visit(probe.fields):
        stored += 1
        fields = document.get("fields") or {}
        doc_id = fields.get(DOC_ID_FIELD)
        if not isinstance(doc_id, str):
            doc_id = dataset_document_id(document["id"].rsplit("::", 1)[-1])
        if doc_id not in corpus:
            foreign += 1
            continue
        wrong = next((f"{name} holds {fields.get(name)!r}, the plan {value!r}"
                      for name, value in probe.equal.items() if fields.get(name) != value), None)
        wrong = wrong or next((f"{name} is missing" for name in probe.present if name not in fields), None)
        if wrong is None:
            matching.add(doc_id)
        else:
            differing[doc_id] = wrong
    return Held(frozenset(matching), differing, foreign, stored)


def write_status(calibration_dir: Path, name: str, status: dict) -> Path:
    """``feed-status.json`` (or ``recalibrate-status.json``): every document's state after the last run."""
    document = {"written": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **status}
    return atomic_write_text(Path(calibration_dir) / name, json.dumps(document, indent=1) + "\n")
