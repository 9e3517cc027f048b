"""The Vespa application package, generated from the method registry.

Every method describes its own storage (:meth:`Method.fields`) and ranking
(:meth:`Method.rank_expressions`); this module only translates those descriptions into pyvespa
objects, so a new method appears in the schema without a line changing here (STYLE 2). The
rendered ``schemas/doc.sd`` and ``vespa_app/**`` are committed at the repository root and a test
fails when they drift from a fresh generation (STYLE 6).

Translation rules (vespa-notes, "Storage" and "Ranking"; Vespa schema reference):

* each :class:`TensorField` becomes ``field <method>_<dim>_<role> type tensor<cell>(x[cells])``
  with ``indexing: attribute`` only: codes are read by ranking, never returned in summaries;
* ``hamming`` adds ``attribute { distance-metric: hamming }`` so ``nearestNeighbor`` and
  ``closeness(field, ...)`` work on the packed bits; ``hnsw`` adds ``index`` to the indexing
  statement and an ``index { hnsw { ... } }`` block; ``paged`` adds ``paged`` to the attribute
  block (pyvespa renders every attribute setting as ``attribute { ... }``, the block form of
  ``attribute: paged``);
* each (method, dim) gets ``rank-profile <method>_<dim>`` with its query inputs declared as
  ``query(name) <type>`` (``double`` for scalars), its functions, first phase and, when present,
  a second phase with ``rerank-count``.

Recalibration slots (blue/green, ``recalibration_slots=True``, the committed package): every
calibrated method (:attr:`Method.needs_calibration`) stores its codes twice per dim, slot ``a``
under the names above and slot ``b`` under the same names with ``_b`` appended (fields
``<method>_<dim>_<role>_b``, profile ``<method>_<dim>_b`` with the same expressions on the ``b``
fields; :func:`~vespa_quant.quantize.base.slot_suffix` is the one naming rule). Each slot has a
string attribute ``<method>_<dim>_calibration`` / ``..._calibration_b`` (``attribute | summary``)
holding the :attr:`Calibration.id` whose codes the slot holds, so every hit says which calibration
scored it. Queries use the slot the calibration manifest marks active; a recalibration rewrites
only the other slot with partial updates, checks every document, then switches
(:mod:`vespa_quant.feed.recalibrate`), so queries and documents never disagree.

The cost is memory: slot ``b`` doubles the in-memory code bytes of every calibrated method.
:meth:`Method.bytes_per_vector` stays the cost of one slot, so a calibrated method's documents hold
``2 x bytes_per_vector`` bytes of codes (lloyd_max_gauss at 384 dims: 96 bytes per slot, 192 in
all) plus the two calibration-id string attributes. Calibration-free methods (float32, bfloat16
and the sign-bit methods) have one slot only. ``recalibration_slots=False`` generates slot ``a``
alone, at the memory of one slot; recalibrating is then a full re-feed, during which queries and
documents can disagree.
"""

from __future__ import annotations

import io
import re
import shutil
import zipfile
from pathlib import Path
from typing import Literal, Sequence

from vespa.configuration.services import (
    admin,
    adminserver,
    configserver,
    configservers,
    container,
    content,
    document,
    document_api,
    document_processing,
    documents,
    min_redundancy,
    node,
    nodes,
    search,
    services,
    slobrok,
    slobroks,
)
from vespa.configuration.vt import VT, to_xml, vt
from vespa.package import (
    HNSW,
    ApplicationPackage,
    Document,
    Field,
    FirstPhaseRanking,
    Function,
    RankProfile,
    Schema,
    SecondPhaseRanking,
    ServicesConfiguration,
)

from vespa_quant.errors import VespaQuantError
from vespa_quant.files import atomic_write_text
from vespa_quant.quantize.base import (
    Method,
    TensorField,
    field_name,
    method_slots,
    nn_input_declarations,
    slot_suffix,
)
from vespa_quant.quantize.registry import METHODS

DOCUMENT_TYPE = "doc"
"""The one schema and document type: every method's codes live side by side in one document."""
DOC_ID_FIELD = "doc_id"
DEFAULT_DIMS: tuple[int, ...] = (384, 256)
DEFAULT_NAME = "vespaquant"
DEFAULT_RERANK_COUNT = 1000
CONTENT_CLUSTER = "content"

