"""Render a run's tables, goals and chart again from its raw timings, without timing anything.

    python -m benchmarks.render benchmarks/results/full.json

For when the way results are summarized changes after a long run: ``<name>.md`` keeps its
header (command, machine, workloads, settings) and gets new sections from the trials in
``<name>.json``; ``<name>.png`` and the JSON's rows are rewritten. A ``--scaling`` run is
rendered one worker count (one ``<name>-wN.json``) at a time.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from benchmarks.cli import summary_sections, write_study
from benchmarks.runner import Skip, Study, Trial, WorkloadInfo
from benchmarks.summary import summarize

_FIRST_SECTION_AFTER_HEADER = ("\n## Speed-up over the loop", "\n## Results")


def study_of(payload: dict) -> Study:
    """The Study a results JSON was written from."""
    return Study(
        [Trial(**t) for t in payload["trials"]],
        [Skip(**s) for s in payload["skips"]],
        [WorkloadInfo(**w) for w in payload["workloads"]],
    )


def _header(markdown: str) -> str:
    ends = [markdown.find(marker) for marker in _FIRST_SECTION_AFTER_HEADER if marker in markdown]
    if not ends:
        raise SystemExit("error: no results section in the Markdown file; was it written by python -m benchmarks?")
    return markdown[: min(ends)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.render", description=__doc__.split("\n")[0])
    parser.add_argument("json", type=Path, help="a <name>.json written by python -m benchmarks")
    args = parser.parse_args(argv)
    payload = json.loads(args.json.read_text())
    study, workers = study_of(payload), payload["workers"]
    head = _header(args.json.with_suffix(".md").read_text())
    rows = summarize(study, workers)
    payload["rows"] = [asdict(row) for row in rows]
    summary = summary_sections(rows, study)
    for path in write_study(args.json.parent, args.json.stem, head, rows, summary, payload, workers):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
