"""The folders of a request: made and checked writable before any image, synced when durable."""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING

from .errors import WriteFailed, WriteTimedOut, describe_oserror

if TYPE_CHECKING:
    from .request import Request


def prepare_folder(request: Request) -> None:
    """Create the folder every path shares and check it writable, or raise WriteFailed.

    So a read-only or forbidden folder fails once, before any image, instead of
    once per image. The check is ``access()`` (one syscall); only when it
    says no is an empty file created and removed, to report the real error.
    With a timeout, WriteTimedOut if that takes longer: on a hung mount even
    ``mkdir`` blocks in the kernel, so it runs on a thread left behind.
    """
    if request.template.folder is None:
        return
    if request.timeout is None:
        _prepare_folder(request)
        return
    import threading

    done = threading.Event()
    failed: list[BaseException] = []

    def prepare() -> None:
        try:
            _prepare_folder(request)
        except BaseException as error:  # noqa: BLE001 - raised again in the caller's thread
            failed.append(error)
        finally:
            done.set()

    threading.Thread(target=prepare, name="shmsave-folder", daemon=True).start()
    if not done.wait(request.timeout):
        first = request.start
        raise WriteTimedOut(first, first + max(request.count, 1), request.path(first), request.timeout, None)
    if failed:
        raise failed[0]


def _prepare_folder(request: Request) -> None:
    shown = request.template.folder
    folder = os.path.join(request.cwd, shown)
    doing = f"cannot create folder {shown!r}"
    try:
        if not os.path.isdir(folder):
            make_folders(folder, durable=request.durable)
        doing = f"cannot write in folder {shown or '.'!r}"
        if os.access(folder, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids):
            return
        probe = os.path.join(folder, f".shmsave-probe-{os.getpid()}")
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except OSError as error:
        raise WriteFailed(
            request.start, request.path(request.start), f"{doing}: {describe_oserror(error)}", error.errno
        ) from error


def make_folders(folder: str, *, durable: bool = False) -> None:
    """``os.makedirs(folder, exist_ok=True)``, but a part of the path that is a file is named as such.

    ``durable``: the folder each new one was made in is synced, so the new entries last.
    """
    made = []
    part = os.path.abspath(folder)
    while durable and not os.path.isdir(part):
        made.append(part)
        part = os.path.dirname(part)
    try:
        os.makedirs(folder, exist_ok=True)
        for new in made:
            sync_folder(os.path.dirname(new))
    except (FileExistsError, NotADirectoryError):
        part = folder
        while part and not os.path.lexists(part):
            part = os.path.dirname(part)
        if part and not os.path.isdir(part):
            raise NotADirectoryError(errno.ENOTDIR, f"{part!r} is a file, not a folder") from None
        raise


def sync_folder(folder: str) -> None:
    """``fsync`` a folder, so that the names made in it last."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
