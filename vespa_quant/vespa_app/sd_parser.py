"""Parse a Vespa schema (``.sd``) as pyvespa renders it, and score documents with a rank profile.

Why: together with :mod:`vespa_quant.vespa_app.expressions` this is the offline twin of the
rank profiles we deploy -- a test renders the schema, parses it back and checks that each
profile computes what the numpy scorer computes, without a running Vespa.

What is read (schema reference, docs.vespa.ai/en/reference/schemas/schemas; the layout is
pyvespa's ``templates/schema.txt`` and ``macros.txt``):

* ``schema NAME [inherits X] { document NAME { field ... } field ... rank-profile ... }``;
  ``#`` starts a comment.
* ``field NAME type TYPE { indexing: a | b ; attribute { distance-metric: M ... };
  index { hnsw { ... } } }``. A tensor field has an HNSW index when it has an ``hnsw`` block
  or ``index`` in its indexing statement ("Specifying the index keyword in the indexing
  statement of a tensor creates an HNSW index with default settings", schema reference,
  ``hnsw``). The distance metric defaults to euclidean (schema reference, ``index``).
* ``rank-profile NAME [inherits A, B] { inputs { query(q) TYPE[: DEFAULT] } constants {...}
  function [inline] NAME(ARGS) { expression: E | expression { E } }
  first-phase { expression ...; keep-rank-count: N }
  second-phase { expression ...; rerank-count: N } global-phase { ... } }``. A profile
  inherits inputs, constants, functions and phases of its parents and overrides what it
  redefines (schema reference, ``rank-profile`` ``inherits``).
* Expressions may span lines inside ``expression { ... }`` (nested braces allowed); the
  one-line ``expression: E`` form continues onto following lines while its parentheses are
  open.

Scoring follows the phases: the final score is that of the last phase present (global >
second > first). A query input that is not supplied takes its declared default, or 0 for a
scalar (rank-features reference, ``query(value)`` default 0). Which documents reach the
second or global phase (``rerank-count``) is not modelled; the caller selects candidates.
"""

from __future__ import annotations

import json
import re
import textwrap
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping, Union

import numpy as np

from vespa_quant.errors import VespaQuantError
from vespa_quant.vespa_app.expressions import (
    ExpressionError,
    ParsedExpression,
    evaluate,
    parse,
    parse_tensor_type,
)

__all__ = [
    "FieldSpec",
    "ParsedSchema",
    "Phase",
    "RankProfileSpec",
    "SchemaError",
    "load_schema",
    "parse_schema",
    "rank_profile_scorer",
]


class SchemaError(VespaQuantError):
    """A schema text cannot be parsed, or names a profile/phase that is not there."""


# --------------------------------------------------------------------------- result types


@dataclass(frozen=True)
class FieldSpec:
    """One schema field: its type, indexing statement, attribute settings and ANN index."""

    name: str
    type: str
    indexing: tuple[str, ...] = ()
    attribute_settings: tuple[str, ...] = ()
    distance_metric: str | None = None
    hnsw: bool = False
    hnsw_settings: Mapping[str, str] = field(default_factory=dict)
    in_document: bool = True

    @property
    def effective_distance_metric(self) -> str:
        return self.distance_metric or "euclidean"


@dataclass(frozen=True)
class Phase:
    """A ranking phase: its expression and, for later phases, how many hits it reranks."""

    expression: str
    rerank_count: int | None = None
    keep_rank_count: int | None = None


@dataclass(frozen=True)
class RankProfileSpec:
    """One rank profile as written (inheritance not applied; see ParsedSchema.resolved_profile)."""

    name: str
    inherits: tuple[str, ...] = ()
    inputs: Mapping[str, str] = field(default_factory=dict)  # "query(q)" -> type
    input_defaults: Mapping[str, str] = field(default_factory=dict)  # "query(q)" -> default
    constants: Mapping[str, str] = field(default_factory=dict)  # name -> value text
    constant_types: Mapping[str, str] = field(default_factory=dict)
    functions: Mapping[str, str] = field(default_factory=dict)  # name -> expression
    function_args: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    first_phase: Phase | None = None
    second_phase: Phase | None = None
    global_phase: Phase | None = None


