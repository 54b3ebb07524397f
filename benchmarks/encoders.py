"""``encoder="fast"`` against OpenCV's encoders, on the lossless workloads (tmpfs).

    python -m benchmarks.encoders                 # 3 repetitions, results/encoders.md
    python -m benchmarks.encoders --repeat 5
    python -m benchmarks.encoders --quick         # a tenth of the images, 1 repetition
    python -m benchmarks.encoders --workers 1     # one core each: results/encoders-1-worker.md

    dataset     2,000 x 256x256x3 uint8 photos -> .png (OpenCV's default compression)
    microscopy  200 x 512x512 uint16 (12-bit) -> .png
    webp        200 x 256x256x3 uint8 photos -> .webp lossless (OpenCV's default for .webp)
    tiff16      200 x 512x512 uint16 (12-bit) -> .tiff (OpenCV's default compression)

    loop            cv2.imwrite per image, one core
    shmsave opencv  Writer.save(images, template): byte-identical to the loop's files
    shmsave fast    Writer.save(images, template, encoder="fast"), the same Writer (same workers)

The Writer is started before the timing. Methods run interleaved, in a fresh random order per
repetition, each into a fresh folder on a private tmpfs (the disk where no tmpfs can be mounted);
medians. Every file of every method's first run is read back with ``cv2.imread(...,
IMREAD_UNCHANGED)`` and compared with the input pixels; a mismatch stops the run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

import shmsave
from benchmarks import machine, workloads
from benchmarks.targets import disk_target, tmpfs_target

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("loop", "shmsave opencv", "shmsave fast")
# name: (what, count, quick count, extension, make)
WORKLOADS = {
    "dataset": ("2,000 x 256x256x3 uint8 photos -> .png", 2000, 200, ".png", workloads.dataset),
    "microscopy": ("200 x 512x512 uint16 (12-bit) -> .png", 200, 20, ".png", workloads.microscopy),
    "webp": ("200 x 256x256x3 uint8 photos -> lossless .webp", 200, 20, ".webp", workloads.dataset),
    "tiff16": ("200 x 512x512 uint16 (12-bit) -> .tiff", 200, 20, ".tiff", workloads.microscopy),
}
# (workload, goal of fast / shmsave opencv speed, most bytes of fast / opencv) from the issue
GOALS = {"dataset": (3.0, 1.25), "microscopy": (3.0, 1.25), "webp": (5.0, None)}


def _loop(images: np.ndarray, folder: str, ext: str) -> int:
    for i, image in enumerate(images):
        if not cv2.imwrite(f"{folder}/{i:06d}{ext}", image):
            raise RuntimeError(f"cv2.imwrite failed on image {i}")
    return sum(entry.stat().st_size for entry in os.scandir(folder))


def _run(method: str, images: np.ndarray, ext: str, root: Path, writer: shmsave.Writer, check: bool):
    """(seconds, bytes written) of one method; ``check``: read every file back and compare."""
    folder = tempfile.mkdtemp(dir=root)
    try:
        began = time.perf_counter()
        if method == "loop":
            nbytes = _loop(images, folder, ext)
        else:
            encoder = "fast" if method == "shmsave fast" else "opencv"
            report = writer.save(images, folder + "/{index:06d}" + ext, encoder=encoder)
            if report.encoder != encoder:
                raise RuntimeError(f"{method} wrote with {report.encoder}")
            nbytes = report.bytes
        seconds = time.perf_counter() - began
        if check:
            for i, image in enumerate(images):
                back = cv2.imread(f"{folder}/{i:06d}{ext}", cv2.IMREAD_UNCHANGED)
                if back is None or back.dtype != image.dtype or not np.array_equal(back, image):
                    raise RuntimeError(f"{method}: image {i} ({ext}) does not decode to its input pixels")
        return seconds, nbytes
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _target():
    with tmpfs_target() as tmpfs:
        if not isinstance(tmpfs, str):
            yield tmpfs
            return
        print(f"warning: {tmpfs}; writing to the disk", file=sys.stderr)
        with disk_target() as disk:
            yield disk


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=None, help="repetitions (default 3; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="a tenth of the images, one repetition")
    parser.add_argument("--workers", type=int, default=None, help="the Writer's workers (default: usable CPUs)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    repeat = args.repeat or (1 if args.quick else 3)
    rng = np.random.default_rng(0)
    stacks = {
        name: (make(rng, quick if args.quick else count), ext)
        for name, (_, count, quick, ext, make) in WORKLOADS.items()
    }
    times = {(w, m): [] for w in stacks for m in METHODS}
    sizes: dict[tuple[str, str], int] = {}
    with _target() as target, shmsave.Writer(args.workers) as writer:
        writer.start()
        for method in METHODS:  # untimed: warm the encoders, the workers and the imports
            for images, ext in stacks.values():
                _run(method, images[:4], ext, target.root, writer, check=False)
        for repetition in range(repeat):
            order = list(times)
            random.shuffle(order)
            for workload, method in order:
                images, ext = stacks[workload]
                seconds, nbytes = _run(method, images, ext, target.root, writer, check=repetition == 0)
                times[workload, method].append(seconds)
                sizes[workload, method] = nbytes
                print(f"{workload:10} {method:15} {seconds:.3f} s {nbytes / 1e6:.1f} MB", file=sys.stderr)
        workers = writer.workers
    text = _render(args, repeat, stacks, times, sizes, workers, target.filesystem)
    args.out.mkdir(parents=True, exist_ok=True)
    name = "encoders" + ("-quick" if args.quick else "") + (f"-{args.workers}-worker" if args.workers else "")
    (args.out / f"{name}.md").write_text(text)
    print(text)
    return 0


def _render(args, repeat, stacks, times, sizes, workers, filesystem) -> str:
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = "python -m benchmarks.encoders" + (" --quick" if args.quick else "") + f" --repeat {repeat}"
    command += f" --workers {args.workers}" if args.workers else ""
    lines = [
        "# encoder='fast' against OpenCV's encoders",
        "",
        f"`{command}`, {when}.",
        f"{machine.usable_cores()} cores, {machine.cpu_model()}, {workers} workers; files on {filesystem}.",
        f"Median of {repeat} interleaved repetition(s) (min-max seconds); images/s; speed-up over the loop; total",
        "bytes of the files. Every file of each method's first run decoded to exactly its input pixels.",
        "",
        "| workload | " + " | ".join(METHODS) + " | fast / opencv speed | fast / opencv bytes |",
        "|---" * (len(METHODS) + 3) + "|",
    ]
    ratios = {}
    for workload, (images, _) in stacks.items():
        medians = {m: statistics.median(times[workload, m]) for m in METHODS}
        cells = [
            f"{len(images) / medians[m]:.0f}/s ({min(times[workload, m]):.2f}-{max(times[workload, m]):.2f} s) "
            f"{medians['loop'] / medians[m]:.2f}x, {sizes[workload, m] / 1e6:.1f} MB"
            for m in METHODS
        ]
        speed = medians["shmsave opencv"] / medians["shmsave fast"]
        size = sizes[workload, "shmsave fast"] / sizes[workload, "shmsave opencv"]
        ratios[workload] = (speed, size)
        lines.append(
            f"| {workload}: {WORKLOADS[workload][0]} | " + " | ".join(cells) + f" | {speed:.2f}x | {size:.2f}x |"
        )
    lines += ["", "## Goals (issue 22)", "", "| workload | goal | measured | met |", "|---|---|---|---|"]
    for workload, (least_speed, most_bytes) in GOALS.items():
        speed, size = ratios[workload]
        goal = f"fast >= {least_speed:g}x shmsave opencv" + (f", bytes <= {most_bytes:g}x" if most_bytes else "")
        met = speed >= least_speed and (most_bytes is None or size <= most_bytes)
        lines.append(f"| {workload} | {goal} | {speed:.2f}x, {size:.2f}x the bytes | {'yes' if met else 'no'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
