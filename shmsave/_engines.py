"""The engines: how a checked request's images get written, each a function of the Writer's parts.

    inline    this thread, a task at a time
    thread    the Writer's threads, on the caller's arrays where they are
    process   the worker processes, fed by the Stager (``_staging.py``) over ``Pool.run``
    hybrid    threads at once, worker processes taking over as each finishes starting

The in-process engines read the caller's arrays where they are (a memory-mapped
file's pages are let go after each task: ``_pages.py``); every engine runs
``_files.write_images`` and counts one Outcome per task in a ``report.Tally``.
"""

from __future__ import annotations

import contextlib
import functools
from _thread import allocate_lock  # what threading.Lock is; importing threading costs a first save ~1 ms
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ._files import remove_partial_files, write_images
from ._pages import page_dropper
from ._plan import Chunks, SharedChunks

if TYPE_CHECKING:
    from ._job import Job, Outcome
    from ._processes import Processes
    from ._protocol import Result, Task
    from ._threads import Threads
    from .report import Tally
    from .request import Request


def run_inline(request: Request, tally: Tally) -> None:
    """Write in this thread, a task at a time, so that progress is told as it goes."""
    write = _in_process(request)
    for lo, hi in Chunks(request.count, request.nbytes, 1).split(0, request.count):
        if tally.add(write(lo, hi), request.start + hi) is False:
            break


def run_threads(threads: Threads, request: Request, tally: Tally, workers: int) -> None:
    """Write on ``threads``, the request cut into tasks for ``workers``; a stop lets running tasks finish."""
    from _queue import SimpleQueue  # what queue.SimpleQueue is; ``queue`` costs ~2 ms to import (heapq)

    write = _in_process(request)
    tasks = list(Chunks(request.count, request.nbytes, workers).split(0, request.count))
    if not tasks:
        return
    finished: SimpleQueue[tuple[int, Outcome | None, BaseException | None]] = SimpleQueue()
    running = _Running()

    def run(lo: int, hi: int) -> None:
        if not running.begin():  # stopped: skipped
            finished.put((hi, None, None))
            return
        try:
            finished.put((hi, write(lo, hi), None))
        except BaseException as error:  # noqa: BLE001 - raised in the caller, once every task is over
            finished.put((hi, None, error))
        finally:
            running.end()

    failure = None
    try:
        for lo, hi in tasks:
            threads.run(run, lo, hi)
        for _ in tasks:
            hi, outcome, error = finished.get()
            if error is not None:
                failure = failure or error
                running.stopped = True
            elif outcome is not None and tally.add(outcome, request.start + hi) is False:
                running.stopped = True  # tasks still running report what they wrote
    finally:
        running.stop_and_wait()  # interrupted, even while handing tasks out: what runs is waited for
    if failure is not None:
        raise failure


class _Running:
    """The tasks running on threads for one call, and its stop: once stopped no task begins, and
    ``stop_and_wait`` returns when those that began are over. Exact wherever an interrupt lands in
    the caller, even while it hands tasks out (a file a thread has opened is then written whole
    before the call raises, and the process can end)."""

    def __init__(self) -> None:
        import threading  # loaded with the threads already; not by an inline save

        self.stopped = False
        self._count = 0
        self._lock = allocate_lock()
        self._over = threading.Event()

    def begin(self) -> bool:
        """Whether a task may begin (it then calls ``end`` when over)."""
        with self._lock:
            if self.stopped:
                return False
            self._count += 1
            return True

    def end(self) -> None:
        with self._lock:
            self._count -= 1
            if self.stopped and not self._count:
                self._over.set()

    def stop_and_wait(self) -> None:
        with self._lock:
            self.stopped = True
            if not self._count:
                self._over.set()
        self._over.wait()


