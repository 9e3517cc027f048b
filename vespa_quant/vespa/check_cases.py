"""Fixture cases for Vespa's checker from the current method interface (provisional).

For every method, dim and recalibration slot: calibrate and encode the given documents, turn the
queries into query inputs, and expect :meth:`Method.score` (the in-process engine's scorer) from
the profile's final phase; methods whose Hamming first phase is part of the method
(:attr:`Method.always_first_phase`) also get a first-phase case expecting ``1 / (1 + hamming)``.
A second phase sees the first phase's top ``rerank_count`` documents per query, as on a content
node. Only the slot's own fields are bound, so a profile reading the other slot's codes fails
for want of an input. This module follows the method interface; :mod:`vespa_quant.vespa.check`
(fixture writer, runner) does not depend on it.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from vespa_quant.errors import VespaError
from vespa_quant.quantize.base import (
    Method,
    calibrate,
    encode,
    field_name,
    hamming_query,
    method_slots,
    query_inputs,
)
from vespa_quant.quantize.bits import hamming_distances
from vespa_quant.vespa.check import CHECKER_SOURCE, CheckReport, FixtureCase, TensorInput, run_checker, write_fixtures
from vespa_quant.vespa_app.package import DEFAULT_RERANK_COUNT, assemble, rank_profile_name

if TYPE_CHECKING:
    from vespa_quant.embed.embedded import EmbeddedDataset

REPOSITORY_ROOT = CHECKER_SOURCE.parent
"""Where the committed package (``schemas/``, ``vespa_app/``) and ``checker/`` live."""


def method_cases(method: Method, docs: np.ndarray, queries: np.ndarray, *, slots: Sequence[str] = ("a",),
                 rerank_count: int = DEFAULT_RERANK_COUNT, tolerance: float = 1e-4) -> list[FixtureCase]:
    """The cases of ``method``'s profiles at ``docs``' dim, one set per slot (one calibration for all)."""
    dim = docs.shape[1]
    calibration = calibrate(method, docs)
    codes = encode(method, docs, calibration)
    inputs = query_inputs(method, queries, calibration)
    final = method.score(inputs, codes)
    closeness, role = None, method.hamming_role
    if method.always_first_phase:
        if role is None:
            raise VespaError(f"{method.name}: a Hamming first phase without a field of bits (hamming_role)")
        closeness = 1.0 / (1.0 + hamming_distances(hamming_query(method, queries, calibration), codes[role]))
    specs = {spec.role: spec for spec in method.fields(dim)}
    cases = []
    for slot in slots:
        profile = rank_profile_name(method.name, dim, slot)
        expressions = method.rank_expressions(dim, field=functools.partial(field_name, method.name, dim, slot=slot))
        attributes = {field_name(method.name, dim, role, slot): TensorInput(specs[role].tensor_type, values)
                      for role, values in codes.items()}
        query_values = {f"query({name})": TensorInput(expressions.inputs[name], values) for name, values in inputs.items()}
        if closeness is not None:
            bits = field_name(method.name, dim, str(role), slot)
            cases.append(FixtureCase(f"{profile}/first-phase", profile, "first-phase", attributes, query_values, closeness,
                                     closeness={f"closeness(field,{bits})": (bits, "query(q_bits)")}, tolerance=tolerance))
        if expressions.second_phase is not None:
            if closeness is None:
                raise NotImplementedError(f"{method.name}: a second phase after an exhaustive first phase")
            candidates = np.argsort(-closeness, axis=1, kind="stable")[:, :min(rerank_count, len(docs))]
            cases.append(FixtureCase(f"{profile}/second-phase", profile, "second-phase", attributes, query_values,
                                     np.take_along_axis(final, candidates, axis=1), candidates=candidates,
                                     tolerance=tolerance))
        elif closeness is None:
            cases.append(FixtureCase(f"{profile}/first-phase", profile, "first-phase", attributes, query_values, final,
                                     tolerance=tolerance))
    return cases


def registry_cases(methods: Sequence[Method], docs_by_dim: Mapping[int, np.ndarray],
                   queries_by_dim: Mapping[int, np.ndarray], *, recalibration_slots: bool = True,
                   tolerance: float = 1e-4) -> list[FixtureCase]:
    """Every profile of every method, dim and slot, as the generator makes them."""
    return [
        case
        for dim, docs in docs_by_dim.items()
        for method in methods
        for case in method_cases(method, docs, queries_by_dim[dim], slots=method_slots(method, recalibration_slots),
                                 tolerance=tolerance)
    ]


def check_registry(app_dir: Path | None, embedded: EmbeddedDataset, methods: Sequence[Method],
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
