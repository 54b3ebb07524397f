"""Planning a request: which engine writes it, and how it is cut into tasks.

Pure functions of a request's size, the pool's state and where the pixels are;
no process is started here. The figures come from docs/design.md and from the
benchmarks (benchmarks/results/full.md).
"""

import math
from _thread import allocate_lock  # what threading.Lock is; importing threading costs a first save ~1 ms
from typing import NamedTuple

from ._cpus import usable_cpus

_MB = 2**20
# Engine choice: estimated single-core seconds for a request (docs/design.md:
# ~60 us per tiny image, ~3-12 ns per pixel byte for JPEG/PNG).
_SECONDS_PER_IMAGE = 60e-6
_SECONDS_PER_BYTE = 5e-9
_INLINE_BELOW_S = 0.004  # a call to the workers costs ~1-3 ms of latency on the development VM
# Starting the workers costs ~0.4 s on the host these figures come from (2 cores:
# 10,000 tiny images take 0.65 s with the start, 0.23 s without). n workers pay it
# back once a request's single-core time W satisfies W > start + W / n. Both the
# start and the per-image estimate are CPU-bound and move together from host to
# host (a host twice as fast measured 0.14 s and ~18 us): their ratio is what counts.
_POOL_START_S = 0.4
# Big images go to threads: OpenCV releases the GIL for the whole encode, so
# threads scale like processes, and they read the caller's array where it is,
# with no copy into shared memory (benchmarks: 1080p JPEG, threads 0.22 s,
# processes 0.24 s zero-copy / 0.26 s staged, loop 0.42 s). Tiny images go to
# processes: with four GIL hand-offs per image (encode, open, write, close),
# two threads ran at 0.5-0.7x the loop on one host and swung between 0.8x and
# 1.5x within minutes on another (10,000 images), where processes held 1.9x.
# (Measured before the compiled helper made it one hand-off per image and one
# per group of files: _files.py; the thresholds here are unchanged since.)
THREADS_FROM_IMAGE_BYTES = 64 * 1024
# Tiny images on threads: the GIL serializes shmsave's Python work per image (16 % of
# it, benchmarks/results/profile_tiny.md) and the hand-offs around each encode and
# group of files, so threads top out near 4x however many cores there are, and get about
# 0.85 of a core each below that: 2 threads ran 10,000 tiny images at 1.62-1.69x the loop
# (warm, tmpfs; processes 2.03x), and 50,000 fresh at 1.7-1.8x. With the worker processes
# not yet started, a request of tiny images starts them and runs "hybrid" (threads write
# at once; each worker takes over from a thread as it finishes starting) when starting n
# processes and running at n x beats the threads: start + W / n < W / (0.85 x min(n, 4)):
# from ~62,000 tiny images on 2 cores (at 50,000, fresh: threads 0.97-1.16 s, hybrid
# 1.12-1.29 s, medians of 5-7), ~24,000 on 16. Smaller requests run on threads (from
# ~0.05 s of estimated work) or inline; a list runs on processes (it is staged window by
# window, which threads cannot share).
_THREAD_SPEEDUP_MOST = 4
_TINY_THREAD_EFFICIENCY = 0.85
# Below this estimate (~700 tiny images) threads are not paid back. A warm Writer, 2 cores, threads'
# time over inline's (medians of 21): 500 tiny images 1.02, 700 0.79, 1,000 0.90. A fresh script's
# first save shares the cores with OpenBLAS's spinning threads (README, "What a script's first call
# gets"): 1,000 tiny images there ran level (threads 0.90-1.01x inline's time, four runs of 21-31),
# and without the spinners (the command, a worker) 0.82x.
_THREADS_FROM_S = 0.05
# A task is about this much work; small enough to balance, big enough that its
# round trip (~0.1 ms) is noise.
TASK_BYTES = 4 * _MB
TASK_IMAGES = 512
_TASK_MIN_S = 0.001
_TASKS_PER_WORKER = 2  # a task is at most 1/(2 x workers) of what is left

__all__ = [
    "ENGINES",
    "THREADS_FROM_IMAGE_BYTES",
    "Choice",
    "Chunks",
    "SharedChunks",
    "choose_engine",
    "single_core_seconds",
    "usable_cpus",
]

