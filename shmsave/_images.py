"""Checking images: a call's stack or list whole, a stream's images one at a time."""

from typing import NamedTuple

import numpy as np

from . import codec
from .errors import InvalidRequest

_ALIGN = 64  # every image in shared memory starts on a cache line (and on any dtype's alignment)


def aligned(nbytes: int) -> int:
    """The bytes an image of ``nbytes`` takes in a ring or a staging segment."""
    return (nbytes + _ALIGN - 1) // _ALIGN * _ALIGN


def place(buffer, offset: int, image: np.ndarray) -> None:
    """Copy ``image``'s pixels, in C order, into the writable ``buffer`` at ``offset`` (ValueError
    when they do not fit): a small image into a stream's ring or a call's staging slot."""
    if image.flags.c_contiguous:
        memoryview(buffer)[offset : offset + image.nbytes] = memoryview(image).cast("B")
    else:
        np.frombuffer(buffer, image.dtype, image.size, offset).reshape(image.shape)[...] = image


def placer():
    """``place``, or ``_fastfiles.place`` where it is built: for a 50x50 image, 0.13 us against
    ~0.5 when it is C-contiguous, 0.25 against 0.9 for a crop of a bigger one, 1.3 against 1.8
    for one channel of a colour image."""
    from . import _files  # loaded by any call that places images

    return getattr(_files.compiled, "place", place)


def normalize(images):
    """``(stack, None)`` for an (N, H, W[, C]) array, ``(None, list)`` for a list of 2-D/3-D arrays
    of one dtype; InvalidRequest otherwise."""
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
        check_array(image, i)
        if dtype is None:
            dtype = image.dtype
        elif image.dtype != dtype:
            raise InvalidRequest(
                f"image {i} is {image.dtype} but image 0 is {dtype}; "
                "all images of one call must share a dtype: cast them first"
            )
    return images


def check_array(image, what: str | int) -> None:
    """Refuse what is not one 2-D/3-D numpy array with pixels (a list's item, a stream's image);
    ``what`` names it in the message, or is a list's index (the message is made only to refuse)."""
    if isinstance(image, np.ndarray) and 2 <= image.ndim <= 3 and image.size:
        return
    if isinstance(what, int):
        what = f"image {what}"
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


def check_image(encoding: codec.Encoding, image, what: str) -> None:
    """Refuse one image that is not a 2-D/3-D array ``encoding`` can write unchanged (NaN and
    infinity aside: ``check_finite``)."""
    check_array(image, what)
    codec.check_pixels(encoding, image.dtype, image.shape[2] if image.ndim == 3 else 1, what)
    codec.check_size(encoding, image.shape[0], image.shape[1], what)


class Layout(NamedTuple):
    """A shape and dtype of images that passed the checks of one encoding."""

    shape: tuple[int, ...]
    dtype: np.dtype
    dtype_str: str
    nbytes: int
    floating: bool  # NaN and infinity are still checked image by image
    ring_bytes: int  # aligned(nbytes): what an image takes in a stream's ring


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
            layout = Layout(
                image.shape, image.dtype, image.dtype.str, image.nbytes, image.dtype.kind == "f", aligned(image.nbytes)
            )
            self._seen[(image.shape, image.dtype)] = layout
        if layout.floating:
            check_finite(image, f"image {index}")
        return layout
