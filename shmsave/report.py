"""What a save returns (``Report``, ``Failure``), and the tally that builds it from task outcomes."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import FrozenInstanceError, dataclass
from typing import TYPE_CHECKING, Any

from .errors import InvalidRequest, WorkerDied, WorkerFailed, WriteFailed, WriteTimedOut
from .naming import job_path

if TYPE_CHECKING:
    from ._job import Job, Outcome
    from ._protocol import Task
    from .request import Request


class _Frozen:
    """A frozen dataclass's methods, written once: ``@dataclass(frozen=True)`` makes each of them
    with ``exec`` for every class (~1 ms a class, at a script's first save)."""

    __slots__ = ()
    __dataclass_fields__: dict[str, Any]

    def _values(self) -> tuple:
        return tuple(getattr(self, name) for name in self.__dataclass_fields__)

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__dataclass_fields__)
        return f"{type(self).__qualname__}({fields})"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._values())

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")


@dataclass(init=False, repr=False, eq=False)  # frozen: _Frozen
class Failure(_Frozen):
    """One image that was not written: its index, its path and why."""

    index: int
    path: str
    message: str
    errno: int | None = None

    def __init__(self, index: int, path: str, message: str, errno: int | None = None) -> None:
        object.__setattr__(self, "__dict__", {"index": index, "path": path, "message": message, "errno": errno})


