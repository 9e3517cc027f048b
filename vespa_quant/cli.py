"""``vespa-quant``: a thin command line over the library; each command calls one public function."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Callable, Optional

import typer

from vespa_quant.errors import VespaQuantError

app = typer.Typer(
    help="Quantized text embeddings on Vespa: evaluate quantizers in process or on Vespa, deploy the "
         "generated application package, feed, recalibrate, and measure streaming drift.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)



@app.callback()
def _group() -> None:
    """Quantized text embeddings on Vespa: evaluate quantizers, deploy, feed, measure drift."""


DatasetOption = typer.Option(
    "scifact", "--dataset", "-d",
    help="BEIR dataset: a folder in BEIR layout, or a name looked up under --data-root "
         "(downloaded from the BEIR mirror when missing and online).",
)
ModelOption = typer.Option(
    "all-MiniLM-L6-v2", "--model", "-m",
    help="sentence-transformers model: all-MiniLM-L6-v2 (bundled, offline), mxbai-embed-large-v1, "
         "nomic-embed-text-v1.5, or any hub id. Embeddings are cached on disk.",
)
MethodsOption = typer.Option(
    "all", "--methods",
    help="Comma-separated quantization methods, or 'all': float32, bfloat16, int8_asym, binary_asym, "
         "binary_median_asym, binary_hamming, binary_rescore, quaternary_asym, lloyd_max_gauss, lloyd_max_empir.",
)
DimsOption = typer.Option(
    None, "--dims", help="Comma-separated Matryoshka dims (first k dims, re-normalised). Default: the model's native dim.",
)
RotationOption = typer.Option("none", "--rotation", help="Orthogonal rotation before quantizing: none, hadamard or qr (seeded).")
SeedOption = typer.Option(0, "--seed", help="Seed for rotations and bootstrap resampling.")
DataRootOption = typer.Option(
    None, "--data-root", envvar="VESPA_QUANT_DATA",
    help="Folder holding BEIR datasets by name (env VESPA_QUANT_DATA; default ~/.cache/vespa-quant/datasets).",
)
CacheDirOption = typer.Option(
    None, "--cache-dir", envvar="VESPA_QUANT_CACHE",
    help="Embedding cache folder (env VESPA_QUANT_CACHE; default ~/.cache/vespa-quant/embeddings).",
)
DocEmbeddingsOption = typer.Option(
    None, "--doc-embeddings",
    help="Bring your own model: a .npy of document vectors; ids from the file beside it with suffix .ids (one per line).",
)
QueryEmbeddingsOption = typer.Option(None, "--query-embeddings", help="As --doc-embeddings, for the queries.")


def cli_errors(command: Callable) -> Callable:
    """Turn the package's errors into one line on stderr and exit code 2, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except VespaQuantError as error:
            typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None

    return wrapper


def parse_dims(spec: Optional[str], native: int) -> list[int]:
    if not spec:
        return [native]
    try:
        return [int(part) for part in spec.split(",") if part.strip()]
    except ValueError:
        raise VespaQuantError(f"--dims must be comma-separated integers, got {spec!r}") from None


def precomputed_embeddings(doc: Optional[Path], query: Optional[Path]) -> dict:
    return {
        kind: (path, path.with_suffix(".ids"))
        for kind, path in (("document", doc), ("query", query)) if path is not None
    }


