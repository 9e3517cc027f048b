"""Multi-bit codes as packed bit planes, and any per-dimension table as a weighted sum over them.

Vespa stores int8 cells and has no per-cell table lookup, but it unpacks bits cheaply
(``unpack_bits``, most significant bit first, like :func:`numpy.packbits`). A ``b``-bit code is
therefore stored as ``b`` packed planes (plane ``k`` holds bit ``k`` of each dimension's code
word), which keeps Vespa memory at exactly ``b`` bits per dimension. Any table ``Q[i, c]`` over
the ``2**b`` code words is a multilinear polynomial in the bits (its Moebius transform)::

    Q[i, c] = sum over subsets S of the bits set in word(c) of  A[i, S]

so ``sum_i Q[i, c_i] = sum_S  A[:, S] . prod_{k in S} plane_k`` + the constant ``sum_i A[i, {}]``:
one dot product per non-empty subset, with weights the client computes per query (vespa-notes,
"Multi-bit codes"). For 2 bits this is ``T0 + (T2 - T0) hi + (T1 - T0) lo + (T3 - T2 - T1 + T0) hi lo``;
subsets whose coefficient vanishes by design (a symmetric table's ``hi lo``, every product term of
an affine table) are left out of the expression.

Code words are the code itself, or its reflected Gray code (Idea 4: adjacent levels differ in one
bit, so the Hamming distance of Gray words grows with the level distance).
"""

from __future__ import annotations

import functools
from itertools import combinations

import numpy as np
from numba import njit, prange

from vespa_quant.quantize.expr import Bits, Expr, Product, QueryInput, Sum, add

Term = tuple[int, ...]
"""A non-empty set of plane indices (0 = least significant bit), most significant first."""


def plane_roles(bits: int, prefix: str = "") -> tuple[str, ...]:
    """Field roles of the planes, most significant first: ``bits``; ``hi``, ``lo``; or ``p2, p1, p0``."""
    if bits == 1:
        names: tuple[str, ...] = ("bits",)
    elif bits == 2:
        names = ("hi", "lo")
    else:
        names = tuple(f"p{k}" for k in reversed(range(bits)))
    return tuple(prefix + name for name in names)


def role_of(bits: int, plane: int, prefix: str = "") -> str:
    """Role of plane ``plane`` (bit index, 0 = least significant)."""
    return plane_roles(bits, prefix)[bits - 1 - plane]


def all_terms(bits: int) -> list[Term]:
    return [term for size in range(1, bits + 1) for term in combinations(reversed(range(bits)), size)]


def gray(codes: np.ndarray) -> np.ndarray:
    return codes ^ (codes >> 1)


def gray_inverse(words: np.ndarray, bits: int) -> np.ndarray:
    codes = words.copy()
    shift = 1
    while shift < bits:
        codes ^= codes >> shift
        shift <<= 1
    return codes


def code_words(bits: int, use_gray: bool) -> np.ndarray:
    """``word[c]``: the stored bit pattern of code ``c``."""
    codes = np.arange(1 << bits)
    return gray(codes) if use_gray else codes


def moebius(tables: np.ndarray, bits: int, use_gray: bool) -> tuple[np.ndarray, dict[Term, np.ndarray]]:
    """(constant (..., d), {term: coefficient (..., d)}) with ``tables[..., d, code]`` = sum of the
    coefficients of the terms contained in ``word(code)``."""
    # The inversion is linear in the tables: one product with a fixed matrix (query inputs of
    # every query and dimension at once), instead of a Python loop over the lattice per call.
    by_term = np.asarray(tables, dtype=np.float64) @ _moebius_matrix(bits, use_gray)
    coefficients = {term: by_term[..., sum(1 << k for k in term)] for term in all_terms(bits)}
    return by_term[..., 0], coefficients


@functools.cache
def _moebius_matrix(bits: int, use_gray: bool) -> np.ndarray:
    """``M[c, w]``: the weight of ``tables[..., c]`` in the coefficient of word ``w`` (read-only)."""
    size = 1 << bits
    by_word = np.zeros((size, size))
    by_word[np.arange(size), code_words(bits, use_gray)] = 1.0  # row c: code c sits at its word
    # Subset-sum inversion over the bit lattice: afterwards column w holds the coefficient A[w].
    for k in range(bits):
        step = 1 << k
        for w in range(size):
            if w & step:
                by_word[:, w] -= by_word[:, w ^ step]
    by_word.setflags(write=False)
    return by_word