@dataclass(init=False, repr=False, eq=False)  # frozen: _Frozen
class Report(_Frozen):
    """The outcome of one save: images written, bytes, wall seconds, and failures.

    ``skipped`` counts existing files left alone (``overwrite=False``);
    ``engine`` and ``workers`` say how the images were written, ``encoder``
    what made their bytes: ``"opencv"`` (``cv2.imencode``) or ``"fast"``.
    """

    count: int
    bytes: int
    seconds: float
    failed: tuple[Failure, ...] = ()
    skipped: int = 0
    engine: str = "inline"
    workers: int = 1
    encoder: str = "opencv"

    def __init__(
        self,
        count: int,
        bytes: int,  # noqa: A002 - the field's name
        seconds: float,
        failed: tuple[Failure, ...] = (),
        skipped: int = 0,
        engine: str = "inline",
        workers: int = 1,
        encoder: str = "opencv",
    ) -> None:
        values = {"count": count, "bytes": bytes, "seconds": seconds, "failed": failed, "skipped": skipped}
        values.update(engine=engine, workers=workers, encoder=encoder)
        object.__setattr__(self, "__dict__", values)

    @property
    def images_per_second(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0

    @property
    def ok(self) -> bool:
        """True when no image failed."""
        return not self.failed

    def __str__(self) -> str:
        text = (
            f"{self.count} images, {self.bytes / 1e6:.1f} MB in {self.seconds:.2f} s "
            f"({self.images_per_second:.0f} images/s, {self.engine} x{self.workers}"
            + ("" if self.encoder == "opencv" else f", {self.encoder} encoder")
            + ")"
        )
        if self.skipped:
            text += f", {self.skipped} skipped (already there)"
        if self.failed:
            text += f", {len(self.failed)} failed"
        return text


Progress = Any  # False/None, True (a tqdm bar), a callable told n, or a bar of the caller's with update(n)


def new_bar(total: int | None, description: str | None = None):
    """A tqdm bar on stderr that follows the terminal's width, and is 80 columns wide where the
    terminal says it has none (a pty of 0x0, as some runners and ``docker exec`` make: tqdm would
    draw nothing)."""
    import shutil
    import sys

    from tqdm import tqdm  # imported only when a bar is shown: it costs ~0.1 s

    try:
        columns = os.get_terminal_size(sys.stderr.fileno()).columns
    except (OSError, ValueError, AttributeError):
        columns = shutil.get_terminal_size().columns
    width = {} if columns else {"ncols": 80, "nrows": 20}
    return tqdm(total=total, desc=description, unit="img", dynamic_ncols=not width, file=sys.stderr, **width)


def check_progress(progress: Progress) -> None:
    """Refuse a ``progress`` that is not one of the kinds ``Tally`` takes (before anything is written)."""
    if (
        progress is None
        or isinstance(progress, bool)
        or callable(progress)
        or callable(getattr(progress, "update", None))
    ):
        return
    raise InvalidRequest(
        f"progress must be True (a tqdm bar), False, a callable told progress(n) as n more images finish, "
        f"or a bar of yours with an update(n) method such as a tqdm instance; got {progress!r}"
    )


class Tally:
    """Adds up the outcomes of a request's tasks into a Report; remembers the first error."""

    def __init__(self, request: Request, progress: Progress) -> None:
        self.request = request
        self.path_of: Callable[[int], str] = request.path  # a stream with per-image paths looks them up
        self.count = self.bytes = self.skipped = 0
        self.failed: list[Failure] = []
        self.errors: list[WorkerDied | WorkerFailed | WriteTimedOut] = []  # failures of whole tasks, not of one image
        self.bar = None
        self.tick: Callable[[int], None] | None = progress if callable(progress) else None
        if self.tick is None and not isinstance(progress, bool) and progress is not None:
            self.tick = progress.update  # the caller's bar (a tqdm instance): the caller closes it
        elif progress and self.tick is None:
            self.bar = new_bar(request.count or None)
            self.tick = self.bar.update

    def add(self, outcome: Outcome, end: int) -> bool:
        """Count one task's outcome (``end``: one past its last index); False means stop."""
        self.count += outcome.written
        self.bytes += outcome.bytes
        self.skipped += outcome.skipped
        self.failed.extend(Failure(*failure) for failure in outcome.failures)
        finished = outcome.finished
        if outcome.unexpected is not None:
            index, description, cause = outcome.unexpected
            error = WorkerFailed(index, end, description)
            error.__cause__ = cause
            self.errors.append(error)
            self.failed.extend(
                Failure(i, self.path_of(i), f"unexpected error: {description}") for i in range(index, end)
            )
            finished += end - index
        if self.tick is not None:
            self.tick(finished)
        return self.request.collect or not (outcome.failures or outcome.unexpected)

    def refused(self, error: WriteFailed | WriteTimedOut) -> None:
        """No image can be written (``error``: the folder they share refused, or did not answer in
        time): each is a failure."""
        count = self.request.count
        message, code = (error.message, error.errno) if isinstance(error, WriteFailed) else (str(error), None)
        first = self.request.start
        self.failed.extend(Failure(i, self.path_of(i), message, code) for i in range(first, first + count))
        if self.tick is not None:
            self.tick(count)

    def lost(self, ranges: list[tuple[int, int]], error: WorkerFailed) -> None:
        """The images of ``ranges`` (``(first, end)`` pairs) will never be known written: ``error`` says why."""
        self.errors.append(error)
        for first, end in ranges:
            self.failed.extend(Failure(i, self.path_of(i), error.description) for i in range(first, end))
            if self.tick is not None:
                self.tick(end - first)

    def died(self, task: Task, exitcode: int | None) -> bool:
        """Count the images of a task whose worker died; False means stop."""
        error = WorkerDied(exitcode, task.first, task.end)
        self.errors.append(error)
        self.failed.extend(
            Failure(index, job_path(task.job, index), str(error)) for index in range(task.first, task.end)
        )
        if self.tick is not None:
            self.tick(task.end - task.first)
        return self.request.collect

    def timed_out(self, first: int, end: int, pid: int | None, job: Job | None = None) -> bool:
        """Count images ``first:end`` (of a task of ``job``), left unwritten by a worker killed for making
        no progress (``timeout``); False means stop."""
        path_of = self.path_of if job is None else functools.partial(job_path, job)
        error = WriteTimedOut(first, end, path_of(first), self.request.timeout, pid)
        self.errors.append(error)
        message = f"no progress for {error.seconds:g} s (timeout); " + (
            f"worker process {pid} was killed and replaced" if pid is not None else "not tried: nothing was written"
        )
        self.failed.extend(Failure(index, path_of(index), message) for index in range(first, end))
        if self.tick is not None:
            self.tick(end - first)
        return self.request.collect

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def report(self, seconds: float, engine: str, workers: int) -> Report:
        failed = tuple(sorted(self.failed, key=lambda f: f.index))
        return Report(
            self.count, self.bytes, seconds, failed, self.skipped, engine, workers, self.request.encoding.encoder
        )

    def raise_first_error(self, report: Report) -> None:
        """Under ``errors="raise"``, raise the first failure (by index) with ``report`` attached."""
        if self.request.collect or not report.failed:
            return
        first = report.failed[0]
        error: WriteFailed | WorkerDied | WorkerFailed | WriteTimedOut
        error = WriteFailed(first.index, first.path, first.message, first.errno)
        if self.errors:
            whole_task = min(self.errors, key=lambda e: e.start)
            if whole_task.start <= first.index:
                error = whole_task
        error.report = report
        raise error
