"""The methods under test: how each saves a workload, and what it prepares outside the timing.

A method's ``prepare(job)`` is a context manager.  What it does before
``yield`` and after it is untimed; it yields ``run(pattern)``, the call the
runner times, which writes image i to ``pattern.format(index=i)``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass
from pathlib import Path

from benchmarks import installed
from benchmarks.baselines import chunk_bounds, write_chunk, write_one
from benchmarks.workloads import Workload


@dataclass(frozen=True)
class Timed:
    """What a run that times itself returns (a fresh interpreter, timed from inside): the seconds the
    runner records instead of its own clock, how many of them were imports, and the CPU that the
    process's threads already running before the timed part (numpy's and OpenCV's OpenBLAS) used
    during it."""

    seconds: float
    import_seconds: float = 0.0
    other_cpu_seconds: float | None = None


#: A run writes image i to pattern.format(index=i); it returns None (the runner's clock times it)
#: or a Timed (the run timed itself: a child process that is timed from inside).
Run = Callable[[str], "Timed | None"]


@dataclass(frozen=True)
class Job:
    """What a method is asked to do: write `workload` with `workers` workers.

    `spare` is an empty folder on the same target as the timed run, for
    untimed warm-up saves; the runner creates and removes it.
    """

    workload: Workload
    workers: int
    spare: Path


#: Where the fresh-interpreter methods run: issue 12's goals are on tmpfs, and on the disk they
#: would add about a quarter of an hour to a full run (mostly the mixed workload) for rows bound by files.
FRESH_TARGETS = ("tmpfs",)

#: Above this many images the one-task-per-image process pool is not run (it takes minutes).
PER_IMAGE_PROCESS_LIMIT = 1000


@functools.cache
def shmsave_import() -> tuple[object | None, str | None]:
    """(the shmsave module, None) if it imports, else (None, why not)."""
    try:
        import shmsave
    except Exception as exc:  # noqa: BLE001 - any import failure means "skip shmsave methods"
        return None, f"{type(exc).__name__}: {exc}"
    return shmsave, None


def _shmsave():
    module, error = shmsave_import()
    if module is None:
        raise RuntimeError(f"shmsave is not importable ({error})")
    return module


def _shmsave_kwargs(workload: Workload) -> dict:
    return {} if workload.spec.quality is None else {"quality": workload.spec.quality}


def _check_report(report) -> None:
    """Raise if a shmsave Report says some images failed."""
    failed = getattr(report, "failed", 0)
    if failed:
        raise RuntimeError(f"shmsave reported failures: {failed!r}"[:300])


# --- the alternatives -----------------------------------------------------------------


@contextlib.contextmanager
def _loop(job: Job) -> Iterator[Run]:
    """for i, img in enumerate(images): cv2.imwrite(pattern.format(index=i), img, params)"""
    yield lambda pattern: write_chunk(0, job.workload.images, pattern, job.workload.params)


def _per_image(executor: type[Executor]):
    def prepare(job: Job) -> Iterator[Run]:
        """One executor task per image; the executor is created inside the timing."""
        images, params = job.workload.images, job.workload.params

        def run(pattern: str) -> None:
            with executor(job.workers) as ex:
                futures = [ex.submit(write_one, pattern.format(index=i), img, params) for i, img in enumerate(images)]
                for future in futures:
                    future.result()

        yield run

    return contextlib.contextmanager(prepare)


def _chunked(executor: type[Executor]):
    def prepare(job: Job) -> Iterator[Run]:
        """`workers` contiguous chunks, one task each; the executor is created inside the timing."""
        images, params = job.workload.images, job.workload.params

        def run(pattern: str) -> None:
            with executor(job.workers) as ex:
                futures = [
                    ex.submit(write_chunk, a, images[a:b], pattern, params)
                    for a, b in chunk_bounds(len(images), job.workers)
                ]
                for future in futures:
                    future.result()

        yield run

    return contextlib.contextmanager(prepare)


@contextlib.contextmanager
def _joblib(job: Job) -> Iterator[Run]:
    """joblib.Parallel(n_jobs=workers) (loky) over `workers` chunks.

    loky keeps its workers alive between calls; they are shut down after every
    run (untimed) so each timing includes starting them, as in a fresh script.
    Its memmapping folder is the spare folder instead of /dev/shm.
    """
    from joblib import Parallel, delayed
    from joblib.externals.loky import get_reusable_executor

    images, params = job.workload.images, job.workload.params

    def run(pattern: str) -> None:
        Parallel(n_jobs=job.workers, temp_folder=str(job.spare))(
            delayed(write_chunk)(a, images[a:b], pattern, params) for a, b in chunk_bounds(len(images), job.workers)
        )

    try:
        yield run
    finally:
        get_reusable_executor().shutdown(wait=True)


@contextlib.contextmanager
def _write_only(job: Job) -> Iterator[Run]:
    """The disk's limit: pre-encoded bytes written with open/write/close, no encoding."""
    blobs = job.workload.encoded()

    def run(pattern: str) -> None:
        for index, blob in enumerate(blobs):
            with open(pattern.format(index=index), "wb") as f:
                f.write(blob)

    yield run


