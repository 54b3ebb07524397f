"""The study: every method on every workload, target and worker count, interleaved per repetition."""

from __future__ import annotations

import itertools
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.memory import PeakRSS
from benchmarks.methods import Job, Method, Timed
from benchmarks.targets import Target
from benchmarks.workloads import Spec, Workload, build


@dataclass(frozen=True)
class Trial:
    """One timed call: seconds and peak MB, or the error that stopped it.

    `workers` is the study's worker count; methods that are not parallel ignore it.
    `import_seconds`: the part of `seconds` spent importing, for the methods that time
    themselves in a fresh interpreter (None for the others); `other_cpu_seconds`: the CPU their
    threads already running before the timed part used during it (`python -m benchmarks.blas_spin`).
    """

    workload: str
    target: str
    method: str
    workers: int
    repetition: int
    seconds: float | None
    peak_mb: float | None
    error: str | None = None
    import_seconds: float | None = None
    other_cpu_seconds: float | None = None


@dataclass(frozen=True)
class Skip:
    """A method not run on a workload, and why."""

    workload: str
    target: str
    method: str
    workers: int
    reason: str


@dataclass(frozen=True)
class WorkloadInfo:
    """What was actually generated for a workload (for the report header)."""

    name: str
    summary: str
    count: int
    full_count: int
    megabytes: float
    ext: str
    generate_seconds: float


@dataclass
class Study:
    """Everything measured in one run."""

    trials: list[Trial]
    skips: list[Skip]
    workloads: list[WorkloadInfo]

    def to_json(self) -> dict:
        return {
            key: [asdict(item) for item in items]
            for key, items in (("workloads", self.workloads), ("trials", self.trials), ("skips", self.skips))
        }


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _count_files(folder: Path) -> int:
    with os.scandir(folder) as entries:
        return sum(1 for _ in entries)


def time_once(method: Method, job: Job, folder: Path) -> tuple[float, float, float | None, float | None]:
    """Prepare `method` (untimed), time its run into the empty `folder`, check every file exists.

    Returns (seconds, peak MB of the process tree during the timed call, import seconds or None,
    the CPU of threads that ran before the timed part, or None).
    A run that times itself (a fresh interpreter timed from inside) returns a Timed, whose
    seconds are used instead of this process's clock.
    Raises whatever the method raised, or RuntimeError if files are missing.
    """
    workload = job.workload
    pattern = str(folder / ("{index:06d}" + workload.ext))
    with method.prepare(job) as run:
        with PeakRSS() as memory:
            start = time.perf_counter()
            timed = run(pattern)
            seconds = time.perf_counter() - start
    written = _count_files(folder)
    if written != workload.count:
        raise RuntimeError(f"wrote {written} of {workload.count} files")
    if isinstance(timed, Timed):
        return timed.seconds, memory.peak_mb, timed.import_seconds, timed.other_cpu_seconds
    return seconds, memory.peak_mb, None, None


class _Folders:
    """Fresh, uniquely named empty folders under a target; removal happens outside any timing."""

    def __init__(self) -> None:
        self._ids = itertools.count()

    def make(self, target: Target) -> Path:
        folder = target.root / f"run-{next(self._ids):05d}"
        folder.mkdir()
        return folder

    @staticmethod
    def remove(target: Target, *folders: Path) -> None:
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
        if target.is_disk:
            os.sync()  # start the next trial without this one's writeback pending


def _measure(
    workload: Workload,
    target: Target,
    workers: int,
    methods: list[Method],
    repeat: int,
    rng: random.Random,
    folders: _Folders,
    study: Study,
) -> None:
    """All repetitions for one (workload, target, workers): methods in a fresh random order each time."""
    runnable = []
    for method in methods:
        reason = method.skip_reason(workload, target.name)
        if reason:
            study.skips.append(Skip(workload.name, target.name, method.name, workers, reason))
        else:
            runnable.append(method)
    for repetition in range(repeat):
        order = rng.sample(runnable, len(runnable))
        for method in order:
            folder, spare = folders.make(target), folders.make(target)
            try:
                seconds, peak, imports, other = time_once(method, Job(workload, workers, spare), folder)
                trial = Trial(
                    workload.name,
                    target.name,
                    method.name,
                    workers,
                    repetition,
                    seconds,
                    peak,
                    import_seconds=imports,
                    other_cpu_seconds=other,
                )
                _log(
                    f"  {workload.name}/{target.name} w={workers} rep {repetition + 1}/{repeat} "
                    f"{method.name:<20} {seconds:8.3f} s  {peak:7.0f} MB"
                )
            except Exception as exc:  # noqa: BLE001 - one failing method must not stop the study
                error = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
                trial = Trial(workload.name, target.name, method.name, workers, repetition, None, None, error)
                _log(
                    f"  {workload.name}/{target.name} w={workers} rep {repetition + 1}/{repeat} "
                    f"{method.name:<20} FAILED {error}"
                )
            finally:
                folders.remove(target, folder, spare)
            study.trials.append(trial)


def run_study(
    specs: list[Spec],
    targets: list[Target],
    methods: list[Method],
    worker_counts: list[int],
    repeat: int,
    quick: bool,
    seed: int,
    scratch: Path,
) -> Study:
    """Generate each workload once, then measure it on every target for every worker count,
    ``repeat`` times (in a full run at least the workload's ``min_repeat``). A workload whose spec
    names its targets runs on those only.

    Only one workload is in memory at a time; its scratch files are deleted before the next.
    """
    study = Study([], [], [])
    rng = random.Random(seed)
    folders = _Folders()
    for spec in specs:
        start = time.perf_counter()
        workload = build(spec, quick, seed, scratch / spec.name)
        generated = time.perf_counter() - start
        repeats = repeat if quick else max(repeat, spec.min_repeat)
        study.workloads.append(
            WorkloadInfo(
                spec.name, spec.summary, workload.count, spec.count, workload.nbytes / 1e6, spec.ext, generated
            )
        )
        _log(f"{spec.name}: {workload.count} images, {workload.nbytes / 1e6:.0f} MB (generated in {generated:.1f} s)")
        try:
            for workers in worker_counts:
                for target in targets:
                    if spec.targets is not None and target.name not in spec.targets:
                        _log(f"  {spec.name}: not run on {target.name} (runs on {', '.join(spec.targets)} only)")
                        continue
                    _measure(workload, target, workers, methods, repeats, rng, folders, study)
        finally:
            shutil.rmtree(workload.scratch, ignore_errors=True)
        del workload
    return study
