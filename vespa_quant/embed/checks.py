"""What every embedding matrix must satisfy before calibration, search or the cache see it.

One NaN row poisons a calibration (means, medians and Lloyd-Max centroids all become NaN) and a
zero row has no direction to score, so both are errors naming the row and its id. Rows that are
finite but not unit length are normalised with a warning instead: every method in the study
assumes cosine geometry (the encoder normalises, and Matryoshka truncation re-normalises), the
registered models are trained and evaluated with cosine similarity, and a bring-your-own file
saved without normalisation is a common, harmless omission for them. The warning is there because
for a model meant to be scored by raw dot product the norms carried information that is now gone.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from vespa_quant.errors import EmbeddingError

logger = logging.getLogger(__name__)

NORM_TOLERANCE = 1e-3
"""Largest accepted ``|norm - 1|``; float32 unit rows are within ~1e-6, float16 within ~1e-3."""


def check_rows(
    vectors: np.ndarray,
    what: str,
    ids: Sequence[str] | None = None,
    file_rows: np.ndarray | None = None,
) -> None:
    """Reject NaN/inf and all-zero rows, naming the first one (its row and id) and the count.

    ``file_rows`` maps each row of ``vectors`` to its row in the file it came from, so the
    message points into that file when the rows were reordered.
    """
    finite, norms = _row_stats(vectors)
    for bad, problem in ((~finite, "has NaN or infinite values"), (norms == 0, "is all zeros")):
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            row = int(file_rows[first]) if file_rows is not None else first
            named = f" (id {ids[first]!r})" if ids is not None else ""
            count = int(bad.sum())
            others = f"; {count - 1} more such rows" if count > 1 else ""
            raise EmbeddingError(f"{what}: row {row}{named} {problem}{others}")


def normalise_rows(vectors: np.ndarray, what: str) -> np.ndarray:
    """Unit-length float32 rows; warn once when some rows were not (see the module docstring)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    _, norms = _row_stats(vectors)
    off = np.abs(norms - 1.0) > NORM_TOLERANCE
    if not off.any():
        return vectors
    logger.warning(
        "%s: %d of %d rows are not unit length (norms %.4g to %.4g); normalising them, "
        "since every method assumes cosine similarity",
        what, int(off.sum()), len(vectors), float(norms.min()), float(norms.max()),
    )
    return vectors / norms[:, None]


def cache_entry_problem(vectors: np.ndarray, n_rows: int, dim: int | None) -> str | None:
    """Why a loaded cache entry cannot be used as is (None: it can).

    The cache only ever writes finite, unit-length float32 rows of the model's width, so anything
    else is a damaged, truncated or foreign file.
    """
    if vectors.ndim != 2 or vectors.shape[0] != n_rows:
        return f"shape {vectors.shape}, expected {n_rows} rows"
    if vectors.dtype != np.float32:
        return f"dtype {vectors.dtype}, expected float32"
    if dim is not None and vectors.shape[1] != dim:
        return f"{vectors.shape[1]} dims, expected {dim}"
    finite, norms = _row_stats(vectors)
    if not finite.all():
        return "NaN or infinite values"
    if n_rows and np.abs(norms - 1.0).max() > NORM_TOLERANCE:
        return "rows that are not unit length"
    return None


def _row_stats(vectors: np.ndarray, block_rows: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Per row: all finite, and the L2 norm (float32), computed blockwise to bound memory."""
    finite = np.empty(len(vectors), dtype=bool)
    norms = np.empty(len(vectors), dtype=np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        for start in range(0, len(vectors), block_rows):
            block = vectors[start:start + block_rows]
            finite[start:start + len(block)] = np.isfinite(block).all(axis=1)
            norms[start:start + len(block)] = np.linalg.norm(block, axis=1)
    return finite, norms