SCHEMA_FILE = Path("schemas") / f"{DOCUMENT_TYPE}.sd"
SERVICES_FILE = Path("vespa_app") / "services.xml"
CLUSTER_SERVICES_FILE = Path("vespa_app") / "cluster" / "services.xml"
CLUSTER_HOSTS_FILE = Path("vespa_app") / "cluster" / "hosts.xml"

CONFIG_HOST = "vespa-config"
CONTAINER_HOST = "vespa-container"
CONTENT_HOSTS: tuple[str, ...] = ("vespa-content-0", "vespa-content-1")
CLUSTER_HOSTS: tuple[str, ...] = (CONFIG_HOST, CONTAINER_HOST, *CONTENT_HOSTS)
"""Hostnames of the multi-node variant; equal to the docker-compose service hostnames.

Each host's alias in ``hosts.xml`` is its hostname, so ``services.xml`` reads the same names.
"""

VESPA_CELL_TYPES = ("double", "float", "bfloat16", "int8")
"""Tensor cell types Vespa accepts (tensor reference, "Tensor type spec")."""

REGENERATE_HINT = "run `vespa-quant deploy --dry-run` to regenerate"
_GENERATED_BY = "Generated by vespa_quant.vespa_app.package from the method registry; do not edit"
"""Header of every generated file (no ``--``: it must also be a valid XML comment)."""

_QUERY_REFERENCE = re.compile(r"\bquery\((\w+)\)")
_FIELD_REFERENCE = re.compile(r"\battribute\((\w+)\)|\b(?:closeness|distance)\(\s*field\s*,\s*(\w+)\s*\)")


def rank_profile_name(method: str, dim: int, slot: str = "a") -> str:
    """Rank profile of ``method`` at ``dim`` on ``slot``'s fields: one name rule for the package,
    feeder and queries."""
    return f"{method}_{dim}{slot_suffix(slot)}"


def calibration_field_name(method: str, dim: int, slot: str = "a") -> str:
    """String attribute holding the :attr:`Calibration.id` of the codes in ``slot`` of ``method`` at ``dim``."""
    return f"{method}_{dim}_calibration{slot_suffix(slot)}"


def _resolve_methods(methods: Sequence[Method] | None) -> list[Method]:
    resolved = list(METHODS.values()) if methods is None else list(methods)
    if not resolved:
        raise VespaQuantError("no methods given: the Vespa package needs at least one method")
    names = [method.name for method in resolved]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise VespaQuantError(f"methods listed twice: {', '.join(duplicated)}")
    return resolved


def _check_dims(dims: Sequence[int]) -> list[int]:
    checked = list(dims)
    if not checked:
        raise VespaQuantError("no dims given: the Vespa package needs at least one dimension")
    for dim in checked:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
            raise VespaQuantError(f"dim {dim!r} is not a positive integer")
    if len(set(checked)) != len(checked):
        raise VespaQuantError(f"dims {checked} contain repeats")
    return checked


def tensor_field(method: Method, dim: int, spec: TensorField, slot: str = "a") -> Field:
    """The pyvespa field holding ``spec`` of ``method`` at ``dim`` in ``slot``."""
    name = field_name(method.name, dim, spec.role, slot)
    if spec.cell_type not in VESPA_CELL_TYPES:
        raise VespaQuantError(
            f"{name}: cell type {spec.cell_type!r} is not a Vespa tensor cell type "
            f"({', '.join(VESPA_CELL_TYPES)})"
        )
    if spec.cells <= 0:
        raise VespaQuantError(f"{name}: {spec.cells} cells; expected a positive count")
    if spec.hamming and spec.cell_type != "int8":
        raise VespaQuantError(f"{name}: hamming distance needs packed int8 bits, not {spec.cell_type}")
    if spec.hnsw and not spec.hamming:
        raise VespaQuantError(f"{name}: an HNSW index needs a distance metric; only hamming is declared")
    attribute_settings = []
    if spec.hamming and not spec.hnsw:
        attribute_settings.append("distance-metric: hamming")
    if spec.paged:
        attribute_settings.append("paged")
    return Field(
        name=name,
        type=spec.tensor_type,
        indexing=["attribute", "index"] if spec.hnsw else ["attribute"],
        attribute=attribute_settings or None,
        # pyvespa renders ``distance-metric`` from the HNSW settings inside the attribute block.
        ann=HNSW(distance_metric="hamming") if spec.hnsw else None,
    )


