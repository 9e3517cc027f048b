"""`vespa-quant report` on results folders that `vespa-quant evaluate` writes in the test from
generated vectors (bring-your-own embeddings), and one slow run on SciFact."""

from __future__ import annotations

import csv
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import write_generated_beir
from typer.testing import CliRunner

from vespa_quant.cli import app
from vespa_quant.evaluate.metrics import paired_bootstrap

OURS = "float32,binary_asym,binary_rescore,lloyd_max_gauss,int8_asym"


def _evaluate(folder: Path, out: Path, *extra: str) -> None:
    result = CliRunner().invoke(app, [
        "evaluate", "--dataset", str(folder), "--model", "generated-model", "--resamples", "200",
        "--doc-embeddings", str(folder / "docs.npy"), "--query-embeddings", str(folder / "queries.npy"),
        "--output", str(out), *extra])
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def results_folders(generated, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("report")
    first = write_generated_beir(*generated, root / "generated")
    second = root / "generated-too"
    shutil.copytree(first, second)
    _evaluate(first, root / "out1", "--methods", OURS, "--peers", "pq,sq,rabitq")
    _evaluate(second, root / "out2", "--methods", "float32,binary_asym,lloyd_max_gauss", "--peers", "sq")
    return root / "out1", root / "out2"


def _per_query(folder: Path) -> dict[str, np.ndarray]:
    values: dict[str, dict[str, float]] = {}
    with (folder / "per_query.csv").open() as handle:
        for record in csv.DictReader(handle):
            values.setdefault(record["method"], {})[record["query_id"]] = float(record["ndcg_at_10"])
    return {method: np.array([v[q] for q in sorted(v)]) for method, v in values.items()}


@pytest.mark.integration  # two evaluate runs and figures: ~4 s
def test_report_page_figures_and_numbers_come_from_the_results(results_folders, tmp_path: Path) -> None:
    first, second = results_folders
    result = CliRunner().invoke(app, ["report", str(first), str(second), "--output", str(tmp_path / "page"),
                                      "--budgets", "8,16,64", "--resamples", "200"])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "page" / "report.md").read_text()
    figures = sorted((tmp_path / "page").glob("*.png"))
    assert [f.name for f in figures] == ["pareto_generated-too_generated-model.png", "pareto_generated_generated-model.png"]
    assert all(f.stat().st_size > 10_000 for f in figures)
    for heading in ("## generated / generated-model", "## generated-too / generated-model", "### Best method per byte budget",
                    "### Q1: does reconstruction MSE predict ranking?", "### Q6:", "## Across datasets"):
        assert heading in page

    rows = {row["method"]: row for row in json.loads((first / "results.json").read_text())}
    per_query = _per_query(first)
    peers_at_8 = [m for m, r in rows.items() if r["peer"] and r["bytes_per_vector"] <= 8]
    best_peer = max(peers_at_8, key=lambda m: rows[m]["ndcg_at_10"])
    difference = paired_bootstrap(per_query["binary_asym"], per_query[best_peer], n_resamples=200, seed=0)
    line = next(line for line in page.splitlines() if line.startswith("| 8 B |"))
    # binary_rescore stores 8 B in memory but rescores from paged float32: it fits no budget.
    assert f"binary_asym (8 B) | {rows['binary_asym']['ndcg_at_10']:.4f}" in line
    assert f"{best_peer} (8 B) | {rows[best_peer]['ndcg_at_10']:.4f}" in line
    assert f"{difference.delta_mean:+.4f} [{difference.ci_low:+.4f}, {difference.ci_high:+.4f}]" in line

    compared = len(rows) - 1
    assert f"Of the {compared} rows compared with float32 on generated" in page
    assert "Spearman correlation of reconstruction MSE with the top-100 swap rate" in page
    table = [line for line in page.splitlines() if re.match(r"\| \d+ \| ", line)]
    assert len(table) == len(rows) + len(json.loads((second / "results.json").read_text()))

    second_per_query = _per_query(second)
    common = sorted(m for m, r in rows.items() if r["peer"] and m in second_per_query)
    never = [m for m in common if all(
        paired_bootstrap(values["float32"], values[m], n_resamples=200, seed=0).ci_low <= 0
        for values in (per_query, second_per_query))]
    assert common
    assert ("so that no quantizer can be shown to beat them on these queries by keeping float32's ranking: "
            + (", ".join(never) or "none") + ".") in page


