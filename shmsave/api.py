"""``shmsave.save``, ``shmsave.stream`` and ``shmsave.imwrite``: served by a Writer shared across calls."""

from __future__ import annotations

import os
from _thread import allocate_lock  # what threading.Lock is; importing threading costs a first save ~1 ms
from typing import TYPE_CHECKING, Any

from ._cpus import usable_cpus
from .report import Progress, Report
from .writer import Writer

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import numpy as np

    from .streaming import Stream

_shared: Writer | None = None
_shared_asked: int | None = None  # the ``workers`` the last call asked for (None: the default)
_shared_lock = allocate_lock()


def _after_fork_in_child() -> None:
    """A forked child gets a process-wide Writer of its own on first use, as a fresh process would."""
    global _shared, _shared_lock
    _shared, _shared_lock = None, allocate_lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def save(
    images: np.ndarray | Sequence[np.ndarray],
    template: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    workers: int | None = None,
    quality: int | None = None,
    compression: int | None = None,
    params: Mapping[int | str, int] | Sequence[int | str] | None = None,
    rgb: bool = False,
    start: int = 0,
    overwrite: bool = True,
    errors: str = "raise",
    progress: Progress = False,
    fields: Mapping[str, Any] | None = None,
    durable: bool = False,
    timeout: float | None = None,
    shard_size: int | None = None,
    encoder: str = "opencv",
) -> Report:
    """Write ``images[i]`` to ``template.format(index=start + i)`` for every i; return a Report.

    ``images``: an (N, H, W) or (N, H, W, C) array with C in 1, 3, 4, or a
    list of 2-D/3-D arrays. ``template``: a path with an ``{index}`` field
    (format spec allowed, e.g. ``{index:06d}``); its extension picks the
    format and missing folders are created. ``quality`` (JPEG, WebP, AVIF,
    JPEG 2000) and ``compression`` (PNG 0-9, TIFF, HDR, EXR) map to the
    format's OpenCV flag; ``params`` adds raw ``cv2.IMWRITE_*`` flags.
    ``rgb=True`` means the pixels are RGB(A), not OpenCV's BGR(A).
    ``overwrite=False`` leaves existing files alone (resume an interrupted
    job). ``errors="collect"`` records failures in ``Report.failed`` instead
    of raising WriteFailed, WorkerDied or WorkerFailed. ``progress``: True
    for a tqdm bar, or a callable told ``progress(n)`` as n more images finish.
    ``fields``: values of the template's other ``{name}`` fields, one for all images
    or a list of one per image. ``template`` may also be a list of paths, one per image
    (taken literally; several extensions in one call: each option goes to the formats
    that take it). ``{shard}`` in a template is ``index // shard_size`` (1000 by default).
    ``durable=True``: when the call returns, every file written and every
    folder made is on stable storage (``fsync``), as after a power cut.
    ``timeout``: seconds a worker process may make no progress (a hung mount,
    a stuck encoder) before it is killed and replaced and the images it held
    fail with WriteTimedOut; such a call runs on the worker processes.
    ``encoder="fast"`` (``pip install "shmsave[fast]"``): PNG, TIFF and lossless
    WebP through faster lossless encoders, files that decode to the same
    pixels (other formats: OpenCV; ``Report.encoder`` says which).

    Bad input raises InvalidRequest before anything is written. Each file is
    byte-identical to what ``cv2.imwrite`` writes (``encoder="opencv"``, the
    default), and appears under its name only once complete. Worker processes start on the first call that needs
    them and are reused by later calls (until exit); ``workers`` defaults to
    the CPUs this process may use.
    """
    writer = _shared_writer(workers)
    return writer.save(
        images,
        template,
        quality=quality,
        compression=compression,
        params=params,
        rgb=rgb,
        start=start,
        overwrite=overwrite,
        errors=errors,
        progress=progress,
        fields=fields,
        durable=durable,
        timeout=timeout,
        shard_size=shard_size,
        encoder=encoder,
    )


def stream(
    template: str | os.PathLike[str],
    *,
    workers: int | None = None,
    quality: int | None = None,
    compression: int | None = None,
    params: Mapping[int | str, int] | Sequence[int | str] | None = None,
    rgb: bool = False,
    start: int = 0,
    overwrite: bool = True,
    errors: str = "raise",
    progress: Progress = False,
    total: int | None = None,
    buffer_bytes: int | None = None,
    durable: bool = False,
    timeout: float | None = None,
    shard_size: int | None = None,
    encoder: str = "opencv",
) -> Stream:
    """A stream that saves images one at a time as a loop makes them, on the process-wide Writer.

        with shmsave.stream("out/{index:06d}.jpg", quality=90) as s:
            for frame in video:
                s.write(frame)   # copies the pixels and returns; waits only while the buffer is full
        print(s.report)

    ``write(image)`` takes one 2-D/3-D array (shapes and dtypes may change from
    image to image) and copies it into a fixed shared-memory ring; the caller
    may reuse its array at once. ``close()`` (or leaving the ``with`` block)
    waits for every image and returns the Report. The options are those of
    ``save`` (``start``: the first index); ``total``: how many images will come,
    if known; ``buffer_bytes``: the ring's size. Errors: with ``errors="raise"``
    a failed image raises from the next ``write`` or from ``close``. Every file
    is byte-identical to ``cv2.imwrite``'s and appears only once complete.
    """
    writer = _shared_writer(workers)
    return writer.stream(
        template,
        quality=quality,
        compression=compression,
        params=params,
        rgb=rgb,
        start=start,
        overwrite=overwrite,
        errors=errors,
        progress=progress,
        total=total,
        buffer_bytes=buffer_bytes,
        durable=durable,
        timeout=timeout,
        shard_size=shard_size,
        encoder=encoder,
    )