def calibration_field(method: Method, dim: int, slot: str = "a") -> Field:
    """The string attribute naming the calibration of ``slot``'s codes, returned in every hit."""
    return Field(name=calibration_field_name(method.name, dim, slot), type="string",
                 indexing=["attribute", "summary"])


def rank_profile(method: Method, dim: int, second_phase_rerank_count: int = DEFAULT_RERANK_COUNT,
                 slot: str = "a") -> RankProfile:
    """The rank profile computing :meth:`Method.score` on ``slot``'s fields, checked against them.

    Every ``query(x)`` must be a declared input and every field read by ``attribute(f)`` or
    ``closeness(field, f)`` must be one of the method's fields at ``dim`` in ``slot``, so a typo
    in a method, or a profile of one slot reading the other's codes, fails here rather than at
    deployment.
    """
    profile = rank_profile_name(method.name, dim, slot)
    expressions = method.rank_expressions(dim, field=lambda role: field_name(method.name, dim, role, slot))
    own_fields = {field_name(method.name, dim, spec.role, slot) for spec in method.fields(dim)}
    texts = [expressions.first_phase, *expressions.functions.values()]
    if expressions.second_phase is not None:
        texts.append(expressions.second_phase)
    for text in texts:
        for name in _QUERY_REFERENCE.findall(text):
            if name not in expressions.inputs:
                raise VespaQuantError(
                    f"rank profile {profile}: query({name}) is used but not among the inputs "
                    f"{sorted(expressions.inputs)}"
                )
        for match in _FIELD_REFERENCE.finditer(text):
            referenced = match.group(1) or match.group(2)
            if referenced not in own_fields:
                raise VespaQuantError(
                    f"rank profile {profile}: reads field {referenced!r}, which is not one of "
                    f"{method.name}'s fields at dim {dim} in slot {slot} ({', '.join(sorted(own_fields))})"
                )
    second_phase = None
    if expressions.second_phase is not None:
        if second_phase_rerank_count <= 0:
            raise VespaQuantError(f"rerank count {second_phase_rerank_count} must be positive")
        second_phase = SecondPhaseRanking(expressions.second_phase, rerank_count=second_phase_rerank_count)
    return RankProfile(
        name=profile,
        inputs=[
            (f"query({name})", input_type)
            for name, input_type in {**expressions.inputs, **nn_input_declarations(method, dim)}.items()
        ],
        functions=[Function(name=name, expression=body) for name, body in expressions.functions.items()] or None,
        first_phase=FirstPhaseRanking(expressions.first_phase),
        second_phase=second_phase,
    )


def build_schema(
    methods: Sequence[Method] | None = None,
    dims: Sequence[int] = DEFAULT_DIMS,
    second_phase_rerank_count: int = DEFAULT_RERANK_COUNT,
    *,
    recalibration_slots: bool = True,
) -> Schema:
    """Schema ``doc``: the id, and every method's fields, calibration ids and rank profiles per slot."""
    resolved = _resolve_methods(methods)
    checked = _check_dims(dims)
    fields = [Field(name=DOC_ID_FIELD, type="string", indexing=["attribute", "summary"])]
    profiles = []
    for method in resolved:
        for dim in checked:
            for slot in method_slots(method, recalibration_slots):
                if method.needs_calibration:
                    fields.append(calibration_field(method, dim, slot))
                fields.extend(tensor_field(method, dim, spec, slot) for spec in method.fields(dim))
                profiles.append(rank_profile(method, dim, second_phase_rerank_count, slot))
    names = [f.name for f in fields]
    clashes = sorted({name for name in names if names.count(name) > 1})
    if clashes:
        raise VespaQuantError(f"field names generated twice: {', '.join(clashes)}")
    return Schema(name=DOCUMENT_TYPE, document=Document(fields=fields), rank_profiles=profiles)


