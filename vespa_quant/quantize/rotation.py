"""Seeded orthogonal rotations applied before any method (research brief, 2.3 observation 5).

An orthogonal ``R`` leaves every float inner product unchanged (``(Rq).(Rd) = q.d``), so rotation
can only change what quantization loses, never the float32 ranking.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.linalg import hadamard

ROTATIONS = ("none", "hadamard", "qr")


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
        raise ValueError(f"unknown rotation {name!r}; expected one of {ROTATIONS}")
    matrix = matrix.astype(np.float32)
    matrix.setflags(write=False)
    return matrix
