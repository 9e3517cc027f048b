"""Render a method's score tree (:mod:`vespa_quant.quantize.expr`) as a Vespa ranking expression.

One function turns the tree into text (STYLE 14); nothing ever parses it back. The leaves map
to Vespa features: ``QueryInput`` -> ``query(name)``, ``Codes`` -> ``attribute(field)``,
``Bits`` -> ``unpack_bits(attribute(field))`` (int8 cells to float 0/1, most significant bit
first: Vespa's ``unpack_bits`` default, ``UnpackBitsNode.java``), ``Closeness`` ->
``closeness(field, name)`` of the nearestNeighbor on that field; ``Sum`` is ``sum(...)``, the
reduction over every dimension. Vespa's judgement of the rendered text is
``vespa-quant check-package`` (Vespa's own config model and expression evaluator).
"""

from __future__ import annotations

from collections.abc import Callable

from vespa_quant.quantize import expr
from vespa_quant.quantize.base import InputSpec


def render(tree: expr.Expr, field: Callable[[str], str]) -> str:
    """Ranking-expression text of ``tree``; ``field(role)`` gives the attribute name of a role."""
    if isinstance(tree, expr.QueryInput):
        return f"query({tree.name})"
    if isinstance(tree, expr.Codes):
        return f"attribute({field(tree.role)})"
    if isinstance(tree, expr.Bits):
        return f"unpack_bits(attribute({field(tree.role)}))"
    if isinstance(tree, expr.Closeness):
        return f"closeness(field, {field(tree.role)})"
    if isinstance(tree, expr.Constant):
        return repr(float(tree.value))
    if isinstance(tree, expr.Product):
        return " * ".join(_operand(factor, field) for factor in tree.factors)
    if isinstance(tree, expr.Add):
        return " + ".join(render(term, field) for term in tree.terms)
    if isinstance(tree, expr.Sum):
        return f"sum({render(tree.of, field)})"
    raise TypeError(f"cannot render {tree!r}")


def _operand(tree: expr.Expr, field: Callable[[str], str]) -> str:
    text = render(tree, field)
    return f"({text})" if isinstance(tree, expr.Add) else text


def input_type(spec: InputSpec) -> str:
    """Vespa type of a query input: ``double`` or ``tensor<cell>(x[cells])``."""
    return "double" if spec.cells is None else f"tensor<{spec.cell_type}>(x[{spec.cells}])"


def tensor_type(cell_type: str, cells: int) -> str:
    return f"tensor<{cell_type}>(x[{cells}])"
