"""The Vespa schema, generated from the method registry: fields and two rank profiles per method.

Every method describes its own storage (:meth:`Quantizer.fields`), query inputs and score tree
(:meth:`Quantizer.expression`); this module only translates those descriptions into pyvespa
objects, so a new method appears in the schema without a line changing here (STYLE 2). The
rendered ``schemas/doc.sd`` is committed and a test fails when it drifts from a fresh
generation (STYLE 6); :mod:`vespa_quant.vespa.services` writes the services files beside it.

Fields: each :class:`CodeField` becomes ``<method>_<dim>_<role>[_b]`` of type
``tensor<cell>(x[cells])`` with ``indexing: attribute``; sign bits get ``distance-metric:
hamming`` (nearestNeighbor, ``closeness``), paged cells ``attribute: paged``. The shared sign
bits ``signs_<dim>`` (``x > 0`` of the raw vector, HNSW-indexed) are the first-phase field of
every method without sign bits of its own; the Hamming methods' bits are HNSW-indexed too.

Profiles, per method, dim and slot (names in :mod:`vespa_quant.vespa.naming`):

* ``<method>_<dim>`` **two-phase**: the query retrieves with
  ``{targetHits: k1}nearestNeighbor(<sign bits>, <query bits>)``, ``first-phase`` is
  ``closeness(field, <sign bits>)``, and the method's asymmetric score is the ``global-phase``
  with ``rerank-count`` k1 (default :data:`DEFAULT_K1`, per query
  ``ranking.globalPhase.rerankCount``). Why global phase: the container asks every content node
  for ``max(hits, rerank-count)`` hits, merges them by first-phase score and rescores exactly
  the global top rerank-count (``ClusterSearcher.perSchemaSearch``, ``ResultReranker`` in
  Vespa 8.694.53). Since each node's exact nearestNeighbor yields at least its own top
  ``targetHits``, the merged top k1 is the global Hamming top k1 on one node and on many, ties
  aside. A second phase would instead rescore per node (2 x k1 on two nodes), and
  ``total-rerank-count`` splits k1 evenly between nodes, which misses candidates whenever the
  global top k1 is not evenly spread. The score itself is the function :data:`SCORE_FUNCTION`,
  declared a match feature: each content node computes it in C++ for the hits it returns (its
  top k1 by closeness) and the global phase only reads it. Written directly in the global
  phase, the container would evaluate ``unpack_bits`` in Java, cell by cell (~5 ms per hit
  for a 2-bit profile at 384 dims, measured with Vespa's evaluator in ``checker/``).
* ``<method>_<dim>_exhaustive``: the same score as ``first-phase`` over every matched document
  (``where true``): exact evaluation on small corpora, the engine's exhaustive mode.

Recalibration slots (blue/green, ``recalibration_slots=True``, the committed package): every
calibrated method stores its codes twice per dim, slot ``b`` under the same names with ``_b``
appended, each slot with a string attribute holding the calibration id of its codes, so every
hit says which calibration scored it. The cost is memory: slot ``b`` doubles the in-memory code
bytes of every calibrated method while both exist (``bytes_per_vector`` stays one slot's).
"""

from __future__ import annotations

from collections.abc import Sequence

from vespa.package import (
    HNSW,
    Document,
    Field,
    FirstPhaseRanking,
    Function,
    GlobalPhaseRanking,
    RankProfile,
    Schema,
)

from vespa_quant.errors import VespaQuantError
from vespa_quant.quantize import expr
from vespa_quant.quantize.base import CodeField, Quantizer, sign_role
from vespa_quant.quantize.registry import METHODS
from vespa_quant.vespa.expressions import input_type, render, tensor_type
from vespa_quant.vespa.naming import (
    DOC_ID_FIELD,
    DOCUMENT_TYPE,
    NN_INPUT,
    calibration_field_name,
    field_name,
    first_phase_field,
    first_phase_input,
    has_exhaustive_profile,
    method_slots,
    rank_profile_name,
    signs_field,
)

DEFAULT_DIMS: tuple[int, ...] = (384, 256)
SCORE_FUNCTION = "quantized_score"
"""The method's score as a rank-profile function: a match feature read by the global phase."""
DEFAULT_K1 = 100
"""Default global-phase rerank-count: the Hamming candidates the asymmetric score rescores."""
VESPA_CELL_TYPES = ("double", "float", "bfloat16", "int8")
"""Tensor cell types Vespa accepts (tensor reference, "Tensor type spec")."""


def resolve_methods(methods: Sequence[Quantizer] | None) -> list[Quantizer]:
    resolved = list(METHODS.values()) if methods is None else list(methods)
    if not resolved:
        raise VespaQuantError("no methods given: the Vespa package needs at least one method")
    names = [method.name for method in resolved]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise VespaQuantError(f"methods listed twice: {', '.join(duplicated)}")
    return resolved


def check_dims(dims: Sequence[int]) -> list[int]:
    checked = list(dims)
    if not checked:
        raise VespaQuantError("no dims given: the Vespa package needs at least one dimension")
    for dim in checked:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
            raise VespaQuantError(f"dim {dim!r} is not a positive integer")
    if len(set(checked)) != len(checked):
        raise VespaQuantError(f"dims {checked} contain repeats")
    return checked


