"""Checking a save request, whole, before anything is written."""

from __future__ import annotations

import errno
import os
from typing import NamedTuple

import numpy as np

from . import codec
from ._protocol import Job
from .errors import InvalidRequest, WriteFailed, describe_oserror
from .naming import Template, parse_template


class Request(NamedTuple):
    """A checked request: images, where each goes, and how to encode it.

    ``stack`` is an (N, H, W[, C]) array, or None when ``images`` is a list of
    separate arrays (``listed``).
    """

    stack: np.ndarray | None
    listed: list | None
    count: int
    nbytes: int
    start: int
    template: Template
    encoding: codec.Encoding
    overwrite: bool
    collect: bool
    cast: np.dtype | None  # integers whose values all fit this type the format holds are saved as it
    cwd: str  # the caller's working folder when the request was made: relative paths resolve here
    umask: int  # the caller's umask then
    durable: bool  # every file and new folder synced to stable storage before the call returns
    timeout: float | None  # seconds a worker process may go without progress before it is killed

    def job(self) -> Job:
        """What every task carries besides its pixels (see ``_worker.write_images``)."""
        return Job(
            self.template.text,
            self.template.folder,
            self.template.fields,
            self.encoding.extension,
            self.encoding.params,
            self.encoding.rgb,
            self.overwrite,
            not self.collect,
            self.cwd,
            self.umask,
            None if self.cast is None else self.cast.str,
            self.durable,
            self.timeout,
        )

    def path(self, index: int) -> str:
        """The path of image ``index`` as the caller wrote it (relative paths stay relative)."""
        return self.template.path(index)

    def absolute_path(self, index: int) -> str:
        """The path of image ``index``, resolved against the caller's folder at the time of the call."""
        return os.path.join(self.cwd, self.template.path(index))


def make_request(
    images,
    template,
    *,
    quality=None,
    compression=None,
    params=None,
    rgb=False,
    start=0,
    overwrite=True,
    errors="raise",
    fields=None,
    durable=False,
    timeout=None,
) -> Request:
    """Check every argument of ``save`` and return a Request, or raise InvalidRequest."""
    _check_errors_and_start(errors, start)
    _check_durable(durable)
    timeout = _checked_timeout(timeout)
    stack, listed = _normalize(images)
    count = len(stack) if stack is not None else len(listed)
    parsed = parse_template(template, max(count, 1), int(start), fields)
    encoding = codec.plan_encoding(parsed.extension, quality=quality, compression=compression, params=params, rgb=rgb)
    dtype = stack.dtype if stack is not None else (listed[0].dtype if listed else np.dtype(np.uint8))
    targets = codec.integer_targets(encoding, dtype)
    if stack is not None:
        channels = stack.shape[3] if stack.ndim == 4 else 1
        codec.check_pixels(encoding, stack.dtype, channels, "the image stack", castable=bool(targets))
        codec.check_size(encoding, stack.shape[1], stack.shape[2], "each image of the stack")
        check_finite(stack, "the image stack")
    else:
        for i, image in enumerate(listed):
            channels = image.shape[2] if image.ndim == 3 else 1
            codec.check_pixels(encoding, image.dtype, channels, f"image {i}", castable=bool(targets))
            codec.check_size(encoding, image.shape[0], image.shape[1], f"image {i}")
            check_finite(image, f"image {i}")
    cast = _integer_cast(stack if stack is not None else listed, dtype, targets, encoding) if targets else None
    itemsize = (cast or dtype).itemsize
    nbytes = (
        sum(image.size for image in (stack if stack is not None else listed)) * itemsize
        if cast is not None
        else (stack.nbytes if stack is not None else sum(image.nbytes for image in listed))
    )
    return Request(
        stack,
        listed,
        count,
        nbytes,
        int(start),
        parsed,
        encoding,
        bool(overwrite),
        errors == "collect",
        cast,
        _working_folder(parsed.text),
        current_umask(),
        bool(durable),
        timeout,
    )


def _integer_cast(images, dtype: np.dtype, targets: tuple[np.dtype, ...], encoding: codec.Encoding) -> np.dtype:
    """The narrowest of ``targets`` that holds every value of ``images``; InvalidRequest naming the
    first image whose values no target holds.

    OpenCV would saturate such values silently; a cast of values that fit is exact, so the files
    are what ``cv2.imwrite(path, image.astype(target))`` writes.
    """
    if isinstance(images, np.ndarray) and images.size:
        fits = _unsigned_fit(images, targets)
        if fits is not None:
            codec.check_cast(encoding, fits)
            return fits
    if isinstance(images, np.ndarray):
        axes = tuple(range(1, images.ndim))
        lows, highs = images.min(axis=axes), images.max(axis=axes)
    else:
        lows = np.array([image.min() for image in images])
        highs = np.array([image.max() for image in images])
    low, high = int(lows.min()), int(highs.max())
    for target in targets:
        info = np.iinfo(target)
        if info.min <= low and high <= info.max:
            codec.check_cast(encoding, target)
            return target
    widest = [np.iinfo(t) for t in targets]
    ranges = list(zip(lows.tolist(), highs.tolist()))
    i = next(i for i, (lo, hi) in enumerate(ranges) if not any(t.min <= lo and hi <= t.max for t in widest))
    lo, hi = ranges[i]
    fmt = codec.format_for(encoding.extension)
    raise InvalidRequest(
        f"image {i} is {dtype.name} with values from {lo} to {hi}, which {fmt.name} "
        f"({encoding.extension}) cannot hold; {codec.dtype_advice(dtype.name, fmt)}"
    )


