"""The messages between the parent and its workers (threads or processes).

Everything here is small and pickles by value: pixels never travel in a
message, only the name of the memory that holds them.
"""

from __future__ import annotations

from typing import NamedTuple


class Job(NamedTuple):
    """How to write every image of one request; the same for all its tasks."""

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


class Task(NamedTuple):
    """Write images ``lo:hi`` of the array that ``source`` describes, numbered from ``first``."""

    id: int
    source: tuple  # names the memory that holds the pixels (see ``_worker.images_of``), never pixels
    lo: int
    hi: int
    first: int  # the index of image ``lo``
    job: Job

    @property
    def end(self) -> int:
        """One past the index of the task's last image."""
        return self.first + self.hi - self.lo
