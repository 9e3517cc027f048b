"""A method's score as a small typed tree, with no Vespa names in it (STYLE 14).

Every method says *what* it computes per (query, document) once, as a value built from five
leaves and three operators; the Vespa stage renders the tree to a rank expression
(:mod:`vespa_quant.vespa.expressions`), and the tests evaluate the same tree in numpy, so the
method's score, the rendered profile and the engine can be compared without re-parsing any text.

Leaves read either a query input (computed by the client from the float query and the
calibration) or a stored code field (by its method-local *role*); the Vespa stage maps roles to
field names, which is where slots, dims and method names enter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union


@dataclass(frozen=True)
class QueryInput:
    """``query(name)``: a dense vector or a scalar the client computes per query."""

    name: str


@dataclass(frozen=True)
class Codes:
    """The stored cells of the field with ``role``, as numbers (``attribute(field)``)."""

    role: str


@dataclass(frozen=True)
class Bits:
    """The packed bits of the field with ``role``, unpacked most significant bit first as 0/1."""

    role: str


@dataclass(frozen=True)
class Closeness:
    """``1 / (1 + hamming(query bits, stored bits))`` of the nearestNeighbor on ``role``'s field."""

    role: str


@dataclass(frozen=True)
class Constant:
    value: float


@dataclass(frozen=True)
class Product:
    """Element-wise product of its factors (vectors of one length, or scalars)."""

    factors: tuple[Expr, ...]


@dataclass(frozen=True)
class Add:
    """Element-wise sum of its terms."""

    terms: tuple[Expr, ...]


@dataclass(frozen=True)
class Sum:
    """Sum of every cell of a vector expression: the reduction that makes a dot product."""

    of: Expr


Expr = Union[QueryInput, Codes, Bits, Closeness, Constant, Product, Add, Sum]


def dot(*factors: Expr) -> Sum:
    """``sum(a * b * ...)``: the inner product of vector expressions."""
    return Sum(Product(tuple(factors)))


def add(*terms: Expr) -> Expr:
    """The sum of ``terms``; a single term is returned as it is."""
    return terms[0] if len(terms) == 1 else Add(tuple(terms))


def leaves(expression: Expr) -> list[Expr]:
    """Every leaf of ``expression``, depth first (for checks: which inputs and roles it reads)."""
    if isinstance(expression, Product):
        return [leaf for factor in expression.factors for leaf in leaves(factor)]
    if isinstance(expression, Add):
        return [leaf for term in expression.terms for leaf in leaves(term)]
    if isinstance(expression, Sum):
        return leaves(expression.of)
    return [expression]


def input_names(expression: Expr) -> list[str]:
    """Query inputs ``expression`` reads, in first-use order."""
    return list(dict.fromkeys(leaf.name for leaf in leaves(expression) if isinstance(leaf, QueryInput)))


def roles(expression: Expr) -> list[str]:
    """Code roles ``expression`` reads, in first-use order."""
    return list(dict.fromkeys(
        leaf.role for leaf in leaves(expression) if isinstance(leaf, (Codes, Bits, Closeness))
    ))
