"""One real path: a slice of SciFact, the bundled MiniLM, the CLI, every method, every output file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import SLICE_QUERIES as N_QUERIES
from typer.testing import CliRunner

from vespa_quant.cli import app
from vespa_quant.evaluate.report import RESULT_FIELDS
from vespa_quant.quantize.registry import METHODS


def test_evaluate_cli_on_a_scifact_slice(scifact_slice: Path, slice_cache: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["evaluate", "--dataset", str(scifact_slice), "--model", "all-MiniLM-L6-v2", "--dims", "384,128",
            "--cache-dir", str(slice_cache), "--resamples", "200"]
    first = runner.invoke(app, [*args, "--output", str(tmp_path / "out")])
    assert first.exit_code == 0, first.output
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {(r["method"], r["dim"]) for r in rows} == {(m, d) for m in METHODS for d in (384, 128)}
    for row in rows:
        assert set(RESULT_FIELDS) <= set(row)
        low, high = row["ndcg_at_10_ci"]
        assert low <= row["ndcg_at_10"] <= high
        assert row["n_queries"] == N_QUERIES
    by_key = {(r["method"], r["dim"]): r for r in rows}
    assert by_key[("float32", 384)]["ndcg_at_10"] > 0.5  # MiniLM finds SciFact's evidence
    assert by_key[("float32", 384)]["delta_vs_float32_ci"] == [0.0, 0.0]
    assert by_key[("binary_asym", 128)]["bytes_per_vector"] == 16
    for name in ("results.csv", "per_query.csv", "pareto.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert "lloyd_max_gauss" in first.output

    shutil.rmtree(tmp_path / "out")
    cached = runner.invoke(app, [*args, "--methods", "float32", "--output", str(tmp_path / "out")])
    assert cached.exit_code == 0, cached.output
    again = json.loads((tmp_path / "out" / "results.json").read_text())
    assert again[0]["ndcg_at_10"] == by_key[("float32", 384)]["ndcg_at_10"]


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["evaluate", "--dataset", str(tmp_path / "nowhere"), "--methods", "float32"])
    assert result.exit_code == 2
    assert "error:" in result.output and "Traceback" not in result.output
    unknown = CliRunner().invoke(app, ["evaluate", "--methods", "float64"])
    assert unknown.exit_code == 2 and "unknown method 'float64'" in unknown.output


def test_bring_your_own_embeddings(scifact_slice: Path, tmp_path: Path) -> None:
    """Precomputed vectors (.npy + .ids beside it) stand in for any model; no model is loaded."""
    import numpy as np

    from vespa_quant.data.beir import load_beir

    dataset = load_beir(scifact_slice)
    rng = np.random.default_rng(0)
    for kind, ids in (("docs", dataset.doc_ids), ("queries", dataset.query_ids)):
        np.save(tmp_path / f"{kind}.npy", rng.standard_normal((len(ids), 48)).astype(np.float32))
        (tmp_path / f"{kind}.ids").write_text("\n".join(reversed(ids)) + "\n")  # any order
    result = CliRunner().invoke(app, [
        "evaluate", "--dataset", str(scifact_slice), "--model", "my-own-model", "--methods", "float32,lloyd_max_gauss",
        "--doc-embeddings", str(tmp_path / "docs.npy"), "--query-embeddings", str(tmp_path / "queries.npy"),
        "--cache-dir", str(tmp_path / "cache"), "--resamples", "50", "--output", str(tmp_path / "out"),
    ])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {r["dim"] for r in rows} == {48} and {r["model"] for r in rows} == {"my-own-model"}
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.npy"))
