"""Issue 5's speed goals, checked against one run's rows, and the compact speed-up table.

Both are printed with every run and written into its Markdown file, so the figures the
README quotes come straight from the benchmark's output, not from arithmetic done by hand.

The goals (shmsave's warm Writer unless said otherwise), per workload and target:

- fastest: at least as fast as the fastest alternative (the loop, the executors, joblib);
- 1.5x processes: at least 1.5x the speed-up of the question's chunked ProcessPoolExecutor;
- efficiency: at least 85 % parallel efficiency on workloads of 1,000 images or more;
- one-shot: on the smallest workload (tiny100), no method (shmsave's own warm Writer included)
  more than 10 % faster than a one-shot save().

Verdicts: "met"; "level" when a median loses but the two methods' interquartile ranges
overlap (this run cannot tell them apart); "bound by files" when writing the already
encoded files from one thread (the write-only limit) is already slower than the goal
allows; "out of reach" when the goal asks for more than the worker count times the loop
(nothing can run faster than every worker busy); else "not met".
"""
from __future__ import annotations

from dataclasses import dataclass

from benchmarks.methods import METHODS
from benchmarks.report import markdown_table, seconds, times
from benchmarks.summary import BASELINE, Row

WARM = "shmsave-warm"
ONE_SHOT = "shmsave-cold"
CHUNKED_PROCESSES = "processes-chunked"
ALTERNATIVES = ("loop", "threads-per-image", "processes-per-image", "threads-chunked", CHUNKED_PROCESSES, "joblib")
OVER_CHUNKED_PROCESSES = 1.5
EFFICIENCY = 0.85
EFFICIENCY_FROM_IMAGES = 1000
ONE_SHOT_WORKLOAD = "tiny100"
ONE_SHOT_SLACK = 1.10

# Columns of the compact table: what a user would try, then shmsave.
COMPACT_METHODS = ("threads-chunked", CHUNKED_PROCESSES, "joblib", ONE_SHOT, WARM, "shmsave-zero-copy", "shmsave-cli")


@dataclass(frozen=True)
class Check:
    """One goal on one workload and target: the figures compared and the verdict."""

    goal: str
    workload: str
    target: str
    figures: str
    verdict: str  # "met", "level", "bound by files", "out of reach" or "not met" (see the module docstring)


def _timed(rows: list[Row]) -> dict[tuple[str, str], dict[str, Row]]:
    """Rows with a median, grouped by (workload, target) and keyed by method."""
    groups: dict[tuple[str, str], dict[str, Row]] = {}
    for row in rows:
        if row.median is not None:
            groups.setdefault((row.workload, row.target), {})[row.method] = row
    return groups


def _overlap(a: Row, b: Row) -> bool:
    """Whether the interquartile ranges (else the min-max spreads) of two rows overlap."""
    (a_low, a_high), (b_low, b_high) = (row.quartiles or (row.low, row.high) for row in (a, b))
    return a_low <= b_high and b_low <= a_high


def _verdict(met: bool, a: Row, b: Row) -> str:
    return "met" if met else "level" if _overlap(a, b) else "not met"


def _speed_verdict(speedup: float, needed: float, workers: int, write_only: Row | None) -> tuple[str, str]:
    """The verdict on reaching ``needed`` times the loop's speed with ``workers`` workers, and
    what explains it (empty when met or plainly missed)."""
    if speedup >= needed:
        return "met", ""
    if write_only is not None and write_only.speedup < needed:
        return "bound by files", f"; needs {times(needed)}, write-only limit {times(write_only.speedup)}"
    if needed > workers:
        return "out of reach", f"; needs {times(needed)}, more than {workers} workers all busy"
    return "not met", ""


def _named(row: Row) -> str:
    return f"{row.method} {times(row.speedup)}"


def check_goals(rows: list[Row], counts: dict[str, int]) -> list[Check]:
    """Every goal that this run's rows can decide; ``counts`` gives each workload's image count."""
    checks = []
    for (workload, target), by_method in _timed(rows).items():
        warm = by_method.get(WARM)
        write_only = by_method.get("write-only")
        if BASELINE not in by_method:
            continue
        alternatives = [by_method[name] for name in ALTERNATIVES if name in by_method]
        if warm is not None and alternatives:
            best = min(alternatives, key=lambda row: row.median)
            checks.append(Check("fastest", workload, target, f"warm {times(warm.speedup)}, best alternative "
                                f"{_named(best)}", _verdict(warm.median <= best.median, warm, best)))
        processes = by_method.get(CHUNKED_PROCESSES)
        if warm is not None and processes is not None:
            verdict, why = _speed_verdict(warm.speedup, OVER_CHUNKED_PROCESSES * processes.speedup, warm.workers,
                                          write_only)
            checks.append(Check(f"{OVER_CHUNKED_PROCESSES}x processes", workload, target,
                                f"warm {times(warm.speedup)} / {_named(processes)} = "
                                f"{warm.speedup / processes.speedup:.2f}{why}", verdict))
        if warm is not None and counts.get(workload, 0) >= EFFICIENCY_FROM_IMAGES:
            verdict, why = _speed_verdict(warm.speedup, EFFICIENCY * warm.workers, warm.workers, write_only)
            checks.append(Check(f"{EFFICIENCY:.0%} efficiency", workload, target,
                                f"warm {warm.efficiency:.0%} ({times(warm.speedup)} on {warm.workers} workers{why})",
                                verdict))
        one_shot = by_method.get(ONE_SHOT)
        if workload == ONE_SHOT_WORKLOAD and one_shot is not None:
            best = min((row for row in by_method.values() if row is not write_only), key=lambda row: row.median)
            ratio = one_shot.median / best.median
            checks.append(Check("one-shot within 10 %", workload, target,
                                f"one-shot {times(one_shot.speedup)}, fastest {_named(best)}: "
                                f"{ratio - 1:+.0%}", _verdict(ratio <= ONE_SHOT_SLACK, one_shot, best)))
    return checks


def goals_table(checks: list[Check]) -> str:
    """The checks as a Markdown table, one line per goal, workload and target."""
    return markdown_table(("goal", "workload", "target", "figures", "verdict"),
                          [[c.goal, c.workload, c.target, c.figures, f"**{c.verdict}**" if c.verdict != "met"
                            else c.verdict] for c in checks])


def compact_table(rows: list[Row], target: str) -> str:
    """One line per workload on ``target``: the loop's median and each method's speed-up over it,
    the fastest in bold."""
    methods = [name for name in COMPACT_METHODS if any(r.method == name for r in rows)]
    lines = []
    for (workload, on), by_method in _timed(rows).items():
        loop = by_method.get(BASELINE)
        if on != target or loop is None:
            continue
        fastest = min((by_method[m] for m in (*methods, BASELINE) if m in by_method), key=lambda r: r.median)
        cells = [workload, seconds(loop.median)]
        for name in methods:
            row = by_method.get(name)
            text = "—" if row is None else times(row.speedup)
            cells.append(f"**{text}**" if row is fastest else text)
        lines.append(cells)
    return markdown_table(("workload", "loop s", *(METHODS[m].label for m in methods)), lines)
