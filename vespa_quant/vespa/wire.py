"""Vespa request bodies built from codes and query inputs: pure functions, no I/O.

Three translations live here, each checked against Vespa's reference documentation:

* codes -> document JSON. Every dense field is sent in the "cell values as binary data" short
  form, ``{"values": "<hex>"}`` (document JSON format reference, "Tensors"): two hex digits per
  ``int8`` cell (the byte, two's complement, so -1 is ``FF``), and for floating cells the bits
  of the value read as an unsigned integer, 4 / 8 / 16 hex digits for ``bfloat16`` / ``float`` /
  ``double``. Hex is exact and about a third of the size of decimal floats. Codes are keyed by
  slot (:data:`SlotKey`); each calibrated slot also carries its calibration id. A put
  (:func:`feed_documents`) holds ``doc_id`` and every slot given; a partial update
  (:func:`update_operations`) holds only the slot fields given, each of which pyvespa's
  ``update_data`` sends as ``{"assign": value}`` ("assign ... can use the same syntax and
  structure as when feeding that field's value in a put"; assigning a tensor "will fully
  replace the entire tensor stored in this field", document JSON format reference, "assign").
* BEIR document ids -> Vespa document ids. pyvespa builds ``/document/v1/<ns>/<schema>/docid/<id>``
  with ``urllib.parse.quote(id)``, whose default keeps ``/`` unescaped (pyvespa
  ``Vespa.get_document_v1_path``), and URL normalisation folds ``.``/``..`` segments; ids with
  such characters are therefore sent under a reversible escaped name, while the original id is
  always stored in the ``doc_id`` field, which is what queries read back.
* query inputs -> the ``POST /search/`` body (query API reference): ``input.query(<name>)`` per
  declared rank-profile input, dense tensors as JSON arrays (the indexed short form), ``double``
  inputs as numbers, and, for a Hamming first phase,
  ``{targetHits:K1, approximate:false}nearestNeighbor(<bits field>, <input>)`` whose query tensor
  must itself be declared in the rank profile (nearest neighbor search guide).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np

from vespa_quant.errors import VespaError
from vespa_quant.quantize.base import Calibration, Quantizer
from vespa_quant.quantize.methods.float_methods import bfloat16_bits
from vespa_quant.vespa.expressions import input_type
from vespa_quant.vespa.naming import (
    DOC_ID_FIELD,
    DOCUMENT_TYPE,
    calibration_field_name,
    field_name,
    first_phase_field,
    first_phase_input,
    has_exhaustive_profile,
    method_slots,
    rank_profile_name,
    signs_field,
)

SlotKey = tuple[str, int, str]
"""(method name, dim, slot): where a set of codes is stored."""

MAX_HITS = 400
"""Vespa's default ``maxHits``: ``hits`` above it are capped silently (query API reference)."""

_HEX_WIDTH = {"int8": 2, "bfloat16": 4, "float": 8, "double": 16}
_BIG_ENDIAN = {"float": ">f4", "double": ">f8"}
_SAFE_ID = re.compile(r"[A-Za-z0-9._:-]+")
_TENSOR_TYPE = re.compile(r"tensor<(\w+)>\(x\[(\d+)\]\)")
_CHUNK = 1024


def tensor_json(values: np.ndarray, cell_type: str) -> dict:
    """Document JSON for one dense ``tensor<cell_type>(x[n])`` value: ``{"values": "<HEX>"}``."""
    return {"values": _hex_rows(np.asarray(values)[None, :], cell_type)[0]}


def _hex_rows(rows: np.ndarray, cell_type: str) -> list[str]:
    """Hex strings of every row of a 2-D array, encoded in one vectorised pass."""
    if cell_type not in _HEX_WIDTH:
        raise VespaError(f"cell type {cell_type!r} has no hex form; expected one of {', '.join(_HEX_WIDTH)}")
    if rows.ndim != 2:
        raise VespaError(f"expected a dense vector per document, got an array of shape {rows.shape}")
    if cell_type != "int8" and rows.size and not np.all(np.isfinite(rows)):
        raise VespaError(f"{cell_type} cells must be finite")
    if cell_type == "int8":
        if rows.dtype != np.int8:
            if rows.size and (rows.min() < -128 or rows.max() > 127 or not np.all(rows == np.round(rows))):
                raise VespaError(f"int8 cells must be integers in [-128, 127], got dtype {rows.dtype}")
            rows = rows.astype(np.int8)
        raw = np.ascontiguousarray(rows).view(np.uint8)
    elif cell_type == "bfloat16":
        # uint16 rows are the stored bits already; float rows are rounded to nearest even first, so the
        # stored cell is the nearest bfloat16 even for values that are not already representable.
        bits = rows if rows.dtype == np.uint16 else bfloat16_bits(rows)
        upper = bits.astype(">u2")
        raw = np.ascontiguousarray(upper).view(np.uint8)
    else:
        raw = np.ascontiguousarray(rows.astype(_BIG_ENDIAN[cell_type])).view(np.uint8)
    text = raw.tobytes().hex().upper()
    width = raw.shape[1] * 2
    return [text[i:i + width] for i in range(0, len(text), width)]


