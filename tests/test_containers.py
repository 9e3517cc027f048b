"""``vespa-quant up`` / ``down`` through the real Docker SDK against a fake Engine API on 127.0.0.1.

No Docker engine runs here: :mod:`fake_docker` answers the Engine API endpoints the SDK calls and
records the requests, so the tests assert the exact container specs (image, ports on 127.0.0.1,
memory in bytes, environment, hostnames, network, labels), that ``down`` removes only what ``up``
labelled, and the deadlines. The health and deploy step runs against the local fake Vespa of
``test_vespa_package`` (``/ApplicationStatus``, ``/state/v1/health``, the deploy API).
"""

from __future__ import annotations

import io
import socket
import time
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Iterator

import pytest
import yaml
from fake_docker import FakeEngine, serving
from test_vespa_package import _FakeVespa
from typer.testing import CliRunner

from vespa_quant.cli import app
from vespa_quant.errors import DockerError, VespaError, VespaQuantError
from vespa_quant.vespa.compose import compose_service
from vespa_quant.vespa.containers import (
    LAYOUT_LABEL,
    MANAGED_LABEL,
    NODE_LABEL,
    SPEC_LABEL,
    container_specs,
    down,
    memory_bytes,
    up,
)
from vespa_quant.vespa.services import cluster_hosts_xml
from vespa_quant.vespa.topology import CLUSTER, CLUSTER_NETWORK, CONFIG_HOST, IMAGE, SINGLE, cluster_hostname

GIB = 1024 ** 3


@pytest.fixture
def engine() -> Iterator[FakeEngine]:
    with serving() as state:
        yield state


def _closed_url(scheme: str = "http") -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"{scheme}://127.0.0.1:{port}"


def _created(engine: FakeEngine) -> dict[str, dict]:
    """``{name: create body}`` in creation order."""
    return {call.query["name"]: call.body for call in engine.requests("POST", "/containers/create")}


def _started_names(engine: FakeEngine) -> list[str]:
    by_id = {c["Id"]: c["Name"].lstrip("/") for c in engine.containers.values()}
    return [by_id[call.path.split("/")[2]] for call in engine.requests("POST", r"/containers/[^/]+/start")]


# --- up: the container specs ----------------------------------------------------------------------

def test_up_single_pulls_creates_one_labelled_localhost_container_and_deploys(engine):
    messages: list[str] = []
    with _FakeVespa() as vespa:
        report = up(SINGLE, docker_url=engine.url, config_url=vespa.url, query_url=vespa.url, timeout=30,
                    progress=messages.append)
    [pull] = engine.requests("POST", "/images/create")
    assert (pull.query["fromImage"], pull.query["tag"]) == tuple(IMAGE.split(":"))
    [(name, body)] = _created(engine).items()
    assert name == "vespa-quant" and body["Image"] == IMAGE and body["Hostname"] == "vespa-quant"
    assert body["HostConfig"]["PortBindings"] == {
        "8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}],
        "19071/tcp": [{"HostIp": "127.0.0.1", "HostPort": "19071"}],
    }
    assert body["HostConfig"]["Memory"] == 4 * GIB
    assert body["HostConfig"].get("NetworkMode") in (None, "default")
    assert body.get("Cmd") is None and not body.get("Env")  # the image default: configserver and services
    assert body["Healthcheck"]["Test"] == ["CMD", "curl", "-sf", "http://localhost:19071/state/v1/health"]
    labels = body["Labels"]
    assert (labels[MANAGED_LABEL], labels[LAYOUT_LABEL], labels[NODE_LABEL]) == ("true", "single", "vespa-quant")
    assert engine.container("vespa-quant")["State"]["Running"]

    paths = [(method, path) for method, path, _, _ in vespa.requests]
    deploy_at = paths.index(("POST", "/application/v2/tenant/default/prepareandactivate"))
    assert ("GET", "/ApplicationStatus") in paths[:deploy_at] and ("GET", "/state/v1/health") in paths[deploy_at:]
    with zipfile.ZipFile(io.BytesIO(vespa.requests[deploy_at][3])) as archive:
        assert sorted(archive.namelist()) == ["schemas/doc.sd", "services.xml"]
    assert report.created == ("vespa-quant",) and report.pulled and report.deployed
    assert messages[-1].startswith("Vespa is ready")


