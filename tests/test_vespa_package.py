"""The generated application package: built from the registry, committed, and the same on every run
(compose: test_compose.py).

Schema assertions read the pyvespa objects the generator builds (STYLE 14: we never re-parse our
own .sd text); whether Vespa accepts the rendered text and what its profiles compute is decided by
Vespa's own compiler and evaluator (``tests/test_check_package.py``).
"""

from __future__ import annotations

import io
import json
import re
import socket
import threading
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from vespa_quant.errors import VespaError, VespaQuantError
from vespa_quant.quantize import expr
from vespa_quant.quantize.base import CodeField, bytes_per_vector, sign_role
from vespa_quant.quantize.methods.fitting import Sign
from vespa_quant.quantize.methods.scalar_table import ScalarTable
from vespa_quant.quantize.registry import METHODS
from vespa_quant.vespa.deploy import deploy, wait_until_ready
from vespa_quant.vespa.expressions import render
from vespa_quant.vespa.naming import (
    SLOTS,
    calibration_field_name,
    field_name,
    first_phase_field,
    method_slots,
    rank_profile_name,
    signs_field,
    slot_suffix,
)
from vespa_quant.vespa.package import DEFAULT_DIMS, DEFAULT_K1, SCORE_FUNCTION, build_schema
from vespa_quant.vespa.services import (
    CLUSTER_HOSTS,
    CLUSTER_HOSTS_FILE,
    CLUSTER_SERVICES_FILE,
    CONTENT_HOSTS,
    SCHEMA_FILE,
    SERVICES_FILE,
    assemble,
    render_package,
    stale_artefacts,
    write_package,
    zip_application,
)
from vespa_quant.vespa.topology import cluster_hostname

REPO_ROOT = Path(__file__).resolve().parents[1]
CALIBRATED = [m for m in METHODS.values() if m.needs_calibration]


@pytest.fixture(scope="module")
def rendered() -> dict[Path, str]:
    return render_package(list(METHODS.values()), DEFAULT_DIMS)


@pytest.fixture(scope="module")
def schema():
    return build_schema()


@pytest.fixture(scope="module")
def fields(schema) -> dict:
    return {field.name: field for field in schema.document.fields}


@pytest.fixture(scope="module")
def profiles(schema) -> dict:
    return dict(schema.rank_profiles)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class _FakeVespa:
    """A config server + container on 127.0.0.1 that records deploy requests."""

    def __init__(self, deploy_status: int = 200, deploy_body: dict | None = None, health: str = "up"):
        self.requests: list[tuple[str, str, dict, bytes]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, status: int, body: dict) -> None:
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self) -> None:  # noqa: N802 (http.server naming)
                length = int(self.headers.get("Content-Length", 0))
                fake.requests.append(("POST", self.path, dict(self.headers), self.rfile.read(length)))
                self._reply(deploy_status, deploy_body or {"message": "prepared and activated."})

            def do_GET(self) -> None:  # noqa: N802
                fake.requests.append(("GET", self.path, dict(self.headers), b""))
                if self.path == "/state/v1/health":
                    self._reply(200, {"status": {"code": health}})
                elif self.path == "/ApplicationStatus":
                    self._reply(200, {"application": {}})
                else:
                    self._reply(404, {"message": "not found"})

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.005}, daemon=True)

    def __enter__(self) -> _FakeVespa:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- committed artefacts ------------------------------------------------------------------------

def test_committed_artefacts_match_a_fresh_generation(tmp_path):
    written = write_package(tmp_path)
    assert sorted(p.relative_to(tmp_path) for p in written) == sorted(
        [SCHEMA_FILE, SERVICES_FILE, CLUSTER_SERVICES_FILE, CLUSTER_HOSTS_FILE]
    )
    for path in written:
        relative = path.relative_to(tmp_path)
        committed = REPO_ROOT / relative
        assert committed.is_file(), f"{relative} is not committed; run `vespa-quant deploy --dry-run --out .`"
        assert committed.read_bytes() == path.read_bytes(), (
            f"{relative} differs from the generator's output; run `vespa-quant deploy --dry-run --out .` "
            "and commit the result (never edit it by hand)"
        )
    assert stale_artefacts(REPO_ROOT) == []


def test_generation_is_byte_identical_on_rerun(tmp_path):
    first = {p.relative_to(tmp_path / "a"): p.read_bytes() for p in write_package(tmp_path / "a")}
    second = {p.relative_to(tmp_path / "b"): p.read_bytes() for p in write_package(tmp_path / "b")}
    assert first == second


def test_stale_artefacts_names_an_edited_file(tmp_path):
    write_package(tmp_path)
    (tmp_path / SERVICES_FILE).write_text("<services/>")
    assert stale_artefacts(tmp_path) == [tmp_path / SERVICES_FILE]