@pytest.mark.integration  # two evaluate runs and figures: ~4 s
def test_every_peer_is_set_against_float32_and_our_best_row_of_its_size(results_folders, tmp_path: Path) -> None:
    """The lossless ceiling: float32 − peer and ours − peer per peer row, from the per-query values."""
    first, _ = results_folders
    result = CliRunner().invoke(app, ["report", str(first), "--output", str(tmp_path / "page"), "--resamples", "200"])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "page" / "report.md").read_text()
    assert "### Every peer against our best row of its size, and the lossless ceiling" in page
    rows = {row["method"]: row for row in json.loads((first / "results.json").read_text())}
    per_query = _per_query(first)
    peers = [m for m, r in rows.items() if r["peer"]]
    assert peers
    for peer in peers:
        line = next(line for line in page.splitlines() if line.startswith(f"| {peer} | "))
        ceiling = paired_bootstrap(per_query["float32"], per_query[peer], n_resamples=200, seed=0)
        assert f"| {ceiling.delta_mean:+.4f} [{ceiling.ci_low:+.4f}, {ceiling.ci_high:+.4f}] |" in line
        fitting = [m for m, r in rows.items() if not r["peer"] and m != "binary_rescore"
                   and r["bytes_per_vector"] <= rows[peer]["bytes_per_vector"]]
        best = max(fitting, key=lambda m: rows[m]["ndcg_at_10"])
        ours = paired_bootstrap(per_query[best], per_query[peer], n_resamples=200, seed=0)
        assert f"| {best} ({rows[best]['bytes_per_vector']:g} B) |" in line
        assert line.endswith(f"| {ours.delta_mean:+.4f} [{ours.ci_low:+.4f}, {ours.ci_high:+.4f}] | {ours.p_value:.3f} |")
    reachable = sum(1 for peer in peers
                    if paired_bootstrap(per_query["float32"], per_query[peer], n_resamples=200, seed=0).ci_low > 0)
    assert f"float32 itself is significantly above {reachable} of the {len(peers)} peer rows" in page


@pytest.mark.integration  # two evaluate runs and figures: ~4 s
def test_report_rejects_a_folder_given_twice(results_folders, tmp_path: Path) -> None:
    first, _ = results_folders
    result = CliRunner().invoke(app, ["report", str(first), str(first), "--output", str(tmp_path / "page")])
    assert result.exit_code == 2 and "give each row once" in result.output


@pytest.mark.slow
def test_peers_and_report_on_scifact(scifact_dir: Path, tmp_path: Path) -> None:
    """The real run at small scale: SciFact, a few methods of ours and every peer family."""
    result = CliRunner().invoke(app, [
        "evaluate", "--dataset", str(scifact_dir), "--methods", "float32,binary_asym,lloyd_max_gauss",
        "--peers", "faiss", "--resamples", "300", "--output", str(tmp_path / "scifact")])
    assert result.exit_code == 0, result.output
    rows = {row["method"]: row for row in json.loads((tmp_path / "scifact" / "results.json").read_text())}
    assert rows["faiss_pq48x8"]["bytes_per_vector"] == 48 and rows["faiss_opq96_pq96x8"]["bytes_per_vector"] == 96
    assert rows["faiss_sq4"]["bytes_per_vector"] == 192 and rows["st_ubinary"]["bytes_per_vector"] == 48
    assert 0.55 < rows["faiss_pq48x8"]["ndcg_at_10"] < rows["faiss_sq8"]["ndcg_at_10"]
    assert rows["faiss_pq96x8"]["best_ours_at_budget"] == "lloyd_max_gauss"
    started = time.perf_counter()
    report = CliRunner().invoke(app, ["report", str(tmp_path / "scifact"), "--output", str(tmp_path / "page")])
    assert report.exit_code == 0, report.output
    print(f"report took {time.perf_counter() - started:.1f} s")
    assert "faiss_opq48_pq48x8" in (tmp_path / "page" / "report.md").read_text()
