"""`vespa-quant drift` on a SciFact slice: every output file, zero drift where nothing is calibrated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vespa_quant.cli import app


@pytest.mark.integration  # a whole drift run through the CLI: ~3 s
def test_drift_cli_writes_table_files_and_plot(scifact_slice: Path, slice_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "drift"
    result = CliRunner().invoke(app, [
        "drift", "--dataset", str(scifact_slice), "--cache-dir", str(slice_cache),
        "--methods", "float32,binary_asym,lloyd_max_gauss,int8_asym", "--calibration-fraction", "0.1,0.5",
        "--repeats", "2", "--steps", "4", "--resamples", "100", "--output", str(out),
    ])
    assert result.exit_code == 0, result.output
    for name in ("drift.json", "drift.csv", "drift_steps.csv", "policy.csv", "drift.png"):
        assert (out / name).stat().st_size > 0, name
    assert "Quantizers losing significant NDCG@10 when calibrated on 10%" in result.output
    steps = [line.split(",") for line in (out / "drift_steps.csv").read_text().splitlines()]
    header, rows = steps[0], steps[1:]
    shift = header.index("centre_shift_sigma")
    by_method = {}
    for row in rows:
        by_method.setdefault(row[header.index("method")], []).append(float(row[shift] or "nan"))
    assert all(value == 0.0 for value in by_method["float32"] + by_method["binary_asym"])
    assert any(value > 0.0 for value in by_method["lloyd_max_gauss"])
    assert json.loads((out / "drift.json").read_text())


def test_drift_cli_rejects_bad_fractions(scifact_slice: Path, slice_cache: Path) -> None:
    result = CliRunner().invoke(app, ["drift", "--dataset", str(scifact_slice), "--cache-dir", str(slice_cache),
                                      "--calibration-fraction", "0.1,abc"])
    assert result.exit_code == 2 and "--calibration-fraction" in result.output
    given = CliRunner().invoke(app, ["drift", "--dataset", str(scifact_slice), "--cache-dir", str(slice_cache),
                                     "--calibration-fraction", "1.5"])
    assert given.exit_code == 2 and "error:" in given.output


def test_analyze_cli_on_a_scifact_slice(scifact_slice: Path, slice_cache: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["analyze", "--dataset", str(scifact_slice), "--cache-dir", str(slice_cache),
                                      "--dims", "384,128", "--output", str(tmp_path / "analysis")])
    assert result.exit_code == 0, result.output
    assert "mse_lloyd_max_gauss" in result.output
    rows = json.loads((tmp_path / "analysis" / "analysis.json").read_text())
    assert [row["dim"] for row in rows] == [384, 128]
    assert (tmp_path / "analysis" / "analysis.png").stat().st_size > 0
