"""Streaming drift on the fake Vespa (``fake_vespa.py``): the same rows as the in-process stream,
a policy that switches real slots, and a failed slot write that leaves the active slot alone."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from fake_vespa import N_DOCS, FakeVespa, fake, free_port, generated_corpus, serving  # noqa: F401
from typer.testing import CliRunner

from vespa_quant.cli import app
from vespa_quant.drift import run_drift
from vespa_quant.drift.runner import DriftReport
from vespa_quant.drift.stream import prefix_size, stream_order
from vespa_quant.embed.embedded import EmbeddedDataset
from vespa_quant.engine.local import search as local_search
from vespa_quant.errors import VespaError
from vespa_quant.evaluate.runner import evaluate
from vespa_quant.quantize.base import encode
from vespa_quant.quantize.registry import METHODS
from vespa_quant.vespa.backend import VespaBackend
from vespa_quant.vespa.client import HttpPolicy
from vespa_quant.vespa.manifest import active_calibration, read_manifest
from vespa_quant.vespa.naming import calibration_field_name
from vespa_quant.vespa.stream import VespaStreamIndex
from vespa_quant.vespa.wire import vespa_document_id

pytestmark = pytest.mark.integration  # whole drift runs through the fake Vespa: ~8 s; CI runs it (`pytest -m integration`)

DIM = 64
METHODS_RUN = [METHODS[name] for name in ("lloyd_max_gauss", "float32")]
N_QUERIES = 10
SETTINGS = {"fractions": [0.05, 0.5], "order": "random", "seed": 0, "steps": 3, "n_resamples": 50, "dim": DIM}
KINDS = ("fraction_rows", "step_rows", "policy_rows", "policy_step_rows")


@pytest.fixture(scope="module")
def corpus(generated) -> EmbeddedDataset:
    """200 generated docs (some with ids a URL cannot carry raw), 10 queries (each query is an HTTP
    request per measurement: they set this test's time)."""
    docs, queries = generated
    return generated_corpus((docs, queries[:N_QUERIES]), N_DOCS)


@pytest.fixture(scope="module")
def local_report(corpus: EmbeddedDataset) -> DriftReport:
    return run_drift(corpus, METHODS_RUN, **SETTINGS)


def stream_ids(corpus: EmbeddedDataset) -> list[str]:
    return [corpus.dataset.doc_ids[i] for i in stream_order(N_DOCS, "random", SETTINGS["seed"])]


def run_on_fake(fake: FakeVespa, corpus: EmbeddedDataset, calibration_dir: Path, methods=METHODS_RUN,
                policy: HttpPolicy | None = None, **settings) -> DriftReport:
    fake.corpus_order = stream_ids(corpus)  # one node fed in arrival order: ties break by arrival, as in process
    index = VespaStreamIndex(fake.url, calibration_dir, policy=policy or HttpPolicy(timeout=20))
    return run_drift(corpus, methods, index=index, **{**SETTINGS, **settings})


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-9)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def assert_same_rows(report: DriftReport, local: DriftReport) -> None:
    """Every row and cell equal, floats to 1e-9; the same slot writes and switches."""
    for kind in KINDS:
        ours, theirs = getattr(report, kind), getattr(local, kind)
        assert len(ours) == len(theirs), kind
        for mine, other in zip(ours, theirs):
            assert mine.keys() == other.keys(), kind
            differ = {key: (mine[key], other[key]) for key in mine if not same(mine[key], other[key])}
            assert not differ, (kind, mine["method"], differ)
    assert (report.settings["backend"], local.settings["backend"]) == ("vespa", "local")
    for key in ("slot_writes", "slot_documents_written", "slot_switches", "first_phase_k1"):
        assert report.settings[key] == local.settings[key], key