def _unsigned_fit(stack: np.ndarray, targets: tuple[np.dtype, ...]) -> np.dtype | None:
    """The first of ``targets`` that holds every value of ``stack`` when none is negative; else None.

    One pass over the stack (the maximum of its bits read as unsigned: a negative value reads
    as 2**63 or more, more than any target holds), where the exact check takes two, per image
    (question10000's int64 stack, 200 MB: 19-23 ms against 40 ms for ``min`` and ``max``).
    """
    if stack.dtype.kind not in "iu":
        return None
    most = int(stack.view(stack.dtype.str.replace("i", "u")).max())  # the same byte order
    return next((target for target in targets if most <= np.iinfo(target).max), None)


# A stream's image count is unknown unless given: the check that no two images get one path
# (only for unusual {index} formats) covers this many.
_STREAM_COUNT_CHECKED = 10_000


def make_stream_request(
    template,
    *,
    total=None,
    quality=None,
    compression=None,
    params=None,
    rgb=False,
    start=0,
    overwrite=True,
    errors="raise",
    fields=None,
    durable=False,
    timeout=None,
) -> Request:
    """Check the arguments of ``Writer.stream`` (those of ``save`` but the images, whose number is
    ``total`` or unknown); each image is checked as it comes (``check_image``)."""
    _check_errors_and_start(errors, start)
    _check_durable(durable)
    timeout = _checked_timeout(timeout)
    if total is not None and (not isinstance(total, (int, np.integer)) or isinstance(total, bool) or total < 1):
        raise InvalidRequest(f"total must be a positive integer (the number of images to come) or None, got {total!r}")
    count = int(total) if total is not None else _STREAM_COUNT_CHECKED
    parsed = parse_template(template, count, int(start), fields)
    encoding = codec.plan_encoding(parsed.extension, quality=quality, compression=compression, params=params, rgb=rgb)
    return Request(
        None,
        None,
        int(total or 0),
        0,
        int(start),
        parsed,
        encoding,
        bool(overwrite),
        errors == "collect",
        None,
        _working_folder(parsed.text),
        current_umask(),
        bool(durable),
        timeout,
    )


def check_image(encoding: codec.Encoding, image, what: str) -> None:
    """Refuse one image that is not a 2-D/3-D array ``encoding`` can write unchanged (NaN and
    infinity aside: ``check_finite``)."""
    _check_array(image, what)
    codec.check_pixels(encoding, image.dtype, image.shape[2] if image.ndim == 3 else 1, what)
    codec.check_size(encoding, image.shape[0], image.shape[1], what)


class Layout(NamedTuple):
    """A shape and dtype of images that passed the checks of one encoding."""

    shape: tuple[int, ...]
    dtype: np.dtype
    dtype_str: str
    nbytes: int
    floating: bool  # NaN and infinity are still checked image by image


_LAYOUTS_MAX = 4096  # shapes and dtypes remembered; a stream of ever-new sizes starts over


class ImageChecks:
    """Checks images one at a time (``Stream.write``) for ``encoding``: a shape and dtype seen
    before cost one dict lookup; floating-point pixels are still checked for NaN and infinity."""

    def __init__(self, encoding: codec.Encoding) -> None:
        self._encoding = encoding
        self._seen: dict[tuple, Layout] = {}

    def check(self, image, index: int) -> Layout:
        """The layout of ``image`` (image ``index``), or InvalidRequest naming it."""
        if type(image) is not np.ndarray and not isinstance(image, np.ndarray):
            check_image(self._encoding, image, f"image {index}")  # raises, naming the type
        layout = self._seen.get((image.shape, image.dtype))
        if layout is None:
            check_image(self._encoding, image, f"image {index}")
            if len(self._seen) >= _LAYOUTS_MAX:
                self._seen.clear()
            layout = Layout(image.shape, image.dtype, image.dtype.str, image.nbytes, image.dtype.kind == "f")
            self._seen[(image.shape, image.dtype)] = layout
        if layout.floating:
            check_finite(image, f"image {index}")
        return layout


def _check_durable(durable) -> None:
    if not isinstance(durable, (bool, np.bool_)):
        raise InvalidRequest(f"durable must be True or False, got {durable!r}")


