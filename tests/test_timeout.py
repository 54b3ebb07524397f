"""timeout=: a worker that makes no progress for that long is killed and replaced; its images fail.

A hung mount, a stopped process and a stuck encoder look alike to the parent: a worker that
says nothing. The tests make one with SIGSTOP (no root, no FUSE), before a call or in the middle
of one, and check that the call ends on time, names the images, leaves no partial file, and
that the Writer works afterwards.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import psutil
import pytest

import shmsave
from shmsave import _files, _worker
from shmsave._job import Job
from shmsave._protocol import StackSource, Task
from shmsave.errors import InvalidRequest, WriteTimedOut
from shmsave.pool import Pool

from .conftest import wait_until
from .disk import ext4_disk, frozen

TIMEOUT = 2.0
ON_TIME = TIMEOUT + 1.5  # the call returns within this long of the stall


@contextlib.contextmanager
def stopped(pid: int):
    """SIGSTOP ``pid`` for the block; SIGCONT after, should it still live."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def _images(count: int, side: int = 32) -> np.ndarray:
    return np.random.default_rng(count).integers(0, 256, (count, side, side, 3), np.uint8)


def _check_files(folder, images, written: set[int]) -> None:
    """Every file is complete and holds its image; every image reported written is there; nothing else."""
    names = os.listdir(folder)
    assert not [name for name in names if name.startswith(".")], f"temporary files left: {names}"
    for name in names:
        index = int(name.split(".")[0])
        assert os.path.getsize(folder / name) > 0, f"{name} is empty"
        assert np.array_equal(cv2.imread(str(folder / name)), images[index]), f"{name} is not its image"
    assert written <= {int(name.split(".")[0]) for name in names}


def _written(report, count: int) -> set[int]:
    return set(range(count)) - {failure.index for failure in report.failed}


@pytest.mark.parametrize("errors", ["raise", "collect"])
def test_a_stopped_worker_is_timed_out_and_replaced(errors, tmp_path):
    images = _images(200)
    with shmsave.Writer(workers=2, engine="process") as writer:
        writer.start()
        stalled = writer.pids[0]
        with stopped(stalled):
            began = time.monotonic()
            if errors == "raise":
                with pytest.raises(WriteTimedOut) as raised:
                    writer.save(images, str(tmp_path / "{index}.png"), timeout=TIMEOUT)
                error = raised.value
                report = error.report
                assert isinstance(error, TimeoutError) and isinstance(error, shmsave.ShmsaveError)
                assert (error.seconds, error.pid) == (TIMEOUT, stalled)
                assert error.path == str(tmp_path / f"{error.start}.png")
                assert f"no progress for {TIMEOUT:g} s" in str(error) and str(stalled) in str(error)
            else:
                report = writer.save(images, str(tmp_path / "{index}.png"), timeout=TIMEOUT, errors="collect")
                assert report.count + len(report.failed) == 200
            elapsed = time.monotonic() - began
        assert elapsed < ON_TIME, f"the call took {elapsed:.2f} s"
        failed = sorted(failure.index for failure in report.failed)
        assert failed and failed == list(range(failed[0], failed[-1] + 1)), "one task's images fail"
        assert all(f"no progress for {TIMEOUT:g} s (timeout)" in failure.message for failure in report.failed)
        assert not psutil.pid_exists(stalled)
        assert stalled not in writer.pids
        _check_files(tmp_path, images, _written(report, 200) if errors == "collect" else set())
        again = tmp_path / "again"
        assert writer.save(images[:50], str(again / "{index}.png"), timeout=TIMEOUT).count == 50


