"""Start and stop a topology layout's Vespa containers through the Docker Engine API.

``vespa-quant up`` creates exactly the containers :mod:`vespa_quant.vespa.topology` describes (the
same names, hostnames, network, ports and image as ``hosts.xml`` and the compose file), waits for
Vespa and deploys the generated package; ``vespa-quant down`` removes them again. Ownership is a
label, never a name: a container is ours only when it carries ``vespa-quant.managed=true``, so a
same-named container someone else started (Vespa's quick start, a Compose project) is refused
rather than reused or deleted, and ``down`` touches nothing it did not create. A further label, a
digest of the container's settings, makes ``up`` refuse to reuse a container of ours that was
created with other settings (another ``--memory``, an older image) instead of silently keeping it.

Why not pyvespa's ``VespaDocker``: it publishes ports on every interface, runs the container
privileged, restarts whatever container has the name, knows a single node only (no network,
FQDN hostnames or ``VESPA_CONFIGSERVERS``) and connects only through ``docker.from_env``. What it
adds beyond the Docker SDK, waiting for the config server and deploying, is the project's own
:func:`~vespa_quant.vespa.deploy.wait_until_ready` and
:func:`~vespa_quant.vespa.deploy.deploy`, both on the one HTTP client (STYLE 17); a refused port
is waited out for the whole deadline here (``refused_grace=None``): the containers just started.

Order, as in the multinode-HA sample: config-server nodes start first; the other nodes start once
the config server answers (Compose's ``depends_on: service_healthy``); then the package is
deployed and ``up`` returns when the query container reports ``up``. One deadline covers all of
that waiting. With ``deploy_package=False`` every container is started at once and no Vespa
endpoint is contacted; this relies on the other nodes' config proxies retrying
``VESPA_CONFIGSERVERS`` until it answers (not yet seen on a real engine), and ``vespa-quant
deploy`` waits for the config server.

State lives in the containers (no volumes): ``down`` leaves nothing behind, fed data included.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests

from vespa_quant.errors import DockerError, VespaQuantError
from vespa_quant.vespa.deploy import deploy, wait_until_ready
from vespa_quant.vespa.services import assemble, write_package
from vespa_quant.vespa.topology import DEFAULT_MEMORY, IMAGE, Layout, Node

MANAGED_LABEL = "vespa-quant.managed"
LAYOUT_LABEL = "vespa-quant.layout"
NODE_LABEL = "vespa-quant.node"
SPEC_LABEL = "vespa-quant.spec"
DEFAULT_DOCKER_URL = "unix:///var/run/docker.sock"
"""What the Docker SDK connects to when neither ``docker_url`` nor ``DOCKER_HOST`` is set."""
DEFAULT_DOCKER_TIMEOUT = 60.0
"""Seconds per Engine API call (the SDK's default); image pulls stream without a limit."""
STOP_TIMEOUT = 10
"""Seconds Docker gives Vespa to stop before killing it; ``down`` removes the container anyway."""

Progress = Callable[[str], None]


def _print_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _reason(error: BaseException) -> str:
    """The OS-level reason inside the SDK's nested message, e.g. ``Connection refused``."""
    text = str(error)
    matches = re.findall(r"\[Errno -?\d+\] ([^'\")\]]+)|\w+Error\(-?\d+, '([^']+)'\)", text)
    reasons = [errno_text or repr_text for errno_text, repr_text in matches]
    if reasons:
        return reasons[-1].strip()
    if "timed out" in text.lower():
        return "timed out"
    return _one_line(text, 200)


def engine_url(docker_url: str | None = None) -> str:
    """The Engine API address used: ``docker_url``, else ``DOCKER_HOST``, else the local socket."""
    return docker_url or os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_URL


def connect(docker_url: str | None = None, timeout: float = DEFAULT_DOCKER_TIMEOUT) -> docker.DockerClient:
    """A client whose engine answered ``/_ping``; :class:`DockerError` naming the address otherwise."""
    url = engine_url(docker_url)
    try:
        client = (docker.DockerClient(base_url=docker_url, timeout=timeout) if docker_url
                  else docker.from_env(timeout=timeout))
        client.ping()
    except (docker.errors.DockerException, requests.RequestException) as error:
        raise DockerError(
            f"no Docker engine answers at {url}: {_reason(error)}; start Docker or pass --docker-url (or set DOCKER_HOST)"
        ) from None
    return client


@contextmanager
def _engine_call(url: str, action: str) -> Iterator[None]:
    """Turn the SDK's errors during ``action`` into one-line :class:`DockerError`\\ s."""
    try:
        yield
    except docker.errors.APIError as error:
        raise DockerError(f"{action}: {_one_line(error.explanation or str(error))}") from None
    except (docker.errors.DockerException, requests.RequestException) as error:
        raise DockerError(f"{action}: Docker engine at {url}: {_reason(error)}") from None


def memory_bytes(text: str) -> int:
    """``4g`` -> 4294967296: Docker's size units (b, k, m, g; powers of 1024)."""
    match = re.fullmatch(r"(\d+)([bkmg]?)b?", text.strip().lower())
    if not match or int(match.group(1)) == 0:
        raise VespaQuantError(f"memory limit {text!r}: expected a size such as 4g or 8192m")
    return int(match.group(1)) * 1024 ** "bkmg".index(match.group(2) or "b")


@dataclass(frozen=True)
class ContainerSpec:
    """What ``up`` asks the engine to create for one node: the SDK's ``containers.create`` arguments."""

    name: str
    image: str
    hostname: str
    command: str | None
    environment: dict[str, str]
    ports: dict[str, tuple[str, int]]
    mem_limit: int
    network: str | None
    healthcheck: dict[str, Any] | None
    labels: dict[str, str]

    def create_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "image": self.image, "name": self.name, "hostname": self.hostname, "command": self.command,
            "environment": self.environment, "ports": self.ports, "mem_limit": self.mem_limit,
            "labels": self.labels, "detach": True,
        }
        if self.network is not None:
            kwargs["network"] = self.network
        if self.healthcheck is not None:
            kwargs["healthcheck"] = self.healthcheck
        return kwargs


