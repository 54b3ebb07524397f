"""The worker process: map a task's pixels, write them, answer with a small result.

Started by the pool as ``main([FD, PARENT_PID])`` in a fresh interpreter. It imports only shmsave
(never the caller's script), reads tasks from the socket ``FD``, maps the
pixels they point to, and answers with one small result per task. Before each
task it takes the caller's umask; paths resolve against the caller's working
folder (``Job.cwd``). It exits when told to (``None``) or when the socket
closes; in the second case its parent has died, and it unlinks the segments
that parent abandoned.
"""

from __future__ import annotations

import os
import signal
import time

import cv2

from ._files import for_another_process, unexpected_in_task, write_images
from ._protocol import Forget, Ready, Result, Source, Task, images_in

_mapped: dict[str, object] = {}  # shared-memory name -> mapping, kept across tasks (no re-faulting)
_MAPPED_MAX = 8


def images_of(source: Source, lo: int, hi: int):
    """The images ``lo:hi`` that a task's ``source`` describes, mapped read-only."""
    return images_in(_map(source.kind, source.locator), source, lo, hi)


def _map(kind: str, locator: str):
    """Map a segment once per worker (its pages stay mapped: the next task does not fault
    them in again) or a file afresh per task (it may have been rewritten since)."""
    from .segment import attach

    if kind != "shm":
        return attach(kind, locator)
    mapping = _mapped.get(locator)
    if mapping is None:
        if len(_mapped) >= _MAPPED_MAX:
            del _mapped[next(iter(_mapped))]
        mapping = _mapped[locator] = attach(kind, locator)
    return mapping


def _serve(conn, parent_pid: int) -> None:
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):  # the socket closed without a word: the parent is dead or dying
            _clean_up_after(parent_pid)
            return
        if task is None:
            return
        if isinstance(task, Forget):  # the parent released this segment: let its memory go
            _mapped.pop(task.locator, None)
            continue
        conn.send(Result(task.id, for_another_process(_run(task, conn.send))))


def _run(task: Task, send):
    """The Outcome of ``task``; with a timeout, the images done are sent (``send``) as partial
    Results at least every quarter of it, so the parent sees progress; the last ones are returned."""
    os.umask(task.job.umask)  # this task's files get the caller's permissions
    try:
        images = images_of(task.source, task.lo, task.hi)
    except Exception as error:  # noqa: BLE001 - e.g. a .npy truncated after the call was checked
        return unexpected_in_task(task.first, error)
    if task.job.timeout is None:
        return write_images(images, task.first, task.job)
    done = 0
    while True:
        deadline = time.monotonic() + task.job.timeout / 4
        outcome = write_images(images[done:], task.first + done, task.job, deadline)
        done += outcome.finished
        if done >= len(images) or outcome.unexpected is not None or (outcome.failures and task.job.stop_on_error):
            return outcome
        send(Result(task.id, outcome, partial=True))


def _clean_up_after(parent_pid: int) -> None:
    """Unlink the segments a dead parent abandoned: nobody else will.

    Not ``os.getppid() != parent_pid``: the socket closes while the parent exits, before this
    process is given a new parent, and that test lost the race (a segment was left). The owner's
    lock decides instead: a live parent's segments are never touched.
    """
    from .segment import unlink_owned_by

    unlink_owned_by(parent_pid)


def _stop(signum, frame):
    raise SystemExit(128 + signum)


def main(argv: list[str]) -> None:
    from multiprocessing.connection import Connection

    fd, parent_pid = int(argv[0]), int(argv[1])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    signal.signal(signal.SIGTERM, _stop)
    cv2.setNumThreads(1)  # one process per core already
    conn = Connection(fd)
    from . import segment  # noqa: F401 - every task maps memory: import it before saying ready

    try:
        conn.send(Ready(os.getpid()))
        _serve(conn, parent_pid)
    except (BrokenPipeError, ConnectionResetError):  # the parent closed our socket: it died mid-task
        _clean_up_after(parent_pid)
    finally:
        conn.close()
