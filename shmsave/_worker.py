"""The worker: encode a slice of images and write each file atomically.

Started by the pool as ``main([FD, PARENT_PID])`` in a fresh interpreter. It imports only shmsave
(never the caller's script), reads task tuples from the socket ``FD``, maps the
pixels they point to, and answers with one small result tuple per task. It
exits when told to (``None``) or when the socket closes; in the second case
its parent has died, and it unlinks the segments that parent owned.

``write_images`` is also what the inline and thread engines run in-process.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import mmap
import os
import signal
import traceback

import cv2
import numpy as np

from .errors import describe_oserror
from .naming import name_maker

_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
_PAGE = mmap.PAGESIZE  # a write of up to one page to a new file lands whole or not at all
_TMPFILE_FLAGS = os.O_WRONLY | getattr(os, "O_TMPFILE", 0) | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | os.O_CLOEXEC
_NO_TMPFILE = {_errno.EOPNOTSUPP, _errno.EISDIR, _errno.EINVAL, _errno.ENOENT}
_tmpfile_works = hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")
_PID = os.getpid()
_EFFECTIVE_IDS = os.access in os.supports_effective_ids
_RGB_TO_BGR = {3: cv2.COLOR_RGB2BGR, 4: cv2.COLOR_RGBA2BGRA}


def write_images(images, first_index: int, job: tuple) -> tuple[int, int, int, list]:
    """Encode and write ``images`` (a sequence of arrays) numbered from ``first_index``.

    ``job`` is ``(template, folder, fields, extension, params, rgb, overwrite, stop_on_error)``
    (``Request.job()``); ``folder`` is the folder every path shares, or None.
    Returns ``(written, bytes_written, skipped, failures)`` where each failure
    is ``(index, path, message, errno)``. See ``_write_file`` for what a reader
    of the folder can see while it runs.
    """
    template, fixed_folder, fields, extension, params, rgb, overwrite, stop_on_error = job
    fields = dict(fields)
    # This loop is the hot path for tiny images: with a fixed folder, shmsave's
    # own work per image is ~0.4 us (no path arithmetic, a pre-parsed name).
    name_of = name_maker(os.path.basename(template) if fixed_folder is not None else template, fields)
    folders = _Folders(fixed_folder)
    convert = _RGB_TO_BGR if rgb else {}
    written = total = skipped = 0
    failures = []
    try:
        for index, image in enumerate(images, first_index):
            try:
                folder, name = folders.open(name_of(index))
                if not overwrite and _exists(name, folder):
                    skipped += 1
                    continue
                if convert and image.ndim == 3 and image.shape[2] in convert:
                    image = cv2.cvtColor(image, convert[image.shape[2]])
                ok, data = cv2.imencode(extension, image, params)
                if not ok:
                    raise _EncodeFailed(f"OpenCV could not encode this image as {extension}")
                total += _write_file(folder, name, data)
                written += 1
            except (OSError, cv2.error, _EncodeFailed) as error:
                path = template.format(index=index, **fields)
                if isinstance(error, OSError):
                    failures.append((index, path, describe_oserror(error), error.errno))
                else:
                    failures.append((index, path, str(error).strip(), None))
                if stop_on_error:
                    break
    finally:
        folders.close()
    return written, total, skipped, failures


class _EncodeFailed(Exception):
    pass


class _Folders:
    """Open folder descriptors, so files are created relative to them (fewer path lookups)."""

    def __init__(self, fixed: str | None) -> None:
        self.fixed = fixed
        self.fds: dict[str, int] = {}

    def open(self, name: str) -> tuple[int, str]:
        """``(folder fd, file name)`` for ``name`` (a bare name, or a path when the folder varies)."""
        folder = self.fixed
        if folder is None:
            folder, name = os.path.split(name)
        fd = self.fds.get(folder)
        if fd is None:
            if self.fixed is None and folder:
                os.makedirs(folder, exist_ok=True)
            fd = self.fds[folder] = os.open(folder or ".", _DIR_FLAGS)
        return fd, name

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


def _exists(name: str, folder: int) -> bool:
    """Whether ``name`` holds a file to keep (an empty one is what a killed writer leaves)."""
    try:
        return os.stat(name, dir_fd=folder, follow_symlinks=False).st_size > 0
    except FileNotFoundError:
        return False


def _write_file(folder: int, name: str, data: np.ndarray) -> int:
    """Write ``data`` as ``name`` in ``folder``: a reader sees all of it or nothing (or, after a kill, an empty file).

    A file of up to one page is opened under its final name and written with
    a single write(), which the kernel carries out whole or not at all: the
    fastest way (tmpfs, 1.9 KB JPEGs: 7.4 us per file against 13.9 us through
    O_TMPFILE + linkat; benchmarks/results/profile_tiny.md). An error or an
    interrupt removes it; a process killed between open and write leaves an
    empty file, which the parent of a killed worker removes and
    ``overwrite=False`` does not count as written.

    Bigger files go through ``_write_atomically``: never seen partial, even
    when the process is killed.
    """
    size = data.nbytes
    if size > _PAGE:
        return _write_atomically(folder, name, data)
    fd = -1
    try:
        fd = os.open(name, _OPEN_FLAGS, 0o666, dir_fd=folder)
        if os.write(fd, data) < size:
            _write_all(fd, data)
        os.close(fd)
        return size
    except BaseException as error:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=folder)
        elif not isinstance(error, OSError):  # an interrupt right after open() returned: maybe an empty file
            remove_if_empty(name, folder)
        raise


def remove_if_empty(name: str, folder: int | None = None) -> None:
    """Remove ``name`` (relative to the folder fd ``folder``, if given) if it is an empty file:
    what a writer killed or interrupted between open() and write() leaves."""
    with contextlib.suppress(OSError):
        if os.stat(name, dir_fd=folder, follow_symlinks=False).st_size == 0:
            os.unlink(name, dir_fd=folder)


def _write_all(fd: int, data: np.ndarray) -> None:
    """Write all of ``data`` at ``fd``'s start (a short write is followed up, a repeated one is harmless)."""
    view = memoryview(data).cast("B")
    done = os.pwrite(fd, view, 0)
    while done < len(view):
        done += os.pwrite(fd, view[done:], done)


