"""A stream's tasks: its batches of images in the ring, and the hub's side of the stream.

    Stream.write ──▶ pending batch ──_seal──▶ ready ──take_task (hub)──▶ in flight ──task_done──▶ ring freed

``StreamTasks`` holds what the hub thread (``_hub.py``) and the Writer's threads call on a
stream (``take_task``, ``run_here``, ``task_done`` and the other answers): it seals the
caller's pending images into batches, turns a batch into a Task, counts its Outcome in the
stream's Tally and frees the ring in the order the images were placed. ``Stream``
(``streaming.py``) adds the caller's side; both sides share its attributes, guarded by
the stream's condition.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._files import remove_partial_files, unexpected_in_task, write_images
from ._job import Names
from ._protocol import ListSource, StackSource, Task, images_in, stack_source
from .errors import WorkerFailed
from .naming import job_path

if TYPE_CHECKING:
    from ._images import Layout
    from ._job import Job, Outcome
    from .segment import Segment

OPEN, CLOSING, STOPPED, CLOSED = "open", "closing", "stopped", "closed"


@dataclass
class Batch:
    """Images sent (or to be sent) as one task: ring entries, or one image in a segment of its own."""

    entries: list
    first: int
    end: int  # the ring position after its last image (0 for a segment of its own)
    block: Segment | None = None
    here: bool = False  # encoded by a thread of this process (a big image), not by a worker process
    layout: Layout | None = None  # the one layout of images placed one after another: sent as a stack
    done: bool = False
    # when one of its images has its own path (write(path=...)), per image: (path, format number in
    # ``StreamNames.formats``, key in ``StreamNames.busy`` or None for a template's image)
    names: list | None = None


class StreamTasks:
    """The hub's side of a ``Stream`` (see the module's docstring); its state is the Stream's."""

    def _seal(self, here: bool | None = None) -> None:
        """The pending batch is complete: queue it for the hub (holding the condition); ``here``:
        for the threads (default: while tiny images go to them)."""
        self._ready.append(
            Batch(
                self._pending,
                self._pending_first,
                self._pending_end,
                here=self._tiny_on_threads > 0 if here is None else here,
                layout=self._pending_layout,
                names=self._pending_names,
            )
        )
        self._pending, self._pending_bytes = [], 0
        self._pending_names = None

    @property
    def has_ready(self) -> bool:
        """Whether images wait to be sent (a hint: read without the lock)."""
        return bool(self._ready or self._pending)

    def take_task(self, ids, here_free: bool, workers_free: bool) -> tuple[Task, bool] | None:
        """The next task and whether it runs here (``run_here`` on a thread), or None; ``ids``
        numbers tasks across streams. None too while the next one's kind has no free encoder."""
        with self._cond:
            if self._state is STOPPED or self._state is CLOSED:
                return None
            if not self._ready and self._pending:
                self._seal()
            if not self._ready or not (here_free if self._ready[0].here else workers_free):
                return None
            batch = self._ready.popleft()
            block = batch.block or self._ring.block
            source = source_of(block, batch)
            job = self._job if batch.names is None else self._named_job(batch)
            task = Task(next(ids), source, 0, len(batch.entries), batch.first, job)
            self._in_flight[task.id] = (task, batch)
            if batch.block is None:
                self._in_ring.append(batch)
            self._ran.add(batch.here)
            return task, batch.here

    def _named_job(self, batch: Batch) -> Job:
        """The job of a batch whose images have their own paths (and maybe several formats)."""
        formats = self._names.formats
        paths, numbers, _ = zip(*batch.names)
        if len(set(numbers)) == 1:
            extension, params = formats[numbers[0]]
            return self._job._replace(folder=None, extension=extension, params=params, names=Names(batch.first, paths))
        names = Names(batch.first, paths, 0, tuple(formats), numbers)
        return self._job._replace(folder=None, names=names)

    def _path_of(self, index: int) -> str:
        """The path of image ``index`` (for the Report of a failure): its task's, its batch's or the template's."""
        for task, _ in self._in_flight.values():
            if task.first <= index < task.end:
                return job_path(task.job, index)
        for batch in self._ready:
            if batch.names is not None and batch.first <= index < batch.first + len(batch.entries):
                return batch.names[index - batch.first][0]
        if self._pending_names is not None and self._pending_first <= index < self._pending_first + len(
            self._pending_names
        ):
            return self._pending_names[index - self._pending_first][0]
        return self._request.path(index)

    def run_here(self, task: Task) -> None:
        """Encode and write a ``here`` task's images where ``write`` put them (on a thread of this process)."""
        with self._cond:
            taken = self._in_flight.get(task.id)
        if taken is None:  # the hub failed meanwhile (``fail``) and counted it
            return
        try:
            block = taken[1].block or self._ring.block
            images = images_in(block.buffer, task.source, task.lo, task.hi)  # as a worker process reads them
            outcome = write_images(images, task.first, task.job)
        except Exception as error:  # noqa: BLE001 - counted as the task's failure, as a worker's would be
            outcome = unexpected_in_task(task.first, error)
        self.task_done(task, outcome)

    def task_done(self, task: Task, outcome: Outcome) -> None:
        with self._cond:
            if task.id not in self._in_flight:  # a thread's answer after the hub failed (``fail``) counted it
                return
            go_on = self._tally.add(outcome, task.end)  # before _answered: a failure's path is its task's
            self._answered(task)
            if go_on is False:
                self._stop()
            self._cond.notify_all()

    def task_died(self, task: Task, exitcode: int | None, pid: int) -> None:
        with self._cond:
            self._answered(task)
            remove_partial_files(task, pid)
            if self._tally.died(task, exitcode) is False:
                self._stop()
            self._cond.notify_all()

    def task_partial(self, task: Task, outcome: Outcome) -> None:
        """Images of a task in flight were finished (a task with a timeout tells as it goes)."""
        with self._cond:
            if task.id in self._in_flight and self._tally.add(outcome, task.end) is False:
                self._stop()
                self._cond.notify_all()

    def task_timed_out(self, task: Task, first_unwritten: int, pid: int) -> None:
        from .pool import after_exit  # loaded already: only worker processes time out

        with self._cond:
            self._answered(task)
            after_exit(pid, functools.partial(remove_partial_files, task, pid))
            if self._tally.timed_out(first_unwritten, task.end, pid, task.job) is False:
                self._stop()
            self._cond.notify_all()

    def task_abandoned(self, task: Task, pid: int) -> None:
        self.task_died(task, None, pid)

    def fail(self, cause: BaseException) -> None:
        """The hub stopped: nothing more will be sent or answered. The images in flight or not
        sent yet count as failed; ``write`` raises from now on, whatever ``errors`` says."""
        description = f"the stream dispatcher stopped: {type(cause).__name__}: {cause}"
        with self._cond:
            lost = [(task.first, task.end) for task, _ in self._in_flight.values()]
            lost += [(batch.first, batch.first + len(batch.entries)) for batch in self._ready]
            if self._pending:
                lost.append((self._pending_first, self._pending_first + len(self._pending)))
            if lost:
                error = WorkerFailed(min(lost)[0], max(end for _, end in lost), description)
                error.__cause__ = cause
                self._tally.lost(lost, error)
            for task, _ in list(self._in_flight.values()):
                self._answered(task)
            self._broken = (description, cause)
            self._reusable_ring = False  # a thread may still read its task's images
            self._stop()
            self._cond.notify_all()

    def _answered(self, task: Task) -> None:
        batch = self._in_flight.pop(task.id)[1]
        if batch.names is not None:
            self._busy.difference_update([key for _, _, key in batch.names])
        if batch.block is not None:
            self._store.release_segment(batch.block)
            self._own_segment_busy = False
            return
        batch.done = True
        while self._in_ring and self._in_ring[0].done:
            self._ring.free_to(self._in_ring.popleft().end)

    def _stop(self) -> None:
        """``errors="raise"`` and an image failed: send nothing more; ``write`` or ``close`` raises."""
        if self._state is not CLOSED:
            self._state = STOPPED
        self._drop_unsent()

    def _drop_unsent(self) -> None:
        for batch in self._ready:
            if batch.names is not None:
                self._busy.difference_update([key for _, _, key in batch.names])
            if batch.block is not None:
                self._store.release_segment(batch.block)
                self._own_segment_busy = False
        self._ready.clear()
        if self._pending_names is not None:
            self._busy.difference_update([key for _, _, key in self._pending_names])
        self._pending, self._pending_bytes = [], 0
        self._pending_names = None


def source_of(block, batch: Batch) -> ListSource | StackSource:
    """The source of a batch's task: images of one layout placed one after another as one strided
    stack (a worker makes one view instead of one per image: ~0.6 us per tiny image), else a list."""
    layout = batch.layout
    if layout is None or len(batch.entries) < 2:
        return ListSource(block.kind, block.locator, tuple(batch.entries))
    count, offset = len(batch.entries), batch.entries[0][0]
    return stack_source(block.kind, block.locator, offset, count, layout.ring_bytes, layout.shape, layout.dtype_str)
