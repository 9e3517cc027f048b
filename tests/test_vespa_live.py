"""Live Vespa: deploy the generated package, feed SciFact, and match the local engine's NDCG@10.

Needs a running Vespa (``docker compose up -d && pytest -m vespa``). The query endpoint is
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
DIMS = (384, 256)
TOLERANCE = 0.002


def _answers(url: str) -> bool:
    try:
        requests.get(url + "/state/v1/health", timeout=2)
    except requests.RequestException:
        return False
    return True


if not (_answers(ENDPOINT) or _answers(CONFIG_ENDPOINT)):
    pytest.skip(
        f"no Vespa answers on {ENDPOINT}/state/v1/health or {CONFIG_ENDPOINT}/state/v1/health within 2 s: "
        f"run `docker compose up -d` or set VESPA_QUANT_ENDPOINT / VESPA_QUANT_CONFIG_ENDPOINT",
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


def test_vespa_ndcg_matches_local_engine(scifact: Path, tmp_path: Path) -> None:
    from vespa_quant.evaluate.runner import LocalBackend, evaluate, load_embedded
    from vespa_quant.evaluate.vespa_backend import VespaBackend
    from vespa_quant.feed.feeder import feed
    from vespa_quant.quantize.registry import METHODS
    from vespa_quant.vespa_app.deploy import deploy, wait_until_ready
    from vespa_quant.vespa_app.package import assemble, write_package

    methods = list(METHODS.values())
    write_package(tmp_path / "generated", methods, DIMS)
    app_dir = assemble(tmp_path / "generated", "single", tmp_path / "app")
    deploy(app_dir, CONFIG_ENDPOINT)
    wait_until_ready(ENDPOINT, CONFIG_ENDPOINT, timeout=900, progress=None)

    embedded = load_embedded(scifact, "all-MiniLM-L6-v2", show_progress=False)
    calibration_dir = tmp_path / "calibrations"
    report = feed(ENDPOINT, embedded, methods, DIMS, calibration_dir=calibration_dir, progress=False)
    assert not report.failed_ids, f"{len(report.failed_ids)} puts failed, e.g. {list(report.errors.items())[:3]}"
    assert report.count_in_vespa == report.n_docs, (
        f"Vespa counts {report.count_in_vespa} documents, the corpus has {report.n_docs}: "
        f"documents of another corpus are indexed; start from an empty Vespa"
    )

    backend = VespaBackend(ENDPOINT, list(embedded.dataset.doc_ids), calibration_dir=calibration_dir)
    on_vespa = evaluate(embedded, methods, DIMS, backend=backend, n_resamples=100, show_progress=False)
    local = evaluate(embedded, methods, DIMS, backend=LocalBackend(), n_resamples=100, show_progress=False)
    local_ndcg = {(row["method"], row["dim"]): row["ndcg_at_10"] for row in local.rows}
    gaps = {
        (row["method"], row["dim"]): abs(row["ndcg_at_10"] - local_ndcg[(row["method"], row["dim"])])
        for row in on_vespa.rows
    }
    assert set(gaps) == {(m.name, d) for m in methods for d in DIMS}
    too_far = {key: round(gap, 4) for key, gap in gaps.items() if gap > TOLERANCE}
    assert not too_far, f"|NDCG@10(vespa) - NDCG@10(local)| > {TOLERANCE}: {too_far}"
    assert all(row["latency_ms_p50"] > 0 for row in on_vespa.rows)
