"""The CLI's one vocabulary: shared options, the one input loader, and the error policy.

Every command that reads a corpus takes the same options (``--dataset``/``--model``, or
bring-your-own ``--doc-embeddings``/``--query-embeddings``) and loads through
:func:`load_inputs`; closed sets of choices are ``Literal`` types, so ``--help`` lists them and
typer rejects anything else before any work starts. Errors of the package become one line on
stderr and exit code 2 (STYLE 10); anything else is a bug, reported as one line with a hint to
file it, never a traceback.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Optional, TypeVar

import typer

from vespa_quant.errors import VespaQuantError
from vespa_quant.quantize.rotation import ROTATIONS

Rotation = Literal["none", "hadamard", "qr", "pca"]
assert set(Rotation.__args__) == set(ROTATIONS)  # type: ignore[attr-defined]
Backend = Literal["local", "vespa"]
Variant = Literal["single", "cluster"]
StreamOrder = Literal["random", "given"]

DatasetOption = Annotated[str, typer.Option(
    "--dataset", "-d",
    help="BEIR dataset: a name looked up under --data-root (downloaded from the BEIR mirror when "
         "missing and online), or a path to a folder in BEIR layout (contains '/', or starts with '.' or '~').")]
ModelOption = Annotated[str, typer.Option(
    "--model", "-m",
    help="sentence-transformers model: all-MiniLM-L6-v2 (bundled, offline), mxbai-embed-large-v1, "
         "nomic-embed-text-v1.5, or any hub id. Embeddings are cached on disk.")]
MethodsOption = Annotated[str, typer.Option(
    "--methods", help="Comma-separated quantization methods, or 'all' (see `vespa-quant methods`).")]
DimsOption = Annotated[Optional[str], typer.Option(
    "--dims", help="Comma-separated Matryoshka dims (first k dims, re-normalised). Default: the model's native dim.")]
RotationOption = Annotated[Rotation, typer.Option(
    "--rotation", help="Orthogonal rotation before quantizing: seeded (hadamard, qr) or learned on the corpus (pca); "
                       "stored in the calibration.")]
SeedOption = Annotated[int, typer.Option("--seed", min=0, help="Seed of rotations and calibration samples.")]
BootstrapSeedOption = Annotated[int, typer.Option("--bootstrap-seed", min=0, help="Seed of the bootstrap resampling of queries.")]
ResamplesOption = Annotated[int, typer.Option("--resamples", min=1, help="Bootstrap resamples of the queries for the 95% CIs.")]
DataRootOption = Annotated[Optional[Path], typer.Option(
    "--data-root", envvar="VESPA_QUANT_DATA",
    help="Folder holding BEIR datasets by name (env VESPA_QUANT_DATA; default ~/.cache/vespa-quant/datasets).")]
CacheDirOption = Annotated[Optional[Path], typer.Option(
    "--cache-dir", envvar="VESPA_QUANT_CACHE",
    help="Embedding cache folder (env VESPA_QUANT_CACHE; default ~/.cache/vespa-quant/embeddings).")]
DocEmbeddingsOption = Annotated[Optional[Path], typer.Option(
    "--doc-embeddings",
    help="Bring your own model: a .npy of document vectors (ids one per line in the .ids file beside it); "
         "the dataset still gives ids, queries and judgements.")]
QueryEmbeddingsOption = Annotated[Optional[Path], typer.Option(
    "--query-embeddings", help="As --doc-embeddings, for the queries.")]
EndpointOption = Annotated[str, typer.Option("--endpoint", help="Vespa container (document and query API).")]
CalibrationDirOption = Annotated[Path, typer.Option(
    "--calibration-dir", help="Where `vespa-quant feed` saves each calibration (.npz) and manifest.json.")]
K1Option = Annotated[Optional[int], typer.Option(
    "--k1", min=1,
    help="Two-phase search: keep the Hamming top-k1 per query (sign bits), rescore those with the method's "
         "score (Vespa: nearestNeighbor targetHits k1, global-phase rerank-count k1). Omit for exhaustive search.")]

F = TypeVar("F", bound=Callable[..., Any])
BUG_HINT = "this is a bug in vespa-quant; please report it with the command you ran"


def cli_errors(command: F) -> F:
    """Turn the package's errors into one line on stderr and exit code 2, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except VespaQuantError as error:
            typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.secho("interrupted", fg=typer.colors.RED, err=True)
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as error:  # the truly unexpected: one line and a hint, no traceback
            if os.environ.get("VESPA_QUANT_DEBUG"):
                raise
            typer.secho(f"error: {type(error).__name__}: {error} ({BUG_HINT}; "
                        "set VESPA_QUANT_DEBUG=1 for the traceback)", fg=typer.colors.RED, err=True)
            raise typer.Exit(3) from None

    return wrapper  # type: ignore[return-value]


def parse_ints(spec: Optional[str], what: str) -> list[int]:
    try:
        values = [int(part) for part in (spec or "").split(",") if part.strip()]
    except ValueError:
        raise VespaQuantError(f"{what} must be comma-separated integers, got {spec!r}") from None
    if not values:
        raise VespaQuantError(f"{what} {spec!r} names no value")
    if len(set(values)) != len(values):
        raise VespaQuantError(f"{what} {spec!r} repeats a value")
    if any(value <= 0 for value in values):
        raise VespaQuantError(f"{what} must be positive, got {spec!r}")
    return values


def parse_dims(spec: Optional[str], native: int) -> list[int]:
    if not spec:
        return [native]
    dims = parse_ints(spec, "--dims")
    too_big = [dim for dim in dims if dim > native or dim < 8]
    if too_big:
        raise VespaQuantError(f"--dims {spec}: {too_big} not in [8, {native}] for these embeddings")
    return dims


def parse_floats(spec: str, what: str) -> list[float]:
    try:
        values = [float(part) for part in spec.split(",") if part.strip()]
    except ValueError:
        raise VespaQuantError(f"{what} must be comma-separated numbers, got {spec!r}") from None
    if not values:
        raise VespaQuantError(f"{what} {spec!r} names no value")
    return values


def check_output_dir(path: Path, what: str = "--output") -> Path:
    """Fail before any compute when ``path`` cannot become a folder we write into."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise VespaQuantError(f"{what} {path}: exists and is not a folder")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise VespaQuantError(f"{what} {path}: {probe} is not writable")
    return path


def precomputed_embeddings(doc: Optional[Path], query: Optional[Path]) -> dict[str, tuple[Path, Path]]:
    if (doc is None) != (query is None):
        raise VespaQuantError("--doc-embeddings and --query-embeddings go together: give both or neither")
    return {kind: (path, path.with_suffix(".ids")) for kind, path in (("document", doc), ("query", query))
            if path is not None}


def load_inputs(dataset: str, model: str, *, data_root: Optional[Path], cache_dir: Optional[Path],
                doc_embeddings: Optional[Path] = None, query_embeddings: Optional[Path] = None,
                show_progress: bool = True):  # -> EmbeddedDataset (imported lazily: torch is slow to import)
    """The one loader every command uses: a dataset with its embeddings, computed (cached) or brought."""
    from vespa_quant.embed.embedded import load_embedded

    return load_embedded(dataset, model, data_root=data_root, cache_dir=cache_dir,
                         precomputed=precomputed_embeddings(doc_embeddings, query_embeddings),
                         show_progress=show_progress)


def echo_written(paths: list[Path]) -> None:
    typer.echo("wrote " + ", ".join(str(path) for path in paths))


def stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
