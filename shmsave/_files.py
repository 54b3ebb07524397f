"""Encode images and write each to its file safely: the core every engine runs.

One rule for every file, whatever its size:

- a new name is created only once its bytes are all there: up to one page in
  a single ``write()`` (the kernel carries it out whole or not at all), bigger
  files as an unnamed file (``O_TMPFILE``) linked in when complete;
- an existing name is replaced atomically (temporary name + rename) and keeps
  what ``cv2.imwrite`` would keep: a symbolic link is written through (its
  target is replaced, the link stays), the file's permission bits (and owner,
  where this process may set it) stay; a read-only file is refused;
- hard links: the name written gets the new file; other names of the old file
  keep the old bytes (as an atomic save by an editor, or ``rsync``, does);
- temporary names are short (``.shmsave-<hash>.<pid>.part``), so any name the
  folder can hold can be written;
- ``durable``: a file's bytes (and mode) are synced before it gets its name, so
  no small file is created under its name first, and each folder written is
  synced once the task's files are in it (new folders: into their parents).

A task encodes a group of images, then writes the group's new files with one
call of the compiled helper ``_fastfiles`` where it was built (one release of
the GIL for the group, where Python's own calls release it at every open,
write and close); whatever that helper does not do (an existing name, no
O_TMPFILE, an error to report) is written here, file by file, as above.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import os
import stat
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import cv2
import numpy as np

from . import _heap
from ._job import Job, Outcome
from .errors import describe_oserror
from .naming import job_name_maker, job_path

if TYPE_CHECKING:
    from ._protocol import Task

_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
_TEMPORARY_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
_PAGE = os.sysconf("SC_PAGE_SIZE")  # a write of up to one page to a new file lands whole or not at all
_TMPFILE_FLAGS = os.O_WRONLY | getattr(os, "O_TMPFILE", 0) | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | os.O_CLOEXEC
_NO_TMPFILE = {_errno.EOPNOTSUPP, _errno.EISDIR, _errno.EINVAL, _errno.ENOENT}
# Whether this file system takes O_TMPFILE; turned off at the first refusal (and by tests).
_tmpfile_works = hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")
_EFFECTIVE_IDS = os.access in os.supports_effective_ids
_RGB_TO_BGR = {3: cv2.COLOR_RGB2BGR, 4: cv2.COLOR_RGBA2BGRA}
# A group: encoded files written together (one GIL release with the compiled helper). Bounded
# in images and in encoded bytes, so a group holds little memory whatever the images' size.
# CPU of 10,000 tiny JPEGs on 2 threads (median of 9, a loaded 2-core AMD VM): groups of 1: 465 ms,
# 8: 382, 32: 368, 128: 364; Python's calls alone: 393. On an Intel 2-core VM, where each GIL
# hand-off weighs more, the wall time (median of 11): 32: 154 ms, 64: 148, 128: 146 (chunked
# cv2.imwrite threads: 145). GROUP_BYTES keeps a group of big files small.
GROUP_IMAGES = 128
GROUP_BYTES = 1 << 20


def _compiled_helper():
    """``shmsave._fastfiles`` where it was built, and not turned off by ``SHMSAVE_PURE_PYTHON=1``."""
    if os.environ.get("SHMSAVE_PURE_PYTHON", "") not in ("", "0"):
        return None
    try:
        from . import _fastfiles
    except ImportError:
        return None
    return _fastfiles


compiled = _compiled_helper()  # shmsave._fastfiles, or None


def write_images(images, first_index: int, job: Job, deadline: float | None = None) -> Outcome:
    """Encode and write ``images`` (a sequence of arrays) numbered from ``first_index``.

    Never raises for one image: an OS or encoder error becomes a failure (and
    stops the task when ``job.stop_on_error``), anything else ends the task
    with ``unexpected`` set. ``deadline`` (``time.monotonic()``): stop after
    the image that passes it; the Outcome counts the images done.
    """
    # This loop is the hot path for tiny images: with a fixed folder, shmsave's
    # own work per image is ~0.4 us (no path arithmetic, a pre-parsed name).
    name_of = job_name_maker(job)
    durable = job.durable
    folders = _Folders(job.folder, job.cwd, durable)
    convert = _RGB_TO_BGR if job.rgb else {}
    encode_for = _encoders(job)  # one encoder per format of the task
    overwrite, cast = job.overwrite, job.cast
    skipped = 0
    group = _Group(job, durable)
    index = first_index
    if len(images):
        _heap.keep_freed_buffers(images[0].nbytes)
    try:
        if cast is not None and isinstance(images, np.ndarray) and images.dtype != cast:
            images = images.astype(cast)  # the task at once: numpy lets go of the GIL once, not per image
        for index, image in enumerate(images, first_index):
            if deadline is not None and index > first_index and time.monotonic() > deadline:
                break
            try:
                folder, name = folders.open(name_of(index))
                if not overwrite and _exists(name, folder):
                    skipped += 1
                    continue
                if cast is not None and image.dtype != cast:  # values checked to fit (request.py)
                    image = image.astype(cast)
                if convert and image.ndim == 3 and image.shape[2] in convert:
                    image = cv2.cvtColor(image, convert[image.shape[2]])
                data = encode_for(index)(image)
            except (OSError, cv2.error, _EncodeFailed) as error:
                if not group.write() or not group.failed(index, error):  # the images before it first
                    break
                continue
            except Exception:
                if not group.write():  # the images before it are written, as one by one they were
                    break  # one of them failed and stops the task there, before this image
                raise
            if not group.add(index, folder, name, data):
                break
        group.write()
        if durable and group.written:
            folders.sync()
    except Exception as error:  # noqa: BLE001 - reported to the caller as WorkerFailed, never lost
        index = group.first_unwritten(index)
        return Outcome(group.written, group.total, skipped, group.failures, (index, _describe(error), error))
    finally:
        folders.close()
    return Outcome(group.written, group.total, skipped, group.failures)


class _Group:
    """The encoded files of a task not yet written, written together (``write``), in order.

    ``add`` and ``write`` return False once the task must stop (``errors="raise"``
    and a failure); ``written``, ``total`` and ``failures`` count the task so far.
    """

    def __init__(self, job: Job, durable: bool) -> None:
        self.job, self.durable = job, durable
        self.indexes: list[int] = []
        self.folders: list[int] = []
        self.names: list[str] = []
        self.buffers: list[np.ndarray] = []
        self.sizes: list[int] = []
        self.nbytes = 0
        self.written = self.total = 0
        self.failures: list = []

    def add(self, index: int, folder: int, name: str, data: np.ndarray) -> bool:
        self.indexes.append(index)
        self.folders.append(folder)
        self.names.append(name)
        self.buffers.append(data)
        self.sizes.append(data.nbytes)
        self.nbytes += data.nbytes
        if len(self.indexes) < GROUP_IMAGES and self.nbytes < GROUP_BYTES:
            return True
        return self.write()

    def write(self) -> bool:
        """Write the files held; False if one failed and the task stops there."""
        done = 0
        try:
            while done < len(self.indexes):
                if compiled is not None:  # as many as it can, with one release of the GIL
                    count, _ = compiled.write_files(
                        self.folders[done:] if done else self.folders,
                        self.names[done:] if done else self.names,
                        self.buffers[done:] if done else self.buffers,
                        self.durable,
                        _tmpfile_works,
                        _PAGE,
                    )
                    self.written += count
                    self.total += sum(self.sizes[done : done + count])
                    done += count
                    if done == len(self.indexes):
                        break
                try:  # the next one by Python's rules: a name that exists, no O_TMPFILE, an error
                    self.total += _write_file(self.folders[done], self.names[done], self.buffers[done], self.durable)
                    self.written += 1
                except OSError as error:
                    if not self.failed(self.indexes[done], error):
                        done = len(self.indexes)  # the rest is not written: the task stops
                        return False
                done += 1
            return True
        finally:
            del self.indexes[:done], self.folders[:done], self.names[:done], self.buffers[:done], self.sizes[:done]
            self.nbytes = sum(self.sizes)

    def failed(self, index: int, error: Exception) -> bool:
        """Count image ``index`` as failed with ``error``; False if the task stops there."""
        path = job_path(self.job, index)
        if isinstance(error, OSError):
            self.failures.append((index, path, describe_oserror(error), error.errno))
        else:
            self.failures.append((index, path, str(error).strip(), None))
        return not self.job.stop_on_error

    def first_unwritten(self, index: int) -> int:
        """The first image not written, ``index`` being the one being encoded."""
        return self.indexes[0] if self.indexes else index


def _encoders(job: Job) -> Callable[[int], Callable[[np.ndarray], np.ndarray]]:
    """``index -> encode``: what turns image ``index`` (cast, BGR) into its file's bytes, made once
    per task for each format of the job (one, or several: ``Job.names.formats``)."""
    names = job.names
    if names is None or not names.format_of:
        one = _encoder(job.encoder, job.extension, job.params)
        return lambda index: one
    made = [_encoder(job.encoder, extension, params) for extension, params in names.formats]
    format_of, first = names.format_of, names.first
    return lambda index: made[format_of[index - first]]


def _encoder(encoder: str, extension: str, params: tuple[int, ...]) -> Callable[[np.ndarray], np.ndarray]:
    """``cv2.imencode``, or the fast encoder where ``encoder == "fast"`` and it covers this format
    and these flags (its packages are imported only then)."""
    if encoder == "fast":
        from ._fast import covers, encoder_for

        if covers(extension, params):
            return encoder_for(extension, params)

    def encode(image: np.ndarray) -> np.ndarray:
        ok, data = cv2.imencode(extension, image, params)
        if not ok:
            raise _EncodeFailed(f"OpenCV could not encode this image as {extension}")
        return data

    return encode


def unexpected_in_task(first_index: int, error: BaseException) -> Outcome:
    """The result of a task that failed before writing anything (its pixels could not be read)."""
    return Outcome(0, 0, 0, [], (first_index, _describe(error), error))


def for_another_process(result: Outcome) -> Outcome:
    """``result`` with an unexpected exception replaced by its traceback text (which always pickles)."""
    if result.unexpected is None:
        return result
    from .errors import RemoteTraceback

    index, description, error = result.unexpected
    import traceback  # only worker processes send tracebacks

    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return result._replace(unexpected=(index, description, RemoteTraceback(text)))


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


class _EncodeFailed(Exception):
    pass


class _Folders:
    """Open folder descriptors, so files are created relative to them (fewer path lookups).

    Relative folders resolve against ``cwd``, the caller's folder at the time
    of the call, whatever the working folder of the process that writes.
    """

    def __init__(self, fixed: str | None, cwd: str, durable: bool = False) -> None:
        self.fixed = fixed
        self.cwd = cwd
        self.durable = durable
        self.fds: dict[str, int] = {}

    def open(self, name: str) -> tuple[int, str]:
        """``(folder fd, file name)`` for ``name`` (a bare name, or a path when the folder varies)."""
        folder = self.fixed
        if folder is None:
            folder, separator, name = name.rpartition(os.sep)  # os.path.split, at 0.17 us instead of 0.9
            folder = folder or separator  # "/name": the root
        fd = self.fds.get(folder)
        if fd is None:
            path = os.path.join(self.cwd, folder)
            if self.fixed is None and folder:
                from ._folders import make_folders

                make_folders(path, durable=self.durable)
            fd = self.fds[folder] = os.open(path, _DIR_FLAGS)
        return fd, name

    def sync(self) -> None:
        """``fsync`` every folder opened: the names made in them last."""
        for fd in self.fds.values():
            os.fsync(fd)

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


def _exists(name: str, folder: int) -> bool:
    """Whether ``name`` holds an image to keep (``overwrite=False``).

    An empty file is what a killed writer leaves: not an image; nor is a .png or
    .jpg that starts as one and lacks its format's end (a truncated file). A folder or a
    symbolic link to nothing under the name cannot be left alone as if it were
    the image: they raise, and the image counts as failed.
    """
    try:
        status = os.stat(name, dir_fd=folder)
    except FileNotFoundError:
        if _lexists(name, folder):
            raise FileNotFoundError(_errno.ENOENT, "a symbolic link of this name points to nothing", name) from None
        return False
    if stat.S_ISDIR(status.st_mode):
        raise IsADirectoryError(_errno.EISDIR, os.strerror(_errno.EISDIR), name)
    format_marks = _FORMAT_MARKS.get(os.path.splitext(name)[1].lower())
    if format_marks is None or status.st_size == 0:
        return status.st_size > 0
    return not _cut_short(name, folder, *format_marks, status.st_size)


# How a complete file of these formats starts and ends (PNG: signature, IEND chunk and CRC; JPEG:
# SOI, EOI). A loop killed while writing (not shmsave's: its files appear only complete) leaves one
# that starts right and lacks its end. A file that does not even start right is someone else's: kept.
_PNG = (b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82")
_JPEG = (b"\xff\xd8\xff", b"\xff\xd9")
_FORMAT_MARKS = {".png": _PNG, ".jpg": _JPEG, ".jpeg": _JPEG, ".jpe": _JPEG}


def _cut_short(name: str, folder: int | None, signature: bytes, end: bytes, size: int) -> bool:
    """Whether the file starts as its format does and lacks the end its format requires."""
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=folder)
    try:
        if not signature.startswith(os.pread(fd, len(signature), 0)):
            return False
        return size < len(signature) + len(end) or os.pread(fd, len(end), size - len(end)) != end
    finally:
        os.close(fd)


def _write_file(folder: int, name: str, data: np.ndarray, durable: bool = False) -> int:
    """Write ``data`` as ``name`` in ``folder`` (see the module's rule); return the bytes written.

    A new file of up to one page is created and written with a single write():
    the fastest way (tmpfs, 1.9 KB JPEGs: 7.4 us per file against 13.9 us
    through O_TMPFILE + linkat; benchmarks/results/profile_tiny.md). An error
    or an interrupt removes it; a process killed between open and write leaves
    an empty file, which the parent of a killed worker removes and
    ``overwrite=False`` does not count as written. ``durable``: every file is
    written unnamed (or under a temporary name) and synced before it is named.
    """
    try:
        if data.nbytes <= _PAGE and not durable:
            return _create_small(folder, name, data)
        if _tmpfile_works:
            size = _create_unnamed(folder, name, data, durable)
            if size is not None:
                return size
    except FileExistsError:
        pass
    return _replace(folder, name, data, durable=durable)


def _create_small(folder: int, name: str, data: np.ndarray) -> int:
    fd = -1
    try:
        fd = os.open(name, _CREATE_FLAGS, 0o666, dir_fd=folder)
        if os.write(fd, data) < data.nbytes:
            _write_all(fd, data)
        os.close(fd)
        return data.nbytes
    except BaseException as error:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=folder)
        elif not isinstance(error, OSError):  # an interrupt right after open() returned: maybe an empty file
            remove_if_empty(name, folder)
        raise


def _create_unnamed(folder: int, name: str, data: np.ndarray, durable: bool = False) -> int | None:
    """Write an unnamed file and link it in as ``name``: a killed writer leaves nothing behind.

    None where the file system lacks O_TMPFILE. Where ``name`` exists, the
    written file replaces it (``_replace``), so the bytes are written once.
    """
    global _tmpfile_works
    try:
        fd = os.open(".", _TMPFILE_FLAGS, 0o666, dir_fd=folder)
    except OSError as error:
        if error.errno not in _NO_TMPFILE:
            raise
        _tmpfile_works = False
        return None
    try:
        _write_all(fd, data)
        if durable:
            os.fsync(fd)
        try:
            os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=folder, follow_symlinks=True)
            return data.nbytes
        except FileExistsError:
            return _replace(folder, name, data, unnamed=fd, durable=durable)
    finally:
        os.close(fd)


def _replace(
    folder: int, name: str, data: np.ndarray, *, unnamed: int = -1, resolved: bool = False, durable: bool = False
) -> int:
    """Write ``data`` under a temporary name, then rename it over ``name`` (which may or may not exist).

    ``unnamed``: an O_TMPFILE descriptor already holding ``data``, linked in as
    the temporary file instead of writing the bytes again. ``durable``: the
    file (bytes and mode) is synced before the rename.
    """
    try:
        old = os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        old = None
    if old is not None and stat.S_ISLNK(old.st_mode):
        if resolved:
            raise OSError(_errno.ELOOP, os.strerror(_errno.ELOOP), name)
        target = os.path.realpath(_path_in(folder, name))
        target_folder = os.open(os.path.dirname(target), _DIR_FLAGS)
        try:  # the target may be on another file system: write it afresh there
            size = _replace(target_folder, os.path.basename(target), data, resolved=True, durable=durable)
            if durable:
                os.fsync(target_folder)  # a folder no task opened
            return size
        finally:
            os.close(target_folder)
    if old is not None:
        if stat.S_ISDIR(old.st_mode):
            raise IsADirectoryError(_errno.EISDIR, os.strerror(_errno.EISDIR), name)
        _refuse_read_only(name, folder)
    temporary = part_name(name, os.getpid())
    if unnamed >= 0:
        fd = unnamed
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary, dir_fd=folder)  # left by a killed process of the same pid
    else:
        fd = os.open(temporary, _TEMPORARY_FLAGS, 0o666, dir_fd=folder)
    named = unnamed < 0
    renamed = False
    try:
        if old is not None:
            _keep_mode_and_owner(fd, old)
        if named:
            _write_all(fd, data)
        if durable:
            os.fsync(fd)  # after the mode was set: both last
        if not named:
            os.link(f"/proc/self/fd/{fd}", temporary, dst_dir_fd=folder, follow_symlinks=True)
            named = True
        os.replace(temporary, name, src_dir_fd=folder, dst_dir_fd=folder)
        renamed = True
        return data.nbytes
    finally:
        if fd != unnamed:
            os.close(fd)
        if named and not renamed:  # an error is on its way
            with contextlib.suppress(OSError):
                os.unlink(temporary, dir_fd=folder)


def _keep_mode_and_owner(fd: int, old: os.stat_result) -> None:
    os.fchmod(fd, stat.S_IMODE(old.st_mode))
    if (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
        with contextlib.suppress(OSError):  # only root may give a file away: as cv2.imwrite, keep ours then
            os.fchown(fd, old.st_uid, old.st_gid)
            os.fchmod(fd, stat.S_IMODE(old.st_mode))  # chown clears set-id bits


def _lexists(name: str, folder: int) -> bool:
    try:
        os.stat(name, dir_fd=folder, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False


def _path_in(folder: int, name: str) -> str:
    return os.path.join(os.readlink(f"/proc/self/fd/{folder}"), name)


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


def _refuse_read_only(name: str, folder: int) -> None:
    """Raise PermissionError if ``name`` may not be written, as ``open()`` and ``cv2.imwrite``
    would: a rename replaces a file whatever its mode."""
    if not os.access(name, os.W_OK, dir_fd=folder, effective_ids=_EFFECTIVE_IDS):
        raise PermissionError(_errno.EACCES, os.strerror(_errno.EACCES), name)


def temporary_path(path: str, pid: int) -> str:
    """Where process ``pid`` writes ``path`` before renaming it over an existing file."""
    folder, name = os.path.split(path)
    return os.path.join(folder, part_name(name, pid))


def part_name(name: str, pid: int) -> str:
    """A temporary name of fixed, short length: any name a folder can hold can be written."""
    try:  # hashlib's own blake2b: importing hashlib loads OpenSSL (~4 ms), this module ~0.3 ms
        from _blake2 import blake2b
    except ImportError:  # an interpreter built without it
        from hashlib import blake2b

    digest = blake2b(os.fsencode(name), digest_size=8).hexdigest()
    return f".shmsave-{digest}.{pid}.part"


def remove_partial_files(task: Task, pid: int) -> None:
    """Delete what a dead worker may have left of the files of ``task``: a temporary file, or an
    empty file under the final name (killed between open and write; see ``_write_file``)."""
    for index in range(task.first, task.end):
        path = os.path.join(task.job.cwd, job_path(task.job, index))
        with contextlib.suppress(OSError):
            os.unlink(temporary_path(path, pid))
        remove_if_empty(path)


def already_written(path: str) -> bool:
    """Whether ``path`` holds a file that ``overwrite=False`` leaves alone (see ``_exists``); anything
    else (missing, empty, cut short, a folder, a link to nothing) is for the writer to write or fail."""
    try:
        return _exists(path, None)
    except OSError:
        return False
