"""Content-addressed embedding cache, precomputed-embedding import and Matryoshka truncation.

Embedding a corpus is the only expensive, non-deterministic-in-time step of the pipeline (minutes
on CPU for SciFact), while every quantization method downstream is cheap. So float32 embeddings
are computed once per (model, kind, prompt, texts) and stored under a key derived from exactly
those inputs: a changed prompt, edited document or reordered corpus gives a new key instead of
silently reusing stale vectors. Every matrix is checked on the way in (:mod:`.checks`): a
cache entry that is not what the cache writes is recomputed, bring-your-own files with NaN,
zero rows or the wrong width are rejected naming the file, row and id.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vespa_quant.data.beir import BeirDataset
from vespa_quant.embed import encoder
from vespa_quant.embed.checks import cache_entry_problem, check_rows, normalise_rows
from vespa_quant.embed.models import ModelSpec, TextKind, get_model_spec
from vespa_quant.errors import EmbeddingError
from vespa_quant.files import atomic_write_bytes

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

CACHE_ENV = "VESPA_QUANT_CACHE"
DEFAULT_CACHE_DIR = Path("~/.cache/vespa-quant/embeddings")
TEXT_KINDS: tuple[TextKind, ...] = ("query", "document")


def resolve_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """Cache folder: the argument, else ``$VESPA_QUANT_CACHE``, else the user cache."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    from_env = os.environ.get(CACHE_ENV)
    if from_env:
        return Path(from_env).expanduser()
    return DEFAULT_CACHE_DIR.expanduser()


def cache_key(model_name: str, kind: TextKind, prompt: str, texts: Sequence[str],
              revisions: tuple[str | None, str | None] = (None, None)) -> str:
    """sha256 hex over the model, text kind, prompt, texts (joined with NUL) and revisions.

    The text count is part of the header so no split of the joined texts can collide with
    another list of texts. ``revisions`` (weights, code) join the header only when set, so the
    keys of unpinned models stay what they were.
    """
    digest = hashlib.sha256()
    fields: list[object] = [model_name, kind, prompt, len(texts)]
    if any(revisions):
        fields.append(list(revisions))
    header = json.dumps(fields, ensure_ascii=False)
    digest.update(header.encode("utf-8"))
    digest.update(b"\x00")
    digest.update("\x00".join(texts).encode("utf-8"))
    return digest.hexdigest()


def cache_path(
    model_name: str,
    texts: Sequence[str],
    kind: TextKind,
    cache_dir: str | Path | None = None,
) -> Path:
    """File ``{model_slug}/{kind}-{key16}.npy`` under the cache dir that holds these embeddings.

    The slug is one folder name (:attr:`ModelSpec.slug`), so the file is always inside the
    cache dir whatever the model name was.
    """
    spec = get_model_spec(model_name)
    _check_kind(kind)
    key = cache_key(spec.name, kind, spec.prompt_for(kind), texts,
                    (spec.revision, spec.code_revision))
    return resolve_cache_dir(cache_dir) / spec.slug / f"{kind}-{key[:16]}.npy"


def embed_texts(
    model_name: str,
    texts: Sequence[str],
    kind: TextKind,
    cache_dir: str | Path | None = None,
    show_progress: bool = True,
) -> np.ndarray:
    """Embeddings of ``texts`` (float32, unit rows), from the cache or computed and cached.

    The model is loaded only on a cache miss, so a warm cache makes every later run independent
    of torch start-up time and of hub access.
    """
    return _embed_cached(
        get_model_spec(model_name), texts, kind, cache_dir, show_progress, _LazyModel(model_name)
    )


def seed_cache(
    model_name: str,
    texts: Sequence[str],
    kind: TextKind,
    vectors: np.ndarray,
    cache_dir: str | Path | None = None,
) -> Path:
    """Store embeddings computed elsewhere (another machine, a GPU job) as this cache entry.

    The caller vouches that ``vectors`` were produced from ``texts`` with the registry's prompt
    for ``kind``; shape, finiteness and non-zero rows are checked (rows are normalised with a
    warning if they are not unit length), provenance cannot be.
    """
    spec = get_model_spec(model_name)
    vectors = np.asarray(vectors, dtype=np.float32)
    _check_shape(spec, vectors, len(texts), f"{kind} vectors")
    check_rows(vectors, f"seeded {kind} vectors")
    vectors = normalise_rows(vectors, f"seeded {kind} vectors")
    path = cache_path(model_name, texts, kind, cache_dir)
    _save_atomic(path, vectors)
    return path


