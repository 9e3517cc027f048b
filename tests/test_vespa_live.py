"""Live Vespa: deploy the generated package, feed SciFact, match the local engine's NDCG@10,
recalibrate one method through its inactive slot while queries keep answering from the active one,
and run streaming drift on Vespa (documents put in stream order, the policy switching real slots)
with the in-process run's rows.

Needs a running Vespa (``vespa-quant up && pytest -m vespa``; the cluster test also ``vespa-quant up --cluster``). The query endpoint is
``VESPA_QUANT_ENDPOINT`` (default http://localhost:8080) and the config server
``VESPA_QUANT_CONFIG_ENDPOINT`` (default http://localhost:19071). Before the first deploy only the
config server listens, so the module runs when either answers and skips, with the reason, when
neither does within 2 s.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import requests

ENDPOINT = os.environ.get("VESPA_QUANT_ENDPOINT", "http://localhost:8080").rstrip("/")
CONFIG_ENDPOINT = os.environ.get("VESPA_QUANT_CONFIG_ENDPOINT", "http://localhost:19071").rstrip("/")
CLUSTER_ENDPOINT = os.environ.get("VESPA_QUANT_CLUSTER_ENDPOINT", "http://localhost:8081").rstrip("/")
CLUSTER_CONFIG_ENDPOINT = os.environ.get("VESPA_QUANT_CLUSTER_CONFIG_ENDPOINT", "http://localhost:19072").rstrip("/")
DIMS = (384, 256)
TOLERANCE = 0.002
"""NDCG@10 gap allowed between Vespa and the engine: Vespa may order exact score ties differently."""
K1 = 100


def _answers(url: str) -> bool:
    try:
        requests.get(url + "/state/v1/health", timeout=2)
    except requests.RequestException:
        return False
    return True


if not (_answers(ENDPOINT) or _answers(CONFIG_ENDPOINT)):
    pytest.skip(
        f"no Vespa answers on {ENDPOINT}/state/v1/health or {CONFIG_ENDPOINT}/state/v1/health within 2 s: "
        f"run `vespa-quant up` or set VESPA_QUANT_ENDPOINT / VESPA_QUANT_CONFIG_ENDPOINT",
        allow_module_level=True,
    )

pytestmark = pytest.mark.vespa


@pytest.fixture(scope="module")
def scifact() -> Path:
    root = Path(os.environ.get("VESPA_QUANT_DATA", Path(__file__).resolve().parents[2] / "shared" / "datasets"))
    folder = root / "scifact"
    if not (folder / "corpus.jsonl").is_file():
        pytest.skip(f"SciFact not found at {folder}: put ../shared/datasets beside the repo or set VESPA_QUANT_DATA")
    return folder


def _deploy_every_method(tmp_path: Path, variant: str = "single", endpoint: str = ENDPOINT,
                         config_endpoint: str = CONFIG_ENDPOINT) -> None:
    from vespa_quant.quantize.registry import METHODS
    from vespa_quant.vespa.deploy import deploy, wait_until_ready
    from vespa_quant.vespa.services import assemble, write_package

    write_package(tmp_path / "generated", list(METHODS.values()), DIMS)
    app_dir = assemble(tmp_path / "generated", variant, tmp_path / "app")
    deploy(app_dir, config_endpoint, timeout=600)
    wait_until_ready(endpoint, config_endpoint, timeout=900, progress=None)


def _assert_vespa_equals_local(embedded, methods, calibration_dir: Path, endpoint: str, k1: int | None) -> None:
    """Every (method, dim): NDCG@10 on Vespa within TOLERANCE of the engine's, same search mode."""
    from vespa_quant.evaluate.runner import LocalBackend, evaluate
    from vespa_quant.vespa.backend import VespaBackend

    backend = VespaBackend(endpoint, list(embedded.dataset.doc_ids), calibration_dir=calibration_dir)
    on_vespa = evaluate(embedded, methods, DIMS, backend=backend, k1=k1, n_resamples=100, show_progress=False)
    local = evaluate(embedded, methods, DIMS, backend=LocalBackend(), k1=k1, n_resamples=100, show_progress=False)
    local_ndcg = {(row["method"], row["dim"]): row["ndcg_at_10"] for row in local.rows}
    gaps = {(row["method"], row["dim"]): abs(row["ndcg_at_10"] - local_ndcg[(row["method"], row["dim"])])
            for row in on_vespa.rows}
    assert set(gaps) == {(m.name, d) for m in methods for d in DIMS}
    too_far = {key: round(gap, 4) for key, gap in gaps.items() if gap > TOLERANCE}
    assert not too_far, f"k1={k1}: |NDCG@10(vespa) - NDCG@10(local)| > {TOLERANCE}: {too_far}"
    assert all(row["latency_ms_p50"] > 0 for row in on_vespa.rows)


