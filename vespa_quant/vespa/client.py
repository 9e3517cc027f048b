"""The one HTTP client policy for everything that speaks to Vespa (STYLE 17).

Every request the package sends to a Vespa container or config server (health, deploy, puts,
partial updates, visits, searches, counts) goes through :meth:`VespaClient.call`, which applies
one policy (:class:`HttpPolicy`):

* **Per-request timeout** (``request_timeout``, default 10 s): one HTTP attempt, from sending to
  the last byte of the answer.
* **Deadline** (``timeout``, the CLI's ``--timeout``, default 60 s): the budget of one operation
  with all its retries. Long runs (a feed of millions of documents) are bounded differently:
  the worker pool (:mod:`vespa_quant.vespa.sending`) stops when Vespa acknowledged nothing for
  ``timeout`` seconds, so a server that stops answering ends a run within its ``--timeout``.
* **Fail fast on a refused connection**: nothing listens, so no retry can help;
  :class:`~vespa_quant.errors.EndpointUnreachableError` names the endpoint at once.
* **Retries** of 429, 500, 502, 503, 504 (HTTP 500 included: Vespa answers it transiently under
  load), dropped connections and timed-out attempts, with capped exponential backoff and full
  jitter (``uniform(0, min(cap, base * 2**n))``), at most ``max_attempts`` attempts and never past
  the deadline. Every operation retried is idempotent: a put replaces the whole document, an
  ``assign`` update sets the same value again, searches and visits only read. Any other status is
  permanent and returned at once.
* **A stop event** (set on SIGINT/SIGTERM): no new attempt starts and backoff waits end at once.

Built on pyvespa: requests are made by ``VespaSync`` (``feed_data_point``, ``update_data``,
``query``: document paths, compression and bodies as pyvespa builds them) over the ``httpr``
client pyvespa itself configures (``Vespa.get_sync_session``), one per thread so that each attempt
can get its own timeout. Where pyvespa is bypassed, and why:

* its retries (``num_retries_429``, ``SYNC_REQUEST_RETRY``) cover 429 and connection errors only,
  not 5xx, with waits of ``0.1 * 1.618**n + U(0, 1)`` s and no deadline; they are turned off
  (``num_retries_429=0``) and this policy retries instead;
* ``Vespa.visit`` retries HTTP errors three times without waiting and then raises tenacity's
  ``RetryError``, and connection errors not at all; visit pages are requested here instead;
* ``Vespa.wait_for_application_up`` polls ``/ApplicationStatus`` once a second printing to stdout,
  with no fail-fast on a refused port and a ``RuntimeError`` at the end; readiness is polled with
  :meth:`VespaClient.probe` (:func:`vespa_quant.vespa.deploy.wait_until_ready`).
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpr
from requests.exceptions import HTTPError
from vespa.application import Vespa, VespaSync
from vespa.exceptions import VespaError as PyvespaError
from vespa.io import VespaResponse

from vespa_quant.errors import EndpointUnreachableError, VespaError
from vespa_quant.vespa.naming import DOC_ID_FIELD, DOCUMENT_TYPE, NAMESPACE

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
DEFAULT_TIMEOUT = 60.0
DEFAULT_REQUEST_TIMEOUT = 10.0
START_HINT = "start Vespa with `vespa-quant up` (or `docker compose up -d` and `vespa-quant deploy`)"
CONTENT_CLUSTER = "content"
"""The content cluster's id in services.xml (:data:`vespa_quant.vespa.services.CONTENT_CLUSTER`), for visits."""


