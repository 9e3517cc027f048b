"""Every Vespa name the project uses, derived in one place (STYLE 17).

Methods speak of roles (``bits``, ``hi``, ``codes``) and input names (``w_hi``, ``offset``);
here they become schema fields, rank profiles, calibration-id attributes and document ids:

* field ``<method>_<dim>_<role>[_b]``, e.g. ``lloyd_max_gauss_384_hi`` (slot ``b`` appends ``_b``);
* profiles ``<method>_<dim>[_b]`` (two-phase: Hamming first phase, the method's score as
  global phase) and ``<method>_<dim>_exhaustive[_b]`` (the score over every matched document);
* string attribute ``<method>_<dim>_calibration[_b]``: the calibration id of the slot's codes;
* ``signs_<dim>``: the shared sign bits of the raw vector, the first-phase field of every method
  that stores no sign bits of its own.

Recalibration slots (blue/green): a calibrated method stores its codes twice per dim, slot
``a`` under the plain names and slot ``b`` with ``_b`` appended; queries read the slot the
calibration manifest marks active.
"""

from __future__ import annotations

from vespa_quant.errors import VespaQuantError
from vespa_quant.quantize.base import Quantizer, sign_role

DOCUMENT_TYPE = "doc"
"""The one schema and document type: every method's codes live side by side in one document."""
DOC_ID_FIELD = "doc_id"
NAMESPACE = "vespaquant"
"""Document id namespace: ids are ``id:vespaquant:doc::<id>``."""
SLOTS: tuple[str, ...] = ("a", "b")
SIGNS_PREFIX = "signs"
NN_INPUT = "q_nn"
"""Query tensor of nearestNeighbor when the method's own inputs do not already hold the query bits."""
EXHAUSTIVE_SUFFIX = "_exhaustive"


def slot_suffix(slot: str) -> str:
    """What a slot appends to every name derived from (method, dim): nothing for ``a``, ``_b`` for ``b``."""
    if slot not in SLOTS:
        raise VespaQuantError(f"unknown code slot {slot!r}; expected one of {', '.join(SLOTS)}")
    return "" if slot == SLOTS[0] else f"_{slot}"


def field_name(method: str, dim: int, role: str, slot: str = "a") -> str:
    return f"{method}_{dim}_{role}{slot_suffix(slot)}"


def signs_field(dim: int) -> str:
    return f"{SIGNS_PREFIX}_{dim}"


def rank_profile_name(method: str, dim: int, slot: str = "a", *, exhaustive: bool = False) -> str:
    return f"{method}_{dim}{EXHAUSTIVE_SUFFIX if exhaustive else ''}{slot_suffix(slot)}"


def calibration_field_name(method: str, dim: int, slot: str = "a") -> str:
    """String attribute holding the calibration id of the codes in ``slot`` of ``method`` at ``dim``."""
    return f"{method}_{dim}_calibration{slot_suffix(slot)}"


def method_slots(method: Quantizer, recalibration_slots: bool = True) -> tuple[str, ...]:
    """Slots ``method`` has: two when it is calibrated (and slots are enabled), else only ``a``."""
    return SLOTS if method.needs_calibration and recalibration_slots else SLOTS[:1]


def has_exhaustive_profile(method: Quantizer) -> bool:
    """Methods defined by the Hamming first phase have no exhaustive form."""
    return not method.always_first_phase


def first_phase_field(method: Quantizer, dim: int, slot: str = "a") -> str:
    """The hamming attribute the two-phase profile's nearestNeighbor searches."""
    role = sign_role(method)
    return signs_field(dim) if role is None else field_name(method.name, dim, role, slot)


def first_phase_input(method: Quantizer, dim: int) -> str:
    """The query tensor of that nearestNeighbor: the method's own bits input if it declares one."""
    own = {spec.name for spec in method.inputs(dim) if spec.cell_type == "int8"}
    return next(iter(own)) if own else NN_INPUT