# --- shmsave ---------------------------------------------------------------------------


def _save(writer, images, pattern: str, job: Job) -> None:
    """writer.save with the workload's quality; raise if any image failed."""
    _check_report(writer.save(images, pattern, **_shmsave_kwargs(job.workload)))


def _warm_up(writer, images, job: Job) -> None:
    """Put the writer in the state a long-lived writer is in (untimed): its worker processes
    running (``Writer.start()``) and the same batch saved once into the spare folder.

    The spare files are then removed and synced, so the timed call starts with the disk as
    idle as every other method's does, not during the writeback of the warm-up's files
    (10,000 tiny files on disk, warm Writer: median 6.1 s unsynced, 2.3 s synced, two runs)."""
    writer.start()
    _save(writer, images, str(job.spare / ("{index:06d}" + job.workload.ext)), job)
    for entry in os.scandir(job.spare):
        os.unlink(entry.path)
    os.sync()


@contextlib.contextmanager
def _shmsave_cold(job: Job) -> Iterator[Run]:
    """What a one-shot shmsave.save costs the first time: a fresh Writer (pool start and
    shutdown included) inside the timing."""
    shmsave = _shmsave()

    def run(pattern: str) -> None:
        with shmsave.Writer(workers=job.workers) as writer:
            _save(writer, job.workload.images, pattern, job)

    yield run


@contextlib.contextmanager
def _shmsave_warm(job: Job) -> Iterator[Run]:
    """A Writer created and warmed outside the timing; only writer.save is timed."""
    with _shmsave().Writer(workers=job.workers) as writer:
        _warm_up(writer, job.workload.images, job)
        yield lambda pattern: _save(writer, job.workload.images, pattern, job)


@contextlib.contextmanager
def _shmsave_zero_copy(job: Job) -> Iterator[Run]:
    """Images copied into Writer.empty() and the Writer warmed (untimed); writer.save(buffer) is timed."""
    images = job.workload.images
    with _shmsave().Writer(workers=job.workers) as writer:
        buffer = writer.empty(images.shape, images.dtype)
        buffer[...] = images
        _warm_up(writer, buffer, job)
        # Hold the buffer only through `held`, so it is dropped before the Writer
        # frees its shared memory, whatever the caller still holds.
        held = [buffer]
        del buffer
        try:
            yield lambda pattern: _save(writer, held[0], pattern, job)
        finally:
            held.clear()


def _cli_command() -> list[str]:
    """The installed `shmsave` console script next to this interpreter, else `python -m shmsave`."""
    script = Path(sys.executable).with_name("shmsave")
    return [str(script)] if script.exists() else [sys.executable, "-m", "shmsave"]


@contextlib.contextmanager
def _shmsave_cli(job: Job) -> Iterator[Run]:
    """The `shmsave` command on a .npy written beforehand; the whole subprocess is timed."""
    _shmsave()
    workload = job.workload
    command = [*_cli_command(), str(workload.npy_path()), "--workers", str(job.workers), "--quiet"]
    if workload.spec.quality is not None:
        command += ["--quality", str(workload.spec.quality)]

    def run(pattern: str) -> None:
        done = subprocess.run(
            [*command, "-o", pattern],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=installed.environment(),
        )
        if done.returncode:
            last_line = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
            raise RuntimeError(f"shmsave command exited {done.returncode}: {last_line}")

    yield run


# --- one-shot in a fresh interpreter (issue 12) ------------------------------------------

FRESH_CHILD = Path(__file__).resolve().with_name("fresh_child.py")


