"""The lab's commands: evaluate quantizers (and their peers), list them, measure streaming drift, analyze a
corpus, and render the report page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from vespa_quant.cli import app
from vespa_quant.cli.common import (
    COMMAND_STARTED,
    Backend,
    BootstrapSeedOption,
    CacheDirOption,
    DataRootOption,
    DatasetOption,
    DimsOption,
    DocEmbeddingsOption,
    EndpointOption,
    K1Option,
    MethodsOption,
    ModelOption,
    QueryEmbeddingsOption,
    ResamplesOption,
    RotationOption,
    SeedOption,
    StreamOrder,
    TimeoutOption,
    check_dims_syntax,
    check_output_dir,
    cli_errors,
    echo_written,
    load_inputs,
    parse_dims,
    parse_floats,
)
from vespa_quant.errors import VespaQuantError
from vespa_quant.folders import check_results_dir, folder_lock


@app.command("methods")
@cli_errors
def methods_command(dim: Annotated[int, typer.Option("--dim", min=8, help="Dim for the byte figures.")] = 384) -> None:
    """List the registered quantization methods with their storage and capabilities."""
    from vespa_quant.quantize.base import bytes_per_vector, sign_role
    from vespa_quant.quantize.registry import METHODS

    for name, method in METHODS.items():
        first = "own sign bits" if sign_role(method) else "shared sign bits"
        kind = "calibrated" if method.needs_calibration else "calibration-free"
        typer.echo(f"{name:24s} {bytes_per_vector(method, dim):5d} B/vector at {dim}  {kind:16s} first phase: {first}")


@app.command("evaluate")
@cli_errors
def evaluate_command(
    dataset: DatasetOption = "scifact",
    model: ModelOption = "all-MiniLM-L6-v2",
    methods: MethodsOption = "all",
    dims: DimsOption = None,
    rotation: RotationOption = "none",
    backend: Annotated[Backend, typer.Option(
        "--backend", help="local: the in-process engine; vespa: query a running Vespa fed with `vespa-quant feed`.")] = "local",
    endpoint: EndpointOption = "http://localhost:8080",
    k1: K1Option = None,
    hits: Annotated[int, typer.Option("--hits", min=1, max=400, help="Hits per query scored (recall@100 needs 100).")] = 100,
    resamples: ResamplesOption = 1000,
    seed: SeedOption = 0,
    bootstrap_seed: BootstrapSeedOption = 0,
    output: Annotated[Path, typer.Option(
        "--output", "-o", help="Results folder (results.json, results.csv, per_query.csv, pareto.png, table.txt), "
                               "replaced as a whole when the run succeeds.")] = Path("out/evaluate"),
    data_root: DataRootOption = None,
    cache_dir: CacheDirOption = None,
    doc_embeddings: DocEmbeddingsOption = None,
    query_embeddings: QueryEmbeddingsOption = None,
    calibration_dir: Annotated[Path, typer.Option(
        "--calibration-dir", help="With --backend vespa: the folder `vespa-quant feed` wrote; queries follow its "
                                  "active slots, and its manifest must describe this dataset.")] = Path("out/calibrations"),
    timeout: TimeoutOption = 60.0,
    peers: Annotated[Optional[str], typer.Option(
        "--peers", help="Add published quantizers as rows, trained on the same corpus: 'faiss' (all: faiss PQ, OPQ, SQ, "
                        "RaBitQ and sentence-transformers' binary/uint8 recipe) or comma-separated families "
                        "pq, opq, sq, rabitq, st.")] = None,
) -> None:
    """Evaluate quantization methods: NDCG@10 with bootstrap CIs, bytes/vector, paired delta vs float32."""
    from vespa_quant.evaluate.peers import parse_peers
    from vespa_quant.evaluate.report import format_table
    from vespa_quant.evaluate.runner import LocalBackend, SearchBackend, evaluate, write_evaluation
    from vespa_quant.quantize.registry import parse_methods

    chosen = parse_methods(methods)
    peer_families = parse_peers(peers)
    check_dims_syntax(dims)
    check_results_dir(output)
    if k1 is not None and hits > k1:
        raise VespaQuantError(f"--hits {hits} is more than --k1 {k1}: a two-phase search returns at most k1 hits")
    with folder_lock(output):
        before_embedding = None
        if backend == "vespa":
            from vespa_quant.vespa.client import HttpPolicy, check_endpoint
            from vespa_quant.vespa.manifest import check_manifest_dataset, read_manifest

            policy = HttpPolicy(timeout=timeout)
            read_manifest(calibration_dir)
            check_endpoint(endpoint, policy, started=COMMAND_STARTED[0])

            def before_embedding(loaded) -> None:
                check_manifest_dataset(calibration_dir, loaded, model)

        embedded = load_inputs(dataset, model, data_root=data_root, cache_dir=cache_dir, doc_embeddings=doc_embeddings,
                               query_embeddings=query_embeddings, before_embedding=before_embedding)
        search_backend: SearchBackend
        if backend == "vespa":
            from vespa_quant.vespa.backend import VespaBackend

            search_backend = VespaBackend(endpoint=endpoint, doc_ids=embedded.dataset.doc_ids,
                                          calibration_dir=calibration_dir, policy=policy)
        else:
            search_backend = LocalBackend()
        evaluation = evaluate(embedded, chosen, parse_dims(dims, embedded.native_dim), rotation=rotation, seed=seed,
                              backend=search_backend, hits=hits, k1=k1, n_resamples=resamples,
                              bootstrap_seed=bootstrap_seed, peers=peer_families)
        written = write_evaluation(evaluation, output, title=f"{embedded.dataset.name} / {model}")
    typer.echo(format_table(evaluation.rows))
    echo_written(written)


@app.command("drift")
@cli_errors
def drift_command(
    dataset: DatasetOption = "scifact",
    model: ModelOption = "all-MiniLM-L6-v2",
    methods: MethodsOption = "all",
    calibration_fraction: Annotated[str, typer.Option(
        "--calibration-fraction", help="Comma-separated fractions of the stream each frozen calibration is learned on.")] = "0.01,0.05,0.1,0.25",
    order: Annotated[StreamOrder, typer.Option(
        "--order", help="Stream order: random (seeded shuffle) or given (corpus file order).")] = "random",
    seed: SeedOption = 0,
    calibrate_on: Annotated[Optional[str], typer.Option(
        "--calibrate-on", help="Cross-domain: calibrate on this other dataset (same model), serve --dataset.")] = None,
    dim: Annotated[Optional[int], typer.Option("--dim", min=8, help="Matryoshka dim to run at (default: the model's native dim).")] = None,
    rotation: RotationOption = "none",
    steps: Annotated[int, typer.Option("--steps", min=1, help="Streaming checkpoints: drift is measured every 1/steps of the corpus.")] = 10,
    repeats: Annotated[Optional[int], typer.Option(
        "--repeats", min=1, help="Calibration draws per fraction (default 5 for --order random, 1 for given; 1 with "
                                 "--backend vespa, where every draw is one more rewrite of the whole corpus's inactive slot).")] = None,
    backend: Annotated[Backend, typer.Option(
        "--backend", help="Where the stream goes and every NDCG@10 comes from. local: the in-process engine. vespa: the "
                          "documents are put into an EMPTY Vespa in stream order (fresh `vespa-quant up`; the package needs "
                          "the --dim fields), each checkpoint is queried there, and the policy recalibrates for real: "
                          "the fresh calibration is written into the inactive slot, verified, and switched to when the "
                          "policy fires. Both give the same rows.")] = "local",
    endpoint: EndpointOption = "http://localhost:8080",
    calibration_dir: Annotated[Optional[Path], typer.Option(
        "--calibration-dir", help="With --backend vespa (required): where the run's manifest.json and every calibration "
                                  "it writes go; it then describes what the Vespa holds, so `evaluate --backend vespa` "
                                  "can query the final state.")] = None,
    k1: K1Option = None,
    resamples: ResamplesOption = 1000,
    output: Annotated[Path, typer.Option(
        "--output", "-o", help="Results folder (drift.json/csv, drift_steps.csv, policy.csv, policy_steps.csv, drift.png, "
                               "table.txt), replaced as a whole when the run succeeds.")] = Path("out/drift"),
    data_root: DataRootOption = None,
    cache_dir: CacheDirOption = None,
    doc_embeddings: DocEmbeddingsOption = None,
    query_embeddings: QueryEmbeddingsOption = None,
) -> None:
    """Streaming drift: how calibrations frozen on early documents degrade, and when to recalibrate.

    Checkpoint rows (drift_steps.csv, policy_steps.csv) score the documents that have arrived, as a user of the live
    index sees them; fraction and policy rows score the whole corpus once the stream is complete.
    """
    from vespa_quant.drift.experiment import check_fractions, run_drift
    from vespa_quant.drift.runner import format_drift_table, write_drift
    from vespa_quant.drift.stream import LocalStreamIndex, StreamIndex
    from vespa_quant.quantize.registry import parse_methods

    chosen = parse_methods(methods)
    fractions = check_fractions(parse_floats(calibration_fraction, "--calibration-fraction"))
    check_results_dir(output)
    index: StreamIndex = LocalStreamIndex()
    if backend == "vespa":
        from vespa_quant.vespa.stream import VespaStreamIndex

        if calibration_dir is None:
            raise VespaQuantError("--backend vespa needs --calibration-dir: the folder for the run's manifest.json "
                                  "and calibrations")
        check_output_dir(calibration_dir, "--calibration-dir")
        vespa_index = VespaStreamIndex(endpoint, calibration_dir)
        vespa_index.check()  # health and an empty index, before any compute
        index = vespa_index
    with folder_lock(output):
        embedded = load_inputs(dataset, model, data_root=data_root, cache_dir=cache_dir,
                               doc_embeddings=doc_embeddings, query_embeddings=query_embeddings)
        other = load_inputs(calibrate_on, model, data_root=data_root, cache_dir=cache_dir) if calibrate_on else None
        default_repeats = 5 if order == "random" and backend == "local" else 1
        report = run_drift(embedded, chosen, fractions, order=order, seed=seed, calibrate_on=other, steps=steps,
                           n_resamples=resamples, rotation=rotation, dim=dim, repeats=repeats or default_repeats,
                           index=index, k1=k1, show_progress=True)
        written = write_drift(report, output)
    typer.echo(format_drift_table(report))
    echo_written(written)


@app.command("analyze")
@cli_errors
def analyze_command(
    dataset: DatasetOption = "scifact",
    model: ModelOption = "all-MiniLM-L6-v2",
    dims: DimsOption = None,
    output: Annotated[Path, typer.Option(
        "--output", "-o", help="Results folder (analysis.json, analysis.csv, analysis.png, table.txt), replaced as a "
                               "whole when the run succeeds.")] = Path("out/analysis"),
    data_root: DataRootOption = None,
    cache_dir: CacheDirOption = None,
    doc_embeddings: DocEmbeddingsOption = None,
    query_embeddings: QueryEmbeddingsOption = None,
) -> None:
    """Research diagnostics of the corpus embeddings: per-dimension shape (kurtosis, skewness, Gaussian vs
    Laplace), median offset, correlation vs PCA, and quantizer MSE against rate-distortion bounds (brief Q2,
    Q3, Q5, Q7, Q8)."""
    from vespa_quant.research import analyze, format_analysis, write_analysis

    check_dims_syntax(dims)
    check_results_dir(output)
    with folder_lock(output):
        embedded = load_inputs(dataset, model, data_root=data_root, cache_dir=cache_dir,
                               doc_embeddings=doc_embeddings, query_embeddings=query_embeddings)
        rows = analyze(embedded, parse_dims(dims, embedded.native_dim))
        written = write_analysis(rows, output)
    typer.echo(format_analysis(rows))
    echo_written(written)


@app.command("report")
@cli_errors
def report_command(
    results: Annotated[list[Path], typer.Argument(
        help="Results folders written by `vespa-quant evaluate` (results.json and per_query.csv in each).")],
    output: Annotated[Path, typer.Option(
        "--output", "-o", help="Folder for report.md and its PNG figures, replaced as a whole.")] = Path("out/report"),
    budgets: Annotated[str, typer.Option(
        "--budgets", help="Comma-separated bytes/vector budgets of the best-per-budget table.")] = "32,48,64,96,128,192",
    resamples: ResamplesOption = 1000,
    bootstrap_seed: BootstrapSeedOption = 0,
) -> None:
    """One Markdown page from results folders: Pareto fronts, best method per byte budget against the best peer,
    and the research questions (Q1: does MSE predict ranking?, Q6: who differs from float32?) answered from the numbers."""
    from vespa_quant.cli.common import parse_ints
    from vespa_quant.report import build_report

    check_results_dir(output)
    written = build_report(results, output, budgets=parse_ints(budgets, "--budgets"), n_resamples=resamples,
                           bootstrap_seed=bootstrap_seed)
    echo_written(written)
