"""The shared memory of streams: one fixed ring per open stream, and a segment of its own
for an image bigger than its ring.

A ``Ring`` places images one after another in its segment and frees them in the
order they were placed, whatever order their tasks finish in: a position grows
forever, byte ``p`` lives at ``p % size``, and an image never straddles the end
(the bytes before the end are skipped). Its owner (a ``Stream``) calls it under
its own lock; the ring itself does no locking.

A ``RingStore`` owns every ring and big-image segment of one Writer. A closed
stream gives its ring back warm: the next stream reuses it without reserving
memory again, and the workers keep it mapped (a fresh 64 MB ring costs a
``posix_fallocate`` here and a populated mapping in every worker).

Memory that no worker reads (a stream or an image encoded by this process's threads) is a
``PrivateBlock``: nothing of it is in /dev/shm, so nothing can outlive the process, however it ends.
"""

from __future__ import annotations

import collections
import mmap
import threading
from collections.abc import Callable

import numpy as np

from . import segment
from ._images import aligned
from .errors import InvalidRequest

_MB = 2**20
# 32 MB per worker: a 1080p frame is 6.2 MB, and each worker holds two queued tasks
# (pool._DEPTH) while the caller copies the next frames; 64 MB at least (ten such
# frames), 512 MB at most, and never more than a quarter of the free /dev/shm.
_RING_BYTES_PER_WORKER = 32 * _MB
_RING_MIN_BYTES = 64 * _MB
_RING_MAX_BYTES = 512 * _MB
_RING_FLOOR_BYTES = 1 * _MB  # what a nearly full /dev/shm still gets
_IDLE_RINGS = 2  # kept warm after their streams close: a color and a depth stream of one camera


def default_ring_bytes(workers: int) -> int:
    """The ring size of a stream when the caller names none (see the constants above)."""
    want = min(max(workers * _RING_BYTES_PER_WORKER, _RING_MIN_BYTES), _RING_MAX_BYTES)
    free = segment.shm_free_bytes()
    if free is not None:
        want = min(want, max(_RING_FLOOR_BYTES, free // 4))
    return want


def ring_bytes(buffer_bytes: int | None, workers: int) -> int:
    """The ring size for ``Writer.stream(buffer_bytes=...)``, checked and aligned."""
    if buffer_bytes is None:
        return aligned(default_ring_bytes(workers))
    if not isinstance(buffer_bytes, (int, np.integer)) or isinstance(buffer_bytes, bool) or buffer_bytes < 1:
        raise InvalidRequest(f"buffer_bytes must be a positive integer (bytes) or None, got {buffer_bytes!r}")
    return aligned(int(buffer_bytes))


class PrivateBlock:
    """Memory of this process only, with a segment's interface, for what only its threads read."""

    kind = "private"
    locator = ""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = max(int(nbytes), 1)
        self._mapping = mmap.mmap(-1, self.nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)

    @property
    def buffer(self) -> mmap.mmap:
        """The block's memory."""
        return self._mapping

    def array(self, shape, dtype, offset: int = 0) -> np.ndarray:
        return np.ndarray(shape, dtype, buffer=self._mapping, offset=offset)

    def release(self) -> None:
        """Nothing to unlink: the memory goes with the last view of it."""


def _shared(block) -> bool:
    return not isinstance(block, PrivateBlock)


class Ring:
    """Places images in ``block`` in order (``reserve``) and frees them in order (``free_to``).

    ``head`` is the position after the last image placed, ``tail`` the first
    position still in use; ``head - tail`` bytes are in use.
    """

    def __init__(self, block: segment.Segment | PrivateBlock) -> None:
        self.block = block
        self.size = block.nbytes
        self.head = self.tail = 0

    def reserve(self, nbytes: int) -> tuple[int, int] | None:
        """``(offset, end position)`` for ``nbytes`` (aligned), or None while the ring lacks room."""
        if self.head == self.tail:  # nothing in use: start at the beginning, so any image that fits fits now
            self.head = self.tail = 0
        start = self.head
        offset = start % self.size
        if offset + nbytes > self.size:  # never straddle the end: skip to the start
            start += self.size - offset
            offset = 0
        end = start + nbytes
        if end - self.tail > self.size:
            return None
        self.head = end
        return offset, end

    def give_back(self, nbytes: int, end: int) -> None:
        """Undo the last ``reserve`` (of ``nbytes``, ending at ``end``) when nothing was placed since."""
        if self.head == end:
            self.head = end - nbytes

    def free_to(self, position: int) -> None:
        """Every image placed before ``position`` is done with."""
        self.tail = max(self.tail, position)

    @property
    def empty(self) -> bool:
        return self.head == self.tail


class RingStore:
    """The stream memory of one Writer: rings lent to open streams, warm idle rings, and
    the segments of images bigger than their stream's ring.

    ``new_segment(nbytes)`` makes a segment (falling back to a file when /dev/shm
    is too small); ``forget(locator)`` tells the workers to unmap a released one.
    """

    def __init__(self, new_segment: Callable[[int], segment.Segment], forget: Callable[[str], None]) -> None:
        self._new_segment = new_segment
        self._forget = forget
        self._idle: collections.deque[segment.Segment | PrivateBlock] = collections.deque()
        self._lent: dict[int, segment.Segment | PrivateBlock] = {}
        self._lock = threading.Lock()  # streams give memory back from their callers' threads and the hub's

    def lend_ring(self, nbytes: int, shared: bool = True) -> Ring:
        """A ring of ``nbytes``: an idle one of that size if there is one, else a new one;
        ``shared=False``: in private memory, for a stream whose images only this process's threads read."""
        with self._lock:
            block = next((b for b in self._idle if b.nbytes == nbytes and _shared(b) == shared), None)
            if block is not None:
                self._idle.remove(block)
        if block is None:
            block = self._new_segment(nbytes) if shared else PrivateBlock(nbytes)
        with self._lock:
            self._lent[id(block)] = block
        return Ring(block)

    def take_back(self, ring: Ring, reusable: bool = True) -> None:
        """A stream is done with ``ring``; ``reusable=False`` when tasks may still read it."""
        with self._lock:
            block = self._lent.pop(id(ring.block), None)
            if block is None:
                return
            if not reusable:
                self._discard(block)
                return
            self._idle.append(block)
            while len(self._idle) > _IDLE_RINGS:
                self._discard(self._idle.popleft())

    def lend_segment(self, nbytes: int, shared: bool = True) -> segment.Segment | PrivateBlock:
        """A segment of its own for an image bigger than its stream's ring (private: for the threads)."""
        block = self._new_segment(nbytes) if shared else PrivateBlock(nbytes)
        with self._lock:
            self._lent[id(block)] = block
        return block

    def release_segment(self, block: segment.Segment | PrivateBlock) -> None:
        """Free a segment from ``lend_segment`` once its task is answered."""
        with self._lock:
            if self._lent.pop(id(block), None) is not None:
                self._discard(block)

    def _discard(self, block: segment.Segment | PrivateBlock) -> None:
        if block.locator:
            self._forget(block.locator)
        block.release()

    def release(self) -> None:
        """Free every ring and segment (the Writer is closing)."""
        with self._lock:
            while self._idle:
                self._discard(self._idle.popleft())
            for key in list(self._lent):
                self._discard(self._lent.pop(key))

    def drop_inherited(self) -> None:
        """In a forked child: forget the parent's memory without releasing it (segment.py disowns it)."""
        self._idle.clear()
        self._lent.clear()
        self._lock = threading.Lock()
