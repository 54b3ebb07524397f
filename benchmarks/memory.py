"""Peak resident memory of this process and all its descendants, sampled in a background thread."""

from __future__ import annotations

import os
import threading

import psutil


def _child_pids(pid: int) -> list[int]:
    """Direct children of `pid` from /proc/PID/task/TID/children (cheap: no scan of all of /proc)."""
    pids = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return pids
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                pids.extend(int(p) for p in f.read().split())
        except OSError:
            pass  # thread or process gone
    return pids


_HAVE_PROC_CHILDREN = os.path.exists(f"/proc/self/task/{os.getpid()}/children")


class PeakRSS:
    """Context manager that samples the summed RSS of this process tree every `interval` seconds.

    After the block, ``peak_mb`` is the largest sum seen (MB = 10**6 bytes),
    including one sample at entry and one at exit.  Shared pages count once per
    process that maps them, so tree sums overstate memory that processes share
    (shared memory segments, copy-on-write pages after fork).
    """

    def __init__(self, interval: float = 0.01):
        self.interval = interval
        self.peak_mb = 0.0
        self._peak = 0
        self._root = psutil.Process()
        self._known: dict[int, psutil.Process] = {self._root.pid: self._root}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_until_stopped, daemon=True)

    def __enter__(self) -> PeakRSS:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self.peak_mb = self._peak / 1e6

    def _tree(self) -> list[psutil.Process]:
        """This process and all live descendants, reusing Process objects across samples."""
        if not _HAVE_PROC_CHILDREN:
            try:
                return [self._root, *self._root.children(recursive=True)]
            except psutil.Error:
                return [self._root]
        pids, todo = [], [self._root.pid]
        while todo:
            pid = todo.pop()
            pids.append(pid)
            todo.extend(_child_pids(pid))
        tree = []
        for pid in pids:
            if pid not in self._known:
                try:
                    self._known[pid] = psutil.Process(pid)
                except psutil.Error:
                    continue
            tree.append(self._known[pid])
        return tree

    def _sample(self) -> None:
        total = 0
        for process in self._tree():
            try:
                total += process.memory_info().rss
            except psutil.Error:
                pass  # exited since the tree was listed
        self._peak = max(self._peak, total)

    def _sample_until_stopped(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()
