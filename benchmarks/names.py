"""Your own names (issue 20): per-image paths against templates, and ``Writer.imwrite`` against the loops
a user would write with ``cv2.imwrite``.

    python -m benchmarks.names              # 10,000 tiny, 200 x 1080p; 3 repetitions -> results/names.md
    python -m benchmarks.names --quick      # 2,000 tiny, 40 x 1080p -> results/names-quick.md
    python -m benchmarks.names --repeat 5

Two races, each interleaved in a fresh random order per repetition, medians, on a private tmpfs
(the disk when none can be mounted), with a started Writer (an untimed run of every method first):

1. ``save`` of a 10,000-image stack of tiny images (50x50 gray -> .jpg q95): a list of 10,000 paths
   against the same call with a ``{index:06d}`` template (goal: the list >= 0.95x the template).
2. A loop that makes one image per turn and names it from a list of paths (tiny: 10,000 x 50x50;
   video: 200 x 1080p from one reused buffer, both -> .jpg q95):

       loop              cv2.imwrite(paths[i], image, params)
       executor          ThreadPoolExecutor(cores).submit(cv2.imwrite, paths[i], image.copy(), params)
       queue + threads   a bounded queue (4 x cores) feeding one cv2.imwrite thread per core
       shmsave stream    Writer.stream(template).write(image): the same work, named by a template
       stream, own paths Writer.stream(None).write(image, paths[i], params): the stream naming each image
       shmsave imwrite   Writer.imwrite(paths[i], image, params), then Writer.flush()

   Goals: imwrite >= 0.95x the stream, and at least as fast as the best of the other three. The
   stream with its own paths has no goal: it splits what imwrite costs over the stream into naming
   each image (the stream with its own paths against the template's) and imwrite's own layer
   (imwrite against the stream with its own paths).
   The caller's CPU time per ``imwrite`` of a 50x50 image (``time.thread_time`` around the loop of
   tiny images, the only work in it) has the goal <= 4 us.

   Verdicts, as in the full run's goals: "met"; "level" when a median misses but the run cannot
   tell the two apart (their interquartile ranges overlap; for the CPU goal, the runs' lower
   quartile is within it); else "not met". Each comparison also says in how many repetitions the
   method was ahead, pair by pair (every repetition runs each method once, in a random order).
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import machine
from benchmarks.goals import ratio_verdict
from benchmarks.streaming import Workload, _workloads, imwrite_executor, imwrite_loop, imwrite_queue_threads
from benchmarks.targets import disk_target, tmpfs_target

RESULTS = Path(__file__).resolve().parent / "results"
GOAL_LIST_OVER_TEMPLATE = 0.95
GOAL_IMWRITE_OVER_STREAM = 0.95
GOAL_IMWRITE_US = 4.0
PEERS = ("loop", "executor", "queue + threads")
STREAM, NAMED, IMWRITE = "shmsave stream", "stream, own paths", "shmsave imwrite"


def _loop_methods(writer, cores: int, cpu_us: dict):
    def loop(w: Workload, paths: list[str], template: str):
        imwrite_loop(zip(paths, w.images()), w.params)

    def executor(w: Workload, paths: list[str], template: str):
        imwrite_executor(zip(paths, w.images()), w.params, cores)

    def queue_threads(w: Workload, paths: list[str], template: str):
        imwrite_queue_threads(zip(paths, w.images()), w.params, cores)

    def stream(w: Workload, paths: list[str], template: str):
        with writer.stream(template, quality=w.params[1]) as s:
            for image in w.images():
                s.write(image)

    def named(w: Workload, paths: list[str], template: str):
        params = w.params
        with writer.stream(None) as s:
            for path, image in zip(paths, w.images()):
                s.write(image, path, params)

    def imwrite(w: Workload, paths: list[str], template: str):
        params = w.params
        cpu = time.thread_time()
        for path, image in zip(paths, w.images()):
            writer.imwrite(path, image, params)
        cpu_us.setdefault(w.name, []).append((time.thread_time() - cpu) / w.count * 1e6)
        writer.flush()

    return {
        "loop": loop,
        "executor": executor,
        "queue + threads": queue_threads,
        STREAM: stream,
        NAMED: named,
        IMWRITE: imwrite,
    }


def _fresh(root: Path, ext: str, count: int) -> tuple[list[str], str]:
    folder = root / "run"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    template = str(folder / f"{{index:06d}}{ext}")
    return [template.format(index=i) for i in range(count)], template


def _race(methods: dict, workload: Workload, root: Path, repeat: int) -> dict[str, list[float]]:
    timings: dict[str, list[float]] = {name: [] for name in methods}
    for rep in range(repeat):
        order = list(methods)
        random.shuffle(order)
        for name in order:
            paths, template = _fresh(root, workload.ext, workload.count)
            began = time.perf_counter()
            methods[name](workload, paths, template)
            timings[name].append(time.perf_counter() - began)
            assert len(list(Path(template).parent.iterdir())) == workload.count, name
            print(f"{workload.name} rep {rep + 1} {name}: {timings[name][-1]:.3f} s", file=sys.stderr)
    return timings


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller workloads")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    import shmsave

    cores = machine.usable_cores()
    print("generating workloads ...", file=sys.stderr)
    workloads = [w for w in _workloads(args.quick) if w.name in ("tiny", "video")]
    tiny = workloads[0]
    stack = np.stack(list(tiny.images()))
    cpu_us: dict[str, list[float]] = {}
    with tmpfs_target() as tmpfs, disk_target() as disk, shmsave.Writer() as writer:
        target = tmpfs if not isinstance(tmpfs, str) else disk
        writer.start()
        saves = {
            "template": lambda w, paths, template: writer.save(stack, template, quality=95),
            "list of paths": lambda w, paths, template: writer.save(stack, paths, quality=95),
        }
        loops = _loop_methods(writer, cores, cpu_us)
        for run in [*saves.values(), *loops.values()]:  # warm-up: imports, threads, the workers, the rings
            run(tiny, *_fresh(target.root, tiny.ext, tiny.count))
        cpu_us.clear()
        save_results = _race(saves, tiny, target.root, args.repeat)
        loop_results = {w.name: _race(loops, w, target.root, args.repeat) for w in workloads}
        where = f"{target.name} ({target.filesystem})"
    text = _markdown(args, cores, where, tiny, workloads, save_results, loop_results, cpu_us)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"names{'-quick' if args.quick else ''}.md").write_text(text)
    return 0


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    low, _, high = statistics.quantiles(values, n=4)
    return low, high


def faster(times: list[float], others: list[float], factor: float = 1.0) -> str:
    """Whether the method timed ``times`` runs at least ``factor`` times as fast as the one timed
    ``others`` in the same interleaved repetitions, by the full run's rule (``goals.ratio_verdict``:
    "level" when a median loses but the interquartile ranges overlap), with the repetitions in
    which it was ahead, pair by pair."""
    ahead = sum(t * factor <= o for t, o in zip(times, others))
    verdict = ratio_verdict(
        statistics.median(times), _quartiles(times), statistics.median(others), _quartiles(others), factor
    )
    return f"{verdict}; ahead in {ahead} of {min(len(times), len(others))} repetitions"


def at_most(values: list[float], goal: float) -> str:
    """The verdict on a median of at most ``goal``: "met"; "level" when ``goal`` is above the lower
    quartile (the runs straddle it); else "not met"."""
    if statistics.median(values) <= goal:
        return "met"
    return "level" if _quartiles(values)[0] <= goal else "not met"


def _cell(values: list[float], base: float) -> str:
    median = statistics.median(values)
    return f"{median:.3f} s ({min(values):.3f}-{max(values):.3f}) **{base / median:.2f}x**"


def _markdown(args, cores, where, tiny, workloads, save_results, loop_results, cpu_us) -> str:
    lines = [
        "# Your own names: per-image paths and Writer.imwrite against the loops a user would write",
        "",
        f"{machine.run_line(cores, where)} Medians of {args.repeat} interleaved repetitions (spread: min-max).",
        "",
        f"## save: {tiny.count:,} paths from a list against a template ({tiny.summary}, a warm Writer)",
        "",
        "| template | list of paths |",
        "|---|---|",
    ]
    base = statistics.median(save_results["template"])
    ratio = base / statistics.median(save_results["list of paths"])
    lines += [
        f"| {_cell(save_results['template'], base)} | {_cell(save_results['list of paths'], base)} |",
        "",
        f"The list is {ratio:.2f}x the template (goal {GOAL_LIST_OVER_TEMPLATE}x: "
        f"{faster(save_results['list of paths'], save_results['template'], GOAL_LIST_OVER_TEMPLATE)}).",
        "",
        "## A loop naming each image from a list: speed-up over the cv2.imwrite loop",
        "",
    ]
    names = list(next(iter(loop_results.values())))
    lines += ["| workload | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    checks = []
    for w in workloads:
        results = loop_results[w.name]
        medians = {name: statistics.median(values) for name, values in results.items()}
        loop = medians["loop"]
        lines.append(f"| {w.summary} | " + " | ".join(_cell(results[name], loop) for name in names) + " |")
        over_stream = medians[STREAM] / medians[IMWRITE]
        best = min(PEERS, key=medians.get)
        checks.append(
            f"| {w.name} | imwrite {over_stream:.2f}x the stream (goal {GOAL_IMWRITE_OVER_STREAM}x: "
            f"{faster(results[IMWRITE], results[STREAM], GOAL_IMWRITE_OVER_STREAM)}); best of the others: "
            f"{best} {loop / medians[best]:.2f}x the loop, imwrite {loop / medians[IMWRITE]:.2f}x: "
            f"{faster(results[IMWRITE], results[best])}; without a goal: the stream with its own paths "
            f"{medians[STREAM] / medians[NAMED]:.2f}x the stream, imwrite {medians[NAMED] / medians[IMWRITE]:.2f}x "
            "the stream with its own paths |"
        )
    lines += ["", "| workload | goals |", "|---|---|", *checks]
    runs = cpu_us.get("tiny", [])
    if runs:
        median = statistics.median(runs)
        lines += [
            "",
            f"`imwrite` per 50x50 image: the caller's CPU time, median {median:.2f} us (runs: "
            f"{', '.join(f'{us:.2f}' for us in runs)}; goal {GOAL_IMWRITE_US} us: "
            f"{at_most(runs, GOAL_IMWRITE_US)}).",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
