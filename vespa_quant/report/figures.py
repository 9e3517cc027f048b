"""The report's Pareto figure: NDCG@10 with 95% CIs against bytes/vector, ours and peers apart.

Methods crowd at the same few sizes (48 and 96 B hold a dozen rows each), so names written next
to points overlap whatever their offsets. Each point gets a short number instead, placed by a
greedy search for a free spot (nearest first, a leader line when it had to move away), and the
numbers are resolved by a legend table beside the plot (and by the page's table). Drawn on a bare
Agg canvas, as :mod:`vespa_quant.evaluate.plot` does, so no global pyplot state is touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vespa_quant.evaluate.plot import pareto_front
from vespa_quant.files import save_figure
from vespa_quant.report.load import DatasetResults, Entry

DPI = 150
OURS, PEERS, PAGED = "#1f5fa8", "#c8501e", "#7a7a7a"
LABEL_POINTS = 7.0
"""Font size of the point numbers (points)."""
_RADII = (5.0, 9.0, 14.0, 20.0, 28.0, 38.0, 50.0)
_ANGLES = np.deg2rad([30, -30, 150, -150, 90, -90, 0, 180, 60, -60, 120, -120])


def _boxes_overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def place_labels(points: np.ndarray, sizes: Sequence[tuple[float, float]],
                 bounds: tuple[float, float, float, float], marker: float) -> np.ndarray:
    """Offsets (pixels) putting each label's box near its point without overlapping another
    label, another marker or the plot's edge; the least crowded candidate when none is free.

    ``points`` (n, 2) are pixel positions, ``sizes`` each label's (width, height) in pixels,
    ``bounds`` the plot's (x0, y0, x1, y1), ``marker`` the half-size of a marker's box.
    """
    markers = [(x - marker, y - marker, x + marker, y + marker) for x, y in points]
    placed: list[tuple[float, float, float, float]] = []
    offsets = np.zeros_like(points, dtype=np.float64)
    scale = DPI / 72.0
    for i, ((x, y), (width, height)) in enumerate(zip(points, sizes)):
        best, best_cost = (0.0, 0.0), np.inf
        for radius in _RADII:
            for angle in _ANGLES:
                dx, dy = radius * scale * np.cos(angle), radius * scale * np.sin(angle)
                cx, cy = x + dx + np.sign(dx) * width / 2, y + dy + np.sign(dy) * height / 2
                box = (cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2)
                outside = box[0] < bounds[0] or box[1] < bounds[1] or box[2] > bounds[2] or box[3] > bounds[3]
                hits = sum(_boxes_overlap(box, other) for other in placed)
                hits += sum(_boxes_overlap(box, other) for j, other in enumerate(markers) if j != i)
                cost = hits + (10 if outside else 0) + radius / 100.0
                if cost < best_cost:
                    best, best_cost = (cx - x, cy - y), cost
            if best_cost < 1:
                break
        offsets[i] = best
        cx, cy = x + best[0], y + best[1]
        placed.append((cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2))
    return offsets


def dodge(sizes: np.ndarray, step: float = 0.05, widest: float = 0.4) -> np.ndarray:
    """Plot positions spreading rows of equal size sideways (in octaves) so their bars stay apart;
    fronts and tables keep the true sizes."""
    positions = sizes.astype(np.float64).copy()
    for size in np.unique(sizes):
        same = np.flatnonzero(sizes == size)
        spacing = min(step, widest / max(len(same) - 1, 1))
        positions[same] = size * 2.0 ** ((np.arange(len(same)) - (len(same) - 1) / 2) * spacing)
    return positions


def legend_lines(results: DatasetResults, entries: Sequence[Entry], numbers: Sequence[int]) -> list[tuple[str, str]]:
    """(text, colour) per legend line: number, label, bytes and NDCG@10, ours first."""
    lines = []
    for title, peer, colour in (("ours", False, OURS), ("peers", True, PEERS)):
        chosen = [(n, e) for n, e in zip(numbers, entries) if e.peer == peer]
        if not chosen:
            continue
        lines.append((title, colour))
        for number, entry in chosen:
            paged = " (paged f32)" if entry.row.get("disk_bytes_per_vector") else ""
            lines.append((f"{number:>2} {results.label(entry)[:26]:<26} {entry.bytes:>5g} B  {entry.mean:.4f}{paged}",
                          PAGED if paged else colour))
    return lines


def pareto_figure(results: DatasetResults, path: Path, numbers: Sequence[int]) -> Path:
    """NDCG@10 (95% CI bars) against bytes/vector (log2) for every entry of ``results``: ours as
    filled circles, peers as open squares, rows rescoring from paged float32 grey; each side's
    Pareto front as a step line and float32 as a dashed level. ``numbers`` label the points."""
    entries = list(results.entries)
    sizes = np.array([entry.bytes for entry in entries])
    means = np.array([entry.mean for entry in entries])
    intervals = np.array([entry.row.get("ndcg_at_10_ci") or [m, m] for entry, m in zip(entries, means)], dtype=float)

    figure = Figure(figsize=(13.0, 7.5), dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_axes((0.06, 0.08, 0.56, 0.85))
    x_low, x_high = sizes.min() / 1.35, sizes.max() * 1.35
    y_low, y_high = intervals[:, 0].min(), intervals[:, 1].max()
    pad = 0.04 * (y_high - y_low)
    axes.set_xscale("log", base=2)
    axes.set_xlim(x_low, x_high)
    axes.set_ylim(y_low - pad, y_high + pad)

    float32 = results.float32
    if float32 is not None:
        axes.axhline(float32.mean, color="0.35", linestyle=":", linewidth=1,
                     label=f"float32 NDCG@10 {float32.mean:.4f}")
    for peer, colour in ((False, OURS), (True, PEERS)):
        front_rows = [i for i, e in enumerate(entries) if e.peer == peer and not e.row.get("disk_bytes_per_vector")]
        if front_rows:
            front = np.array(front_rows)[pareto_front(sizes[front_rows], means[front_rows])]
            axes.step(sizes[front], means[front], where="post", color=colour, linewidth=1.2, alpha=0.6,
                      linestyle="-" if not peer else "--", label=f"{'peer' if peer else 'our'} Pareto front")
    positions = dodge(sizes)
    for i, entry in enumerate(entries):
        paged = bool(entry.row.get("disk_bytes_per_vector"))
        colour = PAGED if paged else PEERS if entry.peer else OURS
        axes.errorbar(positions[i], means[i], yerr=[[means[i] - intervals[i, 0]], [intervals[i, 1] - means[i]]],
                      fmt="s" if entry.peer else "o", color=colour, markersize=5.5, capsize=2, linewidth=0.8,
                      markerfacecolor="white" if entry.peer or paged else colour, alpha=0.9)
    ticks = np.unique(sizes)
    ticks = ticks[np.concatenate([[True], np.diff(np.log2(ticks)) > 0.25])]  # no two labels closer than 1/4 octave
    axes.set_xticks(ticks, [f"{tick:g}" for tick in ticks], fontsize=8)
    axes.set_xticks([], minor=True)
    axes.set_xlabel("bytes per vector (log2 scale; memory, codes only; rows of equal size spread sideways)")
    axes.set_ylabel("NDCG@10 (95% bootstrap CI)")
    axes.set_title(f"{results.dataset} / {results.model}: quality against size", fontsize=11)
    axes.grid(True, which="both", alpha=0.25)
    axes.legend(loc="lower right", fontsize=7)

    # Labels: positions in pixels, once the axes geometry is fixed.
    pixels = axes.transData.transform(np.column_stack([positions, means]))
    char = LABEL_POINTS * 0.62 * DPI / 72.0
    label_sizes = [(char * len(str(n)) + 2, LABEL_POINTS * 1.15 * DPI / 72.0) for n in numbers]
    box = axes.get_window_extent()
    offsets = place_labels(pixels, label_sizes, (box.x0, box.y0, box.x1, box.y1), marker=4.0 * DPI / 72.0)
    for i, (number, entry) in enumerate(zip(numbers, entries)):
        colour = PEERS if entry.peer else OURS
        dx, dy = offsets[i] * 72.0 / DPI
        far = np.hypot(dx, dy) > 9
        axes.annotate(str(number), (positions[i], means[i]), textcoords="offset points", xytext=(dx, dy),
                      fontsize=LABEL_POINTS, color=colour, ha="center", va="center",
                      arrowprops={"arrowstyle": "-", "color": colour, "linewidth": 0.5, "alpha": 0.7,
                                  "shrinkA": 0, "shrinkB": 2} if far else None)

    lines = legend_lines(results, entries, numbers)
    step = min(0.024, 0.9 / max(len(lines), 1))
    for k, (text, colour) in enumerate(lines):
        bold = text in ("ours", "peers")
        figure.text(0.64, 0.93 - k * step, text, fontsize=7 if not bold else 8, family="monospace",
                    color=colour, weight="bold" if bold else "normal", va="top")
    return save_figure(figure, Path(path), dpi=DPI)
