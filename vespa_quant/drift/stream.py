"""The index a drift run streams into: exactly the documents that have arrived, two code slots per
calibrated method, searched with whichever calibration a slot holds.

A production index does not re-encode its corpus to answer "what would this calibration give?";
it holds codes, and a recalibration rewrites them blue/green (:mod:`vespa_quant.vespa.recalibrate`):
slot ``a`` and slot ``b`` of every calibrated method, queries reading the active one, a new
calibration written into the inactive one, verified, and only then switched to. A drift run
measures through the same machinery, so what it reports is what a user of that index sees.

:class:`StreamIndex` is that machinery as a protocol with two implementations, the in-process
:class:`LocalStreamIndex` (arrays and the engine) and the Vespa one
(:class:`vespa_quant.vespa.stream.VespaStreamIndex`). Both keep a :class:`SlotTable` per method
and change it only through its three transitions, so at every point of a run both hold the same
calibrations in the same slots, and the runner can ask only for what both can answer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from vespa_quant.embed.embedded import EmbeddedDataset
from vespa_quant.engine.local import Hits, search
from vespa_quant.errors import VespaQuantError
from vespa_quant.quantize.base import Calibration, Quantizer, encode, shared_sign_bits
from vespa_quant.vespa.naming import method_slots

StreamOrder = Literal["random", "given"]


def stream_order(n_docs: int, order: StreamOrder, seed: int) -> np.ndarray:
    """Arrival order of the documents: a seeded permutation, or the corpus file order."""
    if order == "random":
        return np.random.default_rng(seed).permutation(n_docs)
    if order == "given":
        return np.arange(n_docs)
    raise VespaQuantError(f"stream order {order!r}: expected 'random' or 'given'")


def prefix_size(fraction: float, n_docs: int) -> int:
    """Documents in the first ``fraction`` of a stream of ``n_docs`` (at least one)."""
    return max(1, min(n_docs, math.ceil(round(fraction * n_docs, 9))))


@dataclass
class SlotTable:
    """Which calibration every present document holds in each slot of one method, and which slot is active.

    ``recorded`` is what the manifest lists per slot: puts of new documents write every listed
    slot with its recorded calibration (a put replaces the whole document; Vespa's feeder,
    ``keep_calibrations``). ``held`` is the calibration *every* present document holds in a slot,
    or None when they hold a mix (or nothing). The transitions:

    * :meth:`after_put`: new documents arrived; a slot still holds one calibration only if the
      one it held is the one recorded for it (an inactive slot written since the last switch is
      recorded with its older calibration, so it becomes a mix, to be rewritten before use);
    * :meth:`written`: the inactive slot was rewritten for every present document and verified
      (:meth:`discard_inactive` when a write begins, so a failed one leaves it a mix);
    * :meth:`switched`: the inactive slot became active, and the manifest now records it.

    Calibration-free methods have slot ``a`` only, never written.
    """

    method: str
    slots: tuple[str, ...]
    active: str
    recorded: dict[str, Calibration]
    held: dict[str, Calibration | None]

    @classmethod
    def start(cls, method: Quantizer, calibration: Calibration) -> SlotTable:
        """An empty index: slot ``a`` records (and vacuously holds) ``calibration`` and is active."""
        slots = method_slots(method)
        return cls(method.name, slots, slots[0], {slots[0]: calibration},
                   {slot: calibration if slot == slots[0] else None for slot in slots})

    @property
    def inactive(self) -> str | None:
        others = [slot for slot in self.slots if slot != self.active]
        return others[0] if others else None

    def holding(self, calibration: Calibration) -> str | None:
        """The slot every present document holds ``calibration`` in (the active one first), if any."""
        for slot in sorted(self.slots, key=lambda s: s != self.active):
            held = self.held[slot]
            if held is not None and held.id == calibration.id:
                return slot
        return None

    def after_put(self) -> None:
        for slot in self.slots:
            held, recorded = self.held[slot], self.recorded.get(slot)
            if held is None or recorded is None or held.id != recorded.id:
                self.held[slot] = None

    def discard_inactive(self) -> None:
        """A write of the inactive slot has begun: until it is verified the slot holds a mix."""
        if self.inactive is not None:
            self.held[self.inactive] = None

    def written(self, calibration: Calibration) -> str:
        slot = self.inactive
        if slot is None:
            raise VespaQuantError(f"{self.method} needs no calibration: it has no inactive slot to write")
        self.held[slot] = calibration
        return slot

    def switched(self) -> None:
        slot = self.inactive
        held = None if slot is None else self.held[slot]
        if slot is None or held is None:
            raise VespaQuantError(f"{self.method}: the inactive slot holds no complete calibration to switch to")
        self.active, self.recorded[slot] = slot, held


class StreamIndex(Protocol):
    """Documents arriving in stream order, searchable per method through its code slots.

    ``corpus`` (given to :meth:`start`) is the run's corpus at the run's dim (its native dim);
    rows are corpus rows. :meth:`search` searches only the documents present and only with a
    calibration some slot holds (:meth:`table`); the runner writes a calibration into the
    inactive slot first when none does. A failed write raises and leaves the active slot, and so
    every query, as it was.
    """

    name: str

    def start(self, corpus: EmbeddedDataset, initial: Sequence[tuple[Quantizer, Calibration]]) -> None:
        """No documents yet; slot ``a`` of each method records its calibration and is active."""
        ...

    def add(self, rows: np.ndarray) -> None:
        """Index corpus rows ``rows``, the next arrivals, every slot encoded as the table records."""
        ...

    def table(self, method: Quantizer) -> SlotTable: ...

    def write_inactive(self, method: Quantizer, calibration: Calibration) -> None:
        """Re-encode the inactive slot of every present document with ``calibration``, and verify it."""
        ...

    def switch(self, method: Quantizer) -> None:
        """Make the (written) inactive slot the one queries read."""
        ...

    def search(self, method: Quantizer, calibration: Calibration, queries: np.ndarray, k: int,
               k1: int | None) -> Hits:
        """Top-``k`` corpus rows among the documents present (-1 pads), exhaustive or two-phase."""
        ...


def slot_holding(index: StreamIndex, method: Quantizer, calibration: Calibration) -> str:
    """The slot that holds ``calibration`` for every present document; raises when none does."""
    slot = index.table(method).holding(calibration)
    if slot is None:
        raise VespaQuantError(f"no slot of {method.name} holds calibration {calibration.id} for every "
                              f"present document: write it into the inactive slot first")
    return slot


class LocalStreamIndex:
    """:class:`StreamIndex` in process: the present rows, and codes encoded with a slot's calibration."""

    name = "local"

    def __init__(self) -> None:
        self.docs = np.zeros((0, 0), dtype=np.float32)
        self.present = np.zeros(0, dtype=np.int64)
        self.tables: dict[str, SlotTable] = {}

    def start(self, corpus: EmbeddedDataset, initial: Sequence[tuple[Quantizer, Calibration]]) -> None:
        self.docs = corpus.doc_vectors
        self.present = np.zeros(0, dtype=np.int64)
        self.tables = {method.name: SlotTable.start(method, calibration) for method, calibration in initial}

    def add(self, rows: np.ndarray) -> None:
        self.present = np.concatenate([self.present, np.asarray(rows, dtype=np.int64)])
        for table in self.tables.values():
            table.after_put()

    def table(self, method: Quantizer) -> SlotTable:
        return self.tables[method.name]

    def write_inactive(self, method: Quantizer, calibration: Calibration) -> None:
        self.tables[method.name].written(calibration)

    def switch(self, method: Quantizer) -> None:
        self.tables[method.name].switched()

    def search(self, method: Quantizer, calibration: Calibration, queries: np.ndarray, k: int,
               k1: int | None) -> Hits:
        slot_holding(self, method, calibration)
        docs = self.docs[self.present]
        signs = shared_sign_bits(docs) if k1 is not None or method.always_first_phase else None
        found = search(method, calibration, encode(method, docs, calibration), queries, k=k, k1=k1, signs=signs)
        return present_hits(found, self.present)


def present_hits(found: Hits, present: np.ndarray) -> Hits:
    """Hits over the present documents (rows into ``present``) as corpus rows; -1 stays -1."""
    rows = np.where(found.indices >= 0, present[np.clip(found.indices, 0, None)], -1)
    return Hits(rows, found.scores)
