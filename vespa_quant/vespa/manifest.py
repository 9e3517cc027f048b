"""The calibration manifest: which calibration each code slot holds, and which slot queries read.

``manifest.json`` sits beside the calibration files in ``calibration_dir``. Per (method, dim) it
records ``active_slot`` and, per slot written, the :attr:`Calibration.id` of the codes every
document holds in that slot and the ``.npz`` file of that calibration::

    {"revision": "9b1f...", "rotation": "none", "seed": 0, "dataset": ..., "model": ...,
     "n_docs": 5183, "namespace": "vespaquant", "document_type": "doc",
     "calibrations": [{"method": "int8_asym", "dim": 384, "active_slot": "a",
                       "slots": {"a": {"id": "3f0c...", "file": "int8_asym_384_3f0c....npz"}}}]}

The active slot is the one switch of a recalibration (:mod:`vespa_quant.vespa.recalibrate`):
queries pick their rank profile and expected calibration id from it, so flipping it is what moves
queries from one calibration to the next. Files are named by calibration id, so a file a manifest
names is never overwritten with other constants, and the manifest is replaced atomically
(:func:`vespa_quant.files.atomic_write_text`): a reader sees the old or the new manifest, never a mix.
Every write gets a new random ``revision``, so a recalibration can tell that a feed or another
recalibration rewrote the manifest (and possibly the documents) while it was writing a slot.
"""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path

from vespa_quant.data.beir import BeirDataset
from vespa_quant.errors import CalibrationError, VespaError
from vespa_quant.files import atomic_write_text
from vespa_quant.quantize.base import Calibration
from vespa_quant.vespa.naming import SLOTS

MANIFEST = "manifest.json"
FEED_HINT = "re-run vespa-quant feed"


def calibration_file(calibration: Calibration) -> str:
    """File name of ``calibration`` in ``calibration_dir``: method, dim and content hash."""
    return f"{calibration.method}_{calibration.dim}_{calibration.id}.npz"


def save_calibration(calibration_dir: Path, calibration: Calibration) -> dict[str, str]:
    """Save ``calibration`` under its content-addressed name; returns its manifest slot record."""
    name = calibration_file(calibration)
    calibration.save(Path(calibration_dir) / name)
    return {"id": calibration.id, "file": name}


def manifest_path(calibration_dir: Path) -> Path:
    return Path(calibration_dir) / MANIFEST


def write_manifest(calibration_dir: Path, manifest: dict) -> Path:
    """Replace ``manifest.json`` atomically under a new ``revision``, after checking its structure."""
    validate_manifest(manifest, manifest_path(calibration_dir))
    revised = {"revision": uuid.uuid4().hex, **{k: v for k, v in manifest.items() if k != "revision"}}
    return atomic_write_text(manifest_path(calibration_dir), json.dumps(revised, indent=2) + "\n")


def read_manifest(calibration_dir: Path) -> dict:
    """The manifest written by :func:`~vespa_quant.vespa.feeder.feed`, checked for what queries rely on."""
    path = manifest_path(calibration_dir)
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise VespaError(f"{path}: no manifest; run `vespa-quant feed` first") from None
    except (OSError, ValueError) as exc:
        raise VespaError(f"{path}: unreadable manifest ({exc})") from exc
    validate_manifest(manifest, path)
    return manifest


