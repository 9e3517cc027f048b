"""The CLI's one vocabulary: shared options, the one input loader, and the error policy.

Every command that reads a corpus takes the same options (``--dataset``/``--model``, or
bring-your-own ``--doc-embeddings``/``--query-embeddings``) and loads through
:func:`load_inputs`; closed sets of choices are ``Literal`` types, so ``--help`` lists them and
typer rejects anything else before any work starts. Errors of the package become one line on
stderr and exit code 2 (STYLE 10); anything else is a bug, reported as one line with a hint to
file it, never a traceback. SIGTERM is treated like Ctrl-C: a run stopped either way exits 130,
and a feed or recalibration first prints how far it got.

Validate before computing: every command checks its options, output folders, calibration files
and the Vespa endpoint (health) before loading a model or embedding anything; :func:`load_inputs`
takes a ``before_embedding`` check, called once the dataset is read (cheap) and before its
embeddings are computed or read (not always cheap).
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, TypeVar

import typer

from vespa_quant.errors import InterruptedRunError, VespaQuantError
from vespa_quant.folders import check_output_dir as check_output_dir  # re-exported: one check for every command
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
TimeoutOption = Annotated[float, typer.Option(
    "--timeout", min=0.1,
    help="Seconds: the budget of each Vespa request with its retries, and how long Vespa may acknowledge nothing "
         "before the run stops.")]
K1Option = Annotated[Optional[int], typer.Option(
    "--k1", min=1,
    help="Two-phase search: keep the Hamming top-k1 per query (sign bits), rescore those with the method's "
         "score (Vespa: nearestNeighbor targetHits k1, global-phase rerank-count k1). Omit for exhaustive search.")]

F = TypeVar("F", bound=Callable[..., Any])
COMMAND_STARTED = [time.monotonic()]
"""When the running command began (``time.monotonic()``): ``--timeout`` counts from here."""
BUG_HINT = "this is a bug in vespa-quant; please report it with the command you ran"


def _sigterm_as_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _close_progress_bars() -> None:
    """Close progress bars an error left open, so the message starts on a line of its own."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def _fail(message: str, code: int) -> typer.Exit:
    _close_progress_bars()
    typer.secho(message, fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def cli_errors(command: F) -> F:
    """Turn the package's errors into one line on stderr and exit code 2, never a traceback.

    An interrupted run (Ctrl-C or SIGTERM) exits 130, after one line saying how far it got when the
    library could tell (:class:`~vespa_quant.errors.InterruptedRunError`).
    """

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        COMMAND_STARTED[0] = time.monotonic()
        previous = None
        if threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
        try:
            return command(*args, **kwargs)
        except InterruptedRunError as error:
            raise _fail(f"interrupted: {error}", 130) from None
        except VespaQuantError as error:
            raise _fail(f"error: {error}", 2) from None
        except KeyboardInterrupt:
            raise _fail("interrupted", 130) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as error:  # the truly unexpected: one line and a hint, no traceback
            if os.environ.get("VESPA_QUANT_DEBUG"):
                raise
            raise _fail(f"error: {type(error).__name__}: {error} ({BUG_HINT}; "
                        "set VESPA_QUANT_DEBUG=1 for the traceback)", 3) from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

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


def precomputed_embeddings(doc: Optional[Path], query: Optional[Path]) -> dict[str, tuple[Path, Path]]:
    """The bring-your-own files, checked to exist (vectors and the ``.ids`` beside them) before any work."""
    if (doc is None) != (query is None):
        raise VespaQuantError("--doc-embeddings and --query-embeddings go together: give both or neither")
    files = {kind: (path, path.with_suffix(".ids")) for kind, path in (("document", doc), ("query", query))
             if path is not None}
    for option, (vectors, ids) in zip(("--doc-embeddings", "--query-embeddings"), files.values()):
        for path, expected in ((vectors, "a .npy of vectors"), (ids, "the ids, one per line, beside the .npy")):
            if not path.is_file():
                raise VespaQuantError(f"{option} {vectors}: {path} is not a file; expected {expected}")
    return files


def check_dims_syntax(spec: Optional[str]) -> None:
    """The part of --dims that needs no embeddings: integers, no repeats, at least 8."""
    if spec:
        small = [dim for dim in parse_ints(spec, "--dims") if dim < 8]
        if small:
            raise VespaQuantError(f"--dims {spec}: {small} below 8")


def load_inputs(dataset: str, model: str, *, data_root: Optional[Path], cache_dir: Optional[Path],
                doc_embeddings: Optional[Path] = None, query_embeddings: Optional[Path] = None,
                show_progress: bool = True, before_embedding: Callable[[Any], None] | None = None):
    """The one loader every command uses: a dataset with its embeddings, computed (cached) or brought.

    The dataset's notes (dropped queries, unjudged documents, ...) are printed on stderr, one
    line each. ``before_embedding(dataset)`` runs once the dataset is read and before anything is
    embedded: the place for checks that need the dataset (a Vespa manifest's fingerprint).
    Returns an ``EmbeddedDataset`` (imported lazily: torch is slow to import).
    """
    from vespa_quant.data.beir import load_beir
    from vespa_quant.embed.cache import embed_dataset
    from vespa_quant.embed.embedded import EmbeddedDataset

    precomputed = precomputed_embeddings(doc_embeddings, query_embeddings)
    loaded = load_beir(dataset, data_root=data_root)
    for note in loaded.notes:
        stderr(f"note: {note}")
    if before_embedding is not None:
        before_embedding(loaded)
    docs, queries = embed_dataset(loaded, model, cache_dir=cache_dir, precomputed=precomputed,
                                  show_progress=show_progress)
    return EmbeddedDataset(loaded, model, docs, queries)


def echo_written(paths: list[Path]) -> None:
    typer.echo("wrote " + ", ".join(str(path) for path in paths))


def stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
