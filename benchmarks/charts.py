"""PNG charts (matplotlib, Agg): speed-up per workload and method, and speed-up against worker count."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from benchmarks.methods import METHODS  # noqa: E402
from benchmarks.summary import BASELINE, Row  # noqa: E402

# Alternatives in blues/oranges/greens (light = one task per image), shmsave in reds/purples.
_COLORS = {
    "loop": "black",
    "write-only": "#bdbdbd",
    "threads-per-image": "#9ecae1",
    "threads-chunked": "#3182bd",
    "processes-per-image": "#fdd0a2",
    "processes-chunked": "#e6550d",
    "joblib": "#74c476",
    "shmsave-cold": "#fa9fb5",
    "shmsave-warm": "#dd3497",
    "shmsave-zero-copy": "#7a0177",
    "shmsave-cli": "#807dba",
    "loop-fresh": "#636363",
    "threads-chunked-fresh": "#6baed6",
    "processes-chunked-fresh": "#fd8d3c",
    "joblib-fresh": "#a1d99b",
    "shmsave-oneshot-fresh": "#c51b8a",
}


def _log_speedup_axis(ax) -> None:
    """Log-scale y axis labelled 0.1×, 0.2×, 0.5×, 1×, 2×, ..."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}×"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _plotted(rows: list[Row]) -> list[Row]:
    return [row for row in rows if row.method != BASELINE and row.speedup is not None]


def speedup_chart(rows: list[Row], path: Path, title: str, workers: int) -> None:
    """Grouped bars of speed-up over the loop: one group per (workload, target), one bar per method.

    Log scale; a line at 1x (the loop) and one at `workers`x (ideal scaling).
    """
    plotted = _plotted(rows)
    groups = list(dict.fromkeys((row.workload, row.target) for row in plotted))
    methods = [name for name in METHODS if any(row.method == name for row in plotted)]
    fig, ax = plt.subplots(figsize=(max(8.0, 1.3 * len(groups) + 4), 5.5))
    if not plotted:
        ax.text(0.5, 0.5, "no speed-ups to plot (was the loop method run?)", ha="center", transform=ax.transAxes)
    width = 0.85 / max(1, len(methods))
    for m, name in enumerate(methods):
        xs, ys = [], []
        for g, group in enumerate(groups):
            for row in plotted:
                if (row.workload, row.target) == group and row.method == name:
                    xs.append(g + (m - (len(methods) - 1) / 2) * width)
                    ys.append(row.speedup)
        ax.bar(
            xs,
            ys,
            width,
            label=METHODS[name].label,
            color=_COLORS.get(name, "gray"),
            hatch="//" if name == "write-only" else None,
            edgecolor="white",
            linewidth=0.3,
        )
    ax.axhline(1, color="black", linewidth=1)
    ax.axhline(workers, color="gray", linestyle="--", linewidth=1, label=f"ideal ({workers} workers)")
    _log_speedup_axis(ax)
    ax.set_xticks(range(len(groups)), [f"{w}\n{t}" for w, t in groups])
    ax.set_ylabel("speed-up over cv2.imwrite loop (log)")
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def scaling_chart(rows_by_workers: dict[int, list[Row]], path: Path, title: str) -> None:
    """One panel per (workload, target): speed-up over the loop against worker count, one line per method."""
    counts = sorted(rows_by_workers)
    series: dict[tuple[str, str], dict[str, list[tuple[int, float]]]] = {}
    for workers in counts:
        for row in _plotted(rows_by_workers[workers]):
            series.setdefault((row.workload, row.target), {}).setdefault(row.method, []).append((workers, row.speedup))
    panels = list(series) or [("no data", "")]
    cols = min(3, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.5 * cols + 2.5, 3.6 * nrows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        for name, points in series.get(panel, {}).items():
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", color=_COLORS.get(name, "gray"), label=METHODS[name].label)
        ax.plot(counts, counts, color="gray", linestyle="--", linewidth=1, label="ideal")
        ax.axhline(1, color="black", linewidth=1)
        ax.set_xscale("log", base=2)
        ax.set_xticks(counts, [str(n) for n in counts])
        _log_speedup_axis(ax)
        ax.set_title(" / ".join(p for p in panel if p), fontsize=10)
        ax.set_xlabel("workers")
        ax.grid(which="both", alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    handles = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.legend(handles.values(), handles.keys(), loc="center right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1 - 2.3 / fig.get_figwidth(), 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)