def save_frames(
    source: str | os.PathLike[str],
    template: str | os.PathLike[str],
    *,
    start: int | None = None,
    stop: int | None = None,
    step: int = 1,
    workers: int | None = None,
    quality: int | None = None,
    compression: int | None = None,
    params: Mapping[int | str, int] | Sequence[int | str] | None = None,
    rgb: bool = False,
    overwrite: bool = True,
    errors: str = "raise",
    progress: Progress = False,
    fields: Mapping[str, Any] | None = None,
    buffer_bytes: int | None = None,
    durable: bool = False,
    timeout: float | None = None,
    shard_size: int | None = None,
    encoder: str = "opencv",
) -> Report:
    """Save frames of a video file (anything OpenCV's ``VideoCapture`` opens), or pages of a
    multi-page TIFF, one file each; return the Report.

        shmsave.save_frames("clip.mp4", "frames/{stem}_{index:06d}.jpg", quality=95, step=10)

    ``start``, ``stop``, ``step`` pick frames as ``range(start, stop, step)`` does (``stop=None``:
    to the end). ``{index}`` is the frame's (page's) number in the source, counted from 0, so
    ``step=10`` writes 0, 10, 20, ...; ``{stem}`` is the source's name without extension. The
    other options are those of ``save``. Frames are decoded in order in the calling thread
    (OpenCV releases the GIL meanwhile) and encoded on the Writer's threads or processes through
    one stream, whose ring bounds the memory; each file is byte-identical to
    ``cv2.imwrite(path, frame)`` of the decoded frame (BGR, as ``VideoCapture.read`` gives it;
    TIFF pages as ``cv2.imreadmulti(..., flags=cv2.IMREAD_UNCHANGED)`` gives them).

    ``overwrite=False`` resumes an interrupted extraction: frames whose files are there are
    decoded (a video cannot be sought exactly) but neither converted nor encoded again; TIFF
    pages already written are not read. A source that is not a video or TIFF raises
    InvalidRequest before anything is written; one that ends before the frames it announces
    (truncated or corrupt) raises ReadFailed once every frame read before is saved, naming the
    last one written.
    """
    writer = _shared_writer(workers)
    return writer.save_frames(
        source,
        template,
        start=start,
        stop=stop,
        step=step,
        quality=quality,
        compression=compression,
        params=params,
        rgb=rgb,
        overwrite=overwrite,
        errors=errors,
        progress=progress,
        fields=fields,
        buffer_bytes=buffer_bytes,
        durable=durable,
        timeout=timeout,
        shard_size=shard_size,
        encoder=encoder,
    )


def imwrite(path: str | os.PathLike[str], image: np.ndarray, params: Sequence[int] | None = None) -> bool:
    """``cv2.imwrite(path, image, params)`` on the process-wide Writer: copies the pixels and returns
    at once (True); see ``Writer.imwrite``. ``shmsave.flush()`` waits for the images and returns their
    Report; images still pending when the script ends are written before it exits."""
    return _shared_writer(None).imwrite(path, image, params)


def flush() -> Report:
    """Wait for every image of ``shmsave.imwrite`` since the last flush; return their Report (the first
    failure raises, with the Report attached)."""
    with _shared_lock:
        writer = _shared
    return writer.flush() if writer is not None else Report(0, 0, 0.0, engine="inline", workers=0)


def _shared_writer(workers: int | None) -> Writer:
    """The process-wide Writer for ``workers`` (None: the usable CPUs). A call that asks for another
    count replaces it, and the next call that asks for none gets the default count back."""
    global _shared, _shared_asked
    with _shared_lock:
        asked = workers
        if _shared is not None and workers is None and _shared_asked is not None:
            workers = usable_cpus()  # the last call asked for a count: a default call gets the default
        if _shared is None or (workers is not None and workers != _shared.workers):
            replacement = Writer(workers)  # checks `workers` before the working Writer goes
            if _shared is not None:
                _shared.close()
            _shared = replacement
        _shared_asked = asked
        return _shared