def _container_cluster(name: str, *children: VT) -> VT:
    return container(search(), document_api(), document_processing(), *children, id=f"{name}_container", version="1.0")


def _content_cluster(name: str, redundancy: int, content_nodes: VT) -> VT:
    return content(
        min_redundancy(str(redundancy)),
        documents(
            document(type_=DOCUMENT_TYPE, mode="index"),
            document_processing(cluster=f"{name}_container"),
        ),
        content_nodes,
        id=CONTENT_CLUSTER,
        version="1.0",
    )


def single_node_services(name: str = DEFAULT_NAME) -> ServicesConfiguration:
    """One node runs everything (the ``vespa`` docker-compose service); no hosts.xml needed."""
    return ServicesConfiguration(
        application_name=name,
        services_config=services(
            _container_cluster(name),
            _content_cluster(name, 1, nodes(node(hostalias="node1", distribution_key="0"))),
            version="1.0",
        ),
    )


def cluster_services(name: str = DEFAULT_NAME) -> ServicesConfiguration:
    """Config server + admin on one host, one container host, two content hosts with 2 copies.

    Follows vespa-engine/sample-apps ``examples/operations/multinode-HA`` (admin services placed
    explicitly, ``document-processing`` routed to the container cluster), scaled to one config
    server.
    """
    return ServicesConfiguration(
        application_name=name,
        services_config=services(
            admin(
                configservers(configserver(hostalias=CONFIG_HOST)),
                vt("cluster-controllers", vt("cluster-controller", hostalias=CONFIG_HOST)),
                slobroks(slobrok(hostalias=CONFIG_HOST)),
                adminserver(hostalias=CONFIG_HOST),
                version="2.0",
            ),
            _container_cluster(name, nodes(node(hostalias=CONTAINER_HOST))),
            _content_cluster(
                name,
                len(CONTENT_HOSTS),
                nodes(*(node(hostalias=host, distribution_key=str(key)) for key, host in enumerate(CONTENT_HOSTS))),
            ),
            version="1.0",
        ),
    )


def cluster_hosts_xml() -> str:
    hosts = vt("hosts", *(vt("host", vt("alias", host), name=host) for host in CLUSTER_HOSTS))
    return _xml_document(str(to_xml(hosts)))


def _xml_document(body: str) -> str:
    """Declaration, a do-not-edit comment and ``body``, ending in exactly one newline."""
    if body.startswith("<?xml"):
        body = body.split("\n", 1)[1]
    return f'<?xml version="1.0" encoding="UTF-8" ?>\n<!-- {_GENERATED_BY}. -->\n{body.strip()}\n'


def build_application_package(
    methods: Sequence[Method] | None = None,
    dims: Sequence[int] = DEFAULT_DIMS,
    name: str = DEFAULT_NAME,
    second_phase_rerank_count: int = DEFAULT_RERANK_COUNT,
    *,
    recalibration_slots: bool = True,
) -> ApplicationPackage:
    """The single-node application package (schema ``doc`` + single-node services.xml)."""
    return ApplicationPackage(
        name=name,
        schema=[build_schema(methods, dims, second_phase_rerank_count, recalibration_slots=recalibration_slots)],
        services_config=single_node_services(name),
        create_query_profile_by_default=False,
    )


def render_package(
    methods: Sequence[Method] | None = None,
    dims: Sequence[int] = DEFAULT_DIMS,
    name: str = DEFAULT_NAME,
    second_phase_rerank_count: int = DEFAULT_RERANK_COUNT,
    *,
    recalibration_slots: bool = True,
) -> dict[Path, str]:
    """Every generated artefact as text, keyed by its path relative to the repository root."""
    package = build_application_package(methods, dims, name, second_phase_rerank_count,
                                        recalibration_slots=recalibration_slots)
    schema_text = package.get_schema(DOCUMENT_TYPE).schema_to_text
    return {
        SCHEMA_FILE: f"# {_GENERATED_BY}: {REGENERATE_HINT}.\n{schema_text.strip()}\n",
        SERVICES_FILE: _xml_document(package.services_to_text),
        CLUSTER_SERVICES_FILE: _xml_document(str(cluster_services(name))),
        CLUSTER_HOSTS_FILE: cluster_hosts_xml(),
    }


