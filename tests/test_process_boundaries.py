"""Faults at the boundaries a real program crosses: fork, the working folder and umask, a /dev/shm
shared with another PID namespace, files already at the target, and unexpected errors.

Each case fails on a shmsave that gets it wrong silently (another process's pixels in the
files, files in the wrong folder, a live segment deleted, a symlink replaced, a bare
RuntimeError), and ends with the suite's usual check: no segment and no child process left.

    boundary                                  test
    fork pool: children save at once          test_fork_pool_children_write_their_own_pixels
    forked child that only exits              test_forked_child_exiting_leaves_the_parent_working
    Writer used in a forked child             test_writer_used_in_a_forked_child_starts_its_own_workers
    chdir between calls                       test_relative_paths_follow_the_callers_folder
    umask                                     test_files_get_the_callers_umask
    ~ in the template                         test_tilde_is_the_home_folder
    another PID namespace, same /dev/shm      test_sweep_in_another_pid_namespace_keeps_live_segments
    symlink / mode / hard link / long name    test_existing_targets_*
    folder or dangling link, overwrite=False  test_overwrite_false_counts_a_folder_or_dangling_link_as_failed
    unexpected exception in a worker          test_unexpected_error_in_a_worker_*
    unexpected exception in-process           test_unexpected_error_in_process_engines
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import time

import cv2
import numpy as np
import psutil
import pytest

import shmsave
from shmsave import api, segment

from .conftest import ENGINES, shmsave_segments

SMALL, BIG = "small", "big"  # one page or less (created in place), more (unnamed file + link)


def _images(size: str, count: int = 4, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if size == SMALL:
        return rng.integers(0, 256, (count, 8, 8), np.uint8)
    return rng.integers(0, 256, (count, 64, 96, 3), np.uint8)


def _png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


def _run_script(tmp_path, code: str, *args: str, timeout: float = 120) -> dict:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    done = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=timeout, cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- fork ----------------------------------------------------------------------

_FORK_POOL = """
import json, multiprocessing, os, sys
import cv2, numpy as np, shmsave, shmsave.api

out = sys.argv[1]
N = 2000
chunks = [np.random.default_rng(k).integers(0, 256, (N, 16, 16), np.uint8) for k in range(4)]

def child(k):
    report = shmsave.save(chunks[k], f"{out}/{k}/{{index}}.png")
    return report.count, report.engine

if __name__ == "__main__":
    shmsave.api._shared_writer(None).start()  # the parent's workers run and are ready ...
    shmsave.save(chunks[0], f"{out}/warm/{{index}}.png")  # ... and have staged pixels
    parent_workers = shmsave.api._shared_writer(None).pids
    with multiprocessing.get_context("fork").Pool(4) as pool:
        results = pool.map(child, range(4))
        pool.close()
        pool.join()
    wrong = [(k, i) for k in range(4) for i in range(N)
             if open(f"{out}/{k}/{i}.png", "rb").read() != cv2.imencode(".png", chunks[k][i])[1].tobytes()]
    after = shmsave.save(chunks[1], f"{out}/after/{{index}}.png")
    print(json.dumps({"results": results, "wrong": wrong[:10], "n_wrong": len(wrong),
                      "parent_workers": parent_workers, "workers_after": shmsave.api._shared_writer(None).pids,
                      "after": after.count}))
"""


@pytest.mark.slow
def test_fork_pool_children_write_their_own_pixels(tmp_path):
    result = _run_script(tmp_path, _FORK_POOL, str(tmp_path / "out"))
    assert [count for count, _ in result["results"]] == [2000] * 4
    assert result["n_wrong"] == 0, f"files hold another process's image: {result['wrong']}"
    assert result["after"] == 2000
    assert result["workers_after"] == result["parent_workers"], "the children touched the parent's workers"


_FORK_EXIT = """
import json, os, sys
import numpy as np, shmsave

