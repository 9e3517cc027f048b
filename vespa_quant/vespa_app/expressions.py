"""Offline interpreter for the subset of Vespa ranking expressions our generator emits.

Why: no Vespa runs on this machine, yet every rank profile we generate must compute exactly
what its numpy twin computes. This module parses a ranking expression into an AST and
evaluates it vectorised over documents, following Vespa's documented semantics, so a test
can compare "what Vespa would compute" with the numpy scorer.

Semantics implemented, and where each is documented
---------------------------------------------------
ranking-expressions reference = docs.vespa.ai/en/reference/ranking/ranking-expressions
(vespa-engine/documentation en/reference/ranking/ranking-expressions.mdx).

1. Numbers are floating point literals (``1``, ``0.5``, ``.5``, ``1e-3``); all arithmetic is
   done in float64 ("Constants", ranking-expressions reference). Names are
   ``[A-Za-z_][A-Za-z0-9_]*`` optionally dotted.
2. ``+ - * /`` are infix operators; ``* /`` bind tighter than ``+ -``; operators of equal
   priority associate to the left; unary minus binds to the value it precedes. Documented in
   "Arithmetic operations"; priorities and LEFT order as in the C++ evaluator that runs the
   first and second phase (vespa-engine/vespa eval/src/vespa/eval/eval/operator_nodes.h:
   ``Add/Sub`` 101, ``Mul/Div`` 102, all LEFT).
3. Arithmetic on tensors "is a short form of joining the tensors with the arithmetic
   operation used to join the cells" (ranking-expressions reference, "Arithmetic
   operations"). ``join`` is the natural join: result dimensions are the union of the
   argument dimensions, shared dimensions are matched elementwise, the others form an outer
   product (reference, ``join``). A shared indexed dimension with different sizes is an error
   naming both types. Dimensions are kept in alphabetical order, as Vespa normalises tensor
   types (tensor reference, "Indexed short form": "Dimensions should be alphabetically
   ordered").
4. ``reduce(t, aggregator, dim...)`` applies ``sum|max|min|avg|prod|count`` over the named
   dimensions, or over all of them when none is named; ``sum(t)`` / ``sum(t, dim)`` is
   ``reduce(t, sum[, dim])`` (reference, ``reduce`` and non-primitive ``sum``).
5. ``unpack_bits(t[, cell_type[, endian]])``: input must have cell type int8; the innermost
   indexed dimension grows 8x, cell ``8*i + b`` is bit ``7-b`` of input cell ``i`` for
   ``big`` (the default, like ``numpy.unpackbits``) and bit ``b`` for ``little``; the output
   cell type defaults to float (reference, ``unpack_bits``; vespa-engine/vespa
   searchlib/.../rule/UnpackBitsNode.java).
6. ``hamming(a, b)`` is ``join(a, b, f(x,y)(hamming(x,y)))``; each cell is "treated as if
   [it] were 8-bit integers in the range [-128,127]" and the bits that differ are counted
   (reference, ``hamming``; C++ ``eval/hamming_distance.h``: ``popcount(uint8(int8(a)) ^
   uint8(int8(b)))``). The C++ cast truncates toward zero; values outside [-128, 127] are
   undefined behaviour there, so they are an error here.
7. ``attribute(name)`` is the document's stored value; ``query(name)`` the query input, cast
   to its declared input type when one is given; ``constant(name)`` a rank-profile constant
   (rank-features reference, docs.vespa.ai/en/reference/ranking/rank-features).
   Stored cells are what Vespa keeps: int8 integers in [-128, 127], float32 values, and
   bfloat16 values (float32 with the low 16 mantissa bits cleared: vespa-engine/vespa
   vespalib/util/bfloat16.h keeps the top 16 bits, i.e. rounds toward zero). Attribute
   arrays that a declared cell type cannot hold are rejected rather than silently converted.
8. ``distance(field, f)`` / ``closeness(field, f)`` use the field's ``distance-metric``
   (schema reference, "distance-metric" table): hamming ``d = sum popcount(x_i XOR y_i)``,
   closeness ``1/(1+d)``; euclidean ``d = sqrt(sum (x_i-y_i)^2)``, closeness ``1/(1+d)``
   (the default metric); angular ``d = acos(cos)``, closeness ``1/(1+d)``;
   prenormalized-angular ``d = 1 - q.a/|q|^2``, closeness ``1/(1+d)``; dotproduct
   ``d = -q.a``, closeness ``q.a``. The query tensor is the one the ``nearestNeighbor``
   operator names (``nearest_neighbor`` maps field -> query input); "document vectors and
   the query vector must be the same tensor type" (rank-features, ``distance``).
9. A zero-argument function of the rank profile is referenced as ``name`` or ``name()``
   (schema reference, ``function``); functions may call functions; a cycle is an error.
10. Cell types follow the evaluator's rules (vespa-engine/vespa eval/cell_type.h,
    ``CellMeta``): join unifies (same type stays, any double gives double, else float) and
    then decays int8/bfloat16 to float; reduce to a scalar gives double. They are tracked to
    reject what Vespa rejects (``unpack_bits`` of a non-int8 tensor); the cell *values* are
    always computed in float64.

Not modelled: Vespa rounds float-typed intermediate cells to float32 and sums with SIMD, so
real scores agree with these to float32 precision (relative ~1e-6), not bit for bit; the
defaults of ``closeness``/``distance`` for documents the nearestNeighbor operator did not
retrieve (0 and max double) -- candidate selection is the caller's business.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable, Mapping, Union

import numpy as np

from vespa_quant.errors import VespaQuantError

__all__ = [
    "ExpressionError",
    "ParsedExpression",
    "TensorType",
    "evaluate",
    "parse",
    "parse_tensor_type",
]


class ExpressionError(VespaQuantError):
    """A ranking expression is malformed, or cannot be evaluated with the given inputs."""


# --------------------------------------------------------------------------- tensor types

CELL_TYPES = ("double", "float", "bfloat16", "int8")
_SCALAR_FIELD_TYPES = ("double", "float", "int", "long", "byte", "bool")


@dataclass(frozen=True)
class TensorType:
    """A dense tensor type: cell type and indexed dimensions ``(name, size)``, sorted by name.

    ``dims == ()`` is a scalar (Vespa's ``double``).
    """

    cell_type: str
    dims: tuple[tuple[str, int], ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(size for _, size in self.dims)

    def __str__(self) -> str:
        if not self.dims:
            return "double"
        inner = ",".join(f"{name}[{size}]" for name, size in self.dims)
        if self.cell_type == "double":
            return f"tensor({inner})"
        return f"tensor<{self.cell_type}>({inner})"


_TENSOR_TYPE_RE = re.compile(r"^tensor(?:<\s*(?P<cell>\w+)\s*>)?\s*\((?P<dims>.*)\)$", re.S)
_DIM_RE = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*(?:\[\s*(?P<size>\d*)\s*\]|\{\s*\})$")


def parse_tensor_type(text: str) -> TensorType:
    """Parse ``tensor<float>(x[16])``, ``tensor(x[2],y[3])``, ``double`` etc.

    Only bound indexed dimensions are supported; mapped (``x{}``) or unbound (``x[]``)
    dimensions raise :class:`ExpressionError`. Scalar schema types (int, long, float, double,
    byte, bool) are scalars.
    """
    spec = text.strip()
    if spec in _SCALAR_FIELD_TYPES:
        return TensorType("double", ())
    match = _TENSOR_TYPE_RE.match(spec)
    if match is None:
        raise ExpressionError(f"type {text!r}: expected a scalar type or tensor<cell>(dims)")
    cell_type = match.group("cell") or "double"
    if cell_type not in CELL_TYPES:
        raise ExpressionError(
            f"type {text!r}: unknown cell type {cell_type!r}, "
            f"expected one of {', '.join(CELL_TYPES)}"
        )
    dims: list[tuple[str, int]] = []
    body = match.group("dims").strip()
    for part in [p.strip() for p in body.split(",")] if body else []:
        dim = _DIM_RE.match(part)
        if dim is None:
            raise ExpressionError(f"type {text!r}: malformed dimension {part!r}")
        if dim.group("size") is None:
            raise ExpressionError(
                f"type {text!r}: mapped dimension {part!r} is not supported by this interpreter"
            )
        if dim.group("size") == "":
            raise ExpressionError(f"type {text!r}: unbound dimension {part!r} is not supported")
        dims.append((dim.group("name"), int(dim.group("size"))))
    names = [name for name, _ in dims]
    if len(set(names)) != len(names):
        raise ExpressionError(f"type {text!r}: repeated dimension name")
    return TensorType(cell_type, tuple(sorted(dims)))


# --------------------------------------------------------------------------- AST


@dataclass(frozen=True)
class Node:
    """Base of AST nodes; ``pos`` is the 0-based offset of the node in the expression text."""

    pos: int


@dataclass(frozen=True)
class Number(Node):
    value: float


@dataclass(frozen=True)
class Negate(Node):
    operand: Node


@dataclass(frozen=True)
class BinaryOp(Node):
    op: str
    left: Node
    right: Node


@dataclass(frozen=True)
class Feature(Node):
    """``attribute(name)``, ``query(name)`` or ``constant(name)``."""

    source: str
    name: str


@dataclass(frozen=True)
class NearestNeighborFeature(Node):
    """``closeness(field, name)`` or ``distance(field, name)``."""

    feature: str
    dimension: str
    name: str


@dataclass(frozen=True)
class Reduce(Node):
    operand: Node
    aggregator: str
    dims: tuple[str, ...]


@dataclass(frozen=True)
class UnpackBits(Node):
    operand: Node
    cell_type: str
    endian: str


@dataclass(frozen=True)
class Hamming(Node):
    left: Node
    right: Node


@dataclass(frozen=True)
class Call(Node):
    """A reference to a rank-profile function: ``name``, ``name()`` or ``name(args)``."""

    name: str
    args: tuple[Node, ...]
    parenthesised: bool


@dataclass(frozen=True)
class ParsedExpression:
    """An expression's source text and its AST (the text is kept for error messages)."""

    text: str
    root: Node


# --------------------------------------------------------------------------- errors


def _location(text: str, pos: int) -> str:
    """``at column C in "text"`` (1-based), or ``at line L, column C in "that line"``."""
    line_no = text.count("\n", 0, pos) + 1
    line_start = text.rfind("\n", 0, pos) + 1
    column = pos - line_start + 1
    if "\n" not in text:
        return f'at column {column} in "{text}"'
    line_end = text.find("\n", pos)
    line = text[line_start : line_end if line_end >= 0 else len(text)]
    return f'at line {line_no}, column {column} in "{line}"'


def _error(message: str, text: str, pos: int) -> ExpressionError:
    return ExpressionError(f"{message} {_location(text, pos)}")


# --------------------------------------------------------------------------- tokenizer


@dataclass(frozen=True)
class _Token:
    kind: str  # "number", "name", "op", "(", ")", ",", "end"
    text: str
    pos: int


_TOKEN_RE = re.compile(
    r"(?P<ws>\s+)"
    r"|(?P<number>(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)"
    r"|(?P<op>[-+*/])"
    r"|(?P<punct>[(),])"
)


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN_RE.match(text, pos)
        if match is None:
            raise _error(
                f"unsupported character {text[pos]!r} (this interpreter covers numbers, names, "
                "+ - * /, parentheses and commas)",
                text,
                pos,
            )
        kind = match.lastgroup
        if kind == "punct":
            tokens.append(_Token(match.group(), match.group(), pos))
        elif kind != "ws":
            tokens.append(_Token(kind, match.group(), pos))
        pos = match.end()
    tokens.append(_Token("end", "", len(text)))
    return tokens


# --------------------------------------------------------------------------- parser

AGGREGATORS = ("sum", "max", "min", "avg", "prod", "count")
BUILTINS = (
    "attribute",
    "closeness",
    "constant",
    "distance",
    "hamming",
    "query",
    "reduce",
    "sum",
    "unpack_bits",
)


class _Parser:
    """Recursive descent: additive := mult (('+'|'-') mult)*; mult := unary (('*'|'/') unary)*."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.index = 0

    @property
    def current(self) -> _Token:
        return self.tokens[self.index]

    def advance(self) -> _Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def expect(self, kind: str, what: str) -> _Token:
        token = self.current
        if token.kind != kind:
            found = "end of expression" if token.kind == "end" else repr(token.text)
            raise _error(f"expected {what}, found {found}", self.text, token.pos)
        return self.advance()

    def parse(self) -> Node:
        if self.current.kind == "end":
            raise _error("empty expression", self.text, 0)
        node = self.additive()
        if self.current.kind != "end":
            raise _error(
                f"unexpected {self.current.text!r} after a complete expression",
                self.text,
                self.current.pos,
            )
        return node

    def additive(self) -> Node:
        node = self.multiplicative()
        while self.current.kind == "op" and self.current.text in "+-":
            op = self.advance()
            node = BinaryOp(op.pos, op.text, node, self.multiplicative())
        return node

    def multiplicative(self) -> Node:
        node = self.unary()
        while self.current.kind == "op" and self.current.text in "*/":
            op = self.advance()
            node = BinaryOp(op.pos, op.text, node, self.unary())
        return node

    def unary(self) -> Node:
        if self.current.kind == "op" and self.current.text == "-":
            op = self.advance()
            return Negate(op.pos, self.unary())
        return self.primary()

    def primary(self) -> Node:
        token = self.current
        if token.kind == "number":
            self.advance()
            return Number(token.pos, float(token.text))
        if token.kind == "(":
            self.advance()
            node = self.additive()
            self.expect(")", "')'")
            return node
        if token.kind == "name":
            self.advance()
            if self.current.kind == "(":
                return self.call(token)
            return Call(token.pos, token.text, (), parenthesised=False)
        found = "end of expression" if token.kind == "end" else repr(token.text)
        raise _error(f"expected a number, name or '(', found {found}", self.text, token.pos)

    def arguments(self) -> list[tuple[Node, _Token]]:
        """Parse ``( expr, expr, ... )``; each argument keeps its first token for name checks."""
        self.expect("(", "'('")
        args: list[tuple[Node, _Token]] = []
        if self.current.kind == ")":
            self.advance()
            return args
        while True:
            first = self.current
            args.append((self.additive(), first))
            if self.current.kind == ",":
                self.advance()
                continue
            self.expect(")", "',' or ')'")
            return args

    def name_argument(self, arg: tuple[Node, _Token], what: str) -> str:
        node, first = arg
        if isinstance(node, Call) and not node.parenthesised and not node.args:
            return node.name
        raise _error(f"expected {what}", self.text, first.pos)

    def call(self, name: _Token) -> Node:
        args = self.arguments()
        fn, pos = name.text, name.pos

        def arity(low: int, high: int) -> None:
            if not low <= len(args) <= high:
                wanted = str(low) if low == high else f"{low} to {high}"
                raise _error(
                    f"{fn}() takes {wanted} argument(s), got {len(args)}", self.text, pos
                )

        if fn in ("attribute", "query", "constant"):
            arity(1, 1)
            return Feature(pos, fn, self.name_argument(args[0], f"a name inside {fn}()"))
        if fn in ("closeness", "distance"):
            arity(2, 2)
            dimension = self.name_argument(args[0], "'field' or 'label'")
            if dimension not in ("field", "label"):
                raise _error(
                    f"{fn}() first argument must be 'field' or 'label', got {dimension!r}",
                    self.text,
                    args[0][1].pos,
                )
            return NearestNeighborFeature(
                pos, fn, dimension, self.name_argument(args[1], f"a field name in {fn}()")
            )
        if fn == "sum":
            if not args:
                arity(1, 1)
            dims = tuple(self.name_argument(a, "a dimension name") for a in args[1:])
            return Reduce(pos, args[0][0], "sum", dims)
        if fn == "reduce":
            if len(args) < 2:
                arity(2, 2)
            aggregator = self.name_argument(args[1], "an aggregator name")
            if aggregator not in AGGREGATORS:
                raise _error(
                    f"unknown aggregator {aggregator!r}, expected one of {', '.join(AGGREGATORS)}",
                    self.text,
                    args[1][1].pos,
                )
            dims = tuple(self.name_argument(a, "a dimension name") for a in args[2:])
            return Reduce(pos, args[0][0], aggregator, dims)
        if fn == "unpack_bits":
            arity(1, 3)
            cell_type = "float"
            endian = "big"
            if len(args) >= 2:
                cell_type = self.name_argument(args[1], "a cell type")
                if cell_type not in CELL_TYPES:
                    raise _error(
                        f"unknown cell type {cell_type!r}, expected one of {', '.join(CELL_TYPES)}",
                        self.text,
                        args[1][1].pos,
                    )
            if len(args) == 3:
                endian = self.name_argument(args[2], "'big' or 'little'")
                if endian not in ("big", "little"):
                    raise _error(
                        f"endian must be 'big' or 'little', got {endian!r}",
                        self.text,
                        args[2][1].pos,
                    )
            return UnpackBits(pos, args[0][0], cell_type, endian)
        if fn == "hamming":
            arity(2, 2)
            return Hamming(pos, args[0][0], args[1][0])
        return Call(pos, fn, tuple(node for node, _ in args), parenthesised=True)


def parse(text: str) -> ParsedExpression:
    """Parse a ranking expression; raise :class:`ExpressionError` naming column and text."""
    if not isinstance(text, str):
        raise ExpressionError(f"expected expression text, got {type(text).__name__}")
    return ParsedExpression(text, _Parser(text).parse())


# --------------------------------------------------------------------------- values


@dataclass(frozen=True)
class _Value:
    """A tensor during evaluation: float64 cells, a leading document axis when per-document."""

    type: TensorType
    cells: np.ndarray
    per_doc: bool

    @property
    def dim_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.type.dims)

    @property
    def is_scalar(self) -> bool:
        return not self.type.dims


def _decay(cell_type: str) -> str:
    return "double" if cell_type == "double" else "float"


def _join_cell_type(a: TensorType, b: TensorType) -> str:
    """``CellMeta::join``: unify (scalars defer to the tensor) then decay to at least float."""
    if not a.dims and not b.dims:
        return "double"
    if not a.dims:
        unified = b.cell_type
    elif not b.dims:
        unified = a.cell_type
    elif a.cell_type == b.cell_type:
        unified = a.cell_type
    elif "double" in (a.cell_type, b.cell_type):
        unified = "double"
    else:
        unified = "float"
    return _decay(unified)


_POPCOUNT8 = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(axis=1)


def _as_int8_bytes(cells: np.ndarray) -> np.ndarray | None:
    """``uint8(int8(x))`` as the C++ cast does it (truncating), or None if out of range."""
    truncated = np.trunc(cells)
    if cells.size and (truncated.min() < -128 or truncated.max() > 127):
        return None
    return truncated.astype(np.int8).view(np.uint8)


def _check_stored(cells: np.ndarray, cell_type: str) -> str | None:
    """Why ``cells`` are not values a ``cell_type`` tensor can hold, or None if they are."""
    if cells.size == 0 or cell_type == "double":
        return None
    as64 = cells.astype(np.float64)
    if cell_type == "int8":
        bad = ~np.isfinite(as64) | (as64 != np.round(as64)) | (as64 < -128) | (as64 > 127)
        reason = "int8 cells must be integers in [-128, 127]"
    elif cell_type == "float":
        with np.errstate(over="ignore"):
            bad = as64.astype(np.float32).astype(np.float64) != as64
        bad &= ~np.isnan(as64)
        reason = "values are not float32-representable"
    else:  # bfloat16
        with np.errstate(over="ignore"):
            as32 = as64.astype(np.float32)
        bad = (as32.astype(np.float64) != as64) | ((as32.view(np.uint32) & 0xFFFF) != 0)
        bad &= ~np.isnan(as64)
        reason = "values are not bfloat16-representable (float32 with the low 16 bits cleared)"
    if not np.any(bad):
        return None
    where = np.unravel_index(int(np.argmax(bad)), bad.shape)
    return f"{reason}, e.g. {float(as64[where])!r} at index {tuple(int(i) for i in where)}"


def _to_cell_type(cells: np.ndarray, cell_type: str) -> np.ndarray:
    """Convert query values to the declared input cell type, as Vespa does for query inputs."""
    as64 = np.asarray(cells, dtype=np.float64)
    if cell_type == "float":
        return as64.astype(np.float32).astype(np.float64)
    if cell_type == "bfloat16":
        bits = as64.astype(np.float32).view(np.uint32) & np.uint32(0xFFFF0000)
        return bits.view(np.float32).astype(np.float64)
    return as64


def _infer_type(array: np.ndarray, leading: int, what: str) -> TensorType:
    """Type of an untyped input: scalar, or one indexed dimension ``x`` (our generator's name)."""
    rank = array.ndim - leading
    if rank == 0:
        return TensorType("double", ())
    if rank == 1:
        cell_type = {np.dtype(np.int8): "int8", np.dtype(np.float32): "float"}.get(
            array.dtype, "double"
        )
        return TensorType(cell_type, (("x", array.shape[leading]),))
    raise ExpressionError(
        f"{what} has shape {array.shape}; declare its tensor type to use more than one dimension"
    )


# --------------------------------------------------------------------------- evaluation

ExpressionLike = Union[str, ParsedExpression]


@dataclass
class _Context:
    attributes: Mapping[str, np.ndarray]
    query: Mapping[str, object]
    functions: Mapping[str, ExpressionLike]
    constants: Mapping[str, object]
    nearest_neighbor: Mapping[str, str]
    field_types: Mapping[str, str]
    distance_metrics: Mapping[str, str]
    query_types: Mapping[str, str]
    n_docs: int
    parsed_functions: dict[str, ParsedExpression] = field(default_factory=dict)
    function_values: dict[str, _Value] = field(default_factory=dict)
    call_stack: list[str] = field(default_factory=list)
    feature_values: dict[tuple[str, str], _Value] = field(default_factory=dict)


def _available(names) -> str:
    names = sorted(names)
    return ", ".join(names) if names else "none"


class _Evaluator:
    def __init__(self, context: _Context) -> None:
        self.ctx = context

    # -- features ------------------------------------------------------------------

    @staticmethod
    def declared_type(what: str, type_text: str, text: str, pos: int) -> TensorType:
        try:
            return parse_tensor_type(type_text)
        except ExpressionError as exc:
            raise _error(f"{what}: {exc}", text, pos) from exc

    def attribute(self, name: str, text: str, pos: int) -> _Value:
        key = ("attribute", name)
        if key in self.ctx.feature_values:
            return self.ctx.feature_values[key]
        if name not in self.ctx.attributes:
            raise _error(
                f"unknown attribute {name!r} (attributes given: {_available(self.ctx.attributes)})",
                text,
                pos,
            )
        array = np.asarray(self.ctx.attributes[name])
        if name in self.ctx.field_types:
            type_text = self.ctx.field_types[name]
            declared = self.declared_type(f"attribute {name!r}", type_text, text, pos)
            expected = (self.ctx.n_docs, *declared.shape)
            if array.shape != expected:
                raise _error(
                    f"attribute {name!r} is declared {declared} so its array must have shape "
                    f"{expected} (documents first), got {array.shape}",
                    text,
                    pos,
                )
            problem = _check_stored(array, declared.cell_type)
            if problem:
                raise _error(
                    f"attribute {name!r} is declared {declared} but holds values Vespa would not "
                    f"store: {problem}; pass the stored cell values",
                    text,
                    pos,
                )
            tensor_type = declared
        else:
            tensor_type = _infer_type(array, 1, f"attribute {name!r}")
        value = _Value(tensor_type, array.astype(np.float64), per_doc=True)
        self.ctx.feature_values[key] = value
        return value

    def per_query(self, source: str, name: str, text: str, pos: int) -> _Value:
        key = (source, name)
        if key in self.ctx.feature_values:
            return self.ctx.feature_values[key]
        given = self.ctx.query if source == "query" else self.ctx.constants
        if name not in given:
            label = "query input" if source == "query" else "constant"
            plural = "query inputs" if source == "query" else "constants"
            raise _error(
                f"unknown {label} {name!r} ({plural} given: {_available(given)})", text, pos
            )
        array = np.asarray(given[name])
        if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
            raise _error(f"{source}({name}) must be numeric, got dtype {array.dtype}", text, pos)
        declared_text = self.ctx.query_types.get(name) if source == "query" else None
        if declared_text is not None:
            declared = self.declared_type(f"query input {name!r}", declared_text, text, pos)
            if array.shape != declared.shape:
                raise _error(
                    f"query input {name!r} is declared {declared} (shape {declared.shape}), "
                    f"got shape {array.shape}",
                    text,
                    pos,
                )
            if declared.cell_type == "int8":
                problem = _check_stored(array, "int8")
                if problem:
                    raise _error(f"query input {name!r} is int8 but {problem}", text, pos)
            cells = _to_cell_type(array, declared.cell_type)
            tensor_type = declared
        else:
            tensor_type = _infer_type(array, 0, f"{source}({name})")
            cells = array.astype(np.float64)
        value = _Value(tensor_type, cells, per_doc=False)
        self.ctx.feature_values[key] = value
        return value

    # -- dispatch ------------------------------------------------------------------

    def eval(self, node: Node, text: str) -> _Value:
        if isinstance(node, Number):
            return _Value(TensorType("double", ()), np.float64(node.value), per_doc=False)
        if isinstance(node, Negate):
            inner = self.eval(node.operand, text)
            negated_type = TensorType(_decay(inner.type.cell_type), inner.type.dims)
            return _Value(negated_type, -inner.cells, inner.per_doc)
        if isinstance(node, BinaryOp):
            left = self.eval(node.left, text)
            right = self.eval(node.right, text)
            return self.join(left, right, _ARITHMETIC[node.op], text, node.pos)
        if isinstance(node, Feature):
            if node.source == "attribute":
                return self.attribute(node.name, text, node.pos)
            return self.per_query(node.source, node.name, text, node.pos)
        if isinstance(node, Reduce):
            return self.reduce(self.eval(node.operand, text), node, text)
        if isinstance(node, UnpackBits):
            return self.unpack_bits(self.eval(node.operand, text), node, text)
        if isinstance(node, Hamming):
            left = self.eval(node.left, text)
            right = self.eval(node.right, text)
            return self.join(left, right, self.hamming_cells(text, node.pos), text, node.pos)
        if isinstance(node, NearestNeighborFeature):
            return self.nearest_neighbor(node, text)
        if isinstance(node, Call):
            return self.call(node, text)
        raise _error(f"cannot evaluate {type(node).__name__}", text, node.pos)

    # -- tensor operations -----------------------------------------------------------

    def join(
        self,
        left: _Value,
        right: _Value,
        cell_fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
        text: str,
        pos: int,
    ) -> _Value:
        sizes = dict(left.type.dims)
        for name, size in right.type.dims:
            if sizes.get(name, size) != size:
                raise _error(
                    f"cannot join {left.type} with {right.type}: dimension {name!r} has size "
                    f"{sizes[name]} vs {size}",
                    text,
                    pos,
                )
            sizes[name] = size
        dims = tuple(sorted(sizes.items()))
        per_doc = left.per_doc or right.per_doc
        a = self.expand(left, dims, per_doc)
        b = self.expand(right, dims, per_doc)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            cells = cell_fn(a, b)
        result_type = TensorType(_join_cell_type(left.type, right.type), dims)
        if per_doc:
            cells = np.broadcast_to(cells, (self.ctx.n_docs, *result_type.shape))
        return _Value(result_type, np.asarray(cells, dtype=np.float64), per_doc)

    @staticmethod
    def expand(value: _Value, dims: tuple[tuple[str, int], ...], per_doc: bool) -> np.ndarray:
        """Insert unit axes for missing dimensions (both dim lists are sorted, so no transpose)."""
        own = set(value.dim_names)
        shape = [size if name in own else 1 for name, size in dims]
        if value.per_doc:
            shape.insert(0, value.cells.shape[0])
        elif per_doc:
            shape.insert(0, 1)
        return np.reshape(value.cells, shape)

    def reduce(self, value: _Value, node: Reduce, text: str) -> _Value:
        names = value.dim_names
        for dim in node.dims:
            if dim not in names:
                raise _error(
                    f"cannot reduce {value.type} over dimension {dim!r}: not one of its dimensions",
                    text,
                    node.pos,
                )
        reduced = set(node.dims) if node.dims else set(names)
        if not reduced:
            return value
        offset = 1 if value.per_doc else 0
        axes = tuple(offset + i for i, name in enumerate(names) if name in reduced)
        cells = value.cells
        if node.aggregator == "sum":
            out = cells.sum(axis=axes)
        elif node.aggregator == "max":
            out = cells.max(axis=axes)
        elif node.aggregator == "min":
            out = cells.min(axis=axes)
        elif node.aggregator == "avg":
            out = cells.mean(axis=axes)
        elif node.aggregator == "prod":
            out = cells.prod(axis=axes)
        else:  # count
            count = math.prod(cells.shape[a] for a in axes)
            out = np.full(np.delete(np.array(cells.shape), axes), float(count))
        kept = tuple((name, size) for name, size in value.type.dims if name not in reduced)
        cell_type = "double" if not kept else _decay(value.type.cell_type)
        return _Value(TensorType(cell_type, kept), np.asarray(out, dtype=np.float64), value.per_doc)

    def unpack_bits(self, value: _Value, node: UnpackBits, text: str) -> _Value:
        if value.is_scalar or value.type.cell_type != "int8":
            raise _error(
                f"unpack_bits() needs a tensor with int8 cells, got {value.type}", text, node.pos
            )
        codes = value.cells.astype(np.int8).view(np.uint8)
        bits = np.unpackbits(codes, axis=-1, bitorder=node.endian).astype(np.float64)
        *outer, (inner_name, inner_size) = value.type.dims
        dims = (*outer, (inner_name, inner_size * 8))
        cells = _to_cell_type(bits, node.cell_type)
        return _Value(TensorType(node.cell_type, tuple(dims)), cells, value.per_doc)

    @staticmethod
    def hamming_cells(text: str, pos: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        def cells(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            a8, b8 = _as_int8_bytes(a), _as_int8_bytes(b)
            if a8 is None or b8 is None:
                raise _error(
                    "hamming() cells must lie in [-128, 127] (they are read as int8)", text, pos
                )
            return _POPCOUNT8[np.bitwise_xor(a8, b8)].astype(np.float64)

        return cells

    def nearest_neighbor(self, node: NearestNeighborFeature, text: str) -> _Value:
        if node.dimension != "field":
            raise _error(
                f"{node.feature}(label, ...) is not supported; use {node.feature}(field, <field>)",
                text,
                node.pos,
            )
        field_name = node.name
        if field_name not in self.ctx.nearest_neighbor:
            raise _error(
                f"{node.feature}(field, {field_name}) needs a nearestNeighbor operator on "
                f"{field_name!r}: pass nearest_neighbor={{{field_name!r}: <query input name>}} "
                f"(given for: {_available(self.ctx.nearest_neighbor)})",
                text,
                node.pos,
            )
        query_name = self.ctx.nearest_neighbor[field_name]
        doc = self.attribute(field_name, text, node.pos)
        query = self.per_query("query", query_name, text, node.pos)
        if doc.type.dims != query.type.dims or len(doc.type.dims) != 1:
            raise _error(
                f"nearestNeighbor({field_name}, {query_name}) needs one indexed dimension of the "
                f"same size on both sides, got attribute {doc.type} and query {query.type}",
                text,
                node.pos,
            )
        metric = self.ctx.distance_metrics.get(field_name, "euclidean")
        distance, closeness = _metric(metric, doc.cells, query.cells, text, node.pos)
        cells = distance if node.feature == "distance" else closeness
        return _Value(TensorType("double", ()), cells, per_doc=True)

    # -- functions ---------------------------------------------------------------------

    def call(self, node: Call, text: str) -> _Value:
        name = node.name
        if name not in self.ctx.functions:
            kind = "function" if node.parenthesised else "feature"
            raise _error(
                f"unknown {kind} {name!r} (rank-profile functions: "
                f"{_available(self.ctx.functions)}; built-ins: {', '.join(BUILTINS)})",
                text,
                node.pos,
            )
        if node.args:
            raise _error(
                f"function {name!r} is called with {len(node.args)} argument(s); only "
                "zero-argument functions are supported",
                text,
                node.pos,
            )
        if name in self.ctx.function_values:
            return self.ctx.function_values[name]
        if name in self.ctx.call_stack:
            cycle = " -> ".join([*self.ctx.call_stack[self.ctx.call_stack.index(name) :], name])
            raise _error(f"function cycle {cycle}", text, node.pos)
        parsed = self.ctx.parsed_functions.get(name)
        if parsed is None:
            source = self.ctx.functions[name]
            try:
                parsed = source if isinstance(source, ParsedExpression) else parse(source)
            except ExpressionError as exc:
                raise ExpressionError(f"in function {name!r}: {exc}") from exc
            self.ctx.parsed_functions[name] = parsed
        self.ctx.call_stack.append(name)
        try:
            value = self.eval(parsed.root, parsed.text)
        except ExpressionError as exc:
            if getattr(exc, "function_named", False):
                raise
            named = ExpressionError(f"in function {name!r}: {exc}")
            named.function_named = True
            raise named from exc
        finally:
            self.ctx.call_stack.pop()
        self.ctx.function_values[name] = value
        return value


_ARITHMETIC: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "+": np.add,
    "-": np.subtract,
    "*": np.multiply,
    "/": np.divide,
}


def _metric(
    metric: str, doc: np.ndarray, query: np.ndarray, text: str, pos: int
) -> tuple[np.ndarray, np.ndarray]:
    """(distance, closeness) per document for one indexed dimension (schema reference table)."""
    if metric == "hamming":
        d8, q8 = _as_int8_bytes(doc), _as_int8_bytes(query)
        if d8 is None or q8 is None:
            raise _error("hamming distance needs int8-valued cells", text, pos)
        distance = _POPCOUNT8[np.bitwise_xor(d8, q8[None, :])].sum(axis=1).astype(np.float64)
        return distance, 1.0 / (1.0 + distance)
    if metric == "euclidean":
        distance = np.sqrt(((doc - query[None, :]) ** 2).sum(axis=1))
        return distance, 1.0 / (1.0 + distance)
    dot = doc @ query
    if metric == "dotproduct":
        return -dot, dot
    if metric == "angular":
        with np.errstate(divide="ignore", invalid="ignore"):
            cosine = dot / (np.linalg.norm(doc, axis=1) * np.linalg.norm(query))
        distance = np.arccos(np.clip(cosine, -1.0, 1.0))
        return distance, 1.0 / (1.0 + distance)
    if metric == "prenormalized-angular":
        distance = 1.0 - dot / float(query @ query)
        return distance, 1.0 / (1.0 + distance)
    raise _error(f"distance-metric {metric!r} is not supported by this interpreter", text, pos)


def evaluate(
    expression: ExpressionLike,
    *,
    attributes: Mapping[str, np.ndarray],
    query: Mapping[str, object],
    functions: Mapping[str, ExpressionLike] | None = None,
    constants: Mapping[str, object] | None = None,
    nearest_neighbor: Mapping[str, str] | None = None,
    field_types: Mapping[str, str] | None = None,
    distance_metrics: Mapping[str, str] | None = None,
    query_types: Mapping[str, str] | None = None,
) -> np.ndarray:
    """Evaluate a ranking expression for every document; returns float64 of shape (n_docs,).

    ``attributes``: field -> array ``(n_docs, cells...)`` of stored cell values (``(n_docs,)``
    for scalar fields). ``query``: input name (without ``query(...)``) -> per-query array or
    scalar. ``functions``: zero-argument rank-profile functions, name -> text or parsed.
    ``nearest_neighbor``: field -> query input named by the nearestNeighbor operator.
    ``field_types`` / ``query_types``: declared tensor types, which are checked and (for query
    inputs) applied; untyped arrays are scalars or one dimension ``x``. ``distance_metrics``:
    field -> distance-metric (default euclidean). Semantics: see the module docstring.
    """
    parsed = expression if isinstance(expression, ParsedExpression) else parse(expression)
    doc_counts = {name: np.shape(array)[0] for name, array in attributes.items() if np.ndim(array)}
    if len(set(doc_counts.values())) > 1:
        raise ExpressionError(
            "attribute arrays disagree on the number of documents: "
            + ", ".join(f"{name}={count}" for name, count in sorted(doc_counts.items()))
        )
    context = _Context(
        attributes=attributes,
        query=query,
        functions=functions or {},
        constants=constants or {},
        nearest_neighbor=nearest_neighbor or {},
        field_types=field_types or {},
        distance_metrics=distance_metrics or {},
        query_types=query_types or {},
        n_docs=next(iter(doc_counts.values()), 1),
    )
    result = _Evaluator(context).eval(parsed.root, parsed.text)
    if not result.is_scalar:
        raise ExpressionError(
            f'expression "{parsed.text}" evaluates to {result.type}, not a scalar rank score'
        )
    return np.broadcast_to(result.cells, (context.n_docs,)).astype(np.float64)