def test_vespa_ndcg_matches_local_engine(scifact: Path, tmp_path: Path) -> None:
    from vespa_quant.embed.embedded import load_embedded
    from vespa_quant.quantize.registry import METHODS
    from vespa_quant.vespa.feeder import feed

    methods = list(METHODS.values())
    _deploy_every_method(tmp_path)

    embedded = load_embedded(scifact, "all-MiniLM-L6-v2", show_progress=False)
    calibration_dir = tmp_path / "calibrations"
    report = feed(ENDPOINT, embedded, methods, DIMS, calibration_dir=calibration_dir, progress=False)
    assert not report.failed_ids, f"{len(report.failed_ids)} puts failed, e.g. {list(report.errors.items())[:3]}"
    assert report.count_in_vespa == report.n_docs, (
        f"Vespa counts {report.count_in_vespa} documents, the corpus has {report.n_docs}: "
        f"documents of another corpus are indexed; start from an empty Vespa"
    )

    for k1 in (None, K1):  # the exhaustive profiles, then the two-phase ones
        _assert_vespa_equals_local(embedded, methods, calibration_dir, ENDPOINT, k1)


def test_the_cluster_gives_the_engines_two_phase_results(scifact: Path, tmp_path: Path) -> None:
    """Two content nodes (`vespa-quant up --cluster`): per-node targetHits and the global phase's
    rerank-count still rescore exactly the global Hamming top k1."""
    if not (_answers(CLUSTER_ENDPOINT) or _answers(CLUSTER_CONFIG_ENDPOINT)):
        pytest.skip(f"no cluster answers on {CLUSTER_ENDPOINT} or {CLUSTER_CONFIG_ENDPOINT}: run `vespa-quant up "
                    f"--cluster` or set VESPA_QUANT_CLUSTER_ENDPOINT / VESPA_QUANT_CLUSTER_CONFIG_ENDPOINT")
    from vespa_quant.embed.embedded import load_embedded
    from vespa_quant.quantize.registry import METHODS
    from vespa_quant.vespa.feeder import feed

    methods = list(METHODS.values())
    _deploy_every_method(tmp_path, "cluster", CLUSTER_ENDPOINT, CLUSTER_CONFIG_ENDPOINT)
    embedded = load_embedded(scifact, "all-MiniLM-L6-v2", show_progress=False)
    calibration_dir = tmp_path / "calibrations"
    report = feed(CLUSTER_ENDPOINT, embedded, methods, DIMS, calibration_dir=calibration_dir, progress=False)
    assert not report.failed_ids and report.count_in_vespa == report.n_docs
    for k1 in (50, K1):
        _assert_vespa_equals_local(embedded, methods, calibration_dir, CLUSTER_ENDPOINT, k1)


