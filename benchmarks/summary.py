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
    quartiles: tuple[float, float] | None = None  # first and third quartile of the seconds (2+ runs)
    import_median: float | None = None  # median seconds of imports inside the timing (fresh interpreters)


def _failure_note(errors: list[str], runs: int) -> str:
    if not errors:
        return ""
    return f"{len(errors)} of {runs + len(errors)} runs failed: {errors[0]}"


def _import_note(trials: list) -> tuple[float | None, str]:
    """The median imports of fresh-interpreter trials, and a note of them and of the CPU the threads
    running before the timed part used (numpy's and OpenCV's OpenBLAS, spinning after import)."""
    timed = [t for t in trials if t.seconds is not None]
    imports = [t.import_seconds for t in timed if t.import_seconds is not None]
    others = [t.other_cpu_seconds for t in timed if t.other_cpu_seconds is not None]
    median = statistics.median(imports) if imports else None
    notes = [f"of which imports {median * 1000:.1f} ms"] if median else []
    if others:
        notes.append(f"other threads' CPU {statistics.median(others) * 1000:.1f} ms")
    return median, "; ".join(notes)


def summarize(study: Study, workers: int, methods: dict | None = None, baseline: str = BASELINE) -> list[Row]:
    """Rows for the study's trials with this worker count, grouped by (workload, target),
    methods in registry order (``methods``, default the benchmark's METHODS).

    speed-up = baseline median / method median (the loop's, unless ``baseline`` names another
    method); efficiency = that / workers, for the parallel methods and the baseline (write-only
    has no efficiency: it does less work). Methods timed in a fresh interpreter say in their
    note how much of their median went to imports.
    """
    methods = METHODS if methods is None else methods
    groups: dict[tuple[str, str], dict[str, list]] = {}
    skips = {}
    for trial in study.trials:
        if trial.workers == workers:
            group = groups.setdefault((trial.workload, trial.target), {})
            group.setdefault(trial.method, []).append(trial)
    for skip in study.skips:
        if skip.workers == workers:
            groups.setdefault((skip.workload, skip.target), {})
            skips[(skip.workload, skip.target, skip.method)] = skip.reason

    rows = []
    for (workload, target), by_method in groups.items():
        loop_times = [t.seconds for t in by_method.get(baseline, []) if t.seconds is not None]
        loop_median = statistics.median(loop_times) if loop_times else None
        for name, method in methods.items():
            used = workers if method.parallel else 1
            reason = skips.get((workload, target, name))
            if reason:
                rows.append(
                    Row(workload, target, name, method.label, used, 0, None, None, None, None, None, None, reason)
                )
                continue
            trials = by_method.get(name)
            if trials is None:
                continue  # method not selected
            times = [t.seconds for t in trials if t.seconds is not None]
            note = _failure_note([t.error for t in trials if t.error], len(times))
            if not times:
                rows.append(
                    Row(workload, target, name, method.label, used, 0, None, None, None, None, None, None, note)
                )
                continue
            median = statistics.median(times)
            quartiles = statistics.quantiles(times, n=4) if len(times) > 1 else None
            speedup = loop_median / median if loop_median else None
            has_efficiency = speedup is not None and (method.parallel or name == baseline)
            import_median, import_note = _import_note(trials)
            note = "; ".join(part for part in (import_note, note) if part)
            rows.append(
                Row(
                    workload,
                    target,
                    name,
                    method.label,
                    used,
                    len(times),
                    median,
                    min(times),
                    max(times),
                    speedup,
                    speedup / used if has_efficiency else None,
                    max(t.peak_mb for t in trials if t.peak_mb is not None),
                    note,
                    None if quartiles is None else (quartiles[0], quartiles[2]),
                    import_median,
                )
            )
    return rows
