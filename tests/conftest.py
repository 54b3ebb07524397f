"""Shared fixtures. Every test ends with the same check: no shared-memory
segment of this process and no child process outlives it."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

import shmsave
from shmsave import api


def shmsave_segments(pid: int | None = None) -> set[str]:
    """Names of segments made by shmsave (by process ``pid`` when given)."""
    owner = "*" if pid is None else str(pid)
    folders = ("/dev/shm", tempfile.gettempdir())  # the second for file-backed fallback segments
    return {os.path.basename(p) for folder in folders for p in glob.glob(f"{folder}/shmsave_{owner}_*")}


def children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def hub_ended(timeout: float = 10.0) -> bool:
    """Wait until no stream hub thread runs. Once its last stream closes, the hub closes its wake-up
    pipe and then its thread ends, a moment after ``close`` or ``flush`` returned: threads and file
    descriptors compared between two such moments are compared once it has ended."""
    return wait_until(lambda: not any(t.name == "shmsave-stream-hub" for t in threading.enumerate()), timeout)


@pytest.fixture(autouse=True)
def no_leaks():
    """Fail the test if it leaves a segment or a child process behind."""
    before_children = children()
    yield
    if api._shared is not None:
        api._shared.close()
        api._shared = None
    assert wait_until(lambda: not (children() - before_children), 10), (
        f"child processes left running: {children() - before_children}"
    )
    assert not shmsave_segments(os.getpid()), f"segments left in /dev/shm: {shmsave_segments(os.getpid())}"


def orphaned_segments() -> set[str]:
    """shmsave segments whose owner is this process or a process that no longer exists."""

    def owner(name):
        return int(name.split("_")[1])

    return {name for name in shmsave_segments() if owner(name) == os.getpid() or not psutil.pid_exists(owner(name))}


def pytest_sessionfinish(session, exitstatus):
    """After the whole suite, /dev/shm holds nothing of shmsave's (ls /dev/shm is part of the suite).

    Segments of other live processes (a second test run on the same machine) are theirs, not leaks.
    """
    left = orphaned_segments()
    if left:
        print(f"\n/dev/shm still holds shmsave segments after the suite: {sorted(left)}")
        session.exitstatus = 1


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture
def photos(rng):
    """Eight 64x80 BGR images with gradients, edges and noise (not pure noise)."""
    y, x = np.mgrid[0:64, 0:80]
    stack = np.empty((8, 64, 80, 3), np.uint8)
    for i in range(8):
        for c in range(3):
            plane = (x * (2 + i) + y * (c + 1) + rng.normal(0, 8, x.shape)) % 256
            plane[(x - 40) ** 2 + (y - 32) ** 2 < (6 + 2 * i) ** 2] = 40 * c
            stack[i, :, :, c] = plane
    return stack


ENGINES = ["inline", "thread", "process", "hybrid"]
# Who creates the files: the compiled helper (shmsave._fastfiles) where it is built, or Python.
FILE_WRITERS = ["compiled", "python"]


@pytest.fixture(params=FILE_WRITERS)
def files_by(request, monkeypatch):
    """Run the test with files written by the compiled helper, then by Python alone (this process
    and the worker processes it starts: SHMSAVE_PURE_PYTHON=1)."""
    from shmsave import _files

    if request.param == "python":
        monkeypatch.setattr(_files, "compiled", None)
        monkeypatch.setenv("SHMSAVE_PURE_PYTHON", "1")
    elif _files.compiled is None:
        pytest.skip("the compiled helper shmsave._fastfiles is not built here (no C compiler at install)")
    return request.param


@pytest.fixture(params=ENGINES)
def writer(request, files_by):
    with shmsave.Writer(workers=2, engine=request.param) as w:
        yield w


@contextlib.contextmanager
def child_under_way(command: list[str], log: Path, info: Path, timeout: float, what: str):
    """Run ``command`` (Ctrl-C reaches it as from a terminal), its output in ``log``; yield
    ``(process, the JSON in info)`` once it has written ``info`` whole (a child that opens the file
    and then writes it can be read in between), and kill it on the way out if it runs."""
    with open(log, "w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, preexec_fn=sigint_as_in_a_terminal)
    written = []

    def info_written() -> bool:
        with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
            written.append(json.loads(info.read_text()))
        return bool(written) or process.poll() is not None

    try:
        assert wait_until(info_written, timeout), what
        assert process.poll() is None, log.read_text()
        yield process, written[0]
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def interrupt_a_loop(tmp_path, script: str, out) -> dict:
    """Run ``script`` (a loop that writes ``info.json``, ``{"pid": ..., "workers": [...]}``, beside
    ``out`` once it is under way) with ``out`` as its argument, press Ctrl-C as a terminal would, and
    return that info once the loop has ended with KeyboardInterrupt, promptly."""
    path = tmp_path / "loop.py"
    path.write_text(textwrap.dedent(script))
    command = [sys.executable, str(path), str(out)]
    started = child_under_way(command, tmp_path / "child.log", tmp_path / "info.json", 60, "the loop never started")
    with started as (process, info):
        process.send_signal(signal.SIGINT)
        process.wait(20)  # promptly: what was not sent yet is dropped
    assert "KeyboardInterrupt" in (tmp_path / "child.log").read_text()
    return info


def sigint_as_in_a_terminal() -> None:
    """For Popen(preexec_fn=...): the child starts with SIGINT at its default, as from a terminal.

    A test run started in the background (``cmd &`` in a script, nohup, some CI runners) inherits
    SIGINT ignored, and Python then never turns Ctrl-C into KeyboardInterrupt.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