def test_vespa_recalibration_switches_slots_without_disagreement(scifact: Path, tmp_path: Path) -> None:
    """Write slot b with another calibration while queries read slot a, verify, switch, compare."""
    import numpy as np

    from vespa_quant.embed.embedded import load_embedded
    from vespa_quant.evaluate.runner import NDCG, LocalBackend, score_hits
    from vespa_quant.quantize.base import calibrate, encode
    from vespa_quant.quantize.registry import METHODS
    from vespa_quant.vespa.backend import VespaBackend
    from vespa_quant.vespa.feeder import feed
    from vespa_quant.vespa.recalibrate import switch_active_slot, verify_inactive_slot, write_inactive_slot

    _deploy_every_method(tmp_path)
    embedded = load_embedded(scifact, "all-MiniLM-L6-v2", show_progress=False)
    method, dim = METHODS["lloyd_max_gauss"], 256
    calibration_dir = tmp_path / "calibrations"
    fed = feed(ENDPOINT, embedded, [method], (dim,), calibration_dir=calibration_dir, progress=False)
    assert fed.complete, f"feed incomplete: {len(fed.failed_ids)} failed, Vespa counts {fed.count_in_vespa}"
    docs, queries = embedded.at_dim(dim)
    old = fed.calibrations[(method.name, dim)]
    new = calibrate(method, docs[: len(docs) // 10])  # learned on a tenth of the corpus: other constants
    assert new.id != old.id
    old_codes, new_codes = encode(method, docs, old), encode(method, docs, new)
    backend = VespaBackend(ENDPOINT, list(embedded.dataset.doc_ids), calibration_dir=calibration_dir)
    before = backend.search(method, old, old_codes, queries, 10)

    written = write_inactive_slot(ENDPOINT, embedded, method, dim, calibration_dir, new_calibration=new,
                                  progress=False)
    assert written.ok, f"{len(written.failed_ids)} updates failed, e.g. {list(written.errors.items())[:3]}"
    between = backend.search(method, old, old_codes, queries, 10)  # written, not switched: the old slot
    np.testing.assert_array_equal(between.hits.indices, before.hits.indices)
    np.testing.assert_allclose(between.hits.scores, before.hits.scores, rtol=1e-6)

    check = verify_inactive_slot(ENDPOINT, written)
    assert check.ok, f"slot {check.slot}: {check.n_with_id} of {check.n_docs} documents hold {check.calibration_id}"
    switch_active_slot(calibration_dir, written, check)
    after = backend.search(method, new, new_codes, queries, 10)
    local = LocalBackend().search(method, new, new_codes, queries, 10)
    gap = abs(score_hits(embedded, after.hits)[NDCG].mean() - score_hits(embedded, local.hits)[NDCG].mean())
    assert gap <= TOLERANCE, f"after the switch |NDCG@10(vespa) - NDCG@10(local)| = {gap:.4f}"


def test_vespa_drift_gives_the_in_process_rows(scifact: Path, tmp_path: Path) -> None:
    """Stream SciFact into an emptied Vespa in stream order, query every checkpoint there and let the
    policy recalibrate for real: the same decisions and calibrations as in process, NDCG@10 within
    the tolerance exact ties allow, and the manifest ends on the policy's last calibration."""
    from vespa.application import Vespa

    from vespa_quant.drift import run_drift
    from vespa_quant.embed.embedded import load_embedded
    from vespa_quant.quantize.registry import METHODS
    from vespa_quant.vespa.manifest import read_manifest
    from vespa_quant.vespa.naming import DOCUMENT_TYPE, NAMESPACE
    from vespa_quant.vespa.services import CONTENT_CLUSTER
    from vespa_quant.vespa.stream import VespaStreamIndex

    _deploy_every_method(tmp_path)
    Vespa(ENDPOINT).delete_all_docs(CONTENT_CLUSTER, DOCUMENT_TYPE, NAMESPACE)  # the stream starts empty
    embedded = load_embedded(scifact, "all-MiniLM-L6-v2", show_progress=False)
    methods = [METHODS[name] for name in ("lloyd_max_gauss", "quaternary_asym", "int8_asym", "float32")]
    settings = {"fractions": [0.01, 0.1], "order": "random", "seed": 0, "steps": 4, "n_resamples": 200, "dim": 384}
    calibration_dir = tmp_path / "calibrations"
    on_vespa = run_drift(embedded, methods, index=VespaStreamIndex(ENDPOINT, calibration_dir), **settings)
    local = run_drift(embedded, methods, **settings)

    decision = ("method", "n_seen", "fired", "reasons", "recalibrations", "calibration_id")
    assert [tuple(r[k] for k in decision) for r in on_vespa.policy_step_rows] == \
        [tuple(r[k] for k in decision) for r in local.policy_step_rows]
    assert [r["calibration_id"] for r in on_vespa.fraction_rows] == [r["calibration_id"] for r in local.fraction_rows]
    too_far = {}
    for kind in ("fraction_rows", "step_rows", "policy_rows", "policy_step_rows"):
        for ours, theirs in zip(getattr(on_vespa, kind), getattr(local, kind), strict=True):
            for key in (k for k in theirs if k.endswith("ndcg_at_10")):
                if abs(ours[key] - theirs[key]) > TOLERANCE:
                    too_far[(kind, ours["method"], ours.get("n_seen"), key)] = round(ours[key] - theirs[key], 4)
    assert not too_far, f"|NDCG@10(vespa) - NDCG@10(local)| > {TOLERANCE}: {too_far}"
    entries = {entry["method"]: entry for entry in read_manifest(calibration_dir)["calibrations"]}
    for row in on_vespa.policy_rows:
        last = [r for r in on_vespa.policy_step_rows if r["method"] == row["method"]][-1]
        entry = entries[row["method"]]
        assert entry["slots"][entry["active_slot"]]["id"] == last["calibration_id"], row["method"]