def _write_atomically(folder: int, name: str, data: np.ndarray) -> int:
    """Write ``data`` as ``name`` in ``folder``; the name appears (or is replaced) only once the bytes are all there.

    The bytes go to an unnamed file (O_TMPFILE) that is linked in when
    complete: a killed worker leaves nothing behind, and a new file costs less
    than temporary file + rename (ext4 here: 49 vs 62 us; tmpfs: equal). Where the
    name exists (overwrite) or the file system lacks O_TMPFILE, it falls back
    to a named temporary file and an atomic rename; an existing file this
    process may not write is refused (EACCES) first, as ``open()`` refuses it.
    """
    global _tmpfile_works
    fd = -1
    if _tmpfile_works:
        try:
            fd = os.open(".", _TMPFILE_FLAGS, 0o666, dir_fd=folder)
        except OSError as error:
            if error.errno not in _NO_TMPFILE:
                raise
            _tmpfile_works = False
    temporary = _part_name(name, _PID)
    linked = False
    try:
        if fd < 0:
            fd = os.open(temporary, _OPEN_FLAGS, 0o666, dir_fd=folder)
            linked = True
        _write_all(fd, data)
        if not linked:
            try:
                os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=folder, follow_symlinks=True)
                return data.nbytes
            except FileExistsError:
                _refuse_read_only(name, folder)
                os.link(f"/proc/self/fd/{fd}", temporary, dst_dir_fd=folder, follow_symlinks=True)
                linked = True
        else:
            _refuse_read_only(name, folder)
        os.replace(temporary, name, src_dir_fd=folder, dst_dir_fd=folder)
        linked = False
        return data.nbytes
    finally:
        if fd >= 0:  # -1 when opening the temporary file failed: keep that error
            os.close(fd)
        if linked:  # the temporary name exists but was not renamed: an error is on its way
            with contextlib.suppress(OSError):
                os.unlink(temporary, dir_fd=folder)


