"""Checking a save request, whole, before anything is written."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from . import codec
from .errors import InvalidRequest, WriteFailed, describe_oserror
from .naming import Template, parse_template


@dataclass(frozen=True)
class Request:
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

    def job(self) -> tuple:
        """What every task carries besides its pixels (see ``_worker.write_images``)."""
        return (self.template.text, self.template.folder, self.template.fields, self.encoding.extension,
                self.encoding.params, self.encoding.rgb, self.overwrite, not self.collect)

    def path(self, index: int) -> str:
        return self.template.path(index)


def make_request(images, template, *, quality=None, compression=None, params=None, rgb=False,
                 start=0, overwrite=True, errors="raise", fields=None) -> Request:
    """Check every argument of ``save`` and return a Request, or raise InvalidRequest."""
    if errors not in ("raise", "collect"):
        raise InvalidRequest(f"errors must be 'raise' or 'collect', got {errors!r}")
    if not isinstance(start, (int, np.integer)) or isinstance(start, bool) or start < 0:
        raise InvalidRequest(f"start must be a non-negative integer, got {start!r}")
    stack, listed = _normalize(images)
    count = len(stack) if stack is not None else len(listed)
    parsed = parse_template(template, max(count, 1), int(start), fields)
    encoding = codec.plan_encoding(parsed.extension, quality=quality, compression=compression,
                                   params=params, rgb=rgb)
    if stack is not None:
        channels = stack.shape[3] if stack.ndim == 4 else 1
        codec.check_pixels(encoding, stack.dtype, channels, "the image stack")
        _check_finite(stack, "the image stack")
        nbytes = stack.nbytes
    else:
        for i, image in enumerate(listed):
            channels = image.shape[2] if image.ndim == 3 else 1
            codec.check_pixels(encoding, image.dtype, channels, f"image {i}")
            _check_finite(image, f"image {i}")
        nbytes = sum(image.nbytes for image in listed)
    return Request(stack, listed, count, nbytes, int(start), parsed, encoding, bool(overwrite),
                   errors == "collect")


def _normalize(images):
    if isinstance(images, np.ndarray):
        if images.dtype == object:
            return None, _normalize_list(list(images))
        if images.ndim not in (3, 4):
            hint = " For one image, pass [image] or image[None]." if images.ndim == 2 else ""
            raise InvalidRequest(f"images must be an (N, H, W) or (N, H, W, C) array, got {images.ndim} "
                                 f"dimension(s) with shape {images.shape}.{hint}")
        if images.ndim == 3 and images.shape[2] in (3, 4) and images.shape[1] >= 16:
            raise InvalidRequest(
                f"an array of shape {images.shape} looks like one color image, not {images.shape[0]} "
                f"gray images of {images.shape[1]}x{images.shape[2]} pixels. Pass [image] or image[None] "
                "for one image; for gray images that narrow, add the channel axis: images[..., None]")
        if len(images) and 0 in images.shape[1:]:
            raise InvalidRequest(f"images of shape {images.shape[1:]} have no pixels")
        return images, None
    if isinstance(images, (list, tuple)):
        return None, _normalize_list(list(images))
    raise InvalidRequest(f"images must be a numpy array or a list of arrays, got {type(images).__name__}")


def _normalize_list(images: list) -> list:
    dtype = None
    for i, image in enumerate(images):
        if not isinstance(image, np.ndarray):
            raise InvalidRequest(f"image {i} is a {type(image).__name__}, not a numpy array")
        if image.ndim not in (2, 3):
            raise InvalidRequest(f"image {i} has shape {image.shape}; each image must be (H, W) or (H, W, C)")
        if 0 in image.shape:
            raise InvalidRequest(f"image {i} has shape {image.shape} and no pixels")
        if dtype is None:
            dtype = image.dtype
        elif image.dtype != dtype:
            raise InvalidRequest(f"image {i} is {image.dtype} but image 0 is {dtype}; "
                                 "all images of one call must share a dtype: cast them first")
    return images


_FINITE_CHUNK_BYTES = 16 * 2**20  # np.isfinite makes a bool array; check a big stack in slices


def _check_finite(array: np.ndarray, what: str) -> None:
    if array.dtype.kind != "f" or not array.size:
        return
    step = max(1, _FINITE_CHUNK_BYTES // max(1, array[:1].nbytes))
    for lo in range(0, len(array), step):
        if not np.isfinite(array[lo:lo + step]).all():
            raise InvalidRequest(f"{what} contains NaN or infinity, which no image format stores faithfully; "
                                 "replace them first, e.g. np.nan_to_num(images)")


def prepare_folder(request: Request) -> None:
    """Create the folder every path shares and check it writable, or raise WriteFailed.

    So a read-only or forbidden folder fails once, before any image, instead of
    once per image. The check is ``access()`` (one syscall); only when it
    says no is an empty file created and removed, to report the real error.
    """
    folder = request.template.folder
    if folder is None:
        return
    doing = f"cannot create folder {folder!r}"
    try:
        if folder and not os.path.isdir(folder):
            os.makedirs(folder, exist_ok=True)
        doing = f"cannot write in folder {folder or '.'!r}"
        if os.access(folder or ".", os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids):
            return
        probe = os.path.join(folder or ".", f".shmsave-probe-{os.getpid()}")
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except OSError as error:
        raise WriteFailed(request.start, request.path(request.start), f"{doing}: {describe_oserror(error)}",
                          error.errno) from error