@app.command("evaluate")
@cli_errors
def evaluate_command(
    dataset: str = DatasetOption,
    model: str = ModelOption,
    methods: str = MethodsOption,
    dims: Optional[str] = DimsOption,
    rotation: str = RotationOption,
    backend: str = typer.Option("local", "--backend", help="local: the in-process engine; vespa: query a running Vespa fed with `vespa-quant feed`."),
    endpoint: str = typer.Option("http://localhost:8080", "--endpoint", help="Vespa query endpoint for --backend vespa."),
    first_phase: str = typer.Option("auto", "--first-phase", help="auto: Hamming first phase only for binary_hamming/binary_rescore (defined by it); hamming: also for every other method with sign bits (binary, 2-bit); none: exhaustive except those two."),
    k1: int = typer.Option(100, "--k1", help="Candidates kept per query by the Hamming first phase."),
    hits: int = typer.Option(100, "--hits", help="Hits per query scored (recall@100 needs 100)."),
    resamples: int = typer.Option(1000, "--resamples", help="Bootstrap resamples of the queries for the 95% CIs."),
    seed: int = SeedOption,
    output: Path = typer.Option(Path("out"), "--output", "-o", help="Folder for results.json, results.csv, per_query.csv and pareto.png."),
    data_root: Optional[Path] = DataRootOption,
    cache_dir: Optional[Path] = CacheDirOption,
    doc_embeddings: Optional[Path] = DocEmbeddingsOption,
    query_embeddings: Optional[Path] = QueryEmbeddingsOption,
    calibration_dir: Optional[Path] = typer.Option(None, "--calibration-dir", help="With --backend vespa: the folder `vespa-quant feed` wrote; every hit is checked against its calibration set."),
) -> None:
    """Evaluate quantization methods: NDCG@10 with bootstrap CIs, bytes/vector, paired delta vs float32."""
    from vespa_quant.evaluate.report import format_table
    from vespa_quant.embed.embedded import load_embedded
    from vespa_quant.evaluate.runner import LocalBackend, evaluate, write_evaluation
    from vespa_quant.quantize.registry import parse_methods

    chosen = parse_methods(methods)
    embedded = load_embedded(dataset, model, data_root=data_root, cache_dir=cache_dir,
                             precomputed=precomputed_embeddings(doc_embeddings, query_embeddings))
    if backend == "local":
        search_backend = LocalBackend(first_phase=first_phase, k1=k1)
    elif backend == "vespa":
        from vespa_quant.evaluate.vespa_backend import VespaBackend

        search_backend = VespaBackend(endpoint=endpoint, doc_ids=embedded.dataset.doc_ids,
                                      first_phase=first_phase, k1=k1, calibration_dir=calibration_dir)
    else:
        raise VespaQuantError(f"--backend must be 'local' or 'vespa', got {backend!r}")
    evaluation = evaluate(embedded, chosen, parse_dims(dims, embedded.native_dim), rotation=rotation,
                          seed=seed, backend=search_backend, hits=hits, n_resamples=resamples)
    written = write_evaluation(evaluation, output, title=f"{embedded.dataset.name} / {model}")
    typer.echo(format_table(evaluation.rows))
    typer.echo("wrote " + ", ".join(str(path) for path in written))


@app.command("deploy")
@cli_errors
def deploy_command(
    methods: str = MethodsOption,
    dims: str = typer.Option("384,256", "--dims", help="Comma-separated dims to create fields and rank profiles for."),
    variant: str = typer.Option("single", "--variant", help="single: one node (docker compose up -d); cluster: config + container + two content nodes (docker compose --profile cluster up -d)."),
    out: Path = typer.Option(Path("."), "--out", help="Where schemas/ and vespa_app/ are written (the repository root by default)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only write the generated package (and the deployable folder out/application-VARIANT); contact no server."),
    config_url: Optional[str] = typer.Option(None, "--config-url", help="Config server (default http://localhost:19071, cluster: http://localhost:19072)."),
    endpoint: Optional[str] = typer.Option(None, "--endpoint", help="Query container to wait for (default http://localhost:8080, cluster: http://localhost:8081)."),
    timeout: float = typer.Option(300, "--timeout", help="Seconds to wait for the config server, the deploy and the container."),
) -> None:
    """Generate the Vespa application package from the method registry, and deploy it."""
    from vespa_quant.quantize.registry import parse_methods
    from vespa_quant.vespa_app.deploy import deploy, wait_until_ready
    from vespa_quant.vespa_app.package import assemble, write_package

    if variant not in ("single", "cluster"):
        raise VespaQuantError(f"--variant must be 'single' or 'cluster', got {variant!r}")
    written = write_package(out, parse_methods(methods), parse_dims(dims, 0))
    app_dir = assemble(out, variant, out / "out" / f"application-{variant}")
    typer.echo("wrote " + ", ".join(str(p) for p in written) + f"; application folder {app_dir}")
    if dry_run:
        return
    cluster = variant == "cluster"
    config_url = config_url or ("http://localhost:19072" if cluster else "http://localhost:19071")
    endpoint = endpoint or ("http://localhost:8081" if cluster else "http://localhost:8080")
    wait_until_ready(query_url=None, config_url=config_url, timeout=timeout)
    deploy(app_dir, config_url=config_url, timeout=timeout)
    typer.echo(f"deployed {app_dir} to {config_url}")
    wait_until_ready(query_url=endpoint, config_url=config_url, timeout=timeout)


