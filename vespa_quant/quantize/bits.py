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


def hamming_distances(query_cells: np.ndarray, doc_cells: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """(n_queries, n_docs) Hamming distances between packed codes, chunked over documents."""
    q = np.ascontiguousarray(query_cells).view(np.uint8)
    d = np.ascontiguousarray(doc_cells).view(np.uint8)
    out = np.empty((len(q), len(d)), dtype=np.int32)
    for start in range(0, len(d), chunk):
        block = np.bitwise_xor(q[:, None, :], d[None, start:start + chunk, :])
        out[:, start:start + chunk] = np.bitwise_count(block).sum(axis=2, dtype=np.int32)
    return out
