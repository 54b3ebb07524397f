"""Writer: plan a checked request, choose an engine, feed the pool, build the Report."""

from __future__ import annotations

import concurrent.futures
import contextlib
import math
import mmap
import os
import sys
import threading
import time
import warnings
import weakref

import numpy as np

try:
    from numpy.lib.array_utils import byte_bounds  # numpy >= 2
except ImportError:
    from numpy import byte_bounds

from . import segment
from ._protocol import Task
from ._files import Written, remove_if_empty, temporary_path, write_images
from .errors import InvalidRequest, WorkerDied, WorkerFailed, WriteFailed, WriterClosed
from .pool import Pool, Wait, usable_cpus
from .report import Failure, Report
from .request import Request, make_request, prepare_folder

_MB = 2**20
# Staging: pixels that are not in shared memory yet pass through a few warm
# slots, so the copy of one window overlaps the encoding of the previous ones.
_SLOT_BYTES = int(os.environ.get("SHMSAVE_SLOT_MB", "32")) * _MB
_SLOTS = 3
# A task is about this much work; small enough to balance, big enough that its
# round trip (~0.1 ms) is noise.
_TASK_BYTES = 4 * _MB
_TASK_IMAGES = 512
_TASK_MIN_S = 0.001
_TASKS_PER_WORKER = 2  # a task is at most 1/(2 x workers) of what is left
# Engine choice: estimated single-core seconds for a request (DESIGN.md:
# ~60 us per tiny image, ~3-12 ns per pixel byte for JPEG/PNG).
_SECONDS_PER_IMAGE = 60e-6
_SECONDS_PER_BYTE = 5e-9
_INLINE_BELOW_S = 0.004  # a call to the workers costs ~1-3 ms of latency on this VM
# Starting the workers costs ~0.4 s on the host these figures come from (2 cores:
# 10,000 tiny images take 0.65 s with the start, 0.23 s without). n workers pay it
# back once a request's single-core time W satisfies W > start + W / n. Both the
# start and the per-image estimate are CPU-bound and move together from host to
# host (a host twice as fast measured 0.14 s and ~18 us): their ratio is what counts.
_POOL_START_S = 0.4
# Big images go to threads: OpenCV releases the GIL for the whole encode, so
# threads scale like processes, and they read the caller's array where it is,
# with no copy into shared memory (benchmarks: 1080p JPEG, threads 0.22 s,
# processes 0.24 s zero-copy / 0.26 s staged, loop 0.42 s). Tiny images go to
# processes: with four GIL hand-offs per image (encode, open, write, close),
# two threads ran at 0.5-0.7x the loop on one host and swung between 0.8x and
# 1.5x within minutes on another (10,000 images), where processes held 1.9x.
_THREADS_FROM_IMAGE_BYTES = 64 * 1024

ENGINES = ("auto", "process", "thread", "inline")