def truncate_matryoshka(vectors: np.ndarray, k: int) -> np.ndarray:
    """Keep the first ``k`` dims and re-L2-normalise each row (MRL, Kusupati et al., 2022).

    Rows that are zero after truncation stay zero instead of becoming NaN.
    """
    vectors = np.asarray(vectors)
    if vectors.ndim != 2:
        raise EmbeddingError(f"expected a 2-D array of vectors, got shape {vectors.shape}")
    if not 1 <= k <= vectors.shape[1]:
        raise EmbeddingError(
            f"cannot truncate {vectors.shape[1]}-dim vectors to {k} dims "
            f"(k must be between 1 and {vectors.shape[1]})"
        )
    return _l2_normalise(vectors[:, :k].astype(np.float32, copy=True))


def load_precomputed(
    npy_path: str | Path,
    ids_path: str | Path,
    expected_ids: Sequence[str],
    dim: int | None = None,
) -> np.ndarray:
    """Rows of a precomputed ``.npy`` reordered to ``expected_ids``, as unit float32 rows.

    The ids file is a JSON list or one id per line (UTF-8), naming the id of each row in order.
    Extra rows are allowed (e.g. all 1109 SciFact queries when a split keeps 300), missing ones
    are not. ``dim`` is the width the model produces, when known. Used rows must be finite and
    non-zero; rows that are not unit length are normalised with a warning (:mod:`.checks`).
    """
    npy_path, ids_path = Path(npy_path), Path(ids_path)
    if not npy_path.is_file():
        raise EmbeddingError(f"{npy_path}: file not found")
    try:
        # Memory-mapped: a 1M x 384 file is 1.5 GB, and rows already in dataset order are used in place.
        vectors = np.load(npy_path, allow_pickle=False, mmap_mode="r")
    except (ValueError, OSError, EOFError) as exc:
        raise EmbeddingError(f"{npy_path.name}: not a readable .npy array ({exc})") from exc
    if vectors.ndim != 2:
        raise EmbeddingError(
            f"{npy_path.name}: expected a 2-D array (rows x dims), got shape {vectors.shape}"
        )
    if not np.issubdtype(vectors.dtype, np.floating):
        raise EmbeddingError(f"{npy_path.name}: expected float vectors, got dtype {vectors.dtype}")
    if dim is not None and vectors.shape[1] != dim:
        raise EmbeddingError(
            f"{npy_path.name}: vectors have {vectors.shape[1]} dims, the model produces {dim}"
        )

    ids = _read_ids(ids_path)
    if len(ids) != vectors.shape[0]:
        raise EmbeddingError(
            f"{npy_path.name} has {vectors.shape[0]} rows but {ids_path.name} "
            f"lists {len(ids)} ids"
        )
    row_of = {row_id: row for row, row_id in enumerate(ids)}
    missing = [row_id for row_id in expected_ids if row_id not in row_of]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise EmbeddingError(f"{ids_path.name}: no embedding for id {missing[0]!r}{more}")
    rows = np.fromiter((row_of[row_id] for row_id in expected_ids), dtype=np.int64)
    if vectors.dtype == np.float32 and len(rows) == len(vectors) and np.array_equal(rows, np.arange(len(rows))):
        selected = vectors  # in order already: no copy of the file
    else:
        with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf, caught below
            selected = np.asarray(vectors[rows], dtype=np.float32)
    check_rows(selected, npy_path.name, ids=expected_ids, file_rows=rows)
    return normalise_rows(selected, npy_path.name)