@app.command("feed")
@cli_errors
def feed_command(
    dataset: str = DatasetOption,
    model: str = ModelOption,
    methods: str = MethodsOption,
    dims: str = typer.Option("384,256", "--dims", help="Comma-separated dims; must be dims the deployed package has fields for."),
    rotation: str = RotationOption,
    seed: int = SeedOption,
    endpoint: str = typer.Option("http://localhost:8080", "--endpoint", help="Vespa container (document and query API)."),
    calibration_dir: Path = typer.Option(Path("out/calibrations"), "--calibration-dir", help="Where each calibration (.npz) and manifest.json are saved; pass it to evaluate --backend vespa."),
    concurrency: int = typer.Option(8, "--concurrency", help="Parallel HTTP connections for feeding."),
    max_retries: int = typer.Option(3, "--max-retries", help="Extra rounds for documents that failed with 429/5xx."),
    keep_calibrations: bool = typer.Option(False, "--keep-calibrations", help="Encode with the calibrations already in --calibration-dir (every slot, active slots kept): for documents arriving after a calibration or recalibration. Default: calibrate afresh on this corpus."),
    data_root: Optional[Path] = DataRootOption,
    cache_dir: Optional[Path] = CacheDirOption,
    doc_embeddings: Optional[Path] = DocEmbeddingsOption,
    query_embeddings: Optional[Path] = QueryEmbeddingsOption,
) -> None:
    """Embed (cached), calibrate, encode and feed every document; idempotent, so a re-run resumes."""
    from vespa_quant.embed.embedded import load_embedded
    from vespa_quant.feed.feeder import feed
    from vespa_quant.quantize.registry import parse_methods

    embedded = load_embedded(dataset, model, data_root=data_root, cache_dir=cache_dir,
                             precomputed=precomputed_embeddings(doc_embeddings, query_embeddings))
    report = feed(endpoint, embedded, parse_methods(methods), parse_dims(dims, embedded.native_dim),
                  rotation=rotation, seed=seed, calibration_dir=calibration_dir,
                  concurrency=concurrency, max_retries=max_retries, keep_calibrations=keep_calibrations)
    typer.echo(f"fed {report.n_fed}/{report.n_docs} documents, calibration set {report.calibration_set}, "
               f"manifest {report.manifest}; Vespa counts {report.count_in_vespa}")
    if report.failed_ids:
        shown = ", ".join(report.failed_ids[:20]) + (" ..." if len(report.failed_ids) > 20 else "")
        first = report.errors.get(report.failed_ids[0], "")
        raise VespaQuantError(f"{len(report.failed_ids)} documents failed ({shown}); first error: {first}")
    if report.count_in_vespa != report.n_docs:
        raise VespaQuantError(f"Vespa holds {report.count_in_vespa} documents, the corpus has {report.n_docs}")


