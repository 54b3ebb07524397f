"""``Writer.imwrite`` / ``shmsave.imwrite`` and ``Stream.write(image, path=...)`` (issue 20): a
``cv2.imwrite`` loop, one line changed, on every core. Files are compared with cv2.imencode's bytes;
every test ends with the suite's leak check (no segment, no child process left)."""

from __future__ import annotations

import os
import signal
import threading
import time

import cv2
import numpy as np
import psutil
import pytest

import shmsave
from shmsave import InvalidRequest, WorkerDied, WriteFailed

from .conftest import hub_ended, interrupt_a_loop, shmsave_segments, wait_until

ENGINES = ["auto", "thread", "process"]


def _images(count: int, height: int = 20, width: int = 24, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), np.uint8)


def _encoded(image, path, params=()) -> bytes:
    ok, data = cv2.imencode(os.path.splitext(str(path))[1], image, list(params or ()))
    assert ok
    return data.tobytes()


@pytest.mark.parametrize("engine", ENGINES)
def test_an_imwrite_loop_writes_what_cv2_imwrite_writes(tmp_path, engine):
    images = _images(300)
    big = _images(3, 300, 400, seed=1)  # 360 KB each: the threads' share under "auto"
    items = []
    for i, image in enumerate(images):
        ext = ("png", "jpg", "webp")[i % 3]
        params = [cv2.IMWRITE_JPEG_QUALITY, 60 + i % 30] if ext == "jpg" else None
        items.append((tmp_path / ("a" if i % 2 else "b") / f"{i}.{ext}", image, params))
    items += [(tmp_path / "big" / f"{i}.jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90]) for i, image in enumerate(big)]
    buffer = np.empty_like(images[0])
    with shmsave.Writer(2, engine=engine) as writer:
        for path, image, params in items:
            if image.shape == buffer.shape:
                buffer[...] = image  # a reused buffer: imwrite copies
                image = buffer
            assert writer.imwrite(str(path) if len(items) % 2 else path, image, params) is True
        report = writer.flush()
        assert report.count == len(items) and report.ok
        assert writer.flush().count == 0  # nothing since the last flush
    for path, image, params in items:
        assert path.read_bytes() == _encoded(image, path, params), path


def test_a_stream_may_name_one_image_itself(tmp_path):
    images = _images(40)
    with shmsave.Writer(2) as writer, writer.stream(tmp_path / "{index:03d}.jpg", quality=90) as stream:
        for i, image in enumerate(images):
            if i % 10 == 3:
                stream.write(image, path=tmp_path / "special" / f"{i}.png")  # quality is not PNG's: not applied
            elif i % 10 == 7:
                stream.write(image, path=tmp_path / f"raw{i}.jpg", params=[cv2.IMWRITE_JPEG_QUALITY, 40])
            else:
                stream.write(image)
    assert stream.report.count == 40 and stream.report.ok
    for i, image in enumerate(images):
        if i % 10 == 3:
            path, params = tmp_path / "special" / f"{i}.png", ()
        elif i % 10 == 7:
            path, params = tmp_path / f"raw{i}.jpg", (cv2.IMWRITE_JPEG_QUALITY, 40)
        else:
            path, params = tmp_path / f"{i:03d}.jpg", (cv2.IMWRITE_JPEG_QUALITY, 90)
        assert path.read_bytes() == _encoded(image, path, params), path
    assert not (tmp_path / "003.jpg").exists()


def test_bad_input_to_imwrite_raises_at_once_and_the_loop_goes_on(tmp_path):
    images = _images(3)
    with shmsave.Writer(2) as writer:
        with pytest.raises(InvalidRequest, match="goes to .*odd.foo.*cannot write images with '.foo'"):
            writer.imwrite(tmp_path / "odd.foo", images[0])
        with pytest.raises(InvalidRequest, match="sets the quality or compression of JPEG, not of PNG"):
            writer.imwrite(tmp_path / "a.png", images[0], [cv2.IMWRITE_JPEG_QUALITY, 50])
        with pytest.raises(InvalidRequest, match="int64"):
            writer.imwrite(tmp_path / "a.png", images[0].astype(np.int64) * 1000)  # cv2 would saturate it
        with pytest.raises(InvalidRequest, match="is a folder"):
            writer.imwrite(str(tmp_path) + "/", images[0])
        with pytest.raises(InvalidRequest, match="no path"):
            with writer.stream(None) as stream:
                stream.write(images[0])
        writer.imwrite(tmp_path / "ok.png", images[1])
        assert writer.flush().count == 1
    assert sorted(os.listdir(tmp_path)) == ["ok.png"]


def test_two_images_on_one_path_leave_the_last_as_cv2_imwrite_does(tmp_path):
    images = _images(50)
    with shmsave.Writer(2, engine="process") as writer:
        for image in images:
            writer.imwrite(tmp_path / "preview.png", image)
        writer.imwrite(tmp_path / "sub" / ".." / "preview.png", images[7])  # the same file, written otherwise
        assert writer.flush().count == 51
    assert (tmp_path / "preview.png").read_bytes() == _encoded(images[7], "x.png")


def _unwritable(tmp_path) -> str:
    (tmp_path / "file").write_bytes(b"")
    return str(tmp_path / "file" / "x.png")  # a folder that is a file: ENOTDIR when written


@pytest.mark.parametrize("engine", ENGINES)
def test_a_failed_imwrite_raises_from_a_later_imwrite(tmp_path, engine):
    images = _images(4)
    bad = _unwritable(tmp_path)
    with shmsave.Writer(2, engine=engine) as writer:
        writer.imwrite(bad, images[0])
        deadline = time.monotonic() + 60
        with pytest.raises(WriteFailed) as caught:
            for i in range(100_000):
                writer.imwrite(tmp_path / "after" / f"{i % 50}.png", images[i % 4])
                if time.monotonic() > deadline:
                    break
                time.sleep(0.001)
        assert caught.value.path == bad and bad in str(caught.value)
        assert caught.value.report is not None and caught.value.report.failed[0].path == bad
        writer.imwrite(tmp_path / "again.png", images[1])  # the Writer goes on, with a fresh buffer
        assert writer.flush().count == 1
    assert (tmp_path / "again.png").read_bytes() == _encoded(images[1], "x.png")


@pytest.mark.parametrize("engine", ENGINES)
def test_a_failed_imwrite_raises_from_flush_and_close(tmp_path, engine):
    images = _images(4)
    bad = _unwritable(tmp_path)
    writer = shmsave.Writer(2, engine=engine)
    try:
        writer.imwrite(tmp_path / "good.png", images[0])
        writer.imwrite(bad, images[1])
        with pytest.raises(WriteFailed, match="x.png") as caught:
            writer.flush()
        assert caught.value.path == bad and caught.value.report.count == 1
        writer.imwrite(bad, images[2])
        with pytest.raises(WriteFailed) as caught:
            writer.close()
        assert caught.value.path == bad
    finally:
        writer.close()
    assert (tmp_path / "good.png").read_bytes() == _encoded(images[0], "x.png")


def test_shmsave_imwrite_on_the_process_wide_writer(tmp_path):
    images = _images(20)
    for i, image in enumerate(images):
        assert shmsave.imwrite(tmp_path / f"{i}.jpg", image) is True
    report = shmsave.flush()
    assert report.count == 20
    for i, image in enumerate(images):
        assert (tmp_path / f"{i}.jpg").read_bytes() == _encoded(image, "x.jpg")


@pytest.mark.slow
def test_a_killed_worker_during_imwrite_is_reported_and_replaced(tmp_path):
    images = _images(4, 120, 160)  # under 64 KB, for the processes; PNG level 9: tasks are in flight at the kill
    params = [cv2.IMWRITE_PNG_COMPRESSION, 9]
    with shmsave.Writer(2) as writer:
        writer.start()
        before = set(writer.pids)
        killer = threading.Thread(target=_kill_once_writing, args=(writer.pids[0], tmp_path / "run"))
        killer.start()
        with pytest.raises(WorkerDied) as caught:
            for i in range(300):
                writer.imwrite(tmp_path / "run" / f"{i:04d}.png", images[i % 4], params)
            writer.flush()
        killer.join()
        failed = {f.index for f in caught.value.report.failed}
        assert failed and all("worker process" in f.message for f in caught.value.report.failed)
        assert wait_until(lambda: len(set(writer.pids) - before) == 1, 10), "the killed worker was not replaced"
        writer.imwrite(tmp_path / "after.png", images[0])
        assert writer.flush().count == 1
    for name in os.listdir(tmp_path / "run"):  # whatever exists is complete
        i = int(name.split(".")[0])
        assert (tmp_path / "run" / name).read_bytes() == _encoded(images[i % 4], name, params), name


def _kill_once_writing(pid: int, folder) -> None:
    assert wait_until(lambda: folder.exists() and any(folder.iterdir()), 30, 0.001), "nothing was written"
    os.kill(pid, signal.SIGKILL)


_CTRL_C = """
import json, os, sys
import cv2, numpy as np, shmsave

out = sys.argv[1]
frames = np.random.default_rng(0).integers(0, 256, (4, 240, 320, 3), np.uint8)
with shmsave.Writer(2) as writer:
    writer.start()
    for i in range(1_000_000):
        writer.imwrite(f"{out}/{i:06d}.png", frames[i % 4], [cv2.IMWRITE_PNG_COMPRESSION, 9])
        if i == 30:
            with open(out + "/../info.json", "w") as f:
                json.dump({"pid": os.getpid(), "workers": writer.pids}, f)
"""


@pytest.mark.slow
def test_ctrl_c_in_an_imwrite_loop(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    info = interrupt_a_loop(tmp_path, _CTRL_C, out)
    frames = np.random.default_rng(0).integers(0, 256, (4, 240, 320, 3), np.uint8)
    names = sorted(os.listdir(out))
    assert names, "no image was written before the interrupt"
    for name in names:
        expected = _encoded(frames[int(name.split(".")[0]) % 4], name, (cv2.IMWRITE_PNG_COMPRESSION, 9))
        assert (out / name).read_bytes() == expected, f"{name} is incomplete or not an image"
    assert not shmsave_segments(info["pid"]), "segments left in /dev/shm"
    assert wait_until(lambda: not any(psutil.pid_exists(p) for p in info["workers"]), 10), "workers left running"


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["auto", "process"])
def test_a_thousand_flush_cycles_leak_nothing(tmp_path, engine):
    images = _images(3, 16, 16)
    me = psutil.Process()
    with shmsave.Writer(2, engine=engine) as writer:
        writer.start()
        writer.imwrite(tmp_path / "warm.png", images[0])
        writer.flush()
        assert hub_ended()
        fds, threads, segments = me.num_fds(), threading.active_count(), shmsave_segments(os.getpid())
        for k in range(1000):
            for j in range(1 + k % 3):
                writer.imwrite(tmp_path / f"{k % 10}" / f"{j}.png", images[j])
            assert writer.flush().count == 1 + k % 3
        assert hub_ended(), "the hub thread outlived its streams"
        assert threading.active_count() <= threads, "threads leak"
        assert me.num_fds() <= fds, "descriptors leak"
        assert shmsave_segments(os.getpid()) <= segments, "segments leak"
