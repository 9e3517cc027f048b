"""Distribution analysis of a dataset's corpus embeddings at several Matryoshka dims, as rows and
files (``analysis.json``, ``analysis.csv``, ``analysis.png``).

One row per (dataset, model, dim) holds every scalar of :mod:`vespa_quant.research.distributions`
(research brief Part V, 1, 3, 4, 8) plus, under :data:`PER_DIMENSION`, the per-dim arrays the
plot draws. JSON keeps everything; CSV and the text table keep the scalars.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vespa_quant.embed.embedded import EmbeddedDataset
from vespa_quant.errors import VespaQuantError
from vespa_quant.evaluate.report import csv_cells, to_builtin
from vespa_quant.files import atomic_write_text, save_figure
from vespa_quant.quantize.base import Quantizer
from vespa_quant.research.distributions import (
    DEFAULT_KS,
    RATE_BITS,
    RECONSTRUCTION_METHODS,
    correlation_structure,
    dimension_statistics,
    quantization_mse,
    variance_share_curves,
)

ANALYSIS_JSON = "analysis.json"
ANALYSIS_CSV = "analysis.csv"
ANALYSIS_PNG = "analysis.png"

PER_DIMENSION = "per_dimension"
"""Row key of the per-dim arrays: ``median``, ``std``, ``skewness``, ``excess_kurtosis`` (NaN,
JSON null, on dead dims), and the cumulative ``pca_variance_share``/``dims_variance_share``."""

IDENTITY_FIELDS: tuple[str, ...] = ("dataset", "model", "dim")
MSE_PREFIX = "mse_"
"""Row keys of :func:`quantization_mse` results: ``mse_<method>``, ``mse_gauss_rd_<R>bit``..."""


def analyze_vectors(vectors: np.ndarray, *, dataset: str = "", model: str = "",
                    methods: Iterable[Quantizer | str] = RECONSTRUCTION_METHODS,
                    ks: Iterable[int] = DEFAULT_KS, bits: Iterable[int] = RATE_BITS) -> dict[str, Any]:
    """One analysis row for corpus ``vectors`` (n, d): identity, distribution summary,
    correlation structure, normalised MSE per method and rate-distortion references, and the
    per-dim arrays under :data:`PER_DIMENSION`."""
    statistics = dimension_statistics(vectors)
    summary = statistics.summary()
    n_docs = summary.pop("n_vectors")
    pca, dims = variance_share_curves(vectors)
    row: dict[str, Any] = {"dataset": dataset, "model": model, "dim": statistics.dim, "n_docs": n_docs}
    row.update(summary)
    row.update(correlation_structure(vectors, ks))
    row.update({MSE_PREFIX + name: value for name, value in quantization_mse(vectors, methods, bits).items()})
    row[PER_DIMENSION] = {
        "median": statistics.median,
        "std": statistics.std,
        "skewness": statistics.skewness,
        "excess_kurtosis": statistics.excess_kurtosis,
        "pca_variance_share": pca,
        "dims_variance_share": dims,
    }
    return row


def analyze(embedded: EmbeddedDataset, dims: Iterable[int], *,
            methods: Iterable[Quantizer | str] = RECONSTRUCTION_METHODS,
            ks: Iterable[int] = DEFAULT_KS, bits: Iterable[int] = RATE_BITS) -> list[dict[str, Any]]:
    """Analyse ``embedded``'s corpus vectors at each Matryoshka dim in ``dims`` (truncated and
    re-normalised by :meth:`EmbeddedDataset.at_dim`), one row per dim in the order given.

    Only documents are analysed: they are what a calibration is learned from and what the codes
    reconstruct.
    """
    dims = [int(dim) for dim in dims]
    if not dims:
        raise VespaQuantError("analyze: no dims given")
    methods, ks, bits = list(methods), list(ks), list(bits)
    return [
        analyze_vectors(embedded.at_dim(dim)[0], dataset=embedded.dataset.name, model=embedded.model,
                        methods=methods, ks=ks, bits=bits)
        for dim in dims
    ]


def scalar_columns(rows: Sequence[dict]) -> list[str]:
    """Every key but :data:`PER_DIMENSION`, identity first, then in order of first appearance."""
    columns = list(IDENTITY_FIELDS)
    for row in rows:
        columns.extend(key for key in row if key not in columns and key != PER_DIMENSION)
    return columns


def analysis_json_text(rows: Sequence[dict]) -> str:
    """Strict JSON (NaN becomes null) of ``rows`` with their per-dim arrays."""
    return json.dumps([to_builtin(row) for row in rows], indent=2, allow_nan=False) + "\n"


def analysis_csv_text(rows: Sequence[dict]) -> str:
    """CSV of the scalar columns of ``rows``, one line per row."""
    columns = scalar_columns(rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        builtin = to_builtin({key: row[key] for key in columns if key in row})
        writer.writerow(dict(cell for key, value in builtin.items() for cell in csv_cells(key, value)))
    return buffer.getvalue()


def _series_labels(rows: Sequence[dict]) -> list[str]:
    """``d=<dim>`` when one dataset and model, else ``<model> d=<dim>`` (plus dataset if several)."""
    datasets = {row.get("dataset") for row in rows}
    models = {row.get("model") for row in rows}
    labels = []
    for row in rows:
        parts = ([str(row.get("dataset"))] if len(datasets) > 1 else []) + \
                ([str(row.get("model"))] if len(models) > 1 else [])
        labels.append(" ".join(parts + [f"d={row['dim']}"]))
    return labels


def _per_dimension(row: dict, key: str) -> np.ndarray:
    """A per-dim array of a row, from memory or from ``analysis.json`` (null becomes NaN)."""
    try:
        values = row[PER_DIMENSION][key]
    except (KeyError, TypeError):
        raise VespaQuantError(
            f"analysis row {row.get('dataset')}/{row.get('model')}/{row.get('dim')}: "
            f"missing {PER_DIMENSION}.{key}"
        ) from None
    return np.array([np.nan if value is None else value for value in values], dtype=np.float64)


def analysis_plot(rows: Sequence[dict], path: Path) -> Path:
    """Three panels, one series per row: excess kurtosis and |median| of every dim against its
    index (Q2, Q3: do late Matryoshka dims differ?), and the cumulative variance share of the first
    ``k`` principal components (solid) against the first ``k`` dims (dashed) (Q5).

    Dead dims have NaN kurtosis and are left as gaps. A bare Agg canvas, not pyplot, so plotting
    from a library call touches no global backend state. Returns ``path``.
    """
    if not rows:
        raise VespaQuantError("analysis_plot got no analysis rows")
    figure = Figure(figsize=(15, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    kurtosis_axes, median_axes, share_axes = figure.subplots(1, 3)
    colours = [f"C{position % 10}" for position in range(len(rows))]
    for row, label, colour in zip(rows, _series_labels(rows), colours):
        kurtosis = _per_dimension(row, "excess_kurtosis")
        median = _per_dimension(row, "median")
        index = np.arange(1, len(kurtosis) + 1)
        kurtosis_axes.plot(index, kurtosis, ".", markersize=3, color=colour, alpha=0.7, label=label)
        median_axes.plot(index, np.abs(median), ".", markersize=3, color=colour, alpha=0.7, label=label)
        pca = _per_dimension(row, "pca_variance_share")
        dims = _per_dimension(row, "dims_variance_share")
        k = np.arange(1, len(pca) + 1)
        share_axes.plot(k, pca, "-", color=colour, label=f"{label} PCA")
        share_axes.plot(k, dims, "--", color=colour, label=f"{label} first k dims")
    kurtosis_axes.axhline(0.0, color="grey", linewidth=0.8)
    kurtosis_axes.set(xlabel="dimension index", ylabel="excess kurtosis (0 = Gaussian, 3 = Laplace)",
                      title="Tail weight per dimension")
    median_axes.set(xlabel="dimension index", ylabel="|median|", title="Median offset per dimension")
    share_axes.set(xlabel="k", ylabel="share of total variance", ylim=(0.0, 1.02),
                   title="Variance in first k PCA components vs dims")
    for axes in (kurtosis_axes, median_axes):
        axes.legend(fontsize="small", markerscale=3)
    share_axes.legend(fontsize="small")
    return save_figure(figure, path)


def write_analysis(rows: Sequence[dict], out_dir: Path) -> list[Path]:
    """Write ``analysis.json`` (everything), ``analysis.csv`` (scalars), ``analysis.png``
    (:func:`analysis_plot`) and ``table.txt`` (the printed table) into ``out_dir``, as a set
    (:func:`vespa_quant.folders.write_folder`); returns the paths."""
    from vespa_quant.folders import write_folder

    if not rows:
        raise VespaQuantError("write_analysis got no analysis rows")
    json_text = analysis_json_text(rows)
    csv_text = analysis_csv_text(rows)

    def write(staging: Path) -> list[Path]:
        return [
            atomic_write_text(staging / ANALYSIS_JSON, json_text),
            atomic_write_text(staging / ANALYSIS_CSV, csv_text),
            analysis_plot(rows, staging / ANALYSIS_PNG),
            atomic_write_text(staging / "table.txt", format_analysis(rows) + "\n"),
        ]

    return write_folder(Path(out_dir), write)


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return format(float(value), ".4g")
    return str(value)


def format_analysis(rows: Sequence[dict]) -> str:
    """Aligned text table, one line per statistic and one column per row.

    Transposed because a row has some thirty statistics and a run a handful of dims. Columns are
    headed by the dim when every row shares dataset and model (named in a first line), else by
    ``dataset/model/dim``.
    """
    if not rows:
        return "(no analysis rows)"
    datasets = {row.get("dataset") for row in rows}
    models = {row.get("model") for row in rows}
    shared = len(datasets) == 1 and len(models) == 1
    headers = ["statistic"] + [
        f"d={row['dim']}" if shared else f"{row.get('dataset')}/{row.get('model')}/{row['dim']}"
        for row in rows
    ]
    lines = [[key] + [_cell(row.get(key)) for row in rows]
             for key in scalar_columns(rows) if key not in IDENTITY_FIELDS]
    widths = [max(len(line[i]) for line in [headers] + lines) for i in range(len(headers))]

    def render(line: list[str]) -> str:
        return "  ".join(
            format(cell, f"<{width}" if position == 0 else f">{width}")
            for position, (cell, width) in enumerate(zip(line, widths))
        ).rstrip()

    table = [render(headers), "  ".join("-" * width for width in widths)] + [render(line) for line in lines]
    if shared:
        table.insert(0, f"dataset {next(iter(datasets))}, model {next(iter(models))}")
    table.append(
        "mse_*: reconstruction MSE / total variance over live dims; gauss_rd = 2^(-2R) (Gaussian "
        "source), shannon_lb = Shannon lower bound of the empirical marginals"
    )
    return "\n".join(table)