def container_spec(node: Node, layout: Layout, memory: int) -> ContainerSpec:
    """The spec of ``node``; its ``vespa-quant.spec`` label digests every other setting."""
    check = node.healthcheck
    settings: dict[str, Any] = {
        "image": IMAGE,
        "hostname": node.hostname,
        "command": node.command,
        "environment": dict(node.environment),
        "ports": {f"{p.container_port}/tcp": (p.host_ip, p.host_port) for p in node.ports},
        "mem_limit": memory,
        "network": layout.network,
        "healthcheck": None if check is None else {  # durations in nanoseconds, as the Engine API wants
            "test": list(check.test), "interval": check.interval_s * 10**9, "timeout": check.timeout_s * 10**9,
            "retries": check.retries, "start_period": check.start_period_s * 10**9,
        },
    }
    digest = hashlib.sha256(json.dumps([layout.name, settings], sort_keys=True).encode()).hexdigest()[:16]
    labels = {MANAGED_LABEL: "true", LAYOUT_LABEL: layout.name, NODE_LABEL: node.name, SPEC_LABEL: digest}
    return ContainerSpec(name=node.name, labels=labels, **settings)


def container_specs(layout: Layout, memory: int) -> list[ContainerSpec]:
    return [container_spec(node, layout, memory) for node in layout.nodes]


@dataclass(frozen=True)
class UpReport:
    layout: str
    created: tuple[str, ...]
    reused: tuple[str, ...]
    pulled: bool
    network_created: bool
    deployed: bool
    config_url: str
    query_url: str


@dataclass(frozen=True)
class DownReport:
    layout: str
    removed: tuple[str, ...]
    network_removed: str | None


def _lookup(url: str, action: str, get: Callable[[], Any]) -> Any | None:
    """``get()``, or ``None`` when the engine answers 404; other failures as :class:`DockerError`."""
    with _engine_call(url, action):
        try:
            return get()
        except docker.errors.NotFound:
            return None


