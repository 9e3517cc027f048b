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
