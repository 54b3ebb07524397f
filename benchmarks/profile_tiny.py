"""Where the time goes when saving one tiny (50x50x1 uint8, JPEG q95) image.

Times each step on its own over many images and prints microseconds per image:
path formatting, cv2.imencode, open+write+close of the encoded bytes, os.rename,
the whole cv2.imwrite, shmsave's two ways of writing a file and its whole per-image loop,
and pickling an image task (what a per-image process pool adds before any
inter-process transfer).

    python -m benchmarks.profile_tiny [--count 2000] [--repeat 5] [--target tmpfs|disk|both]
"""

from __future__ import annotations

import argparse
import os
import pickle
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from benchmarks.report import markdown_table
from benchmarks.targets import Target, open_targets
from benchmarks.workloads import tiny

PARAMS = [cv2.IMWRITE_JPEG_QUALITY, 95]


def _per_image_us(step: Callable[[], object], count: int) -> float:
    start = time.perf_counter()
    step()
    return (time.perf_counter() - start) / count * 1e6


def _fresh(target: Target, name: str) -> Path:
    folder = target.root / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    return folder


def profile_once(images: np.ndarray, target: Target) -> dict[str, float]:
    """One round of every step over all `images`, writing under `target`; microseconds per image.

    Folders are created and removed outside the timed steps.
    """
    count = len(images)
    pattern = "{index:06d}.jpg"
    blobs = [cv2.imencode(".jpg", img, PARAMS)[1].tobytes() for img in images]
    out = {
        "path formatting (str.format)": _per_image_us(lambda: [pattern.format(index=i) for i in range(count)], count),
        "cv2.imencode": _per_image_us(lambda: [cv2.imencode(".jpg", img, PARAMS) for img in images], count),
        "pickle dumps+loads of (path, image, params)": _per_image_us(
            lambda: [pickle.loads(pickle.dumps((pattern, img, PARAMS))) for img in images], count
        ),
    }

    folder = _fresh(target, "write")
    paths = [str(folder / pattern.format(index=i)) for i in range(count)]

    def write_all() -> None:
        for path, blob in zip(paths, blobs):
            with open(path, "wb") as f:
                f.write(blob)

    out["open+write+close (new file)"] = _per_image_us(write_all, count)
    renamed = [p + ".tmp" for p in paths]
    out["os.rename"] = _per_image_us(lambda: [os.rename(a, b) for a, b in zip(paths, renamed)], count)
    shutil.rmtree(folder)

    folder = _fresh(target, "os-write")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC

    def os_write_all() -> None:
        for i, blob in enumerate(blobs):
            fd = os.open(str(folder / pattern.format(index=i)), flags, 0o666)
            os.write(fd, blob)
            os.close(fd)

    out["os.open+os.write+os.close (new file, not crash-safe)"] = _per_image_us(os_write_all, count)
    shutil.rmtree(folder)

    folder = _fresh(target, "imwrite")
    paths = [str(folder / pattern.format(index=i)) for i in range(count)]
    out["cv2.imwrite (whole save, not crash-safe)"] = _per_image_us(
        lambda: [cv2.imwrite(p, img, PARAMS) for p, img in zip(paths, images)], count
    )
    shutil.rmtree(folder)
    out.update(_shmsave_steps(images, blobs, target))
    return out


def _shmsave_steps(images: np.ndarray, blobs: list[bytes], target: Target) -> dict[str, float]:
    """shmsave's two ways of writing the same bytes, and its whole per-image loop."""
    try:
        from shmsave import _files
        from shmsave.request import make_request
    except ImportError:
        return {}
    count, out = len(images), {}
    encoded = [np.frombuffer(blob, np.uint8) for blob in blobs]
    writers = {
        "shmsave write, one page or less (open + one write + close)": _files._create_small,
        "shmsave write, bigger files (O_TMPFILE + write + linkat)": _files._create_unnamed,
    }
    for label, write in writers.items():
        folder = _fresh(target, "shmsave-write")
        fd = os.open(folder, os.O_RDONLY)
        try:
            out[label] = _per_image_us(
                lambda write=write, fd=fd: [write(fd, f"{i:06d}.jpg", data) for i, data in enumerate(encoded)],
                count,
            )
        finally:
            os.close(fd)
        shutil.rmtree(folder)
    folder = _fresh(target, "shmsave-loop")
    job = make_request(images, str(folder / "{index:06d}.jpg"), quality=PARAMS[1]).job()
    out["shmsave worker loop (whole save)"] = _per_image_us(lambda: _files.write_images(images, 0, job), count)
    shutil.rmtree(folder)
    return out


def main(argv: list[str] | None = None) -> int:
    """Print a Markdown table: one line per step, median microseconds per image for each target."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_tiny", description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="images per round (default %(default)s)")
    parser.add_argument("--repeat", type=int, default=5, help="rounds; the median is shown (default %(default)s)")
    parser.add_argument("--target", choices=("tmpfs", "disk", "both"), default="both")
    args = parser.parse_args(argv)
    images = tiny(np.random.default_rng(0), args.count)
    columns: dict[str, dict[str, float]] = {}
    with open_targets(args.target) as (targets, notes):
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        for target in targets:
            rounds = [profile_once(images, target) for _ in range(args.repeat)]
            fstype = target.filesystem.split()[0]
            label = target.name if fstype == target.name else f"{target.name} ({fstype})"
            columns[f"µs/image, {label}"] = {step: statistics.median(r[step] for r in rounds) for step in rounds[0]}
    if not columns:
        print("error: no target to write to", file=sys.stderr)
        return 2
    steps = list(next(iter(columns.values())))
    lines = [[step, *(f"{col[step]:.1f}" for col in columns.values())] for step in steps]
    print(f"{args.count} images of 50x50x1 uint8, JPEG q95, median of {args.repeat} rounds\n")
    print(markdown_table(("step", *columns), lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