@dataclass(frozen=True)
class ParsedSchema:
    name: str
    fields: Mapping[str, FieldSpec]
    rank_profiles: Mapping[str, RankProfileSpec]
    inherits: str | None = None

    def resolved_profile(self, name: str) -> RankProfileSpec:
        """The profile with everything it inherits merged in (its own definitions win)."""
        return self._resolve(name, ())

    def _resolve(self, name: str, chain: tuple[str, ...]) -> RankProfileSpec:
        if name in chain:
            raise SchemaError(f"rank-profile inheritance cycle: {' -> '.join([*chain, name])}")
        if name not in self.rank_profiles:
            raise SchemaError(
                f"schema {self.name!r} has no rank-profile {name!r} "
                f"(profiles: {', '.join(sorted(self.rank_profiles)) or 'none'})"
            )
        own = self.rank_profiles[name]
        merged = RankProfileSpec(name=name, inherits=own.inherits)
        for parent in own.inherits:
            if parent == "default" and parent not in self.rank_profiles:
                continue  # Vespa's built-in default profile (nativeRank) has nothing we model
            merged = _overlay(merged, self._resolve(parent, (*chain, name)))
        return _overlay(merged, own)


def _overlay(base: RankProfileSpec, top: RankProfileSpec) -> RankProfileSpec:
    return replace(
        base,
        inputs={**base.inputs, **top.inputs},
        input_defaults={**base.input_defaults, **top.input_defaults},
        constants={**base.constants, **top.constants},
        constant_types={**base.constant_types, **top.constant_types},
        functions={**base.functions, **top.functions},
        function_args={**base.function_args, **top.function_args},
        first_phase=top.first_phase or base.first_phase,
        second_phase=top.second_phase or base.second_phase,
        global_phase=top.global_phase or base.global_phase,
    )


# --------------------------------------------------------------------------- block scanner


@dataclass(frozen=True)
class _Block:
    head: str
    items: tuple
    line: int


@dataclass(frozen=True)
class _RawBlock:
    head: str
    body: str
    line: int


@dataclass(frozen=True)
class _Property:
    key: str
    value: str
    line: int


@dataclass(frozen=True)
class _Statement:
    text: str
    line: int


_RAW_BLOCK_KEYWORDS = {
    "expression",
    "inputs",
    "constants",
    "indexing",
    "summary-features",
    "match-features",
    "rank-properties",
}
_PROPERTY_KEY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")


def _strip_comments(text: str) -> str:
    """Drop ``#`` comments outside double quotes, keeping line breaks for line numbers."""
    out: list[str] = []
    in_quote = False
    in_comment = False
    for ch in text:
        if in_comment:
            if ch == "\n":
                in_comment = False
                out.append(ch)
            continue
        if ch == '"':
            in_quote = not in_quote
        elif ch == "#" and not in_quote:
            in_comment = True
            continue
        elif ch == "\n":
            in_quote = False
        out.append(ch)
    return "".join(out)


