"""The warm rows of a committed results table, as the baseline issue 12's "warm not slower" goal compares with.

    python -m benchmarks.warm_baseline benchmarks/results/full.md > benchmarks/results/warm-baseline.csv

The raw timings (``results/*.json``) are not committed, so the baseline is read from the Markdown
table of ``full.md`` (median, min-max spread, and the loop's median of the same workload and
target) and kept in ``results/warm-baseline.csv``, which a later full run does not overwrite.
"""

from __future__ import annotations

import argparse
import csv
import io
import re
from pathlib import Path

from benchmarks.goals import WARM_METHODS, BaselineRow
from benchmarks.methods import METHODS
from benchmarks.summary import BASELINE

DEFAULT = Path(__file__).resolve().parent / "results" / "warm-baseline.csv"
FIELDS = ("workload", "target", "method", "images", "median", "low", "high", "loop_median")

_WORKLOAD_LINE = re.compile(r"^- \*\*(?P<name>[\w-]+)\*\*: (?P<count>\d+) ×", re.MULTILINE)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def from_markdown(text: str, methods=WARM_METHODS) -> dict[tuple[str, str, str], BaselineRow]:
    """The rows of ``methods`` in a results file written by ``python -m benchmarks``: its Workloads
    section gives the image counts, its Results table the seconds (by method label)."""
    counts = {m["name"]: int(m["count"]) for m in _WORKLOAD_LINE.finditer(text)}
    names = {METHODS[name].label: name for name in (*methods, BASELINE)}
    results = text[text.index("\n## Results") :]
    cells = {}
    for line in results.splitlines():
        parts = [part.strip() for part in line.strip().strip("|").split("|")]
        if len(parts) < 6 or parts[2] not in names:
            continue
        median = _number(parts[4])
        if median is None:
            continue
        low, high = (_number(v) for v in parts[5].split("–")) if "–" in parts[5] else (median, median)
        cells[(parts[0], parts[1], names[parts[2]])] = (median, low, high)
    out = {}
    for (workload, target, method), (median, low, high) in cells.items():
        loop = cells.get((workload, target, BASELINE))
        if method != BASELINE and loop is not None and workload in counts:
            out[(workload, target, method)] = BaselineRow(counts[workload], median, low, high, loop[0])
    return out


def dump(rows: dict[tuple[str, str, str], BaselineRow], comment: str = "") -> str:
    """The rows as CSV, with ``comment`` lines first (``# ...``)."""
    out = io.StringIO()
    for line in comment.splitlines():
        out.write(f"# {line}\n")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(FIELDS)
    for (workload, target, method), row in rows.items():
        writer.writerow((workload, target, method, row.images, row.median, row.low, row.high, row.loop_median))
    return out.getvalue()


def load(path: Path = DEFAULT) -> dict[tuple[str, str, str], BaselineRow]:
    """The baseline CSV (comment lines skipped); empty if the file does not exist."""
    if not path.exists():
        return {}
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return {
        (r["workload"], r["target"], r["method"]): BaselineRow(
            int(r["images"]), float(r["median"]), float(r["low"]), float(r["high"]), float(r["loop_median"])
        )
        for r in csv.DictReader(lines)
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.warm_baseline", description=__doc__.split("\n")[0])
    parser.add_argument("markdown", type=Path, help="a <name>.md written by python -m benchmarks")
    args = parser.parse_args(argv)
    text = args.markdown.read_text()
    date = re.search(r"^Date: (.*?)\s*$", text, re.MULTILINE)
    print(
        dump(
            from_markdown(text),
            f"warm rows of {args.markdown.name} (run of {date[1] if date else '?'}); "
            "seconds; loop_median: the loop of the same workload and target",
        ),
        end="",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
