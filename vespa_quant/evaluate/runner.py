"""Evaluate methods x dims on one embedded dataset, on any search backend.

This is the library behind ``vespa-quant evaluate``: load and embed (cached), truncate to each
Matryoshka dim, calibrate, encode, search with a backend (the in-process engine or Vespa), score
with pytrec_eval, and attach bootstrap CIs and a paired bootstrap against float32 (brief Q6).
Every row also says how well the method keeps float32's order of each query's top 100 and what
its reconstruction error is (brief Q1, :mod:`~vespa_quant.evaluate.agreement`); with ``peers``,
published quantizers join the table as rows of their own (:mod:`~vespa_quant.evaluate.peers`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm.auto import tqdm

from vespa_quant.embed.embedded import EmbeddedDataset
from vespa_quant.engine.local import DEFAULT_K1, Hits, check_search_counts, search
from vespa_quant.evaluate.agreement import (
    AGREEMENT_DEPTH,
    Reference,
    agreement_fields,
    exact_reference,
    method_mse,
    method_scores_at,
)
from vespa_quant.evaluate.metrics import bootstrap_ci, paired_bootstrap, per_query_metrics, run_from_topk
from vespa_quant.quantize.base import (
    Arrays,
    Calibration,
    Quantizer,
    bits_per_dim,
    bytes_per_vector,
    calibrate,
    disk_bytes_per_vector,
    encode,
    shared_sign_bits,
)
from vespa_quant.quantize.registry import get_method

NDCG, RECALL = "ndcg_cut_10", "recall_100"


@dataclass
class BackendHits:
    hits: Hits
    latencies_ms: np.ndarray | None = None


class SearchBackend(Protocol):
    """Where the search runs: codes are searched in process, or were fed to Vespa beforehand.

    ``k1`` None is the exhaustive mode, else the two-phase mode with ``k1`` Hamming candidates
    (:mod:`vespa_quant.engine.local`; Vespa: the method's two profiles). ``signs`` are the
    shared sign bits of the raw documents, the first-phase bits of methods without their own.
    """

    name: str

    def served_calibration(self, method: Quantizer, dim: int) -> Calibration | None:
        """The calibration the backend's documents were encoded with, if it is fixed already
        (Vespa: the manifest's active slot); None to calibrate on the corpus here."""
        ...

    def search(self, method: Quantizer, calibration: Calibration, codes: Arrays, queries: np.ndarray,
               k: int, k1: int | None = None, signs: np.ndarray | None = None) -> BackendHits: ...


@dataclass
class LocalBackend:
    """The in-process engine (:mod:`vespa_quant.engine.local`)."""

    name: str = "local"

    def served_calibration(self, method: Quantizer, dim: int) -> Calibration | None:
        return None

    def search(self, method: Quantizer, calibration: Calibration, codes: Arrays, queries: np.ndarray,
               k: int, k1: int | None = None, signs: np.ndarray | None = None) -> BackendHits:
        return BackendHits(search(method, calibration, codes, queries, k=k, k1=k1, signs=signs))


@dataclass
class Evaluation:
    rows: list[dict] = field(default_factory=list)
    per_query: list[dict] = field(default_factory=list)


def score_hits(embedded: EmbeddedDataset, hits: Hits) -> dict[str, np.ndarray]:
    """Per-query NDCG@10 and recall@100, aligned to ``sorted(qrels)``."""
    dataset = embedded.dataset
    run = run_from_topk(dataset.query_ids, dataset.doc_ids, hits.indices, hits.scores)
    return per_query_metrics(dataset.qrels, run, (NDCG, RECALL)).values


@dataclass(frozen=True)
class Float32Truth:
    """One exhaustive float32 search per dim, in process: the baseline every method is compared with
    (per-query NDCG@10), the float32 top-100 the rank agreement is measured on, and the float32 row's
    own hits. Exact float32 search is the same on every backend, so a Vespa evaluation of one method
    needs no float32 fed, and a two-phase row is compared with the true float32 ranking."""

    hits: Hits
    ndcg: np.ndarray
    reference: Reference


def float32_truth(embedded: EmbeddedDataset, dim: int, hits: int = 100) -> Float32Truth:
    docs, queries = embedded.at_dim(dim)
    float32 = get_method("float32")
    calibration = calibrate(float32, docs[:1])
    depth = max(hits, AGREEMENT_DEPTH)
    found = search(float32, calibration, {"vector": np.asarray(docs, dtype=np.float32)}, queries, k=depth)
    top = Hits(found.indices[:, :hits], found.scores[:, :hits])
    return Float32Truth(top, score_hits(embedded, top)[NDCG], exact_reference(docs, queries, found.indices))


def float32_baseline(embedded: EmbeddedDataset, dim: int, hits: int = 100) -> np.ndarray:
    """Per-query NDCG@10 of exhaustive float32 search in process (:class:`Float32Truth`)."""
    return float32_truth(embedded, dim, hits).ndcg


def evaluate(embedded: EmbeddedDataset, methods: Sequence[Quantizer], dims: Sequence[int], *,
             rotation: str = "none", seed: int = 0, backend: SearchBackend | None = None,
             hits: int = 100, k1: int | None = None, n_resamples: int = 1000, bootstrap_seed: int = 0,
             show_progress: bool = True, peers: Sequence[str] = ()) -> Evaluation:
    """One result row per (dim, method), each with a paired bootstrap against float32.

    ``peers`` names peer families (:func:`~vespa_quant.evaluate.peers.parse_peers`); their rows
    follow ours at each dim, compared also with our best row at their byte budget.

    The baseline is :func:`float32_truth`. ``seed`` seeds rotations and calibration samples,
    ``bootstrap_seed`` the query resampling of the CIs, so one can vary without the other.
    """
    check_search_counts(hits, k1)
    backend = backend or LocalBackend()
    dataset = embedded.dataset
    query_order = sorted(dataset.qrels)
    evaluation = Evaluation()
    jobs = [(dim, method) for dim in dims for method in methods]
    progress = tqdm(total=len(jobs), desc="evaluate", unit="method", disable=not show_progress)
    for dim in dims:
        docs, queries = embedded.at_dim(dim)
        signs = shared_sign_bits(docs) if k1 is not None else None
        truth = float32_truth(embedded, dim, hits)
        baseline, reference = truth.ndcg, truth.reference
        dim_rows: list[dict] = []
        ours_ndcg: dict[str, np.ndarray] = {}
        for method in methods:
            started = time.perf_counter()
            calibration = (backend.served_calibration(method, dim)
                           or calibrate(method, docs, rotation=rotation, seed=seed))
            codes = encode(method, docs, calibration)
            method_k1 = DEFAULT_K1 if k1 is None and method.always_first_phase else k1
            if method.name == "float32" and method_k1 is None and isinstance(backend, LocalBackend):
                found = BackendHits(truth.hits)  # the same exhaustive float32 search, done once
            else:
                found = backend.search(method, calibration, codes, queries, hits, k1=method_k1, signs=signs)
            agreement = agreement_fields(reference, method_scores_at(
                method, calibration, codes, queries, reference.rows, k1=method_k1, signs=signs),
                method_mse(method, calibration, codes, docs))
            del codes
            values = score_hits(embedded, found.hits)
            progress.set_postfix_str(f"{method.name}@{dim}")
            delta = paired_bootstrap(values[NDCG], baseline, n_resamples=n_resamples, seed=bootstrap_seed)
            row = {
                "dataset": dataset.name, "model": embedded.model, "dim": dim, "method": method.name,
                "rotation": calibration.rotation, "bits_per_dim": bits_per_dim(method, dim),
                "bytes_per_vector": bytes_per_vector(method, dim),
                "ndcg_at_10": float(values[NDCG].mean()),
                "ndcg_at_10_ci": list(bootstrap_ci(values[NDCG], n_resamples=n_resamples, seed=bootstrap_seed)),
                "recall_at_100": float(values[RECALL].mean()),
                "delta_vs_float32": delta.delta_mean,
                "delta_vs_float32_ci": [delta.ci_low, delta.ci_high],
                "delta_vs_float32_p": delta.p_value,
                "n_queries": len(query_order), "n_docs": len(dataset.doc_ids),
                "disk_bytes_per_vector": disk_bytes_per_vector(method, dim),
                "calibration_id": calibration.id, "backend": backend.name,
                "first_phase_k1": method_k1, "peer": False, **agreement,
                "seconds": round(time.perf_counter() - started, 3),
            }
            if found.latencies_ms is not None and len(found.latencies_ms):
                for pct in (50, 95, 99):
                    row[f"latency_ms_p{pct}"] = float(np.percentile(found.latencies_ms, pct))
            evaluation.rows.append(row)
            dim_rows.append(row)
            ours_ndcg[method.name] = values[NDCG]
            evaluation.per_query.extend(
                {"dim": dim, "method": method.name, "query_id": qid,
                 "ndcg_at_10": float(values[NDCG][i]), "recall_at_100": float(values[RECALL][i])}
                for i, qid in enumerate(query_order)
            )
            progress.update()
        if peers:
            from vespa_quant.evaluate.peers import evaluate_peers, peer_configs

            peer_rows, peer_per_query = evaluate_peers(
                embedded, dim, peer_configs(dim, peers), baseline=baseline, ours=dim_rows, ours_ndcg=ours_ndcg,
                reference=reference, hits=hits, seed=seed, n_resamples=n_resamples, bootstrap_seed=bootstrap_seed,
                show_progress=show_progress)
            evaluation.rows.extend(peer_rows)
            evaluation.per_query.extend(peer_per_query)
    progress.close()
    return evaluation


def write_evaluation(evaluation: Evaluation, out_dir: Path, *, title: str | None = None) -> list[Path]:
    """results.json, results.csv, per_query.csv, pareto.png and table.txt (the printed table) in ``out_dir``.

    Written as a set (:func:`vespa_quant.folders.write_folder`): into a staging folder first, then
    swapped in whole; a failure anywhere (the plot included) leaves the previous results as they were.
    """
    from vespa_quant.evaluate.plot import pareto_plot
    from vespa_quant.evaluate.report import csv_text, format_table, write_results
    from vespa_quant.files import atomic_write_text
    from vespa_quant.folders import write_folder

    def write(staging: Path) -> list[Path]:
        written = list(write_results(evaluation.rows, staging))
        written.append(atomic_write_text(staging / "per_query.csv", csv_text(
            evaluation.per_query, ["dim", "method", "query_id", "ndcg_at_10", "recall_at_100"])))
        written.append(pareto_plot(evaluation.rows, staging / "pareto.png", title=title))
        written.append(atomic_write_text(staging / "table.txt", format_table(evaluation.rows) + "\n"))
        return written

    return write_folder(Path(out_dir), write)
