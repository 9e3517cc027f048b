"""Calibrate, encode and feed a corpus into the deployed Vespa application.

The I/O edge of the store stage (STYLE 4): every method x dim is calibrated on the full corpus,
each calibration is saved beside a ``manifest.json`` recording, per (method, dim), which
calibration each code slot holds and which slot is active (:mod:`vespa_quant.vespa.manifest`), and
one document per corpus row, holding every method's codes and the calibration id of each slot, is
written with pyvespa's ``Vespa.feed_iterable`` (one ``POST /document/v1/<ns>/doc/docid/<id>`` per
document; pyvespa itself retries 429 and connection errors). A put replaces the whole document,
so feeding again overwrites and a re-run resumes where a failed one stopped; for the same reason
every put writes every slot the manifest lists. A fresh feed writes slot ``a`` only and makes it
active; ``keep_calibrations=True`` instead encodes with the manifest's calibrations, every slot
with its own, so documents fed after a recalibration agree with whichever slot queries read.
Failures with a transient status (429, 502, 503, 504, or pyvespa's 599 for an exception) are
sent again in up to ``max_retries`` further rounds; the rest are reported. Finally
``select * from doc where true`` with ``hits: 0`` returns ``totalCount``, the number of
searchable documents, which is compared with the corpus size.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Literal, Sequence

import numpy as np
import requests
from tqdm.auto import tqdm
from vespa.application import Vespa
from vespa.io import VespaResponse

from vespa_quant.errors import VespaError
from vespa_quant.embed.embedded import EmbeddedDataset
from vespa_quant.quantize.base import shared_sign_bits, sign_role
from vespa_quant.vespa.naming import DOCUMENT_TYPE, NAMESPACE
from vespa_quant.vespa.wire import (
    SlotKey,
    calibration_set_id,
    dataset_document_id,
    documents_count_body,
    feed_documents,
)
from vespa_quant.vespa.manifest import (
    MANIFEST,
    load_slot_calibration,
    manifest_entry,
    read_manifest,
    save_calibration,
    write_manifest,
)
from vespa_quant.quantize.base import Calibration, Quantizer, calibrate, encode

__all__ = ["MANIFEST", "FeedReport", "SendOutcome", "check_listening", "count_documents", "feed",
           "put_rows", "read_manifest", "send_operations"]

RETRYABLE_STATUS = frozenset({429, 502, 503, 504, 599})
START_HINT = "start Vespa with `docker compose up -d` and `vespa-quant deploy`"


@dataclass(frozen=True)
class FeedReport:
    """What one ``feed`` call did; ``complete`` is the one-word verdict."""

    n_fed: int
    failed_ids: list[str]
    errors: dict[str, str]
    count_in_vespa: int | None
    calibration_set: str
    """A label of the active calibrations (:func:`~vespa_quant.vespa.wire.calibration_set_id`), for logs."""
    n_docs: int = 0
    manifest: Path | None = None
    calibrations: dict[tuple[str, int], Calibration] = field(default_factory=dict, repr=False)
    """The calibration of each (method, dim)'s active slot: the one queries must use."""

    @property
    def complete(self) -> bool:
        """Every document acknowledged and Vespa counts exactly the corpus."""
        return not self.failed_ids and self.count_in_vespa == self.n_docs


@dataclass(frozen=True)
class SendOutcome:
    """Acknowledged operations and, in corpus order, the documents whose operation failed."""

    n_ok: int
    failed_ids: list[str]
    errors: dict[str, str]


def check_listening(url: str, timeout: float = 5.0) -> None:
    """Fail early, naming the URL, when no Vespa container answers ``/state/v1/health``."""
    try:
        response = requests.get(url + "/state/v1/health", timeout=timeout)
    except requests.ConnectionError as exc:
        raise VespaError(f"nothing listens on {url}: {START_HINT}") from exc
    except requests.Timeout as exc:
        raise VespaError(f"{url}/state/v1/health did not answer within {timeout:g} s") from exc
    if response.status_code != 200:
        raise VespaError(f"{url}/state/v1/health answered HTTP {response.status_code}: {START_HINT}")
    try:
        state = response.json()["status"]["code"]
    except (ValueError, KeyError, TypeError):
        return
    if state != "up":
        raise VespaError(f"Vespa at {url} reports {state!r}, not 'up': wait until `vespa-quant deploy` reports ready")


