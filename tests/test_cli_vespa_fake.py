"""The CLI's Vespa path end to end against the local fake Vespa (no real server can run here):
feed a SciFact slice, then evaluate with --backend vespa and get the local engine's NDCG."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_vespa import serving
from typer.testing import CliRunner

from vespa_quant.cli import app

pytestmark = pytest.mark.integration  # the CLI's feed, recalibrate and evaluate against the fake Vespa: ~5 s; CI runs it (`pytest -m integration`)

METHODS = "float32,int8_asym,binary_rescore,lloyd_max_gauss"


def test_feed_then_evaluate_on_vespa_matches_local(scifact_slice: Path, slice_cache: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    common = ["--dataset", str(scifact_slice), "--cache-dir", str(slice_cache), "--methods", METHODS]
    with serving() as fake:
        fed = runner.invoke(app, ["feed", *common, "--dims", "384", "--endpoint", fake.url,
                                  "--calibration-dir", str(tmp_path / "cal")])
        assert fed.exit_code == 0, fed.output
        assert "Vespa counts" in fed.output and (tmp_path / "cal" / "manifest.json").is_file()
        on_vespa = runner.invoke(app, ["evaluate", *common, "--dims", "384", "--backend", "vespa",
                                       "--endpoint", fake.url, "--calibration-dir", str(tmp_path / "cal"),
                                       "--resamples", "100", "--output", str(tmp_path / "vespa")])
        assert on_vespa.exit_code == 0, on_vespa.output
    local = runner.invoke(app, ["evaluate", *common, "--dims", "384", "--resamples", "100",
                                "--output", str(tmp_path / "local")])
    assert local.exit_code == 0, local.output
    vespa_rows = {r["method"]: r for r in json.loads((tmp_path / "vespa" / "results.json").read_text())}
    local_rows = {r["method"]: r for r in json.loads((tmp_path / "local" / "results.json").read_text())}
    for method, row in local_rows.items():
        assert abs(vespa_rows[method]["ndcg_at_10"] - row["ndcg_at_10"]) <= 1e-9, method
        assert vespa_rows[method]["backend"] == "vespa" and "latency_ms_p95" in vespa_rows[method]


def test_feed_fails_with_exit_code_2_when_nothing_listens(scifact_slice: Path, slice_cache: Path) -> None:
    result = CliRunner().invoke(app, ["feed", "--dataset", str(scifact_slice), "--cache-dir", str(slice_cache),
                                      "--endpoint", "http://127.0.0.1:9"])
    assert result.exit_code == 2 and "nothing listens on http://127.0.0.1:9" in result.output


def test_recalibrate_switches_slots_and_evaluate_follows(scifact_slice: Path, slice_cache: Path, tmp_path: Path) -> None:
    """Recalibrate lloyd_max_gauss with a calibration from 20% of the corpus: queries then use slot b,
    and the Vespa NDCG equals the local engine's with that same calibration."""
    import numpy as np

    from vespa_quant.embed.embedded import load_embedded
    from vespa_quant.engine.local import search
    from vespa_quant.evaluate.runner import score_hits
    from vespa_quant.quantize.base import calibrate, encode
    from vespa_quant.quantize.registry import get_method

    embedded = load_embedded(scifact_slice, "all-MiniLM-L6-v2", cache_dir=slice_cache, show_progress=False)
    method = get_method("lloyd_max_gauss")
    docs, queries = embedded.at_dim(384)
    partial = calibrate(method, docs[: len(docs) // 5])
    partial.save(tmp_path / "partial.npz")

    runner = CliRunner()
    common = ["--dataset", str(scifact_slice), "--cache-dir", str(slice_cache)]
    cal = ["--calibration-dir", str(tmp_path / "cal")]
    with serving() as fake:
        fed = runner.invoke(app, ["feed", *common, "--methods", "lloyd_max_gauss", "--dims", "384",
                                  "--endpoint", fake.url, *cal])
        assert fed.exit_code == 0, fed.output
        switched = runner.invoke(app, ["recalibrate", *common, "--method", "lloyd_max_gauss", "--dim", "384",
                                       "--calibration", str(tmp_path / "partial.npz"), "--endpoint", fake.url, *cal])
        assert switched.exit_code == 0, switched.output
        assert "slot a" in switched.output and "switched: queries now use slot b" in switched.output
        on_vespa = runner.invoke(app, ["evaluate", *common, "--methods", "lloyd_max_gauss", "--dims", "384",
                                       "--backend", "vespa", "--endpoint", fake.url, *cal, "--resamples", "50",
                                       "--output", str(tmp_path / "vespa")])
        assert on_vespa.exit_code == 0, on_vespa.output
    row = json.loads((tmp_path / "vespa" / "results.json").read_text())[0]
    assert row["calibration_id"] == partial.id
    local = score_hits(embedded, search(method, partial, encode(method, docs, partial), queries, k=100))
    assert abs(row["ndcg_at_10"] - float(np.mean(local["ndcg_cut_10"]))) <= 1e-9
