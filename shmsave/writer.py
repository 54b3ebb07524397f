"""Writer: the public verbs, the lifecycle of its workers and memory, and the three engines.

    save / submit ──▶ request.py (check) ──▶ _plan.py (engine) ──▶ inline | thread | process
                                                                              │
    Report ◀── report.Tally ◀── one Outcome per task ◀──────────────────────────┘

The process engine takes its tasks from the ``Stager`` (``_staging.py``) and
dispatches them over the ``Pool`` (``pool.py``); the in-process engines run
``_files.write_images`` on the caller's arrays where they are. Streams
(``stream.py``) copy into rings (``_ring.py``) and are dispatched by the
Writer's hub thread (``_hub.py``), which owns the pool while a stream is open.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

import numpy as np

from ._files import remove_partial_files, write_images
from ._pages import page_dropper
from ._plan import ENGINES, THREADS_FROM_IMAGE_BYTES, Choice, Chunks, SharedChunks, choose_engine, usable_cpus
from ._processes import Processes
from ._protocol import Task
from .errors import InvalidRequest, WriterClosed
from .report import Progress, Report, Tally
from .request import Request, make_request, make_stream_request, prepare_folder

if TYPE_CHECKING:
    import concurrent.futures
    from collections.abc import Callable, Mapping, Sequence

    import numpy.typing as npt

    from ._protocol import Outcome, Result
    from .streaming import Stream


class Writer:
    """Saves image batches with a pool of long-lived worker processes.

    ``workers`` defaults to the CPUs this process may use. ``engine`` is
    ``"process"``, ``"thread"``, ``"inline"`` (this thread only), ``"hybrid"``
    (threads write at once while the processes start; each process takes over
    from a thread as it is ready) or ``"auto"``: inline or threads for batches
    too small to pay for processes, hybrid for big batches of small images
    while the processes have not started, processes once they run.

    Use it as a context manager, or call ``close()``; a forgotten Writer is
    closed when it is garbage collected or at exit. Calls from several threads
    are safe; they run one after another. In a forked child, a Writer starts
    workers of its own on first use; the parent's stay the parent's.
    """

    def __init__(self, workers: int | None = None, *, engine: str = "auto") -> None:
        if workers is not None and (
            not isinstance(workers, (int, np.integer)) or isinstance(workers, bool) or workers < 1
        ):
            raise InvalidRequest(f"workers must be a positive integer or None (all usable CPUs), got {workers!r}")
        if engine not in ENGINES:
            raise InvalidRequest(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")
        self.workers = int(workers) if workers is not None else usable_cpus()
        self.engine = engine
        self._processes = Processes(self.workers)
        self._lock = threading.Lock()
        self._threads: concurrent.futures.ThreadPoolExecutor | None = None
        self._submitter: concurrent.futures.ThreadPoolExecutor | None = None
        self._closed = False
        self._small_calls = 0  # calls too small to start the workers for
        self._finalizer = weakref.finalize(self, self._processes.close)
        _writers.add(self)

    # -- public -----------------------------------------------------------

    def save(
        self,
        images: np.ndarray | Sequence[np.ndarray],
        template: str | os.PathLike[str],
        *,
        quality: int | None = None,
        compression: int | None = None,
        params: Mapping[int | str, int] | Sequence[int | str] | None = None,
        rgb: bool = False,
        start: int = 0,
        overwrite: bool = True,
        errors: str = "raise",
        progress: Progress = False,
        fields: Mapping[str, Any] | None = None,
    ) -> Report:
        """Write each image of ``images`` to ``template.format(index=start + i)``; see ``shmsave.save``.

        ``progress``: True for a tqdm bar, or a callable ``progress(n)`` told
        each time ``n`` more images are finished (written, skipped or failed).
        ``fields``: values of further ``{name}`` fields of the template.
        """
        request = self._check(
            images,
            template,
            quality=quality,
            compression=compression,
            params=params,
            rgb=rgb,
            start=start,
            overwrite=overwrite,
            errors=errors,
            fields=fields,
        )
        return self._run(request, progress)

    def submit(
        self,
        images: np.ndarray | Sequence[np.ndarray],
        template: str | os.PathLike[str],
        *,
        quality: int | None = None,
        compression: int | None = None,
        params: Mapping[int | str, int] | Sequence[int | str] | None = None,
        rgb: bool = False,
        start: int = 0,
        overwrite: bool = True,
        errors: str = "raise",
        progress: Progress = False,
        fields: Mapping[str, Any] | None = None,
    ) -> concurrent.futures.Future[Report]:
        """Like ``save`` but return at once with a Future of the Report.

        The request is checked now (bad input raises here, not in the Future).
        Do not modify ``images`` until the Future is done.
        """
        request = self._check(
            images,
            template,
            quality=quality,
            compression=compression,
            params=params,
            rgb=rgb,
            start=start,
            overwrite=overwrite,
            errors=errors,
            fields=fields,
        )
        with self._lock:
            if self._submitter is None:
                from concurrent.futures import ThreadPoolExecutor

                self._submitter = ThreadPoolExecutor(1, thread_name_prefix="shmsave-submit")
        return self._submitter.submit(self._run, request, progress)

    def stream(
        self,
        template: str | os.PathLike[str],
        *,
        quality: int | None = None,
        compression: int | None = None,
        params: Mapping[int | str, int] | Sequence[int | str] | None = None,
        rgb: bool = False,
        start: int = 0,
        overwrite: bool = True,
        errors: str = "raise",
        progress: Progress = False,
        fields: Mapping[str, Any] | None = None,
        total: int | None = None,
        buffer_bytes: int | None = None,
    ) -> Stream:
        """A ``Stream``: ``write`` images one at a time as a loop makes them; see ``shmsave.stream``.

        The options are those of ``save``; ``start`` is the first index, ``total``
        the number of images to come if known (the progress bar's total; more
        are refused). ``buffer_bytes``: the stream's shared-memory ring (default:
        32 MB per worker, 64-512 MB, at most a quarter of the free /dev/shm);
        ``write`` waits while it is full. Several streams may be open at once;
        while any is, ``save`` on this Writer runs on threads.
        """
        request = make_stream_request(
            template,
            total=total,
            quality=quality,
            compression=compression,
            params=params,
            rgb=rgb,
            start=start,
            overwrite=overwrite,
            errors=errors,
            fields=fields,
        )
        from ._ring import ring_bytes
        from .streaming import Stream

        nbytes = ring_bytes(buffer_bytes, self.workers)

        with self._lock:
            if self._closed:
                raise WriterClosed()
            prepare_folder(request)
            rings, hub = self._processes.rings(), self._processes.hub()
            ring = rings.lend_ring(nbytes)
            threads_from = None if self.engine == "process" else THREADS_FROM_IMAGE_BYTES
            stream = Stream(request, ring, rings, hub, progress, self.workers, threads_from)
            hub.open(stream, self._thread_pool())
        return stream

    def start(self) -> Writer:
        """Start the worker processes now and wait until they are ready (~0.2 s).

        Optional: they start by themselves when a call needs them. Call this
        before a stream of small batches, so that none of them waits for it.
        """
        with self._lock:
            if self._closed:
                raise WriterClosed()
            if not self._processes.streaming():  # while it is, the hub owns the workers, and they run
                self._processes.pool().wait_ready()
        return self

    def empty(self, shape: int | Sequence[int], dtype: npt.DTypeLike = "uint8") -> np.ndarray:
        """A new zero-filled array in shared memory; saving it copies nothing.

        Its memory is freed when the array (and every view of it) is gone, or
        when the Writer closes.
        """
        if self._closed:
            raise WriterClosed()
        return self._processes.stager().empty(shape, dtype)

    def close(self) -> None:
        """Finish submitted saves and open streams (their errors stay in their reports), stop the
        workers and free the shared memory; safe to call twice."""
        self._processes.close_streams()
        if self._submitter is not None:
            self._submitter.shutdown(wait=True)  # outside the lock: each pending save needs it
        with self._lock:
            self._closed = True
            if self._threads is not None:
                self._threads.shutdown(wait=True)
        self._finalizer()

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pids(self) -> list[int]:
        """Process ids of the running workers (for monitoring and tests)."""
        return self._processes.pids

    # -- running ----------------------------------------------------------

    def _check(self, images: Any, template: Any, **options: Any) -> Request:
        if self._closed:
            raise WriterClosed()
        return make_request(images, template, **options)

    def _run(self, request: Request, progress: Progress) -> Report:
        with self._lock:
            if self._closed:
                raise WriterClosed()
            began = time.perf_counter()
            if request.count == 0:
                return Report(0, 0, 0.0, engine="inline", workers=0)
            prepare_folder(request)
            streaming = self._processes.streaming()  # the hub owns the workers until its streams close: threads
            choice = choose_engine(
                self.engine,
                self.workers,
                request.count,
                request.nbytes,
                self._processes.source_kind(request),
                pool_ready=not streaming and self._processes.ready(),
            )
            if streaming and choice.engine in ("process", "hybrid"):
                choice = Choice("thread", self.workers)
            if choice.small and not streaming:
                self._small_calls += 1
                if self._small_calls == 2:  # a Writer in use again: start the workers for the calls to come
                    self._processes.pool().start()
            tally = Tally(request, progress)
            try:
                if choice.engine == "process":
                    chunks = Chunks(request.count, request.nbytes, self.workers)
                    self._run_processes(request, chunks, tally)
                elif choice.engine == "hybrid":
                    self._run_hybrid(request, tally, choice.workers)
                elif choice.engine == "thread":
                    self._run_threads(request, tally, choice.workers)
                else:
                    self._run_inline(request, tally)
            finally:
                tally.close()
            report = tally.report(time.perf_counter() - began, choice.engine, choice.workers)
        tally.raise_first_error(report)
        return report

    def _run_inline(self, request: Request, tally: Tally) -> None:
        """Write in this thread, a task at a time, so that progress is told as it goes."""
        write = _in_process(request)
        for lo, hi in Chunks(request.count, request.nbytes, 1).split(0, request.count):
            if tally.add(write(lo, hi), request.start + hi) is False:
                break

    def _thread_pool(self) -> concurrent.futures.ThreadPoolExecutor:
        """The Writer's ``workers`` threads, shared by ``save`` and streams (call with the lock held)."""
        if self._threads is None:
            from concurrent.futures import ThreadPoolExecutor  # here: a call that runs inline never needs it

            self._threads = ThreadPoolExecutor(self.workers, thread_name_prefix="shmsave")
        return self._threads

    def _run_threads(self, request: Request, tally: Tally, workers: int) -> None:
        import concurrent.futures

        threads = self._thread_pool()
        write = _in_process(request)
        ends = {
            threads.submit(write, lo, hi): request.start + hi
            for lo, hi in Chunks(request.count, request.nbytes, workers).split(0, request.count)
        }
        counted = set()
        try:
            for future in concurrent.futures.as_completed(ends):
                counted.add(future)
                if tally.add(future.result(), ends[future]) is False:
                    break
        finally:
            for future in ends:
                future.cancel()
            concurrent.futures.wait(ends)
        for future, end in ends.items():  # tasks already running when we stopped: report what they wrote
            if future not in counted and not future.cancelled() and future.exception() is None:
                tally.add(future.result(), end)

    def _run_processes(
        self, request: Request, chunks: Chunks | SharedChunks, tally: Tally | _SharedTally, **dispatch: Any
    ) -> None:
        """Send the tasks of ``chunks`` to the worker processes (``dispatch``: options of ``Pool.run``)."""
        stager = self._processes.stager()

        def on_result(task: Task, result: Result) -> bool:
            stager.task_done(task)
            return tally.add(result.outcome, task.end)

        def on_death(task: Task, exitcode: int | None, pid: int) -> bool:
            stager.task_done(task)
            remove_partial_files(request, task, pid)
            return tally.died(task, exitcode)

        def on_abandon(task: Task, pid: int) -> None:
            remove_partial_files(request, task, pid)

        tasks = stager.tasks(request, chunks)
        try:
            self._processes.pool().run(tasks, on_result, on_death, on_abandon, **dispatch)
        finally:
            tasks.close()

    def _run_hybrid(self, request: Request, tally: Tally, workers: int) -> None:
        """Threads write from the first moment while the worker processes start; a thread
        steps back as each process becomes ready, so no more than ``workers`` encode at once.

        Threads and processes take their tasks from one ``SharedChunks``; the
        processes' dispatcher (this thread) sends tasks only to ready workers.
        """
        import concurrent.futures
        from multiprocessing import Pipe

        pool = self._processes.pool()
        pool.start()
        chunks = SharedChunks(Chunks(request.count, request.nbytes, workers), request.count)
        write = _in_process(request)
        shared = _SharedTally(tally, chunks)
        wake_read, wake_write = Pipe(duplex=False)

        def take_tasks(rank: int) -> None:
            try:
                while pool.ready_count() + rank < workers and (task := chunks.take()) is not None:
                    lo, hi = task
                    shared.add(write(lo, hi), request.start + hi)
            except BaseException:
                chunks.stop()  # the save fails: hand out nothing more
                raise
            finally:
                wake_write.send_bytes(b"")  # the dispatcher may be waiting for the threads to finish

        threads = [self._thread_pool().submit(take_tasks, rank) for rank in range(workers)]
        try:
            self._run_processes(
                request, chunks, shared, wake=wake_read, ready_only=True, finished=lambda: chunks.exhausted
            )
        finally:
            chunks.stop()
            concurrent.futures.wait(threads)
            wake_read.close()
            wake_write.close()
        for thread in threads:
            thread.result()  # tasks report their own errors; anything else raised in a thread is not lost

    def _after_fork_in_child(self) -> None:
        """Become, in a forked child, a Writer that has not started yet.

        The parent's workers and memory stay the parent's (pool.py and
        segment.py drop the child's hold on them); threads did not survive the
        fork, and a lock another thread held would never be released.
        """
        self._lock = threading.Lock()
        self._threads = self._submitter = None
        self._processes.drop_inherited()
        self._small_calls = 0


