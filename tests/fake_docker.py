"""A fake Docker Engine API on 127.0.0.1: just the endpoints the Docker SDK calls for up and down.

No Docker engine can run where this project is built, so ``vespa-quant up`` / ``down`` are tested
against this server through the real SDK (``docker.DockerClient(base_url=...)``): the SDK builds
the request bodies, the fake keeps the state a real engine would (images, networks, containers
with their labels and run state), answers with the shapes the SDK reads, and records every request
so tests can assert the exact container spec. Paths arrive with the SDK's API-version prefix
(``/v1.43/...``); the fake strips it. A real engine's refusals that ``up`` and ``down`` must respect
are kept: creating from an absent image (404), a duplicate name (409), removing a running container
(409) or a network with containers attached (403).

Bounded: after :data:`MAX_REQUESTS` requests every answer is 503, so a runaway loop fails fast.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

API_VERSION = "1.43"
MAX_REQUESTS = 500


@dataclass
class Call:
    method: str
    path: str
    query: dict[str, str]
    body: Any


@dataclass
class FakeEngine:
    """The engine's state; tests seed it and read it back."""

    images: set[str] = field(default_factory=set)
    networks: dict[str, dict] = field(default_factory=dict)
    containers: dict[str, dict] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    pull_error: str | None = None
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    # --- seeding ---------------------------------------------------------------------------

    def seed_container(self, name: str, labels: dict[str, str] | None = None, running: bool = True,
                       image: str = "postgres:16", network: str = "default") -> str:
        container_id = uuid.uuid4().hex * 2
        self.containers[container_id] = {
            "Id": container_id, "Name": f"/{name}", "Image": f"sha256:{uuid.uuid4().hex}",
            "Config": {"Image": image, "Labels": dict(labels or {}), "Env": [], "Hostname": name},
            "HostConfig": {"NetworkMode": network},
            "State": {"Status": "running" if running else "exited", "Running": running},
        }
        return container_id

    def seed_network(self, name: str, labels: dict[str, str] | None = None) -> str:
        network_id = uuid.uuid4().hex * 2
        self.networks[network_id] = {"Id": network_id, "Name": name, "Driver": "bridge",
                                     "Labels": dict(labels or {}), "Containers": {}}
        return network_id

    # --- reading back ----------------------------------------------------------------------

    def requests(self, method: str, pattern: str) -> list[Call]:
        return [call for call in self.calls if call.method == method and re.fullmatch(pattern, call.path)]

    def names(self) -> set[str]:
        return {c["Name"].lstrip("/") for c in self.containers.values()}

    def container(self, name: str) -> dict:
        (found,) = [c for c in self.containers.values() if c["Name"] == f"/{name}"]
        return found

    # --- lookups ---------------------------------------------------------------------------

    def _find_container(self, key: str) -> dict | None:
        for container in self.containers.values():
            if container["Id"].startswith(key) or container["Name"] == f"/{key}":
                return container
        return None

    def _find_network(self, key: str) -> dict | None:
        for network in self.networks.values():
            if network["Id"].startswith(key) or network["Name"] == key:
                return network
        return None


def _filters(query: dict[str, str]) -> dict[str, list[str]]:
    raw = json.loads(query.get("filters", "{}") or "{}")
    return {key: [value] if isinstance(value, str) else list(value) for key, value in raw.items()}


def _labels_match(labels: dict[str, str], wanted: list[str]) -> bool:
    for condition in wanted:
        key, has_value, value = condition.partition("=")
        if key not in labels or (has_value and labels[key] != value):
            return False
    return True