class _Scanner:
    """Split schema text into blocks ``head { ... }``, ``key: value`` lines and bare lines."""

    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.source = source

    def line_of(self, pos: int) -> int:
        return self.text.count("\n", 0, pos) + 1

    def fail(self, message: str, pos: int) -> SchemaError:
        return SchemaError(f"{self.source} line {self.line_of(pos)}: {message}")

    def items(self, pos: int, open_brace: int | None) -> tuple[tuple, int]:
        """Items up to the '}' matching ``open_brace`` (or to end of text when it is None)."""
        text = self.text
        closing = open_brace is not None
        items: list = []
        while True:
            while pos < len(text) and text[pos].isspace():
                pos += 1
            if pos >= len(text):
                if closing:
                    raise self.fail("block is never closed: missing '}'", open_brace)
                return tuple(items), pos
            if text[pos] == "}":
                if not closing:
                    raise self.fail("unexpected '}'", pos)
                return tuple(items), pos + 1
            item, pos = self.statement(pos)
            if item is not None:
                items.append(item)

    def statement(self, start: int):
        text = self.text
        pos = start
        depth = 0
        while pos < len(text):
            ch = text[pos]
            if ch in "([":
                depth += 1
            elif ch in ")]":
                depth -= 1
            elif depth == 0 and ch == ":" and _PROPERTY_KEY_RE.match(text[start:pos].strip()):
                return self.property(start, text[start:pos].strip(), pos + 1)
            elif depth == 0 and ch == "{":
                head = " ".join(text[start:pos].split())
                if not head:
                    raise self.fail("'{' without a preceding name", pos)
                if head.split()[0] in _RAW_BLOCK_KEYWORDS:
                    end = self.matching_brace(pos)
                    return _RawBlock(head, text[pos + 1 : end], self.line_of(start)), end + 1
                body, after = self.items(pos + 1, open_brace=start)
                return _Block(head, body, self.line_of(start)), after
            elif depth == 0 and ch in "}\n":
                break
            pos += 1
        statement = text[start:pos].strip()
        if depth > 0:
            raise self.fail(f"unclosed parenthesis in {statement!r}", start)
        return (_Statement(statement, self.line_of(start)) if statement else None), pos

    def property(self, start: int, key: str, pos: int):
        """Read ``key: value`` to end of line; open parentheses or braces continue the value."""
        text = self.text
        value_start = pos
        parens = braces = 0
        while pos < len(text):
            ch = text[pos]
            if ch in "([":
                parens += 1
            elif ch in ")]":
                parens -= 1
            elif ch == "{":
                braces += 1
            elif ch == "}":
                if braces == 0 and parens == 0:
                    break
                braces -= 1
            elif ch == "\n" and parens <= 0 and braces == 0:
                break
            pos += 1
        if parens > 0 or braces > 0:
            raise self.fail(f"unclosed bracket in the value of {key!r}", start)
        return _Property(key, text[value_start:pos].strip(), self.line_of(start)), pos

    def matching_brace(self, open_pos: int) -> int:
        depth = 0
        in_quote = False
        for pos in range(open_pos, len(self.text)):
            ch = self.text[pos]
            if ch == '"':
                in_quote = not in_quote
            elif in_quote:
                continue
            elif ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    return pos
        raise self.fail("missing '}' for this block", open_pos)


# --------------------------------------------------------------------------- interpretation


def _expression_text(raw: str) -> str:
    return textwrap.dedent(raw.strip("\n")).strip()


_FIELD_HEAD_RE = re.compile(r"^field\s+([A-Za-z_][\w]*)\s+type\s+(.+)$")
_PROFILE_HEAD_RE = re.compile(r"^rank-profile\s+([\w-]+)(?:\s+inherits\s+(.+))?$")
_FUNCTION_HEAD_RE = re.compile(
    r"^(?:function|macro)\s+(?:inline\s+)?([A-Za-z_][\w]*)\s*\((.*)\)$", re.S
)
_DECLARATION_RE = re.compile(
    r"^(?:(?P<wrapper>query|constant)\((?P<wrapped>[^)]+)\)|(?P<bare>[A-Za-z_][\w.]*))"
    r"\s*(?P<rest>.*)$",
    re.S,
)


def _split_declaration(line: str) -> tuple[str, str, str | None] | None:
    """Split ``query(q) TYPE[: DEFAULT]``, ``name TYPE: VALUE`` or ``name: VALUE``."""
    match = _DECLARATION_RE.match(line)
    if match is None:
        return None
    name = match.group("wrapped") or match.group("bare")
    rest = match.group("rest").strip()
    if rest.startswith(":"):
        return name, "double", rest[1:].strip()
    if rest.startswith("tensor"):
        open_at = rest.find("(")
        depth = 0
        close_at = -1
        for pos in range(open_at, len(rest)) if open_at >= 0 else ():
            depth += {"(": 1, ")": -1}.get(rest[pos], 0)
            if depth == 0:
                close_at = pos
                break
        if close_at < 0:
            return None
        type_text, remainder = rest[: close_at + 1], rest[close_at + 1 :].strip()
    else:
        parts = rest.split(None, 1)
        if not parts:
            return None
        type_text = parts[0].rstrip(":")
        remainder = rest[len(parts[0].rstrip(":")) :].strip()
    if not remainder:
        return name, type_text, None
    if remainder.startswith(":"):
        return name, type_text, remainder[1:].strip()
    return None


