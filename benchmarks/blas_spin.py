"""What a script's first call shares the cores with: OpenBLAS threads, spinning after import.

    python -m benchmarks.blas_spin               # -> results/blas-spin.md
    python -m benchmarks.blas_spin --repeat 21

OpenBLAS starts its threads when it is loaded, and each waits for work in a busy loop for a while
before it sleeps; numpy's wheel bundles one OpenBLAS and the OpenCV wheel another. A script that
saves right after ``import numpy, cv2`` (the question's does: its arrays take milliseconds to make)
shares the cores with them for that while; one thread (the loop) does not notice on a machine with a
core to spare, a parallel save does. Two measurements:

1. After ``import numpy`` alone and after ``import numpy, cv2`` in a fresh interpreter: the CPU the
   process's other threads use in each 10 ms, for 0.5 s (``/proc/self/task/*/schedstat``), which
   tells numpy's spinning threads from OpenCV's.
2. ``benchmarks/fresh_child.py``, as the full run's ``*-fresh`` methods run it, on 1,000 tiny images:
   the loop, chunked threads and ``shmsave.save``, each with ``OPENBLAS_NUM_THREADS`` unset and set
   to 1, interleaved in a fresh random order per repetition, on a private tmpfs (the disk when none
   can be mounted). The child reports the CPU that the threads running before its timed part
   (OpenBLAS's) used during it.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from benchmarks import installed, machine
from benchmarks.methods import FRESH_CHILD
from benchmarks.targets import disk_target, tmpfs_target
from benchmarks.workloads import SPECS

RESULTS = Path(__file__).resolve().parent / "results"
WORKLOADS = ("tiny1000", "question1000")
METHODS = ("loop", "threads-chunked", "shmsave")
SETTINGS = {"unset": None, "OPENBLAS_NUM_THREADS=1": "1"}
# Part 1's rows: (OPENBLAS_NUM_THREADS, what the script imports before it watches)
WATCHES = {
    "unset, `import numpy`": (None, "numpy"),
    "unset, `import numpy, cv2`": (None, "numpy, cv2"),
    "OPENBLAS_NUM_THREADS=1, `import numpy, cv2`": ("1", "numpy, cv2"),
}
WINDOW_S, WINDOWS = 0.01, 50
BUSY_NS = WINDOW_S * 1e9 * 0.2  # a window in which the other threads used 20 % of a core or more

# The fresh child's own reading of the other threads' CPU (fresh_child.thread_cpu_ns), after the imports
# (IMPORTS: replaced by the modules a row imports).
WATCH = f"""
import json, sys, time
import IMPORTS
sys.path.insert(0, {str(FRESH_CHILD.parent)!r})
from fresh_child import thread_cpu_ns
used, last = [], sum(thread_cpu_ns().values())
for _ in range({WINDOWS}):
    time.sleep({WINDOW_S})
    now = sum(thread_cpu_ns().values())
    used.append(now - last)
    last = now
loaded = [name for name in ("numpy", "cv2") if name in sys.modules]
print(json.dumps({{"threads": len(thread_cpu_ns()), "used_ns": used, "loaded": loaded}}))
"""


def _environment(setting: str | None) -> dict[str, str]:
    env = {k: v for k, v in installed.environment().items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    if setting is not None:
        env["OPENBLAS_NUM_THREADS"] = setting
    return env


def _watch(setting: str | None, imports: str) -> dict:
    script = WATCH.replace("IMPORTS", imports)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_environment(setting))
    if done.returncode:
        raise RuntimeError(done.stderr.strip().splitlines()[-1])
    return json.loads(done.stdout)


def _fresh_call(spec: dict, setting: str | None) -> dict:
    done = subprocess.run(
        [sys.executable, str(FRESH_CHILD), json.dumps(spec)], capture_output=True, text=True, env=_environment(setting)
    )
    if done.returncode:
        raise RuntimeError(f"{spec['method']}: {done.stderr.strip().splitlines()[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    cores = machine.usable_cores()
    spins = {name: [_watch(*watch) for _ in range(args.repeat)] for name, watch in WATCHES.items()}
    calls: dict[tuple[str, str, str], list[dict]] = {}
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as scratch, tmpfs_target() as tmpfs, disk_target() as disk:
        target = tmpfs if not isinstance(tmpfs, str) else disk
        jobs = []
        for workload in WORKLOADS:
            spec = SPECS[workload]
            source = Path(scratch) / f"{workload}.npy"
            np.save(source, spec.make(rng, spec.count))
            params = [cv2.IMWRITE_JPEG_QUALITY, spec.quality] if spec.quality is not None else []
            common = {"input": str(source), "workers": cores, "params": params, "quality": spec.quality}
            jobs += [(workload, method, setting, common) for method in METHODS for setting in SETTINGS]
        for rep in range(args.repeat):
            random.shuffle(jobs)
            for workload, method, setting, common in jobs:
                folder = target.root / "run"
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir()
                spec = {**common, "method": method, "pattern": str(folder / "{index:06d}.jpg"), "spare": scratch}
                calls.setdefault((workload, method, setting), []).append(_fresh_call(spec, SETTINGS[setting]))
                print(f"rep {rep + 1} {workload} {method} {setting}", file=sys.stderr)
        where = f"{target.name} ({target.filesystem})"
    text = _markdown(args, cores, where, spins, calls)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "blas-spin.md").write_text(text)
    return 0


def _ms(values) -> str:
    return f"{statistics.median(values) * 1e3:.1f}"


def _markdown(args, cores, where, spins, calls) -> str:
    lines = [
        "# A script's first call and the spinning OpenBLAS threads of numpy and OpenCV",
        "",
        f"{machine.run_line(cores, where)} Medians of {args.repeat} fresh interpreters.",
        "",
        f"## After the imports: the other threads' CPU, in {WINDOW_S * 1e3:.0f} ms windows",
        "",
        "| OPENBLAS_NUM_THREADS, imports | other threads | their CPU in the first 0.5 s "
        "| busy until (>= 20 % of a core) |",
        "|---|---|---|---|",
    ]
    for name, runs in spins.items():
        total = [sum(r["used_ns"]) / 1e9 for r in runs]
        busy = [max((i + 1 for i, ns in enumerate(r["used_ns"]) if ns >= BUSY_NS), default=0) * WINDOW_S for r in runs]
        threads = statistics.median(r["threads"] for r in runs)
        lines.append(f"| {name} | {threads:g} | {_ms(total)} ms | {_ms(busy)} ms after the imports |")
    lines += [
        "",
        "## 1,000 tiny images, one call in a fresh interpreter (fresh_child.py): ms, and the speed-up over the loop",
        "",
        "CPU of others: what the threads running before the timed part (OpenBLAS's) used during it.",
        "",
        "| workload | method | " + " | ".join(f"{s}: ms (min-max) | CPU of others" for s in SETTINGS) + " |",
        "|---|---|" + "---|---|" * len(SETTINGS),
    ]
    for workload in WORKLOADS:
        for method in METHODS:
            cells = []
            for setting in SETTINGS:
                runs = calls[(workload, method, setting)]
                seconds = [r["seconds"] for r in runs]
                loop = statistics.median(r["seconds"] for r in calls[(workload, "loop", setting)])
                other = [r["other_cpu_seconds"] for r in runs if r.get("other_cpu_seconds") is not None]
                cells.append(
                    f"{_ms(seconds)} ({min(seconds) * 1e3:.1f}-{max(seconds) * 1e3:.1f}) "
                    f"**{loop / statistics.median(seconds):.2f}x** | {_ms(other) + ' ms' if other else 'n/a'}"
                )
            lines.append(f"| {workload} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
