"""The worker: encode a slice of images and write each file atomically.

Started by the pool as ``main([FD, PARENT_PID])`` in a fresh interpreter. It imports only shmsave
(never the caller's script), reads task tuples from the socket ``FD``, maps the
pixels they point to, and answers with one small result tuple per task. It
exits when told to (``None``) or when the socket closes; in the second case
its parent has died, and it unlinks the segments that parent owned.

``write_images`` is also what the inline and thread engines run in-process.
"""

from __future__ import annotations

import os
import signal
import traceback

import cv2
import numpy as np

from .errors import describe_oserror

_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
_PID = os.getpid()
_RGB_TO_BGR = {3: cv2.COLOR_RGB2BGR, 4: cv2.COLOR_RGBA2BGRA}


def write_images(images, first_index: int, job: tuple) -> tuple[int, int, int, list]:
    """Encode and write ``images`` (a sequence of arrays) numbered from ``first_index``.

    ``job`` is ``(template, fields, extension, params, rgb, overwrite, stop_on_error)``.
    Returns ``(written, bytes_written, skipped, failures)`` where each failure
    is ``(index, path, message, errno)``. A file appears under its final name
    only once all its bytes are written.
    """
    template, fields, extension, params, rgb, overwrite, stop_on_error = job
    format_path = template.format
    fields = dict(fields)
    made_folders = set()
    written = total = skipped = 0
    failures = []
    for offset, image in enumerate(images):
        index = first_index + offset
        path = format_path(index=index, **fields)
        try:
            if not overwrite and os.path.lexists(path):
                skipped += 1
                continue
            if rgb and image.ndim == 3 and image.shape[2] in _RGB_TO_BGR:
                image = cv2.cvtColor(image, _RGB_TO_BGR[image.shape[2]])
            ok, data = cv2.imencode(extension, image, params)
            if not ok:
                raise _EncodeFailed(f"OpenCV could not encode this image as {extension}")
            folder = os.path.dirname(path)
            if folder and folder not in made_folders:
                os.makedirs(folder, exist_ok=True)
                made_folders.add(folder)
            total += _write_file(path, data)
            written += 1
        except (OSError, cv2.error, _EncodeFailed) as error:
            if isinstance(error, OSError):
                failures.append((index, path, describe_oserror(error), error.errno))
            else:
                failures.append((index, path, str(error).strip(), None))
            if stop_on_error:
                break
    return written, total, skipped, failures


class _EncodeFailed(Exception):
    pass


def _write_file(path: str, data: np.ndarray) -> int:
    """Write ``data`` to a temporary file beside ``path``, then rename it into place."""
    folder, name = os.path.split(path)
    temporary = os.path.join(folder, f".{name}.{_PID}.part")
    fd = os.open(temporary, _OPEN_FLAGS, 0o666)
    try:
        view = memoryview(data).cast("B")
        size = len(view)
        done = os.write(fd, view)
        while done < size:
            done += os.write(fd, view[done:])
        os.close(fd)
        fd = -1
        os.replace(temporary, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    return size


def temporary_name(path: str, pid: int) -> str:
    """Where the worker ``pid`` writes ``path`` before renaming it."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.{pid}.part")


def images_of(source: tuple, lo: int, hi: int):
    """The images ``lo:hi`` that a task's ``source`` describes, mapped read-only.

    ``("stack", kind, locator, offset, shape, strides, dtype)``: an N-D array;
    ``("list", kind, locator, entries)``: one ``(offset, shape, dtype)`` per image.
    """
    from .segment import attach

    if source[0] == "stack":
        _, kind, locator, offset, shape, strides, dtype = source
        mapping = attach(kind, locator)
        stack = np.ndarray(shape, dtype, buffer=mapping, offset=offset, strides=strides)
        return stack[lo:hi]
    _, kind, locator, entries = source
    mapping = attach(kind, locator)
    return [np.ndarray(shape, dtype, buffer=mapping, offset=offset) for offset, shape, dtype in entries]


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
    try:
        conn.send(("ready", os.getpid()))
        _serve(conn, parent_pid)
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        conn.close()