@dataclass(frozen=True)
class HttpPolicy:
    """Timeouts and retries of every Vespa request (see the module docstring)."""

    timeout: float = DEFAULT_TIMEOUT
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    max_attempts: int = 16
    backoff_base: float = 0.01
    backoff_cap: float = 2.0
    """Waits grow 10 ms, 20 ms, ... up to 2 s: short first waits keep random faults cheap (a 2x budget
    for a feed under 25% faults), the growth and the cap back off from a Vespa that stays overloaded."""

    def __post_init__(self) -> None:
        if not (self.timeout > 0 and self.request_timeout > 0 and self.max_attempts >= 1
                and self.backoff_base >= 0 and self.backoff_cap >= self.backoff_base):
            raise VespaError(f"HTTP policy {self}: timeouts must be positive, max_attempts >= 1, "
                             "0 <= backoff_base <= backoff_cap")

    @property
    def attempt_timeout(self) -> float:
        """One attempt never outlives the deadline: at most half of it, so two attempts fit."""
        return min(self.request_timeout, self.timeout / 2)

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Full-jitter wait after failed attempt number ``attempt`` (1-based)."""
        return rng.uniform(0.0, min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1)))


@dataclass
class Deadline:
    """A monotonic time budget."""

    seconds: float
    started: float = field(default_factory=time.monotonic)

    def remaining(self) -> float:
        return self.seconds - (time.monotonic() - self.started)

    def elapsed(self) -> float:
        return time.monotonic() - self.started


@dataclass(frozen=True)
class Answer:
    """The outcome of one operation: the last attempt's status (None: no HTTP answer), JSON and message.

    ``message`` never repeats the status; callers prefix ``HTTP <status>:`` where they show one.
    """

    status: int | None
    payload: Any
    message: str
    attempts: int
    latency_ms: float
    stopped: bool = False
    """The stop event ended the retries: the operation's effect is unknown."""

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def _one_line(text: object, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def shown(payload: Any, limit: int = 120) -> str:
    """A JSON answer as one short line, for messages that say what was expected instead."""
    try:
        text = json.dumps(payload, default=str)
    except (TypeError, ValueError):
        text = repr(payload)
    return _one_line(text, limit)


def _json(response: Any) -> Any:
    try:
        return response.json()
    except Exception:  # noqa: BLE001 - httpr raises RuntimeError/ValueError on a non-JSON body
        return None


def server_message(payload: Any, fallback: str = "") -> str:
    """Vespa's own error text: search ``root.errors``, document API / deploy ``message``, pyvespa's ``Exception``."""
    if isinstance(payload, dict):
        root = payload.get("root")
        if isinstance(root, dict) and isinstance(root.get("errors"), list):
            return _one_line("; ".join(f"{e.get('summary', '')}: {e.get('message', '')}".strip(": ")
                                       for e in root["errors"] if isinstance(e, dict)))
        for key in ("message", "Exception"):
            if payload.get(key):
                code = payload.get("error-code")
                return _one_line(f"{code}: {payload[key]}" if code else payload[key])
    return _one_line(fallback or payload or "no message")


def _http_answer(result: Any) -> tuple[int, Any, str]:
    """(status, JSON, message) of an httpr response or a pyvespa ``VespaResponse``."""
    if isinstance(result, VespaResponse):
        payload = result.get_json()
        return result.get_status_code(), payload, server_message(payload)
    payload = _json(result)
    return int(result.status_code), payload, server_message(payload, getattr(result, "text", ""))


class VespaClient:
    """A Vespa endpoint (container or config server) under one :class:`HttpPolicy`.

    Thread-safe: each thread gets its own pyvespa ``VespaSync``. Use as a context manager, or
    call :meth:`close`.
    """

    def __init__(self, url: str, policy: HttpPolicy | None = None, *, stop: threading.Event | None = None,
                 rng: random.Random | None = None) -> None:
        self.url = url.rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise VespaError(f"endpoint {url!r}: expected http://HOST:PORT")
        self.policy = policy or HttpPolicy()
        self.stop = stop or threading.Event()
        self.app = Vespa(self.url)
        self._rng = rng or random.Random()
        self._local = threading.local()
        self._clients: list[Any] = []
        self._lock = threading.Lock()

    def __enter__(self) -> VespaClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing must not mask the run's own outcome
                pass

    def _session(self) -> tuple[VespaSync, httpr.Client]:
        """This thread's pyvespa layer and the httpr client under it (its timeout is set per attempt)."""
        session = getattr(self._local, "session", None)
        if session is None:
            client = self.app.get_sync_session(connections=1)
            session = (VespaSync(self.app, session=client, num_retries_429=0), client)
            self._local.session = session
            with self._lock:
                self._clients.append(client)
        return session

    def call(self, what: str, send: Callable[[VespaSync, httpr.Client], Any], *, deadline: Deadline | None = None,
             retry: bool = True) -> Answer:
        """Run ``send(vespa_sync, http_client)`` under the policy; ``what`` names the operation in messages.

        Raises :class:`EndpointUnreachableError` on a refused connection; every other outcome is an
        :class:`Answer` (check ``ok``).
        """
        deadline = deadline or Deadline(self.policy.timeout)
        sync, http = self._session()
        attempt = 0
        while True:
            attempt += 1
            timeout = max(0.05, min(self.policy.attempt_timeout, deadline.remaining()))
            http.timeout = timeout
            started = time.perf_counter()
            status: int | None = None
            payload: Any = None
            try:
                status, payload, message = _http_answer(send(sync, http))
            except httpr.ConnectError:
                raise EndpointUnreachableError(f"nothing listens on {self.url} ({what}): {START_HINT}") from None
            except httpr.TimeoutException:
                message = f"no answer within {timeout:.3g} s"
            except (PyvespaError, HTTPError) as exc:
                response = getattr(exc, "response", None)
                if response is None:
                    response = getattr(exc.__cause__, "response", None)
                if response is None:
                    message = _one_line(exc)
                else:
                    status, payload, message = _http_answer(response)
            except (httpr.RequestError, httpr.HTTPError, ConnectionError, OSError) as exc:
                message = f"connection dropped ({_one_line(exc, 120)})"
            except Exception as exc:  # noqa: BLE001 - e.g. a 200 whose body is not JSON: retried, then reported
                message = f"unreadable answer ({type(exc).__name__}: {_one_line(exc, 120)})"
            latency_ms = (time.perf_counter() - started) * 1000.0
            transient = status is None or status in RETRY_STATUS
            if (status is not None and 200 <= status < 300) or not transient or not retry:
                return Answer(status, payload, message, attempt, latency_ms)
            if attempt >= self.policy.max_attempts:
                return Answer(status, payload, f"{message} (after {attempt} attempts)", attempt, latency_ms)
            pause = self.policy.backoff(attempt, self._rng)
            if deadline.remaining() <= pause + 0.05:
                return Answer(status, payload, f"{message} (gave up after {attempt} attempts in "
                                               f"{deadline.elapsed():.1f} s, --timeout {deadline.seconds:g})",
                              attempt, latency_ms)
            if self.stop.wait(pause):
                return Answer(status, payload, f"{message} (stopped)", attempt, latency_ms, stopped=True)

    # --- operations ------------------------------------------------------------------------

    def get(self, path: str, what: str, *, params: dict | None = None, deadline: Deadline | None = None,
            retry: bool = True) -> Answer:
        url = self.url + path
        return self.call(what, lambda _sync, http: http.get(url, params=params or {}), deadline=deadline,
                         retry=retry)

    def post_bytes(self, path: str, data: bytes, content_type: str, what: str) -> Answer:
        url = self.url + path
        return self.call(what, lambda _sync, http: http.post(url, content=data, headers={"Content-Type": content_type}))

    def put(self, vespa_id: str, fields: dict) -> Answer:
        """A put (``POST /document/v1/...``): replaces the whole document."""
        return self.call(f"put of {vespa_id}", lambda sync, _http: sync.feed_data_point(
            schema=DOCUMENT_TYPE, data_id=vespa_id, fields=fields, namespace=NAMESPACE))

    def update(self, vespa_id: str, fields: dict) -> Answer:
        """A partial update assigning ``fields``; ``create=false``: it never creates a document."""
        return self.call(f"update of {vespa_id}", lambda sync, _http: sync.update_data(
            schema=DOCUMENT_TYPE, data_id=vespa_id, fields=fields, create=False, auto_assign=True,
            namespace=NAMESPACE))

    def query(self, body: dict, what: str = "search") -> Answer:
        return self.call(what, lambda sync, _http: sync.query(body=body))

    def probe(self, path: str, request_timeout: float) -> tuple[str, Any]:
        """One attempt, no retry: ``("up", JSON)`` on HTTP 200, else a short state and None."""
        one = Deadline(request_timeout * 2)
        try:
            answer = self.get(path, f"GET {path}", deadline=one, retry=False)
        except EndpointUnreachableError:
            return "not listening", None
        if answer.ok:
            return "up", answer.payload
        if answer.status is None:
            return ("not answering" if answer.message.startswith("no answer") else "connection dropped"), None
        return f"HTTP {answer.status}", None

    def health(self, deadline: Deadline | None = None, say: Callable[[str], None] | None = None) -> None:
        """Until the deadline, wait for ``/state/v1/health`` to report ``up``; fail at once when nothing listens."""
        deadline = deadline or Deadline(self.policy.timeout)
        url = self.url + "/state/v1/health"
        reported = ""
        while True:
            answer = self.get("/state/v1/health", "health check", deadline=deadline)
            if answer.ok:
                payload = answer.payload
                state = payload.get("status", {}).get("code") if isinstance(payload, dict) else None
                if not isinstance(state, str):
                    raise VespaError(f"{url} answered {shown(payload)}, expected "
                                     "{\"status\": {\"code\": ...}}: is this a Vespa container?")
                if state == "up":
                    return
                problem = f"reports {state!r}, not 'up'"
            elif answer.status is not None and answer.status not in RETRY_STATUS:
                raise VespaError(f"{url} answered HTTP {answer.status}: {answer.message}; is this a Vespa container?")
            else:
                problem = answer.message
            if deadline.remaining() <= 0.5 or answer.stopped:
                raise VespaError(f"Vespa at {self.url} is not ready within {deadline.seconds:g} s (--timeout): "
                                 f"{url} {problem}")
            if say is not None and problem != reported:
                say(f"waiting for Vespa at {self.url}: {problem}")
                reported = problem
            if self.stop.wait(min(1.0, max(0.0, deadline.remaining() - 0.5))):
                raise VespaError(f"stopped while waiting for {url}")

    def count(self, body: dict, what: str = "document count") -> int:
        """``root.fields.totalCount`` of a no-hits query; one-line errors naming the endpoint."""
        answer = self.query(body, what)
        if not answer.ok:
            raise VespaError(f"{what} at {self.url}/search/ failed: "
                             + (f"HTTP {answer.status}: " if answer.status else "") + answer.message)
        root = answer.payload.get("root") if isinstance(answer.payload, dict) else None
        total = root.get("fields", {}).get("totalCount") if isinstance(root, dict) else None
        if not isinstance(total, int) or isinstance(total, bool):
            raise VespaError(f"{what}: {self.url}/search/ answered {shown(answer.payload)}, "
                             "expected {\"root\": {\"fields\": {\"totalCount\": N}}}")
        return total

    def visit(self, fields: list[str], *, selection: str = "true", page_size: int = 1000) -> Iterator[dict]:
        """Every stored document of type ``doc`` as ``{"id": <vespa id>, "fields": {...}}`` with ``fields`` only.

        ``GET /document/v1/<ns>/doc/docid?selection=&fieldSet=doc:f1,f2&continuation=`` page by
        page (/document/v1 reference, "visit"), each page under the policy.
        """
        path = f"/document/v1/{NAMESPACE}/{DOCUMENT_TYPE}/docid"
        params = {"cluster": CONTENT_CLUSTER, "selection": selection, "wantedDocumentCount": str(page_size),
                  "fieldSet": f"{DOCUMENT_TYPE}:" + ",".join(dict.fromkeys([DOC_ID_FIELD, *fields]))}
        continuation: str | None = None
        while True:
            page_params = dict(params, **({"continuation": continuation} if continuation else {}))
            answer = self.get(path, "visit", params=page_params)
            if not answer.ok:
                raise VespaError(f"visiting {self.url}{path} failed: "
                                 + (f"HTTP {answer.status}: " if answer.status else "") + answer.message)
            page = answer.payload
            documents = page.get("documents") if isinstance(page, dict) else None
            if not isinstance(documents, list) or not all(
                    isinstance(d, dict) and isinstance(d.get("id"), str) and isinstance(d.get("fields", {}), dict)
                    for d in documents):
                raise VespaError(f"visiting {self.url}{path}: answer {shown(page)}, expected "
                                 "{\"documents\": [{\"id\": ..., \"fields\": {...}}], \"continuation\": ...}")
            yield from documents
            continuation = page.get("continuation")
            if not continuation:
                return


def check_endpoint(url: str, policy: HttpPolicy | None = None, say: Callable[[str], None] | None = None,
                   started: float | None = None) -> None:
    """Fail before any compute when the container at ``url`` is unreachable or not ``up`` within the deadline.

    ``started`` (a ``time.monotonic()`` value, e.g. when the command began) makes the deadline
    count from then rather than from now.
    """
    with VespaClient(url, policy) as client:
        deadline = Deadline(client.policy.timeout, **({"started": started} if started is not None else {}))
        client.health(deadline, say=say)
