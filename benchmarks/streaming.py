"""Saving inside a loop (issue 13): ``Writer.stream`` against what a user would write.

    python -m benchmarks.streaming            # 10,000 tiny, 200 x 1080p, 1,000 mixed; 3 repetitions
    python -m benchmarks.streaming --quick    # 2,000 tiny, 40 x 1080p, 100 mixed; 3 repetitions
    python -m benchmarks.streaming --only "queue + threads" --workloads video,mixed --repeat 5
                                              # the stream and one peer alone (streaming-only.md)

Each workload is produced one image at a time by a Python loop, as a program that decodes,
renders or infers would; every method consumes the same producer and writes image i to
``{index:06d}.<ext>`` in a fresh folder on a private tmpfs (the disk when none can be mounted).

    tiny    10,000 x 50x50 gray uint8 -> .jpg q95, from a stack in memory
    video   200 x 1080x1920x3 uint8 -> .jpg q95, from a generator that refills one buffer
    mixed   1,000 BGR uint8, sides 32-1024 px -> .webp q90 (100 distinct photos, cycled)

    loop              cv2.imwrite per image, in the loop
    executor          ThreadPoolExecutor(cores).submit(cv2.imwrite, path, image.copy()) per image
    queue + threads   a bounded queue (4 x cores) feeding one cv2.imwrite thread per core
    batches + submit  copies collected 64 at a time, each batch given to Writer.submit
    shmsave stream    Writer.stream(...).write(image) per image

shmsave's Writer is started, and its ring made, before the timing (an untimed run of each
method on the first workload warms everything up). Methods run interleaved, in a fresh random order per repetition;
medians; speed-up = loop median / method median. The cost of ``write`` (tiny: the stack is
already in memory, so the caller's loop is nothing but ``write``) is the caller's CPU time per
image, and its wall time from the first ``write`` to the return of the last, which also counts
the time the workers and the hub take the caller's core.
"""

from __future__ import annotations

import argparse
import queue
import random
import shutil
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import cv2
import numpy as np

from benchmarks import machine
from benchmarks.targets import disk_target, tmpfs_target
from benchmarks.workloads import mixed, tiny, video

RESULTS = Path(__file__).resolve().parent / "results"
BATCH = 64
GOAL_OVER_LOOP = 1.8
GOAL_WRITE_US = 3.0
STREAM = "shmsave stream"
PEERS = ("executor", "queue + threads", "batches + submit")


class Workload:
    """A named producer of images: ``images()`` yields them one at a time, as a loop would."""

    def __init__(self, name: str, summary: str, count: int, ext: str, params: list[int], images) -> None:
        self.name, self.summary, self.count, self.ext, self.params = name, summary, count, ext, params
        self.images = images


def _workloads(quick: bool) -> list[Workload]:
    rng = np.random.default_rng([0, *b"streaming"])
    jpg95, webp90 = [cv2.IMWRITE_JPEG_QUALITY, 95], [cv2.IMWRITE_WEBP_QUALITY, 90]
    tiny_count, video_count, mixed_count = (2000, 40, 100) if quick else (10_000, 200, 1000)
    stack = tiny(rng, tiny_count)[..., 0]
    frames = video(rng, 8)
    photos = mixed(rng, min(100, mixed_count))

    def from_video():
        buffer = np.empty_like(frames[0])  # a decoder's one buffer, refilled for every frame
        for i in range(video_count):
            np.copyto(buffer, frames[i % len(frames)])
            yield buffer

    return [
        Workload("tiny", f"{tiny_count:,} x 50x50 gray -> .jpg q95", tiny_count, ".jpg", jpg95, lambda: iter(stack)),
        Workload(
            "video", f"{video_count} x 1080p -> .jpg q95, one reused buffer", video_count, ".jpg", jpg95, from_video
        ),
        Workload(
            "mixed",
            f"{mixed_count:,} mixed sizes -> .webp q90",
            mixed_count,
            ".webp",
            webp90,
            lambda: (photos[i % len(photos)] for i in range(mixed_count)),
        ),
    ]


