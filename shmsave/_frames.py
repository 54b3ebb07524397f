"""Frames of a video and pages of a multi-page TIFF, saved through a stream (``save_frames``).

    open_frames(path) ──▶ Video | TiffPages ── Frame(number, msec, image) ──▶ Stream.write ──▶ Writer's encoders
                             ▲ decodes in the calling thread       (skip_to: the file is named by its number)
                             └ frames not picked (step, start, resume) are only grabbed, never converted

Decoding runs in the caller's thread (OpenCV lets go of the GIL while it
decodes), encoding on the Writer's threads or processes; the stream's ring
bounds the memory. A video's frames after the first are converted straight
into the ring (``VideoCapture.retrieve(out)`` with ``out`` from
``Stream._reserve``): one copy of each frame less (0.4-0.9 ms for 1080p).
A video is read in order: OpenCV's seek counts frames from timestamps,
which is wrong for variable frame rates, so skipped frames are decoded
(``grab``: no color conversion, no copy) rather than sought past.
A TIFF is read in runs of pages (``cv2.imreadmulti(path, start, count)``: each
call walks the page chain from the first page, ~35 us a page, so one call per
page would cost the square of the page count); pages already written on a
resumed run are not read at all.
"""

from __future__ import annotations

import _string
import dataclasses
import os
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

import cv2
import numpy as np

from . import naming
from ._files import already_written
from .errors import InvalidRequest, ReadFailed
from .naming import parse_template
from .report import Report, check_progress

if TYPE_CHECKING:
    from .report import Progress
    from .writer import Writer

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders
_TIFF_RUN_BYTES = 16 * 2**20  # pages read per imreadmulti call: ~16 MB of them (one page at least)
_NO_END = sys.maxsize
Wanted = Callable[[int, "float | None"], bool]  # (frame number, timestamp in ms) -> read its pixels?
Into = Callable[[tuple, np.dtype], "np.ndarray | None"]  # (shape, dtype) -> an array to decode into


class Frame(NamedTuple):
    """One frame (or page) of a source: its number from 0, its timestamp in milliseconds (None for a
    TIFF page), and its pixels (None for a frame its reader was told it does not want: already written)."""

    number: int
    msec: float | None
    image: np.ndarray | None


class Video:
    """A video file OpenCV's ``VideoCapture`` decodes, read in order, one frame at a time."""

    kind = "video"

    def __init__(self, path: str, capture: Any) -> None:
        self.path = path
        self._capture = capture
        announced = capture.get(cv2.CAP_PROP_FRAME_COUNT)
        # a count the container does not know reads as 0 or a huge negative number (AV_NOPTS_VALUE)
        self.count: int | None = int(announced) if 0 < announced < 2**53 else None
        self.shape = (int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), 3)
        self.dtype = np.dtype(np.uint8)
        self.ended: int | None = None  # the number of the first frame that could not be read

    def frames(self, picked: range, wanted: Wanted | None = None, into: Into | None = None) -> Iterator[Frame]:
        """The frames of ``picked`` (an ascending range) in order; those ``wanted(number, msec)``
        refuses come without pixels (decoded, never converted). Stops at the end of the video,
        setting ``ended``. ``into(shape, dtype)``: an array to convert the next frame into, shaped
        as the frame before (a stream's ring, ``Stream._reserve``); a frame of another shape gets
        an array of its own."""
        capture, number, last = self._capture, 0, None
        for target in picked:
            while number < target:
                if not capture.grab():
                    self.ended = number
                    return
                number += 1
            if not capture.grab():
                self.ended = number
                return
            msec = capture.get(cv2.CAP_PROP_POS_MSEC)  # the grabbed frame's timestamp
            image = None
            if wanted is None or wanted(target, msec):
                out = None if into is None or last is None else into(*last)
                ok, image = capture.retrieve() if out is None else capture.retrieve(out)
                if not ok:
                    self.ended = number
                    return
                last = (image.shape, image.dtype)
            number += 1
            yield Frame(target, msec, image)

    def why_ended(self) -> str:
        return f"the video announces {self.count} frames and ends after {self.ended} (truncated or corrupt)"

    def close(self) -> None:
        self._capture.release()