def test_up_cluster_creates_the_named_network_and_four_nodes_that_match_hosts_xml(engine):
    engine.images.add(IMAGE)
    report = up(CLUSTER, docker_url=engine.url, memory="2g", deploy_package=False, progress=None)
    assert not engine.requests("POST", "/images/create") and not report.pulled
    [network] = engine.requests("POST", "/networks/create")
    assert network.body["Name"] == CLUSTER_NETWORK and network.body["Driver"] == "bridge"
    assert network.body["Labels"][MANAGED_LABEL] == "true"

    hosts = ET.fromstring(cluster_hosts_xml().encode())
    alias_to_name = {host.findtext("alias"): host.get("name") for host in hosts.findall("host")}
    created = _created(engine)
    assert list(created) == [node.name for node in CLUSTER.nodes] and set(created) == set(alias_to_name)
    for name, body in created.items():
        assert body["Hostname"] == alias_to_name[name] == f"{name}.{CLUSTER_NETWORK}"
        assert body["Env"] == [f"VESPA_CONFIGSERVERS={cluster_hostname(CONFIG_HOST)}"]
        assert body["Cmd"] == ["configserver,services" if name == CONFIG_HOST else "services"]
        assert body["HostConfig"]["NetworkMode"] == CLUSTER_NETWORK
        assert body["HostConfig"]["Memory"] == 2 * GIB
        assert body["Labels"][LAYOUT_LABEL] == "cluster" and body["Labels"][NODE_LABEL] == name
    bindings = {name: body["HostConfig"].get("PortBindings") for name, body in created.items()}
    assert bindings == {
        "vespa-config": {"19071/tcp": [{"HostIp": "127.0.0.1", "HostPort": "19072"}]},
        "vespa-container": {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8081"}]},
        "vespa-content-0": None,
        "vespa-content-1": None,
    }
    assert _started_names(engine)[0] == CONFIG_HOST and len(_started_names(engine)) == 4
    assert report.network_created and not report.deployed


def test_up_cluster_starts_the_config_server_first_and_deploys_hosts_xml(engine):
    engine.images.add(IMAGE)
    messages: list[str] = []
    with _FakeVespa() as vespa:
        up(CLUSTER, docker_url=engine.url, config_url=vespa.url, query_url=vespa.url, timeout=30,
           progress=messages.append)
    started = [m for m in messages if m.startswith("started container") or m.startswith("Vespa is ready")
               or m.startswith("deployed")]
    assert started[0] == f"started container {CONFIG_HOST}"
    assert started[1].startswith("Vespa is ready")  # config server answered before the others start
    assert started[2:5] == [f"started container {name}" for name in ("vespa-container", "vespa-content-0", "vespa-content-1")]
    assert started[5].startswith("deployed") and started[6].startswith("Vespa is ready")
    [deploy] = [r for r in vespa.requests if r[0] == "POST"]
    with zipfile.ZipFile(io.BytesIO(deploy[3])) as archive:
        assert archive.read("hosts.xml").decode() == cluster_hosts_xml()


def test_container_specs_and_compose_services_say_the_same_thing():
    for layout in (SINGLE, CLUSTER):
        for spec, node in zip(container_specs(layout, memory_bytes("4g")), layout.nodes):
            service = compose_service(node, layout)
            assert (spec.name, spec.hostname, spec.image) == (service["container_name"], service["hostname"], service["image"])
            assert spec.command == service.get("command")
            assert spec.environment == service.get("environment", {})
            assert spec.network == (service.get("networks") or [None])[0]
            assert spec.mem_limit == memory_bytes(service["mem_limit"])
            assert sorted(f"{ip}:{port}:{inner.split('/')[0]}" for inner, (ip, port) in spec.ports.items()) == sorted(
                service.get("ports", []))
            assert (spec.healthcheck is None) == ("healthcheck" not in service)
    yaml.safe_dump(compose_service(CLUSTER.nodes[0], CLUSTER))  # plain data, as in the compose file


def test_memory_sizes_use_dockers_units():
    assert memory_bytes("4g") == 4 * GIB and memory_bytes("8192m") == 8 * GIB and memory_bytes(" 1G ") == GIB
    assert memory_bytes("512mb") == 512 * 1024 ** 2 and memory_bytes("1024") == 1024
    for bad in ("lots", "0g", "4t", "-1g", ""):
        with pytest.raises(VespaQuantError, match="expected a size such as 4g"):
            memory_bytes(bad)


# --- up: refusing what is not ours ----------------------------------------------------------------

def test_up_refuses_a_same_named_container_that_is_not_ours_before_creating_anything(engine):
    engine.seed_container("vespa-content-1", labels={"owner": "someone"}, image="vespaengine/vespa")
    with pytest.raises(DockerError, match=r"container vespa-content-1 exists and was not created by vespa-quant up "
                                          r"\(no label vespa-quant.managed=true\); remove or rename it"):
        up(CLUSTER, docker_url=engine.url, deploy_package=False, progress=None)
    assert not engine.requests("POST", "/containers/create") and not engine.requests("POST", "/networks/create")
    assert not engine.requests("POST", "/images/create")


def test_up_names_the_compose_project_of_a_compose_container(engine):
    engine.seed_container("vespa-quant", labels={"com.docker.compose.project": "vespa-quant"})
    with pytest.raises(DockerError, match="Compose project 'vespa-quant': run `docker compose down`"):
        up(SINGLE, docker_url=engine.url, deploy_package=False, progress=None)


def test_up_reuses_its_own_container_and_refuses_one_with_other_settings(engine):
    up(SINGLE, docker_url=engine.url, deploy_package=False, progress=None)
    again = up(SINGLE, docker_url=engine.url, deploy_package=False, progress=None)
    assert again.reused == ("vespa-quant",) and again.created == ()
    assert len(engine.requests("POST", "/containers/create")) == 1
    with pytest.raises(DockerError, match=r"container vespa-quant was created by vespa-quant up with other "
                                          r"settings .*run `vespa-quant down` first"):
        up(SINGLE, docker_url=engine.url, memory="8g", deploy_package=False, progress=None)
    spec_label = engine.container("vespa-quant")["Config"]["Labels"][SPEC_LABEL]
    assert spec_label == container_specs(SINGLE, 4 * GIB)[0].labels[SPEC_LABEL]


def test_a_pull_failure_is_one_line_naming_the_image(engine):
    engine.pull_error = "toomanyrequests: You have reached your pull rate limit."
    with pytest.raises(DockerError, match=rf"pulling {IMAGE}: toomanyrequests") as raised:
        up(SINGLE, docker_url=engine.url, deploy_package=False, progress=None)
    assert "\n" not in str(raised.value)


# --- down -------------------------------------------------------------------------------------------

def test_down_removes_only_labelled_containers_and_the_network_it_created(engine):
    unrelated = engine.seed_container("postgres")
    lookalike = engine.seed_container("vespa-content-7", labels={LAYOUT_LABEL: "cluster"})
    up(SINGLE, docker_url=engine.url, deploy_package=False, progress=None)
    up(CLUSTER, docker_url=engine.url, deploy_package=False, progress=None)
    report = down(CLUSTER, docker_url=engine.url, progress=None)
    assert sorted(report.removed) == sorted(node.name for node in CLUSTER.nodes)
    assert report.network_removed == CLUSTER_NETWORK and not engine.networks
    assert engine.names() == {"postgres", "vespa-content-7", "vespa-quant"}
    deleted = {call.path.split("/")[2] for call in engine.requests("DELETE", r"/containers/[^/]+")}
    assert unrelated not in deleted and lookalike not in deleted
    assert engine.container("postgres")["State"]["Running"]
    assert len(engine.requests("POST", r"/containers/[^/]+/stop")) == 4  # stopped before removal

    single = down(SINGLE, docker_url=engine.url, progress=None)
    assert single.removed == ("vespa-quant",) and single.network_removed is None
    assert engine.names() == {"postgres", "vespa-content-7"}
    assert down(SINGLE, docker_url=engine.url, progress=None).removed == ()


def test_down_keeps_a_network_it_did_not_create(engine):
    engine.images.add(IMAGE)
    engine.seed_network(CLUSTER_NETWORK, labels={"team": "search"})
    messages: list[str] = []
    report = up(CLUSTER, docker_url=engine.url, deploy_package=False, progress=messages.append)
    assert not report.network_created and f"using existing network {CLUSTER_NETWORK}" in messages
    assert not engine.requests("POST", "/networks/create")
    assert down(CLUSTER, docker_url=engine.url, progress=None).network_removed is None
    assert [n["Name"] for n in engine.networks.values()] == [CLUSTER_NETWORK]


def test_down_does_not_force_a_network_someone_else_still_uses(engine):
    up(CLUSTER, docker_url=engine.url, deploy_package=False, progress=None)
    engine.seed_container("debug-shell", network=CLUSTER_NETWORK)
    with pytest.raises(DockerError, match=rf"removing network {CLUSTER_NETWORK}: .*active endpoints \(/debug-shell\)"):
        down(CLUSTER, docker_url=engine.url, progress=None)
    assert engine.names() == {"debug-shell"} and [n["Name"] for n in engine.networks.values()] == [CLUSTER_NETWORK]


# --- deadlines and unreachable engines --------------------------------------------------------------

def test_an_engine_refusing_connections_is_a_quick_one_line_error_naming_the_url():
    url = _closed_url("tcp")
    started = time.monotonic()
    with pytest.raises(DockerError) as raised:
        up(SINGLE, docker_url=url, progress=None)
    assert time.monotonic() - started < 5
    message = str(raised.value)
    assert message.startswith(f"no Docker engine answers at {url}: Connection refused") and "\n" not in message
    with pytest.raises(DockerError, match=f"no Docker engine answers at {url}"):
        down(CLUSTER, docker_url=url, progress=None)


def test_health_waiting_honours_its_deadline(engine):
    engine.images.add(IMAGE)
    closed = _closed_url()
    started = time.monotonic()
    with pytest.raises(VespaError, match=rf"Vespa not ready after 1 s: config server {closed}: not listening; "
                                         r"the containers keep running: `docker logs vespa-quant` shows why"):
        up(SINGLE, docker_url=engine.url, config_url=closed, query_url=closed, timeout=0.8, progress=None)
    assert time.monotonic() - started < 4
    assert engine.container("vespa-quant")["State"]["Running"]  # started, then waited, then gave up


def test_the_deadline_covers_the_wait_after_deploying(engine):
    engine.images.add(IMAGE)
    started = time.monotonic()
    with _FakeVespa(health="initializing") as vespa:
        with pytest.raises(VespaError, match="query container .*: initializing"):
            up(SINGLE, docker_url=engine.url, config_url=vespa.url, query_url=vespa.url, timeout=1.5, progress=None)
    assert time.monotonic() - started < 8
    assert any(method == "POST" for method, _, _, _ in vespa.requests)


# --- the CLI ----------------------------------------------------------------------------------------

def test_cli_up_and_down_with_and_without_deploy(engine):
    runner = CliRunner()
    containers_only = runner.invoke(app, ["up", "--cluster", "--docker-url", engine.url, "--no-deploy"])
    assert containers_only.exit_code == 0, containers_only.output
    assert ("Vespa cluster up: queries and feed http://127.0.0.1:8081, deploy http://127.0.0.1:19072; "
            "next: vespa-quant deploy --variant cluster") in containers_only.output
    with _FakeVespa() as vespa:
        deployed = runner.invoke(app, ["up", "--docker-url", engine.url, "--memory", "6g", "--timeout", "30",
                                       "--config-url", vespa.url, "--endpoint", vespa.url])
    assert deployed.exit_code == 0, deployed.output
    assert f"Vespa single up: queries and feed {vespa.url}" in deployed.output
    assert _created(engine)["vespa-quant"]["HostConfig"]["Memory"] == 6 * GIB
    removed = runner.invoke(app, ["down", "--cluster", "--docker-url", engine.url])
    assert removed.exit_code == 0, removed.output
    assert f"network {CLUSTER_NETWORK}" in removed.output and engine.names() == {"vespa-quant"}


def test_cli_errors_are_one_line_with_exit_code_2(engine):
    url = _closed_url("tcp")
    refused = CliRunner().invoke(app, ["up", "--docker-url", url])
    assert refused.exit_code == 2 and refused.output.strip().splitlines() == [
        f"error: no Docker engine answers at {url}: Connection refused; start Docker or pass --docker-url "
        "(or set DOCKER_HOST)"
    ]
    bad_memory = CliRunner().invoke(app, ["up", "--docker-url", engine.url, "--memory", "lots"])
    assert bad_memory.exit_code == 2 and "memory limit 'lots'" in bad_memory.output
    assert not engine.calls  # rejected before contacting the engine