def _ours_or_refuse(client: docker.DockerClient, url: str, spec: ContainerSpec, layout: Layout) -> Any | None:
    """The existing container of ``spec``'s name if it is ours with the same settings, ``None`` if absent."""
    container = _lookup(url, f"inspecting container {spec.name}", lambda: client.containers.get(spec.name))
    if container is None:
        return None
    labels = container.labels or {}
    if labels.get(MANAGED_LABEL) != "true":
        project = labels.get("com.docker.compose.project")
        hint = f"it belongs to Compose project {project!r}: run `docker compose down`" if project else "remove or rename it"
        raise DockerError(f"container {spec.name} exists and was not created by vespa-quant up "
                          f"(no label {MANAGED_LABEL}=true); {hint}")
    if labels.get(SPEC_LABEL) != spec.labels[SPEC_LABEL]:
        flag = " --cluster" if layout.name == "cluster" else ""
        raise DockerError(f"container {spec.name} was created by vespa-quant up with other settings "
                          f"(image, memory, ports or environment); run `vespa-quant down{flag}` first")
    return container


def _ensure_image(client: docker.DockerClient, url: str, say: Progress) -> bool:
    """Pull :data:`IMAGE` unless present; reports layer progress. ``True`` when it pulled."""
    if _lookup(url, f"inspecting image {IMAGE}", lambda: client.images.get(IMAGE)) is not None:
        return False
    repository, tag = IMAGE.rsplit(":", 1)
    say(f"pulling {IMAGE}")
    layers: set[str] = set()
    done: set[str] = set()
    with _engine_call(url, f"pulling {IMAGE}"):
        for event in client.api.pull(repository, tag=tag, stream=True, decode=True):
            if "error" in event:
                raise DockerError(f"pulling {IMAGE}: {_one_line(event['error'])}")
            status = str(event.get("status", ""))
            if "progressDetail" in event and "id" in event:
                layers.add(event["id"])
                if status in ("Pull complete", "Already exists") and event["id"] not in done:
                    done.add(event["id"])
                    say(f"pulling {IMAGE}: {len(done)}/{len(layers)} layers")
            elif status:
                say(f"pulling {IMAGE}: {status}")
        client.images.get(IMAGE)
    return True


def _ensure_network(client: docker.DockerClient, url: str, layout: Layout, say: Progress) -> bool:
    """Create the layout's bridge network, labelled ours, unless one of that exact name exists."""
    name = layout.network
    assert name is not None
    with _engine_call(url, f"listing networks named {name}"):
        if any(network.name == name for network in client.networks.list(names=[name])):
            say(f"using existing network {name}")
            return False
    with _engine_call(url, f"creating network {name}"):
        client.networks.create(name, driver="bridge", labels={MANAGED_LABEL: "true", LAYOUT_LABEL: layout.name})
    say(f"created network {name}")
    return True


def _start(container: Any, url: str, say: Progress) -> None:
    with _engine_call(url, f"starting container {container.name}"):
        container.reload()
        if container.status != "running":
            container.start()
            say(f"started container {container.name}")
        else:
            say(f"container {container.name} is already running")


def _remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _deploy_generated(layout: Layout, config_url: str, deadline: float, say: Progress) -> None:
    """Generate the default package into a temporary folder and deploy the layout's variant.

    Fresh generation equals the committed files (a test checks it), so this works from any
    directory; ``vespa-quant deploy --methods ... --dims ...`` replaces it with another selection.
    """
    with tempfile.TemporaryDirectory(prefix="vespa-quant-up-") as tmp:
        root = Path(tmp)
        write_package(root / "generated")
        app_dir = assemble(root / "generated", layout.name, root / f"application-{layout.name}")
        deploy(app_dir, config_url=config_url, timeout=max(1.0, _remaining(deadline)))
    say(f"deployed the generated {layout.name} package to {config_url}")