out = sys.argv[1]
images = np.random.default_rng(1).integers(0, 256, (300, 40, 40, 3), np.uint8)
with shmsave.Writer(2, engine="process") as writer:
    writer.save(images, f"{out}/a/{{index}}.png")  # workers running, staging slots made
    buffer = writer.empty(images.shape)
    buffer[...] = images
    segments_before = sorted(n for n in os.listdir("/dev/shm") if n.startswith(f"shmsave_{os.getpid()}_"))
    pid = os.fork()
    if pid == 0:
        sys.exit(0)  # runs atexit and finalizers in the child, as any child that ends normally
    _, status = os.waitpid(pid, 0)
    segments_after = sorted(n for n in os.listdir("/dev/shm") if n.startswith(f"shmsave_{os.getpid()}_"))
    staged = writer.save(images, f"{out}/b/{{index}}.png")
    zero_copy = writer.save(buffer, f"{out}/c/{{index}}.png")
    ok = all(open(f"{out}/{d}/{i}.png", "rb").read() == open(f"{out}/a/{i}.png", "rb").read()
             for d in "bc" for i in range(300))
print(json.dumps({"status": status, "before": segments_before, "after": segments_after,
                  "counts": [staged.count, zero_copy.count], "identical": ok}))
"""


def test_forked_child_exiting_leaves_the_parent_working(tmp_path):
    result = _run_script(tmp_path, _FORK_EXIT, str(tmp_path / "out"))
    assert result["status"] == 0
    assert result["before"] and result["after"] == result["before"], "the child removed the parent's segments"
    assert result["counts"] == [300, 300] and result["identical"]


_FORK_USE = """
import json, os, sys
import numpy as np, shmsave

out = sys.argv[1]
images = np.random.default_rng(2).integers(0, 256, (200, 40, 40, 3), np.uint8)
writer = shmsave.Writer(2, engine="process")
writer.save(images, f"{out}/parent/{{index}}.png")
parent_pids = writer.pids
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    report = writer.save(images[::-1].copy(), f"{out}/child/{{index}}.png")
    child_pids = writer.pids
    writer.close()
    os.write(write, json.dumps({"count": report.count, "pids": child_pids}).encode())
    os._exit(0)
os.close(write)
_, status = os.waitpid(pid, 0)
child = json.loads(os.read(read, 65536))
again = writer.save(images, f"{out}/again/{{index}}.png")
same = all(open(f"{out}/child/{i}.png", "rb").read() == open(f"{out}/parent/{199 - i}.png", "rb").read()
           for i in range(200))
print(json.dumps({"parent": parent_pids, "child": child, "again": again.count, "after": writer.pids,
                  "same": same}))
