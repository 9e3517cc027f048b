"""Result rows: one dict per (dataset, model, dim, method, rotation) evaluation.

Rows are plain dicts so any stage can add fields (backend, latency percentiles, calibration
id, wall seconds) without a schema change; :data:`RESULT_FIELDS` names the ones every row must
carry. Files are written here and documents quote them, never retype them (STYLE.md 13).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vespa_quant.errors import DataError
from vespa_quant.evaluate.metrics import EvaluationError
from vespa_quant.files import atomic_write_text

RESULT_FIELDS: tuple[str, ...] = (
    "dataset",
    "model",
    "dim",
    "method",
    "rotation",
    "bits_per_dim",
    "bytes_per_vector",
    "ndcg_at_10",
    "ndcg_at_10_ci",
    "recall_at_100",
    "delta_vs_float32_ci",
    "n_queries",
    "n_docs",
)
"""Keys every result row must have, in output column order; extra keys follow them."""

CI_SUFFIX = "_ci"
"""Keys ending in this hold a ``[low, high]`` interval; CSV flattens them to ``_low``/``_high``."""

RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"


def to_builtin(value: Any) -> Any:
    """Convert numpy scalars/arrays, tuples and paths to JSON types; non-finite floats to None.

    ``None`` rather than ``NaN`` because ``NaN`` is not JSON and breaks strict readers.
    """
    if isinstance(value, dict):
        return {str(key): to_builtin(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_builtin(item) for item in value]
    if isinstance(value, np.ndarray):
        return [to_builtin(item) for item in value.tolist()]
    if isinstance(value, np.generic):
        return to_builtin(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _check_rows(rows: Sequence[dict]) -> None:
    for position, row in enumerate(rows):
        if not isinstance(row, dict):
            raise EvaluationError(f"result row {position} is {type(row).__name__}, expected dict")
        missing = [field for field in RESULT_FIELDS if field not in row]
        if missing:
            raise EvaluationError(f"result row {position}: missing fields {missing}")


def _column_order(rows: Sequence[dict]) -> list[str]:
    """Required fields first, then extra keys in order of first appearance."""
    columns = list(RESULT_FIELDS)
    seen = set(columns)
    for row in rows:
        for key in row:
            if key not in seen:
                seen.add(key)
                columns.append(key)
    return columns


def csv_cells(key: str, value: Any) -> list[tuple[str, Any]]:
    """One JSON-ready value -> its CSV (column, cell) pairs; intervals become two columns."""
    if key.endswith(CI_SUFFIX):
        if value is None:
            return [(f"{key}_low", ""), (f"{key}_high", "")]
        if isinstance(value, list) and len(value) == 2:
            return [(f"{key}_low", value[0]), (f"{key}_high", value[1])]
    if isinstance(value, (list, dict)):
        return [(key, json.dumps(value))]
    return [(key, "" if value is None else value)]


def results_json_text(rows: Sequence[dict]) -> str:
    """The ``results.json`` content for ``rows`` (strict JSON, indent 2)."""
    _check_rows(rows)
    return json.dumps([to_builtin(row) for row in rows], indent=2, allow_nan=False) + "\n"


def csv_text(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    """CSV of ``rows``: keys in ``columns`` order (else order of first appearance), intervals
    split into ``_low``/``_high``, lists and dicts as JSON; one writer for every CSV we produce."""
    builtin_rows = [to_builtin(row) for row in rows]
    if columns is None:
        columns = list(dict.fromkeys(key for row in builtin_rows for key in row))
    records = [
        dict(cell for key in columns if key in row for cell in csv_cells(key, row[key]))
        for row in builtin_rows
    ]
    header = list(dict.fromkeys(column for record in records for column in record))
    if not records:
        header = [column for key in columns for column, _ in csv_cells(key, None)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header, restval="", extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return buffer.getvalue()


def results_csv_text(rows: Sequence[dict]) -> str:
    """The ``results.csv`` content for ``rows``: one column per key, intervals split in two."""
    _check_rows(rows)
    return csv_text(rows, _column_order([to_builtin(row) for row in rows]))


def write_results(rows: list[dict], out_dir: Path) -> tuple[Path, Path]:
    """Write ``results.json`` and ``results.csv`` into ``out_dir`` (created if needed).

    JSON keeps intervals as ``[low, high]`` lists for programs; CSV splits them into
    ``<key>_low``/``<key>_high`` columns for spreadsheets. Returns ``(json_path, csv_path)``.
    """
    json_text = results_json_text(rows)
    csv_text = results_csv_text(rows)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / RESULTS_JSON
    csv_path = out_dir / RESULTS_CSV
    atomic_write_text(json_path, json_text)
    atomic_write_text(csv_path, csv_text)
    return json_path, csv_path


def load_results(path: Path) -> list[dict]:
    """Read rows written by :func:`write_results` (a ``results.json`` file or its directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_JSON
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(f"{path}: results file not found") from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} line {exc.lineno}: not valid JSON ({exc.msg})") from exc
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise DataError(f"{path}: expected a JSON list of result objects")
    for position, row in enumerate(rows):
        missing = [field for field in RESULT_FIELDS if field not in row]
        if missing:
            raise DataError(f"{path}: row {position} is missing fields {missing}")
    return rows