def _declarations(block: _RawBlock, source: str, what: str) -> list[tuple[str, str, str | None]]:
    declarations = []
    for offset, raw_line in enumerate(block.body.split("\n")):
        line = raw_line.strip()
        if not line:
            continue
        parsed = _split_declaration(line)
        if parsed is None:
            raise SchemaError(
                f"{source} line {block.line + offset}: cannot read {what} declaration {line!r}; "
                "expected 'query(name) TYPE[: DEFAULT]' or 'name TYPE: VALUE'"
            )
        declarations.append(parsed)
    return declarations


_PHASE_BLOCKS = ("first-phase", "second-phase", "global-phase")


def _phase(block: _Block, source: str) -> Phase:
    expression = None
    counts: dict[str, int] = {}
    for item in block.items:
        if isinstance(item, _RawBlock) and item.head == "expression":
            expression = _expression_text(item.body)
        elif isinstance(item, _Property) and item.key == "expression":
            expression = _expression_text(item.value)
        elif isinstance(item, _Property) and item.key in ("rerank-count", "keep-rank-count"):
            try:
                counts[item.key] = int(item.value)
            except ValueError:
                raise SchemaError(
                    f"{source} line {item.line}: {item.key} must be an integer, got {item.value!r}"
                ) from None
    if not expression:
        raise SchemaError(f"{source} line {block.line}: {block.head} has no expression")
    return Phase(expression, counts.get("rerank-count"), counts.get("keep-rank-count"))


def _function(block: _Block, source: str) -> tuple[str, tuple[str, ...], str]:
    match = _FUNCTION_HEAD_RE.match(block.head)
    if match is None:
        raise SchemaError(f"{source} line {block.line}: cannot read function header {block.head!r}")
    args = tuple(a.strip() for a in match.group(2).split(",") if a.strip())
    for item in block.items:
        if isinstance(item, _RawBlock) and item.head == "expression":
            return match.group(1), args, _expression_text(item.body)
        if isinstance(item, _Property) and item.key == "expression":
            return match.group(1), args, _expression_text(item.value)
    raise SchemaError(f"{source} line {block.line}: function {match.group(1)!r} has no expression")


def _field(block: _Block, source: str, in_document: bool) -> FieldSpec:
    match = _FIELD_HEAD_RE.match(block.head)
    if match is None:
        raise SchemaError(f"{source} line {block.line}: cannot read field header {block.head!r}")
    name, type_text = match.group(1), match.group(2).strip()
    indexing: tuple[str, ...] = ()
    attribute_settings: list[str] = []
    distance_metric = None
    hnsw_settings: dict[str, str] = {}
    hnsw_block = False
    for item in block.items:
        if isinstance(item, _Property) and item.key == "indexing":
            indexing = tuple(part.strip() for part in item.value.split("|") if part.strip())
        elif isinstance(item, _RawBlock) and item.head == "indexing":
            indexing = tuple(
                part.strip()
                for statement in item.body.replace(";", "\n").split("\n")
                for part in statement.split("|")
                if part.strip()
            )
        elif isinstance(item, _Property) and item.key == "attribute":
            attribute_settings.append(item.value)
        elif isinstance(item, _Block) and item.head == "attribute":
            for setting in item.items:
                if isinstance(setting, _Property) and setting.key == "distance-metric":
                    distance_metric = setting.value
                elif isinstance(setting, _Property):
                    attribute_settings.append(f"{setting.key}: {setting.value}")
                elif isinstance(setting, _Statement):
                    attribute_settings.append(setting.text)
        elif isinstance(item, _Block) and item.head == "index":
            for setting in item.items:
                if isinstance(setting, _Block) and setting.head == "hnsw":
                    hnsw_block = True
                    hnsw_settings.update(
                        {p.key: p.value for p in setting.items if isinstance(p, _Property)}
                    )
    is_tensor = type_text.startswith("tensor")
    return FieldSpec(
        name=name,
        type=type_text,
        indexing=indexing,
        attribute_settings=tuple(attribute_settings),
        distance_metric=distance_metric,
        hnsw=hnsw_block or (is_tensor and "index" in indexing),
        hnsw_settings=hnsw_settings,
        in_document=in_document,
    )


