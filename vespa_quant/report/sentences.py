"""The report's sentences, each rendered from a finding (:mod:`~vespa_quant.report.findings`).

No number is typed here (STYLE 13): every figure in a sentence is a field of a result row or a
statistic computed from the per-query values. The wording follows the thresholds stated once
below, so the same numbers always give the same sentence.
"""

from __future__ import annotations

from collections.abc import Sequence

from vespa_quant.evaluate.agreement import MSE
from vespa_quant.evaluate.metrics import PairedResult
from vespa_quant.report.findings import BudgetLine, Float32Findings, MseFindings, PeerLine
from vespa_quant.report.load import DatasetResults, Entry

STRONG, MODERATE = 0.7, 0.4
"""|Spearman rho| from which a relation is called strong, moderate (below: weak)."""
ALPHA = 0.05
"""Significance level of every "significant" in the report (the 95% intervals)."""
LISTED = 6
"""Most rows named in one sentence; the rest are counted."""


def p_text(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def paired_text(result: PairedResult) -> str:
    return f"{result.delta_mean:+.4f} [{result.ci_low:+.4f}, {result.ci_high:+.4f}], {p_text(result.p_value)}"


def row_delta_text(entry: Entry) -> str:
    low, high = entry.row["delta_vs_float32_ci"]
    p = entry.row.get("delta_vs_float32_p")
    tail = f", {p_text(float(p))}" if p is not None else ""
    return f"{float(entry.row['delta_vs_float32']):+.4f} [{float(low):+.4f}, {float(high):+.4f}]{tail}"


def names(results: DatasetResults, entries: Sequence[Entry], with_delta: bool = False) -> str:
    shown = [f"{results.label(e)} ({row_delta_text(e)})" if with_delta else results.label(e)
             for e in entries[:LISTED]]
    more = len(entries) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def strength(rho: float) -> str:
    size = abs(rho)
    return "strong" if size >= STRONG else "moderate" if size >= MODERATE else "weak"


def q1_sentences(results: DatasetResults, findings: MseFindings) -> list[str]:
    """Brief Q1: does reconstruction MSE predict ranking?"""
    sentences = []
    prediction = findings.prediction
    if prediction is None:
        sentences.append(f"Q1 cannot be answered on {results.dataset} at {findings.dim} dims: fewer than three "
                         "rows have both a reconstruction MSE and a swap rate.")
    else:
        n_peers = sum(1 for e in results.entries if e.peer and e.row["method"] in prediction.methods
                      and int(e.row["dim"]) == findings.dim)
        sentences.append(
            f"Across the {prediction.n_methods} rows with a reconstruction at {findings.dim} dims "
            f"({prediction.n_methods - n_peers} ours, {n_peers} peers), the Spearman correlation of reconstruction "
            f"MSE with the top-100 swap rate is {prediction.rho_swap:+.2f} ({p_text(prediction.p_swap)}) and with "
            f"NDCG@10 {prediction.rho_ndcg:+.2f} ({p_text(prediction.p_ndcg)}).")
        predicts_order = prediction.rho_swap > 0 and prediction.p_swap < ALPHA
        predicts_ndcg = prediction.rho_ndcg < 0 and prediction.p_ndcg < ALPHA
        sentences.append(
            f"So MSE {'does' if predicts_order else 'does not significantly'} predict how well float32's order is "
            f"kept (a {strength(prediction.rho_swap)} relation), and {'does' if predicts_ndcg else 'does not significantly'} "
            f"predict NDCG@10 (a {strength(prediction.rho_ndcg)} relation).")
    if findings.swap_vs_ndcg is not None:
        rho, p = findings.swap_vs_ndcg
        sentences.append(f"The swap rate itself correlates with NDCG@10 at {rho:+.2f} ({p_text(p)}).")
    contradictions = findings.contradictions
    if contradictions:
        significant = [c for c in contradictions if c.difference.ci_high < 0]
        shown = [f"{results.label(c.lower_mse)} vs {results.label(c.higher_mse)} at {c.lower_mse.bytes:g} B "
                 f"(MSE {c.lower_mse.row[MSE]:.3f} vs {c.higher_mse.row[MSE]:.3f}, NDCG@10 difference "
                 f"{paired_text(c.difference)})" for c in (significant or contradictions)[:LISTED if significant else 3]]
        which = "significantly: " if significant else "none significantly; the largest: "
        sentences.append(
            f"{len(contradictions)} pairs of rows of the same size rank the other way round from their MSE, the "
            f"lower-MSE row having the lower NDCG@10 ({len(significant)} of them {which}" + "; ".join(shown) + ").")
    elif prediction is not None:
        sentences.append("No two rows of the same size rank the other way round from their MSE.")
    return sentences


def q6_sentences(results: DatasetResults, findings: Float32Findings) -> list[str]:
    """Brief Q6: which rows differ significantly from float32, and does any quantizer beat it?"""
    n = len(findings.compared)
    if n == 0:
        return [f"Q6 cannot be answered on {results.dataset}: no row has a paired interval against float32."]
    n_peers = sum(1 for entry in findings.compared if entry.peer)
    sentences = [
        f"Of the {n} rows compared with float32 on {results.dataset} ({n - n_peers} ours, {n_peers} peers; "
        f"paired bootstrap over "
        f"{len(findings.compared[0].query_ids)} queries), {len(findings.worse)} are significantly worse and "
        f"{len(findings.better)} significantly better."]
    if findings.better:
        sentences.append("Significantly better than float32: " + names(results, findings.better, True) + ".")
    else:
        sentences.append("No quantizer beats float32 significantly.")
    if findings.above_not_significant:
        sentences.append("Above float32 but within noise (the interval includes 0): "
                         + names(results, findings.above_not_significant, True) + ".")
    if findings.worse:
        sentences.append("Significantly worse: " + names(results, findings.worse) + ".")
    return sentences


def budget_sentences(results: DatasetResults, lines: Sequence[BudgetLine]) -> list[str]:
    """Where ours beats, ties or loses to the best peer at each byte budget."""
    groups: dict[str, list[str]] = {"beats": [], "ties": [], "loses": []}
    missing = []
    for line in lines:
        if line.ours is None or line.peer is None or line.difference is None or line.verdict is None:
            absent = ("nothing fits" if line.ours is None and line.peer is None
                      else "no row of ours fits" if line.ours is None else "no peer fits")
            missing.append(f"{line.budget} B ({absent})")
            continue
        groups[line.verdict].append(
            f"{line.budget} B ({results.label(line.ours)} {line.ours.mean:.4f} vs {results.label(line.peer)} "
            f"{line.peer.mean:.4f}: {paired_text(line.difference)})")
    sentences = []
    for key, phrase in (("beats", "beats the best peer significantly"), ("ties", "ties the best peer"),
                        ("loses", "loses to the best peer significantly")):
        if groups[key]:
            sentences.append(f"Our best row {phrase} at " + "; ".join(groups[key]) + ".")
    if missing:
        sentences.append("Not compared: " + ", ".join(missing) + ".")
    return sentences


def ceiling_sentences(results: DatasetResults, lines: Sequence[PeerLine]) -> list[str]:
    """Which peers even a lossless code could be shown to beat on these queries, and which ours does.

    A quantizer's score approximates float32's, so its expected NDCG@10 is float32's plus its own
    error: where float32's own paired interval against a peer includes 0, a quantizer can come out
    "significantly better" only by departing from float32 in the lucky direction on these queries.
    """
    compared = [line for line in lines if line.float32_minus_peer is not None]
    if not compared:
        return [f"No float32 row on {results.dataset}: the lossless ceiling is not computed."]
    n = len(compared[0].peer.query_ids)
    reachable = [line for line in compared if line.ceiling_verdict == "beats"]
    out_of_reach = [line for line in compared if line.ceiling_verdict != "beats"]

    def listing(chosen: Sequence[PeerLine]) -> str:
        shown = [f"{results.label(line.peer)} ({line.peer.bytes:g} B, float32 − peer "
                 f"{paired_text(line.float32_minus_peer)})" for line in chosen[:LISTED] if line.float32_minus_peer]
        more = len(chosen) - len(shown)
        return "; ".join(shown) + (f" and {more} more" if more > 0 else "")
    sentences = [f"On {results.dataset}'s {n} queries float32 itself is significantly above {len(reachable)} of "
                 f"the {len(compared)} peer rows" + (f": {listing(reachable)}." if reachable else ".")]
    if out_of_reach:
        sentences.append("Not even a lossless code could be shown to beat " + listing(out_of_reach)
                         + ": there a quantizer is significantly better only by departing from float32's ranking "
                         "in the lucky direction on these queries.")
    beaten = [line for line in compared if line.ours_verdict == "beats"]
    above = [line for line in compared if line.ours_minus_peer is not None and line.ours_minus_peer.delta_mean > 0]
    sentences.append(f"Our best row of the same size is above {len(above)} of the {len(compared)} peer rows in "
                     f"point estimate and significantly above {len(beaten)}"
                     + (": " + ", ".join(f"{results.label(line.peer)} (by {results.label(line.ours)}, "
                                         f"{paired_text(line.ours_minus_peer)})"
                                         for line in beaten[:LISTED] if line.ours and line.ours_minus_peer) + "."
                        if beaten else "."))
    return sentences


def ceiling_across(all_results: Sequence[DatasetResults], lines: Sequence[Sequence[PeerLine]]) -> list[str]:
    """Peers that float32 itself is significantly above on no dataset: no quantizer can be shown to beat them here."""
    if len(all_results) < 2:
        return []
    out_of_reach = [{line.peer.label() for line in dataset if line.float32_minus_peer is not None
                     and line.ceiling_verdict != "beats"} for dataset in lines]
    compared = [{line.peer.label() for line in dataset if line.float32_minus_peer is not None} for dataset in lines]
    everywhere = set.intersection(*compared)
    never = sorted(set.intersection(*out_of_reach) & everywhere)
    datasets = ", ".join(r.dataset for r in all_results)
    return [f"Peers that float32 itself is significantly above on none of the datasets ({datasets}), so that no "
            "quantizer can be shown to beat them on these queries by keeping float32's ranking: "
            + (", ".join(never) or "none") + "."]


def across_datasets(all_results: Sequence[DatasetResults], findings: Sequence[Float32Findings]) -> list[str]:
    """Q6 over every dataset at once: significant on all of them, in the same direction."""
    if len(all_results) < 2:
        return []
    def keys(entries: Sequence[Entry]) -> set[tuple]:
        return {(e.row["method"], e.row.get("rotation"), e.row["dim"]) for e in entries}

    datasets = ", ".join(r.dataset for r in all_results)
    better = set.intersection(*(keys(f.better) for f in findings))
    worse = set.intersection(*(keys(f.worse) for f in findings))
    label = lambda key: str(key[0]) + ("" if key[1] in (None, "", "none") else f"+{key[1]}")  # noqa: E731
    sentences = [f"Significantly better than float32 on every dataset ({datasets}): "
                 + (", ".join(sorted(label(k) for k in better)) or "none") + "."]
    sentences.append(f"Significantly worse on every dataset: {len(worse)} rows"
                     + (f" ({', '.join(sorted(label(k) for k in worse)[:LISTED])}"
                        + (" ...)" if len(worse) > LISTED else ")") if worse else "") + ".")
    return sentences
