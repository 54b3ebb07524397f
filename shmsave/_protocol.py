"""The messages between the parent and its workers (threads or processes).

    parent ── Task(source, lo, hi, first, job) ──▶ worker        (Forget(locator) between tasks,
    parent ◀── Result(task_id, Outcome) ────────── worker         None to stop)
    parent ◀── Ready(pid) ───────────────────────── worker once it has started

Everything here is small and pickles by value: pixels never travel in a
message, only the name of the memory that holds them (a source).
"""

from collections.abc import Callable
from typing import NamedTuple

# No ``from __future__ import annotations`` in the modules that define NamedTuples on a save's path:
# typing.NamedTuple compiles each string annotation into a ForwardRef, which made this module's
# import take ~2.1 ms instead of ~1.4 ms, paid by a script's first save.


class Names(NamedTuple):
    """How a job names its images when ``Job.template`` alone does not: a path per image
    (a list of paths, per-image fields, a stream's ``write(image, path=...)``), a format per
    image (several extensions in one call), or the size of a ``{shard}`` in the template."""

    first: int  # the index of paths[0]
    paths: tuple[str, ...] = ()  # one per image from ``first``, all in ``Job.folder`` when set; (): the template
    shard_size: int = 0  # the template's {shard} is index // shard_size
    formats: tuple[tuple[str, tuple[int, ...]], ...] = ()  # (extension, params) of each; (): the Job's
    format_of: tuple[int, ...] = ()  # per image from ``first``: its number in ``formats``

    def slice(self, first: int, end: int) -> "Names":
        """The names of images ``first:end``."""
        lo, hi = first - self.first, end - self.first
        return self._replace(first=first, paths=self.paths[lo:hi], format_of=self.format_of[lo:hi])


class Job(NamedTuple):
    """How to write every image of one request; the same object for all its tasks."""

    template: str  # str.format template of each path, e.g. "out/{index:06d}.png"
    folder: str | None  # the folder every path shares, or None when it depends on the index
    fields: tuple[tuple[str, str], ...]  # the template's fields besides {index}
    extension: str  # picks the encoder, e.g. ".png"
    params: tuple[int, ...]  # cv2.IMWRITE_* flags and values
    rgb: bool  # the pixels are RGB(A): convert to OpenCV's BGR(A) first
    overwrite: bool
    stop_on_error: bool  # errors="raise": stop at the first failure
    cwd: str  # relative paths resolve here: the caller's working folder at the time of the call
    umask: int  # the caller's umask at the time of the call (worker processes adopt it)
    cast: str | None = None  # integer images whose values fit are cast to this dtype before encoding
    durable: bool = False  # fsync each file before it is named, and its folder after the task
    timeout: float | None = None  # a worker tells its progress every quarter of it; silent this long: killed
    names: Names | None = None  # per-image paths or formats, or the {shard} size; None: ``template`` names all
    encoder: str = "opencv"  # what makes each file's bytes: "opencv" (cv2.imencode) or "fast" (_fast.py)

    def for_images(self, first: int, end: int) -> "Job":
        """This job for images ``first:end`` only: a task carries the names of its own images."""
        if self.names is None or not self.names.paths:
            return self
        return self._replace(names=self.names.slice(first, end))


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


class Outcome(NamedTuple):
    """What writing one task's images did.

    ``failures``: ``(index, path, message, errno)`` per image that failed.
    ``unexpected``: ``(index, description, exception)`` when an exception that
    is not an OS or encoder error stopped the task at image ``index``; that
    image and the rest of the task were not written.
    """

    written: int
    bytes: int
    skipped: int
    failures: list[tuple[int, str, str, int | None]]
    unexpected: tuple[int, str, BaseException] | None = None

    @property
    def finished(self) -> int:
        """The images written, skipped or failed (not those an unexpected error left undone)."""
        return self.written + self.skipped + len(self.failures)


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