def _rank_profile(block: _Block, source: str) -> RankProfileSpec:
    match = _PROFILE_HEAD_RE.match(block.head)
    if match is None:
        raise SchemaError(
            f"{source} line {block.line}: cannot read rank-profile header {block.head!r}"
        )
    inherits = tuple(p.strip() for p in (match.group(2) or "").split(",") if p.strip())
    inputs: dict[str, str] = {}
    input_defaults: dict[str, str] = {}
    constants: dict[str, str] = {}
    constant_types: dict[str, str] = {}
    functions: dict[str, str] = {}
    function_args: dict[str, tuple[str, ...]] = {}
    phases: dict[str, Phase] = {}
    for item in block.items:
        if isinstance(item, _RawBlock) and item.head == "inputs":
            for name, type_text, default in _declarations(item, source, "input"):
                key = f"query({name})"
                inputs[key] = type_text
                if default is not None:
                    input_defaults[key] = default
        elif isinstance(item, _RawBlock) and item.head == "constants":
            for name, type_text, value in _declarations(item, source, "constant"):
                if value is None:
                    raise SchemaError(
                        f"{source} line {item.line}: constant {name!r} has no value "
                        "(constants from files are not supported)"
                    )
                constants[name] = value
                constant_types[name] = type_text
        elif isinstance(item, _Block) and item.head.split()[0] in ("function", "macro"):
            name, args, expression = _function(item, source)
            if name in functions:
                raise SchemaError(f"{source} line {item.line}: function {name!r} defined twice")
            functions[name] = expression
            function_args[name] = args
        elif isinstance(item, _Block) and item.head in _PHASE_BLOCKS:
            phases[item.head] = _phase(item, source)
    return RankProfileSpec(
        name=match.group(1),
        inherits=inherits,
        inputs=inputs,
        input_defaults=input_defaults,
        constants=constants,
        constant_types=constant_types,
        functions=functions,
        function_args=function_args,
        first_phase=phases.get("first-phase"),
        second_phase=phases.get("second-phase"),
        global_phase=phases.get("global-phase"),
    )


def parse_schema(text: str, source: str = "<schema>") -> ParsedSchema:
    """Parse schema text; ``source`` names it in error messages (``source line N: ...``)."""
    scanner = _Scanner(_strip_comments(text), source)
    items, _ = scanner.items(0, open_brace=None)
    schemas = [
        item
        for item in items
        if isinstance(item, _Block) and item.head.split()[0] in ("schema", "search")
    ]
    if len(schemas) != 1:
        raise SchemaError(
            f"{source}: expected one 'schema NAME {{ ... }}' block, found {len(schemas)}"
        )
    schema = schemas[0]
    head = schema.head.split()
    if len(head) not in (2, 4) or (len(head) == 4 and head[2] != "inherits"):
        raise SchemaError(f"{source} line {schema.line}: cannot read schema header {schema.head!r}")
    fields: dict[str, FieldSpec] = {}
    profiles: dict[str, RankProfileSpec] = {}

    def add_field(spec: FieldSpec, line: int) -> None:
        if spec.name in fields:
            raise SchemaError(f"{source} line {line}: field {spec.name!r} defined twice")
        fields[spec.name] = spec

    for item in schema.items:
        if not isinstance(item, _Block):
            continue
        keyword = item.head.split()[0]
        if keyword == "document":
            for inner in item.items:
                if isinstance(inner, _Block) and inner.head.split()[0] == "field":
                    add_field(_field(inner, source, in_document=True), inner.line)
        elif keyword == "field":
            add_field(_field(item, source, in_document=False), item.line)
        elif keyword == "rank-profile":
            profile = _rank_profile(item, source)
            if profile.name in profiles:
                raise SchemaError(
                    f"{source} line {item.line}: rank-profile {profile.name!r} defined twice"
                )
            profiles[profile.name] = profile
    return ParsedSchema(
        name=head[1],
        fields=fields,
        rank_profiles=profiles,
        inherits=head[3] if len(head) == 4 else None,
    )


