"""A stream in a fresh script: what a script that opens one stream gets.

    python -m benchmarks.stream_fresh               # 5 repetitions, results/stream-fresh.md
    python -m benchmarks.stream_fresh --repeat 3

The streaming benchmark (``benchmarks/streaming.py``) times a started Writer; a script's first
stream also pays ``import shmsave``, the Writer, its ring and (if it needs them) the worker
processes. Each timed run here is a fresh interpreter reading compiled bytecode, as after
``pip install`` (``benchmarks/installed.py``): untimed, ``import numpy, cv2`` and making
the images; timed, importing the method's modules, opening, writing every image one at a time
and closing. Methods run interleaved, in a fresh random order per repetition; medians;
speed-up = loop median / method median. Files go to a private tmpfs (the disk if none mounts).

    crops200   200 x 50x50x3 uint8 -> .jpg q95     (a detector's crops)
    vga300     300 x 480x640x3 uint8 -> .jpg q95   (a camera loop)
    tiny10000  10,000 x 50x50 gray uint8 -> .jpg q95 (past the threads' first 4,000)
    tiny50000  50,000 x 50x50 gray uint8 -> .jpg q95

    loop             cv2.imwrite per image
    stream thread    shmsave.Writer(engine="thread").stream(...).write per image
    stream default   shmsave.Writer().stream(...).write per image
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import installed, machine
from benchmarks.targets import disk_target, tmpfs_target

RESULTS = Path(__file__).resolve().parent / "results"
WORKLOADS = {
    "crops200": (200, (50, 50, 3)),
    "vga300": (300, (480, 640, 3)),
    "tiny10000": (10_000, (50, 50)),
    "tiny50000": (50_000, (50, 50)),
}
METHODS = ("loop", "stream thread", "stream default")

_CHILD = """
import json, sys, time
import cv2, numpy as np
count, shape, method, folder = int(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
rng = np.random.default_rng(0)
images = [rng.integers(0, 256, shape, np.uint8) for _ in range(min(count, 50))]
began = time.perf_counter()
if method == "loop":
    for i in range(count):
        cv2.imwrite(f"{folder}/{i:06d}.jpg", images[i % len(images)], [cv2.IMWRITE_JPEG_QUALITY, 95])
else:
    import shmsave
    writer = shmsave.Writer(engine="thread" if method == "stream thread" else "auto")
    with writer.stream(folder + "/{index:06d}.jpg", quality=95) as stream:
        for i in range(count):
            stream.write(images[i % len(images)])
    assert stream.report.count == count
seconds = time.perf_counter() - began
print(json.dumps({"seconds": seconds}))
"""


def _run(root: Path, workload: str, method: str) -> float:
    count, shape = WORKLOADS[workload]
    folder = Path(tempfile.mkdtemp(dir=root))
    try:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, str(count), json.dumps(shape), method, str(folder)],
            capture_output=True,
            text=True,
            check=True,
            env=installed.environment(),
        )
        return json.loads(done.stdout.splitlines()[-1])["seconds"]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    with tmpfs_target() as tmpfs, disk_target() as disk:
        target = tmpfs if not isinstance(tmpfs, str) else disk
        times = {(w, m): [] for w in WORKLOADS for m in METHODS}
        for _ in range(args.repeat):
            order = list(times)
            random.shuffle(order)
            for workload, method in order:
                times[workload, method].append(_run(target.root, workload, method))
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# A stream in a fresh script",
        "",
        f"`python -m benchmarks.stream_fresh --repeat {args.repeat}`, {when}.",
        f"{machine.usable_cores()} cores, {machine.cpu_model()}; files on {target.name} ({target.filesystem}).",
        "Seconds from the script's first shmsave import (the loop: its first imwrite) to the stream's close,",
        f"median of {args.repeat} fresh interpreters per method, interleaved; speed-up over the loop.",
        "",
        "| workload | " + " | ".join(METHODS) + " |",
        "|---" * (len(METHODS) + 1) + "|",
    ]
    for workload in WORKLOADS:
        loop = statistics.median(times[workload, "loop"])
        cells = []
        for method in METHODS:
            median = statistics.median(times[workload, method])
            cells.append(f"{median:.3f} s {loop / median:.2f}x")
        lines.append(f"| {workload} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "stream-fresh.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
