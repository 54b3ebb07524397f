"""The hub: one thread per Writer that dispatches the tasks of its open streams to the workers.

    Stream.write ──▶ ring + pending batch ──poke──▶ hub thread: Pool.run(tasks of every stream)
    Stream.task_done ◀──────────── Result ◀────────────────────────────┘

The thread exists while at least one stream is open. It runs ``Pool.run`` over
a source that takes a task from each stream in turn, and yields a ``Wait`` when
no stream has anything to send; producers then ``poke`` the wake-up pipe that
``Pool.run`` also waits on, so an idle hub sleeps instead of polling. A stream's
pending images are taken whenever a worker has room for a task (``Pool.run``
asks the source only then): a fast producer's batches grow while the workers
are busy, a slow producer's images go out at once. A producer looping in Python
holds the GIL, which the hub thread gets back after each of its blocking calls
only when the interpreter forces a switch (every 5 ms): after each batch it
seals, the producer sleeps until the hub is back in its wait (``catch_up``).

A stream's big images come as tasks to run ``here``, on the Writer's thread
pool (``Stream.run_here``; OpenCV releases the GIL while it encodes) instead of
through ``Pool.run``. Whoever finds one ready and a thread free sends it
(``send_here``): the stream's caller after copying it, a thread after finishing
one, or the hub thread; a stream of big images so never waits for the hub to
wake. Encoders busy at once stay within the Writer's ``workers`` (n). With no
task at the processes, the threads get up to ``_DEPTH`` x n tasks (n run, the
rest queue, as ``Pool.run`` keeps each process ``_DEPTH`` ahead); otherwise
threads and processes share the n encoders, one task each. Whatever frees an
encoder lets the next task go: a thread sends its stream's next big image or
pokes the hub, a worker's Result makes the hub look again.

While the hub runs, it alone uses the Writer's pool; ``Writer`` checks
``active`` (under its own lock, which ``open`` is called under) and writes
``save`` calls with threads meanwhile.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from multiprocessing import Pipe
from typing import TYPE_CHECKING

from ._protocol import Task, Wait
from .pool import _DEPTH, Pool

_CATCH_UP_S = 0.005  # the most a stream's caller waits for the hub thread (catch_up)

if TYPE_CHECKING:
    from ._protocol import Result
    from ._threads import Threads
    from .streaming import Stream


class Hub:
    """Dispatches the tasks of a Writer's open streams over ``pool`` from a thread of its own."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._mutex = threading.Lock()  # guards _streams, _thread, _here and the wake-up pipe
        self._threads: Threads | None = None  # the Writer's, for tasks that run here
        self._here = 0  # tasks given to the threads and not answered yet
        self._streams: list[Stream] = []
        self._owner: dict[int, Stream] = {}  # task id -> its stream; only the hub thread touches it
        self._ids = itertools.count()
        self._turn = 0
        self._thread: threading.Thread | None = None
        self._wake_read = self._wake_write = None
        self.idle = False  # the source has nothing to send and waits for a poke

    @property
    def active(self) -> bool:
        """Whether a stream is open or the hub thread runs: the hub may use the pool at any moment."""
        return self._thread is not None or bool(self._streams)

    def open(self, stream: Stream, threads: Threads, processes: bool = True) -> None:
        """Dispatch the tasks of ``stream`` from now on, those to run here on ``threads`` (the
        Writer's pool of ``workers`` threads); call with the Writer's lock held. ``processes=False``:
        the worker processes (and the hub thread that feeds them) start only when the stream
        calls ``serve``, when its first task for them comes, if ever."""
        with self._mutex:
            self._threads = threads
            self._streams.append(stream)
        if processes:
            self.serve()

    def serve(self) -> None:
        """Start the hub thread (and so the worker processes) if it does not run."""
        with self._mutex:
            if self._thread is None and self._streams:
                self._wake_read, self._wake_write = Pipe(duplex=False)
                self._thread = threading.Thread(target=self._serve, name="shmsave-stream-hub", daemon=True)
                self._thread.start()

    def settle(self) -> None:
        """With no stream open, wait for the hub thread to end (it does once its last tasks are answered)."""
        with self._mutex:
            if self._streams:
                return
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def thread_free(self) -> bool:
        """Whether a task may go to a thread now (a hint: read without the mutex)."""
        return self._here == 0

    def detach(self, stream: Stream) -> None:
        """``stream`` is closed: send nothing more of it (its answered tasks are all counted)."""
        with self._mutex:
            if stream in self._streams:
                self._streams.remove(stream)
        self.poke(always=True)

    def poke(self, always: bool = False) -> None:
        """Something may be ready to send: wake the hub if it sleeps. Cheap when it does not."""
        if self.idle or always:
            self.idle = False
            with self._mutex, contextlib.suppress(OSError, AttributeError):
                self._wake_write.send_bytes(b"")

    def close_streams(self) -> None:
        """Close every open stream (each waits for its images; errors stay in its report)."""
        with self._mutex:
            streams = list(self._streams)
        for stream in streams:
            stream.close_quietly()

    def stop(self) -> None:
        """Close every open stream and wait for the thread to end (the Writer is shutting down)."""
        self.close_streams()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def drop_inherited(self) -> None:
        """In a forked child: the parent's thread did not survive and its streams stay the parent's."""
        self._mutex = threading.Lock()
        self._streams, self._owner = [], {}
        self._thread = self._threads = None
        self._here = 0
        for end in (self._wake_read, self._wake_write):
            if end is not None:
                with contextlib.suppress(OSError):
                    end.close()  # the child's copies; the parent's stay open
        self._wake_read = self._wake_write = None
        self.idle = False

    # -- the hub thread ------------------------------------------------------

    def _serve(self) -> None:
        try:
            while True:
                self._pool.run(
                    self._tasks(),
                    self._on_result,
                    self._on_death,
                    self._on_abandon,
                    wake=self._wake_read,
                    on_partial=self._on_partial,
                    on_timeout=self._on_timeout,
                )
                with self._mutex:
                    if not self._streams:  # a stream opened since the source ended is served by a new run
                        self._end_thread()
                        return
        except BaseException as error:  # noqa: BLE001 - every stream is told, none waits forever
            with self._mutex:
                streams = list(self._streams)
                self._end_thread()
            for stream in streams:
                stream.fail(error)

    def catch_up(self) -> None:
        """Let the hub thread run (see the module): sleep once, then while it has work in hand (woken
        by a poke or a worker's answer, and not back in its wait), at most ``_CATCH_UP_S`` in all."""
        if self._thread is None:
            return
        pool = self._pool
        deadline = time.monotonic() + _CATCH_UP_S
        time.sleep(0)
        while not pool.listening and self._thread is not None and time.monotonic() < deadline:
            time.sleep(0)

    def _end_thread(self) -> None:
        self._thread = None
        for end in (self._wake_read, self._wake_write):
            with contextlib.suppress(OSError):
                end.close()
        self._wake_read = self._wake_write = None

    def _tasks(self):
        """Tasks of every open stream, in turn; a ``Wait`` while none has any; ends when none is open."""
        while True:
            self.idle = True  # before looking: a producer that adds work after the look pokes
            task = self._next_task()
            if task is not None:
                self.idle = False
                yield task
                continue
            with self._mutex:
                if not self._streams:
                    self.idle = False
                    return
            yield Wait(self._woken)

    def _woken(self) -> bool:
        return not self.idle

    def send_here(self, stream: Stream) -> None:
        """Give ``stream``'s next tasks to threads now, from the calling thread, while they run
        here and a thread is free; wake the hub when the next one is for the processes.

        Its caller calls it after a big image, a thread after each task: a stream of big images
        never waits for the hub thread (whose wake-up per image cost ~5 % on 1080p frames).
        """
        while True:
            with self._mutex:
                if not self._thread_free():
                    return  # none is for the processes either: a thread that finishes calls again
                self._here += 1
            try:
                taken = stream.take_task(self._ids, True, False)
            except Exception as error:  # noqa: BLE001 - a bug of the dispatcher: the stream is told, as by the hub
                with self._mutex:
                    self._here -= 1
                stream.fail(error)
                return
            if taken is None:
                with self._mutex:
                    self._here -= 1
                if stream.has_ready:
                    self.poke()
                return
            self._threads.run(self._run_here, stream, taken[0])

    def _thread_free(self) -> bool:
        """Whether a task may go to the threads now (call with the mutex held)."""
        sent, size = len(self._owner), self._pool.size  # tasks at the worker processes
        return self._here < (size - min(sent, size) if sent else _DEPTH * size)

    def _next_task(self) -> Task | None:
        """The next task for the worker processes; tasks to run here go to the threads meanwhile."""
        while True:
            with self._mutex:
                streams = list(self._streams)
                here_free = self._thread_free()
                self._here += here_free  # a thread reserved; given back unless a task for one is taken
                here = self._here - here_free
            workers_free = here == 0 or here + len(self._owner) < self._pool.size
            for k in range(len(streams)):
                stream = streams[(self._turn + k) % len(streams)]
                taken = stream.take_task(self._ids, here_free, workers_free)
                if taken is not None:
                    self._turn = (self._turn + k + 1) % len(streams)
                    break
            else:
                taken = None
            if taken is None or not taken[1]:
                with self._mutex:
                    self._here -= here_free
                if taken is None:
                    return None
                self._owner[taken[0].id] = stream
                return taken[0]
            self._threads.run(self._run_here, stream, taken[0])

    def _run_here(self, stream: Stream, task: Task) -> None:
        try:
            stream.run_here(task)
        finally:
            with self._mutex:
                self._here -= 1
                streams = list(self._streams)
            k = streams.index(stream) + 1 if stream in streams else 0
            for each in streams[k:] + streams[:k]:  # the next stream first: each gets its turn
                self.send_here(each)

    def _on_result(self, task: Task, result: Result) -> None:
        self._owner.pop(task.id).task_done(task, result.outcome)
        self.idle = False  # an encoder is free: a waiting task may go now

    def _on_death(self, task: Task, exitcode: int | None, pid: int) -> None:
        self._owner.pop(task.id).task_died(task, exitcode, pid)
        self.idle = False

    def _on_partial(self, task: Task, result: Result) -> None:
        self._owner[task.id].task_partial(task, result.outcome)

    def _on_timeout(self, task: Task, first_unwritten: int, pid: int) -> None:
        self._owner.pop(task.id).task_timed_out(task, first_unwritten, pid)
        self.idle = False

    def _on_abandon(self, task: Task, pid: int) -> None:
        self._owner.pop(task.id).task_abandoned(task, pid)
