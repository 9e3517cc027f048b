"""Reliability under a misbehaving Vespa: the fault-injecting fake (``fault_vespa.py``) against feed,
resume, recalibration and the Vespa search backend, on 200 generated documents.

Every server listens on 127.0.0.1, injects a seeded, bounded number of faults, and every run is
bounded by a short ``--timeout``-like policy, so each test ends by itself in a few seconds.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from fake_vespa import N_DOCS, FakeVespa, embedded, fake, serving  # noqa: F401
from fault_vespa import FaultPlan, silent_server

from vespa_quant.embed.embedded import EmbeddedDataset
from vespa_quant.errors import VespaError
from vespa_quant.evaluate.runner import LocalBackend, evaluate
from vespa_quant.quantize.base import Calibration, encode
from vespa_quant.quantize.registry import METHODS
from vespa_quant.vespa import feeder
from vespa_quant.vespa.backend import VespaBackend
from vespa_quant.vespa.client import HttpPolicy
from vespa_quant.vespa.feeder import feed, read_manifest
from vespa_quant.vespa.naming import calibration_field_name, field_name
from vespa_quant.vespa.recalibrate import recalibrate
from vespa_quant.vespa.transaction import commit_pending, current_revision
from vespa_quant.vespa.wire import decode_tensor_hex, vespa_document_id

DIM = 64
METHOD_NAMES = ("binary_asym", "int8_asym")
POLICY = HttpPolicy(timeout=10, request_timeout=2, max_attempts=12, backoff_base=0.002, backoff_cap=0.02)
"""Many fast retries: what a 25% fault rate needs, without slowing the tests."""
FAULTS = {429: 0.1, 500: 0.1, 503: 0.05}


def methods() -> list:
    return [METHODS[name] for name in METHOD_NAMES]


def assert_stored_as_manifest_says(fake: FakeVespa, embedded: EmbeddedDataset, calibration_dir: Path) -> None:
    """Vespa holds exactly the corpus, one document per id, with the manifest's calibration ids and the codes
    those calibrations give."""
    manifest = read_manifest(calibration_dir)
    doc_ids = embedded.dataset.doc_ids
    assert sorted(fake.docs) == sorted(vespa_document_id(d) for d in doc_ids)
    docs, _ = embedded.at_dim(DIM)
    for entry in manifest["calibrations"]:
        method = METHODS[entry["method"]]
        slot = entry["active_slot"]
        calibration = Calibration.load(calibration_dir / entry["slots"][slot]["file"])
        codes = encode(method, docs, calibration)
        for row, doc_id in enumerate(doc_ids):
            stored = fake.docs[vespa_document_id(doc_id)]
            assert stored["doc_id"] == doc_id
            if method.needs_calibration:
                assert stored[calibration_field_name(method.name, DIM, slot)] == calibration.id
            for spec in method.fields(DIM):
                cells = decode_tensor_hex(stored[field_name(method.name, DIM, spec.role, slot)]["values"], spec.cell_type)
                np.testing.assert_array_equal(cells, codes[spec.role][row])


def test_feed_under_random_faults_stores_every_document_once(embedded: EmbeddedDataset, tmp_path: Path) -> None:
    plan = FaultPlan(seed=3, statuses=FAULTS, drop=0.05, budget=400)
    with serving(plan) as fake:
        report = feed(fake.url, embedded, methods(), [DIM], calibration_dir=tmp_path, policy=POLICY, progress=False)
        assert report.complete, report.summary()
        assert_stored_as_manifest_says(fake, embedded, tmp_path)
    assert plan.injected[429] and plan.injected[500] and plan.injected[503] and plan.injected["drop"]
    assert report.sent.attempts > N_DOCS  # the faults were retried, not skipped
    assert not (tmp_path / "manifest.pending.json").exists()


def test_resume_sends_only_documents_vespa_lacks_or_holds_with_another_calibration(
        fake: FakeVespa, embedded: EmbeddedDataset, tmp_path: Path) -> None:
    doc_ids = embedded.dataset.doc_ids
    fake.permanent = {vespa_document_id(d): 507 for d in doc_ids[:30]}
    first = feed(fake.url, embedded, methods(), [DIM], calibration_dir=tmp_path, policy=POLICY, progress=False)
    assert not first.complete and first.failed_ids == list(doc_ids[:30])
    assert not (tmp_path / "manifest.json").exists()  # nothing promised that Vespa does not hold

    fake.permanent = {}
    field = calibration_field_name("int8_asym", DIM)
    for doc_id in doc_ids[100:110]:  # held, but with another calibration's codes
        fake.docs[vespa_document_id(doc_id)][field] = "0123456789abcdef"
    puts_before = fake.puts
    second = feed(fake.url, embedded, methods(), [DIM], calibration_dir=tmp_path, policy=POLICY, progress=False)
    assert second.complete, second.summary()
    assert fake.puts - puts_before == 40
    assert second.skipped_ids == [d for d in doc_ids if d not in set(doc_ids[:30]) | set(doc_ids[100:110])]
    assert_stored_as_manifest_says(fake, embedded, tmp_path)

    puts_before = fake.puts
    third = feed(fake.url, embedded, methods(), [DIM], calibration_dir=tmp_path, policy=POLICY, progress=False)
    assert third.complete and fake.puts == puts_before and len(third.skipped_ids) == N_DOCS  # nothing to send


def _fed(fake: FakeVespa, embedded: EmbeddedDataset, calibration_dir: Path) -> bytes:
    fake.corpus_order = list(embedded.dataset.doc_ids)
    assert feed(fake.url, embedded, methods(), [DIM], calibration_dir=calibration_dir, policy=POLICY,
                progress=False).complete
    return (calibration_dir / "manifest.json").read_bytes()


def acknowledged_but_not_stored(fake: FakeVespa, embedded: EmbeddedDataset, calibration_dir: Path,
                                mutate=lambda: None) -> None:
    """A fresh feed (other calibrations) whose every put is answered 200 and dropped must leave the previous
    manifest byte for byte, and say which documents Vespa does not hold."""
    before = _fed(fake, embedded, calibration_dir)
    mutate()
    fake.unstored = {"*"}
    report = feed(fake.url, embedded, methods(), [DIM], rotation="qr", seed=1, calibration_dir=calibration_dir,
                  policy=POLICY, progress=False)
    fake.unstored = None
    assert (calibration_dir / "manifest.json").read_bytes() == before, "the manifest switched before verification"
    assert not report.complete and report.sent.n_ok == N_DOCS
    assert report.unverified_ids == list(embedded.dataset.doc_ids)
    assert "200/200" not in report.summary() and "acknowledged but not held" in report.summary()


def test_an_acknowledged_but_unstored_feed_leaves_the_previous_manifest(fake: FakeVespa, embedded: EmbeddedDataset,
                                                                       tmp_path: Path) -> None:
    acknowledged_but_not_stored(fake, embedded, tmp_path)
    assert (tmp_path / "feed-status.json").is_file() and (tmp_path / "manifest.pending.json").is_file()


def test_the_suite_catches_a_manifest_switched_before_verification(fake: FakeVespa, embedded: EmbeddedDataset,
                                                                  tmp_path: Path, monkeypatch) -> None:
    """Mutation: switch the manifest as soon as the plan is written (the order of issue 8's bug); the test
    above must then fail."""
    write_pending = feeder.write_pending

    def plan_and_switch(calibration_dir: Path, manifest: dict) -> Path:
        written = write_pending(calibration_dir, manifest)
        commit_pending(calibration_dir, current_revision(calibration_dir))
        return written

    with pytest.raises(AssertionError, match="the manifest switched before verification"):
        acknowledged_but_not_stored(fake, embedded, tmp_path,
                                    mutate=lambda: monkeypatch.setattr(feeder, "write_pending", plan_and_switch))


def test_an_all_failed_feed_keeps_a_recalibrated_manifest(fake: FakeVespa, embedded: EmbeddedDataset,
                                                          tmp_path: Path) -> None:
    """Issue 8: a feed of dims the deployed schema lacks replaced a manifest with slot b active."""
    _fed(fake, embedded, tmp_path)
    docs, _ = embedded.at_dim(DIM)
    from vespa_quant.quantize.base import calibrate

    assert recalibrate(fake.url, embedded, METHODS["int8_asym"], DIM, tmp_path, policy=POLICY, progress=False,
                       new_calibration=calibrate(METHODS["int8_asym"], docs[:50])).switched
    before = (tmp_path / "manifest.json").read_bytes()
    report = feed(fake.url, embedded, methods(), [48], calibration_dir=tmp_path, policy=POLICY, progress=False)
    assert not report.complete and len(report.failed_ids) == N_DOCS
    assert report.errors[report.failed_ids[0]].startswith("HTTP 400: No field")
    assert (tmp_path / "manifest.json").read_bytes() == before
    assert read_manifest(tmp_path)["calibrations"][1]["active_slot"] == "b"


def test_a_stalled_server_stops_the_feed_within_its_timeout(embedded: EmbeddedDataset, tmp_path: Path) -> None:
    plan = FaultPlan(stall=1.0, stall_seconds=3.0, paths=("/document/v1/vespaquant/doc/docid/",), budget=60)
    policy = HttpPolicy(timeout=1.0, request_timeout=0.3, max_attempts=3, backoff_base=0.01, backoff_cap=0.05)
    with serving(plan) as fake:
        started = time.monotonic()
        report = feed(fake.url, embedded, methods(), [DIM], calibration_dir=tmp_path, policy=policy,
                      concurrency=4, progress=False)
        elapsed = time.monotonic() - started
    assert not report.complete and "acknowledged nothing for 1 s" in (report.sent.stop_reason or "")
    assert elapsed < 6, elapsed
    assert report.sent.unsent_ids and not (tmp_path / "manifest.json").exists()


def test_a_server_that_never_answers_fails_within_the_timeout(embedded: EmbeddedDataset, tmp_path: Path) -> None:
    with silent_server() as url:
        started = time.monotonic()
        with pytest.raises(VespaError, match=rf"Vespa at {url} is not ready within 1 s \(--timeout\): {url}/state/v1/"
                                             r"health no answer within 0\.\d+ s"):
            feed(url, embedded, methods(), [DIM], calibration_dir=tmp_path, policy=HttpPolicy(timeout=1.0),
                 progress=False)
        assert time.monotonic() - started < 2.5
    assert not (tmp_path / "manifest.json").exists()


def test_recalibration_under_faults_switches_only_when_every_document_holds_the_new_id(
        fake: FakeVespa, embedded: EmbeddedDataset, tmp_path: Path) -> None:
    from vespa_quant.quantize.base import calibrate

    _fed(fake, embedded, tmp_path)
    docs, _ = embedded.at_dim(DIM)
    method = METHODS["int8_asym"]
    new = calibrate(method, docs[:40])
    fake.faults = FaultPlan(seed=5, statuses=FAULTS, drop=0.05, budget=200)
    report = recalibrate(fake.url, embedded, method, DIM, tmp_path, new_calibration=new, policy=POLICY,
                         progress=False)
    assert report.switched and fake.faults.injected.total() > 20
    assert all(fields[calibration_field_name(method.name, DIM, "b")] == new.id for fields in fake.docs.values())

    fake.faults = None
    before = (tmp_path / "manifest.json").read_bytes()
    lost = embedded.dataset.doc_ids[7]
    fake.unstored = {vespa_document_id(lost)}
    again = recalibrate(fake.url, embedded, method, DIM, tmp_path, new_calibration=calibrate(method, docs[:60]),
                        policy=POLICY, progress=False)
    assert not again.switched and again.lacking_ids == [lost]  # acknowledged, not applied, named
    assert (tmp_path / "manifest.json").read_bytes() == before


def test_vespa_search_under_faults_equals_the_local_engine(fake: FakeVespa, embedded: EmbeddedDataset,
                                                           tmp_path: Path) -> None:
    _fed(fake, embedded, tmp_path)
    fake.faults = FaultPlan(seed=11, statuses=FAULTS, drop=0.05, paths=("/search/",), budget=100)
    backend = VespaBackend(fake.url, embedded.dataset.doc_ids, calibration_dir=tmp_path, policy=POLICY)
    on_vespa = evaluate(embedded, methods(), [DIM], backend=backend, n_resamples=20, show_progress=False)
    local = evaluate(embedded, methods(), [DIM], backend=LocalBackend(), n_resamples=20, show_progress=False)
    assert fake.faults.injected.total() > 5
    for ours, theirs in zip(on_vespa.rows, local.rows):
        assert ours["ndcg_at_10"] == pytest.approx(theirs["ndcg_at_10"], abs=1e-9)


@pytest.mark.parametrize("answer, expected", [
    ((200, {"hits": []}), r'answered \{"hits": \[\]\}, expected \{"root": \{"children"'),
    ((200, {"root": {"children": [{"relevance": "high", "fields": {"doc_id": "d1"}}]}}), r"answered a hit .*relevance"),
    ((200, {"root": {"children": [{"relevance": 1.0}]}}), r'answered a hit \{"relevance": 1\.0\}, expected'),
    ((400, {"root": {"errors": [{"summary": "Invalid query", "message": "bad"}]}}), r"failed with HTTP 400: Invalid query: bad"),
])
def test_search_answers_of_the_wrong_shape_are_one_line_errors(fake: FakeVespa, embedded: EmbeddedDataset,
                                                               tmp_path: Path, answer, expected) -> None:
    _fed(fake, embedded, tmp_path)
    fake.search_answer = answer
    backend = VespaBackend(fake.url, embedded.dataset.doc_ids, calibration_dir=tmp_path, policy=POLICY)
    with pytest.raises(VespaError, match=rf"query \d+ \(int8_asym_64_exhaustive\).* {fake.url}/search/ {expected}") as raised:
        evaluate(embedded, [METHODS["int8_asym"]], [DIM], backend=backend, n_resamples=5, show_progress=False)
    assert "\n" not in str(raised.value)


def test_backoff_is_capped_exponential_with_full_jitter() -> None:
    import random

    policy = HttpPolicy(backoff_base=0.1, backoff_cap=1.0)
    rng = random.Random(0)
    for attempt, ceiling in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (12, 1.0)]:
        waits = [policy.backoff(attempt, rng) for _ in range(200)]
        assert 0 <= min(waits) < ceiling / 4 and ceiling * 3 / 4 < max(waits) <= ceiling
    assert HttpPolicy(timeout=1.0, request_timeout=10).attempt_timeout == 0.5  # two attempts fit the deadline
    with pytest.raises(VespaError, match="timeouts must be positive"):
        HttpPolicy(timeout=0)


def test_waiting_for_a_refused_port_gives_up_after_the_grace_not_the_deadline() -> None:
    from fake_vespa import free_port

    from vespa_quant.vespa.deploy import wait_until_ready

    closed = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(VespaError, match=rf"config server {closed}: not listening; start Vespa with `vespa-quant up`"):
        wait_until_ready(query_url=None, config_url=closed, timeout=60, interval=0.05, progress=None,
                         refused_grace=0.3)
    assert time.monotonic() - started < 2
