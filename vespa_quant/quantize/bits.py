"""Bit packing shared by every method that stores bits, in Vespa's convention.

Vespa's ``unpack_bits`` expands an int8 cell most significant bit first by default, which is
``numpy.packbits``' default ``bitorder="big"``; packed bytes are reinterpreted as int8 because
Vespa's cells are signed.
"""

from __future__ import annotations

import numpy as np


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """(n, dim) booleans -> (n, ceil(dim/8)) int8 cells, MSB first."""
    return np.packbits(np.asarray(bits, dtype=bool), axis=1).view(np.int8)


def unpack_bits(cells: np.ndarray, dim: int | None = None) -> np.ndarray:
    """(n, cells) int8 -> (n, 8*cells) float32 of 0/1, as Vespa's ``unpack_bits``."""
    bits = np.unpackbits(np.ascontiguousarray(cells).view(np.uint8), axis=1)
    return bits[:, :dim].astype(np.float32) if dim else bits.astype(np.float32)


def _as_words(cells: np.ndarray) -> np.ndarray:
    """View packed bytes as uint64 words (zero-padded), so XOR + popcount touch 8x fewer items."""
    raw = np.ascontiguousarray(cells).view(np.uint8)
    pad = -raw.shape[1] % 8
    if pad:
        raw = np.concatenate([raw, np.zeros((len(raw), pad), dtype=np.uint8)], axis=1)
    return np.ascontiguousarray(raw).view(np.uint64)


def hamming_distances(query_cells: np.ndarray, doc_cells: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """(n_queries, n_docs) Hamming distances between packed codes, chunked over documents."""
    q, d = _as_words(query_cells), _as_words(doc_cells)
    out = np.empty((len(q), len(d)), dtype=np.int32)
    for start in range(0, len(d), chunk):
        block = np.bitwise_xor(q[:, None, :], d[None, start:start + chunk, :])
        out[:, start:start + chunk] = np.bitwise_count(block).sum(axis=2, dtype=np.int32)
    return out