class _SharedTally:
    """A Tally counted from several threads; when it says stop, no more tasks are handed out."""

    def __init__(self, tally: Tally, chunks: SharedChunks) -> None:
        self._tally = tally
        self._chunks = chunks
        self._lock = threading.Lock()

    def add(self, outcome: Outcome, end: int) -> bool:
        with self._lock:
            return self._go_on(self._tally.add(outcome, end))

    def died(self, task: Task, exitcode: int | None) -> bool:
        with self._lock:
            return self._go_on(self._tally.died(task, exitcode))

    def _go_on(self, go_on: bool) -> bool:
        if go_on is False:
            self._chunks.stop()
        return go_on


_writers: weakref.WeakSet[Writer] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for writer in list(_writers):
        writer._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _in_process(request: Request) -> Callable[[int, int], Outcome]:
    """``write(lo, hi)``: write images ``lo:hi`` of ``request`` in this process, reading them
    where they are; the pages of a memory-mapped file are let go after each (``_pages.py``)."""
    images = request.stack if request.stack is not None else request.listed
    job, start = request.job(), request.start
    drop = page_dropper(request.stack)

    def write(lo: int, hi: int) -> Outcome:
        outcome = write_images(images[lo:hi], start + lo, job)
        if drop is not None:
            with contextlib.suppress(OSError):  # only memory is at stake: never fail a save for it
                drop(lo, hi)
        return outcome

    return write