ENGINES = ("auto", "process", "thread", "inline", "hybrid")
SOURCE_KINDS = ("array", "shared", "file", "list")  # caller's memory, Writer.empty, np.memmap, a list


class Choice(NamedTuple):
    """The engine for one request and how many workers it uses.

    ``small``: the request runs inline or on threads only because starting
    the worker processes would not pay for it; a Writer that gets a second
    such call starts them in the background, for the calls to come.
    """

    engine: str
    workers: int
    small: bool = False


def single_core_seconds(count: int, nbytes: int) -> float:
    """What writing ``count`` images of ``nbytes`` in all would take on one core, roughly."""
    return count * _SECONDS_PER_IMAGE + nbytes * _SECONDS_PER_BYTE


def choose_engine(engine: str, workers: int, count: int, nbytes: int, source: str, *, pool_ready: bool) -> Choice:
    """The engine for a request of ``count`` images and ``nbytes`` pixel bytes.

    ``engine``: the Writer's (``"auto"`` or a forced one); ``source``: one of
    ``SOURCE_KINDS``; ``pool_ready``: the worker processes run and have
    finished starting.
    """
    if engine == "hybrid" and source == "list":
        engine = "process"  # a list is packed into shared memory window by window: processes only
    if engine != "auto":
        return Choice(engine, 1 if engine == "inline" else workers)
    seconds = single_core_seconds(count, nbytes)
    if workers == 1 or count == 1 or seconds < _INLINE_BELOW_S:
        return Choice("inline", 1)
    if nbytes >= count * THREADS_FROM_IMAGE_BYTES:
        return Choice("thread", workers)
    if pool_ready:
        return Choice("process", workers)
    threads = _TINY_THREAD_EFFICIENCY * min(workers, _THREAD_SPEEDUP_MOST)
    if _POOL_START_S + seconds / workers < seconds / threads:
        return Choice("process" if source == "list" else "hybrid", workers)
    if seconds >= _THREADS_FROM_S:
        return Choice("thread", workers, small=True)
    return Choice("inline", 1, small=True)


class Chunks:
    """Cuts a request into tasks: big ones first, shrinking toward the end (guided
    scheduling), so that all workers finish at about the same time."""

    def __init__(self, count: int, nbytes: int, workers: int) -> None:
        per_image = max(1, nbytes // max(count, 1))
        self.most = max(1, min(TASK_BYTES // per_image, TASK_IMAGES))
        seconds = single_core_seconds(count, nbytes)
        self.least = min(self.most, max(1, math.ceil(_TASK_MIN_S * count / seconds))) if seconds else 1
        self.share = workers * _TASKS_PER_WORKER
        self.left = count

    def limit(self, most: int) -> None:
        """Make no task longer than ``most`` images."""
        self.most = min(self.most, most)
        self.least = min(self.least, most)

    def split(self, lo: int, hi: int):
        """Yield ``(start, end)`` tasks covering images ``lo:hi``, the next part of the request."""
        while lo < hi:
            size = min(hi - lo, max(self.least, min(self.most, math.ceil(self.left / self.share))))
            self.left -= size
            yield lo, lo + size
            lo += size


class SharedChunks:
    """The tasks of one request shared by several takers (the threads and the worker processes'
    dispatcher of the hybrid engine): each task goes to exactly one of them.

    ``limit`` and ``split`` make it a ``Chunks`` to ``Stager.tasks``; ``take``
    serves the threads. Safe from any thread.
    """

    def __init__(self, chunks: Chunks, count: int) -> None:
        self._chunks = chunks
        self._tasks = chunks.split(0, count)
        self._lock = allocate_lock()
        self.exhausted = False  # every task is taken, or ``stop`` was called

    def take(self) -> tuple[int, int] | None:
        """The next ``(start, end)`` task, or None once there is none left."""
        with self._lock:
            if not self.exhausted:
                task = next(self._tasks, None)
                if task is not None:
                    return task
                self.exhausted = True
            return None

    def stop(self) -> None:
        """Hand out no more tasks."""
        with self._lock:
            self.exhausted = True

    def limit(self, most: int) -> None:
        with self._lock:
            self._chunks.limit(most)

    def split(self, lo: int, hi: int):
        """Yield the tasks left, as ``take`` gives them (``lo``/``hi``: the whole request)."""
        while (task := self.take()) is not None:
            yield task
