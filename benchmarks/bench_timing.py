"""Timing for ``engine_vs_faiss.py``: what an op is, interleaved rounds, the read-bandwidth probe.

Split from the script so each file stays readable; the script imports everything it times with.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

Result = tuple[np.ndarray, np.ndarray]
Search = Callable[[np.ndarray], Result]
Ours = Callable[[np.ndarray, int], Result]
Check = Callable[[Result, Result, np.ndarray], None]
Peer = tuple[str, Search, Check]


@dataclass
class Op:
    """One kind of scan: our variants (name -> the one call the engine makes), the peers with the
    check that ties each peer's answer to ours, and the code bytes a scan reads per document."""

    ours: dict[str, Ours]
    peers: list[Peer]
    bytes_per_doc: int
    fastest_peer_only: bool = False
    """Report only the fastest peer (the same index on two of faiss' code paths)."""
    batch_only: tuple[str, ...] = ()
    """Variants timed only on the batch (a forced path the engine never takes for one query)."""


class ReadProbe:
    """The machine's read bandwidth: numpy sums of 1 GiB on ``threads`` threads (numpy releases the GIL).

    Timed in the same rounds as the scans it is the denominator of (:func:`time_op`), so a machine
    whose speed drifts during the run (a shared VM) moves both alike.
    """

    words: np.ndarray | None = None
    """1 GiB shared by every probe, allocated by the first (not on import)."""

    def __init__(self, threads: int) -> None:
        if ReadProbe.words is None:
            ReadProbe.words = np.ones(1 << 27, dtype=np.int64)
        self.nbytes = ReadProbe.words.nbytes
        self.parts = np.array_split(ReadProbe.words, threads)
        self.pool = ThreadPoolExecutor(threads)
        list(self.pool.map(np.sum, self.parts))

    def once(self) -> float:
        """Bytes/s of one pass."""
        started = time.perf_counter()
        list(self.pool.map(np.sum, self.parts))
        return self.nbytes / (time.perf_counter() - started)

    def best_of(self, passes: int) -> float:
        return max(self.once() for _ in range(passes))


def interleaved(ours: Callable[[], object], peer: Callable[[], object], repeats: int) -> tuple[float, float]:
    mine: list[float] = []
    theirs: list[float] = []
    for _ in range(repeats):
        for work, into in ((ours, mine), (peer, theirs)):
            started = time.perf_counter()
            work()
            into.append(time.perf_counter() - started)
    return statistics.median(mine), statistics.median(theirs)


def time_op(op: Op, queries: np.ndarray, n: int, threads: int, probe: ReadProbe, repeats: int) -> list[dict]:
    """Check every variant against every peer, then time them in interleaved rounds, each round
    ending with a pass of the read-bandwidth probe."""
    rows = []
    for batch in (len(queries), 1):
        calls = [queries] if batch > 1 else [queries[i:i + 1] for i in range(3 * repeats)]
        variants = {name: v for name, v in op.ours.items() if batch > 1 or name not in op.batch_only}
        for variant in variants.values():
            for _, peer, check in op.peers:
                for call in calls[:3]:
                    check(variant(call, threads), peer(call), call)
        timed: dict[str, Callable[[np.ndarray], object]] = {name: peer for name, peer, _ in op.peers}
        for name, variant in variants.items():
            timed[name] = functools.partial(lambda q, v, t: v(q, t), v=variant, t=threads)
        times: dict[str, list[float]] = {name: [] for name in timed}
        reads = []
        for _ in range(repeats if batch > 1 else 3):
            for name, work in timed.items():
                started = time.perf_counter()
                for call in calls:
                    work(call)
                times[name].append((time.perf_counter() - started) / len(calls))
            reads.append(probe.best_of(2))
        median = {name: statistics.median(t) for name, t in times.items()}
        bandwidth = statistics.median(reads)
        peer_names = [name for name, _, _ in op.peers]
        if op.fastest_peer_only:
            peer_names = [min(peer_names, key=median.__getitem__)]
        for name in variants:
            for peer_name in peer_names:
                rows.append({"op": name, "n_docs": n, "threads": threads, "batch": batch, "ours_s": median[name],
                             "peer": peer_name, "peer_s": median[peer_name],
                             "ratio": median[peer_name] / median[name],
                             "bandwidth_fraction": n * op.bytes_per_doc / median[name] / bandwidth,
                             "read_bandwidth": bandwidth})
    return rows


def print_row(row: dict) -> None:
    fraction = "" if row["bandwidth_fraction"] is None else f"{row['bandwidth_fraction']:9.3f}"
    read = "" if row.get("read_bandwidth") is None else f"{row['read_bandwidth'] / 1e9:5.1f}"
    print(f"{row['op']:27s} {row['n_docs']:>9d} {row['threads']:>2d} {row['batch']:>7d} {row['ours_s']:10.5f} "
          f"{row['peer_s']:10.5f} {row['ratio']:7.2f} {fraction:>9s} {read:>5s}  {row['peer']}", flush=True)