def decode_tensor_hex(text: str, cell_type: str) -> np.ndarray:
    """Inverse of :func:`tensor_json`'s hex string (used by tests and the fake Vespa)."""
    raw = bytes.fromhex(text)
    if cell_type == "int8":
        return np.frombuffer(raw, dtype=np.int8).copy()
    if cell_type == "bfloat16":
        upper = np.frombuffer(raw, dtype=">u2").astype(np.uint32)
        return (upper << 16).view(np.float32)
    return np.frombuffer(raw, dtype=_BIG_ENDIAN[cell_type]).astype(np.float64 if cell_type == "double" else np.float32)


def calibration_set_id(calibrations: Mapping[tuple[str, int], Calibration]) -> str:
    """One 16-hex-digit label for a feed's calibrations, for logs and reports.

    Each :attr:`Calibration.id` already hashes its method, dim, rotation and constants, so the set
    is a hash of the sorted ids, independent of order; the keys are checked against the
    calibrations so a mislabelled entry cannot slip in. Documents carry the id of each slot
    instead (``<method>_<dim>_calibration[_b]``), which is what queries check.
    """
    if not calibrations:
        raise VespaError("no calibrations: a calibration set needs at least one (method, dim)")
    for (method, dim), calibration in calibrations.items():
        if (calibration.method, calibration.dim) != (method, dim):
            raise VespaError(
                f"calibration {calibration.id} is for {calibration.method}@{calibration.dim}, "
                f"filed under {method}@{dim}"
            )
    unique = sorted({calibration.id for calibration in calibrations.values()})
    return hashlib.sha256(",".join(unique).encode()).hexdigest()[:16]


def vespa_document_id(doc_id: str) -> str:
    """URL-safe, reversible Vespa id for a dataset document id.

    Ids made only of ``[A-Za-z0-9._:-]`` (and not only dots) are used as they are; any other id
    becomes ``~`` + unpadded URL-safe base64 of its UTF-8 bytes. ``~`` never occurs in a kept id,
    so the mapping is injective and a re-run overwrites the very same documents.
    """
    doc_id = str(doc_id)
    if _SAFE_ID.fullmatch(doc_id) and doc_id.strip("."):
        return doc_id
    return "~" + base64.urlsafe_b64encode(doc_id.encode("utf-8")).decode("ascii").rstrip("=")


def dataset_document_id(vespa_id: str) -> str:
    """Inverse of :func:`vespa_document_id`."""
    if not vespa_id.startswith("~"):
        return vespa_id
    encoded = vespa_id[1:]
    return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode("utf-8")


def _check_slot(method: Quantizer, dim: int, slot: str) -> None:
    if slot not in method_slots(method):
        raise VespaError(f"{method.name}@{dim}: slot {slot!r} does not exist; "
                         f"the method has slots {method_slots(method)}")


