"""The per-image paths of a stream: ``Stream.write(image, path=...)`` and ``Writer.imwrite``.

Each named image is checked as ``cv2.imwrite`` would take it, in the caller's thread, before
anything of it is copied: a path (str or os.PathLike) with a file name and an extension this
OpenCV writes, ``~`` expanded, a relative path resolved against the caller's folder at this
call; its format's options (the stream's, or the ``params`` given with it, as ``cv2.imwrite``'s
third argument) are planned once per extension and params, so the next image of that kind costs
a dict lookup. The formats of a stream are numbered as they come (``formats``); a task carries
its images' paths and numbers (``_protocol.Names``).

Two images on one path: the later waits until the earlier is written (``busy``), so the file
ends up holding the last one, as a loop of ``cv2.imwrite`` calls leaves it.
"""

from __future__ import annotations

import os
import reprlib
from typing import TYPE_CHECKING

from . import codec
from ._images import ImageChecks
from .errors import InvalidRequest

if TYPE_CHECKING:
    from .request import Request


class NoTemplate:
    """The image checks of a stream without a template: every image must bring its path."""

    def check(self, image, index: int):
        raise InvalidRequest(
            f"image {index} has no path: this stream has no template, so each image needs its own, "
            "write(image, path='out/name.png')"
        )


class StreamNames:
    """Checks the paths of a stream's named images and numbers their formats (see the module)."""

    def __init__(self, request: Request, options: dict) -> None:
        self._request = request
        self._options = options  # quality, compression, params, rgb of the stream
        self.formats: list[tuple[str, tuple[int, ...]]] = []  # (extension, params) by number
        self._kinds: dict[tuple, tuple[int, ImageChecks]] = {}  # (extension, params key) -> number, checks
        self.busy: set[str] = set()  # paths of named images accepted and not yet written
        if request.encoding.extension:  # number 0: the template's format
            self.formats.append((request.encoding.extension, request.encoding.params))

    def resolve(self, path, params, index: int) -> tuple[str, str, int, ImageChecks]:
        """``(path, key, format number, checks)`` for image ``index`` going to ``path``; ``key``
        compares paths (absolute, normalised); InvalidRequest naming the image and the path."""
        if type(path) is not str:
            path = _as_path(path, index)
        if not path or "\0" in path or path[-1] == os.sep:
            what = "is empty" if not path else "has a NUL character" if "\0" in path else "is a folder"
            raise InvalidRequest(f"the path of image {index}, {path!r}, {what}; give each image a file name")
        if path[0] != os.sep:
            if path[0] == "~":
                path = os.path.expanduser(path)
            if path[0] != os.sep:
                path = os.path.join(os.getcwd(), path)  # the caller's folder now, as cv2.imwrite
        key = os.path.normpath(path) if "/." in path or "//" in path else path
        dot = path.rfind(".")
        extension = path[dot:].lower() if dot > path.rfind(os.sep) else ""
        kind = self._kinds.get((extension, params if params is None else _params_key(params)))
        if kind is None:
            kind = self._plan(extension, params, path, index)
        return path, key, kind[0], kind[1]

    def _plan(self, extension: str, params, path: str, index: int) -> tuple[int, ImageChecks]:
        options = self._options
        try:
            if params is not None:
                encoding = codec.plan_encoding(extension, params=params, rgb=options["rgb"])
            elif self._request.encoding.extension and extension != self._request.encoding.extension:
                both = [self._request.encoding.extension, extension]
                encoding = codec.plan_encodings(both, **options)[extension]  # the stream's options that apply
            elif self._request.encoding.extension:
                encoding = self._request.encoding
            else:
                encoding = codec.plan_encoding(extension, **options)
        except InvalidRequest as error:
            raise InvalidRequest(f"image {index} goes to {path!r}: {error}") from None
        format_ = (encoding.extension, encoding.params)
        if format_ not in self.formats:
            self.formats.append(format_)
        kind = (self.formats.index(format_), ImageChecks(encoding))
        self._kinds[(extension, params if params is None else _params_key(params))] = kind
        return kind


def _as_path(path, index: int) -> str:
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str):
        raise InvalidRequest(f"the path of image {index} is {reprlib.repr(path)}; give a str or os.PathLike")
    return path


def _params_key(params) -> tuple:
    """``params`` (cv2.imwrite's flat list, or shmsave's dict) as a dict key."""
    if isinstance(params, dict):
        return ("dict", *sorted(params.items(), key=repr))
    try:
        return tuple(params)
    except TypeError:
        raise InvalidRequest(
            f"params must be a flat [flag, value, ...] list, as cv2.imwrite takes, or a dict; got {params!r}"
        ) from None
