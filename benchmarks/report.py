"""Markdown and JSON output: the results table, its header, and the scaling table."""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

from benchmarks.runner import WorkloadInfo
from benchmarks.summary import Row

COLUMNS = (
    "workload",
    "target",
    "method",
    "workers",
    "median s",
    "spread (min–max) s",
    "speed-up vs loop",
    "efficiency",
    "peak MB",
    "note",
)

LEGEND = """\
- **median s / spread**: median and min–max of the wall-clock seconds of the timed call over the repetitions.
- **speed-up vs loop** = loop median / method median, within the same workload, target and run.
- **efficiency** = loop median / (workers × method median): 100% means every worker was as
  productive as the single-threaded loop. `loop` uses one worker; `write-only` has none (it skips encoding).
- **write-only (limit)**: the same encoded bytes written with open/write/close and no encoding:
  the filesystem's own limit for this many files from one thread.
- **peak MB**: peak summed RSS of the benchmark process and all its children during the timed call,
  sampled every 10 ms; it includes the input images the benchmark holds, and counts shared pages
  once per process that maps them (workers started by fork show the parent's pages again): an upper bound.
"""


def seconds(value: float | None) -> str:
    """Seconds with about three significant digits, '—' for None."""
    if value is None:
        return "—"
    return f"{value:#.3g}" if value < 99.95 else f"{value:.0f}"


def times(value: float | None) -> str:
    """A speed-up factor such as 0.013×, 0.54×, 1.00× or 52×; '—' for None."""
    if value is None:
        return "—"
    if value < 0.1:
        return f"{value:.2g}×"
    return f"{value:.2f}×" if value < 10 else f"{value:.0f}×"


def _cells(row: Row) -> list[str]:
    spread = f"{seconds(row.low)}–{seconds(row.high)}" if row.runs > 1 else "—"
    return [
        row.workload,
        row.target,
        row.label,
        str(row.workers),
        seconds(row.median),
        spread,
        times(row.speedup),
        "—" if row.efficiency is None else f"{row.efficiency:.0%}",
        "—" if row.peak_mb is None else f"{row.peak_mb:.0f}",
        " ".join(row.note.split()).replace("|", "\\|"),
    ]


def markdown_table(header: tuple[str, ...], lines: list[list[str]]) -> str:
    """A Markdown table with the given header cells and rows of cells."""
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cells) + " |" for cells in lines]
    return "\n".join(out) + "\n"


def results_table(rows: list[Row]) -> str:
    """The Markdown results table, one line per row."""
    return markdown_table(COLUMNS, [_cells(row) for row in rows])


def _workload_line(info: WorkloadInfo) -> str:
    line = f"- **{info.name}**: {info.count} × {info.summary} ({info.megabytes:.1f} MB in memory)"
    if info.count != info.full_count:
        line += f" — **shrunk by --quick from {info.full_count} images**"
    return line


def header(
    title: str,
    command: str,
    machine: dict[str, str],
    settings: list[str],
    workloads: list[WorkloadInfo],
    notes: list[str],
) -> str:
    """The top of the results file: command, machine, workloads, settings and notes."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        f"# {title}\n",
        f"Command: `{command}` (in `{os.getcwd()}`)  \nDate: {now}\n",
        "## Machine\n",
        markdown_table(("", ""), [[key, value] for key, value in machine.items()]),
        "\n## Workloads\n",
        "\n".join(_workload_line(info) for info in workloads) + "\n",
        "\n## Settings\n",
        "\n".join(f"- {s}" for s in settings) + "\n",
    ]
    if notes:
        parts += ["\n## Notes\n", "\n".join(f"- {n}" for n in notes) + "\n"]
    return "\n".join(parts)


def results_document(head: str, rows: list[Row], summary: str = "") -> str:
    """Header, ``summary`` (Markdown sections), results table and the legend explaining its columns."""
    return f"{head}\n{summary}## Results\n\n{results_table(rows)}\n{LEGEND}"


def _scaling_cell(row: Row) -> str:
    if row.median is None:
        return "—"
    text = f"{seconds(row.median)} s"
    return text if row.speedup is None else f"{text} ({times(row.speedup)})"


def scaling_table(rows_by_workers: dict[int, list[Row]]) -> str:
    """One line per (workload, target, method); one 'median s (speed-up)' column per worker count."""
    counts = sorted(rows_by_workers)
    cells: dict[tuple[str, str, str], dict[int, str]] = {}
    for workers in counts:
        for row in rows_by_workers[workers]:
            cells.setdefault((row.workload, row.target, row.label), {})[workers] = _scaling_cell(row)
    header_cells = ("workload", "target", "method", *(f"workers={n}" for n in counts))
    lines = [[*key, *(by_count.get(n, "") for n in counts)] for key, by_count in cells.items()]
    return markdown_table(header_cells, lines)


def write_json(path: Path, payload: dict) -> None:
    """Write payload as indented JSON."""
    path.write_text(json.dumps(payload, indent=1, default=str) + "\n")
