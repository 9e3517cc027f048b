"""The streaming index of a drift run: slot bookkeeping, and checkpoint NDCG over the documents present."""

from __future__ import annotations

import numpy as np
import pytest
from test_drift import synthetic_embedded

from vespa_quant.drift import run_drift
from vespa_quant.drift.stream import LocalStreamIndex, SlotTable, prefix_size, stream_order
from vespa_quant.engine.local import Hits, search
from vespa_quant.errors import VespaQuantError
from vespa_quant.evaluate.runner import NDCG, score_hits
from vespa_quant.quantize.base import calibrate, encode
from vespa_quant.quantize.registry import METHODS

LLOYD = METHODS["lloyd_max_gauss"]


def test_slot_table_follows_puts_writes_and_switches(generated) -> None:
    docs, _ = generated
    frozen, fresh, later = (calibrate(LLOYD, docs[:n]) for n in (20, 60, 120))
    table = SlotTable.start(LLOYD, frozen)
    assert (table.active, table.inactive, table.holding(frozen), table.holding(fresh)) == ("a", "b", "a", None)
    table.after_put()
    assert table.holding(frozen) == "a"  # new documents get the recorded calibration of slot a
    assert table.written(fresh) == "b" and table.holding(fresh) == "b"
    table.after_put()  # not switched: slot b is recorded with nothing, so new documents leave it a mix
    assert table.holding(fresh) is None and table.holding(frozen) == "a"
    with pytest.raises(VespaQuantError, match="no complete calibration to switch to"):
        table.switched()
    table.written(fresh)
    table.switched()
    assert (table.active, table.recorded["b"].id) == ("b", fresh.id)
    table.after_put()  # both slots are recorded now: each keeps what it holds
    assert (table.holding(fresh), table.holding(frozen)) == ("b", "a")
    table.written(later)
    assert (table.holding(later), table.holding(frozen)) == ("a", None)

    free = SlotTable.start(METHODS["float32"], calibrate(METHODS["float32"], docs))
    assert free.slots == ("a",) and free.inactive is None
    with pytest.raises(VespaQuantError, match="float32 needs no calibration"):
        free.written(frozen)


def test_local_index_searches_only_present_documents_and_held_calibrations() -> None:
    corpus = synthetic_embedded(0.0, n_docs=100, n_queries=10)
    frozen, other = calibrate(LLOYD, corpus.doc_vectors[:30]), calibrate(LLOYD, corpus.doc_vectors[:70])
    index = LocalStreamIndex()
    index.start(corpus, [(LLOYD, frozen)])
    arrived = np.array([5, 50, 7, 90, 33])
    index.add(arrived)
    hits = index.search(LLOYD, frozen, corpus.query_vectors, 10, None)
    assert hits.indices.shape == (10, 5) and set(hits.indices.ravel()) == set(arrived)
    with pytest.raises(VespaQuantError, match="write it into the inactive slot first"):
        index.search(LLOYD, other, corpus.query_vectors, 10, None)
    index.write_inactive(LLOYD, other)
    two_phase = index.search(LLOYD, other, corpus.query_vectors, 3, 4)
    assert set(two_phase.indices.ravel()) <= set(arrived)


def test_checkpoint_ndcg_is_over_the_documents_present() -> None:
    """Judged documents that have not arrived are misses: step NDCG is the engine's on the first n only."""
    served = synthetic_embedded(2.5, n_docs=300, n_queries=40)
    report = run_drift(served, [LLOYD], [0.1], order="random", seed=3, steps=3, n_resamples=50)
    docs, queries = served.at_dim(served.native_dim)
    arrival = stream_order(len(docs), "random", 3)
    frozen = calibrate(LLOYD, docs[arrival][:prefix_size(0.1, len(docs))])

    def present_ndcg(calibration, n: int) -> float:
        rows = arrival[:n]
        found = search(LLOYD, calibration, encode(LLOYD, docs[rows], calibration), queries, k=100)
        return float(score_hits(served, Hits(rows[found.indices], found.scores))[NDCG].mean())

    for row in report.step_rows:
        n = row["n_seen"]
        assert row["frozen_ndcg_at_10"] == pytest.approx(present_ndcg(frozen, n), abs=1e-12)
        assert row["fresh_ndcg_at_10"] == pytest.approx(present_ndcg(calibrate(LLOYD, docs[arrival][:n]), n), abs=1e-12)
    first = report.step_rows[0]
    arrived = {served.dataset.doc_ids[i] for i in arrival[:first["n_seen"]]}
    judged_present = np.mean([bool(arrived & set(judged)) for judged in served.dataset.qrels.values()])
    assert first["frozen_ndcg_at_10"] <= judged_present < 1.0  # at most the queries whose relevant doc arrived
    assert report.step_rows[-1]["n_seen"] == len(docs)  # the last checkpoint is the whole corpus