def load_schema(path: Union[str, Path]) -> ParsedSchema:
    """Read and parse a ``.sd`` file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SchemaError(f"{path}: cannot read schema ({exc.strerror})") from exc
    return parse_schema(text, source=str(path))


# --------------------------------------------------------------------------- scoring

_PHASES = ("first", "second", "global")

Scorer = Callable[..., np.ndarray]


def _literal(text: str, what: str) -> object:
    """A scalar or indexed short-form tensor value (``0.5``, ``[1, 2]``, ``[[1,2],[3,4]]``)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return np.asarray(json.loads(text), dtype=np.float64)
    except (ValueError, TypeError):
        raise SchemaError(
            f"{what}: cannot read value {text!r}; expected a number or [..] indexed short form"
        ) from None


def rank_profile_scorer(schema: ParsedSchema, profile: str, phase: str = "final") -> Scorer:
    """A function ``(attributes, query, nearest_neighbor=None) -> scores`` for one profile phase.

    ``phase`` is ``first``, ``second``, ``global`` or ``final`` (the last phase present:
    global > second > first). ``query`` maps input names without ``query(...)`` to values;
    missing inputs take their declared default (0 for scalars). Attribute arrays are checked
    against the schema's field types; query inputs are converted to their declared types.
    Expressions are parsed here, so syntax errors surface before any data is scored.
    """
    spec = schema.resolved_profile(profile)
    phases = {"first": spec.first_phase, "second": spec.second_phase, "global": spec.global_phase}
    present = [name for name in _PHASES if phases[name] is not None]
    if not present:
        raise SchemaError(
            f"rank-profile {profile!r} has no first-, second- or global-phase expression"
        )
    if phase == "final":
        phase = present[-1]
    if phase not in phases:
        raise SchemaError(f"phase must be one of first, second, global, final; got {phase!r}")
    if phases[phase] is None:
        raise SchemaError(
            f"rank-profile {profile!r} has no {phase}-phase (it has: {', '.join(present)})"
        )
    where = f"rank-profile {profile!r} {phase}-phase"

    def parsed(text: str, what: str) -> ParsedExpression:
        try:
            return parse(text)
        except ExpressionError as exc:
            raise ExpressionError(f"{what}: {exc}") from exc

    expression = parsed(phases[phase].expression, where)
    functions = {
        name: parsed(text, f"rank-profile {profile!r} function {name!r}")
        for name, text in spec.functions.items()
    }
    query_types = {key[len("query(") : -1]: type_text for key, type_text in spec.inputs.items()}
    defaults: dict[str, object] = {}
    for key, type_text in spec.inputs.items():
        name = key[len("query(") : -1]
        if key in spec.input_defaults:
            defaults[name] = _literal(spec.input_defaults[key], f"{where} input {key}")
        elif not parse_tensor_type(type_text).dims:
            defaults[name] = 0.0
    constants = {
        name: _literal(value, f"rank-profile {profile!r} constant {name!r}")
        for name, value in spec.constants.items()
    }
    field_types = {name: f.type for name, f in schema.fields.items()}
    distance_metrics = {name: f.effective_distance_metric for name, f in schema.fields.items()}

    def score(
        attributes: Mapping[str, np.ndarray],
        query: Mapping[str, object],
        nearest_neighbor: Mapping[str, str] | None = None,
    ) -> np.ndarray:
        try:
            return evaluate(
                expression,
                attributes=attributes,
                query={**defaults, **query},
                functions=functions,
                constants=constants,
                nearest_neighbor=nearest_neighbor or {},
                field_types=field_types,
                distance_metrics=distance_metrics,
                query_types=query_types,
            )
        except ExpressionError as exc:
            raise ExpressionError(f"{where}: {exc}") from exc

    return score
