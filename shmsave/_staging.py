"""Staging: where the worker processes find a request's pixels.

A ``Stager`` owns the shared memory of one Writer: a few warm staging slots,
reused from call to call, and the buffers handed out by ``Writer.empty``. For a
request it yields tasks whose sources workers can map:

- pixels already shared (a ``Writer.empty`` buffer, an ``np.memmap`` of a file)
  are described where they are: nothing is copied;
- other pixels are copied into the slots a task at a time, just before the task
  is sent, so the first worker starts at once and every copy overlaps the
  encoding of the tasks before it. A slot is refilled only once every task
  reading it is done: the dispatcher reports each with ``task_done``.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import mmap
import os
import sys
import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np

try:
    from numpy.lib.array_utils import byte_bounds  # numpy >= 2
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy import byte_bounds

from ._images import aligned, placer
from ._pages import mapping_address
from ._plan import Chunks
from ._protocol import StackSource, Task, Wait, packed_source
from .request import Request

if TYPE_CHECKING:
    from .segment import Segment

_MB = 2**20
# Pixels that are not in shared memory yet pass through a few warm slots, so the
# copy of one window overlaps the encoding of the previous ones.
_SLOT_BYTES = int(os.environ.get("SHMSAVE_SLOT_MB", "32")) * _MB
_SLOTS = 3
# A listed image smaller than this is copied by one C call (~0.3 us for a 50x50 crop, against ~2 us
# for numpy's view and copy); a bigger one by numpy, which lets go of the GIL while it copies.
_PLACE_BELOW_BYTES = 64 * 1024


class Stager:
    """The shared memory of one Writer: staging slots and ``empty()`` buffers.

    ``forget(locator)`` is told each segment released, so that workers unmap it.
    """

    def __init__(self, forget: Callable[[str], None]) -> None:
        self._forget = forget
        self._slots: list[Segment] = []
        self._buffers: dict[int, Segment] = {}
        self._outstanding: list[int] = []  # per slot: tasks sent and not yet done
        self._slot_of: dict[int, int] = {}  # task id -> the slot it reads
        self._ids = itertools.count()
        self._warned_disk = False

    # -- buffers ------------------------------------------------------------

    def empty(self, shape, dtype) -> np.ndarray:
        """A new zero-filled array in shared memory, freed with its last view (or ``release()``)."""
        shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(int(n) for n in shape)
        dtype = np.dtype(dtype)
        block = self.new_segment(math.prod(shape) * dtype.itemsize)
        array = block.array(shape, dtype)
        self._buffers[id(block)] = block
        weakref.finalize(array, _release_buffer, self._buffers, id(block), self._forget)
        return array

    def source_kind(self, request: Request) -> str:
        """Where the request's pixels are: ``"list"``, ``"shared"``, ``"file"`` or ``"array"`` (see ``_plan``)."""
        if request.stack is None:
            return "list"
        source = self.shared_source(request.stack)
        if source is None:
            return "array"
        return "file" if source.kind == "file" else "shared"

    def shared_source(self, stack: np.ndarray) -> StackSource | None:
        """A source for ``stack`` if workers can map it where it is, else None."""
        low, high = byte_bounds(stack)
        for block in list(self._buffers.values()):
            if block.address <= low and high <= block.address + block.nbytes:
                return StackSource(
                    block.kind,
                    block.locator,
                    stack.ctypes.data - block.address,
                    stack.shape,
                    stack.strides,
                    stack.dtype.str,
                )
        mapping = getattr(stack, "_mmap", None)
        # mode "c" keeps the caller's changes private (the file lacks them); a deleted file
        # cannot be mapped again by name: copy those like any other array
        if (
            isinstance(stack, np.memmap)
            and mapping is not None
            and stack.filename
            and stack.mode != "c"
            and os.path.exists(stack.filename)
        ):
            address = mapping_address(mapping)
            if address is None:
                return None
            mapped_from = stack.offset - stack.offset % mmap.ALLOCATIONGRANULARITY
            return StackSource(
                "file",
                os.fspath(stack.filename),
                mapped_from + stack.ctypes.data - address,
                stack.shape,
                stack.strides,
                stack.dtype.str,
            )
        return None

    # -- tasks --------------------------------------------------------------

    def tasks(self, request: Request, chunks: Chunks) -> Iterator[Task | Wait]:
        """The tasks of ``request``, copying pixels into slots as the workers free them."""
        job = request.job()
        stack = request.stack
        if stack is not None:
            source = self.shared_source(stack)
            if source is not None:
                for lo, hi in chunks.split(0, request.count):
                    yield Task(
                        next(self._ids),
                        source,
                        lo,
                        hi,
                        request.start + lo,
                        job.for_images(request.start + lo, request.start + hi),
                    )
                return
            yield from self._staged_stack(request, stack, chunks)
            return
        yield from self._staged_list(request, chunks)

    def task_done(self, task: Task) -> None:
        """A task sent from ``tasks`` is answered (or its worker died): its slot may be refilled."""
        slot = self._slot_of.pop(task.id, None)
        if slot is not None:
            self._outstanding[slot] -= 1

    def _staged_stack(self, request: Request, stack: np.ndarray, chunks: Chunks) -> Iterator[Task | Wait]:
        dtype = request.cast or stack.dtype  # integers are cast while they are copied
        job, image_bytes = request.job(), stack[0].size * dtype.itemsize
        slots = self._staging_slots(image_bytes, request.nbytes)
        per_slot = slots[0].nbytes // image_bytes
        chunks.limit(per_slot)
        number, used = 0, 0  # the slot being filled, and how many images it holds
        for lo, hi in chunks.split(0, request.count):
            if used + hi - lo > per_slot:
                number, used = (number + 1) % len(slots), 0
                yield from self._wait_for(number)
            slot = slots[number]
            staged = slot.array((hi - lo, *stack.shape[1:]), dtype, used * image_bytes)
            np.copyto(staged, stack[lo:hi], casting="unsafe")
            source = StackSource(slot.kind, slot.locator, used * image_bytes, staged.shape, staged.strides, dtype.str)
            used += hi - lo
            first = request.start + lo
            task = Task(next(self._ids), source, 0, hi - lo, first, job.for_images(first, first + hi - lo))
            yield self._sent_from(number, task)

    def _staged_list(self, request: Request, chunks: Chunks) -> Iterator[Task | Wait]:
        images, job, cast = request.listed, request.job(), request.cast
        itemsize = (cast or images[0].dtype).itemsize
        largest = max(aligned(image.size * itemsize) for image in images)
        slots = self._staging_slots(largest, sum(aligned(image.size * itemsize) for image in images))
        place = placer()
        for window, (lo, placed) in enumerate(_pack(images, slots[0].nbytes, itemsize)):
            number = window % len(slots)
            yield from self._wait_for(number)
            slot = slots[number]
            for first, last in chunks.split(0, len(placed)):  # each task's images copied just before it goes
                entries = []
                for offset, image in placed[first:last]:
                    dtype = cast or image.dtype
                    if cast is None and image.nbytes < _PLACE_BELOW_BYTES:
                        place(slot.buffer, offset, image)
                    else:
                        np.copyto(slot.array(image.shape, dtype, offset), image, casting="unsafe")
                    entries.append((offset, image.shape, dtype.str))
                index = request.start + lo + first
                task = Task(
                    next(self._ids),
                    packed_source(slot.kind, slot.locator, entries),
                    0,
                    last - first,
                    index,
                    job.for_images(index, index + last - first),
                )
                yield self._sent_from(number, task)

    def _wait_for(self, number: int) -> Iterator[Wait]:
        if self._outstanding[number]:
            yield Wait(lambda: self._outstanding[number] == 0)

    def _sent_from(self, number: int, task: Task) -> Task:
        self._slot_of[task.id] = number
        self._outstanding[number] += 1
        return task

    # -- memory -------------------------------------------------------------

    def _staging_slots(self, unit: int, total: int) -> list[Segment]:
        """Warm slots of at least ``unit`` bytes, reused across calls while big enough."""
        size = max(unit, min(total, _SLOT_BYTES))
        count = min(_SLOTS, math.ceil(total / (size // unit * unit)))
        self._slot_of.clear()
        if len(self._slots) >= count and all(s.nbytes >= size for s in self._slots[:count]):
            self._outstanding = [0] * len(self._slots)
            return self._slots[:count]
        from .segment import shm_free_bytes

        held = sum(s.nbytes for s in self._slots)
        free = shm_free_bytes()
        if free is not None and size * count > (free + held) // 2:
            # /dev/shm is small (containers often give 64 MB): use smaller windows
            size = max(unit, (free + held) // (2 * count) // unit * unit)
        self.release_slots()
        for _ in range(count):
            self._slots.append(self.new_segment(size))
        self._outstanding = [0] * count
        return self._slots[:count]

    def new_segment(self, nbytes: int) -> Segment:
        """A new segment of ``nbytes``: in /dev/shm, or in a temporary file (said once) when it lacks room."""
        from . import segment  # multiprocessing.shared_memory & co: only once shared memory is used

        free = segment.shm_free_bytes()
        if free is None or nbytes <= free // 2:
            with contextlib.suppress(OSError):
                return segment.Segment.create(nbytes)
        if not self._warned_disk:
            self._warned_disk = True
            _warn_caller(
                f"shmsave: /dev/shm has {0 if free is None else free // _MB} MB free, too little for "
                f"{nbytes // _MB + 1} MB; staging through a temporary file instead (slower). "
                "Give the container more shared memory (docker run --shm-size=1g) to avoid this."
            )
        return segment.Segment.create(nbytes, on_disk=True)

    def release_slots(self) -> None:
        while self._slots:
            slot = self._slots.pop()
            self._forget(slot.locator)
            slot.release()

    def release(self) -> None:
        """Free every slot and buffer (arrays from ``empty`` stay readable in this process)."""
        self.release_slots()
        for key in list(self._buffers):
            _release_buffer(self._buffers, key)

    def drop_inherited(self) -> None:
        """In a forked child: forget the parent's memory without releasing it (segment.py disowns it)."""
        self._slots.clear()
        self._buffers.clear()
        self._outstanding.clear()
        self._slot_of.clear()


def _release_buffer(buffers: dict, key: int, forget: Callable[[str], None] | None = None) -> None:
    block = buffers.pop(key, None)
    if block is not None:
        if forget is not None:
            forget(block.locator)
        block.release()


def _pack(images: list, capacity: int, itemsize: int):
    """Yield ``(first_index, [(offset, image), ...])`` windows that fit in ``capacity`` bytes
    (each image staged with ``itemsize`` bytes per value)."""
    placed, used, first = [], 0, 0
    for i, image in enumerate(images):
        size = aligned(image.size * itemsize)
        if placed and used + size > capacity:
            yield first, placed
            placed, used, first = [], 0, i
        placed.append((used, image))
        used += size
    if placed:
        yield first, placed


def _warn_caller(message: str) -> None:
    """Warn (UserWarning: shown by default) pointing at the first frame outside shmsave."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 2  # level 1 is this function
    while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == package:
        frame, level = frame.f_back, level + 1
    warnings.warn(message, UserWarning, stacklevel=level)
