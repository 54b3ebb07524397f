"""The ``shmsave`` command: every image of .npy / .npz stacks to its own file, on every core.

    shmsave frames.npy -o "out/{index:06d}.png"

    arguments ──▶ open inputs: headers only ──▶ check all (library rules, path clashes)
                                                  │ nothing written until all pass
                                                  ▼
    summary ◀── Report ◀── Writer.save ◀── .npy: np.load(mmap_mode="r"); workers map the file
                                        ◀── .npz: one array at a time, read into Writer.empty()

A .npy file is never read by this process: the Writer hands its workers the
file's name and offset, and they map it read-only, so the parent's memory does
not grow with the file. A .npz archive is compressed or at least zipped and
cannot be mapped; each array is read straight from the zip stream into shared
memory (never held twice), saved, and freed before the next.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import string
import sys
import time
import warnings
import zipfile
from dataclasses import dataclass, field

import numpy as np

from . import __version__
from .errors import InvalidRequest, ShmsaveError, WorkerDied, WriteFailed
from .report import Failure
from .request import make_request
from .writer import Writer

_MB = 2**20
# In-process engines (inline, threads) read a mapped .npy through this process's
# own pages. Above this many input bytes, use worker processes whatever the size
# of the job, so the parent's memory stays small whatever the size of the file.
_PARENT_MAY_READ_BYTES = 64 * _MB
_READ_CHUNK_BYTES = 16 * _MB  # .npz members are read into shared memory in pieces this big

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

_DESCRIPTION = """\
Save every image of .npy / .npz stacks as its own file, on every core.

examples:
  shmsave frames.npy -o "out/{index:06d}.png"
  shmsave a.npy b.npy -o "out/{stem}/{index:04d}.jpg" --quality 95
  shmsave preds.npz --key masks -o "masks/{index:05d}.png" --compression 1
  shmsave big.npy -o "out/{index:06d}.jpg" --no-overwrite    # resume an interrupted run
  shmsave frames.npy -o "out/{index}.png" --json | jq .images_per_second

An input holds an (N, H, W) or (N, H, W, C) array, C = 1, 3 or 4, BGR(A) unless --rgb.
The template may use {index} (with a format spec, e.g. {index:06d}), {stem} (the input's
file name without extension) and, for .npz inputs, {key} (the array's name in the
archive). Its extension picks the format. Missing folders are created.
"""

_EPILOG = "exit status: 0 all written, 1 some images failed, 2 usage error, 130 interrupted"


class _UsageError(Exception):
    """The command line or an input is wrong; nothing has been written."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump: the same shape as every other error
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


@dataclass
class _Unit:
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

    @property
    def label(self) -> str:
        return self.path if self.key is None else f"{self.path}[{self.key}]"

    @property
    def count(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def main(argv: list[str] | None = None) -> int:
    """Run the command; return its exit status."""
    args = _parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            # The Writer warns when /dev/shm is too small: show it once, as one line.
            warnings.filterwarnings("default", message="shmsave:", category=UserWarning)
            warnings.showwarning = _show_warning
            return _run(args)
    except (_UsageError, InvalidRequest) as error:
        _say(f"error: {error}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        _say("interrupted; the files written so far are complete. "
             "Rerun with --no-overwrite to write only what is missing.")
        return EXIT_INTERRUPTED


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="shmsave", usage="shmsave INPUT [INPUT ...] -o TEMPLATE [options]",
                     description=_DESCRIPTION, epilog=_EPILOG, allow_abbrev=False,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help=".npy or .npz files")
    parser.add_argument("-o", "--output", required=True, metavar="TEMPLATE",
                        help='where image i goes, e.g. "out/{stem}/{index:06d}.png"')
    parser.add_argument("--key", action="append", metavar="NAME",
                        help="save only this array of each .npz (repeatable); default: all of them")
    parser.add_argument("--start", type=int, default=0, metavar="N", help="the first index (default 0)")
    parser.add_argument("--continue-index", action="store_true",
                        help="number on across inputs instead of restarting at --start for each")
    parser.add_argument("-j", "--workers", type=int, metavar="N", help="worker processes (default: all usable CPUs)")
    parser.add_argument("--quality", type=int, metavar="Q", help="JPEG/WebP/AVIF/JPEG 2000 quality")
    parser.add_argument("--compression", type=int, metavar="C", help="PNG (0-9), TIFF, HDR or EXR compression")
    parser.add_argument("--param", action="append", type=_param, default=[], metavar="FLAG=VALUE",
                        help="a raw OpenCV flag, e.g. IMWRITE_PNG_STRATEGY=1 (repeatable)")
    parser.add_argument("--rgb", action="store_true", help="the pixels are RGB(A), not OpenCV's BGR(A)")
    parser.add_argument("--no-overwrite", action="store_true",
                        help="leave existing files alone (resume an interrupted run)")
    parser.add_argument("--errors", choices=("raise", "collect"), default="raise",
                        help="stop at the first failed image (raise, default) or write the rest and "
                             "list the failures (collect)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object on stdout instead of the summary line")
    shown = parser.add_mutually_exclusive_group()
    shown.add_argument("--progress", action="store_true", help="show the progress bar even when stderr "
                                                               "is not a terminal")
    shown.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no summary; errors only")
    parser.add_argument("--version", action=_Version, help="show shmsave's and OpenCV's versions and the "
                                                           "formats this OpenCV writes, then exit")
    return parser


