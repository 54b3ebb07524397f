"""The ``shmsave`` command against the scripts a user would write for a .npy stack.

    python -m benchmarks.command [--quick] [--repeat R] [--workers N] [--target tmpfs|disk]

Each method is a fresh ``python`` process timed whole: interpreter start,
imports, reading the .npy, encoding and writing. Methods run interleaved in a
new random order each repetition; the table gives medians and ratios to the
np.load + loop script. Output: stdout and ``benchmarks/results/command.md``.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.machine import command_line, cpu_model, usable_cores
from benchmarks.targets import open_targets, scratch_dir
from benchmarks.workloads import SPECS, build

LOOP = """
import sys, cv2, numpy as np
images = np.load(sys.argv[1])
params = [int(v) for v in sys.argv[3:]]
for i, image in enumerate(images):
    cv2.imwrite(sys.argv[2].format(index=i), image, params)
"""

POOL = """
import sys, cv2, numpy as np
from concurrent.futures import ProcessPoolExecutor

def write_chunk(start, chunk, pattern, params):
    for i, image in enumerate(chunk, start):
        cv2.imwrite(pattern.format(index=i), image, params)

if __name__ == "__main__":
    images = np.load(sys.argv[1])
    workers, params = int(sys.argv[3]), [int(v) for v in sys.argv[4:]]
    step = -(-len(images) // workers)
    with ProcessPoolExecutor(workers) as pool:
        for future in [pool.submit(write_chunk, lo, images[lo:lo + step], sys.argv[2], params)
                       for lo in range(0, len(images), step)]:
            future.result()
"""

WORKLOADS = ("tiny10000", "video", "dataset")


def commands(npy: Path, pattern: str, workers: int, params: list[int], quality) -> dict[str, list[str]]:
    flags = [str(v) for v in params]
    shmsave = [str(Path(sys.executable).with_name("shmsave")), str(npy), "-o", pattern,
               "--workers", str(workers), "--quiet"] + (["--quality", str(quality)] if quality else [])
    return {
        "np.load + loop": [sys.executable, "-c", LOOP, str(npy), pattern, *flags],
        "np.load + ProcessPool chunked": [sys.executable, "-c", POOL, str(npy), pattern, str(workers), *flags],
        "shmsave command": shmsave,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=usable_cores())
    parser.add_argument("--target", choices=("tmpfs", "disk"), default="tmpfs")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    rows = []
    with open_targets(args.target) as (targets, skipped), scratch_dir() as scratch:
        if not targets:
            sys.exit(f"no {args.target} target: {skipped}")
        target = targets[0]
        for name in WORKLOADS:
            workload = build(SPECS[name], args.quick, 0, scratch / name)
            npy = workload.npy_path()
            times: dict[str, list[float]] = {}
            for _ in range(args.repeat):
                for method, argv_ in random.sample(list(commands(npy, "", 1, [], None).items()), 3):
                    out = Path(tempfile.mkdtemp(dir=target.root))
                    pattern = str(out / ("{index:06d}" + workload.ext))
                    cmd = commands(npy, pattern, args.workers, workload.params, workload.spec.quality)[method]
                    began = time.perf_counter()
                    subprocess.run(cmd, check=True)
                    times.setdefault(method, []).append(time.perf_counter() - began)
                    written = len(list(out.iterdir()))
                    shutil.rmtree(out)
                    if written != workload.count:
                        raise RuntimeError(f"{method} wrote {written} of {workload.count} files")
                    print(f"  {name} {method:32s} {times[method][-1]:.3f} s", file=sys.stderr)
            base = statistics.median(times["np.load + loop"])
            for method, values in times.items():
                median = statistics.median(values)
                rows.append(f"| {name} | {method} | {median:.3f} | {min(values):.3f}–{max(values):.3f} "
                            f"| {base / median:.2f}× |")
    header = [f"# The command against user scripts ({target.filesystem})", "",
              f"`{command_line()}` on {cpu_model()}, {usable_cores()} cores, workers={args.workers}, "
              f"{args.repeat} repetitions, interleaved; each method timed as a whole process.", "",
              "| workload | method | median s | spread s | speed-up vs np.load + loop |",
              "|---|---|---|---|---|"]
    text = "\n".join(header + rows) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / ("command-quick.md" if args.quick else "command.md")).write_text(text)


if __name__ == "__main__":
    main()