def count_documents(url: str, timeout: float = 10.0, body: dict | None = None) -> int | None:
    """``totalCount`` of a no-hits query (default: every document of type ``doc``), None on error."""
    body = body or documents_count_body(timeout)
    try:
        response = requests.post(url + "/search/", json=body, timeout=timeout + 5)
        return int(response.json()["root"]["fields"]["totalCount"]) if response.status_code == 200 else None
    except (requests.RequestException, ValueError, KeyError, TypeError):
        return None


def _message(response: VespaResponse) -> str:
    body = response.get_json()
    if isinstance(body, dict):
        text = body.get("Exception") or body.get("message")
        if text:
            return str(text)
        return json.dumps(body)[:500]
    return str(body)[:500]


def send_operations(url: str, doc_ids: Sequence[str], operations: Callable[[np.ndarray], Iterable[dict]], *,
                    operation_type: Literal["feed", "update"], concurrency: int, max_retries: int,
                    retry_wait: float, progress: bool, desc: str) -> SendOutcome:
    """Send one operation per document with pyvespa's ``feed_iterable``, retrying transient failures.

    ``operations(rows)`` yields the operations of ``doc_ids[rows]``. Updates go with
    ``auto_assign=True`` (each field value becomes ``{"assign": value}``) and ``create=False`` (an
    update never creates a document; Vespa answers 200 even when the document does not exist,
    /document/v1 reference "HTTP status codes", which is why callers check by querying).
    """
    extra = {"auto_assign": True, "create": False} if operation_type == "update" else {}
    app = Vespa(url)
    bar = tqdm(total=len(doc_ids), desc=desc, unit="doc", disable=not progress)
    lock = threading.Lock()
    n_ok = 0
    errors: dict[str, str] = {}
    pending = np.arange(len(doc_ids))
    for round_ in range(max_retries + 1):
        outcome: dict[str, tuple[int, str]] = {}

        def callback(response: VespaResponse, vespa_id: str) -> None:
            nonlocal n_ok
            with lock:
                if response.get_status_code() == 200:
                    n_ok += 1
                    bar.update()
                else:
                    outcome[vespa_id] = (response.get_status_code(), _message(response))
                    bar.set_postfix(failed=len(outcome))

        app.feed_iterable(operations(pending), schema=DOCUMENT_TYPE, namespace=NAMESPACE, callback=callback,
                          operation_type=operation_type, max_workers=concurrency, max_connections=concurrency,
                          **extra)
        retry = []
        row_of = {doc_ids[i]: i for i in pending}
        for vespa_id, (status, message) in outcome.items():
            doc_id = dataset_document_id(vespa_id)
            errors[doc_id] = f"HTTP {status}: {message}"
            if status in RETRYABLE_STATUS:
                retry.append(row_of[doc_id])
        if not retry or round_ == max_retries:
            break
        for i in retry:
            errors.pop(doc_ids[i])
        pending = np.array(sorted(retry))
        time.sleep(retry_wait * 2 ** round_)
    bar.close()
    failed = [doc_id for doc_id in doc_ids if doc_id in errors]
    return SendOutcome(n_ok, failed, {doc_id: errors[doc_id] for doc_id in failed})


def _check_request(methods: Sequence[Quantizer], dims: Sequence[int], concurrency: int, max_retries: int) -> None:
    if not methods or not dims:
        raise VespaError("feed needs at least one method and one dim")
    names = [method.name for method in methods]
    if len(set(names)) != len(names) or len(set(dims)) != len(dims):
        raise VespaError(f"methods {names} or dims {dims} contain repeats")
    if concurrency < 1 or max_retries < 0:
        raise VespaError(f"concurrency={concurrency} must be >= 1 and max_retries={max_retries} >= 0")


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


