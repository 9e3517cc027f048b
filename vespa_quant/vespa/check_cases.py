"""Fixture cases for Vespa's checker (:mod:`vespa_quant.vespa.check`) from the method registry.

For every method, dim and recalibration slot, on real encoded documents and queries:

* the two-phase profile's **first phase** must be the Hamming closeness of the method's
  nearestNeighbor field (``1 / (1 + hamming)`` against the query bits), over every document;
* its **global phase** must give, on exactly the engine's Hamming top-k1 candidates of each
  query (:meth:`vespa_quant.engine.local.LocalIndex.candidates`), the engine's score of each
  candidate (:func:`vespa_quant.quantize.scoring.reference_score`), so ``evaluate --backend
  local --k1 K`` and Vespa rank the same candidates the same way;
* the exhaustive profile's first phase must give the engine's score of every document.

Only the slot's own fields (and the shared sign bits) are bound, so a profile reading the other
slot's codes fails for want of an input.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from vespa_quant.engine.local import LocalIndex
from vespa_quant.errors import VespaError
from vespa_quant.quantize.base import (
    Quantizer,
    calibrate,
    doc_view,
    encode,
    first_phase_query,
    query_inputs,
    query_view,
    shared_sign_bits,
    sign_role,
)
from vespa_quant.quantize.scoring import hamming_matrix, reference_score
from vespa_quant.vespa.check import CHECKER_SOURCE, CheckReport, FixtureCase, TensorInput, run_checker, write_fixtures
from vespa_quant.vespa.expressions import input_type, tensor_type
from vespa_quant.vespa.naming import (
    field_name,
    first_phase_field,
    first_phase_input,
    has_exhaustive_profile,
    method_slots,
    rank_profile_name,
    signs_field,
)
from vespa_quant.vespa.package import DEFAULT_K1
from vespa_quant.vespa.services import assemble

if TYPE_CHECKING:
    from vespa_quant.embed.embedded import EmbeddedDataset

REPOSITORY_ROOT = CHECKER_SOURCE.parent
"""Where the committed package (``schemas/``, ``vespa_app/``) and ``checker/`` live."""


def method_cases(method: Quantizer, docs: np.ndarray, queries: np.ndarray, *, slots: Sequence[str] = ("a",),
                 k1: int = DEFAULT_K1, tolerance: float = 1e-4) -> list[FixtureCase]:
    """The cases of ``method``'s profiles at ``docs``' dim, one set per slot (one calibration for all)."""
    dim = docs.shape[1]
    calibration = calibrate(method, docs)
    codes = encode(method, docs, calibration)
    inputs = query_inputs(method, queries, calibration)
    full = reference_score(query_view(method, queries, calibration), doc_view(method, codes, calibration))
    signs = shared_sign_bits(docs)
    index = LocalIndex(method, calibration, codes, signs)
    candidates = index.candidates(queries, min(k1, len(docs)))
    nn_bits = first_phase_query(method, queries, calibration)
    own = sign_role(method)
    closeness = 1.0 / (1.0 + hamming_matrix(nn_bits, codes[own] if own else signs))
    specs = {spec.role: spec for spec in method.fields(dim)}
    declared = {spec.name: input_type(spec) for spec in method.inputs(dim)}
    query_values = {f"query({name})": TensorInput(declared[name], values) for name, values in inputs.items()}
    nn_input = first_phase_input(method, dim)
    query_values[f"query({nn_input})"] = TensorInput(tensor_type("int8", -(-dim // 8)), nn_bits)
    cases = []
    for slot in slots:
        attributes = {field_name(method.name, dim, role, slot): TensorInput(tensor_type(specs[role].cell_type,
                                                                                         specs[role].cells), values)
                      for role, values in codes.items()}
        nn_field = first_phase_field(method, dim, slot)
        if own is None:
            attributes[signs_field(dim)] = TensorInput(tensor_type("int8", -(-dim // 8)), signs)
        bound = {f"closeness(field,{nn_field})": (nn_field, f"query({nn_input})")}
        profile = rank_profile_name(method.name, dim, slot)
        cases.append(FixtureCase(f"{profile}/first-phase", profile, "first-phase", attributes, query_values,
                                 closeness, closeness=bound, tolerance=tolerance))
        if method.name != "binary_hamming":  # its score is its first phase; the profile has no global phase
            cases.append(FixtureCase(f"{profile}/global-phase", profile, "global-phase", attributes, query_values,
                                     np.take_along_axis(full, candidates, axis=1), closeness=bound,
                                     candidates=candidates, tolerance=tolerance))
        if has_exhaustive_profile(method):
            exhaustive = rank_profile_name(method.name, dim, slot, exhaustive=True)
            cases.append(FixtureCase(f"{exhaustive}/first-phase", exhaustive, "first-phase", attributes,
                                     query_values, full, tolerance=tolerance))
    return cases


def registry_cases(methods: Sequence[Quantizer], docs_by_dim: Mapping[int, np.ndarray],
                   queries_by_dim: Mapping[int, np.ndarray], *, recalibration_slots: bool = True,
                   k1: int = DEFAULT_K1, tolerance: float = 1e-4) -> list[FixtureCase]:
    """Every profile phase of every method, dim and slot, as the generator makes them."""
    return [
        case
        for dim, docs in docs_by_dim.items()
        for method in methods
        for case in method_cases(method, docs, queries_by_dim[dim], slots=method_slots(method, recalibration_slots),
                                 k1=k1, tolerance=tolerance)
    ]


def check_registry(app_dir: Path | None, embedded: EmbeddedDataset, methods: Sequence[Quantizer],
                   dims: Sequence[int], n_queries: int, *, variant: Literal["single", "cluster"] = "single",
                   threads: int | None = None) -> CheckReport:
    """Every profile of ``methods`` at ``dims`` in ``app_dir`` (default: the committed package of
    ``variant``), checked by Vespa's checker on ``embedded``'s documents and first ``n_queries`` queries."""
    if n_queries <= 0:
        raise VespaError(f"--queries must be positive, got {n_queries}")
    views = {dim: embedded.at_dim(dim) for dim in dims}
    cases = registry_cases(methods, {dim: docs for dim, (docs, _) in views.items()},
                           {dim: queries[:n_queries] for dim, (_, queries) in views.items()})
    with tempfile.TemporaryDirectory(prefix="vespa-quant-check-package-") as scratch:
        app = Path(app_dir) if app_dir is not None else assemble(REPOSITORY_ROOT, variant, Path(scratch) / "app")
        write_fixtures(cases, Path(scratch) / "fixtures")
        return run_checker(app, Path(scratch) / "fixtures", threads=threads)
