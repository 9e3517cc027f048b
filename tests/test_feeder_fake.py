"""The feeder, the recalibrator and the Vespa backend against the fake Vespa (``fake_vespa.py``)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fake_vespa import DIMS, N_DOCS, FakeVespa, embedded, fake, free_port, generated_corpus, schema_fields, serving  # noqa: F401

from vespa_quant.embed.embedded import EmbeddedDataset
from vespa_quant.engine.local import Hits
from vespa_quant.engine.local import search as local_search
from vespa_quant.errors import VespaError
from vespa_quant.evaluate.runner import LocalBackend, evaluate
from vespa_quant.quantize.base import Calibration, calibrate, doc_view, encode, query_view, shared_sign_bits
from vespa_quant.quantize.registry import METHODS
from vespa_quant.quantize.scoring import reference_score
from vespa_quant.vespa.backend import VespaBackend
from vespa_quant.vespa.client import HttpPolicy
from vespa_quant.vespa.feeder import feed, read_manifest
from vespa_quant.vespa.manifest import active_calibration
from vespa_quant.vespa.naming import calibration_field_name
from vespa_quant.vespa.recalibrate import recalibrate, switch_active_slot, verify_inactive_slot, write_inactive_slot
from vespa_quant.vespa.wire import decode_tensor_hex

FAST = HttpPolicy(timeout=10, request_timeout=5, max_attempts=3, backoff_base=0.001, backoff_cap=0.01)
"""Retries without noticeable waits, so failure paths stay fast."""


def full_scores(method, calibration, codes, queries) -> np.ndarray:
    return reference_score(query_view(method, queries, calibration), doc_view(method, codes, calibration))


def test_feed_writes_every_document_calibration_and_manifest(fake: FakeVespa, embedded: EmbeddedDataset,
                                                             tmp_path: Path) -> None:
    methods = list(METHODS.values())
    report = feed(fake.url, embedded, methods, DIMS, calibration_dir=tmp_path, progress=False)
    n = len(embedded.dataset.doc_ids)
    assert (report.n_fed, report.failed_ids, report.errors, report.count_in_vespa) == (n, [], {}, n)
    assert report.complete and report.n_docs == n
    manifest = read_manifest(tmp_path)
    assert {(e["method"], e["dim"]) for e in manifest["calibrations"]} == {(m.name, d) for m in methods for d in DIMS}
    for entry in manifest["calibrations"]:
        assert entry["active_slot"] == "a" and set(entry["slots"]) == {"a"}
        record = entry["slots"]["a"]
        assert Calibration.load(tmp_path / record["file"]).id == record["id"]
        assert record["file"] == f"{entry['method']}_{entry['dim']}_{record['id']}.npz"
        assert report.calibrations[(entry["method"], entry["dim"])].id == record["id"]
    stored = {fields["doc_id"]: fields for fields in fake.docs.values()}
    assert set(stored) == set(embedded.dataset.doc_ids)
    assert "a/b" not in fake.docs and ".." not in fake.docs  # sent under escaped ids
    docs, _ = embedded.at_dim(32)
    calibration = calibrate(METHODS["lloyd_max_empir"], docs)
    codes = encode(METHODS["lloyd_max_empir"], docs, calibration)
    row = embedded.dataset.doc_ids.index("a/b")
    assert np.array_equal(decode_tensor_hex(stored["a/b"]["lloyd_max_empir_32_lo"]["values"], "int8"), codes["lo"][row])
    ids = {calibration_field_name(e["method"], e["dim"]): e["slots"]["a"]["id"] for e in manifest["calibrations"]
           if METHODS[e["method"]].needs_calibration}
    assert "lloyd_max_empir_32_calibration" in ids and "float32_32_calibration" not in ids
    for fields in stored.values():  # each document records the calibration of each of its codes
        assert {name: fields[name] for name in ids} == ids
        assert not any(name.endswith("_b") for name in fields)  # a fresh feed writes slot a only

    again = feed(fake.url, embedded, methods[:2], DIMS, calibration_dir=tmp_path / "again", progress=False)
    assert again.count_in_vespa == n and again.complete  # puts overwrite: a re-run never duplicates


def test_feed_reports_failures_and_retries_transient_ones(fake: FakeVespa, embedded: EmbeddedDataset,
                                                          tmp_path: Path) -> None:
    fake.permanent = {"d10": 400, "~YS9i": 507}  # "~YS9i" is how "a/b" travels
    fake.transient = {"d20": 2, "d30": 99}
    methods = [METHODS["float32"], METHODS["binary_asym"]]
    report = feed(fake.url, embedded, methods, DIMS, calibration_dir=tmp_path, policy=FAST, progress=False)
    n = len(embedded.dataset.doc_ids)
    assert report.failed_ids == ["a/b", "d10", "d30"]  # corpus order
    assert report.errors["d10"] == "HTTP 400: fake rejects d10"
    assert report.errors["a/b"].startswith("HTTP 507")
    assert report.errors["d30"] == "HTTP 503: fake is overloaded (after 3 attempts)"
    assert report.n_fed == n - 3 and report.count_in_vespa == n - 3 and not report.complete
    assert not (tmp_path / "manifest.json").exists() and (tmp_path / "manifest.pending.json").is_file()
    assert fake.transient["d30"] == 99 - 3  # first round + 2 retry rounds


def test_feed_names_the_url_when_nothing_listens(embedded: EmbeddedDataset, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(VespaError, match=re.escape(f"nothing listens on {url} (health check): start Vespa with "
                                                   "`vespa-quant up`")):
        feed(url + "/", embedded, [METHODS["float32"]], DIMS, calibration_dir=tmp_path, progress=False)
    assert not (tmp_path / "manifest.json").exists()


@pytest.fixture(scope="module")
def fed(embedded: EmbeddedDataset, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeVespa, Path]]:
    """One fake holding every method at every dim, for tests that only search."""
    with serving() as state:
        state.corpus_order = list(embedded.dataset.doc_ids)
        calibration_dir = tmp_path_factory.mktemp("calibrations")
        feed(state.url, embedded, list(METHODS.values()), DIMS, calibration_dir=calibration_dir, progress=False)
        yield state, calibration_dir


def assert_same_ranking(found: Hits, local: Hits, full_scores: np.ndarray) -> None:
    """Equal score sequences, each hit's score is its row's true score, equal sets above ties."""
    np.testing.assert_allclose(found.scores, local.scores, rtol=1e-5, atol=1e-6)
    valid = found.indices >= 0
    np.testing.assert_array_equal(valid, local.indices >= 0)
    rows = np.nonzero(valid)
    np.testing.assert_allclose(found.scores[rows], full_scores[rows[0], found.indices[rows]], rtol=1e-5, atol=1e-6)
    for i in range(len(found.indices)):
        # rows clear of the k-th score by more than the score tolerance above: no near-tie can swap them
        boundary = local.scores[i][valid[i]].min()
        margin = 1e-5 * abs(boundary) + 1e-6
        above = lambda hits: set(hits.indices[i][hits.scores[i] > boundary + margin].tolist())  # noqa: E731
        assert above(found) == above(local)


ONE_PER_SHAPE = ("int8_asym", "binary_asym", "lloyd_max_gauss")
"""A vector, a sign-bit and a bit-plane method in the default run; every method runs with
``-m integration``."""


@pytest.mark.parametrize("k1", [None, 50])
@pytest.mark.parametrize("name", [name if name in ONE_PER_SHAPE else pytest.param(name, marks=pytest.mark.integration)
                                  for name in METHODS])
def test_vespa_backend_hits_equal_the_local_engine(fed: tuple[FakeVespa, Path], embedded: EmbeddedDataset,
                                                   name: str, k1: int | None) -> None:
    fake, calibration_dir = fed
    method = METHODS[name]
    docs, queries = embedded.at_dim(64)
    calibration = calibrate(method, docs)
    codes = encode(method, docs, calibration)
    backend = VespaBackend(fake.url, embedded.dataset.doc_ids, calibration_dir=calibration_dir)
    found = backend.search(method, calibration, codes, queries, 20, k1=k1)
    local = local_search(method, calibration, codes, queries, k=20, k1=k1, signs=shared_sign_bits(docs))
    assert_same_ranking(found.hits, local, full_scores(method, calibration, codes, queries))
    assert found.latencies_ms.shape == (len(queries),) and np.all(found.latencies_ms > 0)


def test_evaluate_on_vespa_equals_local(fed: tuple[FakeVespa, Path], embedded: EmbeddedDataset) -> None:
    fake, calibration_dir = fed
    methods = [METHODS["float32"], METHODS["binary_hamming"], METHODS["quaternary_asym"]]
    backend = VespaBackend(fake.url, embedded.dataset.doc_ids, calibration_dir=calibration_dir)
    on_vespa = evaluate(embedded, methods, DIMS, backend=backend, k1=100, n_resamples=20, show_progress=False)
    local = evaluate(embedded, methods, DIMS, backend=LocalBackend(), k1=100, n_resamples=20, show_progress=False)
    for ours, theirs in zip(on_vespa.rows, local.rows):
        assert (ours["method"], ours["dim"]) == (theirs["method"], theirs["dim"])
        assert ours["ndcg_at_10"] == pytest.approx(theirs["ndcg_at_10"], abs=1e-9)
        assert ours["backend"] == "vespa" and ours["latency_ms_p50"] > 0


def test_vespa_backend_detects_calibration_mismatch(fake: FakeVespa, embedded: EmbeddedDataset,
                                                    tmp_path: Path) -> None:
    method = METHODS["int8_asym"]
    fed = tmp_path
    feed(fake.url, embedded, [method], (64,), calibration_dir=fed, progress=False)
    docs, queries = embedded.at_dim(64)
    calibration = calibrate(method, docs)
    fed_id = calibration.id
    other = calibrate(method, docs, seed=1)  # a different calibration id
    backend = VespaBackend(fake.url, embedded.dataset.doc_ids, calibration_dir=fed)
    with pytest.raises(VespaError, match=f"the active slot a of int8_asym@64 holds codes of calibration {fed_id} "
                                         rf"\(int8_asym_64_{fed_id}.npz\), this query uses calibration {other.id}: "
                                         "query with that calibration, or re-run vespa-quant feed / recalibrate"):
        backend.search(method, other, encode(method, docs, other), queries, 10)

    field = calibration_field_name("int8_asym", 64)
    for fields in fake.docs.values():
        fields[field] = "0123456789abcdef"  # documents from an older feed
    with pytest.raises(VespaError, match=r"query 0: document '.*' holds codes of calibration 0123456789abcdef in "
                                         f"slot a of int8_asym@64, this query uses calibration {fed_id}: "
                                         "re-run vespa-quant feed / recalibrate"):
        backend.search(method, calibration, encode(method, docs, calibration), queries, 10)
    for fields in fake.docs.values():
        fields[field] = fed_id
    fake.docs[next(iter(fake.docs))][field] = "fedcba9876543210"  # one stale document
    without_manifest = VespaBackend(fake.url, embedded.dataset.doc_ids)
    with pytest.raises(VespaError, match=f"holds codes of calibration fedcba9876543210 in slot a of int8_asym@64, "
                                         f"this query uses calibration {fed_id}"):
        without_manifest.search(method, calibration, encode(method, docs, calibration), queries, len(docs))


def test_vespa_backend_unknown_ids_missing_methods_and_retries(fake: FakeVespa, embedded: EmbeddedDataset,
                                                               tmp_path: Path) -> None:
    method = METHODS["float32"]
    feed(fake.url, embedded, [method], (64,), calibration_dir=tmp_path / "fed", progress=False)
    docs, queries = embedded.at_dim(64)
    calibration = calibrate(method, docs)
    codes = encode(method, docs, calibration)
    renamed = ["x" + doc_id for doc_id in embedded.dataset.doc_ids]
    with pytest.raises(VespaError, match=r"returned document '.*', which is not one of the 200 corpus ids"):
        VespaBackend(fake.url, renamed).search(method, calibration, codes, queries, 10)

    fake.search_unavailable = 2
    found = VespaBackend(fake.url, embedded.dataset.doc_ids, policy=FAST).search(method, calibration, codes,
                                                                                queries[:3], 10)
    assert np.all(found.hits.indices >= 0)
    fake.search_unavailable = 10
    with pytest.raises(VespaError, match=r"failed with HTTP 503: Unavailable: fake"):
        VespaBackend(fake.url, embedded.dataset.doc_ids, policy=FAST, concurrency=1).search(
            method, calibration, codes, queries[:1], 10)

    subset = tmp_path / "subset"
    feed(fake.url, embedded, [METHODS["binary_asym"]], (64,), calibration_dir=subset, progress=False)
    with pytest.raises(VespaError, match=r"has no calibration for float32@64: re-run vespa-quant feed"):
        VespaBackend(fake.url, embedded.dataset.doc_ids, calibration_dir=subset).search(
            method, calibration, codes, queries, 10)
    with pytest.raises(VespaError, match="nothing listens"):
        VespaBackend(f"http://127.0.0.1:{free_port()}", embedded.dataset.doc_ids, policy=FAST).search(
            method, calibration, codes, queries[:1], 10)


# --- recalibration: blue/green code slots ------------------------------------------------------

def _fed_slots(fake: FakeVespa, embedded: EmbeddedDataset, methods: list, calibration_dir: Path) -> None:
    fake.corpus_order = list(embedded.dataset.doc_ids)
    report = feed(fake.url, embedded, methods, (64,), calibration_dir=calibration_dir, progress=False)
    assert report.complete


def _entry(calibration_dir: Path, method: str, dim: int = 64) -> dict:
    return next(e for e in read_manifest(calibration_dir)["calibrations"] if (e["method"], e["dim"]) == (method, dim))


def _same_hits(found, expected) -> None:
    np.testing.assert_array_equal(found.hits.indices, expected.hits.indices)
    np.testing.assert_array_equal(found.hits.scores, expected.hits.scores)


def test_recalibration_writes_only_the_inactive_slot_and_switches_after_verification(
        fake: FakeVespa, embedded: EmbeddedDataset, tmp_path: Path) -> None:
    method = METHODS["lloyd_max_gauss"]
    _fed_slots(fake, embedded, [method, METHODS["int8_asym"], METHODS["float32"]], tmp_path)
    docs, queries = embedded.at_dim(64)
    old, new = calibrate(method, docs), calibrate(method, docs[:40])
    assert old.id != new.id
    old_codes, new_codes = encode(method, docs, old), encode(method, docs, new)
    backend = VespaBackend(fake.url, embedded.dataset.doc_ids, calibration_dir=tmp_path)
    before = backend.search(method, old, old_codes, queries, 20)
    stored_before = {vespa_id: dict(fields) for vespa_id, fields in fake.docs.items()}
    manifest_before = (tmp_path / "manifest.json").read_bytes()

    during: list = []

    def query_mid_write(n_updates: int) -> None:  # a query while half the documents are rewritten
        if n_updates == N_DOCS // 2:
            try:
                during.append(backend.search(method, old, old_codes, queries, 20))
            except Exception as exc:  # noqa: BLE001 - surfaced by the assertion below
                during.append(exc)

    fake.after_update = query_mid_write
    written = write_inactive_slot(fake.url, embedded, method, 64, tmp_path, new_calibration=new, progress=False)
    fake.after_update = None
    assert written.ok and (written.slot, written.active_slot, written.n_updated) == ("b", "a", N_DOCS)

    slot_b = {"lloyd_max_gauss_64_calibration_b", "lloyd_max_gauss_64_hi_b", "lloyd_max_gauss_64_lo_b"}
    assert len(fake.updates) == N_DOCS and set(fake.update_queries) == {"create=false"}
    assert all(set(operations) == slot_b for _, operations in fake.updates)  # no other field is touched
    row = embedded.dataset.doc_ids.index("a/b")
    for vespa_id, fields in fake.docs.items():
        assert {k: v for k, v in fields.items() if k not in slot_b} == stored_before[vespa_id]
        assert fields["lloyd_max_gauss_64_calibration_b"] == new.id
    hi_b = decode_tensor_hex(fake.docs["~YS9i"]["lloyd_max_gauss_64_hi_b"]["values"], "int8")
    assert np.array_equal(hi_b, new_codes["hi"][row])
    assert (tmp_path / "manifest.json").read_bytes() == manifest_before  # nothing switched yet

    assert len(during) == 1 and not isinstance(during[0], Exception), during
    _same_hits(during[0], before)  # during the write: the old slot, untouched
    _same_hits(backend.search(method, old, old_codes, queries, 20), before)  # written, not yet switched
    with pytest.raises(VespaError, match=f"the active slot a of lloyd_max_gauss@64 holds codes of calibration "
                                         f"{old.id} .* this query uses calibration {new.id}"):
        backend.search(method, new, new_codes, queries, 20)

    check = verify_inactive_slot(fake.url, written)
    assert check.ok and (check.n_with_id, check.n_in_vespa, check.n_docs) == (N_DOCS, N_DOCS, N_DOCS)
    assert (tmp_path / "manifest.json").read_bytes() == manifest_before  # verifying switches nothing
    switch_active_slot(tmp_path, written, check)

    entry = _entry(tmp_path, "lloyd_max_gauss")
    assert entry["active_slot"] == "b"
    assert entry["slots"]["a"] == {"id": old.id, "file": f"lloyd_max_gauss_64_{old.id}.npz"}
    assert entry["slots"]["b"] == {"id": new.id, "file": f"lloyd_max_gauss_64_{new.id}.npz"}
    assert active_calibration(tmp_path, "lloyd_max_gauss", 64).id == new.id
    after = backend.search(method, new, new_codes, queries, 20)
    local = local_search(method, new, new_codes, queries, k=20)
    assert_same_ranking(after.hits, local, full_scores(method, new, new_codes, queries))
    with pytest.raises(VespaError, match=f"active slot b of lloyd_max_gauss@64 holds codes of calibration {new.id}"):
        backend.search(method, old, old_codes, queries, 20)
    other = METHODS["int8_asym"]  # other methods are untouched and still answer from their slot a
    other_cal = calibrate(other, docs)
    assert _entry(tmp_path, "int8_asym")["active_slot"] == "a"
    backend.search(other, other_cal, encode(other, docs, other_cal), queries, 10)


def test_recalibrate_switches_slots_back_and_forth(fake: FakeVespa, embedded: EmbeddedDataset, tmp_path: Path) -> None:
    method = METHODS["int8_asym"]
    _fed_slots(fake, embedded, [method], tmp_path)
    docs, queries = embedded.at_dim(64)
    fed = calibrate(method, docs)
    first = recalibrate(fake.url, embedded, method, 64, tmp_path, new_calibration=calibrate(method, docs[:60]),
                        progress=False)
    assert first.switched and (first.old_slot, first.new_slot, first.active_slot) == ("a", "b", "b")
    assert (first.old_calibration_id, first.n_with_new_id, first.count_in_vespa) == (fed.id, N_DOCS, N_DOCS)
    assert all(set(ops) == {"int8_asym_64_calibration_b", "int8_asym_64_codes_b"} for _, ops in fake.updates)

    fake.updates.clear()
    second = recalibrate(fake.url, embedded, method, 64, tmp_path, progress=False)  # calibrates on the corpus
    assert second.switched and (second.old_slot, second.new_slot) == ("b", "a")
    assert second.new_calibration_id == fed.id and second.calibration.id == fed.id
    assert len(fake.updates) == N_DOCS
    assert all(set(ops) == {"int8_asym_64_calibration", "int8_asym_64_codes"} for _, ops in fake.updates)
    codes = encode(method, docs, fed)
    found = VespaBackend(fake.url, embedded.dataset.doc_ids, calibration_dir=tmp_path).search(
        method, fed, codes, queries, 10)
    local = local_search(method, fed, codes, queries, k=10)
    assert_same_ranking(found.hits, local, full_scores(method, fed, codes, queries))


def test_a_failed_update_leaves_the_active_slot_unchanged(fake: FakeVespa, embedded: EmbeddedDataset,
                                                         tmp_path: Path) -> None:
    method = METHODS["binary_median_asym"]
    _fed_slots(fake, embedded, [method], tmp_path)
    docs, queries = embedded.at_dim(64)
    old, new = calibrate(method, docs), calibrate(method, docs[:30])
    manifest_before = (tmp_path / "manifest.json").read_bytes()
    fake.failing_updates = {"d7": 500}
    fake.transient_updates = {"d8": 2}
    report = recalibrate(fake.url, embedded, method, 64, tmp_path, new_calibration=new, policy=FAST, progress=False)
    assert not report.switched and report.active_slot == "a"
    assert report.failed_ids == ["d7"]
    assert report.errors["d7"] == "HTTP 500: fake rejects the update of d7 (after 3 attempts)"  # 500 is retried
    assert report.n_updated == N_DOCS - 1 and report.n_with_new_id is None
    assert fake.transient_updates["d8"] == 0  # a transient failure is sent again
    assert (tmp_path / "manifest.json").read_bytes() == manifest_before
    codes = encode(method, docs, old)
    found = VespaBackend(fake.url, embedded.dataset.doc_ids, calibration_dir=tmp_path).search(
        method, old, codes, queries, 10)  # queries keep reading slot a
    assert_same_ranking(found.hits, local_search(method, old, codes, queries, k=10),
                        full_scores(method, old, codes, queries))

    fake.failing_updates = {"d7": 400}
    written = write_inactive_slot(fake.url, embedded, method, 64, tmp_path, new_calibration=new, progress=False)
    with pytest.raises(VespaError, match=r"binary_median_asym@64: 1 of 200 updates of slot b failed, e\.g\. d7 "
                                         r"\(HTTP 400: fake rejects the update of d7\); the active slot stays a"):
        switch_active_slot(tmp_path, written, verify_inactive_slot(fake.url, written))
    assert (tmp_path / "manifest.json").read_bytes() == manifest_before


def test_verification_catches_what_acknowledgements_miss(fake: FakeVespa, embedded: EmbeddedDataset,
                                                         tmp_path: Path) -> None:
    method = METHODS["quaternary_asym"]
    _fed_slots(fake, embedded, [method], tmp_path)
    docs, _ = embedded.at_dim(64)
    new = calibrate(method, docs[:50])
    manifest_before = (tmp_path / "manifest.json").read_bytes()
    missing = fake.docs.pop("d5")  # Vespa acknowledges an update of a missing document with 200
    report = recalibrate(fake.url, embedded, method, 64, tmp_path, new_calibration=new, progress=False)
    assert report.n_updated == N_DOCS and not report.failed_ids
    assert not report.switched and (report.n_with_new_id, report.count_in_vespa) == (N_DOCS - 1, N_DOCS - 1)
    assert (tmp_path / "manifest.json").read_bytes() == manifest_before
    written = write_inactive_slot(fake.url, embedded, method, 64, tmp_path, new_calibration=new, progress=False)
    with pytest.raises(VespaError, match=f"Vespa counts 199 documents whose slot b holds calibration {new.id} "
                                         "and 199 documents in all, the corpus has 200; the active slot stays a"):
        switch_active_slot(tmp_path, written, verify_inactive_slot(fake.url, written))

    fake.docs["d5"] = missing
    written = write_inactive_slot(fake.url, embedded, method, 64, tmp_path, new_calibration=new, progress=False)
    check = verify_inactive_slot(fake.url, written)
    assert check.ok
    feed(fake.url, embedded, [method], (64,), calibration_dir=tmp_path, progress=False)  # puts empty slot b
    with pytest.raises(VespaError, match="was rewritten while slot b of quaternary_asym@64 was written"):
        switch_active_slot(tmp_path, written, check)
    assert _entry(tmp_path, "quaternary_asym")["active_slot"] == "a"


def test_documents_fed_after_a_recalibration_carry_every_slot(fake: FakeVespa, embedded: EmbeddedDataset,
                                                              generated, tmp_path: Path) -> None:
    method, free = METHODS["lloyd_max_empir"], METHODS["float32"]
    _fed_slots(fake, embedded, [method, free], tmp_path)
    docs, _ = embedded.at_dim(64)
    old, new = calibrate(method, docs), calibrate(method, docs[:50])
    assert recalibrate(fake.url, embedded, method, 64, tmp_path, new_calibration=new, progress=False).switched

    grown = generated_corpus(generated, N_DOCS + 10)  # ten new documents arrive
    fake.corpus_order = list(grown.dataset.doc_ids)
    report = feed(fake.url, grown, [method, free], (64,), calibration_dir=tmp_path, keep_calibrations=True,
                  progress=False)
    assert report.complete and report.n_docs == N_DOCS + 10
    assert report.calibrations[("lloyd_max_empir", 64)].id == new.id
    entry = _entry(tmp_path, "lloyd_max_empir")
    assert entry["active_slot"] == "b" and {s: r["id"] for s, r in entry["slots"].items()} == {"a": old.id, "b": new.id}
    assert read_manifest(tmp_path)["n_docs"] == N_DOCS + 10
    for fields in fake.docs.values():
        assert fields["lloyd_max_empir_64_calibration"] == old.id
        assert fields["lloyd_max_empir_64_calibration_b"] == new.id
    grown_docs, queries = grown.at_dim(64)
    codes = encode(method, grown_docs, new)
    found = VespaBackend(fake.url, grown.dataset.doc_ids, calibration_dir=tmp_path).search(
        method, new, codes, queries, 10)
    assert_same_ranking(found.hits, local_search(method, new, codes, queries, k=10),
                        full_scores(method, new, codes, queries))

    with pytest.raises(VespaError, match=r"keep_calibrations feeds exactly the \(method, dim\)s of .*manifest.json: "
                                         r"missing \[\('float32', 64\)\]"):
        feed(fake.url, grown, [method], (64,), calibration_dir=tmp_path, keep_calibrations=True, progress=False)


def test_recalibrate_refuses_what_it_cannot_switch(fake: FakeVespa, embedded: EmbeddedDataset, tmp_path: Path) -> None:
    method = METHODS["int8_asym"]
    fake.known_fields = schema_fields(recalibration_slots=False)  # a package generated without slot b
    _fed_slots(fake, embedded, [method, METHODS["float32"]], tmp_path)
    with pytest.raises(VespaError, match="float32 needs no calibration: there is nothing to recalibrate"):
        recalibrate(fake.url, embedded, METHODS["float32"], 64, tmp_path, progress=False)
    with pytest.raises(VespaError, match=r"has no calibration for int8_asym@32: re-run vespa-quant feed"):
        recalibrate(fake.url, embedded, method, 32, tmp_path, progress=False)
    docs, _ = embedded.at_dim(64)
    with pytest.raises(VespaError, match="is for int8_asym@32, not int8_asym@64"):
        recalibrate(fake.url, embedded, method, 64, tmp_path, new_calibration=calibrate(method, embedded.at_dim(32)[0]),
                    progress=False)
    report = recalibrate(fake.url, embedded, method, 64, tmp_path, new_calibration=calibrate(method, docs[:20]),
                         policy=HttpPolicy(max_attempts=1), progress=False)
    assert not report.switched and len(report.failed_ids) == N_DOCS
    assert report.errors["d0"] == "HTTP 400: No field 'int8_asym_64_calibration_b' in the structure of type 'doc'"
    assert _entry(tmp_path, "int8_asym")["active_slot"] == "a"