class TiffPages:
    """The pages of a TIFF, read in runs with ``cv2.imreadmulti`` as OpenCV decodes them (depth and
    channels unchanged: ``IMREAD_UNCHANGED``)."""

    kind = "tiff"

    def __init__(self, path: str) -> None:
        self.path = path
        self.count: int | None = cv2.imcount(path, cv2.IMREAD_UNCHANGED)
        first = self._read(0, 1)
        if not self.count or not first:
            raise InvalidRequest(f"{path}: OpenCV cannot read this TIFF file (no page it can decode)")
        self.shape, self.dtype = first[0].shape, first[0].dtype
        self._run = max(1, _TIFF_RUN_BYTES // max(1, first[0].nbytes))
        self.ended: int | None = None

    def frames(self, picked: range, wanted: Wanted | None = None, into: Into | None = None) -> Iterator[Frame]:
        """The pages of ``picked`` in order; those ``wanted(number, None)`` refuses come without pixels (never read).
        Stops at the first page that cannot be read, setting ``ended``. ``into`` is not used: a run
        of pages is read at once."""
        numbers = iter(picked)
        for number in numbers:
            if number >= self.count:
                self.ended = self.count
                return
            if wanted is not None and not wanted(number, None):
                yield Frame(number, None, None)
                continue
            if picked.step != 1:  # one page per call: reading the pages between would cost more
                run = [number]
            else:  # this page and the next ones to read, up to a run's worth
                run = [number]
                while len(run) < self._run and run[-1] + 1 < min(picked.stop, self.count):
                    following = run[-1] + 1
                    if wanted is not None and not wanted(following, None):
                        break
                    run.append(following)
                    next(numbers)
            pages = self._read(run[0], len(run))
            if len(pages) < len(run):  # find the page that fails: the ones before it are good
                pages = []
                for page in run:
                    one = self._read(page, 1)
                    if not one:
                        break
                    pages.append(one[0])
            for page, image in zip(run, pages):
                yield Frame(page, None, image)
            if len(pages) < len(run):
                self.ended = run[len(pages)]
                return

    def _read(self, start: int, count: int) -> tuple:
        try:
            ok, pages = cv2.imreadmulti(self.path, start=start, count=count, flags=cv2.IMREAD_UNCHANGED)
        except cv2.error:
            return ()
        return tuple(pages) if ok else ()

    def why_ended(self) -> str:
        return f"OpenCV cannot decode page {self.ended} of the {self.count} pages (truncated or corrupt)"

    def close(self) -> None:
        pass


def is_tiff(path: str) -> bool:
    """Whether the file starts as a TIFF does (whatever its name)."""
    try:
        with open(path, "rb") as file:
            return file.read(4) in _TIFF_MAGIC
    except OSError:
        return False


def open_frames(path: str | os.PathLike[str]) -> Video | TiffPages:
    """The frames of a video file or the pages of a TIFF at ``path``, or InvalidRequest saying why not."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InvalidRequest(f"{path}: no such file")
    if os.path.isdir(path):
        raise InvalidRequest(f"{path} is a folder, not a video or TIFF file")
    if is_tiff(path):
        return TiffPages(path)
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise InvalidRequest(
            f"{path}: OpenCV cannot open it as a video (not a video file, an unsupported codec, or a "
            "truncated file; OpenCV's FFmpeg may have said why above)"
        )
    video = Video(path, capture)
    reason = _not_a_video(video, capture)
    if reason:
        video.close()
        raise InvalidRequest(
            f"{path}: {reason}; shmsave reads video files and multi-page TIFFs (and, on the "
            "command line, .npy, .npz and .zarr stacks)"
        )
    return video


def _not_a_video(video: Video, capture: Any) -> str:
    """Why a file OpenCV opened is not a video to extract frames from ('' if it is one)."""
    fourcc = int(capture.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").rstrip(b"\0")
    if fourcc == b"ansi":  # FFmpeg's tty demuxer draws a text file (.txt, .nfo, ...) as frames of text
        return "it is a text file, which FFmpeg would draw as pictures of text, not a video"
    if video.count is None and fourcc.lower() in (b"mpng", b"mjpg", b"png", b"bmp", b"tiff", b"webp"):
        return "it is a single image (FFmpeg reads it as one picture of unknown length), not a video"
    return ""


def picked_frames(frames: Video | TiffPages, start: int | None, stop: int | None, step: int) -> range:
    """The frame numbers ``start:stop:step`` picks (to the end when ``stop`` is None); InvalidRequest
    for a range that is not one, or that starts past the end of a source of known length."""
    for name, value, low in (("start", start, 0), ("stop", stop, 0), ("step", step, 1)):
        if value is not None and (not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low):
            raise InvalidRequest(f"{name} must be an integer of at least {low} (or None), got {value!r}")
    start = int(start or 0)
    if stop is not None and stop <= start:
        raise InvalidRequest(f"stop={stop} must be greater than start={start}: the range picks no frame")
    count = frames.count
    if count is not None and start >= count:
        noun = "pages" if frames.kind == "tiff" else "frames"
        raise InvalidRequest(f"{frames.path} has {count} {noun} (0 to {count - 1}); start={start} is past its end")
    return range(start, _NO_END if stop is None else int(stop), int(step))


def expected(picked: range, count: int | None) -> int | None:
    """How many frames ``picked`` gives from a source announcing ``count`` frames (None: unknown)."""
    if count is None:
        return None if picked.stop == _NO_END else len(picked)
    return len(range(picked.start, min(picked.stop, count), picked.step))


def stem_of(path: str | os.PathLike[str]) -> str:
    return os.path.splitext(os.path.basename(os.fspath(path).rstrip(os.sep)))[0]


def save_frames(
    writer: Writer,
    source: str | os.PathLike[str],
    template: str | os.PathLike[str],
    *,
    start: int | None = None,
    stop: int | None = None,
    step: int = 1,
    progress: Progress = False,
    fields: dict | None = None,
    overwrite: bool = True,
    **options: Any,
) -> Report:
    """Save the frames ``start:stop:step`` of ``source`` through one stream of ``writer``; see
    ``shmsave.save_frames``."""
    check_progress(progress)
    frames = open_frames(source)
    try:
        picked = picked_frames(frames, start, stop, step)
        fields = {"stem": stem_of(frames.path), **(fields or {})}
        total = expected(picked, frames.count)
        bar = tick = None
        if progress is True:
            from .report import new_bar

            bar = new_bar(total)
            tick = bar.update
        elif progress:
            tick = progress if callable(progress) else progress.update
        try:
            return _save(writer, frames, picked, template, fields, overwrite, tick, options)
        finally:
            if bar is not None:
                bar.close()
    finally:
        frames.close()


def uses_msec(template) -> bool:
    """Whether a template names files by the frame's timestamp, ``{msec}``."""
    if not isinstance(template, (str, os.PathLike)):
        return False
    try:
        parts = list(_string.formatter_parser(os.fspath(template)))
    except ValueError:  # malformed: the stream's checks say how
        return False
    return any(name is not None and name.split(".")[0].split("[")[0] == "msec" for _, name, _, _ in parts)


def _msec_namer(frames, template, start: int, fields: dict, options: dict) -> Callable[[int, float | None], str]:
    """``{msec}``: the path of a frame from its number and timestamp (each frame then names its own
    file: ``Stream.write(image, path=...)``); the template checked whole first, with a stand-in."""
    if frames.kind != "video":
        raise InvalidRequest(f"{{msec}} is a video frame's timestamp, and {frames.path} is a TIFF: its pages have none")
    checked = parse_template(template, 1, start, {**fields, "msec": 0.0}, options.get("shard_size"))
    known = dict(checked.fields)

    def path_of(number: int, msec: float | None) -> str:
        return naming.path_of(checked.text, None, {**known, "msec": msec}, checked.names, number)

    return path_of


def _save(writer, frames, picked: range, template, fields: dict, overwrite: bool, tick, options: dict) -> Report:
    named = _msec_namer(frames, template, picked.start, fields, options) if uses_msec(template) else None
    if named is None:
        stream = writer.stream(
            template, start=picked.start, fields=fields, overwrite=overwrite, progress=tick, **options
        )
        path_of = stream._request.absolute_path
    else:  # every frame names its own file
        options = {key: value for key, value in options.items() if key != "shard_size"}
        stream = writer.stream(None, start=picked.start, overwrite=overwrite, progress=tick, **options)

    def wanted(number: int, msec: float | None) -> bool:
        """overwrite=False: a frame whose file is there is not read again (resume)."""
        return not already_written(path_of(number) if named is None else os.path.abspath(named(number, msec)))

    skipped = 0
    shown: dict[int, str] = {}  # {msec}: each frame's path as given, for ReadFailed
    with stream:
        for frame in frames.frames(picked, None if overwrite else wanted, stream._reserve):
            if named is not None:
                shown[frame.number] = named(frame.number, frame.msec)
            if frame.image is None:  # already written (overwrite=False): not converted, copied nor encoded again
                skipped += 1
                if tick is not None:
                    tick(1)
                continue
            stream.skip_to(frame.number)
            stream.write(frame.image, shown.get(frame.number))
    report = dataclasses.replace(stream.report, skipped=stream.report.skipped + skipped)
    ended = frames.ended
    if ended is not None and frames.count is not None and ended < min(picked.stop, frames.count):
        failed = {failure.index for failure in report.failed}
        before = range(picked.start, min(ended, picked.stop), picked.step)
        last = next((number for number in reversed(before) if number not in failed), None)
        last_path = None if last is None else shown.get(last) or stream._request.path(last)
        error = ReadFailed(frames.path, ended, frames.why_ended(), last, last_path)
        error.report = report
        raise error
    return report
