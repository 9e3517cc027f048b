"""Where Vespa runs: the one place for the image, container names, hostnames, ports and memory.

The cluster's ``hosts.xml`` and ``services.xml`` (:mod:`vespa_quant.vespa.services`), the
committed ``docker-compose.yml`` (:mod:`vespa_quant.vespa.compose`) and ``vespa-quant up``
(:mod:`vespa_quant.vespa.containers`) all read these values, so they cannot disagree (issue 7.2;
STYLE 17, one place for Vespa naming). This module holds values only; nothing here talks to Docker.

Multi-node naming follows Vespa's ``examples/operations/multinode-HA`` sample: a named bridge
network, and for each node a container name ``N``, a hostname ``N.<network>`` and a ``hosts.xml``
entry ``<host name="N.<network>"><alias>N</alias></host>``. Docker's embedded DNS answers both
``N`` and ``N.<network>`` on a user-defined network and maps the node's address back to
``N.<network>`` (libnetwork ``Sandbox.ResolveName`` / ``ResolveIP``), so the name a node has, the
name its address resolves back to, and its ``hosts.xml`` name are one string: the check Vespa's
``HostSystem`` warns about when it fails. Every cluster node gets ``VESPA_CONFIGSERVERS`` naming
the config server, which the image's ``start-container.sh`` requires whenever it is given a
command (``configserver,services`` or ``services``). The single node needs neither: without a
command the image runs both roles and defaults ``VESPA_CONFIGSERVERS`` to its own hostname.

Ports are published on 127.0.0.1 only: an unauthenticated deploy and document API must not be
reachable from the network. The cluster uses other host ports (19072, 8081) than the single node
(19071, 8080), so both can run side by side.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

IMAGE = "vespaengine/vespa:8.694.53"
"""Pinned: the version the package and the offline checks were validated against, never ``latest``."""
DEFAULT_MEMORY = "4g"
"""Memory limit per container; Vespa's documented minimum for a node that runs everything."""
LOCALHOST = "127.0.0.1"
QUERY_PORT = 8080
"""Container port of the query and document API."""
CONFIG_PORT = 19071
"""Container port of the config server (deploy API, ``/ApplicationStatus``)."""
DATA_DIR = "/opt/vespa/var"
"""Where a node keeps its state; the compose file mounts a named volume here."""

CLUSTER_NETWORK = "vespa-quant"
"""The cluster's bridge network; also the domain of every cluster hostname."""

CONFIG_HOST = "vespa-config"
CONTAINER_HOST = "vespa-container"
CONTENT_HOSTS: tuple[str, ...] = ("vespa-content-0", "vespa-content-1")
CLUSTER_HOSTS: tuple[str, ...] = (CONFIG_HOST, CONTAINER_HOST, *CONTENT_HOSTS)
"""Cluster node names: container name, compose service name and ``hosts.xml`` alias in one.

``services.xml`` places roles by these aliases; :func:`cluster_hostname` gives each one's FQDN.
"""

SINGLE_NODE = "vespa-quant"
"""Container name, compose service name and hostname of the single node (not ``vespa``, the name
Vespa's quick start uses, so a quick-start container is never mistaken for ours)."""

LayoutName = Literal["single", "cluster"]


def cluster_hostname(name: str) -> str:
    """``N.<network>``: the hostname Docker's DNS resolves to node ``N`` and back."""
    return f"{name}.{CLUSTER_NETWORK}"


@dataclass(frozen=True)
class PortBinding:
    """A container port published on ``host_ip:host_port`` of the Docker host."""

    container_port: int
    host_port: int
    host_ip: str = LOCALHOST


@dataclass(frozen=True)
class HealthCheck:
    """The config server's own health page, polled by Docker inside the container.

    Compose uses it to start the other cluster nodes only after the config server is healthy
    (the sample's ``depends_on: condition: service_healthy``); ``docker ps`` shows it for both
    tools. ``vespa-quant up`` waits from the host instead, with a deadline
    (:func:`vespa_quant.vespa.deploy.wait_until_ready`).
    """

    test: tuple[str, ...] = ("CMD", "curl", "-sf", f"http://localhost:{CONFIG_PORT}/state/v1/health")
    interval_s: int = 10
    timeout_s: int = 10
    retries: int = 30
    start_period_s: int = 40