@app.command("recalibrate")
@cli_errors
def recalibrate_command(
    method: str = typer.Option(..., "--method", help="The calibrated method to recalibrate, e.g. lloyd_max_gauss."),
    dim: int = typer.Option(..., "--dim", help="The dim whose fields are rewritten."),
    dataset: str = DatasetOption,
    model: str = ModelOption,
    calibration: Optional[Path] = typer.Option(None, "--calibration", help="Use this saved calibration (.npz) instead of calibrating on --dataset's documents."),
    endpoint: str = typer.Option("http://localhost:8080", "--endpoint", help="Vespa container (document and query API)."),
    calibration_dir: Path = typer.Option(Path("out/calibrations"), "--calibration-dir", help="The folder `vespa-quant feed` wrote (manifest.json); the active slot is switched there."),
    concurrency: int = typer.Option(8, "--concurrency", help="Parallel HTTP connections for the partial updates."),
    data_root: Optional[Path] = DataRootOption,
    cache_dir: Optional[Path] = CacheDirOption,
) -> None:
    """Recalibrate one method on a live Vespa: rewrite the inactive slot, verify, switch atomically.

    Partial updates touch only the inactive slot's code fields and calibration id; queries keep using the active slot until every document is verified to carry the new calibration.
    """
    from vespa_quant.embed.embedded import load_embedded
    from vespa_quant.feed.recalibrate import recalibrate
    from vespa_quant.quantize.base import Calibration
    from vespa_quant.quantize.registry import get_method

    embedded = load_embedded(dataset, model, data_root=data_root, cache_dir=cache_dir)
    report = recalibrate(endpoint, embedded, get_method(method), dim, calibration_dir,
                         new_calibration=Calibration.load(calibration) if calibration else None,
                         concurrency=concurrency)
    typer.echo(f"{method}@{dim}: slot {report.old_slot} ({report.old_calibration_id}) -> slot {report.new_slot} "
               f"({report.new_calibration_id}); updated {report.n_updated}/{report.n_docs}, "
               f"{report.n_with_new_id} documents carry the new id, Vespa counts {report.count_in_vespa}")
    if not report.switched:
        shown = ", ".join(report.failed_ids[:20])
        raise VespaQuantError(f"not switched, queries stay on slot {report.old_slot}"
                              + (f": {len(report.failed_ids)} updates failed ({shown})" if report.failed_ids
                                 else ": not every document carries the new calibration"))
    typer.echo(f"switched: queries now use slot {report.new_slot}")


@app.command("drift")
@cli_errors
def drift_command(
    dataset: str = DatasetOption,
    model: str = ModelOption,
    methods: str = MethodsOption,
    calibration_fraction: str = typer.Option("0.01,0.05,0.1,0.25", "--calibration-fraction", help="Comma-separated fractions of the stream each frozen calibration is learned on."),
    order: str = typer.Option("random", "--order", help="Stream order: random (seeded shuffle) or given (corpus file order)."),
    seed: int = SeedOption,
    calibrate_on: Optional[str] = typer.Option(None, "--calibrate-on", help="Cross-domain: calibrate on this other dataset (same model), serve --dataset."),
    dim: Optional[int] = typer.Option(None, "--dim", help="Matryoshka dim to run at (default: the model's native dim)."),
    rotation: str = RotationOption,
    steps: int = typer.Option(10, "--steps", help="Streaming checkpoints: drift is measured every 1/steps of the corpus."),
    repeats: Optional[int] = typer.Option(None, "--repeats", help="Calibration draws per fraction, averaging out the luck of one calibration sample (default 5 for --order random, 1 for given)."),
    resamples: int = typer.Option(1000, "--resamples", help="Bootstrap resamples for the CIs."),
    output: Path = typer.Option(Path("out/drift"), "--output", "-o", help="Folder for drift.json/csv, drift_steps.csv, policy.csv and drift.png."),
    data_root: Optional[Path] = DataRootOption,
    cache_dir: Optional[Path] = CacheDirOption,
) -> None:
    """Streaming drift: how calibrations frozen on early documents degrade, and when to recalibrate."""
    from vespa_quant.drift.runner import format_drift_table, run_drift, write_drift
    from vespa_quant.embed.embedded import load_embedded
    from vespa_quant.quantize.registry import parse_methods

    if order not in ("random", "given"):
        raise VespaQuantError(f"--order must be 'random' or 'given', got {order!r}")
    try:
        fractions = [float(part) for part in calibration_fraction.split(",") if part.strip()]
    except ValueError:
        raise VespaQuantError(f"--calibration-fraction must be comma-separated numbers, got {calibration_fraction!r}") from None
    repeats = repeats or (5 if order == "random" else 1)
    embedded = load_embedded(dataset, model, data_root=data_root, cache_dir=cache_dir)
    other = load_embedded(calibrate_on, model, data_root=data_root, cache_dir=cache_dir) if calibrate_on else None
    report = run_drift(embedded, parse_methods(methods), fractions, order=order, seed=seed, calibrate_on=other,
                       steps=steps, n_resamples=resamples, rotation=rotation, dim=dim, repeats=repeats,
                       show_progress=True)
    written = write_drift(report, output)
    typer.echo(format_drift_table(report))
    typer.echo("wrote " + ", ".join(str(path) for path in written))


