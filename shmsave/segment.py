"""Shared-memory segments: create, attach, release, and clean up after crashes.

A segment is a ``multiprocessing.shared_memory.SharedMemory`` named
``shmsave_<pid>_<token>``, where ``pid`` is the process that owns it. Only the
owner unlinks it. If the owner dies without unlinking (SIGKILL), its workers
notice the closed pipe and unlink ``shmsave_<pid>_*``; if they die too, the
next Writer started on the machine unlinks segments whose owner is gone.

When ``/dev/shm`` lacks room, a segment is a file in the temporary folder
instead (the same name, mapped the same way), so nothing dies of SIGBUS.

Python < 3.13 registers every SharedMemory, attached ones included, with a
``resource_tracker`` process that warns at exit and unlinks segments other
processes still use (bpo-39959). shmsave tracks its segments itself, so it
turns that registration off.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import secrets
import sys
import tempfile
import threading
from multiprocessing import resource_tracker, shared_memory

import numpy as np

SHM_DIR = "/dev/shm"
PREFIX = "shmsave_"

_tracker_lock = threading.Lock()


@contextlib.contextmanager
def _untracked():
    """Keep SharedMemory from registering with the resource tracker (Python < 3.13)."""
    with _tracker_lock:
        register, unregister = resource_tracker.register, resource_tracker.unregister
        resource_tracker.register = resource_tracker.unregister = lambda name, rtype: None
        try:
            yield
        finally:
            resource_tracker.register, resource_tracker.unregister = register, unregister


def _shared_memory(name: str, create: bool = False, size: int = 0) -> shared_memory.SharedMemory:
    if sys.version_info >= (3, 13):
        return shared_memory.SharedMemory(name, create, size, track=False)
    with _untracked():
        return shared_memory.SharedMemory(name, create, size)


def _reserve(fd: int, nbytes: int) -> None:
    if hasattr(os, "posix_fallocate"):  # not on macOS
        os.posix_fallocate(fd, 0, nbytes)
    else:
        os.ftruncate(fd, nbytes)


def shm_free_bytes() -> int | None:
    """Free bytes on the shared-memory mount, or None where there is none."""
    try:
        usage = os.statvfs(SHM_DIR)
    except OSError:
        return None
    return usage.f_bavail * usage.f_frsize


class Segment:
    """A block of memory that worker processes can map by its ``locator``.

    ``kind`` is ``"shm"`` (``locator`` is a shared-memory name) or ``"file"``
    (``locator`` is a path). The segment holds one mapping of its own and no
    file descriptor; arrays made by ``array()`` keep that mapping alive, as
    ``np.memmap`` does. ``release()`` removes the name (once, by the owner)
    and is idempotent.
    """

    def __init__(self, kind: str, locator: str, mapping: mmap.mmap) -> None:
        self.kind = kind
        self.locator = locator
        self.nbytes = len(mapping)
        self._mapping = mapping
        # the address of the first byte, to tell whether an array lives here
        self.address = np.frombuffer(mapping, np.uint8, count=1).ctypes.data

    @classmethod
    def create(cls, nbytes: int, *, on_disk: bool = False) -> Segment:
        """A new zero-filled segment of ``nbytes``, its memory reserved up front.

        Reserving (``posix_fallocate``) turns a lack of room into an OSError
        here instead of SIGBUS while copying, and halves the cost of the first
        copy into the segment (DESIGN.md: 1.1 s -> 0.6 s for 622 MB).
        """
        nbytes = max(int(nbytes), 1)
        name = f"{PREFIX}{os.getpid()}_{secrets.token_hex(6)}"
        if on_disk:
            path = os.path.join(tempfile.gettempdir(), name)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                _reserve(fd, nbytes)
                return cls("file", path, mmap.mmap(fd, nbytes))
            except BaseException:
                os.unlink(path)
                raise
            finally:
                os.close(fd)
        shm = _shared_memory(name, create=True, size=nbytes)
        try:
            _reserve(shm._fd, nbytes)
            return cls("shm", name, mmap.mmap(shm._fd, nbytes))
        except BaseException:
            with _untracked():
                shm.unlink()
            raise
        finally:
            shm.close()

    def array(self, shape, dtype, offset: int = 0) -> np.ndarray:
        """A writable ndarray over this segment's memory."""
        return np.ndarray(shape, dtype, buffer=self._mapping, offset=offset)

    def release(self) -> None:
        """Remove the segment's name; its memory goes once nothing maps it."""
        locator, self.locator = self.locator, ""
        if locator:
            unlink(self.kind, locator)


def unlink(kind: str, locator: str) -> None:
    """Remove a segment's name; a name already gone is fine."""
    with contextlib.suppress(FileNotFoundError):
        if kind == "file":
            os.unlink(locator)
        else:
            shm = _shared_memory(locator)
            shm.close()
            with _untracked():
                shm.unlink()


# Faulting a segment's pages in one call is much cheaper than one fault per 4 KB
# page as the encoder first reads them (~1.5 ms per 1080p frame). Files are not
# populated: a .npy may be larger than memory.
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)


def attach(kind: str, locator: str) -> mmap.mmap:
    """Map, read-only, a segment or a file that another process made."""
    if kind == "shm":
        shm = _shared_memory(locator)
        try:
            return mmap.mmap(shm._fd, shm.size, flags=mmap.MAP_SHARED | _POPULATE, prot=mmap.PROT_READ)
        finally:
            shm.close()
    with open(locator, "rb") as file:
        return mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)


def _segment_files():
    """``(path, owner pid)`` of every shmsave segment in /dev/shm and of every file-backed one."""
    for folder in (SHM_DIR, tempfile.gettempdir()):
        with contextlib.suppress(OSError):
            for name in os.listdir(folder):
                owner = name[len(PREFIX):].split("_", 1)[0]
                if name.startswith(PREFIX) and owner.isdigit():
                    yield os.path.join(folder, name), int(owner)


def unlink_owned_by(pid: int) -> None:
    """Unlink every segment that process ``pid`` created (it has died)."""
    for path, owner in _segment_files():
        if owner == pid:
            with contextlib.suppress(OSError):
                os.unlink(path)


_swept = False


def sweep_orphans(again: bool = False) -> None:
    """Unlink segments whose owner process no longer exists; once per process unless ``again``."""
    global _swept
    if _swept and not again:
        return
    _swept = True
    import psutil  # here, not at the top: workers import this module and never sweep (~5 ms of their start)

    for path, owner in _segment_files():
        if not psutil.pid_exists(owner):
            with contextlib.suppress(OSError):
                os.unlink(path)