def feed(app_url: str, embedded: EmbeddedDataset, methods: Sequence[Quantizer], dims: Sequence[int], *,
         rotation: str = "none", seed: int = 0, calibration_dir: Path, keep_calibrations: bool = False,
         concurrency: int = 8, max_retries: int = 3, retry_wait: float = 0.5,
         progress: bool = True) -> FeedReport:
    """Calibrate (or, with ``keep_calibrations``, reuse the manifest's calibrations), encode, feed, count.

    A fresh feed learns every method x dim on the corpus with ``rotation`` and ``seed``, puts
    slot ``a`` only and makes it active (a put empties slot ``b``). ``keep_calibrations=True``
    feeds exactly the (method, dim)s the manifest lists, each slot with the calibration the
    manifest records for it (``rotation`` and ``seed`` are then unused), and keeps the active
    slots: the way to add documents after a recalibration. Raises :class:`VespaError` before any
    work when nothing answers at ``app_url``.
    """
    url = app_url.rstrip("/")
    methods, dims = list(methods), list(dims)
    _check_request(methods, dims, concurrency, max_retries)
    check_listening(url)

    if keep_calibrations:
        manifest, by_slot = _kept_calibrations(embedded, methods, dims, calibration_dir=calibration_dir)
    else:
        manifest, by_slot = _fresh_calibrations(embedded, methods, dims, rotation=rotation, seed=seed,
                                                calibration_dir=calibration_dir)
    codes: dict[SlotKey, dict[str, np.ndarray]] = {}
    for dim in dims:
        docs, _ = embedded.at_dim(dim)
        for method in methods:
            for key in [key for key in by_slot if key[:2] == (method.name, dim)]:
                codes[key] = encode(method, docs, by_slot[key])
    manifest_file = write_manifest(calibration_dir, manifest)
    active = {
        (entry["method"], entry["dim"]): by_slot[(entry["method"], entry["dim"], entry["active_slot"])]
        for entry in manifest["calibrations"]
    }

    doc_ids = list(embedded.dataset.doc_ids)
    by_name = {method.name: method for method in methods}
    calibration_ids = {key: calibration.id for key, calibration in by_slot.items()}
    signs = ({dim: shared_sign_bits(embedded.at_dim(dim)[0]) for dim in dims}
             if any(sign_role(method) is None for method in methods) else {})

    def operations(rows: np.ndarray) -> Iterable[dict]:
        whole = len(rows) == len(doc_ids)
        subset = codes if whole else {
            key: {role: array[rows] for role, array in by_role.items()} for key, by_role in codes.items()
        }
        return feed_documents([doc_ids[i] for i in rows], subset, by_name, calibration_ids,
                              signs if whole else {dim: bits[rows] for dim, bits in signs.items()})

    sent = send_operations(url, doc_ids, operations, operation_type="feed", concurrency=concurrency,
                           max_retries=max_retries, retry_wait=retry_wait, progress=progress, desc="feed")
    return FeedReport(
        n_fed=sent.n_ok, failed_ids=sent.failed_ids, errors=sent.errors, count_in_vespa=count_documents(url),
        calibration_set=calibration_set_id(active), n_docs=len(doc_ids), manifest=manifest_file,
        calibrations=active,
    )


def put_rows(app_url: str, embedded: EmbeddedDataset, rows: Sequence[int] | np.ndarray, methods: Sequence[Quantizer],
             dims: Sequence[int], *, calibration_dir: Path, concurrency: int = 8, max_retries: int = 3,
             retry_wait: float = 0.5, progress: bool = True) -> SendOutcome:
    """Put only the corpus rows ``rows``, every slot the manifest lists encoded with its calibration.

    For documents that arrive a batch at a time into an index that already holds others
    (streaming drift, :mod:`vespa_quant.vespa.stream`): ``feed(..., keep_calibrations=True)``
    restricted to ``rows``, except that the manifest is neither rewritten nor its count checked,
    since the index holds more than this batch. The caller counts.
    """
    url = app_url.rstrip("/")
    methods, dims = list(methods), list(dims)
    _check_request(methods, dims, concurrency, max_retries)
    _, by_slot = _kept_calibrations(embedded, methods, dims, calibration_dir=calibration_dir)
    rows = np.asarray(rows, dtype=np.int64)
    doc_ids = [embedded.dataset.doc_ids[i] for i in rows]
    vectors = {dim: embedded.at_dim(dim)[0][rows] for dim in dims}
    by_name = {method.name: method for method in methods}
    codes = {key: encode(by_name[key[0]], vectors[key[1]], calibration) for key, calibration in by_slot.items()}
    calibration_ids = {key: calibration.id for key, calibration in by_slot.items()}
    signs = ({dim: shared_sign_bits(vectors[dim]) for dim in dims}
             if any(sign_role(method) is None for method in methods) else {})

    def operations(pending: np.ndarray) -> Iterable[dict]:
        subset = {key: {role: array[pending] for role, array in by_role.items()} for key, by_role in codes.items()}
        return feed_documents([doc_ids[i] for i in pending], subset, by_name, calibration_ids,
                              {dim: bits[pending] for dim, bits in signs.items()})

    return send_operations(url, doc_ids, operations, operation_type="feed", concurrency=concurrency,
                           max_retries=max_retries, retry_wait=retry_wait, progress=progress, desc="put")
