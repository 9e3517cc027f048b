"""A bounded pool of workers sending many Vespa operations, which stops promptly and says how far it got.

Feeds, recalibrations and search batches send one operation per document or query through
:class:`~vespa_quant.vespa.client.VespaClient` (the retry and timeout policy). This module adds
what a run of thousands of operations needs on top:

* **Bounded concurrency**: ``concurrency`` daemon threads pull operations from one lazy iterator
  (documents are hex-encoded a chunk at a time, never all at once).
* **Stop**: SIGINT or SIGTERM (while :func:`run_pool` runs in the main thread) sets the client's
  stop event: no worker takes a new operation, retries and backoff waits end at once, and the
  requests in flight get :data:`DRAIN_SECONDS` to answer; a second signal raises
  ``KeyboardInterrupt``. The caller gets a :class:`PoolRun` saying which keys were answered,
  which were sent without an answer and which were never sent, and no thread ever prints a
  traceback.
* **Stall watchdog**: when nothing was acknowledged for the policy's ``timeout`` (``--timeout``)
  the run stops, so a Vespa that stops answering ends a feed within that budget instead of every
  remaining document timing out in turn.

Why not pyvespa's ``Vespa.feed_iterable``: its main thread blocks in ``queue.put``/``join`` and
its consumer thread keeps submitting queued documents after Ctrl-C (the traceback of issue 8); it
retries 429 and connection errors only, with no deadline; exceptions in callbacks are printed as
tracebacks. ``feed_async_iterable`` retries 429 without bound (``stop_never``) and gathers in
batches of ``max_queue_size``, so one document in backoff holds up the next thousand. Both hide
per-request timeouts. The per-operation HTTP itself is still pyvespa's (``VespaSync``).
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

from tqdm.auto import tqdm

from vespa_quant.errors import VespaError, VespaQuantError
from vespa_quant.vespa.client import Answer, VespaClient

K = TypeVar("K", bound=Hashable)
P = TypeVar("P")

DRAIN_SECONDS = 5.0
"""How long requests in flight may still answer after a stop before they are reported unanswered."""


def _stderr(message: str) -> None:
    tqdm.write(message, file=sys.stderr)  # on a line of its own, even under a progress bar


@contextmanager
def stop_on_signals(stop: threading.Event, say: Callable[[str], None] = _stderr) -> Iterator[dict[str, str]]:
    """While inside, SIGINT/SIGTERM set ``stop`` (the first one) and raise ``KeyboardInterrupt`` (the second).

    Yields a dict that receives ``{"signal": "SIGINT"}``. Outside the main thread (where Python
    cannot install handlers) it does nothing.
    """
    received: dict[str, str] = {}
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum: int, _frame: object) -> None:
        if received:
            raise KeyboardInterrupt
        received["signal"] = signal.Signals(signum).name
        stop.set()
        say(f"{received['signal']}: stopping; no new requests, waiting up to {DRAIN_SECONDS:g} s for those in "
            "flight (send it again to abort)")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@dataclass
class PoolRun(Generic[K]):
    """What a :func:`run_pool` call did, per key."""

    answers: dict[K, Answer] = field(default_factory=dict)
    """Keys whose operation ended, with its outcome (``Answer.stopped``: cut short, effect unknown)."""
    sent: list[K] = field(default_factory=list)
    """Keys a worker took, in the order taken."""
    stop_reason: str | None = None
    """Why the run ended early (a signal, a stall, an unreachable endpoint); None when it ran to the end."""
    signal: str | None = None
    fatal: VespaQuantError | None = None
    """An error that stopped the run (a refused connection, a request that could not be built)."""
    seconds: float = 0.0

    def unanswered(self) -> list[K]:
        """Sent, but no answer says whether Vespa applied it."""
        return [key for key in self.sent if key not in self.answers or self.answers[key].stopped]


def run_pool(client: VespaClient, items: Iterable[tuple[K, P]], request: Callable[[P], Answer], *, total: int,
             concurrency: int, desc: str | None = None, progress: bool = False,
             handle_signals: bool = True, say: Callable[[str], None] = _stderr) -> PoolRun[K]:
    """Send ``request(payload)`` for every ``(key, payload)`` with ``concurrency`` workers."""
    if concurrency < 1:
        raise VespaError(f"concurrency={concurrency} must be >= 1")
    run: PoolRun[K] = PoolRun()
    iterator = iter(items)
    lock = threading.Lock()
    stop = client.stop
    started = time.monotonic()
    last_ack = [started]
    last_error = [""]

    def fail(error: VespaQuantError) -> None:
        with lock:
            if run.fatal is None:
                run.fatal = error
        stop.set()

    running = [concurrency]
    all_done = threading.Event()
    """Set by the last worker to end: the monitor below wakes at once instead of at its next tick."""

    def worker() -> None:
        try:
            work()
        finally:
            with lock:
                running[0] -= 1
                if running[0] == 0:
                    all_done.set()

    def work() -> None:
        while not stop.is_set():
            with lock:
                try:
                    key, payload = next(iterator)
                except StopIteration:
                    return
                except VespaQuantError as exc:
                    run.fatal = run.fatal or exc
                    stop.set()
                    return
                except Exception as exc:  # noqa: BLE001 - a bug while building a request: reported, not printed
                    run.fatal = run.fatal or VespaError(f"building a request failed: {type(exc).__name__}: {exc}")
                    stop.set()
                    return
                run.sent.append(key)
            try:
                answer = request(payload)
            except VespaQuantError as exc:
                fail(exc)
                return
            except Exception as exc:  # noqa: BLE001 - never a thread traceback
                fail(VespaError(f"{client.url}: {type(exc).__name__}: {exc}"))
                return
            with lock:
                run.answers[key] = answer
                if answer.ok:
                    last_ack[0] = time.monotonic()
                elif not answer.stopped:
                    last_error[0] = (f"HTTP {answer.status}: " if answer.status else "") + answer.message

    threads = [threading.Thread(target=worker, daemon=True, name=f"vespa-{i}") for i in range(concurrency)]
    bar = tqdm(total=total, desc=desc, unit="op", disable=not progress, leave=False)
    shown = 0
    watchdog = client.policy.timeout
    context = stop_on_signals(stop, say) if handle_signals else _no_signals()
    with context as received:
        for thread in threads:
            thread.start()
        try:
            while not all_done.is_set():
                all_done.wait(0.1)  # a progress and watchdog tick; returns as soon as the workers are done
                with lock:
                    done, failed = len(run.answers), sum(not a.ok for a in run.answers.values())
                    quiet = time.monotonic() - last_ack[0]
                if done > shown:
                    bar.update(done - shown)
                    shown = done
                    if failed:
                        bar.set_postfix(failed=failed)
                if not stop.is_set() and quiet > watchdog:
                    run.stop_reason = (f"Vespa at {client.url} acknowledged nothing for {watchdog:g} s (--timeout)"
                                       + (f"; last error: {last_error[0]}" if last_error[0] else ""))
                    stop.set()
                if stop.is_set():
                    break
            _drain(threads)
        except KeyboardInterrupt:
            stop.set()
            _drain(threads, 1.0)
            raise
        finally:
            bar.close()
        run.signal = received.get("signal")
    if run.signal:
        run.stop_reason = f"{run.signal} received"
    elif run.fatal is not None and run.stop_reason is None:
        run.stop_reason = str(run.fatal)
    run.seconds = time.monotonic() - started
    return run


@contextmanager
def _no_signals() -> Iterator[dict[str, str]]:
    yield {}


def _drain(threads: list[threading.Thread], seconds: float = DRAIN_SECONDS) -> None:
    """Give the workers up to ``seconds`` to finish their request in flight; stuck ones are abandoned (daemon)."""
    until = time.monotonic() + seconds
    for thread in threads:
        thread.join(max(0.0, until - time.monotonic()))


@dataclass(frozen=True)
class SendOutcome:
    """Per document (dataset ids, corpus order): acknowledged, failed (with the error), sent without an
    answer, never sent."""

    acknowledged: list[str]
    failed_ids: list[str]
    errors: dict[str, str]
    unanswered_ids: list[str]
    unsent_ids: list[str]
    stop_reason: str | None = None
    signal: str | None = None
    fatal: VespaQuantError | None = None
    seconds: float = 0.0
    attempts: int = 0

    @property
    def n_ok(self) -> int:
        return len(self.acknowledged)

    @property
    def n_sent(self) -> int:
        return len(self.acknowledged) + len(self.failed_ids) + len(self.unanswered_ids)


def send_operations(client: VespaClient, doc_ids: Sequence[str], operations: Iterable[dict], *,
                    operation_type: Literal["feed", "update"], concurrency: int, progress: bool,
                    desc: str) -> SendOutcome:
    """Send ``operations`` (pyvespa ``{"id", "fields"}`` dicts, one per ``doc_ids`` entry, same order).

    Puts for ``"feed"``, ``assign`` partial updates with ``create=false`` for ``"update"``: an update
    never creates a document, and Vespa answers 200 even when the document does not exist
    (/document/v1 reference, "HTTP status codes"), which is why callers verify by visiting or
    counting.
    """
    send = client.put if operation_type == "feed" else client.update
    run = run_pool(client, zip(doc_ids, operations), lambda op: send(op["id"], op["fields"]), total=len(doc_ids),
                   concurrency=concurrency, desc=desc, progress=progress)
    unanswered = set(run.unanswered())
    taken = set(run.sent)
    acknowledged = [d for d in doc_ids if d in run.answers and run.answers[d].ok]
    failed = [d for d in doc_ids if d in run.answers and not run.answers[d].ok and d not in unanswered]
    errors = {d: (f"HTTP {run.answers[d].status}: " if run.answers[d].status else "") + run.answers[d].message
              for d in failed}
    return SendOutcome(
        acknowledged=acknowledged, failed_ids=failed, errors=errors,
        unanswered_ids=[d for d in doc_ids if d in unanswered], unsent_ids=[d for d in doc_ids if d not in taken],
        stop_reason=run.stop_reason, signal=run.signal, fatal=run.fatal, seconds=run.seconds,
        attempts=sum(answer.attempts for answer in run.answers.values()),
    )
