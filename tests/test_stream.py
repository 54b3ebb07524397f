"""Streams (issue 13): ``Writer.stream`` / ``shmsave.stream`` save images one at a time.

Every promise of the issue has a test here; each ends with the suite's usual check (no
segment, no child process left). Files are compared with ``cv2.imencode`` bytes.

    promise                                      test
    caller reuses one buffer                     test_caller_may_overwrite_its_array_after_write
    bounded memory, write waits                  test_tiny_ring_applies_backpressure_and_loses_nothing
    shapes and dtypes vary                       test_mixed_shapes_and_dtypes
    one shape: one strided view per task         test_images_of_one_shape_go_to_the_workers_as_one_stack
    image bigger than the ring                   test_image_bigger_than_the_ring_is_written
    two streams of one Writer                    test_two_open_streams_on_one_writer
    bad input mid-stream                         test_bad_input_raises_and_the_stream_goes_on
    error in the loop body                       test_error_in_the_loop_lets_accepted_images_finish
    errors="raise" / "collect"                   test_errors_raise_from_write_or_close, test_errors_collect
    the dispatcher fails                         test_a_dispatcher_failure_is_raised_and_its_images_reported
    Ctrl-C in the loop                           test_ctrl_c_in_the_loop
    worker killed mid-stream                     test_worker_killed_mid_stream_is_reported_and_replaced
    1,000 streams                                test_no_leak_after_1000_streams
    fork                                         test_forked_child_after_a_stream
    save while a stream is open                  test_save_while_a_stream_is_open_uses_threads
    big images on threads of this process        test_big_images_are_encoded_here_from_the_ring,
                                                 test_reused_big_buffer_overwritten_after_write,
                                                 test_tiny_and_big_images_in_one_stream,
                                                 test_errors_from_an_image_encoded_here,
                                                 test_progress_and_overwrite_false_for_images_encoded_here,
                                                 test_big_images_go_to_threads_without_waking_the_hub,
                                                 test_two_streams_of_big_images_from_two_threads,
                                                 test_a_big_image_bigger_than_the_ring_is_encoded_here
    a tight loop lets the hub feed the workers   test_the_caller_lets_the_hub_thread_run_after_each_batch_it_seals,
                                                 test_catch_up_waits_for_the_hub_thread_to_listen_again_and_no_longer_than_its_limit
    Writer(engine=...) binds streams             test_a_writer_forced_to_processes_streams_big_images_to_them_too,
                                                 test_a_writer_forced_to_threads_streams_every_image_on_them
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import cv2
import numpy as np
import psutil
import pytest

import shmsave
from shmsave import InvalidRequest, StreamClosed, WorkerDied, WorkerFailed, WriteFailed, _stream_tasks, streaming
from shmsave._plan import TASK_IMAGES

from .conftest import hub_ended, interrupt_a_loop, shmsave_segments, wait_until


def _encoded(image: np.ndarray, ext: str = ".png", params=()) -> bytes:
    return cv2.imencode(ext, image, list(params))[1].tobytes()


def _frames(count: int, height: int = 48, width: int = 64, channels: int = 3, seed: int = 0) -> np.ndarray:
    """Photo-like frames: gradients, a disc and a little noise (not pure noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    out = np.empty((count, height, width, channels), np.uint8)
    for i in range(count):
        for c in range(channels):
            plane = (x * (1 + i % 7) + y * (c + 1) + rng.normal(0, 6, x.shape)) % 256
            plane[(x - width // 2) ** 2 + (y - height // 2) ** 2 < (4 + i % 9) ** 2] = 30 * c
            out[i, :, :, c] = plane
    return out


def _assert_files(folder, images, ext=".png", params=(), template="{index:04d}", start=0) -> None:
    for i, image in enumerate(images, start):
        path = os.path.join(folder, template.format(index=i) + ext)
        with open(path, "rb") as file:
            assert file.read() == _encoded(image, ext, params), f"{path} differs from cv2.imencode"


@pytest.fixture
def writer():
    with shmsave.Writer(workers=2) as w:
        yield w


def test_caller_may_overwrite_its_array_after_write(writer, tmp_path):
    frames = _frames(60)
    buffer = np.empty_like(frames[0])
    with writer.stream(tmp_path / "{index:04d}.jpg", quality=90) as stream:
        for frame in frames:
            buffer[...] = frame  # as a video decoder reuses one buffer
            stream.write(buffer)
        buffer[...] = 0
    assert stream.report.count == 60 and stream.report.ok
    _assert_files(tmp_path, frames, ".jpg", (cv2.IMWRITE_JPEG_QUALITY, 90))


@pytest.mark.parametrize("started", [True, False], ids=["workers-started", "fresh"])
def test_tiny_ring_applies_backpressure_and_loses_nothing(writer, tmp_path, started):
    """Started workers read the ring from /dev/shm; a fresh Writer's first tiny images go to
    threads from a private ring, nothing of it in /dev/shm."""
    if started:
        writer.start()
    frames = _frames(150)
    ring = 4 * 9216  # four 48x64x3 frames (9,216 bytes, a multiple of 64)
    finished = []
    lock = threading.Lock()

    def tick(n):
        with lock:
            finished.append(n)

    sizes = set()
    with writer.stream(tmp_path / "{index:04d}.png", buffer_bytes=ring, progress=tick) as stream:
        for accepted, frame in enumerate(frames, 1):
            stream.write(frame)
            with lock:
                done = sum(finished)
            assert accepted - done <= 4, "more images held than the ring has room for"
            sizes |= {os.path.getsize(f"/dev/shm/{name}") for name in shmsave_segments(os.getpid())}
    assert stream.report.count == 150
    assert sizes == ({ring} if started else set()), f"the stream held other memory than its ring: {sizes}"
    _assert_files(tmp_path, frames)


def test_mixed_shapes_and_dtypes(writer, tmp_path):
    rng = np.random.default_rng(3)
    images = [
        _frames(1, 30, 40)[0],
        _frames(1, 17, 91, 1)[0, :, :, 0],
        _frames(1, 64, 64, 4)[0],
        (rng.random((33, 21)) * 65535).astype(np.uint16),
        _frames(1, 48, 64)[0][::2, ::-1],
        _frames(1, 50, 50, 1)[0],
    ]
    with writer.stream(tmp_path / "{index:04d}.png") as stream:
        for image in images * 5:
            stream.write(image)
    assert stream.report.count == 30
    _assert_files(tmp_path, images * 5)


def test_images_of_one_shape_go_to_the_workers_as_one_stack(writer, tmp_path, monkeypatch):
    from shmsave._protocol import ListSource, StackSource

    sources = []
    take_task = streaming.Stream.take_task

    def spy(stream, *args):
        taken = take_task(stream, *args)
        if taken is not None:
            sources.append(taken[0].source)
        return taken

    monkeypatch.setattr(streaming.Stream, "take_task", spy)
    same = _frames(300, 20, 30)
    mixed = [_frames(1, 10 + i % 5, 12, seed=i)[0] for i in range(40)]
    # a ring of 100 images: it wraps, and a stack never straddles its end
    with writer.stream(tmp_path / "s" / "{index:04d}.png", buffer_bytes=100 * 1856) as stream:
        for frame in same:
            stream.write(frame)
    with writer.stream(tmp_path / "m" / "{index:04d}.png") as other:
        for image in mixed:
            other.write(image)
    stacks = [source for source in sources if isinstance(source, StackSource)]
    assert stacks and sum(source.shape[0] for source in stacks) > 250
    assert all(source.shape[1:] == (20, 30, 3) and source.strides[0] == 1856 for source in stacks)
    assert any(isinstance(source, ListSource) and len(source.entries) > 1 for source in sources)
    _assert_files(tmp_path / "s", same)
    _assert_files(tmp_path / "m", mixed)


def test_image_bigger_than_the_ring_is_written(writer, tmp_path):
    small, big = _frames(20, 16, 16), _frames(3, 120, 160, seed=1)
    images = [small[0], big[0], small[1], small[2], big[1], big[2], *small[3:]]
    with writer.stream(tmp_path / "{index:04d}.png", buffer_bytes=8192) as stream:
        for image in images:
            stream.write(image)
    assert stream.report.count == len(images)
    _assert_files(tmp_path, images)


def test_two_open_streams_on_one_writer(writer, tmp_path):
    color = _frames(40)
    depth = _frames(40, channels=1)[..., 0].astype(np.uint16) * 200
    with (
        writer.stream(tmp_path / "color" / "{index:04d}.jpg") as colors,
        writer.stream(tmp_path / "depth" / "{index:04d}.png") as depths,
    ):
        for c, d in zip(color, depth):
            colors.write(c)
            depths.write(d)
    assert colors.report.count == depths.report.count == 40
    _assert_files(tmp_path / "color", color, ".jpg")
    _assert_files(tmp_path / "depth", depth)


def test_bad_input_raises_and_the_stream_goes_on(writer, tmp_path):
    good = _frames(6)
    bad = [
        np.zeros((8, 8), np.float64) + 0.5,
        np.zeros((8, 8, 5), np.uint8),
        [[1, 2], [3, 4]],
        np.zeros(10, np.uint8),
        np.zeros((0, 4), np.uint8),
        np.zeros((4, 4, 1, 1), np.uint8),
    ]
    with writer.stream(tmp_path / "{index:04d}.jpg") as stream:
        for image, wrong in zip(good, bad):
            stream.write(image)
            with pytest.raises(InvalidRequest):
                stream.write(wrong)
    assert stream.report.count == 6
    _assert_files(tmp_path, good, ".jpg")  # a refused image takes no index
    with writer.stream(tmp_path / "f" / "{index:04d}.tiff") as floats:
        floats.write(np.ones((4, 4), np.float32))
        with pytest.raises(InvalidRequest, match="NaN"):
            floats.write(np.full((4, 4), np.nan, np.float32))  # a shape seen before: values still checked
        floats.write(np.zeros((4, 4), np.float32))
    assert floats.report.count == 2
    with pytest.raises(StreamClosed):
        stream.write(good[0])
    with writer.stream(tmp_path / "t" / "{index}.png", total=2) as counted:
        counted.write(good[0])
        counted.write(good[1])
        with pytest.raises(InvalidRequest, match="total"):
            counted.write(good[2])
    with pytest.raises(InvalidRequest):
        writer.stream(tmp_path / "no-index.png")


def test_error_in_the_loop_lets_accepted_images_finish(writer, tmp_path):
    frames = _frames(50)
    with pytest.raises(ZeroDivisionError):
        with writer.stream(tmp_path / "{index:04d}.png", compression=9) as stream:
            for i, frame in enumerate(frames):
                stream.write(frame)
                if i == 39:
                    raise ZeroDivisionError("an error in the loop body")
    assert stream.report.count == 40
    _assert_files(tmp_path, frames[:40], params=(cv2.IMWRITE_PNG_COMPRESSION, 9))
    assert not os.path.exists(tmp_path / "0040.png")


def test_errors_raise_from_write_or_close(writer, tmp_path):
    frames = _frames(300)
    (tmp_path / "0005.png").mkdir()  # a folder where image 5 should go
    with pytest.raises(WriteFailed) as caught:
        with writer.stream(tmp_path / "{index:04d}.png") as stream:
            for frame in frames:
                stream.write(frame)
    error = caught.value
    assert error.index == 5 and "0005.png" in error.path
    assert error.report is stream.report and error.report.failed[0].index == 5
    assert not error.report.ok
    written = sorted(int(name[:4]) for name in os.listdir(tmp_path) if name != "0005.png")
    assert len(written) == error.report.count
    _assert_files(tmp_path, [frames[i] for i in written if i < 5])
    with pytest.raises(StreamClosed):
        stream.write(frames[0])


def test_errors_collect(writer, tmp_path):
    frames = _frames(40)
    (tmp_path / "0005.png").mkdir()
    with writer.stream(tmp_path / "{index:04d}.png", errors="collect") as stream:
        for frame in frames:
            stream.write(frame)
    report = stream.report
    assert report.count == 39 and [f.index for f in report.failed] == [5]
    assert "folder" in report.failed[0].message
    _assert_files(tmp_path, frames[:5])
    _assert_files(tmp_path, frames[6:], start=6)


def test_shmsave_stream_uses_the_shared_writer_and_shows_progress(tmp_path, capsys):
    frames = _frames(12)
    with shmsave.stream(tmp_path / "{index:04d}.png", start=100, progress=True, total=12) as stream:
        for frame in frames:
            stream.write(frame)
    assert stream.report.count == 12
    _assert_files(tmp_path, frames, start=100)
    assert "12/12" in capsys.readouterr().err


def test_save_while_a_stream_is_open_uses_threads(writer, tmp_path):
    frames = _frames(30)
    with writer.stream(tmp_path / "s" / "{index:04d}.png") as stream:
        stream.write(frames[0])
        report = writer.save(frames, tmp_path / "b" / "{index:04d}.png")  # would wait forever for the pool
        stream.write(frames[1])
    assert report.count == 30 and report.engine in ("thread", "inline")
    assert stream.report.count == 2
    _assert_files(tmp_path / "b", frames)
    assert writer.save(frames, tmp_path / "c" / "{index:04d}.png").count == 30  # the pool is free again


@pytest.fixture
def encoded_here(monkeypatch):
    """The indices of the images this process encodes (the rest go to the worker processes)."""
    indices: list[int] = []
    write_images = _stream_tasks.write_images

    def spy(images, first_index, job):
        indices.extend(range(first_index, first_index + len(images)))
        return write_images(images, first_index, job)

    monkeypatch.setattr(_stream_tasks, "write_images", spy)
    return indices


def test_big_images_are_encoded_here_from_the_ring(writer, tmp_path, encoded_here):
    frames = _frames(12, 240, 320)  # 230 KB each: over save()'s 64 KB threshold for threads
    with writer.stream(tmp_path / "{index:04d}.jpg", quality=95) as stream:
        for frame in frames:
            stream.write(frame)
    assert stream.report.count == 12 and stream.report.ok and stream.report.engine == "thread"
    assert sorted(encoded_here) == list(range(12)), "big images went to the worker processes"
    for i, frame in enumerate(frames):
        cv2.imwrite(str(tmp_path / f"expected{i}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, 95])
        assert (tmp_path / f"{i:04d}.jpg").read_bytes() == (tmp_path / f"expected{i}.jpg").read_bytes()


def test_reused_big_buffer_overwritten_after_write(writer, tmp_path, encoded_here):
    frames = _frames(30, 240, 320)
    buffer = np.empty_like(frames[0])
    with writer.stream(tmp_path / "{index:04d}.png") as stream:
        for frame in frames:
            buffer[...] = frame
            stream.write(buffer)
            buffer[...] = 255  # at once, while the image is still being encoded
    assert stream.report.count == 30 and len(encoded_here) == 30
    _assert_files(tmp_path, frames)


def test_tiny_and_big_images_in_one_stream(writer, tmp_path, encoded_here):
    tiny, big = _frames(40, 16, 16), _frames(6, 200, 300, seed=4)
    gray = _frames(2, 300, 400, channels=1, seed=5)[..., 0]
    images = [*tiny[:10], big[0], big[1], *tiny[10:20], gray[0], *tiny[20:30], *big[2:], gray[1], *tiny[30:]]
    writer.start()
    with writer.stream(tmp_path / "{index:04d}.png") as stream:
        for image in images:
            stream.write(image)
    assert stream.report.count == len(images) == 48 and stream.report.engine == "hybrid"
    big_indices = [i for i, image in enumerate(images) if image.nbytes >= 64 * 1024]
    assert sorted(encoded_here) == big_indices and len(big_indices) == 8, "each image on its engine"
    _assert_files(tmp_path, images)


def test_big_images_go_to_threads_without_waking_the_hub(writer, tmp_path, monkeypatch):
    """The caller and the threads send big images themselves (Hub.send_here): the hub thread
    looks for work about once per stream, not once per image, and never more than
    _DEPTH x workers of them wait for or run on the threads."""
    from shmsave import _hub

    looks, most = [], [0]
    next_task, take_task = _hub.Hub._next_task, streaming.Stream.take_task

    def counted(hub):
        looks.append(1)
        return next_task(hub)

    def watched(stream, *args):
        taken = take_task(stream, *args)
        most[0] = max(most[0], stream._hub._here)
        return taken

    monkeypatch.setattr(_hub.Hub, "_next_task", counted)
    monkeypatch.setattr(streaming.Stream, "take_task", watched)
    frames = _frames(40, 240, 320)
    with writer.stream(tmp_path / "{index:04d}.png") as stream:
        for frame in frames:
            stream.write(frame)
    assert stream.report.count == 40 and stream.report.engine == "thread"
    assert len(looks) <= 5, f"the hub looked for work {len(looks)} times for 40 big images"
    assert 1 <= most[0] <= _hub._DEPTH * writer.workers
    _assert_files(tmp_path, frames)


def test_the_caller_lets_the_hub_thread_run_after_each_batch_it_seals(writer, tmp_path, monkeypatch):
    """A loop of tiny writes holds the GIL; after each full batch it seals, the caller waits for
    the hub thread (Hub.catch_up), so the workers' next task goes out then, not at a forced switch."""
    from shmsave import _hub

    events = []
    catch_up, seal = _hub.Hub.catch_up, streaming.Stream._seal

    def sealing(stream, *args, **kwargs):
        if threading.current_thread() is threading.main_thread() and len(stream._pending) == TASK_IMAGES:
            events.append("sealed")
        return seal(stream, *args, **kwargs)

    monkeypatch.setattr(_hub.Hub, "catch_up", lambda hub: events.append("caught up") or catch_up(hub))
    monkeypatch.setattr(streaming.Stream, "_seal", sealing)
    images = np.random.default_rng(3).integers(0, 255, (6 * TASK_IMAGES, 8, 8), dtype=np.uint8)
    with writer.stream(tmp_path / "{index:04d}.png") as stream:
        for image in images:
            stream.write(image)
    assert stream.report.count == len(images)
    assert "sealed" in events and events == ["sealed", "caught up"] * (len(events) // 2), events
    _assert_files(tmp_path, images)


def test_catch_up_waits_for_the_hub_thread_to_listen_again_and_no_longer_than_its_limit(monkeypatch):
    """Hub.catch_up returns once the hub thread, which needs the GIL to get there, is back in its
    wait for the workers (a caller in pure Python would otherwise hold the GIL past this check);
    a hub that never gets back costs at most _CATCH_UP_S."""
    from shmsave import _hub
    from shmsave.pool import Pool

    hub = _hub.Hub(Pool(1))  # never started: no worker process
    go = threading.Event()

    def back_in_its_wait():
        go.wait()
        hub._pool.listening = True

    monkeypatch.setattr(_hub, "_CATCH_UP_S", 60.0)
    hub._thread = threading.Thread(target=back_in_its_wait)
    hub._thread.start()
    go.set()
    hub.catch_up()
    assert hub._pool.listening, "catch_up returned before the hub thread ran"
    hub._thread.join()

    monkeypatch.setattr(_hub, "_CATCH_UP_S", 0.05)
    hub._pool.listening = False  # a hub thread busy for good
    began = time.monotonic()
    hub.catch_up()
    assert 0.05 <= time.monotonic() - began < 10, "catch_up waits for a busy hub only up to its limit"


def test_two_streams_of_big_images_from_two_threads(writer, tmp_path):
    color, gray = _frames(24, 240, 320), _frames(24, 300, 400, channels=1, seed=3)[..., 0]

    def run(images, folder):
        with writer.stream(tmp_path / folder / "{index:04d}.png") as stream:
            for image in images:
                stream.write(image)
        reports[folder] = stream.report

    reports: dict = {}
    threads = [threading.Thread(target=run, args=(images, name)) for images, name in ((color, "c"), (gray, "g"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert reports["c"].count == reports["g"].count == 24
    _assert_files(tmp_path / "c", color)
    _assert_files(tmp_path / "g", gray)


def test_a_writer_forced_to_processes_streams_big_images_to_them_too(tmp_path, encoded_here):
    frames = _frames(6, 240, 320)
    with shmsave.Writer(workers=2, engine="process") as writer, writer.stream(tmp_path / "{index:04d}.png") as stream:
        for frame in frames:
            stream.write(frame)
    assert stream.report.count == 6 and stream.report.engine == "process" and encoded_here == []
    _assert_files(tmp_path, frames)


@pytest.mark.parametrize("engine", ["thread", "inline"])
def test_a_writer_forced_to_threads_streams_every_image_on_them(tmp_path, encoded_here, engine):
    tiny, big = _frames(30, 16, 16), _frames(3, 240, 320, seed=2)
    images = [*tiny[:10], big[0], *tiny[10:20], big[1], big[2], *tiny[20:]]
    with shmsave.Writer(workers=2, engine=engine) as writer:
        # a ring smaller than a big image (230 KB): those go in segments of their own
        with writer.stream(tmp_path / "{index:04d}.png", buffer_bytes=100_000) as stream:
            for image in images:
                stream.write(image)
        assert writer.pids == [], "a stream of a thread Writer started worker processes"
    assert stream.report.count == len(images) and stream.report.engine == "thread"
    assert sorted(encoded_here) == list(range(len(images)))
    _assert_files(tmp_path, images)


def test_a_big_image_bigger_than_the_ring_is_encoded_here(writer, tmp_path, encoded_here):
    frames = _frames(3, 240, 320)
    with writer.stream(tmp_path / "{index:04d}.png", buffer_bytes=65536) as stream:
        for frame in frames:
            stream.write(frame)
    assert stream.report.count == 3 and sorted(encoded_here) == [0, 1, 2]
    _assert_files(tmp_path, frames)


@pytest.mark.parametrize("errors", ["raise", "collect"])
def test_errors_from_an_image_encoded_here(writer, tmp_path, encoded_here, errors):
    frames = _frames(40, 200, 300)
    (tmp_path / "0007.png").mkdir()  # a folder where image 7 should go
    if errors == "raise":
        with pytest.raises(WriteFailed) as caught:
            with writer.stream(tmp_path / "{index:04d}.png") as stream:
                for frame in frames:
                    stream.write(frame)
        error = caught.value
        assert error.index == 7 and error.path.endswith("0007.png") and "0007.png" in str(error)
        assert error.report is stream.report and not error.report.ok
        with pytest.raises(StreamClosed):
            stream.write(frames[0])
    else:
        with writer.stream(tmp_path / "{index:04d}.png", errors="collect") as stream:
            for frame in frames:
                stream.write(frame)
        assert stream.report.count == 39 and [f.index for f in stream.report.failed] == [7]
    assert 7 in encoded_here
    written = sorted(int(name[:4]) for name in os.listdir(tmp_path) if name != "0007.png")
    assert len(written) == stream.report.count
    _assert_files(tmp_path, [frames[i] for i in written if i < 7])


_STOPPED_WHILE_FULL = """
import sys
import numpy as np
import shmsave
from shmsave import WriteFailed

out = sys.argv[1]
frames = np.random.default_rng(0).integers(0, 256, (60, 240, 320, 3), dtype=np.uint8)
with shmsave.Writer(workers=2, engine=sys.argv[2]) as writer:
    try:
        with writer.stream(out + "/{index:04d}.png", buffer_bytes=2 * frames[0].nbytes + 8192) as stream:
            for frame in frames:
                stream.write(frame)
    except WriteFailed as error:
        print("raised", error.index)
"""


@pytest.mark.parametrize("engine", ["thread", "process"])
def test_a_failure_while_write_waits_for_room_raises_from_that_write(tmp_path, engine):
    """errors="raise": image 0 fails while the caller waits for room in a ring of two frames. That
    write raises; it once raised while holding the stream's lock, which close() takes, and hung."""
    script = tmp_path / "stopped_while_full.py"
    script.write_text(_STOPPED_WHILE_FULL)
    (tmp_path / "0000.png").mkdir()  # a folder where image 0 should go
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path), engine], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.split() == ["raised", "0"]


def test_progress_and_overwrite_false_for_images_encoded_here(writer, tmp_path, encoded_here):
    frames = _frames(10, 200, 300)
    (tmp_path / "0003.png").write_bytes(b"kept")
    told = []
    with writer.stream(tmp_path / "{index:04d}.png", overwrite=False, progress=told.append) as stream:
        for frame in frames:
            stream.write(frame)
    assert sum(told) == 10 and stream.report.count == 9 and stream.report.skipped == 1
    assert sorted(encoded_here) == list(range(10))
    assert (tmp_path / "0003.png").read_bytes() == b"kept"
    _assert_files(tmp_path, frames[:3])
    _assert_files(tmp_path, frames[4:], start=4)


@pytest.mark.parametrize("errors", ["raise", "collect"])
def test_a_dispatcher_failure_is_raised_and_its_images_reported(writer, tmp_path, monkeypatch, errors):
    def broken(self, *args):
        raise RuntimeError("a bug in the dispatcher")

    monkeypatch.setattr(streaming.Stream, "take_task", broken)
    frame = _frames(1)[0]
    stream = writer.stream(tmp_path / "{index:04d}.png", errors=errors)
    accepted = 0
    with pytest.raises((WorkerFailed, StreamClosed)) as caught:
        for _ in range(500):  # until the hub's failure reaches the stream
            stream.write(frame)
            accepted += 1
            time.sleep(0.01)
    if errors == "raise":
        assert type(caught.value) is WorkerFailed and "a bug in the dispatcher" in str(caught.value)
    else:
        assert type(caught.value) is StreamClosed and "dispatcher stopped" in str(caught.value)
        assert isinstance(caught.value.__cause__, RuntimeError)
    report = stream.report
    assert accepted >= 1 and report.count == 0 and [f.index for f in report.failed] == list(range(accepted))
    assert "a bug in the dispatcher" in report.failed[0].message
    with pytest.raises(StreamClosed):
        stream.write(frame)
    monkeypatch.undo()  # the Writer goes on: its next stream gets a new dispatcher
    with writer.stream(tmp_path / "again" / "{index:04d}.png") as again:
        again.write(frame)
    assert again.report.count == 1 and os.listdir(tmp_path) == ["again"]


_KILLED_STREAM = 240  # images: enough tasks that the killed worker still has some in flight


def _kill_once_writing(pids: list[int], folder) -> None:
    """SIGKILL ``pids`` as the first file appears: the stream's tasks (two to four per worker: they are
    sealed by bytes, ~70 of these images each) are then in flight, and not before. A task writes its
    files a group at a time (``_files.GROUP_IMAGES`` or ``GROUP_BYTES``): the first appears a group into it."""
    assert wait_until(lambda: folder.exists() and any(folder.iterdir()), 10, 0.001), "nothing was written"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_worker_killed_mid_stream_is_reported_and_replaced(writer, tmp_path):
    frames = _frames(4, 120, 160)  # under 64 KB, for the processes; PNG level 9: tasks are in flight at the kill
    writer.start()
    before = set(writer.pids)
    with writer.stream(tmp_path / "{index:04d}.png", compression=9, errors="collect") as stream:
        for i in range(_KILLED_STREAM):
            stream.write(frames[i % 4])
        _kill_once_writing(writer.pids[:1], tmp_path)
    report = stream.report
    assert wait_until(lambda: len(set(writer.pids) - before) == 1, 10), "the killed worker was not replaced"
    died = [f for f in report.failed if "worker process" in f.message]
    assert died and len(died) == len(report.failed), report.failed
    assert report.count + len(report.failed) == _KILLED_STREAM
    failed = {f.index for f in report.failed}
    for i in range(_KILLED_STREAM):
        path = tmp_path / f"{i:04d}.png"
        if i not in failed or path.exists():
            assert path.read_bytes() == _encoded(frames[i % 4], ".png", (cv2.IMWRITE_PNG_COMPRESSION, 9))
    # errors="raise": the death raises. Every worker is killed: which one holds a task depends on
    # which was ready first (in CI the replacement was still starting and held none).
    writer.start()
    with pytest.raises(WorkerDied):
        with writer.stream(tmp_path / "r" / "{index:04d}.png", compression=9) as stream:
            for i in range(_KILLED_STREAM):
                stream.write(frames[i % 4])
            _kill_once_writing(writer.pids, tmp_path / "r")
    with writer.stream(tmp_path / "after" / "{index:04d}.png") as stream:  # the Writer works on
        stream.write(frames[0])
    assert stream.report.count == 1


@pytest.mark.slow
def test_no_leak_after_1000_streams(writer, tmp_path):
    frames = _frames(3, 16, 16)
    me = psutil.Process()
    writer.start()
    with writer.stream(tmp_path / "warm" / "{index}.png") as stream:
        stream.write(frames[0])
    assert hub_ended()
    fds, threads = me.num_fds(), threading.active_count()
    for k in range(1000):
        with writer.stream(tmp_path / f"{k % 10}" / "{index}.png", overwrite=True) as stream:
            for frame in frames[: 1 + k % 3]:
                stream.write(frame)
        assert stream.report.count == 1 + k % 3
        assert len(shmsave_segments(os.getpid())) <= 2, "rings pile up"
    assert hub_ended(), "the hub thread outlived its streams"
    assert threading.active_count() <= threads, "threads leak"
    assert me.num_fds() <= fds, "descriptors leak"


_CTRL_C = """
import json, os, sys, time
import numpy as np, shmsave

out = sys.argv[1]
rng = np.random.default_rng(0)
frames = rng.integers(0, 256, (4, 240, 320, 3), np.uint8)
with shmsave.Writer(2) as writer:
    writer.start()
    with writer.stream(out + "/{index:05d}.png", compression=9) as stream:
        for i in range(1_000_000):
            stream.write(frames[i % 4])
            if i == 30:
                with open(out + "/../info.json", "w") as f:
                    json.dump({"pid": os.getpid(), "workers": writer.pids}, f)
"""


@pytest.mark.slow
def test_ctrl_c_in_the_loop(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    info = interrupt_a_loop(tmp_path, _CTRL_C, out)
    frames = np.random.default_rng(0).integers(0, 256, (4, 240, 320, 3), np.uint8)
    names = sorted(os.listdir(out))
    assert names, "no image was written before the interrupt"
    for name in names:
        index = int(name.split(".")[0])
        assert (out / name).read_bytes() == _encoded(frames[index % 4], ".png", (cv2.IMWRITE_PNG_COMPRESSION, 9)), (
            f"{name} is incomplete or not an image"
        )
    assert not shmsave_segments(info["pid"]), "segments left in /dev/shm"
    assert wait_until(lambda: not any(psutil.pid_exists(p) for p in info["workers"]), 10), "workers left running"


_FORK = """
import json, os, sys
import cv2, numpy as np, shmsave

out = sys.argv[1]
frames = np.random.default_rng(2).integers(0, 256, (20, 32, 32), np.uint8)
with shmsave.Writer(2) as writer:
    with writer.stream(out + "/before/{index}.png") as stream:
        for frame in frames:
            stream.write(frame)
    open_stream = writer.stream(out + "/parent/{index}.png")
    open_stream.write(frames[0])
    parent_workers = writer.pids
    pid = os.fork()
    if pid == 0:
        result = {}
        try:
            open_stream.write(frames[1])
            result["inherited"] = "accepted"
        except shmsave.StreamClosed as error:
            result["inherited"] = str(error)
        with writer.stream(out + "/child/{index}.png") as mine:
            for frame in frames:
                mine.write(frame)
        result["count"] = mine.report.count
        result["workers"] = writer.pids
        with open(out + "/child.json", "w") as f:
            json.dump(result, f)
        os._exit(0)
    for frame in frames[1:]:
        open_stream.write(frame)
    report = open_stream.close()
    _, status = os.waitpid(pid, 0)
    child = json.load(open(out + "/child.json"))
    ok = all(open(f"{out}/{d}/{i}.png", "rb").read() == cv2.imencode(".png", frames[i])[1].tobytes()
             for d in ("before", "parent", "child") for i in range(20))
print(json.dumps({"status": status, "child": child, "parent_count": report.count, "ok": ok,
                  "parent_workers": parent_workers}))
"""


@pytest.mark.slow
def test_forked_child_after_a_stream(tmp_path):
    script = tmp_path / "fork.py"
    script.write_text(textwrap.dedent(_FORK))
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] == 0 and result["ok"]
    assert result["parent_count"] == 20 and result["child"]["count"] == 20
    assert "fork" in result["child"]["inherited"]
    assert not set(result["child"]["workers"]) & set(result["parent_workers"]), "the child used the parent's workers"