class _Version(argparse.Action):
    """``--version``: computed only when asked (it probes every format)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_line())
        parser.exit()


def version_line() -> str:
    """E.g. ``shmsave 0.1.0 (OpenCV 5.0.0; writes .jpg .png ...)``: the formats depend on the build."""
    from .codec import cv2, writable_extensions

    return f"shmsave {__version__} (OpenCV {cv2.__version__}; writes {' '.join(writable_extensions())})"


def _param(text: str) -> tuple:
    flag, sep, value = text.partition("=")
    try:
        if not (sep and flag.strip()):
            raise ValueError
        return (int(flag) if flag.strip().isdigit() else flag.strip()), int(value, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected FLAG=VALUE with an integer VALUE, e.g. "
                                         f"IMWRITE_PNG_STRATEGY=1; got {text!r}") from None


# -- the run ----------------------------------------------------------------

def _run(args) -> int:
    if args.workers is not None and args.workers < 1:
        raise _UsageError(f"--workers must be 1 or more, got {args.workers}")
    if args.start < 0:
        raise _UsageError(f"--start must be 0 or more, got {args.start}")
    units = _open_inputs(args.inputs, args.key)
    _number(units, args.start, args.continue_index)
    options = dict(quality=args.quality, compression=args.compression, params=dict(args.param) or None,
                   rgb=args.rgb, overwrite=not args.no_overwrite, errors=args.errors)
    _check(units, args.output, options)
    # -- nothing was written before this line --
    engine = "process" if sum(unit.nbytes for unit in units) > _PARENT_MAY_READ_BYTES else "auto"
    bar = None
    if not args.quiet and (args.progress or sys.stderr.isatty()):
        bar = _bar(sum(unit.count for unit in units), units[0].label if len(units) > 1 else None)
    began = time.perf_counter()
    try:
        with Writer(args.workers, engine=engine) as writer:
            failures, stopped = _save_all(units, args.output, options, writer, bar)
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - began
    for failure in failures:
        _say(f"failed: image {failure.index} -> {failure.path}: {failure.message}")
    if stopped == _AT_AN_IMAGE:
        _say("error: stopped at the first failure" + (" (--errors collect writes the other images and "
                                                      "lists every failure)" if args.errors == "raise" else ""))
    if args.json:
        print(json.dumps(_summary_object(units, failures, seconds)), flush=True)
    elif not args.quiet and stopped != _AT_THE_FOLDER:  # its one failure line says it all
        _say(_summary_line(units, failures, seconds, args.output))
    return EXIT_FAILED if failures or stopped else EXIT_OK


_AT_AN_IMAGE, _AT_THE_FOLDER = "at an image", "at the folder"


def _save_all(units: list[_Unit], template: str, options: dict, writer: Writer,
              bar) -> tuple[list, str | None]:
    """Save the units in order; return the failures and where a failure stopped the run
    (``_AT_AN_IMAGE``, ``_AT_THE_FOLDER``: it cannot be written, so no image was tried) or None."""
    failures: list[Failure] = []
    for unit in units:
        if bar is not None and len(units) > 1:
            bar.set_description(unit.label, refresh=False)
        stopped = None
        try:
            report = _save(unit, template, options, writer, bar.update if bar is not None else False)
        except (WriteFailed, WorkerDied) as error:  # --errors raise, or the output folder cannot be written
            stopped, report = _AT_AN_IMAGE, getattr(error, "report", None)
            if report is None:
                unit.failed = 1
                return [*failures, _failure_of(error, unit)], _AT_THE_FOLDER
        unit.written, unit.bytes, unit.skipped, unit.failed = (report.count, report.bytes, report.skipped,
                                                               len(report.failed))
        failures += report.failed
        if stopped:
            return failures, stopped
    return failures, None


def _save(unit: _Unit, template: str, options: dict, writer: Writer, progress):
    """Save one unit: a .npy is mapped (its workers read the file), a .npz array is loaded."""
    if unit.count == 0:
        images = np.empty(unit.shape, unit.dtype)
    elif unit.key is None:
        images = np.load(unit.path, mmap_mode="r")  # np.memmap: the Writer passes the file, not pixels
    else:
        images = _load_member(unit, writer)
    try:
        return writer.save(images, template, start=unit.start, fields=unit.fields, progress=progress, **options)
    finally:
        del images  # a loaded .npz array leaves shared memory before the next is read


def _load_member(unit: _Unit, writer: Writer) -> np.ndarray:
    """Read one .npz array straight from the zip stream into shared memory."""
    images = writer.empty(unit.shape, unit.dtype)
    target = memoryview(images).cast("B")
    try:
        with zipfile.ZipFile(unit.path) as archive, archive.open(unit.key + ".npy") as stream:
            _read_header(stream, unit.label)
            done = 0
            while done < len(target):
                got = stream.readinto(target[done:done + _READ_CHUNK_BYTES])
                if not got:
                    raise _UsageError(f"{unit.label} is truncated: {done} of {len(target)} bytes")
                done += got
    except (OSError, zipfile.BadZipFile, EOFError) as error:
        raise _UsageError(f"cannot read {unit.label}: {error}") from None
    finally:
        target.release()
    return images


def _failure_of(error: ShmsaveError, unit: _Unit) -> Failure:
    if isinstance(error, WriteFailed):
        return Failure(error.index, error.path, error.message, error.errno)
    return Failure(unit.start, "", str(error))


# -- inputs -----------------------------------------------------------------

def _open_inputs(paths: list[str], keys: list[str] | None) -> list[_Unit]:
    """A unit per .npy file and per (selected) .npz array, from the headers alone."""
    units: list[_Unit] = []
    for path in paths:
        extension = os.path.splitext(path)[1].lower()
        if extension not in (".npy", ".npz"):
            raise _UsageError(f"{path}: shmsave reads .npy and .npz files, "
                              f"not {extension or 'files without extension'}")
        if not os.path.exists(path):
            raise _UsageError(f"{path}: no such file")
        if os.path.isdir(path):
            raise _UsageError(f"{path} is a folder, not a {extension} file")
        try:
            units += _open_npy(path) if extension == ".npy" else _open_npz(path, keys)
        except PermissionError as error:
            raise _UsageError(f"cannot read {path}: {error.strerror}") from None
    if keys and not any(unit.key is not None for unit in units):
        raise _UsageError("--key selects arrays of .npz inputs, and no .npz input was given")
    return units


def _open_npy(path: str) -> list[_Unit]:
    with open(path, "rb") as file:
        shape, dtype = _read_header(file, path)
        needed = file.tell() + math.prod(shape) * dtype.itemsize
        size = os.fstat(file.fileno()).st_size
    if size < needed:
        raise _UsageError(f"{path} is truncated: its header promises {needed} bytes, the file has {size}")
    return [_Unit(path, None, shape, dtype, fields={"stem": _stem(path)})]


def _open_npz(path: str, keys: list[str] | None) -> list[_Unit]:
    try:
        with zipfile.ZipFile(path) as archive:
            members = [name[:-4] for name in archive.namelist() if name.endswith(".npy")]
            if keys:
                missing = [key for key in keys if key not in members]
                if missing:
                    raise _UsageError(f"{path} has no array named {missing[0]!r}; it holds "
                                      f"{', '.join(members) or 'no arrays'}")
                members = [key for key in members if key in keys]
            if not members:
                raise _UsageError(f"{path} holds no arrays")
            units = []
            for key in members:
                with archive.open(key + ".npy") as stream:
                    shape, dtype = _read_header(stream, f"{path}[{key}]")
                units.append(_Unit(path, key, shape, dtype, fields={"stem": _stem(path), "key": key}))
            return units
    except (zipfile.BadZipFile, EOFError) as error:
        raise _UsageError(f"{path} is not a readable .npz archive ({error})") from None


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
            raise _UsageError(f"{label} uses .npy format version {version[0]}.{version[1]}; "
                              "shmsave reads versions 1.0 and 2.0 (plain numeric arrays)")
    except ValueError as error:
        raise _UsageError(f"{label} is not a valid .npy array ({error})") from None
    if dtype.hasobject:
        raise _UsageError(f"{label} holds Python objects (dtype {dtype}), which cannot be mapped or saved "
                          "as images; save one numeric stack instead, e.g. np.save(path, np.stack(images))")
    if dtype.kind not in "biuf" or dtype.shape:
        raise _UsageError(f"{label} holds {dtype} values; images need a plain integer or float dtype "
                          "such as uint8, uint16 or float32")
    if not dtype.isnative:
        raise _UsageError(f"{label} is stored {'big' if dtype.byteorder == '>' else 'little'}-endian "
                          f"({dtype.str}), which OpenCV would read with its bytes swapped; convert it once: "
                          f"np.save(path, np.load(path).astype('{dtype.newbyteorder('=').str}'))")
    if len(shape) not in (3, 4):
        hint = "; for a single image, save image[None]" if len(shape) in (2, 3) else ""
        raise _UsageError(f"{label} holds an array of shape {shape}; shmsave needs a stack of images, "
                          f"(N, H, W) or (N, H, W, C){hint}")
    if fortran_order:
        raise _UsageError(f"{label} is stored in Fortran order, so its images are not contiguous in the "
                          "file; convert it once: np.save(path, np.ascontiguousarray(np.load(path)))")
    return tuple(shape), dtype


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def _number(units: list[_Unit], start: int, continue_index: bool) -> None:
    index = start
    for unit in units:
        unit.start = index if continue_index else start
        index = unit.start + unit.count


def _check(units: list[_Unit], template: str, options: dict) -> None:
    """Every unit against the library's rules, then path clashes between units; raise _UsageError."""
    for unit in units:
        # a zero-stride stand-in of the same shape and dtype: the library checks it without reading
        # the file (what it cannot see, NaN in float data, it checks when the unit is saved)
        stand_in = np.broadcast_to(np.zeros((), unit.dtype), unit.shape)
        try:
            make_request(stand_in, template, start=unit.start, fields=unit.fields, **options)
        except InvalidRequest as error:
            raise _UsageError(f"{unit.label}: {error}") from None
    used = {name for _, name, _, _ in string.Formatter().parse(template) if name}
    claimed: dict[tuple, list[_Unit]] = {}
    for unit in units:
        if not unit.count:
            continue
        values = tuple(sorted((name, value) for name, value in unit.fields.items() if name in used))
        for other in claimed.setdefault(values, []):
            if "index" not in used or (unit.start < other.start + other.count
                                       and other.start < unit.start + unit.count):
                raise _UsageError(_clash(other, unit, template))
        claimed[values].append(unit)


