"""Command line of ``python -m benchmarks``: parse options, run the study, write and print the results."""

from __future__ import annotations

import argparse
import signal
import sys
from dataclasses import asdict
from pathlib import Path

import psutil

from benchmarks import charts, goals, machine, report, warm_baseline
from benchmarks.methods import FRESH_TARGETS, METHODS, PER_IMAGE_PROCESS_LIMIT, shmsave_import
from benchmarks.runner import Study, run_study
from benchmarks.summary import summarize
from benchmarks.targets import open_targets, scratch_dir
from benchmarks.workloads import SPECS

FULL_REPEAT = 5
QUICK_REPEAT = 1
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def _name_list(known: dict):
    """An argparse type: a comma-separated list of names, each one of `known`."""

    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        unknown = [n for n in names if n not in known]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"unknown {unknown or text!r}; choose from {', '.join(known)}")
        return names

    return parse


def _worker_list(text: str) -> list[int]:
    try:
        counts = sorted({int(n) for n in text.split(",") if n.strip()})
    except ValueError:
        counts = []
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError("expected positive integers, e.g. 1,2,4")
    return counts


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options of ``python -m benchmarks``, with defaults filled in."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Time every way of saving a stack of images (cv2 loop, executors, joblib, shmsave) "
        "on the same workloads, interleaved, and write a Markdown table, JSON and a chart.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a short run (about two minutes on 2 cores where files are cheap to create): "
        f"{QUICK_REPEAT} repetition, large workloads shrunk "
        "(the tiny 100/1000/10000 and question* keep their size, tiny50000 is 20,000)",
    )
    workers = parser.add_mutually_exclusive_group()
    workers.add_argument(
        "--workers",
        type=int,
        default=machine.usable_cores(),
        help="workers for the parallel methods (default: usable cores, %(default)s here)",
    )
    workers.add_argument(
        "--scaling",
        type=_worker_list,
        metavar="N,N,...",
        help="run the whole study once per worker count; also write scaling-measured.md/png",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        metavar="R",
        help=f"repetitions per method (default {FULL_REPEAT}, {QUICK_REPEAT} with --quick); "
        "a full run repeats the short workloads more: "
        + ", ".join(f"{s.name} at least {s.min_repeat}" for s in SPECS.values() if s.min_repeat > 1),
    )
    parser.add_argument(
        "--only",
        type=_name_list(SPECS),
        default=list(SPECS),
        metavar="WORKLOAD[,..]",
        help=f"workloads to run: {', '.join(SPECS)}",
    )
    parser.add_argument(
        "--methods",
        type=_name_list(METHODS),
        default=list(METHODS),
        metavar="M[,..]",
        help=f"methods to run: {', '.join(METHODS)}",
    )
    parser.add_argument(
        "--target",
        choices=("tmpfs", "disk", "both"),
        default="both",
        help="where to write (default both); tmpfs is a private mount and needs root",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default %(default)s)")
    parser.add_argument("--name", help="base name of the output files (default: quick or full)")
    parser.add_argument("--seed", type=int, default=0, help="seed for images and method order")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    args.repeat = args.repeat or (QUICK_REPEAT if args.quick else FULL_REPEAT)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    args.name = args.name or ("quick" if args.quick else "full")
    args.worker_counts = args.scaling or [args.workers]
    return args


def _raise_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


def _stop_stray_children() -> None:
    """Terminate any child process still alive (there should be none), saying so.

    multiprocessing's and loky's resource trackers are left alone: they exit with this process.
    """
    strays = []
    for child in psutil.Process().children(recursive=True):
        try:
            if not any("resource_tracker" in part for part in child.cmdline()):
                strays.append(child)
        except psutil.Error:
            pass
    for child in strays:
        print(f"warning: stopping leftover process {child.pid}", file=sys.stderr)
        child.terminate()
    _, alive = psutil.wait_procs(strays, timeout=3)
    for child in alive:
        child.kill()


def _settings(args: argparse.Namespace, workers: list[int]) -> list[str]:
    floors = (
        []
        if args.quick
        else [f"{name} {SPECS[name].min_repeat}" for name in args.only if SPECS[name].min_repeat > args.repeat]
    )
    at_least = f" (at least {', '.join(floors)})" if floors else ""
    return [
        f"workers: {', '.join(map(str, workers))} (usable cores here: {machine.usable_cores()})",
        f"repetitions: {args.repeat} per method{at_least}; in each repetition every method runs once, "
        f"in a fresh random order (seed {args.seed}), all in this one run",
        "each call writes one file per image into a fresh empty folder; creating and deleting the "
        "folder (and os.sync on disk) happen outside the timing; nothing is fsynced inside it",
        f"the per-image ProcessPoolExecutor is skipped above {PER_IMAGE_PROCESS_LIMIT} images",
        f"the *-fresh methods run each call in a fresh interpreter, timed inside it (imports of the method's "
        f"modules included, `import numpy, cv2` and loading the images not), on {', '.join(FRESH_TARGETS)} only; "
        "the question* and tiny50000 workloads run on tmpfs only",
        "encoding: OpenCV imwrite with the same params for every method (JPEG q95, WebP q90, "
        "PNG at OpenCV's default compression)",
    ]


