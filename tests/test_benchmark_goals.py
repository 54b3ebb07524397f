"""The benchmark's goal checks and compact table, on hand-made rows (no timing is run here)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("matplotlib", reason="the benchmark extra (pip install -e '.[bench]') is not installed")

from benchmarks import goals  # noqa: E402
from benchmarks.summary import Row  # noqa: E402


def row(method: str, median: float, spread: float = 0.0, workload: str = "tiny1000", loop: float = 1.0,
        workers: int = 2, quartile: float | None = None) -> Row:
    """A row whose min-max spread is median +- spread, and its quartiles median +- quartile (default spread / 2)."""
    used = 1 if method in ("loop", "write-only") else workers
    speedup = loop / median
    quartile = spread / 2 if quartile is None else quartile
    return Row(workload, "tmpfs", method, method, used, 5, median, median - spread, median + spread,
               speedup, speedup / used, 100.0, quartiles=(median - quartile, median + quartile))


def verdicts(rows, counts=None) -> dict[tuple[str, str], str]:
    counts = counts or {"tiny1000": 1000, "tiny100": 100}
    return {(c.goal, c.workload): c.verdict for c in goals.check_goals(rows, counts)}


def test_a_warm_writer_that_wins_meets_every_goal():
    rows = [row("loop", 1.0), row("threads-chunked", 0.7), row("processes-chunked", 0.9),
            row("shmsave-cold", 0.95), row("shmsave-warm", 0.55)]
    assert verdicts(rows) == {("fastest", "tiny1000"): "met", ("1.5x processes", "tiny1000"): "met",
                              ("85% efficiency", "tiny1000"): "met"}


def test_a_loss_is_level_only_when_the_interquartile_ranges_overlap():
    close = [row("loop", 1.0), row("threads-chunked", 0.60, 0.05), row("shmsave-warm", 0.62, 0.05)]
    apart = [row("loop", 1.0), row("threads-chunked", 0.50, 0.01), row("shmsave-warm", 0.62, 0.01)]
    outliers_only = [row("loop", 1.0), row("threads-chunked", 0.50, 0.2, quartile=0.01),
                     row("shmsave-warm", 0.62, 0.2, quartile=0.01)]
    assert verdicts(close)[("fastest", "tiny1000")] == "level"
    assert verdicts(apart)[("fastest", "tiny1000")] == "not met"
    assert verdicts(outliers_only)[("fastest", "tiny1000")] == "not met"  # min-max overlap is not enough


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


def test_a_goal_the_files_alone_forbid_is_bound_by_files():
    rows = [row("loop", 1.0), row("write-only", 0.95), row("processes-chunked", 0.98), row("shmsave-warm", 0.93)]
    checks = {c.goal: c for c in goals.check_goals(rows, {"tiny1000": 1000})}
    assert checks["85% efficiency"].verdict == "bound by files"  # needs 1.7x, the files alone allow 1.05x
    assert checks["1.5x processes"].verdict == "bound by files"
    assert "needs 1.70×, write-only limit 1.05×" in checks["85% efficiency"].figures


def test_a_goal_beyond_every_worker_busy_is_out_of_reach():
    rows = [row("loop", 1.0), row("write-only", 0.01), row("processes-chunked", 0.7), row("shmsave-warm", 0.51)]
    checks = {c.goal: c for c in goals.check_goals(rows, {"tiny1000": 1000})}
    assert checks["1.5x processes"].verdict == "out of reach"  # 1.5 x 1.43 = 2.14x > 2 workers
    assert "needs 2.14×, more than 2 workers all busy" in checks["1.5x processes"].figures
    assert checks["85% efficiency"].verdict == "met"


def test_render_rewrites_the_sections_from_the_raw_timings_and_keeps_the_header(tmp_path):
    from benchmarks import render
    from benchmarks.runner import Study, Trial, WorkloadInfo

    trials = [Trial("tiny1000", "tmpfs", method, 2, rep, seconds, 100.0)
              for rep in range(3) for method, seconds in (("loop", 1.0 + rep / 100), ("shmsave-warm", 0.55))]
    study = Study(trials, [], [WorkloadInfo("tiny1000", "tiny", 1000, 1000, 2.5, ".jpg", 0.1)])
    (tmp_path / "full.json").write_text(json.dumps({"workers": 2, **study.to_json(), "rows": []}))
    (tmp_path / "full.md").write_text("# header kept\n\n## Results\n\nold table\n")
    assert render.main([str(tmp_path / "full.json")]) == 0
    markdown = (tmp_path / "full.md").read_text()
    assert markdown.startswith("# header kept\n")
    assert "old table" not in markdown
    assert "| 85% efficiency | tiny1000 | tmpfs | warm 92% (1.84× on 2 workers) | met |" in markdown
    assert (tmp_path / "full.png").stat().st_size > 0
    assert render.study_of(json.loads((tmp_path / "full.json").read_text())).trials == trials