def _field(name: str, spec: CodeField, hnsw: bool) -> Field:
    if spec.cell_type not in VESPA_CELL_TYPES:
        raise VespaQuantError(f"{name}: cell type {spec.cell_type!r} is not a Vespa tensor cell type "
                              f"({', '.join(VESPA_CELL_TYPES)})")
    if spec.cells <= 0:
        raise VespaQuantError(f"{name}: {spec.cells} cells; expected a positive count")
    if spec.sign_bits and spec.cell_type != "int8":
        raise VespaQuantError(f"{name}: hamming distance needs packed int8 bits, not {spec.cell_type}")
    settings = []
    if spec.sign_bits and not hnsw:
        settings.append("distance-metric: hamming")
    if spec.paged:
        settings.append("paged")
    return Field(
        name=name, type=tensor_type(spec.cell_type, spec.cells),
        indexing=["attribute", "index"] if hnsw else ["attribute"],
        attribute=settings or None,
        # pyvespa renders ``distance-metric`` from the HNSW settings inside the attribute block.
        ann=HNSW(distance_metric="hamming") if hnsw else None,
    )


def code_fields(method: Quantizer, dim: int, slot: str = "a") -> list[Field]:
    """The pyvespa fields holding ``method``'s codes at ``dim`` in ``slot``."""
    return [_field(field_name(method.name, dim, spec.role, slot), spec,
                   hnsw=spec.sign_bits and method.always_first_phase)
            for spec in method.fields(dim)]


def signs_field_spec(dim: int) -> CodeField:
    return CodeField("signs", "int8", -(-dim // 8), sign_bits=True)


def calibration_field(method: Quantizer, dim: int, slot: str = "a") -> Field:
    """The string attribute naming the calibration of ``slot``'s codes, returned in every hit."""
    return Field(name=calibration_field_name(method.name, dim, slot), type="string",
                 indexing=["attribute", "summary"])


def _check_references(method: Quantizer, dim: int, tree: expr.Expr) -> None:
    """Every input and role the tree reads must be declared: a typo fails here, not at deploy."""
    declared = {spec.name for spec in method.inputs(dim)}
    roles = {spec.role for spec in method.fields(dim)}
    unknown_inputs = sorted(set(expr.input_names(tree)) - declared)
    unknown_roles = sorted(set(expr.roles(tree)) - roles)
    if unknown_inputs or unknown_roles:
        raise VespaQuantError(f"{method.name}@{dim}: the score reads undeclared inputs {unknown_inputs} "
                              f"or fields {unknown_roles} (declared {sorted(declared)}, {sorted(roles)})")


def rank_profiles(method: Quantizer, dim: int, slot: str = "a", k1: int = DEFAULT_K1) -> list[RankProfile]:
    """The two-phase profile (and the exhaustive one, where the method has an exhaustive form)."""
    if k1 < 1:
        raise VespaQuantError(f"rerank count {k1} must be positive")
    tree = method.expression(dim)
    _check_references(method, dim, tree)

    def field(role: str) -> str:
        return field_name(method.name, dim, role, slot)

    score = render(tree, field)
    inputs = [(f"query({spec.name})", input_type(spec)) for spec in method.inputs(dim)]
    nn_field = first_phase_field(method, dim, slot)
    nn_inputs = list(inputs)
    if first_phase_input(method, dim) == NN_INPUT:
        nn_inputs.append((f"query({NN_INPUT})", tensor_type("int8", -(-dim // 8))))
    closeness = f"closeness(field, {nn_field})"
    defined_by_first_phase = isinstance(tree, expr.Closeness) and field(tree.role) == nn_field
    if defined_by_first_phase:
        two_phase = RankProfile(name=rank_profile_name(method.name, dim, slot), inputs=nn_inputs,
                                first_phase=FirstPhaseRanking(closeness))
    else:
        two_phase = RankProfile(
            name=rank_profile_name(method.name, dim, slot), inputs=nn_inputs,
            functions=[Function(SCORE_FUNCTION, score)], first_phase=FirstPhaseRanking(closeness),
            match_features=[SCORE_FUNCTION], global_phase=GlobalPhaseRanking(SCORE_FUNCTION, rerank_count=k1),
        )
    profiles = [two_phase]
    if has_exhaustive_profile(method):
        profiles.append(RankProfile(name=rank_profile_name(method.name, dim, slot, exhaustive=True),
                                    inputs=inputs, first_phase=FirstPhaseRanking(score)))
    return profiles


def build_schema(methods: Sequence[Quantizer] | None = None, dims: Sequence[int] = DEFAULT_DIMS,
                 k1: int = DEFAULT_K1, *, recalibration_slots: bool = True) -> Schema:
    """Schema ``doc``: the id, the shared sign bits, and every method's fields, ids and profiles per slot."""
    resolved = resolve_methods(methods)
    checked = check_dims(dims)
    fields = [Field(name=DOC_ID_FIELD, type="string", indexing=["attribute", "summary"])]
    fields += [_field(signs_field(dim), signs_field_spec(dim), hnsw=True) for dim in checked
               if any(sign_role(method) is None for method in resolved)]
    profiles = []
    for method in resolved:
        for dim in checked:
            for slot in method_slots(method, recalibration_slots):
                if method.needs_calibration:
                    fields.append(calibration_field(method, dim, slot))
                fields.extend(code_fields(method, dim, slot))
                profiles.extend(rank_profiles(method, dim, slot, k1))
    names = [f.name for f in fields]
    clashes = sorted({name for name in names if names.count(name) > 1})
    if clashes:
        raise VespaQuantError(f"field names generated twice: {', '.join(clashes)}")
    return Schema(name=DOCUMENT_TYPE, document=Document(fields=fields), rank_profiles=profiles)
