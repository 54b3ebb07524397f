"""The edges of a program's life: exit with work pending, buffers reused, Ctrl-C at close,
threads that outlive the main thread, and options that contradict each other.

Each case runs as a user's script would where the edge is the interpreter's
(a real ``python`` subprocess), and checks every file it should have written.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import psutil
import pytest

import shmsave
from shmsave import api

from .conftest import ENGINES, shmsave_segments, sigint_as_in_a_terminal, wait_until

_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(shmsave.__file__)))


def _run_script(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": _PACKAGE_PARENT}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        preexec_fn=sigint_as_in_a_terminal,
    )


# -- a script that ends with work pending -------------------------------------------------------


_SUBMIT_AND_END = """
    import sys, numpy as np, shmsave
    engine, folder = sys.argv[1], sys.argv[2]
    writer = shmsave.Writer(workers=2, engine=engine)
    images = np.random.default_rng(0).integers(0, 255, (3000, 16, 16), np.uint8)
    writer.submit(images, folder + "/{index}.png")
    # the script ends here, its Future never looked at
"""


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["auto", *ENGINES])
def test_a_script_that_ends_after_submit_writes_every_image(engine, tmp_path):
    done = _run_script(_SUBMIT_AND_END, engine, str(tmp_path))
    assert done.returncode == 0, done.stderr
    images = np.random.default_rng(0).integers(0, 255, (3000, 16, 16), np.uint8)
    written = sorted(os.listdir(tmp_path))
    assert len(written) == 3000, f"{len(written)} of 3000 files; stderr: {done.stderr[-2000:]}"
    for index in (0, 1234, 2999):
        assert np.array_equal(cv2.imread(str(tmp_path / f"{index}.png"), cv2.IMREAD_UNCHANGED), images[index])


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["auto", "thread", "process"])
def test_a_stream_dropped_without_close_writes_its_images(engine, tmp_path):
    code = """
        import sys, time, os, numpy as np, shmsave
        engine, folder, wait = sys.argv[1], sys.argv[2], sys.argv[3] == "wait"
        stream = shmsave.Writer(workers=2, engine=engine).stream(folder + "/{index}.png")
        for i in range(300):
            stream.write(np.full((20, 20), i % 256, np.uint8))
        del stream
        if wait:  # while the script goes on, the images are written without close()
            deadline = time.monotonic() + 20
            while len(os.listdir(folder)) < 300 and time.monotonic() < deadline:
                time.sleep(0.02)
            print(len(os.listdir(folder)))
    """
    for wait in ("wait", "exit"):
        folder = tmp_path / wait
        folder.mkdir()
        done = _run_script(code, engine, str(folder), wait)
        assert done.returncode == 0, done.stderr
        if wait == "wait":
            assert done.stdout.split() == ["300"], done.stdout
        names = sorted(os.listdir(folder), key=lambda n: int(n.split(".")[0]))
        assert names == [f"{i}.png" for i in range(300)]
        assert cv2.imread(str(folder / "299.png"), cv2.IMREAD_UNCHANGED)[0, 0] == 299 % 256


@pytest.mark.parametrize("size", [40, 256])
def test_first_use_from_a_thread_that_outlives_the_main_thread(size, tmp_path):
    """cv2.imwrite works there; so must save, on whatever engine it picks (threads for big images)."""
    code = """
        import sys, threading, time
        def work():
            time.sleep(0.2)  # the main thread has returned: the interpreter is shutting down
            import numpy as np, shmsave
            n = int(sys.argv[2])
            report = shmsave.save(np.full((60, n, n, 3), 7, np.uint8), sys.argv[1] + "/{index}.png")
            print(report.count, report.engine)
        threading.Thread(target=work).start()
    """
    done = _run_script(code, str(tmp_path), str(size))
    assert done.returncode == 0 and not done.stderr, done.stderr
    assert done.stdout.split()[0] == "60", done.stdout
    assert len(os.listdir(tmp_path)) == 60


# -- a buffer refilled while a submitted save is pending -----------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_submit_copies_the_pixels_so_the_buffer_may_be_refilled(engine, tmp_path):
    with shmsave.Writer(workers=2, engine=engine) as writer:
        for source in ("array", "shared", "list"):
            buffer = writer.empty((256, 24, 24), "uint8") if source == "shared" else np.empty((256, 24, 24), np.uint8)
            futures = []
            for batch in range(3):
                buffer[...] = batch * 50
                images = list(buffer) if source == "list" else buffer
                futures.append(writer.submit(images, str(tmp_path / source / f"{batch}_{{index}}.png")))
            for future in futures:
                assert future.result().count == 256
            for batch in range(3):
                for index in (0, 255):
                    pixels = cv2.imread(str(tmp_path / source / f"{batch}_{index}.png"), cv2.IMREAD_UNCHANGED)
                    assert (pixels == batch * 50).all(), (source, batch, index)


def test_submit_copy_false_reads_the_callers_array_where_it_is(tmp_path):
    """copy=False: the caller keeps its buffer untouched until the Future is done (zero copy)."""
    with shmsave.Writer(workers=2, engine="thread") as writer:
        buffer = writer.empty((64, 16, 16), "uint8")
        buffer[...] = 9
        assert writer.submit(buffer, str(tmp_path / "{index}.png"), copy=False).result().count == 64
        assert (cv2.imread(str(tmp_path / "63.png"), cv2.IMREAD_UNCHANGED) == 9).all()
        with pytest.raises(shmsave.InvalidRequest, match="copy"):
            writer.submit(buffer, str(tmp_path / "{index}.png"), copy="yes")


# -- Ctrl-C while a Writer closes --------------------------------------------------------------


_INTERRUPTED_AT_CLOSE = """
    import json, os, signal, sys, numpy as np, shmsave
    from shmsave import pool

    delay = float(sys.argv[2])
    close = pool.Pool.close

    def interrupted_close(self):
        # Ctrl-C lands while the workers are told to stop and waited for (delay 0: at once)
        if delay:
            signal.setitimer(signal.ITIMER_REAL, delay)
        else:
            os.kill(os.getpid(), signal.SIGINT)
        try:
            close(self)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)  # close ended before the delay: no interrupt

    def ctrl_c(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGALRM, ctrl_c)
    pool.Pool.close = interrupted_close
    images = np.random.default_rng(0).integers(0, 255, (300, 120, 160, 3), np.uint8)
    try:
        with shmsave.Writer(workers=2, engine="process") as writer:
            writer.save(images, sys.argv[1] + "/{index}.png")
            print(json.dumps({"pid": os.getpid(), "workers": writer.pids}), flush=True)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