writer.close()
"""


def test_writer_used_in_a_forked_child_starts_its_own_workers(tmp_path):
    result = _run_script(tmp_path, _FORK_USE, str(tmp_path / "out"))
    assert result["child"]["count"] == 200 and result["same"]
    assert len(result["child"]["pids"]) == 2 and not set(result["child"]["pids"]) & set(result["parent"])
    assert result["again"] == 200 and result["after"] == result["parent"]


# Earlier tests may leave encoder threads in this process, as a user's program would; Python 3.12+
# then warns that a fork may deadlock its child. This child only writes to a pipe and exits.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_at_fork_the_process_wide_writer_is_not_inherited(tmp_path):
    shmsave.save(_images(SMALL), str(tmp_path / "{index}.png"))
    assert api._shared is not None
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        os.write(write, b"fresh" if api._shared is None else b"inherited")
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    assert os.read(read, 100) == b"fresh"
    os.close(read)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="OpenBLAS starts no threads of its own on one core")
def test_workers_start_no_blas_threads_unless_told(monkeypatch):
    """numpy's and OpenCV's OpenBLAS start a thread per core in every process that imports them (each
    spins ~0.1 s); workers do no linear algebra: OPENBLAS_NUM_THREADS=1, unless the caller set one."""
    threads = {}
    for theirs in (None, "2"):
        if theirs is None:
            monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
        else:
            monkeypatch.setenv("OPENBLAS_NUM_THREADS", theirs)
        with shmsave.Writer(2) as writer:
            writer.start()
            workers = [psutil.Process(pid) for pid in writer.pids]
            assert [w.environ().get("OPENBLAS_NUM_THREADS") for w in workers] == [theirs or "1"] * 2
            threads[theirs] = [w.num_threads() for w in workers]
    assert all(ours < told for ours, told in zip(threads[None], threads["2"])), threads


# -- working folder, umask, home ------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_relative_paths_follow_the_callers_folder(engine, tmp_path, monkeypatch):
    (tmp_path / "A").mkdir()
    (tmp_path / "B").mkdir()
    images = _images(BIG)
    with shmsave.Writer(2, engine=engine) as writer:
        monkeypatch.chdir(tmp_path / "A")
        writer.save(images, "f/{index}.png")
        monkeypatch.chdir(tmp_path / "B")
        writer.save(images, "g/{index}.png")
        writer.save(images, "{index}/h.png")  # a folder per image: created where the caller is
    assert sorted(os.listdir(tmp_path / "A")) == ["f"]
    assert sorted(os.listdir(tmp_path / "B" / "g")) == [f"{i}.png" for i in range(4)]
    assert (tmp_path / "B" / "3" / "h.png").read_bytes() == _png(images[3])


@pytest.mark.parametrize("size", [SMALL, BIG])
@pytest.mark.parametrize("engine", ENGINES)
def test_files_get_the_callers_umask(engine, size, tmp_path, files_by):
    with shmsave.Writer(2, engine=engine) as writer:
        writer.start() if engine == "process" else None  # workers started under the default umask
        old = os.umask(0o077)
        try:
            writer.save(_images(size), str(tmp_path / "{index}.png"))
        finally:
            os.umask(old)
    modes = {stat.S_IMODE(os.stat(tmp_path / f"{i}.png").st_mode) for i in range(4)}
    assert modes == {0o600}


def test_tilde_is_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    report = shmsave.save(_images(SMALL), "~/out/{index}.png")
    assert report.count == 4
    assert sorted(os.listdir(tmp_path / "home" / "out")) == [f"{i}.png" for i in range(4)]
    assert not (tmp_path / "~").exists()


# -- another PID namespace sharing /dev/shm --------------------------------------


def _unshare_works() -> str | None:
    if shutil.which("unshare") is None:
        return "the unshare command is not installed"
    try:
        done = subprocess.run(["unshare", "-p", "-f", "--mount-proc", "true"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"unshare failed: {error}"
    if done.returncode != 0:
        return f"creating a PID namespace needs CAP_SYS_ADMIN (root): {done.stderr.decode().strip()}"
    return None


_IN_NAMESPACE = """
import json, os, sys
import psutil, shmsave
outer = int(sys.argv[1])
writer = shmsave.Writer(1)  # its first Writer sweeps abandoned segments
writer.close()
print(json.dumps({"pid": os.getpid(), "outer_visible": psutil.pid_exists(outer)}))
"""


def test_sweep_in_another_pid_namespace_keeps_live_segments(tmp_path):
    reason = _unshare_works()
    if reason:
        pytest.skip(reason)
    script = tmp_path / "inside.py"
    script.write_text(_IN_NAMESPACE)
    images = _images(BIG, 6)
    with shmsave.Writer(2, engine="process") as writer:
        buffer = writer.empty(images.shape)
        buffer[...] = images
        mine = shmsave_segments(os.getpid())
        assert mine
        done = subprocess.run(
            ["unshare", "-p", "-f", "--mount-proc", sys.executable, str(script), str(os.getpid())],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        inside = json.loads(done.stdout)
        assert not inside["outer_visible"], "the test needs a namespace where this process's pid does not exist"
        assert shmsave_segments(os.getpid()) == mine, "a sweep in another PID namespace deleted live segments"
        report = writer.save(buffer, str(tmp_path / "{index}.png"))
    assert report.count == 6
    assert (tmp_path / "5.png").read_bytes() == _png(images[5])


def test_segment_lock_ends_with_its_owner(tmp_path):
    """A segment's lock is what proves its owner alive: it ends when the owner is SIGKILLed."""
    code = (
        "import os, sys, time, shmsave.segment as s; b = s.Segment.create(4096); "
        "print(b.locator, flush=True); time.sleep(60)"
    )
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        name = owner.stdout.readline().strip()
        path = f"/dev/shm/{name}"
        assert not segment.unlink_if_abandoned(path, owner.pid) and os.path.exists(path)
        owner.kill()
        owner.wait(10)
        assert segment.unlink_if_abandoned(path, owner.pid, patience=1.0) and not os.path.exists(path)
    finally:
        if owner.poll() is None:
            owner.kill()
        owner.wait(10)
        owner.stdout.close()


