"""The benchmark's goal checks and compact table, on hand-made rows (no timing is run here)."""

from __future__ import annotations

import pytest

pytest.importorskip("matplotlib", reason="the benchmark extra (pip install -e '.[bench]') is not installed")

from benchmarks import goals  # noqa: E402
from benchmarks.summary import Row  # noqa: E402


def row(method: str, median: float, spread: float = 0.0, workload: str = "tiny1000", loop: float = 1.0,
        workers: int = 2) -> Row:
    used = 1 if method == "loop" else workers
    speedup = loop / median
    return Row(workload, "tmpfs", method, method, used, 5, median, median - spread, median + spread,
               speedup, speedup / used, 100.0)


def verdicts(rows, counts=None) -> dict[tuple[str, str], str]:
    counts = counts or {"tiny1000": 1000, "tiny100": 100}
    return {(c.goal, c.workload): c.verdict for c in goals.check_goals(rows, counts)}


def test_a_warm_writer_that_wins_meets_every_goal():
    rows = [row("loop", 1.0), row("threads-chunked", 0.7), row("processes-chunked", 0.9),
            row("shmsave-cold", 0.95), row("shmsave-warm", 0.55)]
    assert verdicts(rows) == {("fastest", "tiny1000"): "met", ("1.5x processes", "tiny1000"): "met",
                              ("85% efficiency", "tiny1000"): "met"}


def test_a_loss_is_level_only_when_the_spreads_overlap():
    close = [row("loop", 1.0), row("threads-chunked", 0.60, 0.05), row("shmsave-warm", 0.62, 0.05)]
    apart = [row("loop", 1.0), row("threads-chunked", 0.50, 0.01), row("shmsave-warm", 0.62, 0.01)]
    assert verdicts(close)[("fastest", "tiny1000")] == "level"
    assert verdicts(apart)[("fastest", "tiny1000")] == "not met"


def test_ratio_over_chunked_processes_and_efficiency_use_their_thresholds():
    rows = [row("loop", 1.0), row("processes-chunked", 0.75), row("shmsave-warm", 0.6)]
    checks = {c.goal: c for c in goals.check_goals(rows, {"tiny1000": 1000})}
    assert checks["1.5x processes"].verdict == "not met"  # 1.67 / 1.33 = 1.25
    assert "= 1.25" in checks["1.5x processes"].figures
    assert checks["85% efficiency"].verdict == "not met"  # 1.67 / 2 = 83 %
    assert "83%" in checks["85% efficiency"].figures


def test_efficiency_is_not_judged_below_a_thousand_images():
    rows = [row("loop", 1.0, workload="tiny100"), row("shmsave-warm", 0.9, workload="tiny100")]
    assert ("85% efficiency", "tiny100") not in verdicts(rows)


def test_one_shot_is_compared_with_the_fastest_method_but_not_write_only():
    rows = [row("loop", 1.0, workload="tiny100"), row("write-only", 0.2, workload="tiny100"),
            row("threads-chunked", 0.85, workload="tiny100"), row("shmsave-cold", 1.0, workload="tiny100")]
    check = next(c for c in goals.check_goals(rows, {"tiny100": 100}) if c.goal.startswith("one-shot"))
    assert check.verdict == "not met" and "threads-chunked" in check.figures and "+18%" in check.figures
    rows[2] = row("threads-chunked", 0.95, workload="tiny100")
    assert verdicts(rows)[("one-shot within 10 %", "tiny100")] == "met"


def test_compact_table_bolds_the_fastest_method_of_each_workload():
    rows = [row("loop", 2.0, loop=2.0), row("threads-chunked", 1.0, loop=2.0), row("shmsave-warm", 0.8, loop=2.0),
            row("shmsave-cli", 4.0, loop=2.0)]
    table = goals.compact_table(rows, "tmpfs")
    line = next(line for line in table.splitlines() if line.startswith("| tiny1000"))
    assert line == "| tiny1000 | 2.00 | 2.00× | **2.50×** | 0.50× |"
    assert goals.compact_table(rows, "disk").count("\n") == 2  # header only
