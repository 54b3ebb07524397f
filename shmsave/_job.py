"""How to write the images of one request (``Job``, with ``Names`` when the template alone
does not name them) and what writing some of them did (``Outcome``).

Apart from the messages to worker processes (``_protocol.py``): a save that runs in the caller's
process needs only these, and each NamedTuple costs its first import ~0.25 ms.
"""

from typing import NamedTuple

# No ``from __future__ import annotations`` in the modules that define NamedTuples on a save's path:
# typing.NamedTuple compiles each string annotation into a ForwardRef, half as much again per class.


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