def test_drift_on_vespa_gives_the_in_process_rows(fake: FakeVespa, corpus: EmbeddedDataset,
                                                  local_report: DriftReport, tmp_path: Path) -> None:
    report = run_on_fake(fake, corpus, tmp_path)
    assert_same_rows(report, local_report)
    assert fake.puts == N_DOCS and len(fake.docs) == N_DOCS  # every document put once, as it arrived

    # The policy really switched slots: the manifest and every document agree with the last decision.
    manifest = {entry["method"]: entry for entry in read_manifest(tmp_path)["calibrations"]}
    switched = [row for row in report.policy_rows if row["recalibrations"]]
    assert switched, "the policy never fired: nothing on Vespa was switched"
    for row in report.policy_rows:
        if row["calibration_free"]:
            continue
        last = [step for step in report.policy_step_rows if step["method"] == row["method"]][-1]
        entry = manifest[row["method"]]
        assert entry["active_slot"] == ("b" if row["recalibrations"] % 2 else "a"), row["method"]
        assert entry["slots"][entry["active_slot"]]["id"] == last["calibration_id"]
        field = calibration_field_name(row["method"], DIM, entry["active_slot"])
        assert {fields[field] for fields in fake.docs.values()} == {last["calibration_id"]}, row["method"]
    assert report.settings["slot_switches"] == sum(row["recalibrations"] for row in report.policy_rows)

    # --calibration-dir now describes what Vespa serves: evaluate reads the policy's final calibrations.
    backend = VespaBackend(fake.url, corpus.dataset.doc_ids, calibration_dir=tmp_path)
    evaluated = evaluate(corpus, METHODS_RUN, [DIM], backend=backend, n_resamples=20, show_progress=False)
    for row, policy in zip(evaluated.rows, report.policy_rows, strict=True):
        assert row["ndcg_at_10"] == pytest.approx(policy["policy_ndcg_at_10"], abs=1e-9), row["method"]


def test_two_phase_drift_on_vespa_gives_the_in_process_rows(fake: FakeVespa, corpus: EmbeddedDataset,
                                                            tmp_path: Path) -> None:
    """--k1: the two-phase profiles (binary_hamming is defined by its Hamming first phase)."""
    methods = [METHODS["quaternary_asym"], METHODS["binary_hamming"]]
    settings = {"fractions": [0.05], "steps": 2, "k1": 30}
    report = run_on_fake(fake, corpus, tmp_path, methods, **settings)
    assert_same_rows(report, run_drift(corpus, methods, **{**SETTINGS, **settings}))
    assert report.settings["slot_switches"] >= 1


@pytest.mark.slow  # every registered method, two-phase and exhaustive: ~30 s
@pytest.mark.parametrize("k1", [None, 50])
def test_drift_on_vespa_gives_the_in_process_rows_for_every_method(corpus: EmbeddedDataset, tmp_path: Path,
                                                                   k1: int | None) -> None:
    methods = list(METHODS.values())
    with serving() as fake:
        report = run_on_fake(fake, corpus, tmp_path, methods, k1=k1)
    assert_same_rows(report, run_drift(corpus, methods, **{**SETTINGS, "k1": k1}))