def _checked_timeout(timeout) -> float | None:
    """None, or a positive finite number of seconds as a float."""
    if timeout is None:
        return None
    ok = isinstance(timeout, (int, float, np.integer, np.floating)) and not isinstance(timeout, bool)
    if not ok or not 0 < timeout < float("inf"):
        raise InvalidRequest(
            f"timeout must be a positive number of seconds (how long a worker may make no progress) or None, "
            f"got {timeout!r}"
        )
    return float(timeout)


def _check_errors_and_start(errors, start) -> None:
    if errors not in ("raise", "collect"):
        raise InvalidRequest(f"errors must be 'raise' or 'collect', got {errors!r}")
    if not isinstance(start, (int, np.integer)) or isinstance(start, bool) or start < 0:
        raise InvalidRequest(f"start must be a non-negative integer, got {start!r}")


def _working_folder(template: str) -> str:
    """The folder relative paths resolve in: the caller's, now (workers run elsewhere)."""
    try:
        return os.getcwd()
    except FileNotFoundError:
        if os.path.isabs(template):
            return "/"
        raise InvalidRequest(
            "the working folder of this process no longer exists, so the relative path "
            f"template {template!r} cannot be resolved; use an absolute path or "
            "os.chdir() to an existing folder"
        ) from None


def current_umask() -> int:
    """This process's umask, read without changing it (Linux >= 4.7), else by setting it back at once."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _normalize(images):
    if isinstance(images, np.ndarray):
        if images.dtype == object:
            return None, _normalize_list(list(images))
        if images.ndim not in (3, 4):
            hint = " For one image, pass [image] or image[None]." if images.ndim == 2 else ""
            raise InvalidRequest(
                f"images must be an (N, H, W) or (N, H, W, C) array, got {images.ndim} "
                f"dimension(s) with shape {images.shape}.{hint}"
            )
        if images.ndim == 3 and images.shape[2] in (3, 4):
            n, h, c = images.shape
            raise InvalidRequest(
                f"an array of shape {images.shape} is ambiguous: one {n}x{h} image with {c} color channels, "
                f"or {n} gray images of {h}x{c} pixels. Say which: images[None] for one color image, "
                "images[..., None] for gray images"
            )
        if len(images) and 0 in images.shape[1:]:
            raise InvalidRequest(f"images of shape {images.shape[1:]} have no pixels")
        return images, None
    if isinstance(images, (list, tuple)):
        return None, _normalize_list(list(images))
    raise InvalidRequest(
        f"images must be a numpy array or a list of arrays, got {_type_name(images)}" + _asarray_hint(images)
    )


def _type_name(value) -> str:
    kind = type(value)
    return kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def _asarray_hint(value) -> str:
    if hasattr(value, "__array__") or hasattr(value, "__array_interface__"):
        return "; convert it with np.asarray(...) first"
    return ""


def _normalize_list(images: list) -> list:
    dtype = None
    for i, image in enumerate(images):
        _check_array(image, f"image {i}")
        if dtype is None:
            dtype = image.dtype
        elif image.dtype != dtype:
            raise InvalidRequest(
                f"image {i} is {image.dtype} but image 0 is {dtype}; "
                "all images of one call must share a dtype: cast them first"
            )
    return images


def _check_array(image, what: str) -> None:
    """Refuse what is not one 2-D/3-D numpy array with pixels (a list's item, a stream's image)."""
    if not isinstance(image, np.ndarray):
        raise InvalidRequest(
            f"{what} is a {_type_name(image)}, not a numpy array"
            + (_asarray_hint(image) or "; each image must be a numpy array")
        )
    if image.ndim not in (2, 3):
        raise InvalidRequest(f"{what} has shape {image.shape}; each image must be (H, W) or (H, W, C)")
    if 0 in image.shape:
        raise InvalidRequest(f"{what} has shape {image.shape} and no pixels")


_FINITE_CHUNK_BYTES = 16 * 2**20  # np.isfinite makes a bool array; check a big stack in slices


def check_finite(array: np.ndarray, what: str) -> None:
    """Refuse floating-point pixels with NaN or infinity (checked in slices: np.isfinite makes a copy)."""
    if array.dtype.kind != "f" or not array.size:
        return
    step = max(1, _FINITE_CHUNK_BYTES // max(1, array[:1].nbytes))
    for lo in range(0, len(array), step):
        if not np.isfinite(array[lo : lo + step]).all():
            raise InvalidRequest(
                f"{what} contains NaN or infinity, which no image format stores faithfully; "
                "replace them first, e.g. np.nan_to_num(images)"
            )


def prepare_folder(request: Request) -> None:
    """Create the folder every path shares and check it writable, or raise WriteFailed.

    So a read-only or forbidden folder fails once, before any image, instead of
    once per image. The check is ``access()`` (one syscall); only when it
    says no is an empty file created and removed, to report the real error.
    """
    shown = request.template.folder
    if shown is None:
        return
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
