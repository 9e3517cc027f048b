"""One real path: a slice of SciFact, the bundled MiniLM, the CLI, every method, every output file."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vespa_quant.cli import app
from vespa_quant.evaluate.report import RESULT_FIELDS
from vespa_quant.quantize.registry import METHODS

N_QUERIES, N_OTHER_DOCS = 30, 220


def write_slice(scifact: Path, dest: Path) -> Path:
    """A BEIR folder with the first queries, their relevant docs and some other docs."""
    qrels = list(csv.reader((scifact / "qrels" / "test.tsv").open(), delimiter="\t"))[1:]
    queries = {json.loads(line)["_id"]: line for line in (scifact / "queries.jsonl").open()}
    kept = [qid for qid in dict.fromkeys(row[0] for row in qrels)][:N_QUERIES]
    relevant = {row[1] for row in qrels if row[0] in kept}
    docs = []
    for line in (scifact / "corpus.jsonl").open():
        doc_id = json.loads(line)["_id"]
        if doc_id in relevant or len(docs) < len(relevant) + N_OTHER_DOCS:
            docs.append(line)
    (dest / "qrels").mkdir(parents=True)
    (dest / "corpus.jsonl").write_text("".join(docs))
    (dest / "queries.jsonl").write_text("".join(queries[q] for q in kept))
    with (dest / "qrels" / "test.tsv").open("w") as handle:
        handle.write("query-id\tcorpus-id\tscore\n")
        handle.writelines("\t".join(row) + "\n" for row in qrels if row[0] in kept)
    return dest


def test_evaluate_cli_on_a_scifact_slice(scifact_dir: Path, tmp_path: Path) -> None:
    dataset = write_slice(scifact_dir, tmp_path / "scifact-slice")
    runner = CliRunner()
    args = ["evaluate", "--dataset", str(dataset), "--model", "all-MiniLM-L6-v2", "--dims", "384,128",
            "--cache-dir", str(tmp_path / "cache"), "--resamples", "200"]
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
