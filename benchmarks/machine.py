"""A description of the machine and software a run measured, for the report header."""

from __future__ import annotations

import os
import platform
import shlex
import sys

import cv2
import numpy as np
import psutil

from benchmarks.methods import shmsave_import
from benchmarks.targets import Target


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo, or platform.processor() where that is unavailable."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask), which can be fewer than the machine has."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def command_line() -> str:
    """The command that started this run, as it could be pasted into a shell."""
    return shlex.join(sys.orig_argv)


def run_line(cores: int, where: str) -> str:
    """The header line of a focused race's report: its command, the CPU, the versions and the target."""
    return (
        f"`{command_line()}`; {cpu_model()}, {cores} usable cores; Python {sys.version.split()[0]}, "
        f"numpy {np.__version__}, OpenCV {cv2.__version__}; target {where}."
    )


def describe(targets: list[Target]) -> dict[str, str]:
    """Machine, versions and target filesystems as label -> text."""
    shmsave, error = shmsave_import()
    try:
        import joblib

        joblib_version = joblib.__version__
    except ImportError:
        joblib_version = "not installed"
    info = {
        "CPU": cpu_model(),
        "cores": f"{os.cpu_count()} logical, {psutil.cpu_count(logical=False)} physical, "
        f"{usable_cores()} usable by this process",
        "RAM": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "OS": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        "numpy": np.__version__,
        "OpenCV": cv2.__version__,
        "joblib": joblib_version,
        "shmsave": getattr(shmsave, "__version__", "unknown version") if shmsave else f"not importable ({error})",
    }
    for target in targets:
        info[f"target {target.name}"] = f"{target.root} — {target.filesystem}"
    return info