# -- files already at the target ---------------------------------------------------


@pytest.mark.parametrize("size", [SMALL, BIG])
@pytest.mark.parametrize("engine", ENGINES)
def test_existing_targets_are_written_through_symlinks(engine, size, tmp_path, files_by):
    images = _images(size)
    (tmp_path / "real").mkdir()
    (tmp_path / "out").mkdir()
    for i in range(4):
        (tmp_path / "real" / f"{i}.png").write_bytes(b"old")
        os.symlink(tmp_path / "real" / f"{i}.png", tmp_path / "out" / f"{i}.png")
    os.symlink(tmp_path / "real" / "new.png", tmp_path / "out" / "4.png")  # dangling: the target is created
    with shmsave.Writer(2, engine=engine) as writer:
        report = writer.save(np.concatenate([images, images[:1]]), str(tmp_path / "out" / "{index}.png"))
    assert report.count == 5
    for i in range(4):
        assert os.path.islink(tmp_path / "out" / f"{i}.png"), "the symbolic link was replaced by a file"
        assert (tmp_path / "real" / f"{i}.png").read_bytes() == _png(images[i])
    assert (tmp_path / "real" / "new.png").read_bytes() == _png(images[0])
    assert sorted(os.listdir(tmp_path / "real")) == ["0.png", "1.png", "2.png", "3.png", "new.png"]


@pytest.mark.parametrize("size", [SMALL, BIG])
@pytest.mark.parametrize("engine", ENGINES)
def test_existing_targets_keep_their_permission_bits(engine, size, tmp_path, files_by):
    for i, mode in enumerate([0o600, 0o640, 0o644, 0o664]):
        (tmp_path / f"{i}.png").write_bytes(b"old")
        os.chmod(tmp_path / f"{i}.png", mode)
    with shmsave.Writer(2, engine=engine) as writer:
        writer.save(_images(size), str(tmp_path / "{index}.png"))
    modes = [stat.S_IMODE(os.stat(tmp_path / f"{i}.png").st_mode) for i in range(4)]
    assert modes == [0o600, 0o640, 0o644, 0o664]


@pytest.mark.parametrize("size", [SMALL, BIG])
@pytest.mark.parametrize("engine", ENGINES)
def test_existing_targets_with_hard_links_are_replaced_alike(engine, size, tmp_path):
    """Whatever the size, the name written gets the new image; another hard link keeps the old bytes."""
    images = _images(size)
    (tmp_path / "0.png").write_bytes(b"old")
    os.link(tmp_path / "0.png", tmp_path / "other-name.png")
    with shmsave.Writer(2, engine=engine) as writer:
        writer.save(images, str(tmp_path / "{index}.png"))
    assert (tmp_path / "0.png").read_bytes() == _png(images[0])
    assert (tmp_path / "other-name.png").read_bytes() == b"old"


@pytest.mark.parametrize("size", [SMALL, BIG])
@pytest.mark.parametrize("engine", ENGINES)
def test_existing_targets_with_the_longest_names_are_replaced(engine, size, tmp_path):
    images = _images(size)
    template = str(tmp_path / ("x" * 245 + "{index:06d}.png"))  # 255 bytes: the longest a name can be
    with shmsave.Writer(2, engine=engine) as writer:
        first = writer.save(images, template)
        second = writer.save(images[::-1].copy(), template)
    assert (first.count, second.count) == (4, 4)
    assert open(template.format(index=0), "rb").read() == _png(images[3])
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(template.format(index=i)) for i in range(4))


@pytest.mark.parametrize("engine", ENGINES)
def test_overwrite_false_counts_a_folder_or_dangling_link_as_failed(engine, tmp_path):
    (tmp_path / "1.png").mkdir()
    os.symlink(tmp_path / "nowhere.png", tmp_path / "2.png")
    (tmp_path / "3.png").write_bytes(b"kept")
    with shmsave.Writer(2, engine=engine) as writer:
        report = writer.save(_images(SMALL), str(tmp_path / "{index}.png"), overwrite=False, errors="collect")
    assert (report.count, report.skipped) == (1, 1)
    assert [(f.index, f.errno) for f in report.failed] == [(1, 21), (2, 2)]  # EISDIR, ENOENT
    assert "points to nothing" in report.failed[1].message
    assert (tmp_path / "3.png").read_bytes() == b"kept"


