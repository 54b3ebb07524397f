"""The ``shmsave`` command: every image of .npy / .npz stacks, every frame of a video, every page
of a TIFF, to its own file, on every core.

    shmsave frames.npy -o "out/{index:06d}.png"
    shmsave clip.mp4 -o "out/{index:06d}.jpg" --step 10

    arguments ──▶ open inputs: headers only ──▶ check all (library rules, path clashes)
                                                  │ nothing written until all pass
                                                  ▼
    summary ◀── Report ◀── Writer.save ◀── .npy: np.load(mmap_mode="r"), read where it is mapped
                                        ◀── .npz: one array at a time, read into Writer.empty()

A .npy file is mapped, never loaded: worker processes get its name and offset and
map it themselves; threads read it here and let each task's pages go once written
(``_pages.py``), so this process's memory does not grow with the file. A .npz
archive is compressed or at least zipped and cannot be mapped; each array is read
straight from the zip stream into shared memory (never held twice), saved, and
freed before the next. A video or TIFF is decoded here, frame by frame, into a
stream of the Writer (``save_frames``): the encoders work while the next frame decodes.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import os
import re
import sys
import time
import warnings

import numpy as np

from . import __version__
from ._inputs import Unit, UnreadableInput, UsageError, check, is_zarr, load_member, number, open_inputs
from .errors import InvalidRequest, ReadFailed, ShmsaveError, WorkerDied, WorkerFailed, WriteFailed
from .report import Failure
from .writer import Writer

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

_DESCRIPTION = """\
Save every image of .npy / .npz stacks, every frame of a video or every page of a TIFF
as its own file, on every core.

examples:
  shmsave frames.npy -o "out/{index:06d}.png"
  shmsave clip.mp4 -o "frames/{index:06d}.jpg" --quality 95 --step 10   # frames 0, 10, 20, ...
  shmsave scan.tif -o "planes/{stem}_{index:04d}.png"
  shmsave a.npy b.npy -o "out/{stem}/{index:04d}.jpg" --quality 95
  shmsave preds.npz --key masks -o "masks/{index:05d}.png" --compression 1
  shmsave big.npy -o "out/{index:06d}.jpg" --no-overwrite    # resume an interrupted run
  shmsave frames.npy -o "out/{index}.png" --json | jq .images_per_second
  shmsave crops.npy --names paths.txt                       # one output path per line
  shmsave crops.npy --names stems.txt -o "out/{stem}/{name}.png"
  shmsave big.npy -o "out/{shard:04d}/{index:09d}.jpg"      # a folder per 1,000 images

