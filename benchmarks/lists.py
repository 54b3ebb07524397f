"""A list of crops: ``save`` of a list of small views against the same call on ``np.stack`` of them,
and against the loops a user would write.

    python -m benchmarks.lists                # 10,000 crops of 48x48 from 1080p frames -> .jpg q95 -> results/lists.md
    python -m benchmarks.lists --count 2000 --repeat 5

A detector's crops, a tiler's patches: many small images, each a view into a bigger frame (not
C-contiguous), held in a Python list. Every method writes the same files, interleaved in a fresh
random order per repetition, medians, on a private tmpfs (the disk when none can be mounted), with
a started Writer (an untimed run of every method first):

    loop              cv2.imwrite(path, crop, params) for each crop
    threads chunked   ThreadPoolExecutor(cores), one chunk of the list per core
    shmsave stack     writer.save(np.stack(crops), template): stacking first, inside the time
    shmsave list      writer.save(crops, template)

What the list costs over a stack is per image: its checks, its copy into shared memory and its
description to the workers (the copy of a crop is a strided one).
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from benchmarks import machine
from benchmarks.baselines import chunk_bounds, write_chunk
from benchmarks.targets import disk_target, tmpfs_target
from benchmarks.workloads import video

RESULTS = Path(__file__).resolve().parent / "results"
SIDE = 48
PARAMS = [cv2.IMWRITE_JPEG_QUALITY, 95]


def crops(count: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` views of SIDE x SIDE pixels at random places of eight 1080p frames."""
    rng = np.random.default_rng([seed, *b"lists"])
    frames = video(rng, 8)
    ys = rng.integers(0, frames.shape[1] - SIDE, count)
    xs = rng.integers(0, frames.shape[2] - SIDE, count)
    return [frames[i % len(frames), y : y + SIDE, x : x + SIDE] for i, (y, x) in enumerate(zip(ys, xs))]


def _methods(writer, cores: int):
    def loop(images, template):
        for i, image in enumerate(images):
            cv2.imwrite(template.format(index=i), image, PARAMS)

    def threads(images, template):
        with ThreadPoolExecutor(cores) as pool:
            bounds = chunk_bounds(len(images), cores)
            for done in [pool.submit(write_chunk, lo, images[lo:hi], template, PARAMS) for lo, hi in bounds]:
                done.result()

    def stack(images, template):
        writer.save(np.stack(images), template, quality=95)

    def listed(images, template):
        writer.save(images, template, quality=95)

    return {"loop": loop, "threads chunked": threads, "shmsave stack": stack, "shmsave list": listed}


def _fresh(root: Path) -> str:
    folder = root / "run"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return str(folder / "{index:06d}.jpg")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    import shmsave

    cores = machine.usable_cores()
    print("generating crops ...", file=sys.stderr)
    images = crops(args.count)
    timings: dict[str, list[float]] = {}
    with tmpfs_target() as tmpfs, disk_target() as disk, shmsave.Writer() as writer:
        target = tmpfs if not isinstance(tmpfs, str) else disk
        writer.start()
        methods = _methods(writer, cores)
        for run in methods.values():  # warm-up: imports, threads, the workers, the staging slots
            run(images, _fresh(target.root))
        timings = {name: [] for name in methods}
        for rep in range(args.repeat):
            order = list(methods)
            random.shuffle(order)
            for name in order:
                template = _fresh(target.root)
                began = time.perf_counter()
                methods[name](images, template)
                timings[name].append(time.perf_counter() - began)
                assert len(list(Path(template).parent.iterdir())) == args.count, name
                print(f"rep {rep + 1} {name}: {timings[name][-1]:.3f} s", file=sys.stderr)
        where = f"{target.name} ({target.filesystem})"
    text = _markdown(args, cores, where, timings)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lists.md").write_text(text)
    return 0


def _cell(times: list[float], loop: float) -> str:
    median = statistics.median(times)
    return f"{median:.3f} s ({min(times):.3f}-{max(times):.3f}) **{loop / median:.2f}x**"


def _markdown(args, cores: int, where: str, timings: dict[str, list[float]]) -> str:
    medians = {name: statistics.median(times) for name, times in timings.items()}
    loop = medians["loop"]
    lines = [
        "# A list of crops: save of a list against a stack and the loops",
        "",
        f"{machine.run_line(cores, where)} "
        f"{args.count:,} views of {SIDE}x{SIDE} pixels at random places of 1080p frames -> .jpg q95, a warm "
        f"Writer. Medians of {args.repeat} interleaved repetitions (spread: min-max), speed-up over the loop.",
        "",
        "| " + " | ".join(timings) + " |",
        "|" + "---|" * len(timings),
        "| " + " | ".join(_cell(times, loop) for times in timings.values()) + " |",
        "",
    ]
    listed, stacked = timings["shmsave list"], timings["shmsave stack"]
    ahead = sum(a <= b for a, b in zip(listed, stacked))
    lines.append(
        f"The list takes {medians['shmsave list'] / medians['shmsave stack']:.2f}x the time of the stack "
        f"(stacking included); the list was ahead in {ahead} of {len(listed)} repetitions."
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