@app.command("analyze")
@cli_errors
def analyze_command(
    dataset: str = DatasetOption,
    model: str = ModelOption,
    dims: Optional[str] = DimsOption,
    output: Path = typer.Option(Path("out/analysis"), "--output", "-o", help="Folder for analysis.json, analysis.csv and analysis.png."),
    data_root: Optional[Path] = DataRootOption,
    cache_dir: Optional[Path] = CacheDirOption,
) -> None:
    """Research diagnostics of the corpus embeddings: per-dimension shape (kurtosis, skewness, Gaussian vs Laplace), median offset, correlation vs PCA, and quantizer MSE against rate-distortion bounds (brief Q2, Q3, Q5, Q7, Q8)."""
    from vespa_quant.embed.embedded import load_embedded
    from vespa_quant.research import analyze, format_analysis, write_analysis

    embedded = load_embedded(dataset, model, data_root=data_root, cache_dir=cache_dir)
    rows = analyze(embedded, parse_dims(dims, embedded.native_dim))
    written = write_analysis(rows, output)
    typer.echo(format_analysis(rows))
    typer.echo("wrote " + ", ".join(str(path) for path in written))


@app.command("check-package")
@cli_errors
def check_package_command(
    app_dir: Optional[Path] = typer.Option(None, "--app", help="A Vespa application folder (services.xml + schemas/). Default: the committed package (schemas/, vespa_app/) assembled into a temporary folder."),
    variant: str = typer.Option("single", "--variant", help="With the default package: single (vespa_app/services.xml) or cluster (vespa_app/cluster/)."),
    dataset: str = DatasetOption,
    model: str = ModelOption,
    methods: str = MethodsOption,
    dims: str = typer.Option("384,256", "--dims", help="Comma-separated dims whose profiles are checked."),
    queries: int = typer.Option(20, "--queries", help="Queries scored per profile (the dataset's first N test queries)."),
    data_root: Optional[Path] = DataRootOption,
    cache_dir: Optional[Path] = CacheDirOption,
    doc_embeddings: Optional[Path] = DocEmbeddingsOption,
    query_embeddings: Optional[Path] = QueryEmbeddingsOption,
) -> None:
    """Vespa's own Java code as the judge, offline: compile the package as a config server does and check that every rank profile phase, as Vespa derived it, computes the method's score (needs java and mvn; the first run downloads Vespa from Maven Central)."""
    from vespa_quant.embed.embedded import load_embedded
    from vespa_quant.quantize.registry import parse_methods
    from vespa_quant.vespa.check import format_report
    from vespa_quant.vespa.check_cases import check_registry

    if variant not in ("single", "cluster"):
        raise VespaQuantError(f"--variant must be 'single' or 'cluster', got {variant!r}")
    embedded = load_embedded(dataset, model, data_root=data_root, cache_dir=cache_dir,
                             precomputed=precomputed_embeddings(doc_embeddings, query_embeddings))
    report = check_registry(app_dir, embedded, parse_methods(methods), parse_dims(dims, embedded.native_dim),
                            queries, variant="cluster" if variant == "cluster" else "single")
    typer.echo(format_report(report))
    if not report.ok:
        failed = report.failed
        first = failed[0].error if failed else report.fixtures_error
        raise VespaQuantError(f"{len(failed)} of {len(report.cases)} profile checks failed; first: {first}")


def main() -> None:  # pragma: no cover - console entry point
    app(sys.argv[1:])