def _refuse_read_only(name: str, folder: int) -> None:
    """Raise PermissionError if ``name`` exists and may not be written, as ``open()`` and
    ``cv2.imwrite`` would: a rename replaces a file whatever its mode."""
    if (not os.access(name, os.W_OK, dir_fd=folder, effective_ids=_EFFECTIVE_IDS)
            and os.access(name, os.F_OK, dir_fd=folder)):
        raise PermissionError(_errno.EACCES, os.strerror(_errno.EACCES), name)


def temporary_name(path: str, pid: int) -> str:
    """Where the worker ``pid`` writes ``path`` before renaming it."""
    folder, name = os.path.split(path)
    return os.path.join(folder, _part_name(name, pid))


def _part_name(name: str, pid: int) -> str:
    return f".{name}.{pid}.part"


_mapped: dict[str, object] = {}  # shared-memory name -> mapping, kept across tasks (no re-faulting)
_MAPPED_MAX = 8


def images_of(source: tuple, lo: int, hi: int):
    """The images ``lo:hi`` that a task's ``source`` describes, mapped read-only.

    ``("stack", kind, locator, offset, shape, strides, dtype)``: an N-D array;
    ``("list", kind, locator, entries)``: one ``(offset, shape, dtype)`` per image.
    """
    if source[0] == "stack":
        _, kind, locator, offset, shape, strides, dtype = source
        stack = np.ndarray(shape, dtype, buffer=_map(kind, locator), offset=offset, strides=strides)
        return stack[lo:hi]
    _, kind, locator, entries = source
    mapping = _map(kind, locator)
    return [np.ndarray(shape, dtype, buffer=mapping, offset=offset) for offset, shape, dtype in entries]


def _map(kind: str, locator: str):
    """Map a segment once per worker (its pages stay mapped: the next task does not fault
    them in again) or a file afresh per task (it may have been rewritten since)."""
    from .segment import attach

    if kind != "shm":
        return attach(kind, locator)
    mapping = _mapped.get(locator)
    if mapping is None:
        if len(_mapped) >= _MAPPED_MAX:
            del _mapped[next(iter(_mapped))]
        mapping = _mapped[locator] = attach(kind, locator)
    return mapping


def _serve(conn, parent_pid: int) -> None:
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            if os.getppid() != parent_pid:
                from .segment import unlink_owned_by

                unlink_owned_by(parent_pid)
            return
        if task is None:
            return
        if task[0] == "forget":  # the parent released this segment: let its memory go
            _mapped.pop(task[1], None)
            continue
        task_id, source, lo, hi, first_index, job = task
        try:
            result = (task_id, *write_images(images_of(source, lo, hi), first_index, job), None)
        except Exception:
            result = (task_id, 0, 0, 0, [], traceback.format_exc())
        conn.send(result)


def _stop(signum, frame):
    raise SystemExit(128 + signum)


def main(argv: list[str]) -> None:
    from multiprocessing.connection import Connection

    fd, parent_pid = int(argv[0]), int(argv[1])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    signal.signal(signal.SIGTERM, _stop)
    cv2.setNumThreads(1)  # one process per core already
    conn = Connection(fd)
    from . import segment  # noqa: F401 - every task maps memory: import it before saying ready
    try:
        conn.send(("ready", os.getpid()))
        _serve(conn, parent_pid)
    except (BrokenPipeError, ConnectionResetError):  # the parent closed our socket
        if os.getppid() != parent_pid:  # it died mid-task: nobody else will remove its segments
            from .segment import unlink_owned_by

            unlink_owned_by(parent_pid)
    finally:
        conn.close()

