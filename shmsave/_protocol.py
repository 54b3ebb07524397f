"""The messages between the parent and its workers (threads or processes).

    parent ── Task(source, lo, hi, first, job) ──▶ worker        (Forget(locator) between tasks,
    parent ◀── Result(task_id, Outcome) ────────── worker         None to stop)
    parent ◀── Ready(pid) ───────────────────────── worker once it has started

Everything here is small and pickles by value: pixels never travel in a
message, only the name of the memory that holds them (a source); ``images_in``
reads a source's images where that memory is mapped (a worker process, or a
stream's thread). The Job a task carries and the Outcome a result carries are in
``_job.py``.
"""

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from ._job import Job, Outcome

# No ``from __future__ import annotations`` here, as in _job.py: typing.NamedTuple would compile
# each string annotation into a ForwardRef.


class StackSource(NamedTuple):
    """An N-D array of images in memory a worker can map: ``kind`` ``"shm"`` (``locator`` is
    a shared-memory name) or ``"file"`` (a path, e.g. a ``.npy``)."""

    kind: str
    locator: str
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    dtype: str


class ListSource(NamedTuple):
    """Images of different shapes packed in one segment: ``(offset, shape, dtype)`` each."""

    kind: str
    locator: str
    entries: tuple[tuple[int, tuple[int, ...], str], ...]


Source = StackSource | ListSource


def images_in(buffer, source: Source, lo: int, hi: int):
    """The images ``lo:hi`` that ``source`` describes in ``buffer`` (its memory, mapped): one strided
    view of a stack (not one array per image: ~1 us each for tiny images), or an array per entry."""
    if isinstance(source, StackSource):
        stack = np.ndarray(source.shape, source.dtype, buffer=buffer, offset=source.offset, strides=source.strides)
        return stack[lo:hi]
    return [np.ndarray(shape, dtype, buffer=buffer, offset=offset) for offset, shape, dtype in source.entries[lo:hi]]


def stack_source(kind: str, locator: str, offset: int, count: int, step: int, shape: tuple, dtype: str) -> StackSource:
    """``count`` C-contiguous images of ``shape`` and ``dtype``, ``step`` bytes apart from ``offset``,
    as one strided stack: a worker makes one view of them instead of one array per image."""
    strides = [np.dtype(dtype).itemsize]
    for side in reversed(shape[1:]):
        strides.insert(0, strides[0] * side)
    return StackSource(kind, locator, offset, (count, *shape), (step, *strides), dtype)


def packed_source(kind: str, locator: str, entries) -> Source:
    """The source of images placed one after another in one segment (``(offset, shape, dtype)``
    each): one stack when they share a shape and dtype at a constant step (as a list of crops of
    one size is placed), else a list."""
    offset, shape, dtype = entries[0]
    step = entries[1][0] - offset if len(entries) > 1 else 0
    if step <= 0 or any(entry != (offset + i * step, shape, dtype) for i, entry in enumerate(entries)):
        return ListSource(kind, locator, tuple(entries))
    return stack_source(kind, locator, offset, len(entries), step, shape, dtype)


class Task(NamedTuple):
    """Write images ``lo:hi`` of the images that ``source`` describes, numbered from ``first``."""

    id: int
    source: Source
    lo: int
    hi: int
    first: int  # the index of image ``lo``
    job: Job

    @property
    def end(self) -> int:
        """One past the index of the task's last image."""
        return self.first + self.hi - self.lo


class Result(NamedTuple):
    """A worker's answer to the task ``task_id``; ``partial``: the images written so far, more to come
    (sent while a task with a timeout runs, so the parent sees it make progress)."""

    task_id: int
    outcome: Outcome
    partial: bool = False


class Ready(NamedTuple):
    """A worker has imported everything and waits for tasks."""

    pid: int


class Forget(NamedTuple):
    """The parent released the segment ``locator``: unmap it."""

    locator: str


class Wait:
    """Not a message: a task source yields it instead of a task, and the dispatcher sends
    nothing more from that source until ``ready()`` is true (a staging slot is free again)."""

    def __init__(self, ready: Callable[[], bool]) -> None:
        self.ready = ready
