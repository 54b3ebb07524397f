"""The Writer's threads (``_threads.Threads``): as many run at once as there are calls, up to their count."""

import concurrent.futures
import threading
import time

import pytest

from shmsave._threads import Threads, settle


def _until_idle(threads: Threads, count: int) -> None:
    deadline = time.monotonic() + 10
    while True:
        with threads._cond:
            if threads._idle == count:
                return
        assert time.monotonic() < deadline, "the threads never went idle"
        time.sleep(0.001)


def _submit(threads: Threads, function, *args) -> concurrent.futures.Future:
    future: concurrent.futures.Future = concurrent.futures.Future()
    threads.run(settle, future, function, *args)
    return future


@pytest.mark.parametrize("first_calls", [1, 2])
def test_calls_queued_before_an_idle_thread_wakes_start_more_threads(first_calls):
    threads = Threads(3, "test")
    try:
        first = threading.Barrier(first_calls, timeout=10)  # the first calls start a thread each
        for future in [_submit(threads, first.wait) for _ in range(first_calls)]:
            future.result(timeout=20)
        _until_idle(threads, first_calls)
        meet = threading.Barrier(3, timeout=10)  # passes only if three calls run at once
        with threads._cond:  # no idle thread can wake and take a call while these are queued
            futures = [_submit(threads, meet.wait) for _ in range(3)]
        assert sorted(future.result(timeout=20) for future in futures) == [0, 1, 2]
    finally:
        threads.shutdown()


def test_no_more_threads_than_the_count():
    threads = Threads(2, "test")
    try:
        release = threading.Event()
        futures = [_submit(threads, release.wait, 10) for _ in range(4)]
        with threads._cond:
            assert len(threads._threads) == 2
        release.set()
        assert all(future.result(timeout=20) for future in futures)
    finally:
        threads.shutdown()


def test_a_call_that_raises_is_reported_and_the_thread_serves_on(capsys):
    threads = Threads(1, "test")
    try:
        threads.run(int, "not a number")
        assert _submit(threads, int, "7").result(timeout=10) == 7
        assert "ValueError" in capsys.readouterr().err
    finally:
        threads.shutdown()


def test_settle_carries_the_exception_and_honours_a_cancel():
    threads = Threads(1, "test")
    try:
        with pytest.raises(ValueError):
            _submit(threads, int, "x").result(timeout=10)
        cancelled: concurrent.futures.Future = concurrent.futures.Future()
        assert cancelled.cancel()
        ran = []
        threads.run(settle, cancelled, ran.append, 1)
        assert _submit(threads, int, "1").result(timeout=10) == 1  # the cancelled call came before it
        assert ran == []
    finally:
        threads.shutdown()


def test_an_interrupt_just_after_an_outcome_arrives_still_waits_for_the_running_tasks(monkeypatch, tmp_path):
    """Ctrl-C may land between a task's outcome leaving the queue and its being counted: the
    save must still end (once its running tasks have), raising the interrupt, not hang."""
    import _queue

    import numpy as np

    import shmsave

    class InterruptedAfterGet(_queue.SimpleQueue):
        interrupted = False

        def get(self, *args, **kwargs):
            item = super().get(*args, **kwargs)
            if not InterruptedAfterGet.interrupted:  # once, as one Ctrl-C
                InterruptedAfterGet.interrupted = True
                raise KeyboardInterrupt
            return item

    monkeypatch.setattr(_queue, "SimpleQueue", InterruptedAfterGet)
    raised: list[BaseException] = []

    def save() -> None:
        with shmsave.Writer(2, engine="thread") as writer:
            try:
                writer.save(np.zeros((3000, 16, 16), np.uint8), str(tmp_path / "{index}.png"))
            except BaseException as error:  # noqa: BLE001 - what the save raised is the result
                raised.append(error)

    saving = threading.Thread(target=save, daemon=True)
    saving.start()
    saving.join(60)
    assert not saving.is_alive(), "the save hung after the interrupt"
    assert len(raised) == 1 and isinstance(raised[0], KeyboardInterrupt)


def test_an_interrupt_while_tasks_are_handed_out_waits_for_those_given_out(monkeypatch, tmp_path):
    """Ctrl-C may land while the save hands its tasks to the threads: a task given out runs to its
    end before the interrupt leaves the call (a script ending then would leave a file cut short)."""
    import os

    import numpy as np

    import shmsave

    handed_out = []
    hand_out = Threads.run
    folder = tmp_path / "out"

    def interrupted_at_the_second(self, function, *args):
        handed_out.append(args)
        if len(handed_out) == 2:
            deadline = time.monotonic() + 10
            while not os.listdir(folder):  # the first task has begun
                assert time.monotonic() < deadline, "the first task never began"
                time.sleep(0.001)
            raise KeyboardInterrupt
        hand_out(self, function, *args)

    monkeypatch.setattr(Threads, "run", interrupted_at_the_second)
    with shmsave.Writer(2, engine="thread") as writer:
        with pytest.raises(KeyboardInterrupt):
            writer.save(np.zeros((3000, 16, 16), np.uint8), str(folder / "{index}.png"))
        written = sorted(os.listdir(folder))
        time.sleep(0.3)
        assert sorted(os.listdir(folder)) == written, "a task went on writing after the call raised"
    lo, hi = handed_out[0]
    assert written == sorted(f"{i}.png" for i in range(lo, hi))
    assert all((folder / name).stat().st_size > 0 for name in written)
