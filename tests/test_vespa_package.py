"""The generated Vespa package and the deploy client (no Vespa needed; compose: test_compose.py).

The schema is checked as rendered text against each method's own field and rank descriptions, the
committed artefacts against a fresh generation, and the deploy client against a local fake config
server on 127.0.0.1.
"""

from __future__ import annotations

import io
import json
import re
import socket
import threading
import xml.etree.ElementTree as ET
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from vespa_quant.errors import VespaError, VespaQuantError
from vespa_quant.quantize.base import (
    SLOTS, RankExpressions, TensorField, field_name, method_slots, nn_input_declarations, slot_suffix,
)
from vespa_quant.quantize.binary import BinaryAsym, BinaryMedianAsym
from vespa_quant.quantize.registry import METHODS
from vespa_quant.vespa.topology import cluster_hostname
from vespa_quant.vespa_app.deploy import deploy, wait_until_ready
from vespa_quant.vespa_app.package import (
    CLUSTER_HOSTS,
    CLUSTER_HOSTS_FILE,
    CLUSTER_SERVICES_FILE,
    CONTENT_HOSTS,
    DEFAULT_DIMS,
    SCHEMA_FILE,
    SERVICES_FILE,
    assemble,
    build_application_package,
    calibration_field_name,
    rank_profile_name,
    render_package,
    stale_artefacts,
    write_package,
    zip_application,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


# --- helpers ------------------------------------------------------------------------------------

def _blocks(text: str, header: str) -> dict[str, tuple[str, str]]:
    """``{name: (header rest, body)}`` of every ``<header> <name> ... {`` block, braces matched."""
    found = {}
    for match in re.finditer(rf"^\s*{header} (\w+)([^{{\n]*)\{{", text, flags=re.MULTILINE):
        depth, start = 1, match.end()
        position = start
        while depth:
            depth += {"{": 1, "}": -1}.get(text[position], 0)
            position += 1
        found[match.group(1)] = (match.group(2).strip(), text[start:position - 1])
    return found


@pytest.fixture(scope="module")
def rendered() -> dict[Path, str]:
    return render_package(list(METHODS.values()), DEFAULT_DIMS)


@pytest.fixture(scope="module")
def schema_text(rendered) -> str:
    return rendered[SCHEMA_FILE]


@pytest.fixture(scope="module")
def fields(schema_text) -> dict[str, tuple[str, str]]:
    return _blocks(schema_text, "field")


@pytest.fixture(scope="module")
def profiles(schema_text) -> dict[str, tuple[str, str]]:
    return _blocks(schema_text, "rank-profile")


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
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> "_FakeVespa":
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
        assert committed.is_file(), f"{relative} is not committed; run `vespa-quant deploy --dry-run`"
        assert committed.read_bytes() == path.read_bytes(), (
            f"{relative} differs from the generator's output; run `vespa-quant deploy --dry-run` "
            "and commit the result (never edit it by hand)"
        )
    assert stale_artefacts(REPO_ROOT) == []


def test_generation_is_byte_identical_on_rerun(tmp_path):
    first = {p.relative_to(tmp_path / "a"): p.read_bytes() for p in write_package(tmp_path / "a")}
    second = {p.relative_to(tmp_path / "b"): p.read_bytes() for p in write_package(tmp_path / "b")}
    assert first == second
    write_package(tmp_path / "a")
    assert {p: (tmp_path / "a" / p).read_bytes() for p in first} == first


def test_stale_artefacts_names_an_edited_file(tmp_path):
    write_package(tmp_path)
    (tmp_path / SERVICES_FILE).write_text("<services/>")
    assert stale_artefacts(tmp_path) == [tmp_path / SERVICES_FILE]


# --- schema -------------------------------------------------------------------------------------

def test_one_schema_named_doc(rendered, schema_text):
    package = build_application_package()
    assert [schema.name for schema in package.schemas] == ["doc"]
    assert schema_text.splitlines()[1] == "schema doc {"
    assert "document doc {" in schema_text


CALIBRATED = [m for m in METHODS.values() if m.needs_calibration]


def _calibration_fields() -> set[str]:
    return {calibration_field_name(m.name, d, slot) for m in CALIBRATED for d in DEFAULT_DIMS for slot in SLOTS}


def test_id_and_calibration_fields_are_attribute_and_summary(fields):
    assert "calibration_set" not in fields
    assert len(_calibration_fields()) == len(CALIBRATED) * len(DEFAULT_DIMS) * 2
    for name in {"doc_id", *_calibration_fields()}:
        header, body = fields[name]
        assert header == "type string"
        assert "indexing: attribute | summary" in body
    assert {"int8_asym_384_calibration", "int8_asym_384_calibration_b"} <= set(fields)


def test_slot_names_follow_one_rule():
    assert [slot_suffix(slot) for slot in SLOTS] == ["", "_b"]
    assert field_name("int8_asym", 384, "codes") == "int8_asym_384_codes"
    assert field_name("int8_asym", 384, "codes", "b") == "int8_asym_384_codes_b"
    assert rank_profile_name("int8_asym", 384, "b") == "int8_asym_384_b"
    assert calibration_field_name("int8_asym", 384, "b") == "int8_asym_384_calibration_b"
    with pytest.raises(VespaQuantError, match="unknown code slot 'c'"):
        field_name("int8_asym", 384, "codes", "c")
    assert method_slots(METHODS["float32"]) == ("a",) and method_slots(METHODS["int8_asym"]) == ("a", "b")
    assert method_slots(METHODS["int8_asym"], recalibration_slots=False) == ("a",)


def test_every_method_has_a_rank_profile_per_dim_and_slot(profiles):
    expected = {rank_profile_name(m.name, d, slot) for m in METHODS.values() for d in DEFAULT_DIMS
                for slot in method_slots(m)}
    assert set(profiles) == expected
    assert len(profiles) == (len(METHODS) + len(CALIBRATED)) * len(DEFAULT_DIMS)
    assert "float32_384_b" not in profiles and "binary_hamming_384_b" not in profiles


def test_field_types_and_settings_follow_method_fields(fields):
    expected_names = {"doc_id", *_calibration_fields()}
    for method in METHODS.values():
        for dim, slot in [(dim, slot) for dim in DEFAULT_DIMS for slot in method_slots(method)]:
            for spec in method.fields(dim):
                name = field_name(method.name, dim, spec.role, slot)
                expected_names.add(name)
                header, body = fields[name]
                assert header == f"type {spec.tensor_type}", name
                indexing = re.search(r"indexing: (.*)", body).group(1)
                assert "summary" not in indexing, f"{name}: big tensors must not be in summaries"
                assert indexing == ("attribute | index" if spec.hnsw else "attribute"), name
                assert ("distance-metric: hamming" in body) == spec.hamming, name
                assert ("hnsw {" in body) == spec.hnsw, name
                assert (re.search(r"^\s*paged\s*$", body, re.MULTILINE) is not None) == spec.paged, name
    assert set(fields) == expected_names


def test_binary_384_is_48_int8_cells_and_lloyd_planes_are_96_bytes(fields):
    assert fields["binary_asym_384_bits"][0] == "type tensor<int8>(x[48])"
    assert fields["binary_asym_256_bits"][0] == "type tensor<int8>(x[32])"
    lloyd = METHODS["lloyd_max_gauss"]
    planes = lloyd.fields(384)
    assert [(f.role, f.cells) for f in planes] == [("hi", 48), ("lo", 48)]
    assert lloyd.bytes_per_vector(384) == 96
    for role in ("hi", "lo"):
        assert fields[f"lloyd_max_gauss_384_{role}"][0] == "type tensor<int8>(x[48])"
    assert fields["int8_asym_384_codes"][0] == "type tensor<int8>(x[384])"
    assert fields["bfloat16_256_vector"][0] == "type tensor<bfloat16>(x[256])"


def test_binary_rescore_keeps_a_paged_float_copy_and_hnsw_bits(fields, profiles):
    header, body = fields["binary_rescore_384_vector"]
    assert header == "type tensor<float>(x[384])"
    assert re.search(r"attribute \{\s*paged\s*\}", body)
    _, bits = fields["binary_rescore_384_bits"]
    assert "distance-metric: hamming" in bits and "max-links-per-node" in bits
    _, profile = profiles["binary_rescore_384"]
    assert "closeness(field, binary_rescore_384_bits)" in profile
    assert re.search(r"second-phase \{.*rerank-count: 1000", profile, re.DOTALL)
    assert "second-phase" not in profiles["binary_asym_384"][1]


def test_rank_profiles_declare_inputs_and_expressions_from_the_methods(profiles):
    for method in METHODS.values():
        for dim, slot in [(dim, slot) for dim in DEFAULT_DIMS for slot in method_slots(method)]:
            expressions = method.rank_expressions(dim, field=lambda r: field_name(method.name, dim, r, slot))
            _, body = profiles[rank_profile_name(method.name, dim, slot)]
            inputs = re.search(r"inputs \{(.*?)\}", body, re.DOTALL).group(1)
            declared = [line.strip() for line in inputs.strip().splitlines()]
            wanted = {**expressions.inputs, **nn_input_declarations(method, dim)}
            assert declared == [f"query({n}) {t}" for n, t in wanted.items()]
            assert expressions.first_phase in body
            for function_name, function_body in expressions.functions.items():
                assert f"function {function_name}()" in body and function_body in body
    inputs = re.search(r"inputs \{(.*?)\}", profiles["binary_asym_384"][1], re.DOTALL).group(1)
    assert "query(w) tensor<float>(x[384])" in inputs
    assert "query(offset) double" in inputs


def test_slot_b_profiles_are_slot_a_profiles_on_the_b_fields(profiles):
    for method in CALIBRATED:
        for dim in DEFAULT_DIMS:
            _, a_body = profiles[rank_profile_name(method.name, dim)]
            _, b_body = profiles[rank_profile_name(method.name, dim, "b")]
            renamed = a_body
            for spec in method.fields(dim):
                plain = field_name(method.name, dim, spec.role)
                renamed = re.sub(rf"\b{plain}\b", field_name(method.name, dim, spec.role, "b"), renamed)
            assert renamed == b_body, method.name
            assert re.search(rf"\b{method.name}_{dim}_\w+_b\b", b_body)


def test_slots_double_only_the_calibrated_methods_memory(fields):
    def in_memory_bytes(name: str, dim: int) -> int:
        own = [spec for spec in METHODS[name].fields(dim) if not spec.paged]
        return sum(spec.bytes for slot in SLOTS for spec in own
                   if field_name(name, dim, spec.role, slot) in fields)

    for method in METHODS.values():
        copies = 2 if method.needs_calibration else 1
        assert in_memory_bytes(method.name, 384) == copies * method.bytes_per_vector(384), method.name
    assert METHODS["lloyd_max_gauss"].bytes_per_vector(384) == 96  # per slot, as before


def test_recalibration_slots_can_be_left_out():
    text = render_package(dims=(256,), recalibration_slots=False)[SCHEMA_FILE]
    assert "_b " not in text and "_b\n" not in text and "calibration_b" not in text
    assert "field int8_asym_256_calibration type string" in text
    assert "field float32_256_calibration" not in text  # calibration-free: no id field
    profiles = _blocks(text, "rank-profile")
    assert set(profiles) == {rank_profile_name(m, 256) for m in METHODS}


def test_generator_rejects_a_slot_profile_reading_the_other_slots_field():
    class SlotBlind(BinaryMedianAsym):
        name = "slot_blind"

        def rank_expressions(self, dim, field):
            expressions = super().rank_expressions(dim, field)
            return RankExpressions(expressions.inputs, expressions.first_phase.replace(field("bits"),
                                                                                       f"slot_blind_{dim}_bits"))

    render_package([SlotBlind()], (384,), recalibration_slots=False)
    with pytest.raises(VespaQuantError, match=r"slot_blind_384_b: reads field 'slot_blind_384_bits', .* in slot b"):
        render_package([SlotBlind()], (384,))


def test_rerank_count_is_a_parameter():
    text = render_package(dims=(256,), second_phase_rerank_count=250)[SCHEMA_FILE]
    assert "rerank-count: 250" in text and "rerank-count: 1000" not in text
    assert "_384_" not in text


def test_generator_rejects_an_expression_reading_an_undeclared_input():
    class Broken(BinaryAsym):
        name = "broken"

        def rank_expressions(self, dim, field):
            return RankExpressions(inputs={"w": f"tensor<float>(x[{dim}])"}, first_phase="sum(query(v))")

    with pytest.raises(VespaQuantError, match=r"broken_384: query\(v\)"):
        render_package([Broken()], (384,))


def test_generator_rejects_an_expression_reading_another_methods_field():
    class Borrower(BinaryAsym):
        name = "borrower"

        def rank_expressions(self, dim, field):
            return RankExpressions(inputs={}, first_phase=f"closeness(field, binary_asym_{dim}_bits)")

    with pytest.raises(VespaQuantError, match="binary_asym_384_bits"):
        render_package([Borrower()], (384,))


def test_generator_rejects_hnsw_without_a_metric_and_unknown_cell_types():
    class Odd(BinaryAsym):
        name = "odd"

        def __init__(self, spec):
            self.spec = spec

        def fields(self, dim):
            return [self.spec]

    with pytest.raises(VespaQuantError, match="odd_384_bits: an HNSW index needs a distance metric"):
        render_package([Odd(TensorField("bits", "float", 48, hnsw=True))], (384,))
    with pytest.raises(VespaQuantError, match="'int4' is not a Vespa tensor cell type"):
        render_package([Odd(TensorField("bits", "int4", 48))], (384,))


def test_generator_rejects_bad_dims_and_duplicate_methods():
    with pytest.raises(VespaQuantError, match="dim 0"):
        render_package(dims=(0,))
    with pytest.raises(VespaQuantError, match="listed twice: binary_asym"):
        render_package([METHODS["binary_asym"], METHODS["binary_asym"]])


# --- services and hosts -------------------------------------------------------------------------

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
    assert headers["Content-Type"] == "application/zip"
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
