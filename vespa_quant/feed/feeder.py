"""Calibrate, encode and feed a corpus into the deployed Vespa application.

The I/O edge of the store stage (STYLE 4): every method x dim is calibrated on the full corpus,
each calibration is saved as ``<method>_<dim>.npz`` beside a ``manifest.json`` naming the
calibration set, and one document per corpus row, holding every method's codes, is written with
pyvespa's ``Vespa.feed_iterable`` (one ``POST /document/v1/<ns>/doc/docid/<id>`` per document;
pyvespa itself retries 429 and connection errors). A put replaces the whole document, so feeding
again overwrites and a re-run resumes where a failed one stopped. Failures with a transient
status (429, 502, 503, 504, or pyvespa's 599 for an exception) are fed again in up to
``max_retries`` further rounds; the rest are reported. Finally ``select * from doc where true``
with ``hits: 0`` returns ``totalCount``, the number of searchable documents, which is compared
with the corpus size.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import requests
from tqdm.auto import tqdm
from vespa.application import Vespa
from vespa.io import VespaResponse

from vespa_quant.errors import VespaError
from vespa_quant.evaluate.runner import EmbeddedDataset
from vespa_quant.feed.documents import (
    NAMESPACE,
    calibration_set_id,
    dataset_document_id,
    documents_count_body,
    feed_documents,
)
from vespa_quant.quantize.base import Calibration, Method, calibrate, encode
from vespa_quant.vespa_app.package import DOCUMENT_TYPE

MANIFEST = "manifest.json"
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
    n_docs: int = 0
    manifest: Path | None = None
    calibrations: dict[tuple[str, int], Calibration] = field(default_factory=dict, repr=False)

    @property
    def complete(self) -> bool:
        """Every document acknowledged and Vespa counts exactly the corpus."""
        return not self.failed_ids and self.count_in_vespa == self.n_docs


def calibration_file(method: str, dim: int) -> str:
    return f"{method}_{dim}.npz"


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


def write_calibrations(calibration_dir: Path, calibrations: Mapping[tuple[str, int], Calibration],
                       calibration_set: str, *, rotation: str, seed: int,
                       embedded: EmbeddedDataset) -> Path:
    """Save every calibration and a manifest naming them; the manifest is replaced atomically."""
    calibration_dir = Path(calibration_dir)
    calibration_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for (method, dim), calibration in sorted(calibrations.items()):
        name = calibration_file(method, dim)
        calibration.save(calibration_dir / name)
        entries.append({"method": method, "dim": dim, "id": calibration.id, "file": name})
    manifest = {
        "calibration_set": calibration_set,
        "rotation": rotation,
        "seed": seed,
        "dataset": embedded.dataset.name,
        "dataset_fingerprint": embedded.dataset.fingerprint,
        "model": embedded.model,
        "n_docs": len(embedded.dataset.doc_ids),
        "namespace": NAMESPACE,
        "document_type": DOCUMENT_TYPE,
        "calibrations": entries,
    }
    path = calibration_dir / MANIFEST
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(path)
    return path


def read_manifest(calibration_dir: Path) -> dict:
    """The manifest written by :func:`feed`, checked for the keys queries rely on."""
    path = Path(calibration_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise VespaError(f"{path}: no manifest; run `vespa-quant feed` first") from None
    except (OSError, ValueError) as exc:
        raise VespaError(f"{path}: unreadable manifest ({exc})") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("calibration_set"), str) \
            or not isinstance(manifest.get("calibrations"), list):
        raise VespaError(f"{path}: expected keys 'calibration_set' and 'calibrations'")
    return manifest


def count_documents(url: str, timeout: float = 10.0) -> int | None:
    """Searchable documents of type ``doc`` (``totalCount`` of a match-all query), None on error."""
    try:
        response = requests.post(url + "/search/", json=documents_count_body(timeout), timeout=timeout + 5)
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


def feed(app_url: str, embedded: EmbeddedDataset, methods: Sequence[Method], dims: Sequence[int], *,
         rotation: str = "none", seed: int = 0, calibration_dir: Path, concurrency: int = 8,
         max_retries: int = 3, retry_wait: float = 0.5, progress: bool = True) -> FeedReport:
    """Calibrate and encode every method x dim, save the calibrations, feed, and count.

    Raises :class:`VespaError` before any work when nothing answers at ``app_url``.
    """
    url = app_url.rstrip("/")
    methods, dims = list(methods), list(dims)
    if not methods or not dims:
        raise VespaError("feed needs at least one method and one dim")
    names = [method.name for method in methods]
    if len(set(names)) != len(names) or len(set(dims)) != len(dims):
        raise VespaError(f"methods {names} or dims {dims} contain repeats")
    if concurrency < 1 or max_retries < 0:
        raise VespaError(f"concurrency={concurrency} must be >= 1 and max_retries={max_retries} >= 0")
    check_listening(url)

    calibrations: dict[tuple[str, int], Calibration] = {}
    codes: dict[tuple[str, int], dict[str, np.ndarray]] = {}
    for dim in dims:
        docs, _ = embedded.at_dim(dim)
        for method in methods:
            calibration = calibrate(method, docs, rotation=rotation, seed=seed)
            calibrations[(method.name, dim)] = calibration
            codes[(method.name, dim)] = encode(method, docs, calibration)
    calibration_set = calibration_set_id(calibrations)
    manifest = write_calibrations(calibration_dir, calibrations, calibration_set,
                                  rotation=rotation, seed=seed, embedded=embedded)

    doc_ids = list(embedded.dataset.doc_ids)
    by_name = {method.name: method for method in methods}
    app = Vespa(url)
    bar = tqdm(total=len(doc_ids), desc="feed", unit="doc", disable=not progress)
    lock = threading.Lock()
    n_fed = 0
    errors: dict[str, str] = {}
    pending = np.arange(len(doc_ids))
    for round_ in range(max_retries + 1):
        outcome: dict[str, tuple[int, str]] = {}

        def callback(response: VespaResponse, vespa_id: str) -> None:
            nonlocal n_fed
            with lock:
                if response.get_status_code() == 200:
                    n_fed += 1
                    bar.update()
                else:
                    outcome[vespa_id] = (response.get_status_code(), _message(response))
                    bar.set_postfix(failed=len(outcome))

        subset = codes if len(pending) == len(doc_ids) else {
            key: {role: array[pending] for role, array in by_role.items()} for key, by_role in codes.items()
        }
        operations = feed_documents([doc_ids[i] for i in pending], subset, by_name, calibration_set)
        app.feed_iterable(operations, schema=DOCUMENT_TYPE, namespace=NAMESPACE, callback=callback,
                          max_workers=concurrency, max_connections=concurrency)
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
    return FeedReport(
        n_fed=n_fed, failed_ids=failed, errors={doc_id: errors[doc_id] for doc_id in failed},
        count_in_vespa=count_documents(url), calibration_set=calibration_set, n_docs=len(doc_ids),
        manifest=manifest, calibrations=calibrations,
    )
