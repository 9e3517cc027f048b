"""The committed docker-compose.yml and .env: a fresh rendering of the topology, with the profile
semantics Compose documents, and the same names, hostnames and ports as hosts.xml.

No Compose runs here; the profile rules checked are the documented ones (compose spec "profiles":
a service without ``profiles`` is always enabled; ``COMPOSE_PROFILES`` from ``.env`` applies when
no ``--profile`` flag is given).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from vespa_quant.vespa.compose import (
    COMPOSE_FILE,
    ENV_FILE,
    compose_files,
    render_compose,
    stale_compose,
    write_compose,
)
from vespa_quant.vespa.services import CLUSTER_HOSTS_FILE, cluster_hosts_xml
from vespa_quant.vespa.topology import CLUSTER, CLUSTER_NETWORK, CONFIG_HOST, IMAGE, SINGLE, cluster_hostname

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO_ROOT / COMPOSE_FILE).read_text())


def _started(compose: dict, profiles: set[str]) -> set[str]:
    """Services Compose enables for the active ``profiles`` (compose spec, "profiles")."""
    return {name for name, service in compose["services"].items()
            if not service.get("profiles") or profiles & set(service["profiles"])}


def _default_profiles() -> set[str]:
    """What ``docker compose up`` without --profile activates: COMPOSE_PROFILES from .env."""
    (line,) = [line for line in (REPO_ROOT / ENV_FILE).read_text().splitlines() if line.startswith("COMPOSE_PROFILES=")]
    return set(line.split("=", 1)[1].split(","))


def test_committed_compose_files_match_a_fresh_rendering(tmp_path):
    written = write_compose(tmp_path)
    assert sorted(p.relative_to(tmp_path) for p in written) == sorted([COMPOSE_FILE, ENV_FILE])
    for path in written:
        relative = path.relative_to(tmp_path)
        committed = REPO_ROOT / relative
        assert committed.is_file(), f"{relative} is not committed; run `vespa-quant deploy --dry-run`"
        assert committed.read_bytes() == path.read_bytes(), (
            f"{relative} differs from a fresh rendering of vespa_quant/vespa/topology.py; run "
            "`vespa-quant deploy --dry-run` and commit the result (never edit it by hand)"
        )
    assert stale_compose(REPO_ROOT) == []


def test_stale_compose_names_an_edited_file(tmp_path):
    write_compose(tmp_path)
    (tmp_path / COMPOSE_FILE).write_text("services: {}\n")
    assert stale_compose(tmp_path) == [tmp_path / COMPOSE_FILE]


def test_rendering_is_valid_yaml_with_the_rendered_values():
    assert yaml.safe_load(render_compose())["services"]["vespa-config"]["environment"] == {
        "VESPA_CONFIGSERVERS": cluster_hostname(CONFIG_HOST)
    }
    assert render_compose() == compose_files()[COMPOSE_FILE]


def test_every_service_has_a_profile_so_cluster_starts_only_the_cluster(compose):
    assert all(service.get("profiles") for service in compose["services"].values())
    assert _default_profiles() == {"single"}
    assert _started(compose, _default_profiles()) == {SINGLE.nodes[0].name}
    assert _started(compose, {"cluster"}) == {node.name for node in CLUSTER.nodes}
    assert _started(compose, {"single"}) == {SINGLE.nodes[0].name}


def test_one_pinned_vespa_8_image(compose):
    images = {service["image"] for service in compose["services"].values()}
    assert images == {IMAGE}
    repository, _, tag = IMAGE.partition(":")
    assert repository == "vespaengine/vespa" and re.fullmatch(r"8\.\d+\.\d+", tag), "pin an exact 8.x tag"


def test_ports_are_published_on_localhost_only_and_the_readme_ports_are_kept(compose):
    published = {name: service["ports"] for name, service in compose["services"].items() if "ports" in service}
    assert published == {
        "vespa-quant": ["127.0.0.1:8080:8080", "127.0.0.1:19071:19071"],
        "vespa-config": ["127.0.0.1:19072:19071"],
        "vespa-container": ["127.0.0.1:8081:8080"],
    }
    assert (SINGLE.query_url, SINGLE.config_url) == ("http://127.0.0.1:8080", "http://127.0.0.1:19071")
    assert (CLUSTER.query_url, CLUSTER.config_url) == ("http://127.0.0.1:8081", "http://127.0.0.1:19072")


def test_cluster_follows_the_multinode_sample_and_matches_hosts_xml(compose):
    hosts = ET.fromstring(cluster_hosts_xml().encode())
    alias_to_name = {host.findtext("alias"): host.get("name") for host in hosts.findall("host")}
    assert (REPO_ROOT / CLUSTER_HOSTS_FILE).read_text() == cluster_hosts_xml()
    cluster = {name: s for name, s in compose["services"].items() if s["profiles"] == ["cluster"]}
    assert set(cluster) == set(alias_to_name)
    for name, service in cluster.items():
        assert service["container_name"] == name
        assert service["hostname"] == alias_to_name[name] == f"{name}.{CLUSTER_NETWORK}"
        assert service["networks"] == [CLUSTER_NETWORK]
        assert service["environment"] == {"VESPA_CONFIGSERVERS": alias_to_name[CONFIG_HOST]}
        assert service["command"] == ("configserver,services" if name == CONFIG_HOST else "services")
        if name != CONFIG_HOST:
            assert service["depends_on"] == {CONFIG_HOST: {"condition": "service_healthy"}}
    assert compose["networks"] == {CLUSTER_NETWORK: {"name": CLUSTER_NETWORK, "driver": "bridge"}}
    config_health = compose["services"][CONFIG_HOST]["healthcheck"]["test"]
    assert "curl" in config_health and "http://localhost:19071/state/v1/health" in config_health


def test_single_node_runs_both_roles_with_a_healthcheck_and_a_volume(compose):
    single = compose["services"]["vespa-quant"]
    assert "command" not in single and "environment" not in single and "networks" not in single
    assert single["hostname"] == single["container_name"] == "vespa-quant"
    assert single["volumes"] == ["vespa-quant-var:/opt/vespa/var"] and "vespa-quant-var" in compose["volumes"]
    assert single["mem_limit"] == "4g"
    assert "http://localhost:19071/state/v1/health" in single["healthcheck"]["test"]
