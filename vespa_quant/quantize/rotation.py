"""Seeded orthogonal rotations applied before any method (research brief, 2.3 observation 5).

An orthogonal ``R`` leaves every float inner product unchanged (``(Rq).(Rd) = q.d``), so rotation
can only change what quantization loses, never the float32 ranking.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.linalg import hadamard

ROTATIONS = ("none", "hadamard", "qr", "pca")
SEEDED_ROTATIONS = ("hadamard", "qr")
"""Rotations built from a seed alone; ``pca`` is learned from the corpus."""


def _hadamard_blocks(dim: int) -> np.ndarray:
    """Block-diagonal normalised Hadamard matrix for any ``dim`` (384 = 256 + 128 blocks)."""
    matrix = np.zeros((dim, dim))
    start = 0
    for bit in reversed(range(dim.bit_length())):
        size = 1 << bit
        if dim - start >= size:
            matrix[start:start + size, start:start + size] = hadamard(size) / np.sqrt(size)
            start += size
    return matrix


@lru_cache(maxsize=16)
def rotation_matrix(name: str, dim: int, seed: int) -> np.ndarray:
    """The (dim, dim) orthogonal matrix for a rotation name and seed; identical on every call.

    ``hadamard`` is a randomised Hadamard transform (random signs and permutation, then
    Hadamard blocks); ``qr`` is the Q factor of a seeded Gaussian matrix (Haar-distributed).
    """
    rng = np.random.default_rng(seed)
    if name == "none":
        matrix = np.eye(dim)
    elif name == "hadamard":
        signs = rng.choice([-1.0, 1.0], size=dim)
        permutation = rng.permutation(dim)
        matrix = _hadamard_blocks(dim) @ (np.eye(dim)[permutation] * signs[None, :])
    elif name == "qr":
        q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
        matrix = q * np.sign(np.diag(r))[None, :]
    else:
        raise ValueError(f"unknown seeded rotation {name!r}; expected one of {SEEDED_ROTATIONS}")
    matrix = matrix.astype(np.float32)
    matrix.setflags(write=False)
    return matrix


def _second_moment(vectors: np.ndarray, centre: np.ndarray, block: int = 8192) -> np.ndarray:
    """``E[(x - c)(x - c)^T]`` in float64, accumulated over row blocks (no float64 copy of the rows)."""
    total = np.zeros((len(centre), len(centre)))
    for start in range(0, len(vectors), block):
        shifted = np.asarray(vectors[start:start + block], dtype=np.float64) - centre
        total += shifted.T @ shifted
    return total / max(len(vectors), 1)


def pca_rotation(corpus: np.ndarray, queries: np.ndarray | None = None) -> np.ndarray:
    """Rows are the principal axes of the corpus, largest variance first (research brief Q5).

    MiniLM's first 8 principal components hold 26-29% of the variance while its first 8
    dimensions hold 2-3% (``vespa-quant analyze``): after this rotation, spending bits per
    component (transform coding) spends them where the variance is. With a query sample the
    axes diagonalise the mean of the corpus covariance and the queries' second moment about the
    corpus mean, so directions queries load on count as much as directions documents vary in.
    Each axis' sign is fixed (largest coordinate positive), so the matrix is a pure function of
    the data.
    """
    centre = np.asarray(corpus).mean(axis=0, dtype=np.float64)
    moment = _second_moment(corpus, centre)
    if queries is not None and len(queries):
        shifted = _second_moment(queries, centre)
        moment = 0.5 * moment / max(np.trace(moment), 1e-30) + 0.5 * shifted / max(np.trace(shifted), 1e-30)
    eigenvalues, eigenvectors = np.linalg.eigh(moment)
    axes = eigenvectors[:, np.argsort(-eigenvalues, kind="stable")].T
    signs = np.sign(axes[np.arange(len(axes)), np.argmax(np.abs(axes), axis=1)])
    return (axes * np.where(signs == 0, 1.0, signs)[:, None]).astype(np.float32)


def learn_rotation(name: str, corpus: np.ndarray, seed: int, queries: np.ndarray | None = None) -> np.ndarray | None:
    """The (dim, dim) rotation a calibration stores, or None for ``none``."""
    if name == "none":
        return None
    if name == "pca":
        return pca_rotation(corpus, queries)
    return np.array(rotation_matrix(name, corpus.shape[1], seed))