def embed_dataset(
    dataset: BeirDataset,
    model_name: str,
    cache_dir: str | Path | None = None,
    precomputed: Mapping[str, tuple[str | Path, str | Path]] | None = None,
    show_progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """``(doc_vectors, query_vectors)`` for ``dataset``, rows in ``doc_ids`` / ``query_ids`` order.

    ``precomputed`` maps ``"document"`` and/or ``"query"`` to ``(npy_path, ids_path)``; those
    sides are read from the files instead of the cache or the model. The model is loaded at most
    once, and only if some side misses the cache.
    """
    precomputed = dict(precomputed or {})
    unknown = sorted(set(precomputed) - set(TEXT_KINDS))
    if unknown:
        raise EmbeddingError(
            f"precomputed keys must be 'document' and/or 'query', got {', '.join(unknown)}"
        )
    spec = get_model_spec(model_name)
    model = _LazyModel(model_name)

    def side(kind: TextKind, ids: list[str], texts: list[str]) -> np.ndarray:
        if kind in precomputed:
            npy_path, ids_path = precomputed[kind]
            return load_precomputed(npy_path, ids_path, ids, dim=spec.dim)
        return _embed_cached(spec, texts, kind, cache_dir, show_progress, model, ids)

    def source(kind: str) -> str:
        return Path(precomputed[kind][0]).name if kind in precomputed else f"{kind} vectors"

    doc_vectors = side("document", dataset.doc_ids, dataset.doc_texts)
    query_vectors = side("query", dataset.query_ids, dataset.query_texts)
    if doc_vectors.shape[1] != query_vectors.shape[1]:
        raise EmbeddingError(
            f"{source('document')} have {doc_vectors.shape[1]} dims but "
            f"{source('query')} have {query_vectors.shape[1]}"
        )
    return doc_vectors, query_vectors


class _LazyModel:
    """Load the model on first use, once; lets a warm cache skip torch entirely."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self._model: SentenceTransformer | None = None

    def __call__(self) -> SentenceTransformer:
        if self._model is None:
            self._model = encoder.load_model(self.model_name)
        return self._model


def _embed_cached(
    spec: ModelSpec,
    texts: Sequence[str],
    kind: TextKind,
    cache_dir: str | Path | None,
    show_progress: bool,
    get_model: Callable[[], SentenceTransformer],
    ids: Sequence[str] | None = None,
) -> np.ndarray:
    """Load the cache entry for ``texts`` if valid, else encode, check and store it.

    An entry that is not what this cache writes (see :func:`.checks.cache_entry_problem`) is
    recomputed with a warning naming the file; if recomputing fails too, the error names it.
    """
    path = cache_path(_spec_name(spec), texts, kind, cache_dir)
    problem: str | None = None
    if path.is_file():
        try:
            cached = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            problem = f"unreadable ({exc})"
        else:
            problem = cache_entry_problem(cached, len(texts), spec.dim)
            if problem is None:
                return cached
        logger.warning("cache file %s is invalid (%s); recomputing it", path, problem)

    try:
        vectors = encoder.encode(
            get_model(), texts, spec.prompt_for(kind), show_progress=show_progress
        )
    except EmbeddingError as exc:
        if problem is None:
            raise
        raise EmbeddingError(f"{path}: invalid cache entry ({problem}), and recomputing it "
                             f"failed: {exc}") from exc
    _check_shape(spec, vectors, len(texts), f"{kind} vectors")
    check_rows(vectors, f"{spec.name} {kind} vectors", ids=ids)
    _save_atomic(path, vectors)
    return vectors


def _spec_name(spec: ModelSpec) -> str:
    """The name that gives ``spec`` back from :func:`get_model_spec`, revision included."""
    return f"{spec.name}@{spec.revision}" if spec.revision else spec.name


def _save_atomic(path: Path, vectors: np.ndarray) -> None:
    """Write via a temp file in the same folder and ``os.replace`` it into place.

    Concurrent runs or a killed process then leave either the old file or the complete new
    one, never a truncated array that a later run would load.
    """
    buffer = io.BytesIO()
    np.save(buffer, vectors, allow_pickle=False)
    atomic_write_bytes(path, buffer.getvalue())


def _l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Divide each row by its L2 norm in place; zero rows are left as zeros."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    np.divide(vectors, norms, out=vectors, where=norms > 0)
    return vectors


def _check_shape(spec: ModelSpec, vectors: np.ndarray, n_rows: int, what: str) -> None:
    """Reject arrays whose row count or (for registered models) width is not what was asked."""
    if vectors.ndim != 2 or vectors.shape[0] != n_rows:
        raise EmbeddingError(f"{what}: expected {n_rows} rows, got shape {vectors.shape}")
    if spec.dim is not None and vectors.shape[1] != spec.dim:
        raise EmbeddingError(
            f"{what} have {vectors.shape[1]} dims, {spec.name} produces {spec.dim}"
        )


def _check_kind(kind: str) -> None:
    if kind not in TEXT_KINDS:
        raise EmbeddingError(f"text kind must be 'query' or 'document', got {kind!r}")


def _read_ids(ids_path: Path) -> list[str]:
    """Row ids from a JSON list or a one-id-per-line text file (blank lines ignored)."""
    if not ids_path.is_file():
        raise EmbeddingError(f"{ids_path}: file not found")
    raw = ids_path.read_bytes()
    try:
        content = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise EmbeddingError(
            f"{ids_path.name} line {line}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at "
            f"offset {exc.start}); ids files must be UTF-8"
        ) from exc
    if content.lstrip().startswith("["):
        try:
            parsed = json.loads(content)
        except json.JSONDecodeError as exc:
            raise EmbeddingError(
                f"{ids_path.name} line {exc.lineno}: not a valid JSON list ({exc.msg})"
            ) from exc
        if not isinstance(parsed, list) or any(isinstance(i, (list, dict)) for i in parsed):
            raise EmbeddingError(f"{ids_path.name}: expected a JSON list of ids")
        ids = [str(i) for i in parsed]
    else:
        ids = [line.strip() for line in content.splitlines() if line.strip()]
    seen: set[str] = set()
    for row_id in ids:
        if row_id in seen:
            raise EmbeddingError(f"{ids_path.name}: duplicate id {row_id!r}")
        seen.add(row_id)
    return ids