CONFIG_SERVER_HEALTH = HealthCheck()


@dataclass(frozen=True)
class Node:
    """One container: its name, hostname, start command, published ports and environment.

    ``command`` is the argument of the image's ``start-container.sh`` (``None``: both roles, the
    image default). ``runs_config_server`` marks the node whose config server the others wait for.
    """

    name: str
    hostname: str
    command: str | None
    ports: tuple[PortBinding, ...] = ()
    environment: dict[str, str] = field(default_factory=dict)
    healthcheck: HealthCheck | None = None
    runs_config_server: bool = False
    volume: str | None = None
    """Named volume on :data:`DATA_DIR` in the compose file (``vespa-quant up`` keeps state in the
    container, so ``vespa-quant down`` leaves nothing behind)."""


@dataclass(frozen=True)
class Layout:
    """A set of nodes on an optional named network, and where the host reaches its endpoints."""

    name: LayoutName
    nodes: tuple[Node, ...]
    network: str | None
    config_port: int
    query_port: int

    @property
    def config_url(self) -> str:
        return f"http://{LOCALHOST}:{self.config_port}"

    @property
    def query_url(self) -> str:
        return f"http://{LOCALHOST}:{self.query_port}"

    @property
    def config_nodes(self) -> tuple[Node, ...]:
        return tuple(node for node in self.nodes if node.runs_config_server)

    def node(self, name: str) -> Node:
        for candidate in self.nodes:
            if candidate.name == name:
                return candidate
        raise KeyError(name)


SINGLE = Layout(
    name="single",
    nodes=(
        Node(
            name=SINGLE_NODE,
            hostname=SINGLE_NODE,
            command=None,
            ports=(PortBinding(QUERY_PORT, QUERY_PORT), PortBinding(CONFIG_PORT, CONFIG_PORT)),
            healthcheck=CONFIG_SERVER_HEALTH,
            runs_config_server=True,
            volume=f"{SINGLE_NODE}-var",
        ),
    ),
    network=None,
    config_port=CONFIG_PORT,
    query_port=QUERY_PORT,
)
"""One node runs config server, container and content; ``vespa_app/services.xml``, no hosts.xml."""

CLUSTER_CONFIG_PORT = 19072
CLUSTER_QUERY_PORT = 8081
_CONFIGSERVERS = {"VESPA_CONFIGSERVERS": cluster_hostname(CONFIG_HOST)}

CLUSTER = Layout(
    name="cluster",
    nodes=(
        Node(
            name=CONFIG_HOST,
            hostname=cluster_hostname(CONFIG_HOST),
            command="configserver,services",
            ports=(PortBinding(CONFIG_PORT, CLUSTER_CONFIG_PORT),),
            environment=dict(_CONFIGSERVERS),
            healthcheck=CONFIG_SERVER_HEALTH,
            runs_config_server=True,
            volume=f"{CONFIG_HOST}-var",
        ),
        Node(
            name=CONTAINER_HOST,
            hostname=cluster_hostname(CONTAINER_HOST),
            command="services",
            ports=(PortBinding(QUERY_PORT, CLUSTER_QUERY_PORT),),
            environment=dict(_CONFIGSERVERS),
        ),
        *(
            Node(
                name=host,
                hostname=cluster_hostname(host),
                command="services",
                environment=dict(_CONFIGSERVERS),
                volume=f"{host}-var",
            )
            for host in CONTENT_HOSTS
        ),
    ),
    network=CLUSTER_NETWORK,
    config_port=CLUSTER_CONFIG_PORT,
    query_port=CLUSTER_QUERY_PORT,
)
"""Config server + admin services, one query/feed container node, two content nodes (redundancy 2):
``vespa_app/cluster/{services,hosts}.xml``."""

LAYOUTS: dict[str, Layout] = {SINGLE.name: SINGLE, CLUSTER.name: CLUSTER}