# --- schema -------------------------------------------------------------------------------------

def test_one_schema_named_doc(schema, rendered):
    assert schema.name == "doc"
    assert rendered[SCHEMA_FILE].splitlines()[1] == "schema doc {"


def _calibration_fields() -> set[str]:
    return {calibration_field_name(m.name, d, slot) for m in CALIBRATED for d in DEFAULT_DIMS for slot in SLOTS}


def test_id_and_calibration_fields_are_attribute_and_summary(fields):
    for name in {"doc_id", *_calibration_fields()}:
        assert fields[name].type == "string" and fields[name].indexing == ["attribute", "summary"], name
    assert {"int8_asym_384_calibration", "int8_asym_384_calibration_b"} <= set(fields)


def test_names_follow_one_rule():
    assert [slot_suffix(slot) for slot in SLOTS] == ["", "_b"]
    assert field_name("int8_asym", 384, "codes", "b") == "int8_asym_384_codes_b"
    assert rank_profile_name("int8_asym", 384, "b") == "int8_asym_384_b"
    assert rank_profile_name("int8_asym", 384, "b", exhaustive=True) == "int8_asym_384_exhaustive_b"
    assert calibration_field_name("int8_asym", 384, "b") == "int8_asym_384_calibration_b"
    with pytest.raises(VespaQuantError, match="unknown code slot 'c'"):
        field_name("int8_asym", 384, "codes", "c")
    assert method_slots(METHODS["float32"]) == ("a",) and method_slots(METHODS["int8_asym"]) == ("a", "b")
    assert method_slots(METHODS["int8_asym"], recalibration_slots=False) == ("a",)


def test_every_method_has_a_two_phase_and_an_exhaustive_profile_per_dim_and_slot(profiles):
    expected = {rank_profile_name(m.name, d, slot, exhaustive=exhaustive)
                for m in METHODS.values() for d in DEFAULT_DIMS for slot in method_slots(m)
                for exhaustive in ((False,) if m.always_first_phase else (False, True))}
    assert set(profiles) == expected
    assert "float32_384_b" not in profiles and "binary_hamming_384_exhaustive" not in profiles


def test_field_types_and_settings_follow_the_method_fields(fields):
    expected_names = {"doc_id", *_calibration_fields(), *(signs_field(d) for d in DEFAULT_DIMS)}
    for method in METHODS.values():
        for dim in DEFAULT_DIMS:
            for slot in method_slots(method):
                for spec in method.fields(dim):
                    name = field_name(method.name, dim, spec.role, slot)
                    expected_names.add(name)
                    field = fields[name]
                    hnsw = spec.sign_bits and method.always_first_phase
                    assert field.type == f"tensor<{spec.cell_type}>(x[{spec.cells}])", name
                    assert field.indexing == (["attribute", "index"] if hnsw else ["attribute"]), name
                    assert ("distance-metric: hamming" in (field.attribute or [])) == (spec.sign_bits and not hnsw)
                    assert (field.ann is not None) == hnsw, name
                    assert ("paged" in (field.attribute or [])) == spec.paged, name
    assert set(fields) == expected_names
    for dim in DEFAULT_DIMS:
        signs = fields[signs_field(dim)]
        assert signs.type == f"tensor<int8>(x[{dim // 8}])" and signs.ann.distance_metric == "hamming"


def test_two_phase_profile_is_closeness_then_the_score_as_global_phase(profiles):
    for method in METHODS.values():
        for dim in DEFAULT_DIMS:
            for slot in method_slots(method):
                profile = profiles[rank_profile_name(method.name, dim, slot)]
                nn_field = first_phase_field(method, dim, slot)
                assert profile.first_phase.expression == f"closeness(field, {nn_field})"
                assert profile.second_phase is None
                score = render(method.expression(dim), lambda role: field_name(method.name, dim, role, slot))
                if method.name == "binary_hamming":
                    assert profile.global_phase is None  # its score is the first phase itself
                else:  # the score is a match feature computed on the content nodes, read by the global phase
                    assert [(f.name, f.expression) for f in profile.functions] == [(SCORE_FUNCTION, score)]
                    assert profile.match_features == [SCORE_FUNCTION]
                    assert profile.global_phase.expression == SCORE_FUNCTION
                    assert profile.global_phase.rerank_count == DEFAULT_K1
                declared = dict(profile.inputs)
                for spec in method.inputs(dim):
                    assert f"query({spec.name})" in declared
                if sign_role(method) is None:
                    assert nn_field == signs_field(dim) and declared["query(q_nn)"] == f"tensor<int8>(x[{dim // 8}])"
                if not method.always_first_phase:
                    exhaustive = profiles[rank_profile_name(method.name, dim, slot, exhaustive=True)]
                    assert exhaustive.first_phase.expression == score and exhaustive.global_phase is None