def test_a_worker_stopped_in_the_middle_of_its_task_leaves_no_partial_file(tmp_path):
    images = _images(60, 384)  # ~10 ms each to encode: the tasks are still running when it stops
    stopped_at: list[float] = []
    with shmsave.Writer(workers=2, engine="process") as writer:
        writer.start()
        stalled = writer.pids[0]

        def stop_when_files_appear():
            wait_until(lambda: len(os.listdir(tmp_path)) >= 3, 10, 0.001)
            os.kill(stalled, signal.SIGSTOP)
            stopped_at.append(time.monotonic())

        stopper = threading.Thread(target=stop_when_files_appear)
        stopper.start()
        try:
            report = writer.save(images, str(tmp_path / "{index}.png"), timeout=TIMEOUT, errors="collect")
        finally:
            stopper.join()
            with contextlib.suppress(ProcessLookupError):
                os.kill(stalled, signal.SIGCONT)
        assert time.monotonic() - stopped_at[0] < ON_TIME
        assert report.failed, "the stopped worker held no image: the test tests nothing"
        assert report.count + len(report.failed) == 60
        _check_files(tmp_path, images, _written(report, 60))


@pytest.mark.parametrize("errors", ["raise", "collect"])
def test_a_stream_times_out_a_stopped_worker(errors, tmp_path):
    images = _images(50, 24)
    with shmsave.Writer(workers=2) as writer:
        writer.start()
        stalled = writer.pids[0]
        with stopped(stalled):
            began = time.monotonic()
            stream = writer.stream(str(tmp_path / "{index}.png"), timeout=TIMEOUT, errors=errors)
            if errors == "raise":
                with pytest.raises(WriteTimedOut) as raised:
                    with stream:
                        for i in range(600):
                            stream.write(images[i % 50])
                report = raised.value.report
            else:
                with stream:
                    for i in range(600):
                        stream.write(images[i % 50])
                report = stream.report
                assert report.count + len(report.failed) == 600
            elapsed = time.monotonic() - began
        assert elapsed < ON_TIME + 1, f"the stream took {elapsed:.2f} s"
        assert report.failed and all("(timeout)" in failure.message for failure in report.failed)
        assert not psutil.pid_exists(stalled)
        assert writer.save(images, str(tmp_path / "again/{index}.png"), timeout=TIMEOUT).count == 50