def _clash(first: _Unit, second: _Unit, template: str) -> str:
    example = template.format(index=max(first.start, second.start), **second.fields)
    differ = [name for name in ("stem", "key") if name in first.fields and name in second.fields
              and first.fields[name] != second.fields[name]]
    if differ:
        fields = ["{" + name + "}" for name in differ]
        fix = (f"put {' and '.join(fields)} in the template, e.g. -o 'out/{'/'.join(fields)}/{{index:06d}}.png', "
               "or pass --continue-index")
    elif os.path.realpath(first.path) == os.path.realpath(second.path) and first.key == second.key:
        fix = "the same input is given twice"
    else:
        fix = "they have the same name; pass --continue-index"
    return f"{first.label} and {second.label} would write the same files (e.g. {example}): {fix}"


# -- output -----------------------------------------------------------------

def _bar(total: int, description: str | None):
    from tqdm import tqdm  # ~0.1 s to import: only when a bar is shown

    return tqdm(total=total, desc=description, unit="img", dynamic_ncols=True, file=sys.stderr)


def _say(text: str) -> None:
    print(f"shmsave: {text}", file=sys.stderr, flush=True)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    text = str(message)
    _say(f"warning: {text.removeprefix('shmsave: ')}")


def _summary_line(units: list[_Unit], failures: list, seconds: float, template: str) -> str:
    written = sum(unit.written for unit in units)
    nbytes = sum(unit.bytes for unit in units)
    text = (f"wrote {written} images ({nbytes / 1e6:.1f} MB) to {_where(units, template)} in {seconds:.2f} s, "
            f"{written / seconds if seconds > 0 else 0:.0f} images/s")
    skipped = sum(unit.skipped for unit in units)
    if skipped:
        text += f"; {skipped} skipped (already there)"
    if failures:
        text += f"; {len(failures)} failed"
    return text


def _summary_object(units: list[_Unit], failures: list, seconds: float) -> dict:
    written = sum(unit.written for unit in units)
    return {
        "images": written,
        "bytes": sum(unit.bytes for unit in units),
        "seconds": round(seconds, 6),
        "images_per_second": round(written / seconds, 3) if seconds > 0 else 0.0,
        "skipped": sum(unit.skipped for unit in units),
        "failed": [{"index": f.index, "path": f.path, "message": f.message} for f in failures],
        "inputs": [{"path": unit.path, "key": unit.key, "shape": list(unit.shape), "dtype": unit.dtype.name,
                    "start": unit.start, "written": unit.written, "skipped": unit.skipped,
                    "failed": unit.failed} for unit in units],
    }


def _where(units: list[_Unit], template: str) -> str:
    """The folder that holds the outputs (their common folder when they spread out)."""
    folders = set()
    for unit in units:
        for index in {unit.start, unit.start + max(unit.count - 1, 0)}:
            folders.add(os.path.dirname(template.format(index=index, **unit.fields)) or ".")
    where = (os.path.commonpath(sorted(folders)) if len(folders) > 1 else folders.pop()) or "."
    return where.rstrip(os.sep) + os.sep