def imwrite_loop(items, params) -> None:
    """The plain loop: ``cv2.imwrite(path, image, params)`` for each ``(path, image)`` of ``items``."""
    for path, image in items:
        cv2.imwrite(path, image, params)


def imwrite_executor(items, params, cores: int) -> None:
    """A ``ThreadPoolExecutor`` given ``cv2.imwrite(path, image.copy(), params)`` per image."""
    with ThreadPoolExecutor(cores) as pool:
        wait([pool.submit(cv2.imwrite, path, image.copy(), params) for path, image in items])


def imwrite_queue_threads(items, params, cores: int) -> None:
    """A bounded queue feeding one ``cv2.imwrite`` thread per core, each image copied into it."""
    jobs: queue.Queue = queue.Queue(maxsize=4 * cores)

    def drain():
        while (job := jobs.get()) is not None:
            cv2.imwrite(job[0], job[1], params)

    threads = [threading.Thread(target=drain) for _ in range(cores)]
    for thread in threads:
        thread.start()
    for path, image in items:
        jobs.put((path, image.copy()))
    for _ in threads:
        jobs.put(None)
    for thread in threads:
        thread.join()


def _named(w: Workload, template: str):
    return ((template.format(index=i), image) for i, image in enumerate(w.images()))


def _methods(writer, cores: int, timing: dict):
    def loop(w: Workload, template: str):
        imwrite_loop(_named(w, template), w.params)

    def executor(w: Workload, template: str):
        imwrite_executor(_named(w, template), w.params, cores)

    def queue_threads(w: Workload, template: str):
        imwrite_queue_threads(_named(w, template), w.params, cores)

    def batches(w: Workload, template: str):
        futures, batch, first = [], [], 0
        options = _options(w)
        for i, image in enumerate(w.images()):
            batch.append(image.copy())
            if len(batch) == BATCH:
                futures.append(writer.submit(batch, template, start=first, **options))
                batch, first = [], i + 1
        if batch:
            futures.append(writer.submit(batch, template, start=first, **options))
        for future in futures:
            future.result()

    def stream(w: Workload, template: str):
        with writer.stream(template, **_options(w)) as s:
            began, cpu = time.perf_counter(), time.thread_time()
            for image in w.images():
                s.write(image)
            cpu, wall = time.thread_time() - cpu, time.perf_counter() - began
            timing.setdefault(w.name, []).append((cpu / w.count * 1e6, wall / w.count * 1e6))

    return {
        "loop": loop,
        "executor": executor,
        "queue + threads": queue_threads,
        "batches + submit": batches,
        STREAM: stream,
    }


def _options(w: Workload) -> dict:
    return {"quality": w.params[1]}


def _fresh(root: Path, ext: str) -> str:
    folder = root / "run"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return str(folder / f"{{index:06d}}{ext}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller workloads")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--only",
        metavar="PEER",
        action="append",
        choices=PEERS,
        help="race the stream against this peer only (and the loop); again for more. "
        "Writes streaming-only.md: a closer look at two methods without the others between them",
    )
    parser.add_argument("--workloads", help="comma-separated: tiny, video, mixed (default: all)")
    args = parser.parse_args(argv)
    import shmsave

    cores = machine.usable_cores()
    print("generating workloads ...", file=sys.stderr)
    workloads = _workloads(args.quick)
    if args.workloads:
        wanted = args.workloads.split(",")
        unknown = set(wanted) - {w.name for w in workloads}
        if unknown:
            parser.error(f"unknown workloads: {', '.join(sorted(unknown))}")
        workloads = [w for w in workloads if w.name in wanted]
    write_us: dict[str, list[float]] = {}
    results = {}
    with tmpfs_target() as tmpfs, disk_target() as disk, shmsave.Writer() as writer:
        target = tmpfs if not isinstance(tmpfs, str) else disk
        writer.start()
        methods = _methods(writer, cores, write_us)
        if args.only:
            methods = {name: run for name, run in methods.items() if name in ("loop", STREAM, *args.only)}
        for run in methods.values():  # warm-up: imports, threads, the workers, the stream's ring
            run(workloads[0], _fresh(target.root, workloads[0].ext))
        write_us.clear()
        for w in workloads:
            timings = {name: [] for name in methods}
            for rep in range(args.repeat):
                order = list(methods)
                random.shuffle(order)
                for name in order:
                    template = _fresh(target.root, w.ext)
                    began = time.perf_counter()
                    methods[name](w, template)
                    timings[name].append(time.perf_counter() - began)
                    assert len(list(Path(template).parent.iterdir())) == w.count, name
                    print(f"{w.name} rep {rep + 1} {name}: {timings[name][-1]:.3f} s", file=sys.stderr)
            results[w.name] = timings
        where = f"{target.name} ({target.filesystem})"
    text = _markdown(args, cores, where, workloads, results, write_us)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    name = "streaming" + ("-only" if args.only or args.workloads else "") + ("-quick" if args.quick else "")
    (args.out / f"{name}.md").write_text(text)
    return 0


