"""One one-shot save in a fresh interpreter, timed from inside: what a script that saves its stack once gets.

    python benchmarks/fresh_child.py '{"method": "shmsave", "input": "in.npy", "pattern": "out/{index:06d}.jpg",
                                      "workers": 2, "params": [], "quality": null, "spare": "/tmp/x"}'

Run by the ``*-fresh`` methods of ``python -m benchmarks`` (``benchmarks/methods.py``), one process
per timed call. Deliberately a standalone script, as a user's would be: it imports nothing from
the benchmark package, and its chunk function lives in ``__main__``.

Untimed: ``import numpy, cv2``, loading the images fully into memory (``np.load`` of a .npy,
or a pickled list for the ``mixed`` workload). Timed: importing the method's own modules
(``concurrent.futures``, ``joblib``, ``shmsave``) and the call. Exit is not timed (the whole
process is what ``python -m benchmarks.command`` measures).

Prints one JSON line: ``{"seconds": import + call, "import_seconds": import alone, "other_cpu_seconds":
CPU the threads that were already running before the timed part used during it}`` (the OpenBLAS
threads of numpy and of the OpenCV wheel, spinning after import: ``python -m benchmarks.blas_spin``;
None where Linux's per-thread ``schedstat`` is not there).
"""

import json
import os
import sys
import time

# Run by path, the script's folder (benchmarks/) would come first on sys.path, where its
# modules (cli, report, methods, ...) could shadow real ones; a user's script has no such folder.
if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]


def write_chunk(start, images, pattern, params):
    """images[k] -> pattern.format(index=start + k) with cv2.imwrite, in order; return the count."""
    import cv2

    for index, image in enumerate(images, start):
        if not cv2.imwrite(pattern.format(index=index), image, params):
            raise OSError(f"cv2.imwrite failed: {pattern.format(index=index)}")
    return len(images)


def chunk_bounds(count, parts):
    """range(count) in `parts` contiguous near-equal (start, stop) ranges (as benchmarks/baselines.py)."""
    parts = max(1, min(parts, count))
    size, extra = divmod(count, parts)
    bounds, start = [], 0
    for k in range(parts):
        stop = start + size + (k < extra)
        bounds.append((start, stop))
        start = stop
    return bounds


def _loop(images, job):
    write_chunk(0, images, job["pattern"], job["params"])


def _pool(class_name):
    def run(images, job):
        started = time.perf_counter()
        import concurrent.futures

        executor = getattr(concurrent.futures, class_name)
        imported = time.perf_counter() - started
        with executor(job["workers"]) as ex:
            futures = [
                ex.submit(write_chunk, a, images[a:b], job["pattern"], job["params"])
                for a, b in chunk_bounds(len(images), job["workers"])
            ]
            for future in futures:
                future.result()
        return imported

    return run


def _joblib(images, job):
    started = time.perf_counter()
    from joblib import Parallel, delayed

    imported = time.perf_counter() - started
    # The memmapping folder is on the target, as in the warm joblib method (nothing but shmsave in /dev/shm).
    Parallel(n_jobs=job["workers"], temp_folder=job["spare"])(
        delayed(write_chunk)(a, images[a:b], job["pattern"], job["params"])
        for a, b in chunk_bounds(len(images), job["workers"])
    )
    return imported


def _shmsave(images, job):
    started = time.perf_counter()
    import shmsave

    save = shmsave.save  # resolves shmsave's lazy attribute: the import of what save() needs
    imported = time.perf_counter() - started
    kwargs = {} if job["quality"] is None else {"quality": job["quality"]}
    report = save(images, job["pattern"], workers=job["workers"], **kwargs)
    if getattr(report, "failed", 0):
        raise RuntimeError(f"shmsave reported failures: {report.failed!r}"[:300])
    return imported


METHODS = {
    "loop": _loop,
    "threads-chunked": _pool("ThreadPoolExecutor"),
    "processes-chunked": _pool("ProcessPoolExecutor"),
    "joblib": _joblib,
    "shmsave": _shmsave,
}


def thread_cpu_ns():
    """{thread id: CPU time in ns} of this process's threads but the main one; None off Linux.
    (No ``threading`` here: a method that imports it pays for that in its timed part.)"""
    me = str(os.getpid())  # the main thread's id
    try:
        tasks = [t for t in os.listdir("/proc/self/task") if t != me]
    except OSError:
        return None
    times = {}
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                times[tid] = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):  # ended meanwhile, or no schedstat
            pass
    return times


def main():
    job = json.loads(sys.argv[1])
    run = METHODS[job["method"]]
    import cv2  # noqa: F401 - untimed, as every script needs it
    import numpy as np

    if job["input"].endswith(".npy"):
        images = np.load(job["input"])  # fully into memory
    else:
        import pickle

        with open(job["input"], "rb") as f:
            images = pickle.load(f)
    before = thread_cpu_ns()
    started = time.perf_counter()
    imported = run(images, job)
    seconds = time.perf_counter() - started
    after = thread_cpu_ns()
    other = None
    if before is not None and after is not None:
        other = sum(after[t] - ns for t, ns in before.items() if t in after) / 1e9
    figures = {"seconds": seconds, "import_seconds": imported or 0.0, "other_cpu_seconds": other}
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
