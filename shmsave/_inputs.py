"""The command's inputs: .npy files, .npz arrays, .zarr stores, videos and multi-page TIFFs,
opened from their headers and checked whole.

Nothing here writes an image. ``open_inputs`` reads headers only (a video's
container, a TIFF's first page); ``check`` runs every input against the
library's rules (with a zero-stride stand-in of the same shape and dtype: no
pixel is read) and refuses inputs that would write the same paths;
``load_member`` reads one .npz array into shared memory.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from typing import TYPE_CHECKING

import numpy as np

from ._images import check_image
from .errors import InvalidRequest
from .request import make_request, make_stream_request

if TYPE_CHECKING:
    from .writer import Writer

_MB = 2**20
_READ_CHUNK_BYTES = 16 * _MB  # .npz members are read into shared memory in pieces this big
_SPAN_CHECKED = 1_000_000  # a video's indices the template is checked for (its length may be unknown)


class UsageError(Exception):
    """The command line or an input is wrong; nothing has been written."""


class UnreadableInput(Exception):
    """An input turned out wrong only when its data was read (a corrupt .npz member)."""


class Unit:
    """One array to save: a .npy file, one array of a .npz archive, a zarr array, or the frames of a
    video or pages of a TIFF (``picked``). A plain class: a dataclass takes ~1 ms to create, at the
    start of every command."""

    __slots__ = ("path", "key", "shape", "dtype", "start", "fields", "picked")
    __slots__ += ("read_error", "written", "bytes", "skipped", "failed", "error")  # filled in by saving

    def __init__(
        self,
        path: str,
        key: str | None,  # the .npz member's name; None for .npy
        shape: tuple,  # a video's or TIFF's: (frames picked, or 0 if unknown, *the first frame's shape)
        dtype: np.dtype,
        start: int = 0,
        fields: dict | None = None,
        picked: range | None = None,  # a video's frames or a TIFF's pages to save, by number; None for a stack
    ) -> None:
        self.path, self.key, self.shape, self.dtype, self.start = path, key, shape, dtype, start
        self.fields = {} if fields is None else fields
        self.picked = picked
        self.read_error = ""  # a video or TIFF that ended early: why, and the last frame written
        self.written = self.bytes = self.skipped = self.failed = 0  # what saving it did
        self.error = ""  # why none of its images was written, when its data could not be used

    @property
    def label(self) -> str:
        return self.path if self.key is None else f"{self.path}[{self.key}]"

    @property
    def count(self) -> int:
        return self.shape[0]

    @property
    def end(self) -> int:
        """One past the last index this unit may write."""
        if self.picked is None:
            return self.start + self.count
        return self.picked.start + (self.count - 1) * self.picked.step + 1 if self.count else self.picked.stop

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def open_inputs(paths: list[str], keys: list[str] | None, frames: slice = slice(None)) -> list[Unit]:
    """A unit per .npy file, per (selected) .npz array, per zarr store, and per video or TIFF (its
    frames or pages ``frames.start:frames.stop:frames.step``), from the headers alone."""
    units: list[Unit] = []
    for path in paths:
        if is_zarr(path):
            units += _open_zarr(path)
            continue
        extension = os.path.splitext(path)[1].lower()
        if extension not in (".npy", ".npz") and os.path.isfile(path):
            units.append(_open_frames(path, frames))
            continue
        if not os.path.exists(path):
            raise UsageError(f"{path}: no such file")
        if os.path.isdir(path):
            raise UsageError(f"{path} is a folder, not a {extension} file")
        try:
            units += _open_npy(path) if extension == ".npy" else _open_npz(path, keys)
        except PermissionError as error:
            raise UsageError(f"cannot read {path}: {error.strerror}") from None
    if keys and not any(unit.key is not None for unit in units):
        raise UsageError("--key selects arrays of .npz inputs, and no .npz input was given")
    return units


def is_zarr(path: str) -> bool:
    """A .zarr store, or an array inside one (a folder with zarr metadata)."""
    path = path.rstrip(os.sep)
    return path.lower().endswith(".zarr") or (
        os.path.isdir(path) and any(os.path.exists(os.path.join(path, name)) for name in (".zarray", "zarr.json"))
    )


def _open_zarr(path: str) -> list[Unit]:
    """A unit for a zarr array, from its metadata; its blocks are read by Dask when saved."""
    try:
        from .dask import open_zarr
    except ImportError as error:
        raise UsageError(f"{path}: {error}") from None
    if not os.path.exists(path):
        raise UsageError(f"{path}: no such zarr store")
    array = open_zarr(path)
    return [Unit(path, None, tuple(int(n) for n in array.shape), array.dtype, fields={"stem": _stem(path)})]


def _open_frames(path: str, frames: slice) -> Unit:
    """A unit for the frames of a video or the pages of a TIFF: what the file is is found by opening
    it (FFmpeg's own complaints are caught and become part of the message)."""
    from ._frames import expected, open_frames, picked_frames

    try:
        with _stderr_caught() as said:
            source = open_frames(path)
        try:
            picked = picked_frames(source, frames.start, frames.stop, frames.step or 1)
        finally:
            source.close()
    except InvalidRequest as error:
        message = re.sub(r"\b(start|stop|step)(=| must)", _as_flag, str(error))
        if "may have said why above" in message:
            reason = said()
            message = message.replace(
                "OpenCV's FFmpeg may have said why above", f"FFmpeg: {reason}" if reason else "FFmpeg said nothing"
            )
        if "cannot open it" in message:
            message += "; shmsave reads .npy, .npz, .zarr, videos and TIFFs"
        raise UsageError(message) from None
    count = expected(picked, source.count) or 0
    return Unit(path, None, (count, *source.shape), source.dtype, picked.start, {"stem": _stem(path)}, picked)


def _as_flag(match: re.Match) -> str:
    """``start=5`` -> ``--start 5``, ``step must`` -> ``--step must``: the library's words as the command's."""
    return f"--{match[1]}{' ' if match[2] == '=' else match[2]}"


@contextlib.contextmanager
def _stderr_caught():
    """Catch what native code (FFmpeg) writes to file descriptor 2 meanwhile; yields a function that
    returns it as one line. The command alone does this, before any thread of its own runs."""
    import tempfile  # this module's imports are part of every command's start: only videos need it

    caught = tempfile.TemporaryFile()
    saved = os.dup(2)
    try:
        os.dup2(caught.fileno(), 2)
        yield lambda: " ".join(
            line.split("] ", 1)[-1].strip() for line in _read_all(caught).splitlines() if line.strip()
        )
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _read_all(file) -> str:
    file.seek(0)
    return file.read().decode(errors="replace")


def _open_npy(path: str) -> list[Unit]:
    with open(path, "rb") as file:
        shape, dtype = _read_header(file, path)
        needed = file.tell() + math.prod(shape) * dtype.itemsize
        size = os.fstat(file.fileno()).st_size
    if size < needed:
        raise UsageError(f"{path} is truncated: its header promises {needed} bytes, the file has {size}")
    return [Unit(path, None, shape, dtype, fields={"stem": _stem(path)})]


def _open_npz(path: str, keys: list[str] | None) -> list[Unit]:
    import zipfile  # only for .npz inputs

    try:
        with zipfile.ZipFile(path) as archive:
            members = [name[:-4] for name in archive.namelist() if name.endswith(".npy")]
            if keys:
                missing = [key for key in keys if key not in members]
                if missing:
                    raise UsageError(
                        f"{path} has no array named {missing[0]!r}; it holds {', '.join(members) or 'no arrays'}"
                    )
                members = [key for key in members if key in keys]
            if not members:
                raise UsageError(f"{path} holds no arrays")
            units = []
            for key in members:
                with archive.open(key + ".npy") as stream:
                    try:
                        shape, dtype = _read_header(stream, f"{path}[{key}]")
                    except UsageError as error:
                        if keys or len(members) < 2:
                            raise
                        raise UsageError(
                            f"{error}. To save only the image arrays of {path}, name them with "
                            f"--key (it holds {', '.join(members)})"
                        ) from None
                units.append(Unit(path, key, shape, dtype, fields={"stem": _stem(path), "key": key}))
            return units
    except (zipfile.BadZipFile, EOFError) as error:
        raise UsageError(f"{path} is not a readable .npz archive ({error})") from None


def _read_header(stream, label: str) -> tuple[tuple, np.dtype]:
    """Shape and dtype from a .npy header; refuse what cannot be saved as it is."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(stream)
        if version == (1, 0):
            shape, fortran_order, dtype = fmt.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran_order, dtype = fmt.read_array_header_2_0(stream)
        else:
            raise UsageError(
                f"{label} uses .npy format version {version[0]}.{version[1]}; "
                "shmsave reads versions 1.0 and 2.0 (plain numeric arrays)"
            )
    except ValueError as error:
        raise UsageError(f"{label} is not a valid .npy array ({error})") from None
    if dtype.hasobject:
        raise UsageError(
            f"{label} holds Python objects (dtype {dtype}), which cannot be mapped or saved "
            "as images; save one numeric stack instead, e.g. np.save(path, np.stack(images))"
        )
    if dtype.kind not in "biuf" or dtype.shape:
        raise UsageError(
            f"{label} holds {dtype} values; images need a plain integer or float dtype such as uint8, uint16 or float32"
        )
    if not dtype.isnative:
        raise UsageError(
            f"{label} is stored {'big' if dtype.byteorder == '>' else 'little'}-endian "
            f"({dtype.str}), which OpenCV would read with its bytes swapped; convert it once: "
            f"np.save(path, np.load(path).astype('{dtype.newbyteorder('=').str}'))"
        )
    if len(shape) not in (3, 4):
        hint = "; for a single image, save image[None]" if len(shape) in (2, 3) else ""
        raise UsageError(
            f"{label} holds an array of shape {shape}; shmsave needs a stack of images, (N, H, W) or (N, H, W, C){hint}"
        )
    if fortran_order:
        raise UsageError(
            f"{label} is stored in Fortran order, so its images are not contiguous in the "
            "file; convert it once: np.save(path, np.ascontiguousarray(np.load(path)))"
        )
    return tuple(shape), dtype


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path.rstrip(os.sep)))[0]


def number(units: list[Unit], start: int, continue_index: bool) -> None:
    """Number each stack's images from ``start`` (or on from the input before); a video's frames and
    a TIFF's pages keep their own numbers."""
    index = start
    for unit in units:
        if unit.picked is None:
            unit.start = index if continue_index else start
            index = unit.start + unit.count


def check(units: list[Unit], template, options: dict) -> None:
    """Every unit against the library's rules, then path clashes between units; raise UsageError."""
    for unit in units:
        # a zero-stride stand-in of the same shape and dtype: the library checks it without reading
        # the file (what it cannot see, NaN in float data, it checks when the unit is saved)
        stand_in = np.broadcast_to(np.zeros((), unit.dtype), unit.shape)
        try:
            if unit.picked is None:
                fields = unit.fields if isinstance(template, str) else None  # a list of paths has no fields
                make_request(stand_in, template, start=unit.start, fields=fields, **options)
            else:  # a stream's checks, on the first frame's shape and dtype (later ones are checked as they come)
                span = min(max(1, unit.end - unit.start), _SPAN_CHECKED)
                fields = unit.fields
                from ._frames import is_tiff, uses_msec

                if uses_msec(template):  # each frame's timestamp: a stand-in checks the template
                    if is_tiff(unit.path):
                        raise InvalidRequest("{msec} is a video frame's timestamp, and a TIFF's pages have none")
                    fields, span = {**fields, "msec": 0.0}, 1  # frames differ by their timestamps
                request = make_stream_request(template, total=span, start=unit.start, fields=fields, **options)
                first = np.broadcast_to(np.zeros((), unit.dtype), unit.shape[1:])
                check_image(request.encoding, first, "its first frame")
        except InvalidRequest as error:
            raise UsageError(f"{unit.label}: {error}") from None
    if len(units) < 2:  # --names: one input
        return
    import string

    used = {name for _, name, _, _ in string.Formatter().parse(template) if name}
    claimed: dict[tuple, list[Unit]] = {}
    for unit in units:
        if not unit.count:
            continue
        values = tuple(sorted((name, value) for name, value in unit.fields.items() if name in used))
        for other in claimed.setdefault(values, []):
            if "index" not in used or (unit.start < other.end and other.start < unit.end):
                raise UsageError(_clash(other, unit, template))
        claimed[values].append(unit)


def _clash(first: Unit, second: Unit, template: str) -> str:
    example = template.format(index=max(first.start, second.start), **{"shard": 0, "msec": 0.0, **second.fields})
    differ = [
        name
        for name in ("stem", "key")
        if name in first.fields and name in second.fields and first.fields[name] != second.fields[name]
    ]
    if differ:
        fields = ["{" + name + "}" for name in differ]
        fix = (
            f"put {' and '.join(fields)} in the template, e.g. -o 'out/{'/'.join(fields)}/{{index:06d}}.png', "
            "or pass --continue-index"
        )
    elif os.path.realpath(first.path) == os.path.realpath(second.path) and first.key == second.key:
        fix = "the same input is given twice"
    else:
        fix = "they have the same name; pass --continue-index"
    return f"{first.label} and {second.label} would write the same files (e.g. {example}): {fix}"


def load_member(unit: Unit, writer: Writer) -> np.ndarray:
    """Read one .npz array straight from the zip stream into shared memory."""
    import zipfile

    images = writer.empty(unit.shape, unit.dtype)
    target = memoryview(images).cast("B")
    try:
        with zipfile.ZipFile(unit.path) as archive, archive.open(unit.key + ".npy") as stream:
            _read_header(stream, unit.label)
            done = 0
            while done < len(target):
                got = stream.readinto(target[done : done + _READ_CHUNK_BYTES])
                if not got:
                    raise UnreadableInput(f"it is truncated: {done} of {len(target)} bytes")
                done += got
    except (OSError, zipfile.BadZipFile, EOFError, ValueError, UsageError) as error:
        raise UnreadableInput(f"cannot read it: {error}") from None
    finally:
        target.release()
    return images