def test_slot_b_profiles_read_only_slot_b_fields(profiles):
    for method in CALIBRATED:
        for dim in DEFAULT_DIMS:
            for exhaustive in (False, True):
                profile = profiles[rank_profile_name(method.name, dim, "b", exhaustive=exhaustive)]
                text = profile.first_phase.expression + "".join(f.expression for f in profile.functions or [])
                for spec in method.fields(dim):
                    assert field_name(method.name, dim, spec.role) + ")" not in text.replace(" ", ""), method.name


def test_slots_double_only_the_calibrated_methods_memory(fields):
    for method in METHODS.values():
        own = [spec for spec in method.fields(384) if not spec.paged]
        stored = sum(spec.bytes for slot in SLOTS for spec in own if field_name(method.name, 384, spec.role, slot) in fields)
        assert stored == (2 if method.needs_calibration else 1) * bytes_per_vector(method, 384), method.name


def test_recalibration_slots_can_be_left_out():
    schema = build_schema(dims=(256,), recalibration_slots=False)
    names = {field.name for field in schema.document.fields}
    assert not any(name.endswith("_b") for name in names)
    assert "int8_asym_256_calibration" in names and "float32_256_calibration" not in names


def test_rerank_count_is_a_parameter():
    text = render_package(dims=(256,), k1=250)[SCHEMA_FILE]
    assert "rerank-count: 250" in text and f"rerank-count: {DEFAULT_K1}\n" not in text


@dataclass(frozen=True)
class _Reading(ScalarTable):
    """A binary method whose score reads what ``tree`` says (to break the generator's checks)."""

    tree: expr.Expr = expr.QueryInput("w")

    def expression(self, dim: int) -> expr.Expr:
        return self.tree


def test_generator_rejects_a_score_reading_undeclared_inputs_or_fields():
    bad_input = _Reading("broken", 1, Sign(), tree=expr.dot(expr.QueryInput("v"), expr.Bits("bits")))
    with pytest.raises(VespaQuantError, match=r"broken@384: the score reads undeclared inputs \['v'\]"):
        build_schema([bad_input], (384,))
    bad_role = _Reading("borrower", 1, Sign(), tree=expr.dot(expr.QueryInput("w_bits"), expr.Bits("vector")))
    with pytest.raises(VespaQuantError, match=r"fields \['vector'\]"):
        build_schema([bad_role], (384,))


def test_generator_rejects_unknown_cell_types_bad_dims_and_duplicates():
    @dataclass(frozen=True)
    class Odd(ScalarTable):
        def fields(self, dim: int) -> list[CodeField]:
            return [CodeField("bits", "int4", 48)]

    with pytest.raises(VespaQuantError, match="'int4' is not a Vespa tensor cell type"):
        build_schema([Odd("odd", 1, Sign())], (384,))
    with pytest.raises(VespaQuantError, match="dim 0"):
        build_schema(dims=(0,))
    with pytest.raises(VespaQuantError, match="listed twice: binary_asym"):
        build_schema([METHODS["binary_asym"], METHODS["binary_asym"]])


def test_services_parse_and_route_doc_to_the_content_cluster(rendered):
    for path, redundancy in ((SERVICES_FILE, "1"), (CLUSTER_SERVICES_FILE, "2")):
        root = ET.fromstring(rendered[path].encode())
        assert root.tag == "services" and root.get("version") == "1.0"
        container = root.find("container")
        assert container.find("search") is not None and container.find("document-api") is not None
        content = root.find("content")
        assert content.get("id") == "content"
        assert content.findtext("min-redundancy") == redundancy
        assert [(d.get("type"), d.get("mode")) for d in content.iter("document")] == [("doc", "index")]
        assert content.find("documents/document-processing").get("cluster") == container.get("id")


def test_cluster_services_place_every_role_on_a_declared_host(rendered):
    services = ET.fromstring(rendered[CLUSTER_SERVICES_FILE].encode())
    hosts = ET.fromstring(rendered[CLUSTER_HOSTS_FILE].encode())
    aliases = {h.findtext("alias"): h.get("name") for h in hosts.findall("host")}
    assert set(aliases) == set(CLUSTER_HOSTS)
    assert all(name == cluster_hostname(alias) for alias, name in aliases.items())  # FQDN, as Docker's DNS
    used = {element.get("hostalias") for element in services.iter() if element.get("hostalias")}
    assert used == set(aliases)
    admin = services.find("admin")
    assert admin.get("version") == "2.0"
    assert admin.find("configservers/configserver").get("hostalias") == "vespa-config"
    assert services.find("container/nodes/node").get("hostalias") == "vespa-container"
    content_nodes = services.findall("content/nodes/node")
    assert [(n.get("hostalias"), n.get("distribution-key")) for n in content_nodes] == [
        (host, str(key)) for key, host in enumerate(CONTENT_HOSTS)
    ]


