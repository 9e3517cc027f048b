"""Prove, without a running Vespa, that each generated rank profile computes its method's score.

Every ranking expression of the generated schema is parsed and evaluated by the interpreter in
:mod:`vespa_quant.vespa_app.expressions` (Vespa's documented semantics) on real encoded
documents and query inputs, and compared with :meth:`Method.score`, the in-process engine's
scorer. For methods with a Hamming first phase, the first phase must also order documents as
the engine's Hamming distance does (closeness is ``1 / (1 + distance)``).

Both recalibration slots are checked: each slot's profile is evaluated with that slot's
attributes holding the codes and the other slot's attributes holding decoys (the same codes,
rolled by one document), so a profile reading the other slot's fields scores the wrong documents
and fails the check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from vespa_quant.quantize.base import (
    SLOTS,
    Method,
    calibrate,
    encode,
    field_name,
    hamming_query,
    method_slots,
    query_inputs,
)
from vespa_quant.quantize.bits import hamming_distances
from vespa_quant.vespa_app.package import rank_profile_name
from vespa_quant.vespa_app.sd_parser import ParsedSchema, rank_profile_scorer


@dataclass(frozen=True)
class ProfileCheck:
    profile: str
    method: str
    slot: str
    phase: str
    max_abs_diff: float
    n_queries: int
    n_docs: int
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance


def _query_row(inputs: dict[str, np.ndarray], row: int) -> dict[str, object]:
    return {name: (float(value[row]) if value.ndim == 1 else value[row]) for name, value in inputs.items()}


def check_method(schema: ParsedSchema, method: Method, docs: np.ndarray, queries: np.ndarray,
                 tolerance: float = 1e-4, slot: str = "a") -> list[ProfileCheck]:
    """Compare the profile of ``method`` at ``docs``' dim on ``slot`` with the numpy score, query by query."""
    dim = docs.shape[1]
    calibration = calibrate(method, docs)
    codes = encode(method, docs, calibration)
    attributes = {
        field_name(method.name, dim, role, other): np.roll(array, 1, axis=0)
        for other in SLOTS if other != slot and other in method_slots(method)
        for role, array in codes.items()
    }
    attributes.update({field_name(method.name, dim, role, slot): array for role, array in codes.items()})
    inputs = query_inputs(method, queries, calibration)
    expected = {"final": method.score(inputs, codes)}
    profile = rank_profile_name(method.name, dim, slot)
    nearest = {}
    if method.always_first_phase:
        bits_field = field_name(method.name, dim, method.hamming_role, slot)
        nearest = {bits_field: "q_bits"}
        distances = hamming_distances(hamming_query(method, queries, calibration), codes[method.hamming_role])
        expected["first"] = 1.0 / (1.0 + distances)
    checks = []
    for phase, reference in expected.items():
        scorer = rank_profile_scorer(schema, profile, phase=phase)
        worst = 0.0
        for row in range(len(queries)):
            got = scorer(attributes, _query_row(inputs, row), nearest_neighbor=nearest)
            worst = max(worst, float(np.max(np.abs(got - reference[row]))))
        checks.append(ProfileCheck(profile, method.name, slot, phase, worst, len(queries), len(docs), tolerance))
    return checks


def check_profiles(schema: ParsedSchema, methods: Sequence[Method], docs_by_dim: dict[int, np.ndarray],
                   queries_by_dim: dict[int, np.ndarray], tolerance: float = 1e-4, *,
                   recalibration_slots: bool = True) -> list[ProfileCheck]:
    """Every profile of every method, dim and slot (as the generator with ``recalibration_slots`` makes them)."""
    return [
        check
        for dim, docs in docs_by_dim.items()
        for method in methods
        for slot in method_slots(method, recalibration_slots)
        for check in check_method(schema, method, docs, queries_by_dim[dim], tolerance, slot)
    ]
