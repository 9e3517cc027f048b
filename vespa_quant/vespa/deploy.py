"""Deploy the generated application package to a self-hosted Vespa and wait until it serves.

HTTP goes through the one client policy (:mod:`vespa_quant.vespa.client`). The package is POSTed
as a zip to the config server's deploy API, ``/application/v2/tenant/default/prepareandactivate``
with ``Content-Type: application/zip`` (Vespa deploy API v2; the same call pyvespa's
``VespaDocker`` and the sample-apps ``curl`` recipes make). Readiness is the config server
answering ``/ApplicationStatus`` and the container's ``/state/v1/health`` reporting
``status.code == "up"`` (Vespa /state/v1 API reference: ``initializing`` while content nodes
start). A refused connection ends the wait after ``refused_grace`` seconds (nothing is starting
there), instead of polling until the deadline.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

from vespa_quant.errors import EndpointUnreachableError, VespaError
from vespa_quant.vespa.client import HttpPolicy, VespaClient
from vespa_quant.vespa.services import zip_application

DEFAULT_CONFIG_URL = "http://localhost:19071"
DEFAULT_QUERY_URL = "http://localhost:8080"
DEFAULT_TIMEOUT = 60.0
DEPLOY_PATH = "/application/v2/tenant/default/prepareandactivate"
START_HINT = "start Vespa with `vespa-quant up` or `docker compose up -d`"
REFUSED_GRACE = 10.0
"""Seconds a refused connection is tolerated while waiting: enough for a container whose port is
published but whose process is still starting, far less than a deadline."""


def deploy(app_dir: Path, config_url: str = DEFAULT_CONFIG_URL, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Zip ``app_dir`` (services.xml [+ hosts.xml] + schemas/) and prepare-and-activate it.

    Raises :class:`VespaError` naming the URL when nothing listens there, when the server does
    not answer within ``timeout`` seconds, or with the server's own message when it rejects the
    package. Transient answers (429, 5xx, dropped connections) are retried within ``timeout``.
    """
    package = zip_application(Path(app_dir))
    policy = HttpPolicy(timeout=timeout, request_timeout=timeout, max_attempts=3)
    with VespaClient(config_url, policy) as client:
        url = client.url + DEPLOY_PATH
        try:
            answer = client.post_bytes(DEPLOY_PATH, package, "application/zip", "deploy")
        except EndpointUnreachableError:
            raise VespaError(f"nothing listens on {client.url}: {START_HINT}") from None
    if answer.status is None:
        raise VespaError(f"{url} did not answer: {answer.message}")
    if not answer.ok:
        raise VespaError(f"deploying {app_dir} to {url} failed with HTTP {answer.status}: {answer.message}")


def _container_state(client: VespaClient, request_timeout: float) -> str:
    state, payload = client.probe("/state/v1/health", request_timeout)
    if state != "up":
        return state
    try:
        return str(payload["status"]["code"])
    except (KeyError, TypeError):
        return "unreadable health response"


def _print_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def wait_until_ready(
    query_url: str | None = DEFAULT_QUERY_URL,
    config_url: str = DEFAULT_CONFIG_URL,
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = 2.0,
    progress: Callable[[str], None] | None = _print_progress,
    hint: str = START_HINT,
    refused_grace: float | None = REFUSED_GRACE,
) -> None:
    """Poll until the config server and the query container are both up.

    ``progress`` receives a one-line status whenever it changes and at least every 15 s
    (``None`` for silence). ``query_url=None`` waits for the config server alone, as needed
    before the first deploy, when no container serves yet. Raises :class:`VespaError` with the
    last state seen on timeout, or as soon as an endpoint refused connections for
    ``refused_grace`` seconds (``None``: wait for the whole timeout, e.g. right after starting
    the containers), with ``hint`` when something was not listening.
    """
    started = time.monotonic()
    request_timeout = max(0.2, min(10.0, interval * 2, timeout / 2))
    policy = HttpPolicy(timeout=max(timeout, 0.1), request_timeout=request_timeout, max_attempts=1)
    last_reported: tuple[str, float] | None = None
    refused_since: float | None = None
    with VespaClient(config_url, policy) as config, \
            VespaClient(query_url or config_url, policy) as container:
        while True:
            config_state = config.probe("/ApplicationStatus", request_timeout)[0]
            container_state = "up" if query_url is None else _container_state(container, request_timeout)
            elapsed = time.monotonic() - started
            status = f"config server {config.url}: {config_state}"
            if query_url is not None:
                status += f"; query container {container.url}: {container_state}"
            if config_state == "up" and container_state == "up":
                if progress is not None:
                    progress(f"Vespa is ready after {elapsed:.0f} s ({status})")
                return
            refused = "not listening" in status
            refused_since = (refused_since if refused_since is not None else elapsed) if refused else None
            gave_up = (refused_grace is not None and refused_since is not None
                       and elapsed - refused_since >= refused_grace)
            if elapsed >= timeout or gave_up:
                suffix = f"; {hint}" if refused else ""
                waited = f"{timeout:.0f}" if not gave_up else f"{elapsed:.0f}"
                raise VespaError(f"Vespa not ready after {waited} s: {status}{suffix}")
            if progress is not None and (
                last_reported is None or last_reported[0] != status or elapsed - last_reported[1] >= 15
            ):
                progress(f"waiting for Vespa, {elapsed:.0f}/{timeout:.0f} s: {status}")
                last_reported = (status, elapsed)
            time.sleep(max(0.0, min(interval, timeout - elapsed)))