class Writer:
    """Saves image batches with a pool of long-lived worker processes.

    ``workers`` defaults to the CPUs this process may use. ``engine`` is
    ``"process"``, ``"thread"``, ``"inline"`` (this thread only) or
    ``"auto"``: inline or threads for batches too small to pay for processes,
    processes otherwise (and whenever the pool is already running).

    Use it as a context manager, or call ``close()``; a forgotten Writer is
    closed when it is garbage collected or at exit. Calls from several threads
    are safe; they run one after another.
    """

    def __init__(self, workers: int | None = None, *, engine: str = "auto") -> None:
        if workers is not None and (not isinstance(workers, (int, np.integer)) or isinstance(workers, bool)
                                    or workers < 1):
            raise InvalidRequest(f"workers must be a positive integer or None (all usable CPUs), got {workers!r}")
        if engine not in ENGINES:
            raise InvalidRequest(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")
        self.workers = int(workers) if workers is not None else usable_cpus()
        self.engine = engine
        self._pool = Pool(self.workers)
        self._lock = threading.Lock()
        self._slots: list[segment.Segment] = []
        self._buffers: dict[int, segment.Segment] = {}
        self._threads: concurrent.futures.ThreadPoolExecutor | None = None
        self._submitter: concurrent.futures.ThreadPoolExecutor | None = None
        self._closed = False
        self._warned_disk = False
        self._small_calls = 0  # calls too small to start the workers for
        segment.sweep_orphans()
        self._finalizer = weakref.finalize(self, _shut_down, self._pool, self._slots, self._buffers)
        _writers.add(self)

    def _after_fork_in_child(self) -> None:
        """Become, in a forked child, a Writer that has not started yet.

        The parent's workers, slots and buffers stay the parent's (pool.py and
        segment.py drop the child's hold on them); threads did not survive the
        fork, and a lock another thread held would never be released.
        """
        self._lock = threading.Lock()
        self._threads = self._submitter = None
        self._slots.clear()
        self._buffers.clear()
        self._small_calls = 0

    # -- public -----------------------------------------------------------

    def save(self, images, template, *, quality=None, compression=None, params=None, rgb=False,
             start=0, overwrite=True, errors="raise", progress=False, fields=None) -> Report:
        """Write each image of ``images`` to ``template.format(index=start + i)``; see ``shmsave.save``.

        ``progress``: True for a tqdm bar, or a callable ``progress(n)`` told
        each time ``n`` more images are finished (written, skipped or failed).
        """
        request = self._check(images, template, quality=quality, compression=compression, params=params,
                              rgb=rgb, start=start, overwrite=overwrite, errors=errors, fields=fields)
        return self._run(request, progress)

    def submit(self, images, template, **options) -> concurrent.futures.Future:
        """Like ``save`` but return at once with a Future of the Report.

        The request is checked now (bad input raises here, not in the Future).
        Do not modify ``images`` until the Future is done.
        """
        progress = options.pop("progress", False)
        request = self._check(images, template, **options)
        with self._lock:
            if self._submitter is None:
                self._submitter = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="shmsave-submit")
        return self._submitter.submit(self._run, request, progress)

    def start(self) -> Writer:
        """Start the worker processes now and wait until they are ready (~0.2 s).

        Optional: they start by themselves when a call needs them. Call this
        before a stream of small batches, so that none of them waits for it.
        """
        with self._lock:
            if self._closed:
                raise WriterClosed()
            self._pool.wait_ready()
        return self

    def empty(self, shape, dtype="uint8") -> np.ndarray:
        """A new zero-filled array in shared memory; saving it copies nothing.

        Its memory is freed when the array (and every view of it) is gone, or
        when the Writer closes.
        """
        if self._closed:
            raise WriterClosed()
        shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(int(n) for n in shape)
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        block = self._new_segment(nbytes)
        array = block.array(shape, dtype)
        self._buffers[id(block)] = block
        weakref.finalize(array, _release_buffer, self._buffers, id(block), self._pool)
        return array

    def close(self) -> None:
        """Finish submitted saves, stop the workers and free the shared memory; safe to call twice."""
        if self._submitter is not None:
            self._submitter.shutdown(wait=True)  # outside the lock: each pending save needs it
        with self._lock:
            self._closed = True
            if self._threads is not None:
                self._threads.shutdown(wait=True)
        self._finalizer()

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def pids(self) -> list[int]:
        """Process ids of the running workers (for monitoring and tests)."""
        return self._pool.pids

    # -- running ----------------------------------------------------------

    def _check(self, images, template, **options) -> Request:
        if self._closed:
            raise WriterClosed()
        return make_request(images, template, **options)

    def _run(self, request: Request, progress) -> Report:
        with self._lock:
            if self._closed:
                raise WriterClosed()
            began = time.perf_counter()
            if request.count == 0:
                return Report(0, 0, 0.0, engine="inline", workers=0)
            prepare_folder(request)
            engine, workers = self._choose_engine(request)
            tally = _Tally(request, progress)
            try:
                if engine == "process":
                    self._run_processes(request, tally)
                elif engine == "thread":
                    self._run_threads(request, tally, workers)
                else:
                    self._run_inline(request, tally)
            finally:
                tally.close()
            report = tally.report(time.perf_counter() - began, engine, workers)
        tally.raise_first_error(report)
        return report

    def _choose_engine(self, request: Request) -> tuple[str, int]:
        engine = self.engine
        if engine == "auto":
            seconds = _single_core_seconds(request)
            if self.workers == 1 or request.count == 1 or seconds < _INLINE_BELOW_S:
                engine = "inline"
            elif request.nbytes >= request.count * _THREADS_FROM_IMAGE_BYTES:
                engine = "thread"
            elif self._pool.ready() or seconds > _POOL_START_S * self.workers / (self.workers - 1):
                engine = "process"
            else:
                engine = "inline"
                self._small_calls += 1
                if self._small_calls == 2:  # a Writer in use again: start the workers for the calls to come
                    self._pool.start()
        return engine, (1 if engine == "inline" else self.workers)

    def _run_inline(self, request: Request, tally: _Tally) -> None:
        """Write in this thread, a task at a time, so that progress is told as it goes."""
        images, job = _images(request), request.job()
        for lo, hi in _Chunks(request, 1).split(0, request.count):
            if tally.add(write_images(images[lo:hi], request.start + lo, job), request.start + hi) is False:
                break

    def _run_threads(self, request: Request, tally: _Tally, workers: int) -> None:
        if self._threads is None:
            self._threads = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="shmsave")
        images, job = _images(request), request.job()
        ends = {self._threads.submit(write_images, images[lo:hi], request.start + lo, job): request.start + hi
                for lo, hi in _Chunks(request, workers).split(0, request.count)}
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

    def _run_processes(self, request: Request, tally: _Tally) -> None:
        outstanding = [0] * _SLOTS
        slot_of: dict[int, int] = {}

        def finished(task):
            slot = slot_of.pop(task.id, None)
            if slot is not None:
                outstanding[slot] -= 1

        def on_result(task, result):
            finished(task)
            return tally.add(Written(*result[1:]), task.end)

        def on_death(task, exitcode, pid):
            finished(task)
            _remove_partial_files(request, task, pid)
            return tally.died(task, exitcode)

        def on_abandon(task, pid):
            _remove_partial_files(request, task, pid)

        tasks = self._tasks(request, outstanding, slot_of)
        try:
            self._pool.run(tasks, on_result, on_death, on_abandon)
        finally:
            tasks.close()

    def _tasks(self, request: Request, outstanding: list, slot_of: dict):
        """Yield the tasks of ``request``, copying pixels into slots as the workers free them."""
        job, chunks = request.job(), _Chunks(request, self.workers)
        task_ids = iter(range(1 << 62))
        stack = request.stack
        if stack is not None:
            source = self._shared_source(stack)
            if source is not None:
                for lo, hi in chunks.split(0, request.count):
                    yield Task(next(task_ids), source, lo, hi, request.start + lo, job)
                return
            # Each task's images are copied just before it is sent, so the first
            # worker starts at once and every copy overlaps the encoding of the tasks before it.
            image_bytes = stack[0].nbytes
            slots = self._staging_slots(image_bytes, request.nbytes)
            per_slot = slots[0].nbytes // image_bytes
            chunks.limit(per_slot)
            number, used = 0, 0  # the slot being filled, and how many images it holds
            for lo, hi in chunks.split(0, request.count):
                if used + hi - lo > per_slot:
                    number, used = (number + 1) % len(slots), 0
                    if outstanding[number]:
                        yield Wait(lambda number=number: outstanding[number] == 0)
                slot = slots[number]
                staged = slot.array((hi - lo, *stack.shape[1:]), stack.dtype, used * image_bytes)
                np.copyto(staged, stack[lo:hi])
                source = ("stack", slot.kind, slot.locator, used * image_bytes, staged.shape, staged.strides,
                          stack.dtype.str)
                used += hi - lo
                task_id = next(task_ids)
                slot_of[task_id] = number
                outstanding[number] += 1
                yield Task(task_id, source, 0, hi - lo, request.start + lo, job)
            return
        images = request.listed
        largest = max(_aligned(image.nbytes) for image in images)
        slots = self._staging_slots(largest, sum(_aligned(image.nbytes) for image in images))
        windows = _pack(images, slots[0].nbytes)
        for window, (lo, placed) in enumerate(windows):
            number = window % len(slots)
            if outstanding[number]:
                yield Wait(lambda number=number: outstanding[number] == 0)
            slot = slots[number]
            entries = []
            for offset, image in placed:
                slot.array(image.shape, image.dtype, offset)[...] = image
                entries.append((offset, image.shape, image.dtype.str))
            for first, last in chunks.split(0, len(entries)):
                task_id = next(task_ids)
                slot_of[task_id] = number
                outstanding[number] += 1
                chunk = entries[first:last]
                yield Task(task_id, ("list", slot.kind, slot.locator, chunk), 0, len(chunk),
                           request.start + lo + first, job)

    # -- memory -----------------------------------------------------------

    def _shared_source(self, stack: np.ndarray):
        """A descriptor for ``stack`` if workers can map it as it is, else None."""
        low, high = byte_bounds(stack)
        for block in list(self._buffers.values()):
            if block.address <= low and high <= block.address + block.nbytes:
                return ("stack", block.kind, block.locator, stack.ctypes.data - block.address,
                        stack.shape, stack.strides, stack.dtype.str)
        mapping = getattr(stack, "_mmap", None)
        # mode "c" keeps the caller's changes private (the file lacks them); a deleted file
        # cannot be mapped again by name: copy those like any other array
        if (isinstance(stack, np.memmap) and mapping is not None and stack.filename and stack.mode != "c"
                and os.path.exists(stack.filename)):
            try:
                address = np.frombuffer(mapping, np.uint8, count=1).ctypes.data
            except ValueError:  # a closed mapping
                return None
            mapped_from = stack.offset - stack.offset % mmap.ALLOCATIONGRANULARITY
            return ("stack", "file", os.fspath(stack.filename), mapped_from + stack.ctypes.data - address,
                    stack.shape, stack.strides, stack.dtype.str)
        return None

    def _staging_slots(self, unit: int, total: int) -> list[segment.Segment]:
        """Warm slots of at least ``unit`` bytes, reused across calls while big enough."""
        size = max(unit, min(total, _SLOT_BYTES))
        count = min(_SLOTS, math.ceil(total / (size // unit * unit)))
        if len(self._slots) >= count and all(s.nbytes >= size for s in self._slots[:count]):
            return self._slots[:count]
        held = sum(s.nbytes for s in self._slots)
        free = segment.shm_free_bytes()
        if free is not None and size * count > (free + held) // 2:
            # /dev/shm is small (containers often give 64 MB): use smaller windows
            size = max(unit, (free + held) // (2 * count) // unit * unit)
        self._release_slots()
        for _ in range(count):
            self._slots.append(self._new_segment(size))
        return self._slots[:count]

    def _new_segment(self, nbytes: int) -> segment.Segment:
        free = segment.shm_free_bytes()
        if free is None or nbytes <= free // 2:
            with contextlib.suppress(OSError):
                return segment.Segment.create(nbytes)
        if not self._warned_disk:
            self._warned_disk = True
            _warn_caller(f"shmsave: /dev/shm has {0 if free is None else free // _MB} MB free, too little for "
                         f"{nbytes // _MB + 1} MB; staging through a temporary file instead (slower). "
                         "Give the container more shared memory (docker run --shm-size=1g) to avoid this.")
        return segment.Segment.create(nbytes, on_disk=True)

    def _release_slots(self) -> None:
        while self._slots:
            slot = self._slots.pop()
            self._pool.forget(slot.locator)
            slot.release()


_writers: weakref.WeakSet[Writer] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for writer in list(_writers):
        writer._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _warn_caller(message: str) -> None:
    """Warn (UserWarning: shown by default) pointing at the first frame outside shmsave."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 2  # level 1 is this function
    while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == package:
        frame, level = frame.f_back, level + 1
    warnings.warn(message, UserWarning, stacklevel=level)


def _pack(images: list, capacity: int):
    """Yield ``(first_index, [(offset, image), ...])`` windows that fit in ``capacity`` bytes."""
    placed, used, first = [], 0, 0
    for i, image in enumerate(images):
        size = _aligned(image.nbytes)
        if placed and used + size > capacity:
            yield first, placed
            placed, used, first = [], 0, i
        placed.append((used, image))
        used += size
    if placed:
        yield first, placed


class _Tally:
    """Adds up task results into a Report; remembers the first error."""

    def __init__(self, request: Request, progress) -> None:
        self.request = request
        self.count = self.bytes = self.skipped = 0
        self.failed: list[Failure] = []
        self.errors: list[WorkerDied | WorkerFailed] = []  # failures of whole tasks, not of one image
        self.bar = None
        self.tick = progress if callable(progress) else None  # tick(n): n more images finished
        if progress and self.tick is None:
            from tqdm import tqdm  # imported only when asked for: it costs ~0.1 s

            self.bar = tqdm(total=request.count, unit="img", dynamic_ncols=True)
            self.tick = self.bar.update

    def add(self, result: Written, end: int) -> bool:
        """Count one task's result (``end``: one past its last index); False means stop."""
        self.count += result.written
        self.bytes += result.bytes
        self.skipped += result.skipped
        self.failed.extend(Failure(*failure) for failure in result.failures)
        finished = result.written + result.skipped + len(result.failures)
        if result.unexpected is not None:
            index, description, cause = result.unexpected
            error = WorkerFailed(index, end, description)
            error.__cause__ = cause
            self.errors.append(error)
            self.failed.extend(Failure(i, self.request.path(i), f"unexpected error: {description}")
                               for i in range(index, end))
            finished += end - index
        if self.tick is not None:
            self.tick(finished)
        return self.request.collect or not (result.failures or result.unexpected)

    def died(self, task: Task, exitcode) -> bool:
        error = WorkerDied(exitcode, task.first, task.end)
        self.errors.append(error)
        self.failed.extend(Failure(index, self.request.path(index), str(error))
                           for index in range(task.first, task.end))
        if self.tick is not None:
            self.tick(task.end - task.first)
        return self.request.collect

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def report(self, seconds: float, engine: str, workers: int) -> Report:
        failed = tuple(sorted(self.failed, key=lambda f: f.index))
        return Report(self.count, self.bytes, seconds, failed, self.skipped, engine, workers)

    def raise_first_error(self, report: Report) -> None:
        if self.request.collect or not report.failed:
            return
        if self.errors:
            error = min(self.errors, key=lambda e: e.start)
        else:
            first = report.failed[0]
            error = WriteFailed(first.index, first.path, first.message, first.errno)
        error.report = report
        raise error


def _images(request: Request):
    return request.stack if request.stack is not None else request.listed


class _Chunks:
    """Cuts a request into tasks: big ones first, shrinking toward the end (guided
    scheduling), so that all workers finish at about the same time."""

    def __init__(self, request: Request, workers: int) -> None:
        per_image = max(1, request.nbytes // request.count)
        self.most = max(1, min(_TASK_BYTES // per_image, _TASK_IMAGES))
        self.least = min(self.most, max(1, math.ceil(_TASK_MIN_S * request.count / _single_core_seconds(request))))
        self.share = workers * _TASKS_PER_WORKER
        self.left = request.count

    def limit(self, most: int) -> None:
        """Make no task longer than ``most`` images."""
        self.most = min(self.most, most)
        self.least = min(self.least, most)

    def split(self, lo: int, hi: int):
        """Yield ``(start, end)`` tasks covering images ``lo:hi``, the next part of the request."""
        while lo < hi:
            size = min(hi - lo, max(self.least, min(self.most, math.ceil(self.left / self.share))))
            self.left -= size
            yield lo, lo + size
            lo += size


def _single_core_seconds(request: Request) -> float:
    """What the request would take on one core, roughly (the engine choice and task sizes use it)."""
    return request.count * _SECONDS_PER_IMAGE + request.nbytes * _SECONDS_PER_BYTE


def _aligned(nbytes: int) -> int:
    return (nbytes + 63) // 64 * 64


def _remove_partial_files(request: Request, task: Task, pid: int) -> None:
    """Delete what a dead worker may have left of the files of ``task``: a temporary file, or an
    empty file under the final name (killed between open and write; see ``_files._write_file``)."""
    for index in range(task.first, task.end):
        path = request.absolute_path(index)
        with contextlib.suppress(OSError):
            os.unlink(temporary_path(path, pid))
        remove_if_empty(path)


def _release_buffer(buffers: dict, key: int, pool: Pool | None = None) -> None:
    block = buffers.pop(key, None)
    if block is not None:
        if pool is not None:
            pool.forget(block.locator)
        block.release()


def _shut_down(pool: Pool, slots: list, buffers: dict) -> None:
    pool.close()
    while slots:
        slots.pop().release()
    for key in list(buffers):
        _release_buffer(buffers, key)