def _markdown(args, cores, where, workloads, results, write_us) -> str:
    names = list(next(iter(results.values())))
    lines = [
        "# Saving inside a loop: Writer.stream against the loops a user would write",
        "",
        f"{machine.run_line(cores, where)} "
        f"Medians of {args.repeat} interleaved repetitions (spread: min-max); speed-up over the loop.",
        "",
        "| workload | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    checks = []
    for w in workloads:
        medians = {name: statistics.median(values) for name, values in results[w.name].items()}
        loop = medians["loop"]
        cells = []
        for name in names:
            low, high = min(results[w.name][name]), max(results[w.name][name])
            cells.append(f"{medians[name]:.3f} s ({low:.3f}-{high:.3f}) **{loop / medians[name]:.2f}x**")
        lines.append(f"| {w.summary} | " + " | ".join(cells) + " |")
        best_peer = min((peer for peer in PEERS if peer in medians), key=medians.get)
        over_loop = loop / medians[STREAM]
        checks.append(
            f"| {w.name} | stream {over_loop:.2f}x the loop (goal {GOAL_OVER_LOOP}x): "
            f"{'met' if over_loop >= GOAL_OVER_LOOP else 'not met'}; best peer {best_peer} "
            f"{loop / medians[best_peer]:.2f}x: "
            f"{'met' if medians[STREAM] <= medians[best_peer] else 'not met'} |"
        )
    lines += ["", "| workload | goals |", "|---|---|", *checks]
    if "tiny" not in results:
        return "\n".join(lines) + "\n"
    cpu_us = statistics.median(cpu for cpu, _ in write_us["tiny"])
    wall_us = statistics.median(wall for _, wall in write_us["tiny"])
    count = next(w.count for w in workloads if w.name == "tiny")
    loop_us = statistics.median(results["tiny"]["loop"]) / count * 1e6
    lines += [
        "",
        f"`write` per 50x50 image: the caller's CPU time, median {cpu_us:.2f} us (runs: "
        f"{', '.join(f'{cpu:.2f}' for cpu, _ in write_us['tiny'])}; goal {GOAL_WRITE_US} us: "
        f"{'met' if cpu_us <= GOAL_WRITE_US else 'not met'}); its wall time from the first write to the "
        f"return of the last, median {wall_us:.2f} us (runs: "
        f"{', '.join(f'{wall:.2f}' for _, wall in write_us['tiny'])}), "
        f"longer while the {cores} workers share the {cores} cores with the caller.",
        "",
        f"Ceiling for tiny here: every image costs at least what the loop spends on it ({loop_us:.1f} us: encode, "
        f"create, write) plus the caller's `write` ({cpu_us:.1f} us), spread over {cores} cores: no stream can beat "
        f"the loop by more than {cores} x {loop_us:.1f} / ({loop_us:.1f} + {cpu_us:.1f}) = "
        f"{cores * loop_us / (loop_us + cpu_us):.2f}x on this machine.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