"""


@pytest.mark.slow
def test_ctrl_c_while_a_process_writer_closes_leaks_nothing(tmp_path):
    """20 interrupts, at once and at delays up to 19 ms into ``Pool.close``; /dev/shm after each."""
    interrupted = 0
    for attempt in range(20):
        folder = tmp_path / str(attempt)
        folder.mkdir()
        delay = 0.0 if attempt % 4 == 0 else 0.001 * attempt
        done = _run_script(_INTERRUPTED_AT_CLOSE, str(folder), str(delay))
        assert done.returncode == 0, (attempt, done.stderr)
        lines = done.stdout.split("\n")
        interrupted += "interrupted" in lines
        info = json.loads(lines[0])
        assert not shmsave_segments(info["pid"]), (attempt, shmsave_segments(info["pid"]))
        # a worker the interrupt kept from being told to stop ends as it sees its parent gone
        workers = info["workers"]
        assert wait_until(lambda workers=workers: not [p for p in workers if psutil.pid_exists(p)], 5), attempt
        assert len(os.listdir(folder)) == 300
        shutil.rmtree(folder)  # checked: 18 MB the temporary folder need not keep, twenty times
    assert interrupted >= 5, f"only {interrupted} of 20 closes were interrupted: the test tests nothing"


# -- options that contradict each other --------------------------------------------------------


def test_quality_and_a_params_flag_for_the_same_setting_are_refused(tmp_path):
    images = np.zeros((2, 8, 8), np.uint8)
    with pytest.raises(shmsave.InvalidRequest, match="quality=95.*IMWRITE_JPEG_QUALITY"):
        shmsave.save(images, str(tmp_path / "{index}.jpg"), quality=95, params={cv2.IMWRITE_JPEG_QUALITY: 50})
    with pytest.raises(shmsave.InvalidRequest, match="compression=3.*IMWRITE_PNG_COMPRESSION"):
        shmsave.save(images, str(tmp_path / "{index}.png"), compression=3, params=[cv2.IMWRITE_PNG_COMPRESSION, 9])
    assert not os.listdir(tmp_path)
    # the same value twice says one thing: allowed
    assert shmsave.save(images, str(tmp_path / "{index}.jpg"), quality=50, params={cv2.IMWRITE_JPEG_QUALITY: 50})


def test_progress_takes_a_tqdm_bar_of_the_callers(tmp_path):
    from tqdm import tqdm

    images = np.zeros((30, 8, 8), np.uint8)
    with tqdm(total=30, disable=False, file=open(os.devnull, "w")) as bar:
        shmsave.save(images, str(tmp_path / "{index}.png"), progress=bar)
        assert bar.n == 30
    with pytest.raises(shmsave.InvalidRequest, match="progress"):
        shmsave.save(images, str(tmp_path / "{index}.png"), progress="yes")
    with pytest.raises(shmsave.InvalidRequest, match="progress"):
        shmsave.save(images, str(tmp_path / "{index}.png"), progress=3)


def test_a_save_with_workers_does_not_stick_to_later_default_calls(tmp_path):
    from shmsave._cpus import usable_cpus

    images = np.zeros((10, 8, 8), np.uint8)
    shmsave.save(images, str(tmp_path / "a{index}.png"), workers=1)
    assert api._shared.workers == 1
    shmsave.save(images, str(tmp_path / "b{index}.png"))
    assert api._shared.workers == usable_cpus()
    default = api._shared
    shmsave.save(images, str(tmp_path / "c{index}.png"))
    shmsave.save(images, str(tmp_path / "d{index}.png"), workers=usable_cpus())
    assert api._shared is default, "a call that asks for the count it has keeps the Writer"


@pytest.mark.parametrize("engine", ENGINES)
def test_collect_returns_a_folder_that_cannot_be_made_in_the_report(engine, tmp_path):
    (tmp_path / "in-the-way").write_bytes(b"a file, not a folder")
    template = str(tmp_path / "in-the-way" / "{index}.png")
    images = np.zeros((5, 8, 8), np.uint8)
    with shmsave.Writer(workers=2, engine=engine) as writer:
        report = writer.save(images, template, errors="collect", start=3)
        assert report.count == 0 and [f.index for f in report.failed] == [3, 4, 5, 6, 7]
        assert "is a file, not a folder" in report.failed[0].message
        with pytest.raises(shmsave.WriteFailed):
            writer.save(images, template)
        with writer.stream(template, errors="collect") as stream:
            for image in images:
                stream.write(image)
        assert stream.report.count == 0 and [f.index for f in stream.report.failed] == [0, 1, 2, 3, 4]
        with pytest.raises(shmsave.WriteFailed):
            writer.stream(template)


def test_the_commands_bar_shows_in_a_terminal_of_no_columns(tmp_path):
    """A pty that reports 0x0 (some CI runners, ``docker exec``): tqdm alone would draw nothing."""
    import fcntl
    import pty
    import struct
    import termios

    np.save(tmp_path / "in.npy", np.zeros((40, 8, 8), np.uint8))
    fd, terminal = pty.openpty()  # not pty.fork: forking a process with threads may deadlock the child
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
    command = [sys.executable, "-m", "shmsave", str(tmp_path / "in.npy"), "-o", str(tmp_path / "o/{index}.png")]
    env = dict(os.environ, PYTHONPATH=_PACKAGE_PARENT)
    child = subprocess.Popen(command, stdin=terminal, stdout=terminal, stderr=terminal, env=env, start_new_session=True)
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(fd)
    assert child.wait(timeout=60) == 0, output
    assert b"40/40" in output, output
    assert len(os.listdir(tmp_path / "o")) == 40


def test_a_literal_brace_in_a_template_gets_a_hint_to_double_it(tmp_path):
    with pytest.raises(shmsave.InvalidRequest, match=r"\{\{1\}\}"):
        shmsave.save(np.zeros((2, 8, 8), np.uint8), str(tmp_path / "{index}_{1}.png"))


def test_a_refused_list_of_paths_is_not_printed_whole(tmp_path):
    with pytest.raises(shmsave.InvalidRequest) as refused:
        shmsave.save(np.zeros((2, 8, 8), np.uint8), [1234567] * 2000)
    assert len(str(refused.value)) < 600, len(str(refused.value))


@pytest.mark.parametrize("extension", [".png", ".jpg"])
def test_resume_writes_again_a_file_that_a_killed_loop_left_truncated(extension, tmp_path):
    """overwrite=False keeps complete files, and rewrites one cut short by a loop killed mid-write
    (not shmsave's: its files appear only complete), as its format's end marker is missing."""
    images = np.random.default_rng(1).integers(0, 255, (3, 40, 40, 3), np.uint8)
    template = str(tmp_path / ("{index}" + extension))
    shmsave.save(images, template)
    whole = (tmp_path / f"1{extension}").read_bytes()
    (tmp_path / f"1{extension}").write_bytes(whole[: len(whole) // 2])
    kept = (tmp_path / f"2{extension}").stat().st_mtime_ns
    report = shmsave.save(images, template, overwrite=False)
    assert (report.count, report.skipped) == (1, 2)
    assert (tmp_path / f"1{extension}").read_bytes() == whole
    assert (tmp_path / f"2{extension}").stat().st_mtime_ns == kept


def test_a_field_is_one_value_for_all_images_or_one_per_image(tmp_path):
    """A list is never formatted whole into one folder name: of the images' length it is one value per
    image (issue 20), of another length, or unordered, it is refused."""
    images = np.zeros((12, 8, 8), np.uint8)
    for value in (["a"] * 11, ("a", "b"), np.array(["a"] * 13), {"a", "b"}):
        with pytest.raises(shmsave.InvalidRequest, match="fields\\['split'\\]"):
            shmsave.save(images, str(tmp_path / "{split}" / "{index}.png"), fields={"split": value})
    assert not os.listdir(tmp_path)
    assert shmsave.save(images, str(tmp_path / "{split}" / "{index}.png"), fields={"split": np.str_("a")})
    assert len(os.listdir(tmp_path / "a")) == 12
    split = np.array(["train", "test"])[np.arange(12) % 2]
    assert shmsave.save(images, str(tmp_path / "{split}" / "{index}.png"), fields={"split": split}).count == 12
    assert sorted(os.listdir(tmp_path / "train")) == sorted(f"{i}.png" for i in range(0, 12, 2))


@pytest.mark.parametrize("scale", [1.0, 255.0])
def test_the_float_hint_keeps_the_pictures_values(scale, tmp_path):
    """The refusal of floats to .png names a recipe per range; following it keeps the values."""
    floats = np.random.default_rng(2).random((2, 16, 16), np.float32) * scale
    with pytest.raises(shmsave.InvalidRequest) as refused:
        shmsave.save(floats, str(tmp_path / "{index}.png"))
    message = str(refused.value)
    low, high = message.index("[0, 1]"), message.index("[0, 255]")
    recipe = message[low:high] if scale == 1.0 else message[high:]
    expression = recipe[recipe.index("(np.clip") if "(np.clip" in recipe else recipe.index("np.clip") :]
    expression = expression.split(";")[0].split(". ")[0].rstrip(".,")
    converted = eval(expression, {"np": np, "images": floats})  # noqa: S307 - the message's own recipe
    assert converted.dtype == np.uint8
    assert abs(float(converted.mean()) - float(floats.mean()) * 255 / scale) < 1.0


def test_a_fresh_default_stream_of_a_few_tiny_images_starts_no_worker_process(tmp_path):
    """Starting the processes (~0.2 s) would cost more than 200 tiny crops take on a thread."""
    with shmsave.Writer(workers=2) as writer:
        with writer.stream(str(tmp_path / "{index}.jpg")) as stream:
            for i in range(200):
                stream.write(np.full((50, 50, 3), i, np.uint8))
        assert stream.report.count == 200 and stream.report.engine == "thread"
        assert writer._processes.pids == [], "no worker started"
    assert len(os.listdir(tmp_path)) == 200


@pytest.mark.parametrize("count", [60, 400])
def test_a_default_stream_moves_tiny_images_to_the_processes_after_the_first_ones(count, tmp_path, monkeypatch):
    """The first ones go to threads from private memory; from then on to the workers through a
    shared ring: every file is right, and the private ring is not left in /dev/shm."""
    from shmsave import writer as writer_module

    monkeypatch.setattr(writer_module, "_TINY_ON_THREADS_FIRST", 50)
    images = np.random.default_rng(3).integers(0, 255, (count, 24, 24, 3), np.uint8)
    with shmsave.Writer(workers=2) as writer:
        with writer.stream(str(tmp_path / "{index}.png")) as stream:
            for image in images:
                stream.write(image)
        assert stream.report.count == count and stream.report.engine == "hybrid"
        assert len(writer._processes.pids) == 2
    for index in (0, 49, 50, count - 1):
        assert np.array_equal(cv2.imread(str(tmp_path / f"{index}.png"), cv2.IMREAD_UNCHANGED), images[index])
    assert len(os.listdir(tmp_path)) == count