def _slot_fields(
    doc_ids: Sequence[str],
    codes_by_slot: Mapping[SlotKey, Mapping[str, np.ndarray]],
    methods_by_name: Mapping[str, Quantizer],
    calibration_ids: Mapping[SlotKey, str],
    signs_by_dim: Mapping[int, np.ndarray] | None = None,
) -> Iterator[tuple[str, dict]]:
    """(dataset id, fields) per document, hex-encoding a chunk of rows at a time.

    Every slot must supply exactly the roles of :meth:`Quantizer.fields` with one row per
    document and the declared number of cells, exist for its method, and, for a calibrated
    method, come with the id of the calibration its codes were encoded with. ``signs_by_dim``
    holds the shared sign bits ``signs_<dim>`` (packed ``x > 0`` of the raw vectors).
    """
    n_docs = len(doc_ids)
    layout: list[tuple[str, str, np.ndarray]] = []
    ids: dict[str, str] = {}
    for dim, bits in (signs_by_dim or {}).items():
        bits = np.asarray(bits)
        if bits.shape != (n_docs, -(-dim // 8)):
            raise VespaError(f"{signs_field(dim)}: shape {bits.shape}, expected ({n_docs}, {-(-dim // 8)})")
        layout.append((signs_field(dim), "int8", bits))
    for (name, dim, slot), codes in codes_by_slot.items():
        if name not in methods_by_name:
            raise VespaError(f"codes for unknown method {name!r}; known: {', '.join(methods_by_name)}")
        method = methods_by_name[name]
        _check_slot(method, dim, slot)
        specs = {spec.role: spec for spec in method.fields(dim)}
        if set(codes) != set(specs):
            raise VespaError(
                f"{name}@{dim}: codes have roles {sorted(codes)}, the method stores {sorted(specs)}"
            )
        for role, spec in specs.items():
            array = np.asarray(codes[role])
            if array.shape != (n_docs, spec.cells):
                raise VespaError(
                    f"{name}@{dim} {role}: codes have shape {array.shape}, "
                    f"expected ({n_docs}, {spec.cells}) for {n_docs} documents"
                )
            layout.append((field_name(name, dim, role, slot), spec.cell_type, array))
        if method.needs_calibration:
            if (name, dim, slot) not in calibration_ids:
                raise VespaError(f"{name}@{dim} slot {slot}: no calibration id for its codes")
            ids[calibration_field_name(name, dim, slot)] = calibration_ids[(name, dim, slot)]
    for start in range(0, n_docs, _CHUNK):
        stop = min(start + _CHUNK, n_docs)
        encoded = [(field, _hex_rows(array[start:stop], cell_type)) for field, cell_type, array in layout]
        for offset, doc_id in enumerate(doc_ids[start:stop]):
            fields: dict[str, object] = dict(ids)
            for field, rows in encoded:
                fields[field] = {"values": rows[offset]}
            yield str(doc_id), fields


def feed_documents(
    doc_ids: Sequence[str],
    codes_by_slot: Mapping[SlotKey, Mapping[str, np.ndarray]],
    methods_by_name: Mapping[str, Quantizer],
    calibration_ids: Mapping[SlotKey, str],
    signs_by_dim: Mapping[int, np.ndarray] | None = None,
) -> Iterator[dict]:
    """pyvespa put operations ``{"id": ..., "fields": {...}}``, one per document, lazily.

    A put replaces the whole document, so it must hold every slot the manifest lists (a slot
    left out would be emptied): ``doc_id``, the shared sign bits, and per slot its codes and
    calibration id.
    """
    for doc_id, fields in _slot_fields(doc_ids, codes_by_slot, methods_by_name, calibration_ids, signs_by_dim):
        yield {"id": vespa_document_id(doc_id), "fields": {DOC_ID_FIELD: doc_id, **fields}}


def update_operations(
    doc_ids: Sequence[str],
    codes_by_slot: Mapping[SlotKey, Mapping[str, np.ndarray]],
    methods_by_name: Mapping[str, Quantizer],
    calibration_ids: Mapping[SlotKey, str],
) -> Iterator[dict]:
    """pyvespa partial-update operations touching only the given slots' fields, lazily.

    For ``Vespa.feed_iterable(..., operation_type="update")``, whose ``update_data`` sends
    ``{"fields": {name: {"assign": value}}}`` with ``PUT /document/v1/...`` (pyvespa
    ``VespaSync.update_data``, ``auto_assign=True``); ``doc_id`` and every other field are left
    as they are.
    """
    for doc_id, fields in _slot_fields(doc_ids, codes_by_slot, methods_by_name, calibration_ids):
        yield {"id": vespa_document_id(doc_id), "fields": fields}


def _input_value(name: str, declared: str, value, where: str):
    if declared == "double":
        array = np.asarray(value, dtype=np.float64)
        if array.size != 1 or not np.isfinite(array).all():
            raise VespaError(f"{where}: input query({name}) is declared double, got {array.shape} {array.ravel()[:3]}")
        return float(array.reshape(()))
    match = _TENSOR_TYPE.fullmatch(declared.replace(" ", ""))
    if match is None:
        raise VespaError(f"{where}: input query({name}) has type {declared!r}; only double and dense x[N] are supported")
    cell_type, cells = match.group(1), int(match.group(2))
    array = np.asarray(value)
    if array.shape != (cells,):
        raise VespaError(f"{where}: input query({name}) has shape {array.shape}, declared {declared}")
    if cell_type == "int8":
        return array.astype(np.int64).tolist()
    if not np.isfinite(array.astype(np.float64)).all():
        raise VespaError(f"{where}: input query({name}) has non-finite values")
    return array.astype(np.float32).astype(np.float64).tolist()


def query_body(
    method: Quantizer,
    dim: int,
    query_inputs_row: Mapping[str, np.ndarray | float],
    *,
    hits: int,
    k1: int | None,
    nn_query: np.ndarray | None,
    approximate: bool = False,
    timeout: float = 10.0,
    slot: str = "a",
) -> dict:
    """The JSON body of ``POST /search/`` for one query of ``method`` at ``dim`` on ``slot``.

    Two-phase (``k1`` given, :mod:`vespa_quant.vespa.package`): the YQL retrieves
    ``{targetHits:k1}nearestNeighbor(<sign bits>, <query bits>)`` (``nn_query``, packed like the
    stored bits), the first phase is their closeness and ``ranking.globalPhase.rerankCount=k1``
    makes the global phase rescore exactly the merged Hamming top k1; ``hits`` must be at most
    k1. Exhaustive (``k1`` None): ``where true`` on the ``_exhaustive`` profile. The YQL selects
    ``doc_id`` and, for a calibrated method, ``slot``'s calibration id, so every hit names the
    calibration that encoded the codes it was scored on. Soft timeout is off, so a slow query
    fails with 504 instead of returning a silently truncated ranking.
    """
    _check_slot(method, dim, slot)
    two_phase = k1 is not None or method.always_first_phase
    if k1 is None and method.always_first_phase:
        raise VespaError(f"{method.name} is defined by its Hamming first phase: give k1")
    if not two_phase and not has_exhaustive_profile(method):
        raise VespaError(f"{method.name} has no exhaustive profile")
    profile = rank_profile_name(method.name, dim, slot, exhaustive=not two_phase)
    if not 0 < hits <= MAX_HITS:
        raise VespaError(f"{profile}: hits={hits} must be in [1, {MAX_HITS}] (Vespa's default maxHits)")
    declared = {spec.name: input_type(spec) for spec in method.inputs(dim)}
    missing = sorted(set(declared) - set(query_inputs_row))
    unexpected = sorted(set(query_inputs_row) - set(declared))
    if missing or unexpected:
        raise VespaError(
            f"{profile}: query inputs {sorted(query_inputs_row)} do not match the declared inputs "
            f"{sorted(declared)} (missing {missing}, unexpected {unexpected})"
        )
    body: dict = {
        "ranking.profile": profile,
        "hits": int(hits),
        "timeout": f"{timeout:g}s",
        "ranking.softtimeout.enable": False,
    }
    for name, type_ in declared.items():
        body[f"input.query({name})"] = _input_value(name, type_, query_inputs_row[name], profile)
    summary = [DOC_ID_FIELD]
    if method.needs_calibration:
        summary.append(calibration_field_name(method.name, dim, slot))
    select = f"select {', '.join(summary)} from {DOCUMENT_TYPE} where"
    if not two_phase:
        body["yql"] = f"{select} true"
        return body
    assert k1 is not None
    if k1 <= 0 or hits > k1:
        raise VespaError(f"{profile}: k1={k1} must be positive and at least hits={hits}")
    if nn_query is None:
        raise VespaError(f"{profile}: a Hamming first phase needs the packed query bits (nn_query)")
    name = first_phase_input(method, dim)
    cells = -(-dim // 8)
    body[f"input.query({name})"] = _input_value(name, f"tensor<int8>(x[{cells}])", nn_query, profile)
    annotation = f"{{targetHits:{int(k1)}, approximate:{str(bool(approximate)).lower()}}}"
    body["yql"] = f"{select} {annotation}nearestNeighbor({first_phase_field(method, dim, slot)}, {name})"
    body["ranking.globalPhase.rerankCount"] = int(k1)
    return body


def documents_count_body(timeout: float = 10.0, *, where: str = "true") -> dict:
    """``select * from doc where <where>`` with no hits: the response's ``totalCount`` counts matches.

    Without ranking or ``nearestNeighbor`` the match is exact, so ``totalCount`` is the exact
    number of matching documents.
    """
    return {"yql": f"select * from {DOCUMENT_TYPE} where {where}", "hits": 0, "timeout": f"{timeout:g}s"}


def slot_calibration_count_body(method: str, dim: int, slot: str, calibration_id: str,
                                timeout: float = 10.0) -> dict:
    """Count of documents whose ``slot`` of ``method`` at ``dim`` holds ``calibration_id``.

    ``<field> contains "<id>"`` on a string attribute matches the whole stored value, not tokens
    (only lowercased, and ids are lowercase hex), so it is an exact equality test (Vespa text
    matching guide, "Index and attribute").
    """
    if not re.fullmatch(r"[0-9a-f]+", calibration_id):
        raise VespaError(f"calibration id {calibration_id!r} is not lowercase hex")
    field = calibration_field_name(method, dim, slot)
    return documents_count_body(timeout, where=f'{field} contains "{calibration_id}"')


def iter_rows(query_inputs: Mapping[str, np.ndarray]) -> Iterable[dict[str, np.ndarray]]:
    """Split batched query inputs (name -> (n, ...)) into one mapping per query."""
    n = {len(np.asarray(v)) for v in query_inputs.values()}
    if len(n) != 1:
        raise VespaError(f"query inputs have different numbers of queries: {sorted(n)}")
    for i in range(n.pop()):
        yield {name: np.asarray(values)[i] for name, values in query_inputs.items()}