def _fresh(kind: str, needs_shmsave: bool = False):
    def prepare(job: Job) -> Iterator[Run]:
        """A fresh ``python`` runs benchmarks/fresh_child.py for this one call and times it from inside:
        untimed ``import numpy, cv2`` and loading the images (written once to a file, untimed), timed
        the method's own imports and the call. Returns the child's figures."""
        if needs_shmsave:
            _shmsave()
        workload = job.workload
        spec = {
            "method": kind,
            "input": str(workload.input_path()),
            "workers": job.workers,
            "params": workload.params,
            "quality": workload.spec.quality,
            "spare": str(job.spare),
        }

        def run(pattern: str) -> Timed:
            done = subprocess.run(
                [sys.executable, str(FRESH_CHILD), json.dumps({**spec, "pattern": pattern})],
                capture_output=True,
                text=True,
                env=installed.environment(),
            )
            if done.returncode:
                last_line = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
                raise RuntimeError(f"fresh {kind} exited {done.returncode}: {last_line}")
            figures = json.loads(done.stdout.strip().splitlines()[-1])
            return Timed(figures["seconds"], figures["import_seconds"], figures.get("other_cpu_seconds"))

        yield run

    return contextlib.contextmanager(prepare)


# --- registry --------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    """A named way of saving a workload, and when it does not apply."""

    name: str
    label: str
    parallel: bool
    prepare: Callable[[Job], ContextManager[Run]]
    uses_shmsave: bool = False
    arrays_only: bool = False
    max_images: int | None = None
    targets: tuple[str, ...] | None = None  # the only targets it runs on (None: every target)

    def skip_reason(self, workload: Workload, target: str | None = None) -> str | None:
        """Why this method is not run on this workload (and target), or None if it is."""
        if target is not None and self.targets is not None and target not in self.targets:
            return f"runs on {', '.join(self.targets)} only"
        if self.uses_shmsave and shmsave_import()[0] is None:
            return "shmsave not importable"
        if self.arrays_only and workload.is_list:
            return "needs one ndarray, workload is a list"
        if self.max_images is not None and workload.count > self.max_images:
            return f"skipped above {self.max_images} images (one task per image is too slow)"
        return None


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("loop", "loop (cv2.imwrite)", False, _loop),
        Method("write-only", "write-only (limit)", False, _write_only),
        Method("threads-per-image", "ThreadPool per image", True, _per_image(ThreadPoolExecutor)),
        Method(
            "processes-per-image",
            "ProcessPool per image",
            True,
            _per_image(ProcessPoolExecutor),
            max_images=PER_IMAGE_PROCESS_LIMIT,
        ),
        Method("threads-chunked", "ThreadPool chunked", True, _chunked(ThreadPoolExecutor)),
        Method("processes-chunked", "ProcessPool chunked", True, _chunked(ProcessPoolExecutor)),
        Method("joblib", "joblib chunked (loky)", True, _joblib),
        Method("shmsave-cold", "shmsave.save (cold pool)", True, _shmsave_cold, uses_shmsave=True),
        Method("shmsave-warm", "shmsave Writer (warm)", True, _shmsave_warm, uses_shmsave=True),
        Method(
            "shmsave-zero-copy",
            "shmsave Writer.empty (zero copy)",
            True,
            _shmsave_zero_copy,
            uses_shmsave=True,
            arrays_only=True,
        ),
        Method("shmsave-cli", "shmsave command (.npy)", True, _shmsave_cli, uses_shmsave=True, arrays_only=True),
        # Issue 12: one-shot calls as a script makes them, each in its own fresh interpreter, timed inside it.
        Method("loop-fresh", "loop, fresh interpreter", False, _fresh("loop"), targets=FRESH_TARGETS),
        Method(
            "threads-chunked-fresh",
            "ThreadPool chunked, fresh interpreter",
            True,
            _fresh("threads-chunked"),
            targets=FRESH_TARGETS,
        ),
        Method(
            "processes-chunked-fresh",
            "ProcessPool chunked, fresh interpreter",
            True,
            _fresh("processes-chunked"),
            targets=FRESH_TARGETS,
        ),
        Method("joblib-fresh", "joblib chunked, fresh interpreter", True, _fresh("joblib"), targets=FRESH_TARGETS),
        Method(
            "shmsave-oneshot-fresh",
            "shmsave.save one-shot, fresh interpreter",
            True,
            _fresh("shmsave", needs_shmsave=True),
            uses_shmsave=True,
            targets=FRESH_TARGETS,
        ),
    )
}
