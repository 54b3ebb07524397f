"""The one error family of shmsave.

    ShmsaveError
    ├── InvalidRequest(ValueError)   bad input; raised before anything is written
    ├── WriterClosed(RuntimeError)   the Writer was closed
    ├── StreamClosed(RuntimeError)   a stream was written after it closed
    ├── WriteFailed(OSError)         one image could not be encoded or written
    ├── WorkerDied(RuntimeError)     a worker process ended in the middle of a slice
    ├── WorkerFailed(RuntimeError)   an unexpected exception while writing a slice
    └── WriteTimedOut(TimeoutError)  a worker made no progress for ``timeout`` seconds

The last four carry the call's ``report`` (every image written, every failure)
when they end a call.
"""

from __future__ import annotations

import errno as _errno
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .report import Report


class ShmsaveError(Exception):
    """Base class of every error shmsave raises on purpose."""


class InvalidRequest(ShmsaveError, ValueError):
    """The request cannot be carried out as given; nothing was written."""


class WriterClosed(ShmsaveError, RuntimeError):
    """The Writer was used after ``close()``."""

    def __init__(self) -> None:
        super().__init__("this Writer is closed; create a new shmsave.Writer() or use shmsave.save()")


class StreamClosed(ShmsaveError, RuntimeError):
    """A stream was written after it was closed (or in a forked child of the process that opened it)."""


class WriteFailed(ShmsaveError, OSError):
    """Image ``index`` could not be written to ``path``.

    ``errno`` is the operating system's error number (``None`` when encoding
    failed). Files reported written before this error are complete.
    """

    report: Report | None = None  # the call's Report, when this error ended a call

    def __init__(self, index: int, path: str, message: str, errno: int | None = None) -> None:
        OSError.__init__(self, errno, f"image {index} -> {path}: {message}")
        self.index = index
        self.path = path
        self.filename = path
        self.message = message  # what went wrong, without the index and path

    def __str__(self) -> str:
        return self.strerror

    def __reduce__(self):  # the report travels too (e.g. from a Dask worker to the client)
        return (WriteFailed, (self.index, self.path, self.message, self.errno), {"report": self.report})


def describe_oserror(error: OSError) -> str:
    """A one-line description of an OS error with a hint when the cause is common."""
    name = _errno.errorcode.get(error.errno, "")
    text = f"{name}: {error.strerror or error}" if name else str(error)
    hints = {
        _errno.ENOSPC: "the disk is full; free space or write elsewhere",
        _errno.EDQUOT: "the disk quota is exceeded",
        _errno.EROFS: "the file system is read-only",
        _errno.EACCES: "check the permissions of the file and its folder",
        _errno.EPERM: "check the permissions of the file and its folder",
        _errno.EISDIR: "a folder already has this name",
        _errno.ENOTDIR: "a part of the path is a file, not a folder",
    }
    hint = hints.get(error.errno)
    return f"{text} ({hint})" if hint else text


class WorkerDied(ShmsaveError, RuntimeError):
    """A worker process ended while it held images ``start`` to ``end - 1``.

    The Writer replaces the worker; later calls work. Images of that slice may
    or may not have been written completely (never partially: files are
    renamed into place only once whole); rerun with ``overwrite=False``.
    """

    report: Report | None = None  # the call's Report, when this error ended a call

    def __init__(self, exitcode: int | None, start: int, end: int) -> None:
        self.exitcode = exitcode
        self.start = start
        self.end = end
        super().__init__(
            f"a worker process {_cause(exitcode)} while writing images {start} to {end - 1}; "
            "the Writer has replaced it. Rerun with overwrite=False to write only what is missing."
        )

    def __reduce__(self):
        return (WorkerDied, (self.exitcode, self.start, self.end), {"report": self.report})


class WorkerFailed(ShmsaveError, RuntimeError):
    """An unexpected exception (not an OS or encoder error) while writing images ``start`` to ``end - 1``.

    A bug, or an input that changed under the call (a truncated ``.npy``).
    ``__cause__`` is the original exception: in a worker process, a
    ``RemoteTraceback`` holding the worker's traceback. The other workers
    keep running; with ``errors="collect"`` the images count as failed.
    """

    report: Report | None = None  # the call's Report, when this error ended a call

    def __init__(self, start: int, end: int, description: str) -> None:
        self.start = start
        self.end = end
        self.description = description
        super().__init__(f"writing images {start} to {end - 1} failed unexpectedly: {description}")

    def __reduce__(self):
        return (WorkerFailed, (self.start, self.end, self.description), {"report": self.report})


class WriteTimedOut(ShmsaveError, TimeoutError):
    """A worker process wrote nothing for ``seconds`` while it held images ``start`` to ``end - 1``
    (``timeout=``): a hung mount, a stopped process, a stuck encoder. ``pid`` is None for images
    never sent: no worker had written anything for ``seconds``, and the call gave up on the rest.

    The worker was killed and replaced (later calls work); those images were not written and no
    part of them is left under any name (a worker that a hung mount keeps from dying removes
    its part when the mount answers again). ``path`` is image ``start``'s.
    """

    report: Report | None = None  # the call's Report, when this error ended a call

    def __init__(self, start: int, end: int, path: str, seconds: float, pid: int | None) -> None:
        self.start = start
        self.end = end
        self.index = start
        self.path = path
        self.filename = path
        self.seconds = seconds
        self.pid = pid
        images = f"image {start} -> {path}" if end == start + 1 else f"images {start} to {end - 1} ({path}, ...)"
        what = (
            f"worker process {pid} was killed and replaced"
            if pid is not None
            else "nothing was written in that time (a hung mount?), so these were not tried"
        )
        super().__init__(
            f"{images}: no progress for {seconds:g} s (timeout={seconds:g}); {what}, and nothing of these "
            "images is left. Rerun with overwrite=False to write only what is missing."
        )

    def __str__(self) -> str:
        return self.args[0]

    def __reduce__(self):
        return (WriteTimedOut, (self.start, self.end, self.path, self.seconds, self.pid), {"report": self.report})


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker process, as text (``WorkerFailed.__cause__``)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text}"""'


def _cause(exitcode: int | None) -> str:
    if exitcode is None:
        return "stopped answering"
    if exitcode < 0:
        import signal  # only a dead worker needs it: keep it out of a script's first call

        sig = -exitcode
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        likely = {
            signal.SIGKILL: " (killed: often the out-of-memory killer)",
            signal.SIGSEGV: " (crashed in native code)",
            signal.SIGABRT: " (aborted in native code)",
            signal.SIGBUS: " (bus error: shared memory or a mapped file ran out of space)",
        }.get(sig, "")
        return f"was ended by {name}{likely}"
    return f"exited with code {exitcode}"


__all__ = [
    "ShmsaveError",
    "InvalidRequest",
    "WriterClosed",
    "StreamClosed",
    "WriteFailed",
    "WorkerDied",
    "WorkerFailed",
    "WriteTimedOut",
    "RemoteTraceback",
    "describe_oserror",
]
