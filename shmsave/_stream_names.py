"""The per-image paths of a stream: ``Stream.write(image, path=...)`` and ``Writer.imwrite``.

Each named image is checked as ``cv2.imwrite`` would take it, in the caller's thread, before
anything of it is copied: a path (str or os.PathLike) with a file name and an extension this
OpenCV writes, ``~`` expanded, a relative path resolved against the caller's folder at this
call; its format's options (the stream's, or the ``params`` given with it, as ``cv2.imwrite``'s
third argument) are planned once per extension and params, so the next image of that kind costs
a dict lookup. The formats of a stream are numbered as they come (``formats``); a task carries
its images' paths and numbers (``_job.Names``).

Two images on one path: the later waits until the earlier is written (``busy``), so the file
ends up holding the last one, as a loop of ``cv2.imwrite`` calls leaves it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from . import _files, codec
from ._images import ImageChecks
from .errors import InvalidRequest
from .naming import path_text

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
        self._plain: dict[str, tuple[int, ImageChecks]] = {}  # extension as written -> format number, checks
        self._kinds: dict[tuple, dict] = {}  # params key -> the same, for images given params
        self._last_params: object = None  # the params of the last image given some, and their kinds
        self._last_kinds: dict = {}
        self._plain_kind = getattr(_files.compiled, "plain_kind", plain_kind)  # compiled where it is built
        self.busy: set[str] = set()  # paths of named images accepted and not yet written
        if request.encoding.extension:  # number 0: the template's format
            self.formats.append((request.encoding.extension, request.encoding.params))

    def resolve(self, path, params, index: int) -> tuple[str, str, int, ImageChecks]:
        """``(path, key, format number, checks)`` for image ``index`` going to ``path``; ``key``
        compares paths (absolute, normalised); InvalidRequest naming the image and the path.

        The caller's CPU per ``imwrite`` of a tiny image is the budget here (benchmarks/names.py):
        a path that is absolute, plain and of a kind seen before costs one scan (``plain_kind``,
        compiled where it is built) and one dict lookup.
        """
        if params is None:
            kinds = self._plain
        elif params == self._last_params:
            kinds = self._last_kinds
        else:
            kinds = self._last_kinds = self._kinds.setdefault(_params_key(params), {})
            self._last_params = dict(params) if isinstance(params, dict) else list(params)  # a copy: theirs may change
        kind = self._plain_kind(path, kinds)
        if kind is None:
            return self._resolve(path, params, kinds, index)
        return path, path, kind[0], kind[1]

    def _resolve(self, path, params, kinds: dict, index: int) -> tuple[str, str, int, ImageChecks]:
        """``resolve`` for a path that is not plain or of a kind not seen before."""
        if type(path) is not str:
            path = path_text(path, index)
        if not path or path[0] != os.sep:
            path = _absolute(path, index)
        if "\0" in path or path[-1] == os.sep:
            what = "has a NUL character" if "\0" in path else "is a folder"
            raise InvalidRequest(f"the path of image {index}, {path!r}, {what}; give each image a file name")
        key = os.path.normpath(path) if "/." in path or "//" in path else path
        extension = path[path.rfind(".") :]
        kind = kinds.get(extension)
        if kind is None:
            kind = self._plan(extension, params, path, index)
        return path, key, kind[0], kind[1]

    def _plan(self, written: str, params, path: str, index: int) -> tuple[int, ImageChecks]:
        options = self._options
        extension = written.lower() if written.startswith(".") and os.sep not in written else ""
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
        kinds = self._plain if params is None else self._kinds.setdefault(_params_key(params), {})
        kinds[written] = kind
        return kind


def _absolute(path: str, index: int) -> str:
    """A path that is empty (refused), starts with ``~`` (a home folder) or is relative (to the
    caller's folder now, as ``cv2.imwrite`` takes it) as an absolute path."""
    if not path:
        raise InvalidRequest(f"the path of image {index} is empty; give each image a file name")
    if path[0] == "~":
        path = os.path.expanduser(path)
    if path[0] != os.sep:
        try:
            path = os.path.join(os.getcwd(), path)
        except FileNotFoundError:
            raise InvalidRequest(
                f"image {index}: the working folder of this process no longer exists, so the relative path "
                f"{path!r} cannot be resolved; use an absolute path or os.chdir() to an existing folder"
            ) from None
    return path


def plain_kind(path, kinds: dict):
    """``kinds.get(path[path.rfind('.'):])`` for a plain path (a ``str`` that starts with ``/``, does
    not end with it and has no NUL, ``/.`` or ``//``: its own normalised absolute form), else None.
    What ``_fastfiles.plain_kind`` does where it is built."""
    if type(path) is str and path[:1] == "/" and path[-1] != "/" and not ("\0" in path or "/." in path or "//" in path):
        return kinds.get(path[path.rfind(".") :])
    return None


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