def test_the_command_exits_1_on_a_timeout(tmp_path):
    source = tmp_path / "frames.npy"
    np.save(source, _images(400))
    folder = tmp_path / "out"
    command = [sys.executable, "-m", "shmsave", str(source), "-o", str(folder / "{index}.png")]
    began = time.monotonic()
    run = subprocess.Popen(
        [*command, "-j", "2", "--timeout", str(TIMEOUT)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    parent = psutil.Process(run.pid)
    stalled: list[int] = []
    try:  # stop the first worker as soon as it exists: it never answers
        while not stalled and run.poll() is None and time.monotonic() - began < 20:
            workers = [child for child in parent.children() if "shmsave._worker" in " ".join(child.cmdline())]
            if workers:
                workers[0].suspend()
                stalled.append(workers[0].pid)
        _, stderr = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert stalled, "no worker process was seen"
    assert run.returncode == 1, stderr
    assert "no progress for 2 s" in stderr
    assert not psutil.pid_exists(stalled[0])


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf"), "2", True])
def test_a_timeout_must_be_a_positive_number_of_seconds(timeout, tmp_path):
    with pytest.raises(InvalidRequest, match="timeout must be a positive number of seconds"):
        shmsave.save(_images(2), str(tmp_path / "{index}.png"), timeout=timeout)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("engine", ["thread", "inline"])
def test_a_timeout_is_refused_where_no_worker_process_runs(engine, tmp_path):
    with shmsave.Writer(workers=2, engine=engine) as writer:
        with pytest.raises(InvalidRequest, match=f"engine='{engine}'"):
            writer.save(_images(2), str(tmp_path / "{index}.png"), timeout=1)
        with pytest.raises(InvalidRequest, match="timeout= needs worker processes"):
            writer.stream(str(tmp_path / "{index}.png"), timeout=1)
    assert not list(tmp_path.iterdir())


def test_a_save_with_a_timeout_while_a_stream_holds_the_workers_is_refused(tmp_path):
    with shmsave.Writer(workers=2) as writer, writer.stream(str(tmp_path / "s{index}.png")) as stream:
        stream.write(_images(1)[0])
        with pytest.raises(InvalidRequest, match="close the stream first"):
            writer.save(_images(2), str(tmp_path / "{index}.png"), timeout=1)


def test_a_timeout_that_is_not_reached_changes_nothing(tmp_path):
    images = _images(3000, 48)
    told: list[int] = []
    with shmsave.Writer(workers=2) as writer:
        report = writer.save(images, str(tmp_path / "{index}.png"), timeout=1.0, progress=told.append)
    assert (report.count, report.failed, report.engine) == (3000, (), "process")
    assert sum(told) == 3000
    for index in (0, 1777, 2999):
        assert np.array_equal(cv2.imread(str(tmp_path / f"{index}.png")), images[index])


def test_a_deadline_ends_a_slice_after_the_image_that_passes_it(tmp_path):
    job = Job(str(tmp_path / "{index}.png"), str(tmp_path), (), ".png", (), False, True, False, str(tmp_path), 0o022)
    images = list(_images(5))
    assert _files.write_images(images, 0, job, deadline=time.monotonic() - 1).written == 1
    assert _files.write_images(images[1:], 1, job, deadline=time.monotonic() + 60).written == 4
    assert sorted(os.listdir(tmp_path)) == [f"{i}.png" for i in range(5)]


def _one_long_task(tmp_path, count: int, side: int, timeout: float):
    """A Task of ``count`` slow PNGs read from a ``.npy`` (one task: no chunking), with ``timeout``."""
    images = np.random.default_rng(1).integers(0, 256, (count, side, side, 3), np.uint8)
    np.save(tmp_path / "stack.npy", images)
    mapped = np.load(tmp_path / "stack.npy", mmap_mode="r")
    source = StackSource("file", str(tmp_path / "stack.npy"), mapped.offset, images.shape, images.strides, "|u1")
    folder = tmp_path / "out"
    folder.mkdir()
    job = Job(
        str(folder / "{index}.png"), str(folder), (), ".png", (cv2.IMWRITE_PNG_COMPRESSION, 9), False, True, False,
        str(tmp_path), 0o022, None, False, timeout,
    )  # fmt: skip
    return images, Task(0, source, 0, count, 0, job), folder


def test_a_worker_tells_the_images_of_a_long_task_as_it_goes(tmp_path):
    images, task, folder = _one_long_task(tmp_path, 12, 64, timeout=1e-9)  # a report after every image
    sent = []
    final = _worker._run(task, sent.append)
    assert [result.partial for result in sent] == [True] * 11
    assert [result.outcome.written for result in sent] + [final.written] == [1] * 12
    assert sorted(os.listdir(folder)) == sorted(f"{i}.png" for i in range(12))


def test_the_pool_counts_partial_results_and_does_not_time_out_a_worker_that_reports(tmp_path):
    images, task, folder = _one_long_task(tmp_path, 60, 256, timeout=0.4)  # ~10 ms an image, told every 0.1 s
    partial, final, timed_out = [], [], []
    pool = Pool(1)
    try:
        pool.run(
            iter([task]),
            lambda t, result: final.append(result.outcome),
            lambda *died: pytest.fail(f"the worker died: {died}"),
            None,
            on_partial=lambda t, result: partial.append(result.outcome.finished),
            on_timeout=lambda *args: timed_out.append(args),
        )
    finally:
        pool.close()
    assert not timed_out
    assert len(partial) >= 2, f"{partial}: the task was too short to test anything"
    assert sum(partial) + final[0].finished == 60
    assert np.array_equal(cv2.imread(str(folder / "59.png")), images[59])


def test_a_stall_while_another_worker_idles_retries_the_tasks_queued_behind_it(tmp_path):
    """``give_up`` is for a hung target, seen as no progress anywhere for a whole timeout. A worker that
    stalls after the other one has finished its tasks and idles is one stuck worker, however long ago
    the idle one wrote: its first task times out, and the task queued behind it runs elsewhere."""
    images, long_task, folder = _one_long_task(tmp_path, 60, 256, timeout=0.4)  # told every 0.1 s
    (tmp_path / "short").mkdir()
    job = long_task.job._replace(template=str(tmp_path / "short" / "{index}.png"), folder=str(tmp_path / "short"))
    short = [long_task._replace(id=i, lo=i, hi=i + 1, first=i, job=job) for i in (1, 2, 3)]
    # pool.run gives each task to the worker with the fewest: the long one and task 2 to worker 0
    tasks = [long_task, *short]
    answered, timed_out, stalled = [], [], []
    pool = Pool(2)

    def on_partial(task, result):
        if task.id == 0 and {1, 3} <= set(answered) and not stalled:
            stalled.append(pool.pids[0])  # the other worker idles now: worker 0 stalls while it is told of
            os.kill(stalled[0], signal.SIGSTOP)

    try:
        pool.start()
        pool.wait_ready()
        pool.run(
            iter(tasks),
            lambda task, result: answered.append(task.id),
            lambda *died: pytest.fail(f"a worker died: {died}"),
            None,
            on_partial=on_partial,
            on_timeout=lambda task, first, pid: timed_out.append((task.id, pid)),
            give_up=True,
        )
    finally:
        pool.close()
    assert stalled, "worker 0 finished its long task before the other one was idle: make it longer"
    assert timed_out == [(0, stalled[0])]
    assert sorted(answered) == [1, 2, 3]
    assert np.array_equal(cv2.imread(str(tmp_path / "short" / "2.png")), images[2])


@contextlib.contextmanager
def _frozen_at_most(disk, seconds: float):
    """``frozen(disk)``, thawed after ``seconds`` at the latest: a call that hangs on the frozen
    file system fails its test instead of hanging the suite."""
    thawed = threading.Event()

    def thaw_late():
        if not thawed.wait(seconds):
            subprocess.run(["fsfreeze", "-u", str(disk)], capture_output=True)

    guard = threading.Thread(target=thaw_late)
    with frozen(disk):
        guard.start()
        try:
            yield
        finally:
            thawed.set()
            guard.join()


def _reapers() -> list[str]:
    """The threads that wait for killed workers to die, to remove their partial files then."""
    return [thread.name for thread in threading.enumerate() if thread.name.startswith("shmsave-reap-")]


@pytest.mark.slow
@pytest.mark.parametrize("folder", ["existing", "new"])
@pytest.mark.parametrize("errors", ["raise", "collect"])
def test_a_frozen_file_system_times_out_and_the_call_returns(errors, folder, tmp_path):
    """A hung mount for real: fsfreeze blocks every write in the kernel (the workers cannot even be
    killed until it thaws), where the call's folder exists and where it must still be made."""
    images = _images(40)
    with ext4_disk(tmp_path) as disk, shmsave.Writer(workers=2, engine="process") as writer:
        target = disk / "out"
        if folder == "existing":
            target.mkdir()
        writer.start()
        stalled = list(writer.pids)
        with _frozen_at_most(disk, 4 * ON_TIME):
            began = time.monotonic()
            if errors == "raise":
                with pytest.raises(WriteTimedOut) as raised:
                    writer.save(images, str(target / "{index}.png"), timeout=TIMEOUT)
                if folder == "new":  # the folder did not answer: the call ended before any image, no Report
                    assert raised.value.report is None and (raised.value.start, raised.value.pid) == (0, None)
                    messages = [str(raised.value)]
                else:
                    messages = [failure.message for failure in raised.value.report.failed]
                written: set[int] = set()
            else:
                report = writer.save(images, str(target / "{index}.png"), timeout=TIMEOUT, errors="collect")
                messages, written = [failure.message for failure in report.failed], _written(report, 40)
            elapsed = time.monotonic() - began
        assert elapsed < ON_TIME, f"the call took {elapsed:.2f} s on a frozen file system"
        assert messages and all("no progress" in message for message in messages)
        if folder == "existing":  # else the call ended before the workers had a task
            assert wait_until(lambda: not any(psutil.pid_exists(p) for p in stalled), 10), "stalled workers live on"
            # Each one's partial file goes after it is reaped, on the thread that reaped it (pool.after_exit):
            # the pid is gone a moment before that thread has removed the file.
            assert wait_until(lambda: not _reapers(), 10), f"reapers still running: {_reapers()}"
        if target.exists():
            _check_files(target, images, written)
        assert writer.save(images[:10], str(disk / "again" / "{index}.png"), timeout=TIMEOUT).count == 10
