"""A Writer's worker processes and shared memory, made on first need.

``pool.py`` (subprocess, sockets, multiprocessing), ``_staging.py`` and
``segment.py`` (shared memory), ``_ring.py`` and ``_hub.py`` (streams) are
imported only when a call needs them: a script whose call runs inline or on
threads never pays for them (~10 ms of a one-shot call's imports).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ._hub import Hub
    from ._ring import RingStore
    from ._staging import Stager
    from .pool import Pool
    from .request import Request


class Processes:
    """A Writer's worker processes and shared memory, made on first need.

    ``pool.py`` (subprocess, sockets, multiprocessing) and ``_staging.py`` /
    ``segment.py`` are imported only then: a script whose call runs inline or
    on threads never pays for them (~10 ms of a one-shot call's imports).
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: Pool | None = None
        self._stager: Stager | None = None
        self._rings: RingStore | None = None
        self._hub: Hub | None = None

    def rings(self) -> RingStore:
        """The shared-memory rings of streams (``_ring.py``)."""
        if self._rings is None:
            from ._ring import RingStore

            self._rings = RingStore(self.stager().new_segment, self.forget)
        return self._rings

    def hub(self) -> Hub:
        """The thread that dispatches streams' tasks to the workers (``_hub.py``)."""
        if self._hub is None:
            from ._hub import Hub

            self._hub = Hub(self.pool())
        return self._hub

    def streaming(self) -> bool:
        """Whether the hub owns the workers (a stream is open)."""
        return self._hub is not None and self._hub.active

    def settle_streams(self) -> None:
        """If no stream is open, wait until the hub has let the workers go."""
        if self._hub is not None:
            self._hub.settle()

    def close_streams(self) -> None:
        if self._hub is not None:
            self._hub.close_streams()

    def stager(self) -> Stager:
        if self._stager is None:
            from ._staging import Stager

            self._stager = Stager(self.forget)
        return self._stager

    def source_kind(self, request: Request) -> str:
        """Where the request's pixels are (``_plan.SOURCE_KINDS``)."""
        if self._stager is not None:
            return self._stager.source_kind(request)
        if request.stack is None:
            return "list"
        return "file" if isinstance(request.stack, np.memmap) and request.stack.filename else "array"

    def pool(self) -> Pool:
        if self._pool is None:
            from .pool import Pool

            self._pool = Pool(self.workers)
        return self._pool

    def ready(self) -> bool:
        return self._pool is not None and self._pool.ready()

    @property
    def pids(self) -> list[int]:
        return [] if self._pool is None else self._pool.pids

    def forget(self, locator: str) -> None:
        """Tell the workers, if any, to unmap a released segment."""
        if self._pool is not None:
            self._pool.forget(locator)

    def close(self) -> None:
        """Stop the hub and the workers and free the shared memory, each step even if the one
        before is interrupted (a Ctrl-C while a worker finishes must not leave a segment in /dev/shm)."""
        steps = [part for part in (self._hub and self._hub.stop, self._pool and self._pool.close) if part]
        steps += [part.release for part in (self._stager, self._rings) if part is not None]
        _run_all(steps)

    def drop_inherited(self) -> None:
        """In a forked child: the parent's pool and memory stay the parent's (pool.py and
        segment.py drop our hold on them)."""
        self._pool = None
        for part in (self._stager, self._rings, self._hub):
            if part is not None:
                part.drop_inherited()


def _run_all(steps: list) -> None:
    """Call every step in order; the first exception is raised once all have run."""
    if not steps:
        return
    try:
        steps[0]()
    finally:
        _run_all(steps[1:])
