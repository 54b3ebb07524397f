"""A pool of long-lived worker processes fed with task descriptors.

    Stager ──Task──▶ Pool.run ──socket──▶ worker: map pixels, encode, write
       ▲                │                     │
       └──on_result─────┴◀──────Result────────┘

Stager (``_staging.py``): puts pixels in shared memory (or points at a
    segment or file already there) and yields ``Task``s (``_protocol.py``);
    a task's source names the memory, never holds pixels. It may yield a
    ``Wait`` instead: nothing more is sent until a slot is free again.
Pool.run: keeps each worker ``_DEPTH`` tasks ahead, so a worker never waits
    for the parent's round trip. It blocks only in ``connection.wait`` on the
    workers' sockets, which also report a worker's death at once (EOF).
worker: ``shmsave._worker.main`` in its own interpreter (``python -c``); it
    imports only shmsave, so it works under scripts without a ``__main__``
    guard, REPLs, notebooks and threads, and never forks the caller.
results: ``Result(task_id, Outcome)``; a worker says ``Ready(pid)`` once started.

A dead worker's tasks go to ``on_death``; the worker is replaced at once. A task
with a timeout (``Job.timeout``) whose worker sends nothing for that long goes to
``on_timeout``: the worker is killed and replaced, and the tasks queued behind it
go to the other workers.

A forked child never talks to its parent's workers: at the fork it drops its
copies of their sockets (``_after_fork_in_child``), and its Pools start workers
of their own on first use.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from multiprocessing.connection import Connection, wait

from ._protocol import Forget, Ready, Result, Wait

_DEPTH = 2  # tasks queued per worker: one running, one ready
_STOP_TIMEOUT_S = 5.0
_KILL_GRACE_S = 0.5  # a timed-out worker's time to remove its partial file after SIGTERM, before SIGKILL
_START_S = 10.0  # a starting worker's allowance before its first task's timeout counts (imports ~0.2 s)
_REAP_WAIT_S = 0.2  # then a process killed in uninterruptible sleep (a hung mount) is reaped later
_WORKER_MAIN = "import sys; from shmsave._worker import main; main(sys.argv[1:])"
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Worker:
    """One worker process and the parent's end of its socket."""

    def __init__(self) -> None:
        parent_end, child_end = socket.socketpair()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_PARENT, env.get("PYTHONPATH")]))
        # Workers do no linear algebra: without this, numpy's and OpenCV's OpenBLAS would each start a
        # thread per core in every worker, spinning ~0.1 s while it starts (README, "How it works").
        env.setdefault("OPENBLAS_NUM_THREADS", "1")
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _WORKER_MAIN, str(child_end.fileno()), str(os.getpid())],
                pass_fds=[child_end.fileno()],
                env=env,
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            parent_end.close()
            raise
        finally:
            child_end.close()
        self.conn = Connection(parent_end.detach())
        self.tasks: collections.deque = collections.deque()
        self.ready = False  # it has imported everything and said so
        self.heard = 0.0  # time.monotonic() when it last made progress (or was given work while idle)
        self.done = 0  # images of its first task that partial results reported finished

    def is_ready(self) -> bool:
        """Whether the worker has finished starting (never blocks)."""
        if not self.ready:
            try:
                if self.conn.poll(0) and isinstance(self.conn.recv(), Ready):
                    self.ready = True
            except (EOFError, OSError):  # it died: run() replaces it
                pass
        return self.ready

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        """End the process now and reap it (the last resort of an interrupted close)."""
        self.conn.close()
        with contextlib.suppress(OSError):
            self.process.kill()
        self.process.wait()

    def signal(self, sig: int) -> None:
        with contextlib.suppress(OSError):
            self.process.send_signal(sig)

    def stop(self, graceful: bool) -> int | None:
        """End the process (asking first when ``graceful``) and return its exit code."""
        if graceful:
            with contextlib.suppress(OSError):
                self.conn.send(None)
        else:
            with contextlib.suppress(OSError):
                self.process.send_signal(signal.SIGTERM)
        self.conn.close()
        try:
            return self.process.wait(_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


class Pool:
    """``size`` worker processes, started on first use and reused for every run."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._workers: list[_Worker] = []
        self.listening = False  # run() waits for the workers' answers (or its wake pipe) now
        self._forgotten: collections.deque[str] = collections.deque()
        _pools.add(self)

    def _stalled(self) -> list[_Worker]:
        """Busy workers whose first task has a timeout and that made no progress for that long."""
        now = time.monotonic()
        return [w for w in self._workers if w.tasks and _timeout(w) is not None and now > _stalls_at(w)]

    def _wait_s(self) -> float | None:
        """How long ``run`` may wait before a busy worker's first task times out; None: forever."""
        ends = [_stalls_at(w) for w in self._workers if w.tasks and _timeout(w) is not None]
        return None if not ends else max(0.0, min(ends) - time.monotonic())

    def _time_out(self, stalled: list[_Worker], on_timeout, retry: collections.deque) -> bool:
        """Kill and replace stalled workers, all at once; each one's first task goes to
        ``on_timeout(task, first_unwritten, pid)``, the tasks queued behind it (never started) to
        ``retry``. False if on_timeout said stop."""
        _kill_together(stalled)
        go_on = True
        for worker in stalled:
            task, *queued = worker.tasks
            self._workers[self._workers.index(worker)] = _Worker()
            retry.extend((queued_task, worker.pid) for queued_task in queued)
            go_on = on_timeout(task, task.first + worker.done, worker.pid) is not False and go_on
        return go_on

    def _drop_inherited(self) -> None:
        """In a forked child: forget the parent's workers without a word to them."""
        workers, self._workers = self._workers, []
        for worker in workers:
            with contextlib.suppress(OSError):
                worker.conn.close()  # our copy of the socket; the parent's stays open
        self._forgotten.clear()

    def forget(self, locator: str) -> None:
        """Tell the workers, before their next task, to unmap a released segment.

        Safe from any thread and from finalizers: it only queues the name.
        """
        self._forgotten.append(locator)

    def _send_forgotten(self) -> None:
        while self._forgotten:
            message = Forget(self._forgotten.popleft())
            for worker in self._workers:
                with contextlib.suppress(OSError):  # a dead worker is replaced when next sent a task
                    worker.conn.send(message)

    def wait_ready(self) -> None:
        """Start the workers and block until each has finished starting."""
        self.start()
        for worker in self._workers:
            while not worker.ready:
                message = worker.conn.recv()  # EOFError if it died while starting
                worker.ready = isinstance(message, Ready)

    def ready(self) -> bool:
        """Whether workers run and have finished starting (they import for ~0.2 s); never blocks."""
        return bool(self._workers) and all(worker.is_ready() for worker in self._workers)

    @property
    def pids(self) -> list[int]:
        return [worker.pid for worker in self._workers]

    def start(self) -> None:
        """Start missing workers; they import in parallel and need not be waited for."""
        if not self._workers:
            self._forgotten.clear()  # new workers have mapped nothing
        while len(self._workers) < self.size:
            self._workers.append(_Worker())

    def run(
        self,
        source,
        on_result,
        on_death,
        on_abandon,
        wake: Connection | None = None,
        *,
        ready_only: bool = False,
        finished=None,
        on_partial=None,
        on_timeout=None,
        give_up: bool = False,
    ) -> None:
        """Send every task of the iterator ``source`` to a worker; return when all are answered.

        ``on_result(task, result)`` may return False to stop taking tasks from
        ``source`` (in-flight tasks are still answered). ``on_death(task,
        exitcode, pid)`` receives each task of a worker that died.  If run is
        interrupted (KeyboardInterrupt, any exception) the workers are
        stopped, ``on_abandon(task, pid)`` receives each unanswered task, and
        the exception propagates.

        ``wake``: the read end of a pipe that whoever makes a waiting source's
        ``Wait`` ready writes to. Run then blocks on it together with the
        workers (instead of polling ``ready()`` while no worker is busy), and
        reads and discards what arrives on it.

        ``ready_only``: send tasks only to workers that have finished starting
        (the hybrid engine: threads write meanwhile, taking from the same
        tasks). ``finished()``: whether the source has nothing left for the
        workers although it is not exhausted (threads took the rest); checked
        when no worker is busy and on each ``wake``.

        ``on_partial(task, result)``: the images a task with a timeout finished
        so far (it is not answered yet). ``on_timeout(task, first_unwritten,
        pid)``: its worker sent nothing for ``task.job.timeout`` seconds and was
        killed; return False to stop taking tasks, as ``on_result``. Both are
        needed where tasks have a timeout. Workers that stall together are
        killed together, and the call does not wait for one that cannot die yet
        (uninterruptible sleep on a hung mount: see ``after_exit``).

        ``give_up``: once no worker has finished an image for a whole timeout (a
        hung target rather than one stuck worker) while none idles, every busy
        worker is timed out and the tasks not started yet go to
        ``on_timeout(task, task.first, None)`` unsent, instead of stalling new
        workers one timeout at a time. A worker idle at a stall had nothing to
        show progress with: the stalled worker's queued tasks are retried (on
        a hung target they stall once more, one timeout later, and fail then).
        """
        self.start()
        for worker in [w for w in self._workers if w.process.poll() is not None]:
            self._replace(worker, on_death)  # it died while idle (kill, OOM killer): no task was lost
        source = iter(source)
        waiting = None
        exhausted = False
        retry: collections.deque = collections.deque()  # (task, pid): queued behind a timed-out task
        progress_at = time.monotonic()  # when a worker last finished an image of this run, or got ready
        gave_up = False  # nothing progressed for a whole timeout: the rest fails unsent
        try:
            while True:
                while retry or (not exhausted and (waiting is None or waiting.ready())):
                    takers = [w for w in self._workers if w.ready] if ready_only else self._workers
                    if not takers:
                        break
                    worker = min(takers, key=lambda w: len(w.tasks))
                    if len(worker.tasks) >= _DEPTH:
                        break
                    if retry:
                        item = retry.popleft()[0]
                    else:
                        waiting = None
                        item = next(source, None)
                    if item is None:
                        exhausted = True
                    elif isinstance(item, Wait):
                        waiting = item
                    elif gave_up:
                        if on_timeout(item, item.first, None) is False:
                            exhausted = True
                    else:
                        self._send_forgotten()
                        if not worker.tasks:
                            worker.heard, worker.done = time.monotonic(), 0
                        worker.tasks.append(item)
                        try:
                            worker.conn.send(item)
                        except OSError:  # it died since we last heard from it
                            if not self._replace(worker, on_death):
                                exhausted = True
                busy = [w for w in self._workers if w.tasks]
                if not busy:
                    if (exhausted and not retry) or (finished is not None and waiting is None and finished()):
                        return
                    if wake is None and not ready_only:
                        continue
                listening = [w.conn for w in busy]
                if ready_only:
                    listening += [w.conn for w in self._workers if not w.ready and not w.tasks]
                if wake is not None and not exhausted:
                    listening.append(wake)
                self.listening = True
                ready = wait(listening, self._wait_s())
                self.listening = False
                for conn in ready:
                    if conn is wake:
                        while wake.poll():
                            wake.recv_bytes()
                        continue
                    worker = next(w for w in self._workers if w.conn is conn)
                    try:
                        message = conn.recv()
                    except (EOFError, OSError):
                        if not self._replace(worker, on_death):
                            exhausted = True
                        continue
                    worker.heard = progress_at = time.monotonic()  # a worker ready is progress too
                    if isinstance(message, Ready):
                        worker.ready = True
                        continue
                    if isinstance(message, Result) and message.partial:
                        worker.done += message.outcome.finished
                        on_partial(worker.tasks[0], message)
                        continue
                    worker.done = 0
                    if on_result(worker.tasks.popleft(), message) is False:
                        exhausted = True
                stalled = self._stalled()
                if stalled:
                    if (
                        give_up
                        and all(w.tasks for w in self._workers)  # one idle: the queued tasks can show the target works
                        and time.monotonic() - progress_at >= _timeout(stalled[0])
                    ):
                        gave_up = True  # no worker wrote anything meanwhile: a hung target, not one worker
                        stalled = list(self._workers)  # every one has tasks (above)
                    if not self._time_out(stalled, on_timeout, retry):
                        exhausted = True
        except BaseException:
            self.terminate(on_abandon)
            for task, pid in retry:
                if on_abandon is not None:
                    on_abandon(task, pid)
            raise

    def ready_count(self) -> int:
        """How many workers have finished starting (as ``run`` last heard; never blocks)."""
        return sum(worker.ready for worker in self._workers)

    def _replace(self, worker: _Worker, on_death) -> bool:
        """Start a new worker in place of a dead one; False if ``on_death`` said stop."""
        exitcode = worker.stop(graceful=False)
        self._workers[self._workers.index(worker)] = _Worker()
        go_on = True
        for task in worker.tasks:
            go_on = on_death(task, exitcode, worker.pid) is not False and go_on
        return go_on

    def terminate(self, on_abandon=None) -> None:
        """Stop every worker now (SIGTERM; they remove their partial files)."""
        workers, self._workers = self._workers, []
        for worker in workers:
            with contextlib.suppress(OSError):
                worker.process.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.stop(graceful=False)
            if on_abandon is not None:
                for task in worker.tasks:
                    on_abandon(task, worker.pid)

    def close(self) -> None:
        """Ask every worker to exit after its current task, and wait for it; interrupted (Ctrl-C),
        kill the workers not yet gone before raising, so that none outlives the Writer."""
        workers, self._workers = self._workers, []
        for worker in workers:
            with contextlib.suppress(OSError):
                worker.conn.send(None)
        try:
            for worker in workers:
                worker.stop(graceful=True)
        except BaseException:
            for worker in workers:
                worker.kill()
            raise


def _timeout(worker: _Worker) -> float | None:
    return worker.tasks[0].job.timeout


def _stalls_at(worker: _Worker) -> float:
    """When a busy worker's first task times out: ``timeout`` after its last progress; a worker still
    starting (its Ready resets the clock) gets ``_START_S`` more, so a loaded machine's slow
    start-up is not a stall."""
    return worker.heard + _timeout(worker) + (0.0 if worker.ready else _START_S)


def _kill_together(workers: list[_Worker]) -> None:
    """End workers that stopped making progress: SIGTERM (each removes its partial file), SIGKILL
    after one short grace for all (a stopped process too). One that cannot die yet (uninterruptible
    sleep: a write to a hung mount) is left to a reaper thread; nobody waits for it."""
    for worker in workers:
        worker.conn.close()
        worker.signal(signal.SIGTERM)
    for sig, wait_s in ((signal.SIGKILL, _KILL_GRACE_S), (None, _REAP_WAIT_S)):
        deadline = time.monotonic() + wait_s
        while any(w.process.poll() is None for w in workers) and time.monotonic() < deadline:
            time.sleep(0.01)
        for worker in workers:
            if worker.process.poll() is None and sig is not None:
                worker.signal(sig)
    for worker in workers:
        if worker.process.poll() is None:
            _unreaped[worker.pid] = worker.process


def after_exit(pid: int, action) -> None:
    """Run ``action()`` once the killed worker ``pid`` is gone: now if it is, else on a thread that
    reaps it when its system call returns (a hung mount thawed), so that the partial files it may
    still be writing are removed after its last write, and the caller does not wait for that."""
    process = _unreaped.get(pid)
    if process is None:
        action()
        return

    def reap_then_act() -> None:
        process.wait()
        _unreaped.pop(pid, None)
        action()

    with contextlib.suppress(RuntimeError):  # no new threads at interpreter shutdown: left to the next run
        threading.Thread(target=reap_then_act, name=f"shmsave-reap-{pid}", daemon=True).start()


_pools: weakref.WeakSet[Pool] = weakref.WeakSet()
_unreaped: dict[int, subprocess.Popen] = {}  # killed workers that could not die yet (``_kill_together``)


def _after_fork_in_child() -> None:
    for pool in list(_pools):
        pool._drop_inherited()


os.register_at_fork(after_in_child=_after_fork_in_child)
