"""Quality-versus-size Pareto plot of result rows.

The question every quantization report answers is "how much NDCG do I keep per byte", so the
plot puts bytes per vector on a log2 axis (each halving of precision is one step) and draws
the front of methods that nothing else beats on both axes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from vespa_quant.evaluate.metrics import EvaluationError
from vespa_quant.files import save_figure

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">")
_NO_ROTATION = (None, "", "none", "None", False)


def pareto_front(bytes_per_vector: np.ndarray, ndcg: np.ndarray) -> np.ndarray:
    """Indices of non-dominated points, ordered by increasing size.

    A point is dominated if another is no larger and scores at least as well, strictly better
    on one of the two. Sorting by (bytes ascending, NDCG descending) makes the front the points
    that beat the running maximum NDCG of all smaller-or-equal points.
    """
    bytes_per_vector = np.asarray(bytes_per_vector, dtype=np.float64)
    ndcg = np.asarray(ndcg, dtype=np.float64)
    if bytes_per_vector.shape != ndcg.shape or bytes_per_vector.ndim != 1:
        raise EvaluationError(
            f"bytes_per_vector {bytes_per_vector.shape} and ndcg {ndcg.shape}: expected two "
            "1-D arrays of the same length"
        )
    if ndcg.size == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((-ndcg, bytes_per_vector))
    sorted_ndcg = ndcg[order]
    best_before = np.concatenate(([-np.inf], np.maximum.accumulate(sorted_ndcg)[:-1]))
    return order[sorted_ndcg > best_before]


def _series_label(row: dict) -> str:
    """Method name, plus the rotation when there is one, so rotated variants get own colours."""
    rotation = row.get("rotation")
    method = str(row["method"])
    return method if rotation in _NO_ROTATION else f"{method}+{rotation}"


def _interval_or_point(interval: object, value: float) -> tuple[float, float]:
    """A row's ``[low, high]`` interval, or a zero-width one when it has none."""
    if isinstance(interval, (list, tuple)) and len(interval) == 2 and None not in interval:
        return float(interval[0]), float(interval[1])
    return value, value


def pareto_plot(rows: Sequence[dict], path: Path, title: str | None = None) -> Path:
    """Plot NDCG@10 (with CI bars) against bytes per vector and save a PNG at dpi 100.

    One point per (method, dim): colour encodes the method (with its rotation), marker the
    dimension. Rows should come from one dataset and model; two rows for the same point raise
    rather than overplot. Uses a bare Agg canvas instead of pyplot so that plotting from a
    library call touches no global backend state. Returns ``path``.
    """
    if not rows:
        raise EvaluationError("pareto_plot got no result rows")
    labels = [_series_label(row) for row in rows]
    dims = [row["dim"] for row in rows]
    seen: dict[tuple[str, object], int] = {}
    for position, key in enumerate(zip(labels, dims)):
        if key in seen:
            raise EvaluationError(
                f"rows {seen[key]} and {position} are both method {key[0]!r} at dim {key[1]}: "
                "filter rows to one dataset and model before plotting"
            )
        seen[key] = position

    sizes = np.array([float(row["bytes_per_vector"]) for row in rows])
    ndcg = np.array([float(row["ndcg_at_10"]) for row in rows])
    if np.any(sizes <= 0):
        raise EvaluationError("bytes_per_vector must be positive for a log2 axis")
    intervals = np.array(
        [_interval_or_point(row.get("ndcg_at_10_ci"), value) for row, value in zip(rows, ndcg)],
        dtype=np.float64,
    )
    yerr = np.stack([ndcg - intervals[:, 0], intervals[:, 1] - ndcg]).clip(min=0.0)

    method_labels = list(dict.fromkeys(labels))
    dim_values = sorted(set(dims), reverse=True)
    colour_cycle = [f"C{i % 10}" for i in range(len(method_labels))]
    colour_of = dict(zip(method_labels, colour_cycle))
    marker_of = {dim: _MARKERS[i % len(_MARKERS)] for i, dim in enumerate(dim_values)}

    figure = Figure(figsize=(8, 5.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    for i, (label, dim) in enumerate(zip(labels, dims)):
        axes.errorbar(
            sizes[i], ndcg[i], yerr=yerr[:, i : i + 1],
            fmt=marker_of[dim], color=colour_of[label], markersize=7, capsize=3, linewidth=1,
        )
        axes.annotate(
            label, (sizes[i], ndcg[i]), textcoords="offset points", xytext=(5, 4), fontsize=7,
            color=colour_of[label],
        )

    front = pareto_front(sizes, ndcg)
    axes.step(
        sizes[front], ndcg[front], where="post", color="0.3", linestyle="--", linewidth=1,
        label="Pareto front",
    )

    axes.set_xscale("log", base=2)
    axes.margins(x=0.12, y=0.08)
    axes.set_xlabel("bytes per vector (log2)")
    axes.set_ylabel("NDCG@10")
    axes.grid(True, which="both", alpha=0.3)
    if title:
        axes.set_title(title)

    method_handles = [
        Line2D([], [], color=colour_of[label], marker="o", linestyle="", label=label)
        for label in method_labels
    ]
    dim_handles = [
        Line2D([], [], color="0.4", marker=marker_of[dim], linestyle="", label=f"dim {dim}")
        for dim in dim_values
    ]
    front_handle = [Line2D([], [], color="0.3", linestyle="--", label="Pareto front")]
    axes.legend(handles=method_handles + dim_handles + front_handle, fontsize=7, loc="lower right")
    figure.tight_layout()

    return save_figure(figure, Path(path))