def summary_sections(rows, study: Study, baseline: dict | None = None) -> str:
    """The compact speed-up table per target, the one-shot table per target where fresh interpreters
    ran, and the goals of issues 5 and 12, as Markdown sections. ``baseline``: the warm rows to
    compare with (default: ``results/warm-baseline.csv``)."""
    targets = list(dict.fromkeys(row.target for row in rows))
    parts = [f"## Speed-up over the loop, {target}\n\n{goals.compact_table(rows, target)}\n" for target in targets]
    for target in targets:
        if any(row.method == goals.FRESH_LOOP and row.target == target and row.median for row in rows):
            parts.append(
                f"## One-shot in a fresh interpreter, {target} (speed-up over the fresh loop)\n\n"
                f"{goals.fresh_table(rows, target)}\n"
            )
    counts = {info.name: info.count for info in study.workloads}
    checks = goals.check_goals(rows, counts)
    if checks:
        parts.append(f"## Goals (issue 5)\n\n{goals.goals_table(checks)}\n")
    baseline = warm_baseline.load() if baseline is None else baseline
    checks = goals.check_fresh_goals(rows, counts) + goals.check_warm_baseline(rows, counts, baseline)
    if checks:
        parts.append(
            f"## Goals (issue 12)\n\n{goals.goals_table(checks)}\n"
            "The command's goal is checked by `python -m benchmarks.command` (`results/command.md`).\n\n"
        )
    return "\n".join(parts)


def write_study(out: Path, name: str, head: str, rows, summary: str, payload: dict, workers: int) -> list[Path]:
    """Write <name>.md, .json and .png; return their paths."""
    paths = [out / f"{name}.md", out / f"{name}.json", out / f"{name}.png"]
    paths[0].write_text(report.results_document(head, rows, summary))
    report.write_json(paths[1], payload)
    charts.speedup_chart(rows, paths[2], f"Speed-up over the cv2.imwrite loop — {workers} workers", workers)
    return paths


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table(s) to stdout and progress to stderr. Returns the exit status."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    notes = []
    if shmsave_import()[0] is None:
        notes.append(f"shmsave methods skipped: shmsave is not importable ({shmsave_import()[1]})")
    if args.quick:
        notes.append("--quick: fewer repetitions; large workloads shrunk (see Workloads)")
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    with open_targets(args.target) as (targets, target_notes), scratch_dir() as scratch:
        notes += target_notes
        for note in target_notes:
            print(f"note: {note}", file=sys.stderr)
        if not targets:
            print("error: no target to write to", file=sys.stderr)
            return 2
        try:
            study = run_study(
                [SPECS[n] for n in args.only],
                targets,
                [METHODS[m] for m in args.methods],
                args.worker_counts,
                args.repeat,
                args.quick,
                args.seed,
                scratch,
            )
        finally:
            _stop_stray_children()  # before the targets are unmounted and removed
        description = machine.describe(targets)

    _write_outputs(args, study, description, notes)
    return 0


def _write_outputs(args: argparse.Namespace, study: Study, description: dict[str, str], notes: list[str]) -> None:
    """Print each table to stdout and write <name>.md/.json/.png (per worker count) and, with
    --scaling, scaling-measured.md/.png into args.out (scaling.md/.png are the model's:
    ``python -m benchmarks.scaling``)."""
    args.out.mkdir(parents=True, exist_ok=True)
    command = machine.command_line()
    rows_by_workers = {n: summarize(study, n) for n in args.worker_counts}
    written = []
    for workers, rows in rows_by_workers.items():
        name = args.name if len(args.worker_counts) == 1 else f"{args.name}-w{workers}"
        head = report.header(
            f"shmsave benchmark — {name}", command, description, _settings(args, [workers]), study.workloads, notes
        )
        payload = {
            "command": command,
            "machine": description,
            "notes": notes,
            "workers": workers,
            **study.to_json(),
            "rows": [asdict(r) for r in rows],
        }
        summary = summary_sections(rows, study)
        print(f"\n## {name}\n\n{report.results_table(rows)}\n{summary}")
        written += write_study(args.out, name, head, rows, summary, payload, workers)
    if args.scaling:
        head = report.header(
            "shmsave benchmark — scaling",
            command,
            description,
            _settings(args, args.worker_counts),
            study.workloads,
            notes,
        )
        table = report.scaling_table(rows_by_workers)
        print(f"\n## scaling\n\n{table}")
        (args.out / "scaling-measured.md").write_text(
            f"{head}\n## Scaling (median s and speed-up over the loop)\n\n{table}\n{report.LEGEND}"
        )
        charts.scaling_chart(rows_by_workers, args.out / "scaling-measured.png", "Speed-up over the loop vs workers")
        written += [args.out / "scaling-measured.md", args.out / "scaling-measured.png"]
    print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