def _container_summary(container: dict) -> dict:
    return {"Id": container["Id"], "Names": [container["Name"]], "Image": container["Config"]["Image"],
            "Labels": container["Config"]["Labels"], "State": container["State"]["Status"]}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # chunked pull streams; the SDK reads an unchunked stream as one JSON
    engine: FakeEngine

    def setup(self) -> None:
        super().setup()  # no Nagle: on a kept-alive connection headers and body are separate writes
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: Any = None, content_type: str = "application/json") -> None:
        payload = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _handle(self, method: str) -> None:
        parts = urlsplit(self.path)
        path = re.sub(r"^/v\d+\.\d+", "", unquote(parts.path))
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        with self.engine.lock:
            self.engine.calls.append(Call(method, path, query, body))
            if len(self.engine.calls) > MAX_REQUESTS:
                self._send(503, {"message": "fake engine: request budget exhausted"})
                return
            self._route(method, path, query, body)

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")

    def _route(self, method: str, path: str, query: dict[str, str], body: Any) -> None:  # noqa: C901
        engine = self.engine
        if (method, path) == ("GET", "/_ping"):
            return self._send(200, b"OK", "text/plain")
        if (method, path) == ("GET", "/version"):
            return self._send(200, {"ApiVersion": API_VERSION, "Version": "24.0.0", "MinAPIVersion": "1.12"})
        if method == "GET" and (match := re.fullmatch(r"/images/(.+)/json", path)):
            if match.group(1) in engine.images:
                return self._send(200, {"Id": "sha256:" + "0" * 64, "RepoTags": [match.group(1)]})
            return self._send(404, {"message": f"No such image: {match.group(1)}"})
        if (method, path) == ("POST", "/images/create"):
            return self._pull(query)
        if (method, path) == ("GET", "/networks"):
            filters = _filters(query)
            found = [n for n in engine.networks.values()
                     if all(part in n["Name"] for part in filters.get("name", []))
                     and _labels_match(n["Labels"], filters.get("label", []))]
            return self._send(200, found)
        if (method, path) == ("POST", "/networks/create"):
            network_id = engine.seed_network(body["Name"], body.get("Labels"))
            engine.networks[network_id]["Driver"] = body.get("Driver", "bridge")
            return self._send(201, {"Id": network_id, "Warning": ""})
        if match := re.fullmatch(r"/networks/([^/]+)", path):
            network = engine._find_network(match.group(1))
            if network is None:
                return self._send(404, {"message": f"network {match.group(1)} not found"})
            if method == "GET":
                return self._send(200, network)
            attached = [c["Name"] for c in engine.containers.values() if c["HostConfig"].get("NetworkMode") == network["Name"]]
            if attached:
                return self._send(403, {"message": f"error while removing network: network {network['Name']} "
                                                   f"has active endpoints ({', '.join(attached)})"})
            del engine.networks[network["Id"]]
            return self._send(204)
        if (method, path) == ("POST", "/containers/create"):
            return self._create(query, body)
        if (method, path) == ("GET", "/containers/json"):
            filters = _filters(query)
            found = [_container_summary(c) for c in engine.containers.values()
                     if (query.get("all") in ("1", "True", "true") or c["State"]["Running"])
                     and _labels_match(c["Config"]["Labels"], filters.get("label", []))]
            return self._send(200, found)
        if match := re.fullmatch(r"/containers/([^/]+)(/json|/start|/stop)?", path):
            return self._container(method, match.group(1), match.group(2) or "")
        return self._send(404, {"message": f"fake engine: no route for {method} {path}"})

    def _stream(self, events: list[dict]) -> None:
        """A chunked stream of JSON lines, as the engine sends pull progress."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for event in events:
            line = json.dumps(event).encode() + b"\r\n"
            self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")

    def _pull(self, query: dict[str, str]) -> None:
        if self.engine.pull_error:
            return self._stream([{"error": self.engine.pull_error}])
        tag = f"{query['fromImage']}:{query.get('tag', 'latest')}"
        events: list[dict[str, Any]] = [{"status": f"Pulling from {query['fromImage']}", "id": query.get("tag", "latest")}]
        for layer in ("aaa111", "bbb222"):
            events.append({"status": "Pulling fs layer", "progressDetail": {}, "id": layer})
        for layer in ("aaa111", "bbb222"):
            events.append({"status": "Pull complete", "progressDetail": {}, "id": layer})
        events.append({"status": f"Status: Downloaded newer image for {tag}"})
        self.engine.images.add(tag)
        self._stream(events)

    def _create(self, query: dict[str, str], body: dict) -> None:
        engine = self.engine
        name = query.get("name", "")
        if engine._find_container(name) is not None:
            return self._send(409, {"message": f'Conflict. The container name "/{name}" is already in use'})
        if body["Image"] not in engine.images:
            return self._send(404, {"message": f"No such image: {body['Image']}"})
        container_id = engine.seed_container(name, body.get("Labels"), running=False, image=body["Image"],
                                             network=(body.get("HostConfig") or {}).get("NetworkMode", "default"))
        container = engine.containers[container_id]
        container["Config"].update({key: body.get(key) for key in ("Env", "Hostname", "Cmd", "ExposedPorts", "Healthcheck")})
        container["HostConfig"] = body.get("HostConfig") or {}
        container["NetworkingConfig"] = body.get("NetworkingConfig")
        container["State"]["Status"] = "created"
        return self._send(201, {"Id": container_id, "Warnings": []})

    def _container(self, method: str, key: str, action: str) -> None:
        engine = self.engine
        container = engine._find_container(key)
        if container is None:
            return self._send(404, {"message": f"No such container: {key}"})
        state = container["State"]
        if (method, action) == ("GET", "/json"):
            return self._send(200, container)
        if (method, action) == ("POST", "/start"):
            state.update(Status="running", Running=True)
            return self._send(204)
        if (method, action) == ("POST", "/stop"):
            state.update(Status="exited", Running=False)
            return self._send(204)
        if (method, action) == ("DELETE", ""):
            if state["Running"]:
                return self._send(409, {"message": f"cannot remove container {container['Name']}: container is running"})
            del engine.containers[container["Id"]]
            return self._send(204)
        return self._send(404, {"message": f"fake engine: no route for {method} /containers/{key}{action}"})


class serving:  # noqa: N801 - used as ``with serving(engine)``, named like a contextlib helper
    """``with serving(engine) as engine:`` runs the fake on 127.0.0.1 for the block."""

    def __init__(self, engine: FakeEngine | None = None):
        self.engine = engine or FakeEngine()
        handler = type("Handler", (_Handler,), {"engine": self.engine})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.engine.url = f"tcp://127.0.0.1:{self.server.server_address[1]}"
        # a short poll: shutdown() waits for it, once per test
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.005}, daemon=True)

    def __enter__(self) -> FakeEngine:
        self.thread.start()
        return self.engine

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