An input is a .npy / .npz / .zarr stack, (N, H, W) or (N, H, W, C), C = 1, 3 or 4, BGR(A)
unless --rgb; a video file OpenCV decodes (.mp4 .avi .mkv .mov .webm ...); or a TIFF.
The template may use {index} (with a format spec, e.g. {index:06d}), {stem} (the input's
file name without extension) and, for .npz inputs, {key} (the array's name in the
archive), {shard} (index // --shard-size, 1000 by default: a folder per 1,000 images) and,
with --names, {name} (the image's line of that file). A stack's {index} counts from --start;
a video's is the frame number and a TIFF's the page number, from 0. Its extension picks the
format. --names FILE alone gives each image of one stack its own path, one per line, in order
(FILE "-" reads stdin); extensions may differ from line to line. Missing folders are created.
"""

_EPILOG = "exit status: 0 all written, 1 some images failed, 2 usage error, 130 interrupted"


class _Parser(argparse.ArgumentParser):
    _adding = False

    def error(self, message):  # one line, no usage dump: the same shape as every other error
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def add_argument(self, *args, **kwargs):
        self._adding = True  # argparse makes a formatter here only to check the argument's metavar
        try:
            return super().add_argument(*args, **kwargs)
        finally:
            self._adding = False

    def _get_formatter(self):
        """A formatter; while an argument is added, one of a set width: each formatter otherwise asks
        the terminal for its width (importing shutil), 5 of the 8 ms the command took to build its parser."""
        if self._adding:
            return self.formatter_class(prog=self.prog, width=80)
        return super()._get_formatter()


def main(argv: list[str] | None = None) -> int:
    """Run the command; return its exit status."""
    args = _parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            # The Writer warns when /dev/shm is too small: show it once, as one line.
            warnings.filterwarnings("default", message="shmsave:", category=UserWarning)
            warnings.showwarning = _show_warning
            return _run(args)
    except (UsageError, InvalidRequest) as error:
        _say(f"error: {_as_flags(str(error))}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        _say(
            "interrupted; the files written so far are complete. "
            "Rerun with --no-overwrite to write only what is missing."
        )
        return EXIT_INTERRUPTED


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="shmsave",
        usage=(
            "shmsave INPUT [INPUT ...] -o TEMPLATE [options]\n       shmsave INPUT --names FILE [-o TEMPLATE] [options]"
        ),
        description=_DESCRIPTION,
        epilog=_EPILOG,
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT", help=".npy or .npz files, .zarr stores, video files, TIFF files"
    )
    parser.add_argument(
        "-o",
        "--output",
        metavar="TEMPLATE",
        help='where image i goes, e.g. "out/{stem}/{index:06d}.png"',
    )
    parser.add_argument(
        "--names",
        metavar="FILE",
        help="the output path of each image of one input, one per line ('-': stdin); "
        "with -o, each line is the {name} field of the template instead",
    )
    parser.add_argument(
        "--shard-size",
        type=int,
        metavar="N",
        help="images per {shard} of the template (default 1000): -o 'out/{shard:04d}/{index:09d}.png'",
    )
    parser.add_argument(
        "--key",
        action="append",
        metavar="NAME",
        help="save only this array of each .npz (repeatable); default: all of them",
    )
    parser.add_argument(
        "--start",
        type=int,
        default=None,
        metavar="N",
        help="the first index (default 0): a stack's images are numbered from N; a video or TIFF starts at "
        "frame (page) N, its {index} being the frame number",
    )
    parser.add_argument(
        "--stop", type=int, metavar="N", help="a video or TIFF: stop before frame (page) N (default: the end)"
    )
    parser.add_argument(
        "--step", type=int, metavar="K", help="a video or TIFF: every K-th frame (page) from --start (default 1)"
    )
    parser.add_argument(
        "--continue-index",
        action="store_true",
        help="number on across inputs instead of restarting at --start for each",
    )
    parser.add_argument("-j", "--workers", type=int, metavar="N", help="worker processes (default: all usable CPUs)")
    parser.add_argument("--quality", type=int, metavar="Q", help="JPEG/WebP/AVIF/JPEG 2000 quality")
    parser.add_argument("--compression", type=int, metavar="C", help="PNG (0-9), TIFF, HDR or EXR compression")
    parser.add_argument(
        "--param",
        action="append",
        type=_param,
        default=[],
        metavar="FLAG=VALUE",
        help="a raw OpenCV flag, e.g. IMWRITE_PNG_STRATEGY=1 (repeatable)",
    )
    parser.add_argument(
        "--encoder",
        choices=("opencv", "fast"),
        default="opencv",
        help="opencv: files byte-identical to cv2.imwrite (default); fast: a faster lossless encoder where "
        "the format has one (PNG, lossless WebP), the same pixels on decode. Needs pip install 'shmsave[fast]'",
    )
    parser.add_argument("--rgb", action="store_true", help="the pixels are RGB(A), not OpenCV's BGR(A)")
    parser.add_argument(
        "--no-overwrite", action="store_true", help="leave existing files alone (resume an interrupted run)"
    )
    parser.add_argument(
        "--durable",
        action="store_true",
        help="sync every file and new folder to stable storage before exiting (survives a power cut)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="a worker that makes no progress this long (a hung mount, a stuck encoder) is killed and "
        "replaced; its images fail",
    )
    parser.add_argument(
        "--errors",
        choices=("raise", "collect"),
        default="raise",
        help="stop at the first failed image (raise, default) or write the rest and list the failures (collect)",
    )
    parser.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="save .zarr inputs on this Dask cluster (e.g. tcp://10.0.0.5:8786); default: "
        "Dask's threads in this process. Needs pip install 'shmsave[dask]'",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object on stdout instead of the summary line"
    )
    shown = parser.add_mutually_exclusive_group()
    shown.add_argument(
        "--progress", action="store_true", help="show the progress bar even when stderr is not a terminal"
    )
    shown.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no summary; errors only")
    parser.add_argument(
        "--version",
        action=_Version,
        help="show shmsave's and OpenCV's versions and the formats this OpenCV writes, then exit",
    )
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
        raise argparse.ArgumentTypeError(
            f"expected FLAG=VALUE with an integer VALUE, e.g. IMWRITE_PNG_STRATEGY=1; got {text!r}"
        ) from None


# -- the run ----------------------------------------------------------------


def _run(args) -> int:
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be 1 or more, got {args.workers}")
    start = 0 if args.start is None else args.start
    if start < 0:
        raise UsageError(f"--start must be 0 or more, got {start}")
    if args.step is not None and args.step < 1:
        raise UsageError(f"--step must be 1 or more, got {args.step}")
    if args.stop is not None and args.stop <= start:
        raise UsageError(f"--stop {args.stop} must be greater than --start {start}: no frame would be saved")
    if args.output is None and args.names is None:
        raise UsageError("say where the images go: -o TEMPLATE, or --names FILE with one path per line")
    units = open_inputs(args.inputs, args.key, slice(start, args.stop, args.step))
    _check_ranges(units, args)
    on_dask = any(is_zarr(unit.path) for unit in units)
    if args.scheduler and not on_dask:
        raise UsageError("--scheduler runs .zarr inputs on a Dask cluster, and no .zarr input was given")
    number(units, start, args.continue_index)
    template = _named(units, args) if args.names is not None else args.output
    options = dict(
        quality=args.quality,
        compression=args.compression,
        params=dict(args.param) or None,
        rgb=args.rgb,
        overwrite=not args.no_overwrite,
        errors=args.errors,
        durable=args.durable,
        timeout=args.timeout,
        encoder=args.encoder,
    )
    if args.shard_size is not None:
        if on_dask:
            raise UsageError("--shard-size works with .npy and .npz inputs; .zarr stores use {shard} of 1000 images")
        options["shard_size"] = args.shard_size
    check(units, template, options)
    # -- nothing was written before this line --
    bar = None
    if not args.quiet and (args.progress or sys.stderr.isatty()):
        known = all(unit.count or unit.picked is None for unit in units)  # a video may not tell its length
        bar = _bar(sum(unit.count for unit in units) if known else None, units[0].label if len(units) > 1 else None)
    began = time.perf_counter()
    try:
        with Writer(args.workers) as writer, _dask_scheduler(args.scheduler, on_dask):
            failures, stopped = _save_all(units, template, options, writer, bar)
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - began
    for failure in failures:
        _say(f"failed: image {failure.index} -> {failure.path}: {failure.message}")
    for unit in units:
        if unit.error:
            _say(f"failed: {unit.label}: {unit.error}; none of its {unit.count} images was written")
        if unit.read_error:
            _say(f"failed: {unit.read_error}")
    if stopped in (_Stop.AT_AN_IMAGE, _Stop.AT_AN_INPUT):
        _say(
            "error: stopped at the first failure"
            + (" (--errors collect writes the other images and lists every failure)" if args.errors == "raise" else "")
        )
    if args.json:
        import json

        print(json.dumps(_summary_object(units, failures, seconds)), flush=True)
    elif not args.quiet and stopped is not _Stop.AT_THE_FOLDER:  # its one failure line says it all
        _say(_summary_line(units, failures, seconds, template, options.get("shard_size")))
    return EXIT_FAILED if failures or stopped or any(unit.error or unit.read_error for unit in units) else EXIT_OK


def _check_ranges(units: list[Unit], args) -> None:
    """--stop and --step pick frames of videos and pages of TIFFs; a video's frames keep their numbers."""
    stacks = [unit for unit in units if unit.picked is None]
    if stacks and (args.stop is not None or args.step is not None):
        raise UsageError(
            f"--stop and --step pick frames of a video or pages of a TIFF, and {stacks[0].label} is a stack "
            "of images; save a part of it by slicing it in numpy"
        )
    if args.continue_index and len(stacks) < len(units):
        raise UsageError(
            "--continue-index numbers on across stacks; a video's frames and a TIFF's pages keep their own "
            "numbers: put {stem} in the template to keep several apart"
        )


def _named(units: list[Unit], args) -> str | list[str]:
    """``--names``: the list of paths of the one input's images, or (with -o) the template, each
    line becoming that image's ``{name}`` field; UsageError if the lines do not match the images."""
    if len(units) != 1:
        raise UsageError(
            f"--names gives the images of one input their paths, and {len(units)} inputs were given "
            f"({', '.join(unit.label for unit in units[:3])}{', ...' if len(units) > 3 else ''}); "
            "run shmsave once per input, or select one .npz array with --key"
        )
    unit = units[0]
    if is_zarr(unit.path) or unit.picked is not None:
        raise UsageError(f"--names works with .npy and .npz inputs; name the images of {unit.label} with -o TEMPLATE")
    try:
        if args.names == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(args.names, "rb") as file:
                data = file.read()
    except OSError as error:
        raise UsageError(f"cannot read --names {args.names}: {error.strerror or error}") from None
    lines = [os.fsdecode(line) for line in data.splitlines()]
    if len(lines) != unit.count:
        raise UsageError(
            f"--names {args.names} has {len(lines)} line(s) for the {unit.count} images of {unit.label}; "
            "give one path per image, in order"
        )
    if args.output is None:
        return lines
    if "{name" not in args.output:
        raise UsageError(
            f"with -o, each line of --names is the {{name}} field of the template, and {args.output!r} has none; "
            "add it (e.g. -o 'out/{name}.png'), or leave -o out to use the lines as paths"
        )
    unit.fields["name"] = lines
    return args.output


def _as_flags(message: str) -> str:
    """The library's wording of an option, as this command's flag."""
    message = re.sub(r"params=\{cv2\.(\w+): (\d+)\}", r"--param \1=\2", message)
    message = re.sub(r"\b(quality|compression)=", r"--\1 ", message)
    message = re.sub(r"\bshard_size=", "--shard-size ", message)
    message = re.sub(r"\bencoder='(\w+)'", r"--encoder \1", message)
    return re.sub(r"(?<![-\w])(quality|compression)\b", r"--\1", message)


class _Stop(enum.Enum):
    """Where a failure stopped the run (``--errors raise``)."""

    AT_AN_IMAGE = "at an image"
    AT_AN_INPUT = "at an input"  # its data was found unusable: none of its images was tried
    AT_THE_FOLDER = "at the folder"  # it cannot be written: no image was tried


def _save_all(
    units: list[Unit], template: str, options: dict, writer: Writer, bar
) -> tuple[list[Failure], _Stop | None]:
    """Save the units in order; return the failures and where a failure stopped the run, if it did."""
    failures: list[Failure] = []
    for unit in units:
        if bar is not None and len(units) > 1:
            bar.set_description(unit.label, refresh=False)
        stopped = None
        try:
            report = _save(unit, template, options, writer, bar.update if bar is not None else False)
        except (InvalidRequest, UnreadableInput) as error:  # found only in the data: NaN, a corrupt member
            unit.error, unit.failed = _as_flags(str(error)), unit.count
            if options["errors"] == "raise":
                return failures, _Stop.AT_AN_INPUT
            continue
        except ReadFailed as error:  # a video or TIFF ended early: the frames before it are written
            unit.read_error, report = str(error), error.report
            more = unit is not units[-1]  # with --errors raise, the inputs after it are not saved
            stopped = _Stop.AT_AN_INPUT if options["errors"] == "raise" and more else None
        except (WriteFailed, WorkerDied, WorkerFailed) as error:  # --errors raise, or the folder cannot be written
            stopped, report = _Stop.AT_AN_IMAGE, error.report
            if report is None:
                unit.failed = 1
                return [*failures, _failure_of(error, unit)], _Stop.AT_THE_FOLDER
        unit.written, unit.bytes, unit.skipped, unit.failed = (
            report.count,
            report.bytes,
            report.skipped,
            len(report.failed),
        )
        failures += report.failed
        if stopped:
            return failures, stopped
    return failures, None


def _save(unit: Unit, template: str, options: dict, writer: Writer, progress):
    """Save one unit: a .npy is mapped (its workers read the file), a .npz array is loaded,
    a .zarr store is saved by ``shmsave.dask`` where Dask reads its blocks, a video or TIFF is
    decoded here into a stream (``save_frames``)."""
    if unit.picked is not None:
        picked = unit.picked
        return writer.save_frames(
            unit.path,
            template,
            start=picked.start,
            stop=None if picked.stop == sys.maxsize else picked.stop,  # sys.maxsize: to the end (_frames)
            step=picked.step,
            fields=unit.fields,
            progress=progress,
            **options,
        )
    if is_zarr(unit.path):
        from .dask import save_zarr

        return save_zarr(unit.path, template, start=unit.start, fields=unit.fields, progress=progress, **options)
    fields = unit.fields if isinstance(template, str) else None  # a list of paths has no fields
    if unit.count == 0:
        images = np.empty(unit.shape, unit.dtype)
    elif unit.key is None:
        images = np.load(unit.path, mmap_mode="r")  # np.memmap: the Writer passes the file, not pixels
    else:
        images = load_member(unit, writer)
    try:
        return writer.save(images, template, start=unit.start, fields=fields, progress=progress, **options)
    finally:
        del images  # a loaded .npz array leaves shared memory before the next is read


def _dask_scheduler(address: str | None, needed: bool):
    """Where .zarr inputs are saved (``shmsave.dask.scheduler``); nothing when there are none."""
    if not needed:
        return contextlib.nullcontext()
    from .dask import scheduler

    return scheduler(address)


def _failure_of(error: ShmsaveError, unit: Unit) -> Failure:
    if isinstance(error, WriteFailed):
        return Failure(error.index, error.path, error.message, error.errno)
    return Failure(unit.start, "", str(error))


# -- output -----------------------------------------------------------------


def _bar(total: int, description: str | None):
    from .report import new_bar

    return new_bar(total, description)


def _say(text: str) -> None:
    print(f"shmsave: {text}", file=sys.stderr, flush=True)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    text = str(message)
    _say(f"warning: {text.removeprefix('shmsave: ')}")


def _summary_line(units: list[Unit], failures: list, seconds: float, template, shard_size: int | None) -> str:
    written = sum(unit.written for unit in units)
    nbytes = sum(unit.bytes for unit in units)
    text = (
        f"wrote {written} images ({nbytes / 1e6:.1f} MB) to {_where(units, template, shard_size)} in {seconds:.2f} s, "
        f"{written / seconds if seconds > 0 else 0:.0f} images/s"
    )
    skipped = sum(unit.skipped for unit in units)
    if skipped:
        text += f"; {skipped} skipped (already there)"
    if failures:
        text += f"; {len(failures)} failed"
    return text


def _summary_object(units: list[Unit], failures: list, seconds: float) -> dict:
    written = sum(unit.written for unit in units)
    return {
        "images": written,
        "bytes": sum(unit.bytes for unit in units),
        "seconds": round(seconds, 6),
        "images_per_second": round(written / seconds, 3) if seconds > 0 else 0.0,
        "skipped": sum(unit.skipped for unit in units),
        "failed": [{"index": f.index, "path": f.path, "message": f.message} for f in failures],
        "inputs": [
            {
                "path": unit.path,
                "key": unit.key,
                "shape": list(unit.shape),
                "dtype": unit.dtype.name,
                "start": unit.start,
                "written": unit.written,
                "skipped": unit.skipped,
                "failed": unit.failed,
                "error": unit.error or None,
            }
            for unit in units
        ],
    }


def _where(units: list[Unit], template, shard_size: int | None) -> str:
    """The folder that holds the outputs (their common folder when they spread out)."""
    from ._frames import uses_msec
    from .naming import parse_template

    folders = set()
    timed = uses_msec(template)  # a frame's timestamp names its file, not its folder (a stand-in will do)
    for unit in units:
        fields = ({**unit.fields, "msec": 0.0} if timed else unit.fields) if isinstance(template, str) else None
        named = parse_template(template, 1 if timed else max(unit.count, 1), unit.start, fields, shard_size)
        last = unit.start + max(unit.count - 1, 0)
        if unit.picked is not None:  # a video's length may be unknown before it is read: what was saved
            last = unit.start + max(unit.written + unit.skipped + unit.failed - 1, 0) * unit.picked.step
        indices = range(unit.start, unit.start + unit.count) if named.names and named.names.paths else ()
        for index in indices or {unit.start, last}:
            folders.add(os.path.dirname(named.path(index)) or ".")
    where = (os.path.commonpath(sorted(folders)) if len(folders) > 1 else folders.pop()) or "."
    return where.rstrip(os.sep) + os.sep
