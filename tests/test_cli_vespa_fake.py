"""The CLI's Vespa path end to end against the local fake Vespa (no real server can run here):
feed a SciFact slice, then evaluate with --backend vespa and get the local engine's NDCG."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from test_feeder_fake import serving
from vespa_quant.cli import app

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