def validate_manifest(manifest: object, path: Path) -> None:
    """Check what queries rely on; one-line :class:`VespaError` naming ``path`` and the entry otherwise."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("calibrations"), list):
        raise VespaError(f"{path}: expected an object with a 'calibrations' list; {FEED_HINT}")
    for position, entry in enumerate(manifest["calibrations"]):
        where = f"{path}: calibrations[{position}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("method"), str) \
                or not isinstance(entry.get("dim"), int) or not isinstance(entry.get("slots"), dict):
            raise VespaError(f"{where}: expected 'method', 'dim', 'active_slot' and 'slots' "
                             f"(a manifest from before recalibration slots?); {FEED_HINT}")
        slots = entry["slots"]
        if entry.get("active_slot") not in slots:
            raise VespaError(f"{where}: active slot {entry.get('active_slot')!r} is not among the "
                             f"written slots {sorted(slots)}")
        for slot, record in slots.items():
            if slot not in SLOTS or not isinstance(record, dict) \
                    or not isinstance(record.get("id"), str) or not isinstance(record.get("file"), str):
                raise VespaError(f"{where}: slot {slot!r} needs a name in {SLOTS} and an 'id' and a 'file'")


def manifest_entry(manifest: dict, method: str, dim: int, calibration_dir: Path) -> dict:
    """The record of ``method`` at ``dim``; names the manifest and the remedy when it is missing."""
    for entry in manifest["calibrations"]:
        if (entry["method"], entry["dim"]) == (method, dim):
            return entry
    raise VespaError(
        f"{manifest_path(calibration_dir)} has no calibration for {method}@{dim}: "
        f"{FEED_HINT} with this method and dim"
    )


def load_slot_calibration(calibration_dir: Path, entry: dict, slot: str) -> Calibration:
    """The calibration whose codes ``slot`` of ``entry`` holds, checked against the recorded id."""
    if slot not in entry["slots"]:
        raise VespaError(f"{entry['method']}@{entry['dim']}: slot {slot} was never written")
    record = entry["slots"][slot]
    path = Path(calibration_dir) / record["file"]
    try:
        calibration = Calibration.load(path)
    except CalibrationError as exc:
        raise VespaError(f"{exc}; {FEED_HINT}") from exc
    if (calibration.method, calibration.dim, calibration.id) != (entry["method"], entry["dim"], record["id"]):
        raise VespaError(
            f"{path} holds calibration {calibration.id} of {calibration.method}@{calibration.dim}, "
            f"the manifest records {record['id']} of {entry['method']}@{entry['dim']} slot {slot}"
        )
    return calibration


def with_active_slot(manifest: dict, method: str, dim: int, slot: str, record: dict[str, str],
                     calibration_dir: Path) -> dict:
    """A copy of ``manifest`` in which ``slot`` of ``method`` at ``dim`` holds ``record`` and is active."""
    switched = copy.deepcopy(manifest)
    entry = manifest_entry(switched, method, dim, calibration_dir)
    entry["slots"][slot] = dict(record)
    entry["slots"] = {name: entry["slots"][name] for name in SLOTS if name in entry["slots"]}
    entry["active_slot"] = slot
    return switched


def active_calibration(calibration_dir: Path, method: str, dim: int) -> Calibration:
    """The calibration queries of ``method`` at ``dim`` must use now: the active slot's."""
    entry = manifest_entry(read_manifest(calibration_dir), method, dim, calibration_dir)
    return load_slot_calibration(calibration_dir, entry, entry["active_slot"])


def check_manifest_dataset(calibration_dir: Path, dataset: BeirDataset, model: str | None = None) -> dict:
    """The manifest, after checking it describes ``dataset`` (name, fingerprint, document count) and ``model``.

    Evaluating on Vespa with another dataset's manifest would score this dataset's queries against
    documents fed from another corpus; the per-hit id check catches unknown ids only by chance.
    """
    manifest = read_manifest(calibration_dir)
    expected = {"dataset": dataset.name, "dataset_fingerprint": dataset.fingerprint, "n_docs": len(dataset.doc_ids)}
    if model is not None:
        expected["model"] = model
    for key, value in expected.items():
        if manifest.get(key) != value:
            raise VespaError(
                f"{manifest_path(calibration_dir)} describes documents fed with {key} {manifest.get(key)!r}, "
                f"the loaded dataset has {value!r}: Vespa holds another feed; {FEED_HINT} with this dataset "
                f"and model (or pass the --calibration-dir of that feed)"
            )
    return manifest
