"""Turn raw trials into table rows: median, spread, speed-up over the loop, parallel efficiency, peak memory."""
from __future__ import annotations

import statistics
from dataclasses import dataclass

from benchmarks.methods import METHODS
from benchmarks.runner import Study

BASELINE = "loop"


@dataclass(frozen=True)
class Row:
    """One line of the results table; numbers are None where they do not apply."""

    workload: str
    target: str
    method: str
    label: str
    workers: int
    runs: int
    median: float | None
    low: float | None
    high: float | None
    speedup: float | None
    efficiency: float | None
    peak_mb: float | None
    note: str = ""


def _failure_note(errors: list[str], runs: int) -> str:
    if not errors:
        return ""
    return f"{len(errors)} of {runs + len(errors)} runs failed: {errors[0]}"


def summarize(study: Study) -> list[Row]:
    """Rows grouped by (workload, target, study workers), methods in registry order.

    speed-up = loop median / method median; efficiency = loop median / (workers x method median),
    where workers is 1 for methods that are not parallel.
    """
    groups: dict[tuple[str, str, int], dict[str, list]] = {}
    for trial in study.trials:
        group = groups.setdefault((trial.workload, trial.target, trial.workers), {})
        group.setdefault(trial.method, []).append(trial)
    skips = {(s.workload, s.target, s.workers, s.method): s.reason for s in study.skips}
    for s in study.skips:
        groups.setdefault((s.workload, s.target, s.workers), {})

    rows = []
    for (workload, target, workers), by_method in groups.items():
        loop_times = [t.seconds for t in by_method.get(BASELINE, []) if t.seconds is not None]
        loop_median = statistics.median(loop_times) if loop_times else None
        for name, method in METHODS.items():
            used = workers if method.parallel else 1
            reason = skips.get((workload, target, workers, name))
            if reason:
                rows.append(Row(workload, target, name, method.label, used, 0,
                                None, None, None, None, None, None, reason))
                continue
            trials = by_method.get(name)
            if trials is None:
                continue  # method not selected
            times = [t.seconds for t in trials if t.seconds is not None]
            note = _failure_note([t.error for t in trials if t.error], len(times))
            if not times:
                rows.append(Row(workload, target, name, method.label, used, 0,
                                None, None, None, None, None, None, note))
                continue
            median = statistics.median(times)
            speedup = loop_median / median if loop_median else None
            rows.append(Row(workload, target, name, method.label, used, len(times),
                            median, min(times), max(times), speedup,
                            speedup / used if speedup is not None else None,
                            max(t.peak_mb for t in trials if t.peak_mb is not None), note))
    return rows
