"""Commands that talk to Vespa: generate and deploy the package, feed, recalibrate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from vespa_quant.cli import app
from vespa_quant.cli.common import (
    COMMAND_STARTED,
    CacheDirOption,
    CalibrationDirOption,
    DataRootOption,
    DatasetOption,
    DocEmbeddingsOption,
    EndpointOption,
    MethodsOption,
    ModelOption,
    QueryEmbeddingsOption,
    RotationOption,
    SeedOption,
    TimeoutOption,
    Variant,
    check_output_dir,
    cli_errors,
    load_inputs,
    parse_dims,
    parse_ints,
    stderr,
)
from vespa_quant.errors import VespaQuantError
from vespa_quant.vespa.topology import DEFAULT_MEMORY

PackageDimsOption = Annotated[str, typer.Option(
    "--dims", help="Comma-separated dims; must be dims the deployed package has fields for.")]


@app.command("deploy")
@cli_errors
def deploy_command(
    methods: MethodsOption = "all",
    dims: Annotated[str, typer.Option("--dims", help="Comma-separated dims to create fields and rank profiles for.")] = "384,256",
    variant: Annotated[Variant, typer.Option(
        "--variant", help="single: one node; cluster: config + container + two content nodes.")] = "single",
    out: Annotated[Path, typer.Option(
        "--out", help="Where schemas/ and vespa_app/ are generated (`--out .` regenerates the committed copy).")] = Path("out/package"),
    app_dir: Annotated[Optional[Path], typer.Option(
        "--app-dir", help="The deployable folder assembled from the package (default out/application-VARIANT).")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Only write the generated package and the deployable folder; contact no server.")] = False,
    config_url: Annotated[Optional[str], typer.Option(
        "--config-url", help="Config server (default http://localhost:19071, cluster: http://localhost:19072).")] = None,
    endpoint: Annotated[Optional[str], typer.Option(
        "--endpoint", help="Query container to wait for (default http://localhost:8080, cluster: http://localhost:8081).")] = None,
    timeout: Annotated[float, typer.Option(
        "--timeout", min=0.1, help="Seconds each wait may take: for the config server, for the deploy, for the "
                                   "container (a cold start may need more).")] = 60,
) -> None:
    """Generate the Vespa application package from the method registry, and deploy it."""
    from vespa_quant.quantize.registry import parse_methods
    from vespa_quant.vespa.compose import write_compose
    from vespa_quant.vespa.deploy import REFUSED_GRACE, deploy, wait_until_ready
    from vespa_quant.vespa.services import assemble, write_package

    chosen, dim_list = parse_methods(methods), parse_ints(dims, "--dims")
    check_output_dir(out, "--out")
    app_dir = check_output_dir(app_dir or Path("out") / f"application-{variant}", "--app-dir")
    written = write_package(out, chosen, dim_list) + write_compose(out)
    app_dir = assemble(out, variant, app_dir)
    typer.echo("wrote " + ", ".join(str(p) for p in written) + f"; application folder {app_dir}")
    if dry_run:
        return
    cluster = variant == "cluster"
    config_url = config_url or ("http://localhost:19072" if cluster else "http://localhost:19071")
    endpoint = endpoint or ("http://localhost:8081" if cluster else "http://localhost:8080")
    grace = min(REFUSED_GRACE, timeout / 6)  # a refused port: nothing is starting there
    wait_until_ready(query_url=None, config_url=config_url, timeout=timeout, refused_grace=grace)
    deploy(app_dir, config_url=config_url, timeout=timeout)
    typer.echo(f"deployed {app_dir} to {config_url}")
    wait_until_ready(query_url=endpoint, config_url=config_url, timeout=timeout, refused_grace=grace)


@app.command("up")
@cli_errors
def up_command(
    cluster: Annotated[bool, typer.Option(
        "--cluster", help="Config server, container node and two content nodes on network vespa-quant (queries "
                          "127.0.0.1:8081, deploy 127.0.0.1:19072) instead of one node (8080, 19071).")] = False,
    memory: Annotated[str, typer.Option("--memory", help="Memory limit per container, e.g. 4g or 8192m.")] = DEFAULT_MEMORY,
    docker_url: Annotated[Optional[str], typer.Option(
        "--docker-url", help="Docker Engine API, e.g. unix:///var/run/docker.sock or tcp://127.0.0.1:2375 "
                             "(default: DOCKER_HOST, else the local socket).")] = None,
    timeout: Annotated[float, typer.Option(
        "--timeout", min=1, help="Seconds to wait, in all, for the config server, the deploy and the query container "
                                 "(the image pull is not counted).")] = 300,
    deploy: Annotated[bool, typer.Option(
        "--deploy/--no-deploy", help="Deploy the generated package and wait until Vespa serves; --no-deploy only "
                                     "starts the containers.")] = True,
    config_url: Annotated[Optional[str], typer.Option(
        "--config-url", help="Where the config server is reached (default: its published 127.0.0.1 port).")] = None,
    endpoint: Annotated[Optional[str], typer.Option(
        "--endpoint", help="Where the query container is reached (default: its published 127.0.0.1 port).")] = None,
) -> None:
    """Start Vespa in Docker (pulling the pinned image if needed) and deploy the generated package."""
    from vespa_quant.vespa.containers import up
    from vespa_quant.vespa.topology import CLUSTER, SINGLE

    report = up(CLUSTER if cluster else SINGLE, memory=memory, docker_url=docker_url, timeout=timeout,
                deploy_package=deploy, config_url=config_url, query_url=endpoint)
    typer.echo(f"Vespa {report.layout} up: queries and feed {report.query_url}, deploy {report.config_url}"
               + ("" if report.deployed else f"; next: vespa-quant deploy{' --variant cluster' if cluster else ''}"))


@app.command("down")
@cli_errors
def down_command(
    cluster: Annotated[bool, typer.Option("--cluster", help="Remove the cluster (and its network) instead of the single node.")] = False,
    docker_url: Annotated[Optional[str], typer.Option(
        "--docker-url", help="Docker Engine API (default: DOCKER_HOST, else the local socket).")] = None,
) -> None:
    """Stop and remove the containers `vespa-quant up` started (found by label; nothing else is touched)."""
    from vespa_quant.vespa.containers import down
    from vespa_quant.vespa.topology import CLUSTER, SINGLE

    report = down(CLUSTER if cluster else SINGLE, docker_url=docker_url)
    removed = ", ".join(report.removed) or "no container (none labelled as started by vespa-quant up)"
    typer.echo(f"removed {removed}" + (f"; network {report.network_removed}" if report.network_removed else ""))


@app.command("feed")
@cli_errors
def feed_command(
    dataset: DatasetOption = "scifact",
    model: ModelOption = "all-MiniLM-L6-v2",
    methods: MethodsOption = "all",
    dims: PackageDimsOption = "384,256",
    rotation: RotationOption = "none",
    seed: SeedOption = 0,
    endpoint: EndpointOption = "http://localhost:8080",
    calibration_dir: CalibrationDirOption = Path("out/calibrations"),
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="Parallel HTTP connections for feeding.")] = 8,
    max_retries: Annotated[int, typer.Option(
        "--max-retries", min=0, help="Retries per document after 429/5xx or a dropped connection (capped backoff, "
                                     "within --timeout).")] = 15,
    timeout: TimeoutOption = 60.0,
    keep_calibrations: Annotated[bool, typer.Option(
        "--keep-calibrations", help="Encode with the calibrations already in --calibration-dir (every slot, active slots kept): "
                                    "for documents arriving after a calibration or recalibration. Default: calibrate afresh.")] = False,
    data_root: DataRootOption = None,
    cache_dir: CacheDirOption = None,
    doc_embeddings: DocEmbeddingsOption = None,
    query_embeddings: QueryEmbeddingsOption = None,
) -> None:
    """Embed (cached), calibrate, encode and feed; sends only what Vespa lacks, verifies, then switches the manifest.

    The manifest changes only once Vespa holds every document as planned; a failed or interrupted feed
    leaves it as it was, writes every document's state to feed-status.json, and a re-run resumes.
    """
    from vespa_quant.quantize.registry import parse_methods
    from vespa_quant.vespa.client import HttpPolicy, check_endpoint
    from vespa_quant.vespa.feeder import feed
    from vespa_quant.vespa.manifest import read_manifest

    chosen, dim_list = parse_methods(methods), parse_ints(dims, "--dims")
    check_output_dir(calibration_dir, "--calibration-dir")
    if keep_calibrations:
        read_manifest(calibration_dir)
    policy = HttpPolicy(timeout=timeout, max_attempts=max_retries + 1)
    check_endpoint(endpoint, policy, say=stderr, started=COMMAND_STARTED[0])
    embedded = load_inputs(dataset, model, data_root=data_root, cache_dir=cache_dir,
                           doc_embeddings=doc_embeddings, query_embeddings=query_embeddings)
    report = feed(endpoint, embedded, chosen, parse_dims(",".join(map(str, dim_list)), embedded.native_dim),
                  rotation=rotation, seed=seed, calibration_dir=calibration_dir, concurrency=concurrency,
                  policy=policy, keep_calibrations=keep_calibrations)
    if not report.complete:
        first = report.errors.get(report.failed_ids[0], "") if report.failed_ids else ""
        raise VespaQuantError(report.summary() + (f"; first error: {first}" if first else "")
                              + (f"; states in {report.status_file}" if report.status_file else ""))
    typer.echo(f"{report.summary()}; calibration set {report.calibration_set}")


@app.command("recalibrate")
@cli_errors
def recalibrate_command(
    method: Annotated[str, typer.Option("--method", help="The calibrated method to recalibrate, e.g. lloyd_max_gauss.")],
    dim: Annotated[int, typer.Option("--dim", min=8, help="The dim whose fields are rewritten.")],
    dataset: DatasetOption = "scifact",
    model: ModelOption = "all-MiniLM-L6-v2",
    calibration: Annotated[Optional[Path], typer.Option(
        "--calibration", help="Use this saved calibration (.npz) instead of calibrating on --dataset's documents.")] = None,
    endpoint: EndpointOption = "http://localhost:8080",
    calibration_dir: CalibrationDirOption = Path("out/calibrations"),
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="Parallel HTTP connections for the partial updates.")] = 8,
    timeout: TimeoutOption = 60.0,
    data_root: DataRootOption = None,
    cache_dir: CacheDirOption = None,
    doc_embeddings: DocEmbeddingsOption = None,
    query_embeddings: QueryEmbeddingsOption = None,
) -> None:
    """Recalibrate one method on a live Vespa: rewrite the inactive slot, verify, switch atomically.

    Partial updates touch only the inactive slot's code fields and calibration id; queries keep using the
    active slot until every document is verified to carry the new calibration.
    """
    from vespa_quant.quantize.base import Calibration
    from vespa_quant.quantize.registry import get_method
    from vespa_quant.vespa.client import HttpPolicy, check_endpoint
    from vespa_quant.vespa.manifest import manifest_entry, read_manifest
    from vespa_quant.vespa.recalibrate import recalibrate

    chosen = get_method(method)
    if not chosen.needs_calibration:
        raise VespaQuantError(f"{method} needs no calibration: there is nothing to recalibrate")
    given = Calibration.load(calibration) if calibration else None
    if given is not None and (given.method, given.dim) != (method, dim):
        raise VespaQuantError(f"--calibration {calibration} is for {given.method}@{given.dim}, not {method}@{dim}")
    check_output_dir(calibration_dir, "--calibration-dir")
    manifest_entry(read_manifest(calibration_dir), method, dim, calibration_dir)
    policy = HttpPolicy(timeout=timeout)
    check_endpoint(endpoint, policy, say=stderr, started=COMMAND_STARTED[0])
    embedded = load_inputs(dataset, model, data_root=data_root, cache_dir=cache_dir,
                           doc_embeddings=doc_embeddings, query_embeddings=query_embeddings)
    report = recalibrate(endpoint, embedded, chosen, dim, calibration_dir, new_calibration=given,
                         concurrency=concurrency, policy=policy)
    typer.echo(f"{method}@{dim}: slot {report.old_slot} ({report.old_calibration_id}) -> slot {report.new_slot} "
               f"({report.new_calibration_id}); updated {report.n_updated}/{report.n_docs}, "
               f"{report.n_with_new_id} documents carry the new id, Vespa counts {report.count_in_vespa}")
    if not report.switched:
        shown = ", ".join(report.failed_ids[:20] or report.lacking_ids[:20])
        raise VespaQuantError(f"not switched, queries stay on slot {report.old_slot}"
                              + (f": {len(report.failed_ids)} updates failed ({shown})" if report.failed_ids
                                 else f": not every document carries the new calibration ({shown})"))
    typer.echo(f"switched: queries now use slot {report.new_slot}")


@app.command("check-package")
@cli_errors
def check_package_command(
    app_dir: Annotated[Optional[Path], typer.Option(
        "--app", help="A Vespa application folder (services.xml + schemas/). Default: the committed package "
                      "(schemas/, vespa_app/) assembled into a temporary folder.")] = None,
    variant: Annotated[Variant, typer.Option(
        "--variant", help="With the default package: single (vespa_app/services.xml) or cluster (vespa_app/cluster/).")] = "single",
    dataset: DatasetOption = "scifact",
    model: ModelOption = "all-MiniLM-L6-v2",
    methods: MethodsOption = "all",
    dims: Annotated[str, typer.Option("--dims", help="Comma-separated dims whose profiles are checked.")] = "384,256",
    queries: Annotated[int, typer.Option("--queries", min=1, help="Queries scored per profile (the dataset's first N test queries).")] = 20,
    data_root: DataRootOption = None,
    cache_dir: CacheDirOption = None,
    doc_embeddings: DocEmbeddingsOption = None,
    query_embeddings: QueryEmbeddingsOption = None,
) -> None:
    """Vespa's own Java code as the judge, offline: compile the package as a config server does and check that
    every rank-profile phase, as Vespa derived it, computes the engine's score on real encoded documents (needs java
    and mvn; the first run downloads Vespa's artefacts from Maven Central and builds the checker, about a minute)."""
    from vespa_quant.quantize.registry import parse_methods
    from vespa_quant.vespa.check import format_report
    from vespa_quant.vespa.check_cases import check_registry

    chosen = parse_methods(methods)
    parse_ints(dims, "--dims")  # checked before any embedding
    embedded = load_inputs(dataset, model, data_root=data_root, cache_dir=cache_dir,
                           doc_embeddings=doc_embeddings, query_embeddings=query_embeddings)
    report = check_registry(app_dir, embedded, chosen, parse_dims(dims, embedded.native_dim), queries, variant=variant)
    typer.echo(format_report(report))
    if not report.ok:
        failed = report.failed
        first = failed[0].error if failed else report.fixtures_error
        raise VespaQuantError(f"{len(failed)} of {len(report.cases)} profile checks failed; first: {first}")
