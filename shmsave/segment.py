"""Shared-memory segments: create, attach, release, and clean up after crashes.

A segment is a ``multiprocessing.shared_memory.SharedMemory`` named
``shmsave_<pid>_<token>``, where ``pid`` is the process that made it. Only that
process unlinks it. Ownership is proven by a lock, not by the pid: the owner
holds a shared ``flock`` on the segment for the segment's whole life, through a
descriptor of its own that nothing maps, so the lock ends exactly when the
owner does (however it dies). Whoever cleans up takes the lock exclusively
first and unlinks only a segment nobody holds: containers that share /dev/shm
but not their PID namespace (a Kubernetes pod, ``docker run --ipc=host``) never
delete each other's live segments, whatever their pids say.

If the owner dies without unlinking (SIGKILL), its workers notice the closed
pipe and unlink the abandoned ``shmsave_<pid>_*``; if they die too, the next
Writer started on the machine sweeps every abandoned segment.

A forked child inherits its parent's segments but never owns them: it neither
unlinks them nor keeps their lock (``_after_fork_in_child``).

When ``/dev/shm`` lacks room, a segment is a file in the temporary folder
instead (the same name, mapped the same way), so nothing dies of SIGBUS.

Python < 3.13 registers every SharedMemory, attached ones included, with a
``resource_tracker`` process that warns at exit and unlinks segments other
processes still use (bpo-39959). shmsave tracks its segments itself, so it
turns that registration off.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import secrets
import sys
import tempfile
import threading
import time
import weakref
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
    (``locator`` is a path). The segment holds one mapping of its own and one
    descriptor that carries the owner's lock; arrays made by ``array()`` keep
    the mapping alive, as ``np.memmap`` does. ``release()`` removes the name
    (in the owning process only) and is idempotent.
    """

    def __init__(self, kind: str, locator: str, mapping: mmap.mmap, lock_fd: int) -> None:
        self.kind = kind
        self.locator = locator
        self.nbytes = len(mapping)
        self._mapping = mapping
        self._lock_fd = lock_fd
        self._owner = os.getpid()
        # the address of the first byte, to tell whether an array lives here
        self.address = np.frombuffer(mapping, np.uint8, count=1).ctypes.data
        _segments.add(self)

    @classmethod
    def create(cls, nbytes: int, *, on_disk: bool = False) -> Segment:
        """A new zero-filled segment of ``nbytes``, its memory reserved up front.

        Reserving (``posix_fallocate``) turns a lack of room into an OSError
        here instead of SIGBUS while copying, and halves the cost of the first
        copy into a fresh segment (622 MB: 1.1 s -> 0.6 s; docs/design.md).
        """
        nbytes = max(int(nbytes), 1)
        sweep_orphans()  # before this process's first segment, what crashed processes left goes
        while True:
            name = f"{PREFIX}{os.getpid()}_{secrets.token_hex(6)}"
            made = _create_file(name, nbytes) if on_disk else _create_shm(name, nbytes)
            if made is not None:
                return cls(*made)

    @property
    def buffer(self) -> mmap.mmap:
        """The segment's memory, mapped."""
        return self._mapping

    def array(self, shape, dtype, offset: int = 0) -> np.ndarray:
        """A writable ndarray over this segment's memory."""
        return np.ndarray(shape, dtype, buffer=self._mapping, offset=offset)

    def release(self) -> None:
        """Remove the segment's name (if this process owns it) and drop the lock; idempotent.

        The memory goes once nothing maps it.
        """
        locator, self.locator = self.locator, ""
        if locator and self._owner == os.getpid():
            unlink(self.kind, locator)
        self._disown()

    def _disown(self) -> None:
        fd, self._lock_fd = self._lock_fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)


_segments: weakref.WeakSet[Segment] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A forked child drops its copies of its parent's locks: the parent's segments stay the
    parent's (the child never unlinks them), and end with the parent as they would without the child."""
    for block in list(_segments):
        block._owner = -1
        block._disown()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _lock_owned(path: str) -> int | None:
    """Open ``path`` anew and hold a shared lock on it: the proof of ownership.

    None if the name was removed before the lock was taken (a sweep saw the
    file unlocked in the instant after it was created): the caller starts again
    under a new name.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        if os.fstat(fd).st_nlink > 0:
            return fd
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return None


def _create_shm(name: str, nbytes: int):
    shm = _shared_memory(name, create=True, size=nbytes)
    lock_fd = -1
    try:
        lock_fd = _lock_owned(os.path.join(SHM_DIR, name))
        if lock_fd is None:
            return None
        _reserve(shm._fd, nbytes)
        return "shm", name, mmap.mmap(shm._fd, nbytes), lock_fd
    except BaseException:
        if lock_fd is not None and lock_fd >= 0:
            os.close(lock_fd)
        with contextlib.suppress(FileNotFoundError), _untracked():
            shm.unlink()
        raise
    finally:
        shm.close()


def _create_file(name: str, nbytes: int):
    path = os.path.join(tempfile.gettempdir(), name)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    lock_fd = None
    try:
        lock_fd = _lock_owned(path)
        if lock_fd is None:
            return None
        _reserve(fd, nbytes)
        return "file", path, mmap.mmap(fd, nbytes), lock_fd
    except BaseException:
        if lock_fd is not None:
            os.close(lock_fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise
    finally:
        os.close(fd)


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
                owner = name[len(PREFIX) :].split("_", 1)[0]
                if name.startswith(PREFIX) and owner.isdigit():
                    yield os.path.join(folder, name), int(owner)


# The kernel may release a dead process's file locks a moment after the process is gone (the last
# reference to a file is dropped by deferred work): seen held for a few ms by a zombie, here.
_LOCK_RELEASE_S = 1.0


def unlink_if_abandoned(path: str, owner: int | None, patience: float = 0.0) -> bool:
    """Unlink the segment file ``path`` if no process holds its owner's lock; True if it did.

    The exclusive lock is held while unlinking, so an owner cannot take the
    segment in between (``_lock_owned`` would see the name gone and retry).
    A segment whose ``owner`` pid is alive in this namespace is kept whatever
    its lock says: a shmsave older than the locks may own it (``owner=None``:
    the caller knows the owner is dead, and gives its lock ``patience`` seconds
    to be released).
    """
    if owner is not None and _alive(owner):
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return False
    deadline = time.monotonic() + patience
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError:  # its owner is alive (in this PID namespace or another), or just died
            if time.monotonic() >= deadline:
                os.close(fd)
                return False
            time.sleep(0.005)
    try:
        os.unlink(path)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs here (a zombie, dead but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def unlink_owned_by(pid: int) -> None:
    """Unlink the abandoned segments whose names say process ``pid`` made them (it has died: the
    caller's parent, so a zombie until reaped, which kill(pid, 0) would call alive)."""
    for path, owner in _segment_files():
        if owner == pid:
            unlink_if_abandoned(path, None, _LOCK_RELEASE_S)


_swept = False


def sweep_orphans(again: bool = False) -> None:
    """Unlink every abandoned segment (its owner's lock is gone); once per process unless ``again``."""
    global _swept
    if _swept and not again:
        return
    _swept = True
    for path, owner in _segment_files():
        unlink_if_abandoned(path, owner)
