"""The command's inputs: .npy files and .npz arrays, opened from their headers and checked whole.

Nothing here writes an image. ``open_inputs`` reads headers only; ``check``
runs every input against the library's rules (with a zero-stride stand-in of
the same shape and dtype: no pixel is read) and refuses inputs that would write
the same paths; ``load_member`` reads one .npz array into shared memory.
"""

from __future__ import annotations

import math
import os
import string
import zipfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .errors import InvalidRequest
from .request import make_request

if TYPE_CHECKING:
    from .writer import Writer

_MB = 2**20
_READ_CHUNK_BYTES = 16 * _MB  # .npz members are read into shared memory in pieces this big


class UsageError(Exception):
    """The command line or an input is wrong; nothing has been written."""


class UnreadableInput(Exception):
    """An input turned out wrong only when its data was read (a corrupt .npz member)."""


@dataclass
class Unit:
    """One array to save: a .npy file, or one array of a .npz archive."""

    path: str
    key: str | None  # the .npz member's name; None for .npy
    shape: tuple
    dtype: np.dtype
    start: int = 0
    fields: dict = field(default_factory=dict)
    written: int = 0  # what saving it did
    bytes: int = 0
    skipped: int = 0
    failed: int = 0
    error: str = ""  # why none of its images was written, when its data could not be used

    @property
    def label(self) -> str:
        return self.path if self.key is None else f"{self.path}[{self.key}]"

    @property
    def count(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def open_inputs(paths: list[str], keys: list[str] | None) -> list[Unit]:
    """A unit per .npy file and per (selected) .npz array, from the headers alone."""
    units: list[Unit] = []
    for path in paths:
        if is_zarr(path):
            units += _open_zarr(path)
            continue
        extension = os.path.splitext(path)[1].lower()
        if extension not in (".npy", ".npz"):
            raise UsageError(
                f"{path}: shmsave reads .npy and .npz files and .zarr stores, "
                f"not {extension or 'files without extension'}"
            )
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


def _open_npy(path: str) -> list[Unit]:
    with open(path, "rb") as file:
        shape, dtype = _read_header(file, path)
        needed = file.tell() + math.prod(shape) * dtype.itemsize
        size = os.fstat(file.fileno()).st_size
    if size < needed:
        raise UsageError(f"{path} is truncated: its header promises {needed} bytes, the file has {size}")
    return [Unit(path, None, shape, dtype, fields={"stem": _stem(path)})]


def _open_npz(path: str, keys: list[str] | None) -> list[Unit]:
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
    index = start
    for unit in units:
        unit.start = index if continue_index else start
        index = unit.start + unit.count


def check(units: list[Unit], template, options: dict) -> None:
    """Every unit against the library's rules, then path clashes between units; raise UsageError."""
    for unit in units:
        # a zero-stride stand-in of the same shape and dtype: the library checks it without reading
        # the file (what it cannot see, NaN in float data, it checks when the unit is saved)
        stand_in = np.broadcast_to(np.zeros((), unit.dtype), unit.shape)
        try:
            fields = unit.fields if isinstance(template, str) else None  # a list of paths has no fields
            make_request(stand_in, template, start=unit.start, fields=fields, **options)
        except InvalidRequest as error:
            raise UsageError(f"{unit.label}: {error}") from None
    if len(units) < 2:  # --names: one input
        return
    used = {name for _, name, _, _ in string.Formatter().parse(template) if name}
    claimed: dict[tuple, list[Unit]] = {}
    for unit in units:
        if not unit.count:
            continue
        values = tuple(sorted((name, value) for name, value in unit.fields.items() if name in used))
        for other in claimed.setdefault(values, []):
            if "index" not in used or (
                unit.start < other.start + other.count and other.start < unit.start + unit.count
            ):
                raise UsageError(_clash(other, unit, template))
        claimed[values].append(unit)


def _clash(first: Unit, second: Unit, template: str) -> str:
    example = template.format(index=max(first.start, second.start), **second.fields)
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
