"""Deploy the generated application package to a self-hosted Vespa and wait until it serves.

HTTP lives here, at the edge (STYLE 4). The package is POSTed as a zip to the config server's
deploy API, ``/application/v2/tenant/default/prepareandactivate`` with
``Content-Type: application/zip`` (Vespa deploy API v2; the same call pyvespa's ``VespaDocker``
and the sample-apps ``curl`` recipes make). Readiness is the config server answering
``/ApplicationStatus`` and the container's ``/state/v1/health`` reporting ``status.code == "up"``
(Vespa /state/v1 API reference: ``initializing`` while content nodes start).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Callable

import requests

from vespa_quant.errors import VespaError
from vespa_quant.vespa.services import zip_application

DEFAULT_CONFIG_URL = "http://localhost:19071"
DEFAULT_QUERY_URL = "http://localhost:8080"
DEPLOY_PATH = "/application/v2/tenant/default/prepareandactivate"
START_HINT = "start Vespa with `docker compose up -d`"


def _not_listening(url: str) -> VespaError:
    return VespaError(f"nothing listens on {url}: {START_HINT}")


def _server_message(response: requests.Response) -> str:
    """The deploy API's error text: ``{"error-code": ..., "message": ...}``, else the raw body."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip() or response.reason or "no message"
    if isinstance(body, dict) and "message" in body:
        code = body.get("error-code")
        return f"{code}: {body['message']}" if code else str(body["message"])
    return json.dumps(body)


def deploy(app_dir: Path, config_url: str = DEFAULT_CONFIG_URL, timeout: float = 300) -> None:
    """Zip ``app_dir`` (services.xml [+ hosts.xml] + schemas/) and prepare-and-activate it.

    Raises :class:`VespaError` naming the URL when nothing listens there, when the server does
    not answer within ``timeout`` seconds, or with the server's own message when it rejects the
    package.
    """
    url = config_url.rstrip("/") + DEPLOY_PATH
    package = zip_application(Path(app_dir))
    try:
        response = requests.post(
            url, data=package, headers={"Content-Type": "application/zip"}, timeout=timeout
        )
    except requests.ConnectionError as exc:
        raise _not_listening(config_url) from exc
    except requests.Timeout as exc:
        raise VespaError(f"{url} did not answer within {timeout} s") from exc
    if response.status_code != 200:
        raise VespaError(
            f"deploying {app_dir} to {url} failed with HTTP {response.status_code}: "
            f"{_server_message(response)}"
        )


def _get_state(url: str, request_timeout: float) -> tuple[str, requests.Response | None]:
    """``("up", response)`` on HTTP 200, else a short state and no response."""
    try:
        response = requests.get(url, timeout=request_timeout)
    except requests.ConnectionError:
        return "not listening", None
    except requests.Timeout:
        return "not answering", None
    if response.status_code != 200:
        return f"HTTP {response.status_code}", None
    return "up", response


def _config_server_state(config_url: str, request_timeout: float) -> str:
    return _get_state(config_url.rstrip("/") + "/ApplicationStatus", request_timeout)[0]


def _container_state(query_url: str, request_timeout: float) -> str:
    state, response = _get_state(query_url.rstrip("/") + "/state/v1/health", request_timeout)
    if response is None:
        return state
    try:
        return str(response.json()["status"]["code"])
    except (ValueError, KeyError, TypeError):
        return "unreadable health response"


def _print_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def wait_until_ready(
    query_url: str | None = DEFAULT_QUERY_URL,
    config_url: str = DEFAULT_CONFIG_URL,
    timeout: float = 300,
    interval: float = 2.0,
    progress: Callable[[str], None] | None = _print_progress,
    hint: str = START_HINT,
) -> None:
    """Poll until the config server and the query container are both up.

    ``progress`` receives a one-line status whenever it changes and at least every 15 s
    (``None`` for silence). ``query_url=None`` waits for the config server alone, as needed
    before the first deploy, when no container serves yet. Raises :class:`VespaError` with the last state seen on timeout,
    and ``hint`` when something was not listening.
    """
    started = time.monotonic()
    request_timeout = max(1.0, min(10.0, interval * 2))
    last_reported: tuple[str, float] | None = None
    while True:
        config_state = _config_server_state(config_url, request_timeout)
        container_state = "up" if query_url is None else _container_state(query_url, request_timeout)
        elapsed = time.monotonic() - started
        status = f"config server {config_url}: {config_state}"
        if query_url is not None:
            status += f"; query container {query_url}: {container_state}"
        if config_state == "up" and container_state == "up":
            if progress is not None:
                progress(f"Vespa is ready after {elapsed:.0f} s ({status})")
            return
        if elapsed >= timeout:
            suffix = f"; {hint}" if "not listening" in status else ""
            raise VespaError(f"Vespa not ready after {timeout:.0f} s: {status}{suffix}")
        if progress is not None and (
            last_reported is None or last_reported[0] != status or elapsed - last_reported[1] >= 15
        ):
            progress(f"waiting for Vespa, {elapsed:.0f}/{timeout:.0f} s: {status}")
            last_reported = (status, elapsed)
        time.sleep(max(0.0, min(interval, timeout - elapsed)))
