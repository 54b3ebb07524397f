"""Streams: save images one at a time, as a loop produces them (``Writer.stream``).

    write(image) ──▶ check (once per shape and dtype) ──▶ copy into the ring ──▶ pending batch
                                                                                    │ take_task
    close() ◀── Report ◀── Tally ◀── task_done (ring space freed) ◀── hub ◀─────────┘

The caller's thread only checks and copies; the hub thread (``_hub.py``) sends
the batches to the workers and hands their answers back here. Everything both
threads touch is guarded by the stream's condition, which ``write`` holds once
per tiny image (a big one is copied between two holds), and which a full ring waits on.

Big images (as ``save`` does, ``_plan.THREADS_FROM_IMAGE_BYTES``) are a batch of
their own marked ``here``: a thread of this process (``Hub.send_here``) encodes
it where ``write`` copied it (the ring is mapped here too) with ``run_here`` and
answers through ``task_done`` like a worker's Result, so a batch's way through
the ring, the Tally and the errors is the same either way.

This module is the caller's side (``write``, ``close``); the batches and the hub's side
(``take_task`` and the answers) are ``_stream_tasks.StreamTasks``, which ``Stream`` extends.
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

import numpy as np

from ._images import ImageChecks, aligned, placer
from ._plan import TASK_BYTES, TASK_IMAGES
from ._protocol import Task
from ._stream_names import NoTemplate, StreamNames
from ._stream_tasks import CLOSED, CLOSING, OPEN, STOPPED, Batch, StreamTasks
from .errors import InvalidRequest, ShmsaveError, StreamClosed
from .report import Progress, Report, Tally

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from ._hub import Hub
    from ._images import Layout
    from ._ring import Ring, RingStore
    from .request import Request

_TASKS_IN_RING_PER_WORKER = 2  # each worker's running and queued task (pool._DEPTH) fit in the ring at once


class Stream(StreamTasks):
    """Saves images one at a time as a loop produces them; made by ``Writer.stream``.

    ``write(image)`` checks one image, copies it into this stream's shared-memory
    ring and returns: the caller may overwrite its array at once. When the ring
    is full, ``write`` waits until the workers free room (the memory a stream
    holds never grows). ``close()`` waits for every image accepted and returns
    the Report (also ``report`` from then on); leaving a ``with`` block closes
    the stream. Calls on one stream are for one thread at a time.
    """

    def __init__(
        self,
        request: Request,
        ring: Ring,
        store: RingStore,
        hub: Hub,
        progress: Progress,
        workers: int,
        threads_from: int | None,
        tiny_on_threads: float = 0,
        writer: object = None,
        options: dict | None = None,
    ) -> None:
        self._writer = writer  # a stream keeps its Writer (its workers and threads) alive until it is gone
        self._request = request
        self._threads_from = threads_from  # images of this many bytes or more go to threads; None: none do
        self._tiny_on_threads = tiny_on_threads  # tiny images to batch for the threads before the processes
        self._ran: set[bool] = set()  # batch.here of every batch taken: which engines wrote, for the Report
        self._job = request.job()
        self._ring = ring
        self._store = store
        self._hub = hub
        self._workers = workers
        self._tally = Tally(request, progress)
        self._lock = threading.Lock()  # write() takes it directly: Condition.__enter__ is a Python call
        self._cond = threading.Condition(self._lock)
        self._state = OPEN
        self._checks = ImageChecks(request.encoding) if request.encoding.extension else NoTemplate()
        self._names = StreamNames(request, options or {"rgb": request.encoding.rgb})
        self._tally.path_of = self._path_of  # the paths of named images are in their batches
        self._bytes = memoryview(ring.block.array((ring.size,), np.uint8))  # write() copies into it
        self._place = placer()  # the compiled copy where it is built
        self._next = request.start
        self._end = request.start + request.count if request.count else None  # from total=
        self._task_bytes = max(1, min(TASK_BYTES, ring.size // (_TASKS_IN_RING_PER_WORKER * workers + 1)))
        self._pending: list = []  # the batch being filled: (offset, shape, dtype) per image
        self._pending_first = self._pending_end = self._pending_bytes = self._pending_next = 0
        self._pending_layout: Layout | None = None  # while the pending images form one strided stack
        self._reserved: tuple | None = None  # (array, offset, end): ring space lent by ``_reserve``
        # once a pending image has its own path: (path, format number, key in _busy or None) of each
        self._pending_names: list[tuple] | None = None
        self._busy = self._names.busy  # paths of named images accepted and not yet written
        self._ready: collections.deque[Batch] = collections.deque()  # sealed, not sent yet
        self._in_flight: dict[int, tuple[Task, Batch]] = {}  # task id -> the task and its batch
        self._in_ring: collections.deque[Batch] = collections.deque()  # sent ring batches, in ring order
        self._own_segment_busy = False  # an image bigger than the ring is in a segment of its own
        self._moving = False  # from the private ring to a shared one (``_move_to_a_shared_ring``)
        self._report: Report | None = None
        self._reusable_ring = True
        self._broken: tuple[str, BaseException] | None = None  # why the hub stopped serving this stream
        self._began = time.perf_counter()
        _streams.add(self)

    # -- the caller's side ---------------------------------------------------

    @property
    def report(self) -> Report | None:
        """The Report once the stream is closed; None before."""
        return self._report

    def write(
        self,
        image: np.ndarray,
        path: str | os.PathLike[str] | None = None,
        params: Sequence[int] | Mapping[int | str, int] | None = None,
    ) -> None:
        """Copy ``image`` (a 2-D or 3-D array) to be saved as the next index, and return.

        ``path``: this image's own path instead of the template's (the stream's options that
        its format takes apply; a relative path follows the caller's folder now); ``params``:
        with ``path``, this image's OpenCV flags instead of the stream's options, as
        ``cv2.imwrite``'s third argument. An image on the path of one not written yet waits for it.
        Bad input raises InvalidRequest before anything of it is copied; the
        stream stays usable. With ``errors="raise"``, an image that failed
        earlier raises here (``WriteFailed``, ``WorkerDied`` or ``WorkerFailed``
        with the stream's ``report``), and the stream is then closed.
        """
        if self._state is not OPEN:
            self._raise_for_state()
        index = self._next
        tiny_here = start_processes = sealed = False
        if path is None:
            if params is not None:
                raise InvalidRequest(f"image {index}: params= goes with path= (the stream's options apply otherwise)")
            layout = self._checks.check(image, index)
            name = key = None
            number = 0
        else:
            name, key, number, checks = self._names.resolve(path, params, index)
            layout = checks.check(image, index)
            if key in self._busy:
                self._wait_for_path(key)
        if self._end is not None and index >= self._end:
            raise InvalidRequest(
                f"image {index} is one more than the total={self._request.count} announced "
                "when the stream was opened; pass a larger total (or none)"
            )
        size = layout.ring_bytes
        if size > self._ring.size:
            self._write_own_segment(image, layout, index, None if name is None else (name, number, key))
            return
        threads_from = self._threads_from  # what _runs_here says, inline: this is the path of a tiny image
        if threads_from is not None and layout.nbytes >= threads_from:
            self._write_here(image, layout, index, None if name is None else (name, number, key))
            return
        self._lock.acquire()  # not `with`: on a lock it costs ~70 ns more (its __exit__ takes three arguments)
        try:
            place = self._ring.reserve(size) if self._reserved is None else None  # _room without a call, mostly
            if place is None:
                place = self._room(size)
            if place is not None:
                offset, end = place
                self._place(self._bytes, offset, image)
                if not self._pending:
                    self._pending_first, self._pending_layout = index, layout
                elif self._pending_layout is not layout or offset != self._pending_next:
                    self._pending_layout = None  # not one strided stack (another shape, or the ring wrapped)
                self._pending.append((offset, layout.shape, layout.dtype_str))
                self._pending_next = offset + size  # where the next image of a strided stack starts
                if name is not None and self._pending_names is not None:
                    self._pending_names.append((name, number, key))
                    self._busy.add(key)
                elif name is not None or self._pending_names is not None:
                    self._name_pending(index, name, number, key)
                self._pending_end = end
                self._pending_bytes += size
                if len(self._pending) >= TASK_IMAGES or self._pending_bytes >= self._task_bytes:
                    self._seal()
                    sealed = True
                tiny_here = self._tiny_on_threads > 0
                if tiny_here and self._tiny_on_threads > 1:
                    self._tiny_on_threads -= 1
                elif tiny_here and not self._moving:  # the last one for the threads
                    self._moving = start_processes = True
                self._next = index + 1
        finally:
            self._lock.release()
        if place is None:  # the stream stopped while the ring was full (raised without the lock: close() takes it)
            self._raise_for_state()
        if tiny_here and self._hub.thread_free():
            self._hub.send_here(self)  # a thread free takes what is pending; one that finishes, the next
        if start_processes:
            self._move_to_a_shared_ring()  # from now on tiny images go to the worker processes
        elif not tiny_here and self._hub.idle:
            self._hub.poke()
        if sealed:
            self._hub.catch_up()  # a loop of tiny writes would hold the GIL the hub needs to feed the workers

    def _write_here(self, image: np.ndarray, layout: Layout, index: int, named: tuple | None) -> None:
        """A big image, for a thread of this process: copied into the ring without the lock (numpy lets
        go of the GIL too: a 1080p frame takes ~0.3 ms), so that a thread finishing an image meanwhile
        can report it and take the next instead of waiting for the copy."""
        with self._lock:
            placed = self._reserved is not None and image is self._reserved[0]  # decoded in place: ``_reserve``
            place = self._take_reserved() if placed else self._room(layout.ring_bytes)
            if place is not None and self._pending:
                self._seal()  # the images placed before this one go first, in ring order
        if place is None:
            return self._raise_for_state()
        offset, end = place
        if not placed:
            self._ring.block.array(layout.shape, layout.dtype, offset)[...] = image
        with self._lock:
            taken = self._state is OPEN
            if taken:
                self._queue_one(Batch([(offset, layout.shape, layout.dtype_str)], index, end, here=True), named)
        if not taken:  # the stream stopped during the copy: this image is not taken
            return self._raise_for_state()
        self._hub.send_here(self)

    def _reserve(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray | None:
        """A writable array of ``shape`` and ``dtype`` in this stream's ring, for a decoder to write the
        next image into (``cv2.VideoCapture.retrieve(out)``); ``write`` of that very array then takes
        it where it is, with no copy (a 1080p frame: 0.4-0.9 ms less). Only for images this process's
        threads encode (big ones: tiny ones may move to another ring), and while the stream is open;
        None otherwise. Until that ``write``, any other write or ``_reserve`` gives the space back.
        """
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        if self._state is not OPEN or not self._runs_here(nbytes) or aligned(nbytes) > self._ring.size:
            return None
        with self._lock:
            place = self._room(aligned(nbytes))
            if place is None:
                return None
            out = self._ring.block.array(shape, dtype, place[0])
            self._reserved = (out, *place)
        return out

    def _take_reserved(self) -> tuple[int, int]:
        """The ``(offset, end)`` that ``_reserve`` lent, for ``write`` of its array (holding the lock)."""
        _, offset, end = self._reserved
        self._reserved = None
        return offset, end

    def _room(self, size: int) -> tuple[int, int] | None:
        """``(offset, end)`` of ``size`` bytes in the ring, waiting while it is full (holding the lock);
        None if the stream stopped. Space ``_reserve`` lent and no ``write`` took goes back first."""
        if self._reserved is not None:
            out, _, end = self._reserved
            self._reserved = None
            self._ring.give_back(aligned(out.nbytes), end)
        place = self._ring.reserve(size)
        return place if place is not None else self._wait_for_room(size)

    def skip_to(self, index: int) -> None:
        """Give the next image ``index`` (at least the next one's): the indices between get no image.

        For sources whose images have numbers of their own (a video's frames
        picked with a step, ``save_frames``).
        """
        with self._lock:
            if index < self._next:
                raise InvalidRequest(f"skip_to({index}): the next image is {self._next} already; indices only grow")
            if index > self._next:
                if self._pending:
                    self._seal()  # a batch holds consecutive indices
                self._next = index

    def close(self) -> Report:
        """Wait for every accepted image and return the Report; safe to call twice.

        With ``errors="raise"``, the first failure raises here (with the Report
        attached) unless ``write`` raised it already.
        """
        if self._report is not None:
            return self._report
        if self._state is CLOSED:  # inherited from the parent process by fork
            return Report(0, 0, 0.0, engine="process", workers=0)
        with self._cond:
            if self._state is OPEN:
                self._state = CLOSING
            if self._pending:
                self._seal()
        self._hub.poke(always=True)
        self._hub.send_here(self)  # a batch of tiny images for the threads may wait for a free one
        try:
            with self._cond:
                while self._in_flight or (self._ready and self._state is not STOPPED):
                    self._cond.wait()
        except BaseException:
            self._abort()
            raise
        return self._finish(raise_error=True)

    def close_quietly(self) -> None:
        """Close, keeping any error in the Report instead of raising it (the Writer is closing)."""
        with contextlib.suppress(ShmsaveError):
            self.close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, traceback: Any) -> None:
        if kind is None:
            self.close()
        elif issubclass(kind, Exception):  # the loop failed: accepted images finish, its error propagates
            self.close_quietly()
        else:  # Ctrl-C, SystemExit: send nothing more, wait only for the tasks the workers hold
            self._abort()

    # -- helpers of the caller's side ----------------------------------------

    def _wait_for_room(self, size: int) -> tuple[int, int] | None:
        """Wait (holding the condition) until the ring has ``size`` bytes free; None if the stream stopped."""
        while True:
            if self._pending:
                self._seal()  # what fills the ring must go out to be freed
            if self._ready and not self._ready[0].here:  # a task for threads: a thread that finishes sends it
                self._hub.poke()
            self._cond.wait()
            if self._state is not OPEN:
                return None
            place = self._ring.reserve(size)
            if place is not None:
                return place

    def _name_pending(self, index: int, name: str | None, number: int, key: str | None) -> None:
        """Record the path of a pending image (holding the lock); the first named image of a batch
        gives the template's images before it their paths too."""
        if self._pending_names is None:
            path = self._request.path
            self._pending_names = [(path(i), 0, None) for i in range(self._pending_first, index)]
        if name is None:
            name, number, key = self._request.path(index), 0, None
        else:
            self._busy.add(key)
        self._pending_names.append((name, number, key))

    def _wait_for_path(self, key: str) -> None:
        """An image goes to the path of one not written yet: wait until that one is (the file then
        holds the later image, as after two cv2.imwrite calls)."""
        with self._cond:
            while key in self._busy and self._state is OPEN:
                if self._pending:
                    self._seal()
                self._hub.poke(always=True)
                self._cond.wait(0.05)  # a thread's task may wait for this caller's send_here
                if key in self._busy:
                    self._cond.release()
                    try:
                        self._hub.send_here(self)
                    finally:
                        self._cond.acquire()
            stopped = self._state is not OPEN
        if stopped:
            self._raise_for_state()

    def _write_own_segment(self, image: np.ndarray, layout: Layout, index: int, named: tuple | None) -> None:
        """An image bigger than the ring: its own segment, one such image at a time (``named``:
        its path, format number and key, when it has its own)."""
        with self._cond:
            if self._pending:
                self._seal()
            self._hub.poke()
            while self._own_segment_busy and self._state is OPEN:
                self._cond.wait()
            stopped = self._state is not OPEN
            if not stopped:
                self._own_segment_busy = True
        if stopped:
            return self._raise_for_state()  # without the lock: close() takes it
        here = self._runs_here(layout.nbytes) or self._tiny_on_threads > 0
        block = self._store.lend_segment(layout.nbytes, shared=not here)
        block.array(layout.shape, layout.dtype)[...] = image
        with self._cond:
            self._queue_one(Batch([(0, layout.shape, layout.dtype_str)], index, 0, block, here=here), named)
        if here:
            self._hub.send_here(self)
        else:
            self._hub.serve()
            self._hub.poke(always=True)

    def _queue_one(self, batch: Batch, named: tuple | None) -> None:
        """Queue the batch of one image for the hub (holding the lock); ``named``: its path, format
        number and key, when it has its own path."""
        if named is not None:
            batch.names = [named]
            self._busy.add(named[2])
        self._ready.append(batch)
        self._next = batch.first + 1

    def _move_to_a_shared_ring(self) -> None:
        """Tiny images go to the worker processes from now on, which read only shared memory: start
        them, let the threads finish what the private ring holds (the workers start meanwhile), and
        go on in a shared ring."""
        self._hub.serve()
        shared = self._store.lend_ring(self._ring.size)  # without the lock: a new one takes milliseconds
        while True:
            with self._cond:
                if self._pending:
                    self._seal(here=True)  # in the private ring: for the threads
                moved = self._state is OPEN and not (self._ready or self._in_flight)
                if moved:  # nothing reads the private ring now: the next image goes to the shared one
                    private, self._ring = self._ring, shared
                    self._bytes = memoryview(shared.block.array((shared.size,), np.uint8))
                    self._tiny_on_threads = 0
                if moved or self._state is not OPEN:
                    break
                unsent = bool(self._ready)
            if unsent:
                self._hub.send_here(self)
            with self._cond:
                if self._in_flight:
                    self._cond.wait()  # until a task is answered
                elif self._ready:
                    self._cond.wait(0.005)  # the threads are busy with another stream's tasks
        self._store.take_back(private if moved else shared)
        if not moved:
            self._raise_for_state()

    def _runs_here(self, nbytes: int) -> bool:
        """Whether images of ``nbytes`` are encoded by this process's threads (else by the workers)."""
        return self._threads_from is not None and nbytes >= self._threads_from

    def _raise_for_state(self) -> None:
        if self._state is STOPPED and self._report is None:
            self.close()  # raises the failure that stopped the stream
        if self._broken is not None:
            description, cause = self._broken
            raise StreamClosed(
                f"this stream stopped ({description}); its Report is in .report, open a new one with Writer.stream()"
            ) from cause
        if self._state is CLOSED and self._report is None:
            raise StreamClosed(
                "this stream belongs to the process that opened it (this one is a fork of it); "
                "open a new one here with Writer.stream()"
            )
        raise StreamClosed("this stream is closed (its Report is in .report); open a new one with Writer.stream()")

    def _abort(self) -> None:
        """Drop what was not sent, wait for what the workers hold; interrupted again, leave it to them."""
        with self._cond:
            if self._report is not None:
                return
            self._state = STOPPED
            self._drop_unsent()
        try:
            with self._cond:
                while self._in_flight:
                    self._cond.wait()
        except BaseException:
            self._reusable_ring = False  # tasks still read it: release it rather than lend it again
            self._finish(raise_error=False)
            raise
        self._finish(raise_error=False)

    def _finish(self, raise_error: bool) -> Report:
        self._hub.detach(self)
        self._store.take_back(self._ring, reusable=self._reusable_ring)
        self._tally.close()
        engine = "hybrid" if len(self._ran) == 2 else "thread" if True in self._ran else "process"
        report = self._tally.report(time.perf_counter() - self._began, engine, self._workers)
        self._report, self._state = report, CLOSED
        if raise_error:
            self._tally.raise_first_error(report)
        return report


_streams: weakref.WeakSet[Stream] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A forked child never writes through its parent's streams (their hub thread is the parent's)."""
    for stream in list(_streams):
        stream._lock = threading.Lock()
        stream._cond = threading.Condition(stream._lock)
        stream._state = CLOSED


os.register_at_fork(after_in_child=_after_fork_in_child)
