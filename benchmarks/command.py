"""The ``shmsave`` command against the scripts a user would write for a .npy stack.

    python -m benchmarks.command [--quick] [--repeat R] [--workers N] [--target tmpfs|disk] [--only W,..]

Each method is a fresh ``python`` process timed whole, from this process: interpreter start,
imports, reading the .npy, encoding, writing and exit. The scripts:

- ``load-loop-script``: ``np.load`` + the ``cv2.imwrite`` loop;
- ``mmap-threads-script``: ``np.load(mmap_mode="r")`` + a chunked ThreadPoolExecutor (one chunk per worker);
- ``load-processes-script``: ``np.load`` + a chunked ProcessPoolExecutor (the question's choice);
- ``shmsave-command``: ``shmsave IN.npy -o PATTERN --workers N [--quality Q] --quiet``.

Every workload of the benchmark that is a single stack (all but ``mixed``), written once to a .npy
in a scratch folder (untimed; read from the page cache). Methods run interleaved in a new random
order each repetition, with the benchmark's runner (``benchmarks/runner.py``), at least each
workload's ``min_repeat`` times in a full run; the table gives medians, spreads, the ratio to the
np.load + loop script, and peak summed RSS of the process tree. Issue 12's goal (the command at
least as fast as the mmap + threads script) is checked (``benchmarks/goals.py``).
Output: stdout and ``benchmarks/results/command.md`` (``command-quick.md`` with ``--quick``),
raw timings in the ``.json`` beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from benchmarks import goals, installed, machine, report
from benchmarks.methods import Job, Method, Run, _cli_command
from benchmarks.runner import run_study
from benchmarks.summary import summarize
from benchmarks.targets import open_targets, scratch_dir
from benchmarks.workloads import SPECS, mixed

LOOP = """
import sys, cv2, numpy as np
images = np.load(sys.argv[1])
params = [int(v) for v in sys.argv[4:]]
for i, image in enumerate(images):
    cv2.imwrite(sys.argv[2].format(index=i), image, params)
"""

MMAP_THREADS = """
import sys, cv2, numpy as np
from concurrent.futures import ThreadPoolExecutor

def write_chunk(start, chunk, pattern, params):
    for i, image in enumerate(chunk, start):
        cv2.imwrite(pattern.format(index=i), image, params)

images = np.load(sys.argv[1], mmap_mode="r")
workers, params = int(sys.argv[3]), [int(v) for v in sys.argv[4:]]
step = -(-len(images) // workers)
with ThreadPoolExecutor(workers) as pool:
    for future in [pool.submit(write_chunk, lo, images[lo:lo + step], sys.argv[2], params)
                   for lo in range(0, len(images), step)]:
        future.result()
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

BASELINE = "load-loop-script"
WORKLOADS = tuple(name for name, spec in SPECS.items() if spec.make is not mixed)  # the single stacks


def _script(source: str):
    def prepare(job: Job) -> Iterator[Run]:
        """``python -c SCRIPT IN.npy PATTERN WORKERS PARAMS...``, the whole process timed."""
        workload = job.workload
        npy = workload.npy_path()

        def run(pattern: str) -> None:
            _run(
                [sys.executable, "-c", source, str(npy), pattern, str(job.workers), *(str(v) for v in workload.params)]
            )

        yield run

    return contextlib.contextmanager(prepare)


@contextlib.contextmanager
def _command(job: Job) -> Iterator[Run]:
    """``shmsave IN.npy -o PATTERN --workers N [--quality Q] --quiet``, the whole process timed."""
    workload = job.workload
    quality = [] if workload.spec.quality is None else ["--quality", str(workload.spec.quality)]
    command = [*_cli_command(), str(workload.npy_path()), "--workers", str(job.workers), "--quiet", *quality]
    yield lambda pattern: _run([*command, "-o", pattern])


def _run(argv: list[str]) -> None:
    done = subprocess.run(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=installed.environment()
    )
    if done.returncode:
        last_line = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise RuntimeError(f"exited {done.returncode}: {last_line}")


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(BASELINE, "np.load + loop script", False, _script(LOOP), arrays_only=True),
        Method(
            goals.MMAP_THREADS_SCRIPT,
            "np.load(mmap) + ThreadPool chunked script",
            True,
            _script(MMAP_THREADS),
            arrays_only=True,
        ),
        Method("load-processes-script", "np.load + ProcessPool chunked script", True, _script(POOL), arrays_only=True),
        Method(goals.COMMAND, "shmsave command", True, _command, uses_shmsave=True, arrays_only=True),
    )
}


def _name_list(known) -> callable:
    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        unknown = [n for n in names if n not in known]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"unknown {unknown or text!r}; choose from {', '.join(known)}")
        return names

    return parse


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.command", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 repetition, large workloads shrunk")
    parser.add_argument(
        "--repeat",
        type=int,
        help="repetitions (default 5, 1 with --quick; in a full run at least each workload's min_repeat)",
    )
    parser.add_argument("--workers", type=int, default=machine.usable_cores())
    parser.add_argument("--target", choices=("tmpfs", "disk"), default="tmpfs")
    parser.add_argument(
        "--only",
        type=_name_list(WORKLOADS),
        default=list(WORKLOADS),
        metavar="WORKLOAD[,..]",
        help=f"workloads (default all single stacks: {', '.join(WORKLOADS)})",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    repeat = args.repeat or (1 if args.quick else 5)
    specs = [SPECS[name] for name in args.only]
    with open_targets(args.target) as (targets, skipped), scratch_dir() as scratch:
        if not targets:
            print(f"error: no {args.target} target: {'; '.join(skipped)}", file=sys.stderr)
            return 2
        study = run_study(
            specs, targets, list(METHODS.values()), [args.workers], repeat, args.quick, args.seed, scratch
        )
        target = targets[0]
    rows = summarize(study, args.workers, METHODS, BASELINE)
    checks = goals.check_command_goals(rows)
    floors = [] if args.quick else [f"{s.name} {s.min_repeat}" for s in specs if s.min_repeat > repeat]
    header = [
        f"# The command against user scripts ({target.filesystem})",
        "",
        f"`{machine.command_line()}` on {machine.cpu_model()}, {machine.usable_cores()} cores, "
        f"workers={args.workers}, {repeat} repetitions" + (f" (at least {', '.join(floors)})" if floors else "") + ", "
        "interleaved; each method timed as a whole process (interpreter start, imports, reading the "
        ".npy, saving, exit).",
        "",
        "\n".join(
            f"- **{info.name}**: {info.count} × {info.summary}"
            + (f" — shrunk by --quick from {info.full_count}" if info.count != info.full_count else "")
            for info in study.workloads
        ),
        "",
    ]
    text = (
        "\n".join(header)
        + (f"\n## Goal (issue 12)\n\n{goals.goals_table(checks)}\n" if checks else "")
        + f"\n## Results\n\n{report.results_table(rows).replace('vs loop', 'vs np.load + loop')}\n"
    )
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    name = "command-quick" if args.quick else "command"
    (args.out / f"{name}.md").write_text(text)
    report.write_json(
        args.out / f"{name}.json",
        {
            "command": machine.command_line(),
            "workers": args.workers,
            **study.to_json(),
            "rows": [asdict(r) for r in rows],
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
