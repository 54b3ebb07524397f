"""How shmsave's engines would scale with cores: a model whose inputs are measured on this machine.

    python -m benchmarks.scaling                 # 5 repetitions, results/scaling.md and scaling.png
    python -m benchmarks.scaling --quick --repeat 3

Measured per workload, in /dev/shm (medians of the repetitions):

    t   seconds per image of a save on one thread (``engine="inline"``, the request's checks included)
    g   the part of t that holds the GIL: the same save with the calls that let the GIL go (the
        encoder, and the file creation: the compiled helper's group call, or Python's file calls
        without it) replaced by stubs that return their results at once
    r   t - g: the part that runs without the GIL
    p   the parent's CPU seconds per image on the process path (a warm Writer: staging, sending
        tasks, counting results; ``time.process_time`` of this process during the save)
    w   a worker process's CPU seconds per image (psutil, the workers' CPU during the save)
    s   seconds from ``Writer(n).start()`` to every worker ready, n = 1 and 2

and the same calls with 1 and 2 workers (threads, warm processes, a one-shot hybrid save), the
measured points of the chart. The projection for n cores and N images:

    threads            X_t(n) = min(n / t, 1 / g)         the GIL-held part saturates one core
    processes (warm)   X_p(n) = min(n / w, 1 / p)         the parent's part saturates one core
    processes (start)  N / (s + N / X_p(n))
    hybrid             threads write while the workers start: N_s = min(N, s X_t(n)) images,
                       then the processes the rest: N / (s + (N - N_s) / X_p(n)), or N / X_t(n)
                       when the threads finish first

It leaves out what 2 cores cannot show: memory bandwidth, the kernel's locks on one folder, a
start cost that grows with n, and the GIL's hand-off latency beyond what g holds. Read it as the
ceiling each engine's serial part sets, not as a prediction of a given many-core machine.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import psutil

import shmsave
from benchmarks import machine
from shmsave import _files

RESULTS = Path(__file__).resolve().parent / "results"
CORES = (1, 2, 4, 8, 16, 32, 64)
_JPEG95 = [cv2.IMWRITE_JPEG_QUALITY, 95]


def _workloads(quick: bool) -> dict[str, tuple[np.ndarray, list[int]]]:
    """name -> (images, OpenCV flags); all written as .jpg."""
    rng = np.random.default_rng(0)
    tiny, video = (2_000, 12) if quick else (10_000, 48)
    frame = rng.integers(0, 256, (1080, 1920 + 8 * video, 3), np.uint8)
    return {
        f"tiny{tiny}": (rng.integers(0, 256, (tiny, 50, 50, 1), np.uint8), _JPEG95),
        f"question{tiny}": (np.random.default_rng(1).integers(0, 255, (tiny, 50, 50, 1)), []),  # int64
        f"video{video}": (np.stack([frame[:, 8 * i : 8 * i + 1920] for i in range(video)]), _JPEG95),
    }


class _Folders:
    """A fresh empty folder per timed call, under one scratch folder on tmpfs."""

    def __init__(self) -> None:
        self.root = tempfile.mkdtemp(prefix="shmsave-scaling-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)

    def fresh(self) -> str:
        return tempfile.mkdtemp(dir=self.root)

    def clear(self) -> None:
        for name in os.listdir(self.root):
            shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class _Stubbed:
    """Within it, the encoder and the file creation cost nothing: what is left of a save holds the GIL."""

    def __init__(self, images: np.ndarray, params: list[int]) -> None:
        self.encoded = cv2.imencode(".jpg", images[0].astype(np.uint8, copy=False), params)

    def __enter__(self) -> _Stubbed:
        self.saved = cv2.imencode, _files.compiled, _files._write_file
        cv2.imencode = lambda *args: self.encoded
        if _files.compiled is not None:
            _files.compiled = _Helper()
        _files._write_file = lambda folder, name, data, durable=False: data.nbytes
        return self

    def __exit__(self, *exc: object) -> None:
        cv2.imencode, _files.compiled, _files._write_file = self.saved


class _Helper:
    @staticmethod
    def write_files(folders, names, *rest) -> tuple[int, int]:
        return len(names), 0


def _timed(call: Callable[[], object]) -> float:
    began = time.perf_counter()
    call()
    return time.perf_counter() - began


def _measure(images: np.ndarray, params: list[int], repeat: int, folders: _Folders) -> dict[str, float]:
    """The model's inputs (per image, seconds) and the measured images/s at 1 and 2 workers."""
    count = len(images)
    runs: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        runs.setdefault(key, []).append(value)

    template = "{index}.jpg"
    with (
        shmsave.Writer(1, engine="inline") as inline,
        shmsave.Writer(1, engine="thread") as one,
        shmsave.Writer(2, engine="thread") as two,
    ):
        for _ in range(repeat):
            add("t", _timed(lambda: inline.save(images, os.path.join(folders.fresh(), template), params=params)))
            with _Stubbed(images, params):
                add("g", _timed(lambda: inline.save(images, os.path.join(folders.fresh(), template), params=params)))
            add("thread1", _timed(lambda: one.save(images, os.path.join(folders.fresh(), template), params=params)))
            add("thread2", _timed(lambda: two.save(images, os.path.join(folders.fresh(), template), params=params)))
            folders.clear()
    for workers in (1, 2):
        for _ in range(repeat):
            with shmsave.Writer(workers, engine="hybrid") as cold:  # one-shot: the start inside the timing
                add(f"hybrid{workers}", _timed(lambda c=cold: c.save(images, os.path.join(folders.fresh(), template))))
            with shmsave.Writer(workers, engine="process") as warm:
                add(f"start{workers}", _timed(warm.start))
                warm.save(images[: max(1, count // 10)], os.path.join(folders.fresh(), template), params=params)
                workers_cpu = [psutil.Process(pid) for pid in warm.pids]
                before = sum(sum(p.cpu_times()[:2]) for p in workers_cpu)
                cpu = time.process_time()
                add(f"process{workers}", _timed(lambda w=warm: w.save(images, os.path.join(folders.fresh(), template))))
                add(f"p{workers}", (time.process_time() - cpu) / count)
                add(f"w{workers}", (sum(sum(p.cpu_times()[:2]) for p in workers_cpu) - before) / count)
            folders.clear()
    m = {key: statistics.median(values) for key, values in runs.items()}
    per_image = {"t": m["t"] / count, "g": m["g"] / count}
    per_image["r"] = per_image["t"] - per_image["g"]
    per_image.update(p=m["p2"], w=m["w2"], s=m["start2"], s1=m["start1"])
    measured = {key: count / m[key] for key in ("thread1", "thread2", "process1", "process2", "hybrid1", "hybrid2")}
    return {**per_image, **{f"measured_{k}": v for k, v in measured.items()}, "count": count}


def project(model: dict[str, float], cores: int) -> dict[str, float]:
    """images/s on ``cores`` cores for the threads, warm processes, a one-shot process save (with the
    start) and the hybrid engine, from the measured per-image costs (see the module docstring)."""
    t, g, w, p, s, count = (model[k] for k in ("t", "g", "w", "p", "s", "count"))
    threads = min(cores / t, 1 / g)
    processes = min(cores / w, 1 / p)
    with_start = count / (s + count / processes)
    during_start = min(count, s * threads)
    hybrid = threads if during_start >= count else count / (s + (count - during_start) / processes)
    return {"threads": threads, "processes (warm)": processes, "processes (start)": with_start, "hybrid": hybrid}


def _markdown(models: dict[str, dict[str, float]], args: argparse.Namespace) -> str:
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    helper = "the compiled helper" if _files.compiled is not None else "Python's os calls (no compiled helper)"
    lines = [
        "# How the engines would scale with cores: a model measured on this machine",
        "",
        f"`{machine.command_line()}`, {when}; {machine.usable_cores()} cores, {machine.cpu_model()};",
        f"files on tmpfs, created by {helper}. The model and its formula are in `benchmarks/scaling.py`'s",
        "docstring: per image, t = one thread's time, g = its part that holds the GIL (measured with",
        "the encoder and the file creation stubbed out), r = t - g, p = the parent's CPU on the process",
        "path, w = a worker's CPU, s = the start of 2 workers. Threads top out at 1/g images/s,",
        "processes at 1/p.",
        "",
        f"Load average of this machine at the end of the run: {', '.join(f'{x:.1f}' for x in os.getloadavg())}",
        "(1, 5, 15 min). The model leaves out the wait for the GIL at each hand-off and what other",
        "processes take: where the measured 2-worker point falls below the projection, those are why.",
        "",
        "| workload | t µs | r µs | g µs | p µs | w µs | s (1, 2 workers) | threads ceiling 1/g "
        "| processes ceiling 1/p |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for name, m in models.items():
        lines.append(
            f"| {name} | {m['t'] * 1e6:.1f} | {m['r'] * 1e6:.1f} | {m['g'] * 1e6:.2f} | {m['p'] * 1e6:.2f} | "
            f"{m['w'] * 1e6:.1f} | {m['s1']:.2f} s, {m['s']:.2f} s | {1 / m['g']:,.0f}/s | {1 / m['p']:,.0f}/s |"
        )
    lines += ["", "Projected images/s (one call of the workload's images), and measured at 1 and 2 workers:", ""]
    for name, m in models.items():
        lines += [f"### {name}", "", "| engine | " + " | ".join(str(n) for n in CORES) + " | measured 1, 2 |"]
        lines.append("|---" * (len(CORES) + 2) + "|")
        rows = {engine: [project(m, n)[engine] for n in CORES] for engine in project(m, 1)}
        measured = {"threads": "thread", "processes (warm)": "process", "hybrid": "hybrid"}
        for engine, values in rows.items():
            key = measured.get(engine)
            seen = f"{m[f'measured_{key}1']:,.0f}, {m[f'measured_{key}2']:,.0f}" if key else "—"
            lines.append(f"| {engine} | " + " | ".join(f"{v:,.0f}" for v in values) + f" | {seen} |")
        lines.append("")
    return "\n".join(lines)


def _chart(models: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"threads": "#3182bd", "processes (warm)": "#e6550d", "processes (start)": "#fdae6b", "hybrid": "#c51b8a"}
    measured = {"threads": "thread", "processes (warm)": "process", "hybrid": "hybrid"}
    figure, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4.2), squeeze=False)
    for ax, (name, m) in zip(axes[0], models.items()):
        for engine, color in colors.items():
            ax.plot(CORES, [project(m, n)[engine] for n in CORES], color=color, label=f"{engine}, model")
            if engine in measured:
                key = measured[engine]
                ax.plot([1, 2], [m[f"measured_{key}1"], m[f"measured_{key}2"]], "o", color=color, label="measured")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(CORES, [str(n) for n in CORES])
        ax.set_title(name)
        ax.set_xlabel("cores (= workers)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("images/s")
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=4, fontsize=8)
    figure.tight_layout(rect=(0, 0.1, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2,000 tiny images and 12 frames")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    folders = _Folders()
    try:
        models = {}
        for name, (images, params) in _workloads(args.quick).items():
            models[name] = _measure(images, params, args.repeat, folders)
            print(f"{name}: measured", file=sys.stderr)
    finally:
        folders.remove()
    text = _markdown(models, args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scaling.md").write_text(text + "\n")
    _chart(models, args.out / "scaling.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