def run_processes(
    processes: Processes, request: Request, chunks: Chunks | SharedChunks, tally: Tally | _SharedTally, **dispatch: Any
) -> None:
    """Send the tasks of ``chunks`` to the worker processes (``dispatch``: options of ``Pool.run``)."""
    stager = processes.stager()

    def on_result(task: Task, result: Result) -> bool:
        stager.task_done(task)
        return tally.add(result.outcome, task.end)

    def on_death(task: Task, exitcode: int | None, pid: int) -> bool:
        stager.task_done(task)
        remove_partial_files(task, pid)
        return tally.died(task, exitcode)

    def on_abandon(task: Task, pid: int) -> None:
        remove_partial_files(task, pid)

    def on_partial(task: Task, result: Result) -> None:
        tally.add(result.outcome, task.end)

    def on_timeout(task: Task, first_unwritten: int, pid: int | None) -> bool:
        from .pool import after_exit  # loaded already: only worker processes time out

        stager.task_done(task)
        if pid is not None:
            after_exit(pid, functools.partial(remove_partial_files, task, pid))
        return tally.timed_out(first_unwritten, task.end, pid, task.job)

    tasks = stager.tasks(request, chunks)
    try:
        on_stall = {"on_partial": on_partial, "on_timeout": on_timeout, "give_up": True}
        processes.pool().run(tasks, on_result, on_death, on_abandon, **on_stall, **dispatch)
    finally:
        tasks.close()


def run_hybrid(processes: Processes, threads: Threads, request: Request, tally: Tally, workers: int) -> None:
    """Threads write from the first moment while the worker processes start; a thread
    steps back as each process becomes ready, so no more than ``workers`` encode at once.

    Threads and processes take their tasks from one ``SharedChunks``; the
    processes' dispatcher (this thread) sends tasks only to ready workers.
    """
    from multiprocessing import Pipe

    pool = processes.pool()  # run_processes starts its workers (Pool.run), right after the threads
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

    running, errors = _Running(), []

    def taker(rank: int) -> None:
        if not running.begin():
            return
        try:
            take_tasks(rank)
        except BaseException as error:  # noqa: BLE001 - raised in the caller, once every taker is over
            errors.append(error)
        finally:
            running.end()

    try:
        for rank in range(workers):
            threads.run(taker, rank)
        run_processes(
            processes, request, chunks, shared, wake=wake_read, ready_only=True, finished=lambda: chunks.exhausted
        )
    finally:
        chunks.stop()
        running.stop_and_wait()
        wake_read.close()
        wake_write.close()
    for error in errors:
        raise error  # tasks report their own errors; anything else raised in a thread is not lost


class _SharedTally:
    """A Tally counted from several threads; when it says stop, no more tasks are handed out."""

    def __init__(self, tally: Tally, chunks: SharedChunks) -> None:
        self._tally = tally
        self._chunks = chunks
        self._lock = allocate_lock()

    def add(self, outcome: Outcome, end: int) -> bool:
        with self._lock:
            return self._go_on(self._tally.add(outcome, end))

    def died(self, task: Task, exitcode: int | None) -> bool:
        with self._lock:
            return self._go_on(self._tally.died(task, exitcode))

    def timed_out(self, first: int, end: int, pid: int, job: Job | None = None) -> bool:
        with self._lock:
            return self._go_on(self._tally.timed_out(first, end, pid, job))

    def _go_on(self, go_on: bool) -> bool:
        if go_on is False:
            self._chunks.stop()
        return go_on


def _in_process(request: Request) -> Callable[[int, int], Outcome]:
    """``write(lo, hi)``: write images ``lo:hi`` of ``request`` in this process, reading them
    where they are; the pages of a memory-mapped file are let go after each (``_pages.py``)."""
    # A plain view of an np.memmap: its slices and items would each run np.memmap's Python-level
    # __getitem__ and __array_finalize__ (~3 us an image: 10,000 tiny images from a .npy took
    # 0.36 s on 2 threads, 0.27 s as a plain view).
    images = np.asarray(request.stack) if request.stack is not None else request.listed
    job, start = request.job(), request.start
    drop = page_dropper(request.stack)

    def write(lo: int, hi: int) -> Outcome:
        outcome = write_images(images[lo:hi], start + lo, job)
        if drop is not None:
            with contextlib.suppress(OSError):  # only memory is at stake: never fail a save for it
                drop(lo, hi)
        return outcome

    return write
