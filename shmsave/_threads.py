"""Threads: a few threads of this process that run the calls given to them.

``concurrent.futures.ThreadPoolExecutor`` refuses new work once the interpreter
begins to exit (``RuntimeError: cannot schedule new futures after interpreter
shutdown``) and cannot be created from a thread that outlives the main thread
(``can't register atexit after shutdown``). A Writer still has work then: a
``submit`` whose script ended, a save from a thread that runs after the main
thread returned. These threads take work until they are shut down. They hand
back no Future: a call reports its own result (``concurrent.futures`` costs a
script's first save ~6 ms to import; ``settle`` fills a Future where one is promised).
"""

from __future__ import annotations

import collections
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from concurrent.futures import Future


class Threads:
    """Up to ``count`` threads named ``name``, started as calls arrive.

    ``linger=True``: the threads are daemons and wait for more work when idle
    (the Writer's encoders: a caller always waits for their results).
    ``linger=False``: a thread ends once no call is queued, and it is not a
    daemon, so the interpreter waits for queued calls before it exits, as it
    does for a ``ThreadPoolExecutor`` (``submit``: accepted images are written).
    """

    def __init__(self, count: int, name: str, *, linger: bool = True) -> None:
        self._count = count
        self._name = name
        self._linger = linger
        self._calls: collections.deque[tuple[Callable[..., Any], tuple]] = collections.deque()
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._shut = False

    def run(self, function: Callable[..., Any], *args: Any) -> None:
        """Call ``function(*args)`` on one of the threads (in this one if none can start).

        ``function`` reports its own result and errors; what it raises is only printed.
        """
        with self._cond:
            if self._shut:
                raise RuntimeError("shmsave: these threads were shut down (the Writer is closed)")
            self._calls.append((function, args))
            if self._idle:
                self._cond.notify()
            # An idle thread counts as idle until it wakes: one call per idle thread, a new
            # thread for the rest (with "idle > 0" alone, calls queued before a woken thread ran
            # all went to it, and a Writer whose first call had one task kept one thread).
            if self._idle >= len(self._calls) or len(self._threads) >= self._count:
                return
            thread = threading.Thread(
                target=self._serve, name=f"{self._name}-{len(self._threads)}", daemon=self._linger
            )
            try:
                thread.start()
            except RuntimeError:  # "can't create new thread at interpreter shutdown"
                if self._threads:  # a running thread will take the call
                    return
                self._calls.pop()  # this call, appended above under the same lock
            else:
                self._threads.append(thread)
                return
        _call(function, args)

    def shutdown(self, wait: bool = True) -> None:
        """Run what is queued, then let the threads end; with ``wait``, until they have."""
        with self._cond:
            self._shut = True
            self._cond.notify_all()
            threads = list(self._threads)
        if wait:
            for thread in threads:
                if thread is not threading.current_thread():
                    thread.join()

    def _serve(self) -> None:
        while True:
            with self._cond:
                while not self._calls:
                    if self._shut or not self._linger:
                        self._threads.remove(threading.current_thread())
                        return
                    self._idle += 1
                    self._cond.wait()
                    self._idle -= 1
                function, args = self._calls.popleft()
            _call(function, args)
            del function, args  # let the arrays of the call go before waiting for the next


def _call(function: Callable[..., Any], args: tuple) -> None:
    try:
        function(*args)
    except BaseException:  # noqa: BLE001 - a call reports its own errors; this keeps the thread serving
        sys.excepthook(*sys.exc_info())


def settle(future: Future, function: Callable[..., Any], *args: Any) -> None:
    """Run ``function(*args)`` and put its result or exception into ``future`` (if not cancelled)."""
    if not future.set_running_or_notify_cancel():
        return
    try:
        result = function(*args)
    except BaseException as error:  # noqa: BLE001 - the Future carries it to whoever waits
        future.set_exception(error)
    else:
        future.set_result(result)
