"""``report.md``: one Markdown page from one or more results folders (issue 11, point 5).

Per dataset: the Pareto figure, the best row per byte budget against the best peer (paired 95%
CI of the difference, from ``per_query.csv``), every peer against our best row of its size and
against float32 (the ceiling any quantizer can reach), the research questions answered in sentences
(:mod:`~vespa_quant.report.sentences`) and every row in one table; then what holds across the
datasets. Every number on the page is read from the results files or computed from them here
(STYLE 13); re-running on the same folders gives the same page byte for byte.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

from vespa_quant.evaluate.agreement import MSE, SWAP, TAU
from vespa_quant.evaluate.metrics import PairedResult
from vespa_quant.files import atomic_write_text
from vespa_quant.folders import write_folder
from vespa_quant.report.figures import pareto_figure
from vespa_quant.report.findings import (
    DEFAULT_BUDGETS,
    BudgetLine,
    PeerLine,
    budget_lines,
    float32_findings,
    mse_findings,
    peer_lines,
)
from vespa_quant.report.load import DatasetResults, Entry, load_datasets
from vespa_quant.report.sentences import (
    across_datasets,
    budget_sentences,
    ceiling_across,
    ceiling_sentences,
    q1_sentences,
    q6_sentences,
)

REPORT_MD = "report.md"


def _number(value: object, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return format(float(value), spec)  # type: ignore[arg-type]


def _small(value: object) -> str:
    """Three decimals, or two significant digits below 0.001 (an int8 MSE is ~1e-5, not 0)."""
    if value is None or not math.isfinite(float(value)):  # type: ignore[arg-type]
        return "–"
    number = float(value)  # type: ignore[arg-type]
    return f"{number:.3f}" if number == 0 or abs(number) >= 0.001 else f"{number:.1e}"


def _interval(value: object, centre: object, spec: str) -> str:
    if not isinstance(value, (list, tuple)) or len(value) != 2 or None in value:
        return _number(centre, spec)
    return f"{_number(centre, spec)} [{_number(value[0], spec)}, {_number(value[1], spec)}]"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def ordered_entries(results: DatasetResults) -> list[Entry]:
    """Entries by size, then best NDCG@10 first: the order of the figure numbers and the table."""
    return sorted(results.entries, key=lambda e: (e.bytes, -e.mean, e.peer, results.label(e)))


def rows_table(results: DatasetResults, entries: Sequence[Entry], numbers: Sequence[int]) -> list[str]:
    header = ["#", "method", "peer", "dim", "bytes", "NDCG@10 [95% CI]", "Δ vs float32 [CI]", "p",
              "Kendall τ@100", "swap rate", "MSE", "Δ vs our best ≤ bytes [CI]"]
    body = []
    for number, entry in zip(numbers, entries):
        row = entry.row
        versus = "–"
        if row.get("delta_vs_best_ours") is not None:
            versus = (f"{_interval(row.get('delta_vs_best_ours_ci'), row['delta_vs_best_ours'], '+.4f')} "
                      f"vs {row.get('best_ours_at_budget')}")
        paged = f" (+{int(row['disk_bytes_per_vector'])} paged)" if row.get("disk_bytes_per_vector") else ""
        body.append([
            str(number), results.label(entry), "yes" if entry.peer else "", str(row["dim"]),
            f"{entry.bytes:g}{paged}", _interval(row.get("ndcg_at_10_ci"), row["ndcg_at_10"], ".4f"),
            _interval(row.get("delta_vs_float32_ci"), row.get("delta_vs_float32"), "+.4f"),
            _number(row.get("delta_vs_float32_p"), ".3f"), _number(row.get(TAU), ".3f"),
            _number(row.get(SWAP), ".3f"), _small(row.get(MSE)), versus,
        ])
    return _table(header, body)


def _entry_cells(results: DatasetResults, entry: Entry | None) -> tuple[str, str]:
    """(label with bytes, NDCG@10) of a row, or dashes."""
    if entry is None:
        return "–", "–"
    return f"{results.label(entry)} ({entry.bytes:g} B)", _number(entry.mean, ".4f")


def _difference(result: PairedResult | None) -> tuple[str, str]:
    """(difference [CI], p) of a paired bootstrap, or dashes."""
    if result is None:
        return "–", "–"
    return (f"{result.delta_mean:+.4f} [{result.ci_low:+.4f}, {result.ci_high:+.4f}]", _number(result.p_value, ".3f"))


def budget_table(results: DatasetResults, lines: Sequence[BudgetLine]) -> list[str]:
    header = ["budget", "best of ours ≤ budget", "NDCG@10", "best peer ≤ budget", "NDCG@10",
              "ours − peer [95% CI]", "p", "verdict"]
    body = [[f"{line.budget} B", *_entry_cells(results, line.ours), *_entry_cells(results, line.peer),
             *_difference(line.difference), f"ours {line.verdict}" if line.verdict else "–"] for line in lines]
    return _table(header, body)


def peer_table(results: DatasetResults, lines: Sequence[PeerLine]) -> list[str]:
    header = ["peer", "bytes", "NDCG@10", "float32 − peer [95% CI]", "p", "best of ours ≤ bytes", "NDCG@10",
              "ours − peer [95% CI]", "p"]
    body = [[results.label(line.peer), f"{line.peer.bytes:g}", _number(line.peer.mean, ".4f"),
             *_difference(line.float32_minus_peer), *_entry_cells(results, line.ours),
             *_difference(line.ours_minus_peer)] for line in lines]
    return _table(header, body)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def build_report(folders: Sequence[Path], output: Path, *, budgets: Sequence[int] = DEFAULT_BUDGETS,
                 n_resamples: int = 1000, bootstrap_seed: int = 0) -> list[Path]:
    """Write ``report.md`` and one ``pareto_<dataset>_<model>.png`` per dataset into ``output``, as a set
    (:func:`vespa_quant.folders.write_folder`: a failure leaves an earlier report untouched)."""
    all_results = load_datasets([Path(folder) for folder in folders])
    return write_folder(Path(output), lambda staging: _write_report(all_results, folders, staging, budgets=budgets,
                                                                    n_resamples=n_resamples, bootstrap_seed=bootstrap_seed))


def _write_report(all_results: Sequence[DatasetResults], folders: Sequence[Path], output: Path, *,
                  budgets: Sequence[int], n_resamples: int, bootstrap_seed: int) -> list[Path]:
    written: list[Path] = []
    page = ["# Quantized embeddings: quality, size and peers", "",
            "Generated by `vespa-quant report` from " + ", ".join(f"`{folder}`" for folder in folders) + ". "
            "Every number below is read from those folders' `results.json` and `per_query.csv` or computed from "
            "them; paired intervals resample queries jointly (95%, "
            f"{n_resamples} resamples, seed {bootstrap_seed}). Bytes are memory per document (codes only); rows "
            "that rescore from a paged float32 copy fit no budget.", ""]
    float32_by_dataset = []
    peers_by_dataset = []
    for results in all_results:
        entries = ordered_entries(results)
        numbers = list(range(1, len(entries) + 1))
        ordered = DatasetResults(results.dataset, results.model, tuple(entries))
        figure = pareto_figure(ordered, output / f"pareto_{_slug(results.dataset)}_{_slug(results.model)}.png", numbers)
        written.append(figure)
        lines = budget_lines(ordered, budgets, n_resamples=n_resamples, seed=bootstrap_seed)
        versus_float32 = float32_findings(ordered)
        float32_by_dataset.append(versus_float32)
        mse = mse_findings(ordered, n_resamples=n_resamples, seed=bootstrap_seed)
        against_peers = peer_lines(ordered, n_resamples=n_resamples, seed=bootstrap_seed)
        peers_by_dataset.append(against_peers)
        n_peers = sum(1 for e in entries if e.peer)
        page += [f"## {results.dataset} / {results.model}", "",
                 f"{len(entries) - n_peers} rows of ours and {n_peers} peer rows, "
                 f"{len(entries[0].query_ids)} queries.", "",
                 f"![Pareto front, {results.dataset}]({figure.name})", "",
                 "### Best method per byte budget", ""]
        page += budget_table(ordered, lines) + [""]
        page += [" ".join(budget_sentences(ordered, lines)), "",
                 "### Every peer against our best row of its size, and the lossless ceiling", ""]
        page += peer_table(ordered, against_peers) + [""]
        page += [" ".join(ceiling_sentences(ordered, against_peers)), "",
                 "### Q1: does reconstruction MSE predict ranking?", "",
                 " ".join(q1_sentences(ordered, mse)), "",
                 "### Q6: which methods differ significantly from float32?", "",
                 " ".join(q6_sentences(ordered, versus_float32)), "",
                 "### Every row", ""]
        page += rows_table(ordered, entries, numbers) + [""]
    summary = across_datasets(all_results, float32_by_dataset) + ceiling_across(all_results, peers_by_dataset)
    if summary:
        page += ["## Across datasets", "", " ".join(summary), ""]
    page += ["## Definitions", "",
             "Kendall τ@100 and swap rate compare, per query, float32's top 100 documents as float32 orders them "
             "with the method's scores of the same documents (swap rate: the fraction of pairs whose order flips, "
             "a tie counting one half; documents a two-phase search never returns rank last), averaged over queries. "
             "MSE is the reconstruction error as a fraction of the corpus variance after the least-squares global "
             "scale and offset (which a ranking cannot see); rows without a reconstruction that the score uses "
             "show –.", ""]
    written.insert(0, atomic_write_text(output / REPORT_MD, "\n".join(page)))
    return written