def _ci_bounds(value: Any) -> tuple[float, float] | None:
    if not isinstance(value, (list, tuple, np.ndarray)):
        return None
    bounds = list(value)
    if len(bounds) != 2 or any(bound is None for bound in bounds):
        return None
    return float(bounds[0]), float(bounds[1])


def ci_excludes_zero(value: Any) -> bool:
    """True if a ``[low, high]`` interval lies strictly on one side of zero."""
    bounds = _ci_bounds(value)
    return bounds is not None and (bounds[0] > 0.0 or bounds[1] < 0.0)


def _number(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(float(value), spec)


def _with_ci(value: Any, interval: Any, spec: str) -> str:
    bounds = _ci_bounds(interval)
    if bounds is None:
        return _number(value, spec)
    return f"{_number(value, spec)} [{format(bounds[0], spec)}, {format(bounds[1], spec)}]"


def _delta_cell(row: dict) -> str:
    """Delta to float32 with its paired interval; ``*`` when the interval excludes zero."""
    delta = row.get("delta_vs_float32")
    centre = _number(delta, "+.4f")
    bounds = _ci_bounds(row.get("delta_vs_float32_ci"))
    if bounds is None:
        return centre
    mark = "*" if ci_excludes_zero(row.get("delta_vs_float32_ci")) else ""
    prefix = "" if delta is None else f"{centre} "
    return f"{prefix}[{bounds[0]:+.4f}, {bounds[1]:+.4f}]{mark}"


def _sort_key(row: dict) -> tuple[float, float]:
    dim = row.get("dim")
    ndcg = row.get("ndcg_at_10")
    return (
        -float(dim) if dim is not None else math.inf,
        -float(ndcg) if ndcg is not None and math.isfinite(float(ndcg)) else math.inf,
    )


_TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("dataset", "<"),
    ("model", "<"),
    ("dim", ">"),
    ("method", "<"),
    ("rotation", "<"),
    ("bits", ">"),
    ("bytes", ">"),
    ("NDCG@10 [CI]", "<"),
    ("ΔvsF32 [CI]", "<"),
    ("R@100", ">"),
)


def format_table(rows: Sequence[dict]) -> str:
    """Aligned text table of result rows, widest dim first, best NDCG@10 first within a dim.

    The delta column shows the optional extra key ``delta_vs_float32`` when the row has it, then
    the paired bootstrap interval ``delta_vs_float32_ci``; ``*`` marks rows whose interval excludes zero, i.e. a significant difference to
    float32 at the interval's confidence level.
    """
    cells: list[list[str]] = []
    for row in sorted(rows, key=_sort_key):
        cells.append(
            [
                str(row.get("dataset", "")),
                str(row.get("model", "")),
                str(row.get("dim", "")),
                str(row.get("method", "")),
                str(row.get("rotation", "")),
                _number(row.get("bits_per_dim"), "g"),
                _number(row.get("bytes_per_vector"), "g"),
                _with_ci(row.get("ndcg_at_10"), row.get("ndcg_at_10_ci"), ".4f"),
                _delta_cell(row),
                _number(row.get("recall_at_100"), ".4f"),
            ]
        )
    headers = [name for name, _ in _TABLE_COLUMNS]
    widths = [max([len(headers[i])] + [len(line[i]) for line in cells]) for i in range(len(headers))]

    def render(line: list[str]) -> str:
        return "  ".join(
            format(cell, f"{align}{width}")
            for cell, (_, align), width in zip(line, _TABLE_COLUMNS, widths)
        ).rstrip()

    lines = [render(headers), "  ".join("-" * width for width in widths)]
    lines.extend(render(line) for line in cells)
    lines.append("* delta-vs-float32 interval excludes 0")
    return "\n".join(lines)