# -- unexpected errors ------------------------------------------------------------


def _truncated_npy(tmp_path, count: int = 60) -> np.ndarray:
    path = tmp_path / "frames.npy"
    np.save(path, _images(BIG, count))
    stack = np.load(path, mmap_mode="r")
    os.truncate(path, os.path.getsize(path) // 2)  # changed under the call, after it was opened
    return stack


@pytest.mark.parametrize("errors", ["raise", "collect"])
def test_unexpected_error_in_a_worker_is_in_the_family_and_spares_the_pool(errors, tmp_path):
    stack = _truncated_npy(tmp_path)
    with shmsave.Writer(2, engine="process") as writer:
        writer.start()
        pids = writer.pids
        if errors == "raise":
            with pytest.raises(shmsave.WorkerFailed) as info:
                writer.save(stack, str(tmp_path / "out" / "{index}.png"))
            error = info.value
            assert isinstance(error, shmsave.ShmsaveError) and error.report is not None
            assert isinstance(error.__cause__, shmsave.errors.RemoteTraceback)
            assert "Traceback" in str(error.__cause__)
            failed = error.report.failed
        else:
            report = writer.save(stack, str(tmp_path / "out" / "{index}.png"), errors="collect")
            failed = report.failed
            assert report.count + len(failed) == 60
        assert failed and all("unexpected error" in f.message for f in failed)
        assert writer.pids == pids, "an exception in a task tore the pool down"
        assert writer.save(_images(BIG), str(tmp_path / "next" / "{index}.png")).count == 4


@pytest.mark.parametrize("engine", ["inline", "thread"])
@pytest.mark.parametrize("errors", ["raise", "collect"])
def test_unexpected_error_in_process_engines(engine, errors, tmp_path, monkeypatch):
    real = cv2.imencode

    def failing(extension, image, params):
        if image[0, 0] == 7:
            raise TypeError("a bug in the encoder")
        return real(extension, image, params)

    monkeypatch.setattr(cv2, "imencode", failing)
    images = _images(SMALL, 8)
    images[5, 0, 0] = 7
    images[[0, 1, 2, 3, 4, 6, 7], 0, 0] = 1
    with shmsave.Writer(2, engine=engine) as writer:
        if errors == "raise":
            with pytest.raises(shmsave.WorkerFailed) as info:
                writer.save(images, str(tmp_path / "{index}.png"))
            assert isinstance(info.value.__cause__, TypeError)
            assert info.value.start == 5 and "a bug in the encoder" in str(info.value)
        else:
            report = writer.save(images, str(tmp_path / "{index}.png"), errors="collect")
            assert 5 in {f.index for f in report.failed}
            assert all("TypeError: a bug in the encoder" in f.message for f in report.failed)
            assert report.count + len(report.failed) == 8


def test_a_zombie_owner_counts_as_dead(tmp_path):
    """A dead child not yet reaped (a zombie) still answers kill(pid, 0), and the kernel may release its
    locks a moment later: what its workers run when it dies still removes its segments."""
    code = "import shmsave.segment as s, os; b = s.Segment.create(4096); print(b.locator, flush=True); os._exit(0)"
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        path = f"/dev/shm/{owner.stdout.readline().strip()}"
        deadline = time.monotonic() + 10
        while not _is_zombie(owner.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _is_zombie(owner.pid), "the child should be a zombie (exited, not reaped)"
        assert not segment._alive(owner.pid)
        segment.unlink_owned_by(owner.pid)
        assert not os.path.exists(path)
    finally:
        owner.wait(10)
        owner.stdout.close()


def _is_zombie(pid: int) -> bool:
    with open(f"/proc/{pid}/stat", "rb") as stat:
        return stat.read().rsplit(b")", 1)[1].split()[0] == b"Z"