def write_package(
    out_root: Path,
    methods: Sequence[Method] | None = None,
    dims: Sequence[int] = DEFAULT_DIMS,
    name: str = DEFAULT_NAME,
    second_phase_rerank_count: int = DEFAULT_RERANK_COUNT,
    *,
    recalibration_slots: bool = True,
) -> list[Path]:
    """Write ``schemas/doc.sd`` and ``vespa_app/{,cluster/}`` under ``out_root``; byte-stable."""
    written = []
    for relative, text in render_package(methods, dims, name, second_phase_rerank_count,
                                         recalibration_slots=recalibration_slots).items():
        written.append(atomic_write_text(Path(out_root) / relative, text))
    return written


def stale_artefacts(
    out_root: Path,
    methods: Sequence[Method] | None = None,
    dims: Sequence[int] = DEFAULT_DIMS,
    name: str = DEFAULT_NAME,
    second_phase_rerank_count: int = DEFAULT_RERANK_COUNT,
    *,
    recalibration_slots: bool = True,
) -> list[Path]:
    """Generated files under ``out_root`` that are missing or differ from a fresh generation."""
    stale = []
    for relative, text in render_package(methods, dims, name, second_phase_rerank_count,
                                         recalibration_slots=recalibration_slots).items():
        path = Path(out_root) / relative
        if not path.is_file() or path.read_bytes() != text.encode("utf-8"):
            stale.append(path)
    return stale


def assemble(out_root: Path, variant: Literal["single", "cluster"], dest: Path) -> Path:
    """Copy the generated artefacts of ``variant`` into a deployable directory ``dest``.

    ``dest`` gets ``services.xml`` (and ``hosts.xml`` for the cluster) plus ``schemas/*.sd``;
    files a previous assemble left there are replaced, nothing else in ``dest`` is touched.
    """
    out_root = Path(out_root)
    if variant == "single":
        sources = {Path("services.xml"): out_root / SERVICES_FILE}
    elif variant == "cluster":
        sources = {
            Path("services.xml"): out_root / CLUSTER_SERVICES_FILE,
            Path("hosts.xml"): out_root / CLUSTER_HOSTS_FILE,
        }
    else:
        raise VespaQuantError(f"unknown variant {variant!r}; expected 'single' or 'cluster'")
    schema_dir = out_root / SCHEMA_FILE.parent
    schemas = sorted(schema_dir.glob("*.sd"))
    if not schemas:
        raise VespaQuantError(f"{schema_dir}: no .sd files; {REGENERATE_HINT}")
    for schema in schemas:
        sources[Path("schemas") / schema.name] = schema
    missing = [str(path) for path in sources.values() if not path.is_file()]
    if missing:
        raise VespaQuantError(f"missing generated file(s) {', '.join(missing)}; {REGENERATE_HINT}")
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise VespaQuantError(f"{dest}: exists and is not a directory")
    for stale in [dest / "services.xml", dest / "hosts.xml", *sorted((dest / "schemas").glob("*.sd"))]:
        if stale.is_file():
            stale.unlink()
    for relative, source in sources.items():
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return dest


def zip_application(app_dir: Path) -> bytes:
    """The application directory as zip bytes for the deploy API, identical for identical files.

    Entries are sorted and carry a fixed timestamp, so the same package always zips the same.
    """
    app_dir = Path(app_dir)
    if not (app_dir / "services.xml").is_file():
        raise VespaQuantError(f"{app_dir}: no services.xml; not a Vespa application directory")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(p for p in app_dir.rglob("*") if p.is_file()):
            entry = zipfile.ZipInfo(path.relative_to(app_dir).as_posix(), date_time=(1980, 1, 1, 0, 0, 0))
            entry.compress_type = zipfile.ZIP_DEFLATED
            entry.external_attr = 0o644 << 16
            archive.writestr(entry, path.read_bytes())
    return buffer.getvalue()