def vanishing_terms(table: np.ndarray, bits: int, use_gray: bool, atol: float = 1e-12) -> set[Term]:
    """Terms whose coefficient is zero for a fixed design table ``table`` (L,), e.g. a symmetric one."""
    _, coefficients = moebius(np.asarray(table, dtype=np.float64)[None, :], bits, use_gray)
    return {term for term, value in coefficients.items() if abs(float(value[0])) <= atol}


@njit(parallel=True, cache=True)
def _to_planes(words, out):
    """``out[k, r, i // 8]`` gets bit ``k`` of ``words[r, i]`` at position ``7 - i % 8`` (one pass)."""
    for r in prange(words.shape[0]):
        for i in range(words.shape[1]):
            word = words[r, i]
            for k in range(out.shape[0]):
                out[k, r, i >> 3] |= np.uint8(((word >> k) & 1) << (7 - (i & 7)))


@njit(parallel=True, cache=True)
def _from_planes(planes, dim, out):
    for r in prange(out.shape[0]):
        for i in range(dim):
            word = 0
            for k in range(planes.shape[0]):
                word |= ((planes[k, r, i >> 3] >> (7 - (i & 7))) & 1) << k
            out[r, i] = word


def encode_planes(codes: np.ndarray, bits: int, use_gray: bool, prefix: str = "") -> dict[str, np.ndarray]:
    """(n, d) codes -> one packed plane per bit (int8 cells, MSB first like ``numpy.packbits``), keyed by role."""
    words = np.ascontiguousarray(gray(codes) if use_gray else codes, dtype=np.uint8)
    planes = np.zeros((bits, len(words), -(-words.shape[1] // 8)), dtype=np.uint8)
    _to_planes(words, planes)
    return {role_of(bits, k, prefix): planes[k].view(np.int8) for k in range(bits)}


def decode_planes(planes: dict[str, np.ndarray], bits: int, use_gray: bool, dim: int, prefix: str = "") -> np.ndarray:
    """Inverse of :func:`encode_planes`: the (n, d) uint8 codes."""
    stacked = np.stack([np.ascontiguousarray(planes[role_of(bits, k, prefix)]).view(np.uint8) for k in range(bits)])
    words = np.empty((stacked.shape[1], dim), dtype=np.uint8)
    _from_planes(stacked, dim, words)
    return gray_inverse(words, bits) if use_gray else words


def term_input(term: Term, bits: int, prefix: str = "") -> str:
    """Query input weighting ``term``: ``w_hi``, ``w_hi_lo``, ``w_g3_p2_p0`` ..."""
    return "w_" + "_".join(role_of(bits, k, prefix) for k in sorted(term, reverse=True))


def plane_weights(tables: np.ndarray, bits: int, use_gray: bool, terms: list[Term], cells: int,
                  prefix: str = "") -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(constant (nq,), {input name: (nq, 8*cells) float32}) for the listed ``terms``.

    Weights are zero-padded to the unpacked width ``8 * cells``, so the query tensor and
    ``unpack_bits`` of the field have the same size whatever the dimension.
    """
    constant, coefficients = moebius(tables, bits, use_gray)
    weights = {}
    for term in terms:
        padded = np.zeros((tables.shape[0], 8 * cells), dtype=np.float32)
        padded[:, :tables.shape[1]] = coefficients[term]
        weights[term_input(term, bits, prefix)] = padded
    return constant.sum(axis=1), weights


def plane_terms_expression(terms: list[Term], bits: int, prefix: str = "") -> list[Expr]:
    """One ``query(w_S) * planes of S`` product per term (to be summed together)."""
    return [Product((QueryInput(term_input(term, bits, prefix)),
                     *(Bits(role_of(bits, k, prefix)) for k in sorted(term, reverse=True))))
            for term in terms]


def plane_expression(terms: list[Term], bits: int, offset: str = "offset", prefix: str = "") -> Expr:
    """``sum(query(w_S) * planes of S + ...) + query(offset)``."""
    return add(Sum(add(*plane_terms_expression(terms, bits, prefix))), QueryInput(offset))