def test_a_failed_slot_write_stops_the_run_and_leaves_the_active_slot(
        fake: FakeVespa, corpus: EmbeddedDataset, local_report: DriftReport, tmp_path: Path) -> None:
    method = METHODS["lloyd_max_gauss"]
    decisions = [row for row in local_report.policy_step_rows if row["method"] == method.name]
    assert decisions[0]["fired"]  # checkpoint 1 switches to slot b; checkpoint 2 writes slot a
    first = prefix_size(1 / SETTINGS["steps"], N_DOCS)
    arriving_second = stream_ids(corpus)[first]
    fake.failing_updates = {vespa_document_id(arriving_second): 500}
    with pytest.raises(VespaError, match=r"lloyd_max_gauss@64: slot a: 1 of \d+ updates failed, e\.g\. "
                                         r".*\(HTTP 500: fake rejects the update of .*\); the active slot stays b"):
        run_on_fake(fake, corpus, tmp_path, [method], policy=HttpPolicy(timeout=20, max_attempts=2))
    entry = read_manifest(tmp_path)["calibrations"][0]
    assert entry["active_slot"] == "b" and entry["slots"]["b"]["id"] == decisions[0]["calibration_id"]
    field = calibration_field_name(method.name, DIM, "b")
    held = [fields[field] for fields in fake.docs.values()]
    assert len(held) > first and set(held) == {decisions[0]["calibration_id"]}  # slot b complete and untouched

    # Queries keep reading slot b, whatever the failed write left in slot a.
    present = [doc_id for doc_id in stream_ids(corpus) if vespa_document_id(doc_id) in fake.docs]
    rows = np.array([corpus.dataset.doc_ids.index(doc_id) for doc_id in present])
    docs, queries = corpus.at_dim(DIM)
    served = active_calibration(tmp_path, method.name, DIM)
    codes = encode(method, docs[rows], served)
    found = VespaBackend(fake.url, present, calibration_dir=tmp_path).search(method, served, codes, queries, 10)
    local = local_search(method, served, codes, queries, k=10)
    np.testing.assert_array_equal(found.hits.indices, local.indices)
    np.testing.assert_allclose(found.hits.scores, local.scores, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # two drift runs of the SciFact slice at 384 dims and drift.png: ~10 s
def test_drift_cli_on_vespa_writes_the_in_process_report(scifact_slice: Path, slice_cache: Path,
                                                         scifact_slice_embedded: EmbeddedDataset,
                                                         tmp_path: Path) -> None:
    methods = [METHODS["lloyd_max_gauss"], METHODS["float32"]]
    with serving() as fake:
        fake.corpus_order = list(scifact_slice_embedded.dataset.doc_ids)  # the given order is the file order
        result = CliRunner().invoke(app, [
            "drift", "--dataset", str(scifact_slice), "--cache-dir", str(slice_cache),
            "--methods", ",".join(m.name for m in methods), "--calibration-fraction", "0.1", "--order", "given",
            "--steps", "2", "--resamples", "50", "--backend", "vespa", "--endpoint", fake.url,
            "--calibration-dir", str(tmp_path / "cal"), "--output", str(tmp_path / "vespa")])
        assert result.exit_code == 0, result.output
    local = run_drift(scifact_slice_embedded, methods, [0.1], order="given", steps=2, n_resamples=50)
    written = json.loads((tmp_path / "vespa" / "drift.json").read_text())
    for kind, rows in (("fractions", local.fraction_rows), ("steps", local.step_rows),
                       ("policy", local.policy_rows), ("policy_steps", local.policy_step_rows)):
        for mine, other in zip(written[kind], rows, strict=True):
            assert all(same(mine[key], other[key]) for key in other if not isinstance(other[key], float)
                       or math.isfinite(other[key])), (kind, mine["method"])
    assert written["settings"]["backend"] == "vespa" and written["settings"]["repeats"] == 1
    assert {p.name for p in (tmp_path / "vespa").iterdir() if not p.name.startswith(".")} == {
        "drift.json", "drift.csv", "drift_steps.csv", "policy.csv", "policy_steps.csv", "drift.png", "table.txt"}


def test_drift_cli_on_vespa_checks_the_index_before_any_work(tmp_path: Path) -> None:
    """Nothing listening, a non-empty index and a missing --calibration-dir all fail before loading
    anything (the dataset named does not even exist)."""
    runner = CliRunner()
    common = ["drift", "--dataset", str(tmp_path / "no-such-dataset"), "--backend", "vespa",
              "--output", str(tmp_path / "out")]
    nothing = runner.invoke(app, [*common, "--endpoint", f"http://127.0.0.1:{free_port()}",
                                  "--calibration-dir", str(tmp_path / "cal")])
    assert nothing.exit_code == 2 and "nothing listens on http://127.0.0.1:" in nothing.output
    with serving() as fake:
        missing = runner.invoke(app, [*common, "--endpoint", fake.url])
        assert missing.exit_code == 2 and "--backend vespa needs --calibration-dir" in missing.output
        fake.docs["d0"] = {"doc_id": "d0"}  # a document from an earlier feed or run
        held = runner.invoke(app, [*common, "--endpoint", fake.url, "--calibration-dir", str(tmp_path / "cal")])
        assert held.exit_code == 2 and "holds 1 document;" in held.output
        assert "vespa-quant down && vespa-quant up" in held.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "cal").exists()