def up(
    layout: Layout,
    *,
    memory: str = DEFAULT_MEMORY,
    docker_url: str | None = None,
    timeout: float = 300.0,
    deploy_package: bool = True,
    config_url: str | None = None,
    query_url: str | None = None,
    docker_timeout: float = DEFAULT_DOCKER_TIMEOUT,
    progress: Progress | None = _print_progress,
) -> UpReport:
    """Create and start ``layout``'s containers, then (``deploy_package``) wait, deploy and wait.

    ``config_url`` / ``query_url`` default to the layout's published 127.0.0.1 ports; pass others
    when the engine is remote and its ports are tunnelled. ``timeout`` bounds all waiting for Vespa
    (not the image pull). Raises :class:`DockerError` before creating anything when a container of
    one of the layout's names exists and is not ours, or is ours with other settings.
    """
    say: Progress = progress or (lambda _message: None)
    url = engine_url(docker_url)
    specs = container_specs(layout, memory_bytes(memory))
    client = connect(docker_url, docker_timeout)
    try:
        existing = {spec.name: _ours_or_refuse(client, url, spec, layout) for spec in specs}
        missing = [spec for spec in specs if existing[spec.name] is None]
        pulled = _ensure_image(client, url, say) if missing else False
        network_created = _ensure_network(client, url, layout, say) if layout.network else False
        containers = dict(existing)
        for spec in missing:
            with _engine_call(url, f"creating container {spec.name}"):
                containers[spec.name] = client.containers.create(**spec.create_kwargs())
            published = ", ".join(f"{ip}:{port}->{inner}" for inner, (ip, port) in spec.ports.items()) or "no ports"
            say(f"created container {spec.name} (hostname {spec.hostname}, {published})")
        config_names = [node.name for node in layout.config_nodes]
        first = [containers[name] for name in config_names]
        rest = [containers[spec.name] for spec in specs if spec.name not in config_names]
        config_url = config_url or layout.config_url
        query_url = query_url or layout.query_url
        deadline = time.monotonic() + timeout
        hint = f"the containers keep running: `docker logs {config_names[0]}` shows why"
        for container in first:
            _start(container, url, say)
        if deploy_package:
            wait_until_ready(query_url=None, config_url=config_url, timeout=_remaining(deadline), progress=progress,
                             hint=hint, refused_grace=None)
        for container in rest:
            _start(container, url, say)
        if deploy_package:
            _deploy_generated(layout, config_url, deadline, say)
            wait_until_ready(query_url=query_url, config_url=config_url, timeout=_remaining(deadline),
                             progress=progress, hint=hint, refused_grace=None)
    finally:
        client.close()
    return UpReport(
        layout=layout.name,
        created=tuple(spec.name for spec in missing),
        reused=tuple(name for name, container in existing.items() if container is not None),
        pulled=pulled,
        network_created=network_created,
        deployed=deploy_package,
        config_url=config_url,
        query_url=query_url,
    )


def down(
    layout: Layout,
    *,
    docker_url: str | None = None,
    docker_timeout: float = DEFAULT_DOCKER_TIMEOUT,
    progress: Progress | None = _print_progress,
) -> DownReport:
    """Stop and remove the containers labelled as ``up``'s for ``layout``, then the network ``up`` created.

    Selection is by label only, checked again on each container's own labels, so containers that
    merely share a name or the network are never touched. A network that other containers still
    use is not forced: the engine's refusal comes back as a :class:`DockerError`.
    """
    say: Progress = progress or (lambda _message: None)
    url = engine_url(docker_url)
    client = connect(docker_url, docker_timeout)
    removed: list[str] = []
    network_removed: str | None = None
    try:
        wanted = {MANAGED_LABEL: "true", LAYOUT_LABEL: layout.name}
        with _engine_call(url, "listing containers"):
            candidates = client.containers.list(all=True, filters={"label": [f"{k}={v}" for k, v in wanted.items()]})
        for container in candidates:
            labels = container.labels or {}
            if any(labels.get(key) != value for key, value in wanted.items()):
                continue
            with _engine_call(url, f"removing container {container.name}"):
                if container.status == "running":
                    container.stop(timeout=STOP_TIMEOUT)
                container.remove()
            removed.append(container.name)
            say(f"removed container {container.name}")
        if layout.network is not None:
            with _engine_call(url, f"removing network {layout.network}"):
                for network in client.networks.list(names=[layout.network], filters={"label": f"{MANAGED_LABEL}=true"}):
                    if network.name == layout.network and (network.attrs.get("Labels") or {}).get(MANAGED_LABEL) == "true":
                        network.remove()
                        network_removed = network.name
                        say(f"removed network {network.name}")
    finally:
        client.close()
    return DownReport(layout=layout.name, removed=tuple(removed), network_removed=network_removed)
