"""Where shmsave's per-image loop spends its time on tiny images, by sampling (py-spy).

Run the loop under py-spy, then summarize the samples taken inside ``write_images``:

    py-spy record --native -r 1000 -f raw -o spy.txt -- python -m benchmarks.spy_tiny run FOLDER [THREADS]
    python -m benchmarks.spy_tiny summarize spy.txt

``run`` saves 2,000 images of 50x50x1 uint8 as JPEG q95, 40 times, into FOLDER
(use a tmpfs to see the CPU cost rather than the disk's); with THREADS, on a
Writer's THREADS threads (where the GIL is shared). ``summarize`` sorts
the samples by their innermost frame: the encoder (cv2's symbols are
stripped, so its frames are bare addresses), the three file syscalls, numpy's
result array, and the rest, which is the interpreter running shmsave's loop.
py-spy slows the process it samples; read the shares, not the absolute time.
"""

from __future__ import annotations

import collections
import os
import shutil
import sys

_SYSCALLS = {
    "openat64": "open: create the file (kernel)",
    "__open64": "open: create the file (kernel)",
    "write": "write (kernel)",
    "__libc_write": "write (kernel)",
    "close": "close (kernel)",
    "__close": "close (kernel)",
    "__libc_close": "close (kernel)",
    "create_small": "the compiled helper: create and write the group's files (kernel)",
    "create_unnamed": "the compiled helper: create and write the group's files (kernel)",
    "pthread_cond_timedwait": "waiting for the GIL",
    "take_gil": "waiting for the GIL",
}
_NUMPY = {"PyArray_NewFromDescr_int", "array_dealloc", "_buffer_info_free", "PyDataMem_GetHandler"}


def run(folder: str, threads: int = 1, rounds: int = 40, count: int = 2000) -> None:
    import numpy as np

    import shmsave
    from benchmarks.workloads import tiny
    from shmsave._files import write_images
    from shmsave.request import make_request

    images = tiny(np.random.default_rng(0), count)
    template = os.path.join(folder, "{index:06d}.jpg")
    job = make_request(images, template, quality=95).job()
    with shmsave.Writer(threads, engine="thread") as writer:
        for _ in range(rounds):
            shutil.rmtree(folder, ignore_errors=True)
            os.makedirs(folder)
            if threads > 1:
                writer.save(images, template, quality=95)
            else:
                write_images(images, 0, job)
    shutil.rmtree(folder, ignore_errors=True)


def summarize(path: str) -> dict[str, float]:
    """Share of the samples inside ``write_images`` by where they were, largest first."""
    shares: collections.Counter[str] = collections.Counter()
    with open(path) as file:
        for line in file:
            stack, count = line.rstrip("\n").rsplit(" ", 1)
            frames = [frame.split(" (")[0] for frame in stack.split(";")]
            if "write_images" not in frames:
                continue
            inner = frames[len(frames) - frames[::-1].index("write_images") :]
            leaf = frames[-1]
            if leaf in _SYSCALLS:
                where = _SYSCALLS[leaf]
            elif any(frame in _SYSCALLS for frame in inner):  # e.g. a wait below a call that let the GIL go
                where = _SYSCALLS[next(frame for frame in reversed(inner) if frame in _SYSCALLS)]
            elif any(frame.startswith("0x") for frame in inner):
                where = "cv2.imencode (encoder)"
            elif leaf in _NUMPY or leaf in ("malloc", "free"):
                where = "numpy result array"
            else:
                where = "Python: shmsave's loop and argument handling"
            shares[where] += int(count)
    total = sum(shares.values()) or 1
    return {where: 100 * n / total for where, n in shares.most_common()}


def main(argv: list[str]) -> int:
    if len(argv) in (2, 3) and argv[0] == "run":
        run(argv[1], int(argv[2]) if len(argv) == 3 else 1)
    elif len(argv) == 2 and argv[0] == "summarize":
        print("| where | share of samples |\n|---|---:|")
        for where, share in summarize(argv[1]).items():
            print(f"| {where} | {share:.1f} % |")
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