# --- assemble and zip ---------------------------------------------------------------------------

def test_assemble_builds_each_variant_and_replaces_old_files(tmp_path):
    write_package(tmp_path / "repo")
    single = assemble(tmp_path / "repo", "single", tmp_path / "app")
    assert sorted(p.relative_to(single).as_posix() for p in single.rglob("*") if p.is_file()) == [
        "schemas/doc.sd", "services.xml",
    ]
    cluster = assemble(tmp_path / "repo", "cluster", tmp_path / "app")
    assert cluster == tmp_path / "app"
    assert (cluster / "hosts.xml").read_bytes() == (tmp_path / "repo" / CLUSTER_HOSTS_FILE).read_bytes()
    assert (cluster / "services.xml").read_bytes() == (tmp_path / "repo" / CLUSTER_SERVICES_FILE).read_bytes()
    again = assemble(tmp_path / "repo", "single", tmp_path / "app")
    assert not (again / "hosts.xml").exists()
    with pytest.raises(VespaQuantError, match="unknown variant 'multi'"):
        assemble(tmp_path / "repo", "multi", tmp_path / "x")
    with pytest.raises(VespaQuantError, match="vespa-quant deploy --dry-run"):
        assemble(tmp_path / "empty", "single", tmp_path / "y")


def test_zip_is_deterministic_and_complete(tmp_path):
    write_package(tmp_path / "repo")
    app = assemble(tmp_path / "repo", "cluster", tmp_path / "app")
    first = zip_application(app)
    assert zip_application(app) == first
    with zipfile.ZipFile(io.BytesIO(first)) as archive:
        assert archive.namelist() == ["hosts.xml", "schemas/doc.sd", "services.xml"]
        assert archive.read("schemas/doc.sd") == (app / "schemas" / "doc.sd").read_bytes()
    with pytest.raises(VespaQuantError, match="no services.xml"):
        zip_application(tmp_path)


# --- deploy -------------------------------------------------------------------------------------

@pytest.fixture
def single_app(tmp_path) -> Path:
    write_package(tmp_path / "repo")
    return assemble(tmp_path / "repo", "single", tmp_path / "app")


def test_deploy_to_a_closed_port_says_to_start_docker_compose(single_app):
    url = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(VespaError, match=rf"nothing listens on {re.escape(url)}.*docker compose up -d"):
        deploy(single_app, config_url=url, timeout=5)


def test_deploy_posts_the_zip_to_prepareandactivate(single_app):
    with _FakeVespa() as fake:
        deploy(single_app, config_url=fake.url + "/", timeout=10)
    [(method, path, headers, body)] = fake.requests
    assert (method, path) == ("POST", "/application/v2/tenant/default/prepareandactivate")
    assert {k.lower(): v for k, v in headers.items()}["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        assert archive.testzip() is None
        assert {"services.xml", "schemas/doc.sd"} <= set(archive.namelist())
        assert archive.read("schemas/doc.sd") == (single_app / "schemas" / "doc.sd").read_bytes()


def test_deploy_reports_the_servers_message(single_app):
    rejection = {"error-code": "INVALID_APPLICATION_PACKAGE", "message": "Invalid XML in services.xml"}
    with _FakeVespa(deploy_status=400, deploy_body=rejection) as fake:
        with pytest.raises(VespaError, match="HTTP 400: INVALID_APPLICATION_PACKAGE: Invalid XML in services.xml"):
            deploy(single_app, config_url=fake.url, timeout=10)


def test_wait_until_ready_returns_when_both_endpoints_are_up():
    messages = []
    with _FakeVespa() as fake:
        wait_until_ready(query_url=fake.url, config_url=fake.url, timeout=5, interval=0.05, progress=messages.append)
    assert {path for _, path, _, _ in fake.requests} == {"/state/v1/health", "/ApplicationStatus"}
    assert messages and messages[-1].startswith("Vespa is ready")


def test_wait_until_ready_times_out_with_the_last_state():
    messages = []
    with _FakeVespa(health="initializing") as fake:
        with pytest.raises(VespaError, match="query container .*: initializing"):
            wait_until_ready(
                query_url=fake.url, config_url=fake.url, timeout=0.3, interval=0.05, progress=messages.append
            )
    assert messages and "waiting for Vespa" in messages[0]
    closed = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(VespaError, match="not listening.*docker compose up -d"):
        wait_until_ready(query_url=closed, config_url=closed, timeout=0.2, interval=0.05, progress=None)
