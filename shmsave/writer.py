"""Writer: the public verbs, and the lifecycle of its workers, threads and memory.

    save / submit ──▶ request.py (check) ──▶ _plan.py (engine) ──▶ _engines.py: inline | thread | process | hybrid
                                                                              │
    Report ◀── report.Tally ◀── one Outcome per task ◀──────────────────────────┘

Streams (``streaming.py``) copy into rings (``_ring.py``) and are dispatched by
the Writer's hub thread (``_hub.py``), which owns the pool while a stream is open.
"""

from __future__ import annotations

import math
import os
import time
import weakref
from _thread import allocate_lock  # what threading.Lock is; importing threading costs a first save ~1 ms
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _engines
from ._folders import prepare_folder
from ._plan import ENGINES, THREADS_FROM_IMAGE_BYTES, Choice, Chunks, choose_engine, usable_cpus
from ._processes import Processes
from .errors import InvalidRequest, ShmsaveError, WriteFailed, WriterClosed, WriteTimedOut
from .report import Progress, Report, Tally, check_progress
from .request import Request, make_request, make_stream_request

if TYPE_CHECKING:
    import concurrent.futures
    from collections.abc import Mapping, Sequence

    import numpy.typing as npt

    from ._threads import Threads
    from .streaming import Stream


# How a stream shares out its images, by engine. Big ones (THREADS_FROM_IMAGE_BYTES or more) go to the
# threads one by one, except on "process". Tiny ones go to the threads in batches, and to the worker
# processes once this many have come: on "auto" and "hybrid" after ~0.1 s of encoding on one core
# (4,000 50x50 JPEGs at 25 us), about what starting the processes costs, so a stream of a few hundred
# crops never waits for them. A stream cannot run inline (``write`` returns before the image is
# written): "inline" streams use threads.
_STREAM_TINY_ON_THREADS = {"process": 0, "thread": math.inf, "inline": math.inf}
_TINY_ON_THREADS_FIRST = 4000


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
        self._lock = allocate_lock()
        self._threads: Threads | None = None
        self._submitter: Threads | None = None
        self._closed = False
        self._small_calls = 0  # calls too small to start the workers for
        self._imwriting: Stream | None = None  # the stream imwrite() adds to, until flush()
        self._imwrite_lock = allocate_lock()
        self._finalizer = weakref.finalize(self, self._processes.close)
        _writers.add(self)

    # -- public -----------------------------------------------------------

    def save(
        self,
        images: np.ndarray | Sequence[np.ndarray],
        template: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
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
        durable: bool = False,
        timeout: float | None = None,
        shard_size: int | None = None,
        encoder: str = "opencv",
    ) -> Report:
        """Write each image of ``images`` to ``template.format(index=start + i)``; see ``shmsave.save``.

        ``progress``: True for a tqdm bar, or a callable ``progress(n)`` told
        each time ``n`` more images are finished (written, skipped or failed).
        ``fields``: values of further ``{name}`` fields of the template (one for all, or a list of one
        per image); ``template`` may be a list of paths, one per image; ``shard_size``: images per ``{shard}``.
        ``durable=True``: every file and new folder is synced to stable storage before the call returns.
        ``timeout``: seconds a worker process may make no progress before it is killed (WriteTimedOut).
        """
        request = self._check(
            images,
            template,
            progress,
            quality=quality,
            compression=compression,
            params=params,
            rgb=rgb,
            start=start,
            overwrite=overwrite,
            errors=errors,
            fields=fields,
            durable=durable,
            timeout=timeout,
            shard_size=shard_size,
            encoder=encoder,
        )
        return self._run(request, progress)

    def submit(
        self,
        images: np.ndarray | Sequence[np.ndarray],
        template: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
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
        durable: bool = False,
        timeout: float | None = None,
        shard_size: int | None = None,
        encoder: str = "opencv",
        copy: bool = True,
    ) -> concurrent.futures.Future[Report]:
        """Like ``save`` but return at once with a Future of the Report.

        The request is checked now (bad input raises here, not in the Future).
        ``copy=True``: the pixels are copied before ``submit`` returns (into
        shared memory, which the workers read where it is), so the caller may
        refill its arrays at once; read-only arrays and memory-mapped files are
        read where they are. ``copy=False``: nothing is copied and the caller
        must not modify ``images`` until the Future is done. Submitted saves run
        one after another, and the interpreter finishes them before it exits.
        """
        if not isinstance(copy, bool):
            raise InvalidRequest(f"copy must be True or False, got {copy!r}")
        request = self._check(
            images,
            template,
            progress,
            quality=quality,
            compression=compression,
            params=params,
            rgb=rgb,
            start=start,
            overwrite=overwrite,
            errors=errors,
            fields=fields,
            durable=durable,
            timeout=timeout,
            shard_size=shard_size,
            encoder=encoder,
        )
        if copy:
            request = self._snapshot(request)
        import concurrent.futures  # here: it (and logging) costs ~6 ms to import

        from ._threads import Threads, settle

        future: concurrent.futures.Future[Report] = concurrent.futures.Future()
        with self._lock:
            if self._submitter is None:
                self._submitter = Threads(1, "shmsave-submit", linger=False)  # the interpreter waits for it at exit
        self._submitter.run(settle, future, self._run, request, progress)
        return future

    def stream(
        self,
        template: str | os.PathLike[str] | None,
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
        durable: bool = False,
        timeout: float | None = None,
        shard_size: int | None = None,
        encoder: str = "opencv",
    ) -> Stream:
        """A ``Stream``: ``write`` images one at a time as a loop makes them; see ``shmsave.stream``.

        The options are those of ``save``; ``start`` is the first index, ``total``
        the number of images to come if known (the progress bar's total; more
        are refused). ``buffer_bytes``: the stream's shared-memory ring (default:
        32 MB per worker, 64-512 MB, at most a quarter of the free /dev/shm);
        ``write`` waits while it is full. Several streams may be open at once;
        while any is, ``save`` on this Writer runs on threads.
        """
        check_progress(progress)
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
            durable=durable,
            timeout=timeout,
            shard_size=shard_size,
            encoder=encoder,
        )
        self._check_timeout(request)
        from ._ring import ring_bytes
        from .streaming import Stream

        nbytes = ring_bytes(buffer_bytes, self.workers)

        with self._lock:
            if self._closed:
                raise WriterClosed()
            try:
                prepare_folder(request)
            except (WriteFailed, WriteTimedOut):
                if not request.collect:
                    raise  # collect: each image fails as it is written, and the Report has them all
            rings, hub = self._processes.rings(), self._processes.hub()
            threads_from = None if self.engine == "process" else THREADS_FROM_IMAGE_BYTES
            tiny = _STREAM_TINY_ON_THREADS.get(self.engine, _TINY_ON_THREADS_FIRST)
            if self.engine == "auto" and self._processes.ready():
                tiny = 0  # the workers run already: tiny images go to them from the first
            if request.timeout is not None:  # only processes can be stopped: every image goes to them
                threads_from, tiny = None, 0
            ring = rings.lend_ring(nbytes, shared=not tiny)  # while only threads read it: private memory
            options = dict(quality=quality, compression=compression, params=params, rgb=rgb)
            stream = Stream(request, ring, rings, hub, progress, self.workers, threads_from, tiny, self, options)
            hub.open(stream, self._thread_pool(), processes=not tiny)
        return stream

    def save_frames(
        self,
        source: str | os.PathLike[str],
        template: str | os.PathLike[str],
        *,
        start: int | None = None,
        stop: int | None = None,
        step: int = 1,
        quality: int | None = None,
        compression: int | None = None,
        params: Mapping[int | str, int] | Sequence[int | str] | None = None,
        rgb: bool = False,
        overwrite: bool = True,
        errors: str = "raise",
        progress: Progress = False,
        fields: Mapping[str, Any] | None = None,
        buffer_bytes: int | None = None,
        durable: bool = False,
        timeout: float | None = None,
        shard_size: int | None = None,
        encoder: str = "opencv",
    ) -> Report:
        """Save frames ``start:stop:step`` of a video file, or pages of a multi-page TIFF; see
        ``shmsave.save_frames``. Decoding runs in the calling thread, encoding on this Writer."""
        from ._frames import save_frames

        return save_frames(
            self,
            source,
            template,
            start=start,
            stop=stop,
            step=step,
            quality=quality,
            compression=compression,
            params=params,
            rgb=rgb,
            overwrite=overwrite,
            errors=errors,
            progress=progress,
            fields=fields,
            buffer_bytes=buffer_bytes,
            durable=durable,
            timeout=timeout,
            shard_size=shard_size,
            encoder=encoder,
        )

    def imwrite(self, path: str | os.PathLike[str], image: np.ndarray, params: Sequence[int] | None = None) -> bool:
        """``cv2.imwrite(path, image, params)`` that copies the pixels and returns at once (True).

        The file is written by the Writer's workers, byte-identical to what ``cv2.imwrite`` writes
        and only once complete; the extension picks the format, ``params`` are OpenCV's flags
        (``[cv2.IMWRITE_JPEG_QUALITY, 90]``); a relative path follows the caller's folder now, and
        missing folders are created. Bad input raises InvalidRequest here. Memory is bounded: while
        the buffer (a stream's ring) is full, this waits for the workers. A failed image raises
        (``WriteFailed`` naming its path, ``WorkerDied``, ...) from a later ``imwrite`` (that call's
        image is then not taken) or from ``flush()`` or ``close()``. A second image on the path of
        one not yet written waits for it, so the file holds the last, as with ``cv2.imwrite``.
        Returns True, as ``cv2.imwrite`` does, so a loop that checks its result works unchanged.
        """
        self._imwrite_lock.acquire()  # not `with`, as in Stream.write: ~70 ns less per image
        try:
            stream = self._imwriting
            if stream is None or stream._report is not None:  # a stream stopped by a failure raises it first
                stream = self._imwriting = self.stream(None)
            stream.write(image, path, params)
        finally:
            self._imwrite_lock.release()
        return True

    def flush(self) -> Report:
        """Wait for every image given to ``imwrite`` since the last flush and return their Report;
        the first failure raises (with the Report attached), as ``save`` does."""
        with self._imwrite_lock:
            stream, self._imwriting = self._imwriting, None
        if stream is None:
            return Report(0, 0, 0.0, engine="inline", workers=0)
        return stream.close()

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
        """Finish ``imwrite`` images, submitted saves and open streams (their errors stay in their
        reports), stop the workers and free the shared memory; safe to call twice. A failed
        ``imwrite`` image raises here, once everything is closed."""
        failure = None
        try:
            try:
                self.flush()
            except ShmsaveError as error:
                failure = error
            self._processes.close_streams()
            if self._submitter is not None:
                self._submitter.shutdown(wait=True)  # outside the lock: each pending save needs it
            with self._lock:
                self._closed = True
                if self._threads is not None:
                    self._threads.shutdown(wait=True)
        finally:
            self._finalizer()  # interrupted (Ctrl-C) or not, the workers stop and the memory goes
        if failure is not None:
            raise failure

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, traceback: Any) -> None:
        if kind is not None:  # as a stream's: the loop's error propagates, not an imwrite failure
            with self._imwrite_lock:
                stream, self._imwriting = self._imwriting, None
            if stream is not None:
                stream.__exit__(kind, error, traceback)  # Ctrl-C: drop what was not sent
        self.close()

    @property
    def pids(self) -> list[int]:
        """Process ids of the running workers (for monitoring and tests)."""
        return self._processes.pids

    # -- running ----------------------------------------------------------

    def _check(self, images: Any, template: Any, progress: Progress, **options: Any) -> Request:
        if self._closed:
            raise WriterClosed()
        check_progress(progress)
        request = make_request(images, template, **options)
        self._check_timeout(request)
        return request

    def _check_timeout(self, request: Request) -> None:
        """A call with a timeout runs on worker processes, the only encoders that can be stopped."""
        if request.timeout is not None and self.engine in ("thread", "inline"):
            raise InvalidRequest(
                f"timeout= needs worker processes, and this Writer has engine={self.engine!r}: a thread that "
                "hangs cannot be stopped. Use a Writer with engine='auto' or 'process' for calls with a timeout"
            )

    def _run(self, request: Request, progress: Progress) -> Report:
        with self._lock:
            if self._closed:
                raise WriterClosed()
            began = time.perf_counter()
            if request.count == 0:
                return Report(0, 0, 0.0, engine="inline", workers=0, encoder=request.encoding.encoder)
            if request.timeout is not None:
                self._processes.settle_streams()  # a stream just closed: its hub lets the workers go first
            streaming = self._processes.streaming()  # the hub owns the workers until its streams close: threads
            if streaming and request.timeout is not None:
                raise InvalidRequest(
                    "a save with timeout= runs on the worker processes, which this Writer's open stream "
                    "holds: close the stream first, or save with another Writer"
                )
            try:
                prepare_folder(request)
            except (WriteFailed, WriteTimedOut) as error:
                if not request.collect:
                    raise  # before any image: no Report (tests/test_permissions.py tells the two apart by it)
                return self._refused(request, progress, error, began)
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
            if request.timeout is not None:
                choice = Choice("process", self.workers)
            tally = Tally(request, progress)
            try:
                if choice.engine == "process":
                    chunks = Chunks(request.count, request.nbytes, self.workers)
                    _engines.run_processes(self._processes, request, chunks, tally)
                elif choice.engine == "hybrid":
                    _engines.run_hybrid(self._processes, self._thread_pool(), request, tally, choice.workers)
                elif choice.engine == "thread":
                    _engines.run_threads(self._thread_pool(), request, tally, choice.workers)
                else:
                    _engines.run_inline(request, tally)
            finally:
                tally.close()
            report = tally.report(time.perf_counter() - began, choice.engine, choice.workers)
            if choice.small and not streaming:
                self._small_calls += 1
                if self._small_calls == 2:
                    # A Writer in use again: start the workers for the calls to come, after this one
                    # (starting them during it slowed it 2x on 2 cores: they import for ~0.15 s of CPU).
                    self._processes.pool().start()
        tally.raise_first_error(report)
        return report

    def _snapshot(self, request: Request) -> Request:
        """``request`` over a copy of the pixels its caller could change (``submit(copy=True)``)."""
        stack = request.stack
        if stack is not None:
            if not stack.flags.writeable or isinstance(stack, np.memmap):
                return request
            if self.engine in ("thread", "inline"):  # no worker reads it: nothing in /dev/shm to outlive a crash
                return request._replace(stack=stack.copy())
            copy = self.empty(stack.shape, stack.dtype)  # shared: the workers read it without a second copy
            np.copyto(copy, stack)
            return request._replace(stack=copy)
        return request._replace(listed=[image.copy() if image.flags.writeable else image for image in request.listed])

    @staticmethod
    def _refused(request: Request, progress: Progress, error: WriteFailed | WriteTimedOut, began: float) -> Report:
        """``errors="collect"`` and the folder refused: the Report of a call whose every image failed."""
        tally = Tally(request, progress)
        try:
            tally.refused(error)
        finally:
            tally.close()
        return tally.report(time.perf_counter() - began, "inline", 0)

    def _thread_pool(self) -> Threads:
        """The Writer's ``workers`` threads, shared by ``save`` and streams (call with the lock held)."""
        if self._threads is None:
            from ._threads import Threads

            self._threads = Threads(self.workers, "shmsave")
        return self._threads

    def _after_fork_in_child(self) -> None:
        """Become, in a forked child, a Writer that has not started yet.

        The parent's workers and memory stay the parent's (pool.py and
        segment.py drop the child's hold on them); threads did not survive the
        fork, and a lock another thread held would never be released.
        """
        self._lock = allocate_lock()
        self._threads = self._submitter = None
        self._processes.drop_inherited()
        self._small_calls = 0
        self._imwriting = None
        self._imwrite_lock = allocate_lock()


_writers: weakref.WeakSet[Writer] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for writer in list(_writers):
        writer._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
