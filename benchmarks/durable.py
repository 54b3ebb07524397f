"""What ``durable=True`` costs, on the real disk (a sync on tmpfs costs nothing).

    python -m benchmarks.durable               # 5 repetitions, results/durable.md
    python -m benchmarks.durable --repeat 3

    tiny10000   10,000 x 50x50 gray uint8 -> .jpg q95
    video48     48 x 1080x1920x3 uint8 -> .jpg q95

    loop                cv2.imwrite per image
    loop + fsync        cv2.imwrite, then open, os.fsync and close per image; the folder synced at the end
    shmsave             Writer.save(images, template)
    shmsave durable     Writer.save(images, template, durable=True)

Every run writes into a fresh, empty folder on the disk (``benchmarks/targets.py``). The Writer
is started before the timing. Methods run interleaved, in a fresh random order per repetition;
medians; speed-up = loop median / method median, and the durable save against the loop that
syncs (the same promise kept by hand).
"""

from __future__ import annotations

import argparse
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
from benchmarks import machine
from benchmarks.targets import disk_target

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("loop", "loop + fsync", "shmsave", "shmsave durable")
_JPEG = [cv2.IMWRITE_JPEG_QUALITY, 95]


def _workloads() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    tiny = rng.integers(0, 256, (10_000, 50, 50), np.uint8)
    video = np.empty((48, 1080, 1920, 3), np.uint8)
    base = rng.integers(0, 256, (1080, 1920, 3), np.uint8)
    for i in range(len(video)):
        video[i] = np.roll(base, 8 * i, axis=1)
    return {"tiny10000": tiny, "video48": video}


def _loop(images: np.ndarray, folder: str, sync: bool) -> None:
    for i, image in enumerate(images):
        path = f"{folder}/{i:06d}.jpg"
        cv2.imwrite(path, image, _JPEG)
        if sync:
            fd = os.open(path, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
    if sync:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(fd)
        os.close(fd)


def _time(method: str, images: np.ndarray, root: Path, writer: shmsave.Writer) -> float:
    folder = tempfile.mkdtemp(dir=root)
    try:
        os.sync()  # what the last run left dirty is not this run's to write
        began = time.perf_counter()
        if method.startswith("loop"):
            _loop(images, folder, sync=method == "loop + fsync")
        else:
            writer.save(images, folder + "/{index:06d}.jpg", quality=95, durable=method == "shmsave durable")
        return time.perf_counter() - began
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    workloads = _workloads()
    times = {(w, m): [] for w in workloads for m in METHODS}
    with disk_target() as disk, shmsave.Writer() as writer:
        if not disk.is_disk:
            print(f"warning: {disk.root} is on {disk.filesystem}, not a disk", file=sys.stderr)
        writer.start()
        for method in METHODS:  # untimed: warm the page cache, the encoders and the workers
            _time(method, workloads["tiny10000"][:500], disk.root, writer)
        for _ in range(args.repeat):
            order = list(times)
            random.shuffle(order)
            for workload, method in order:
                times[workload, method].append(_time(method, workloads[workload], disk.root, writer))
                print(f"{workload:10} {method:16} {times[workload, method][-1]:.3f} s", file=sys.stderr)
        workers = writer.workers
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# What durable=True costs",
        "",
        f"`python -m benchmarks.durable --repeat {args.repeat}`, {when}.",
        f"{machine.usable_cores()} cores, {machine.cpu_model()}, {workers} workers; files on {disk.filesystem}.",
        f"Median seconds (min-max) of {args.repeat} interleaved repetitions; speed-up over the loop, and (last column)",
        "the durable save against the loop that syncs each file.",
        "",
        "| workload | " + " | ".join(METHODS) + " | durable vs loop + fsync |",
        "|---" * (len(METHODS) + 2) + "|",
    ]
    for workload in workloads:
        medians = {method: statistics.median(times[workload, method]) for method in METHODS}
        cells = [
            f"{medians[m]:.3f} s ({min(times[workload, m]):.2f}-{max(times[workload, m]):.2f}) "
            f"{medians['loop'] / medians[m]:.2f}x"
            for m in METHODS
        ]
        versus = medians["loop + fsync"] / medians["shmsave durable"]
        lines.append(f"| {workload} | " + " | ".join(cells) + f" | {versus:.2f}x |")
    text = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "durable.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
