"""Faults for the fake Vespa (``fake_vespa.serving(faults=...)``), and a server that never answers.

A :class:`FaultPlan` decides, per request and from a seeded generator, whether to answer with an
injected status (429, 500, 503 ...), drop the connection without answering, or stall before
answering; ``budget`` bounds how many faults one plan injects, so every test ends. Everything
listens on 127.0.0.1 only.
"""

from __future__ import annotations

import random
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class FaultPlan:
    """Seeded random faults: ``statuses`` maps an HTTP status to the probability of answering it."""

    seed: int = 0
    statuses: dict[int, float] = field(default_factory=dict)
    drop: float = 0.0
    """Probability of closing the connection without an answer."""
    stall: float = 0.0
    """Probability of waiting ``stall_seconds`` before answering."""
    stall_seconds: float = 0.0
    paths: tuple[str, ...] = ("/",)
    """Path prefixes the plan applies to."""
    budget: int | None = None
    """At most this many faults in all (None: no limit)."""
    injected: Counter = field(default_factory=Counter)
    requests: int = 0
    _rng: random.Random = field(init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def decide(self, method: str, path: str) -> tuple[str, float] | None:
        """None (answer normally), ("status", code), ("drop", 0) or ("stall", seconds)."""
        with self._lock:
            self.requests += 1
            if not path.startswith(self.paths) or (self.budget is not None and sum(self.injected.values()) >= self.budget):
                return None
            draw = self._rng.random()
            for status, probability in self.statuses.items():
                if draw < probability:
                    self.injected[status] += 1
                    return "status", status
                draw -= probability
            if draw < self.drop:
                self.injected["drop"] += 1
                return "drop", 0.0
            draw -= self.drop
            if draw < self.stall:
                self.injected["stall"] += 1
                return "stall", self.stall_seconds
            return None


@contextmanager
def silent_server() -> Iterator[str]:
    """A port that accepts connections and reads requests but never answers; yields its URL."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.1)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                continue
            held.append(connection)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=2)
        for connection in held:
            connection.close()
        listener.close()
