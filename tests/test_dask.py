"""shmsave.dask: a Dask array saved where its blocks live.

The cluster tests share one ``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)``.
Its worker processes (and a worker that replaces a killed one) are children of this process
that outlive each test on purpose, so this module's ``no_leaks`` allows the cluster's own
processes and checks the rest as conftest's does; when the module ends, the cluster is closed
and then nothing of it may be left: no process, no segment of any process it ever had.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import psutil
import pytest

import shmsave
from shmsave import api

from .conftest import children, shmsave_segments, wait_until
from .test_cli import SCRIPT

pytest.importorskip("dask.array")
pytest.importorskip("distributed")

import dask  # noqa: E402
import dask.array as da  # noqa: E402
import distributed  # noqa: E402
from dask.delayed import Delayed  # noqa: E402

import shmsave.dask  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
_TEST_PROCESS = os.getpid()


def _frames(count: int, h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """BGR frames with gradients, a disc and noise: bigger than a page as PNG (the O_TMPFILE path)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    out = np.empty((count, h, w, 3), np.uint8)
    for i in range(count):
        for c in range(3):
            plane = (x * (2 + i % 7) + y * (c + 1) + rng.normal(0, 12, x.shape)) % 256
            plane[(x - w // 2) ** 2 + (y - h // 2) ** 2 < (4 + i % 9) ** 2] = 60 * c
            out[i, :, :, c] = plane
    return out


def _bytes_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# -- leak checks around a cluster -------------------------------------------------

_cluster_state: dict = {"ever": set()}  # every Dask worker process the cluster had


def _cluster_pids() -> set[int]:
    """The cluster's worker processes now (this module's only spawned children, a replacement
    for a killed one included), with their children (their shmsave workers)."""
    found = set()
    for child in psutil.Process().children():
        try:
            if "multiprocessing.spawn" in " ".join(child.cmdline()):
                _cluster_state["ever"].add(child.pid)
                found |= {child.pid, *(grandchild.pid for grandchild in child.children(recursive=True))}
        except psutil.NoSuchProcess:
            pass
    return found


@pytest.fixture(autouse=True)
def no_leaks():
    """conftest's check, except that the cluster's worker processes may stay between tests."""
    before = children()
    yield
    with shmsave._dask_worker._lock:  # the threaded scheduler's Writer lives in this process
        writer = shmsave._dask_worker._state.pop("writer", None)
        shmsave._dask_worker._state.clear()
    if writer is not None:
        writer.close()
    if api._shared is not None:
        api._shared.close()
        api._shared = None
    assert wait_until(lambda: not (children() - before - _cluster_pids() - _resource_tracker()), 10), (
        f"child processes left running: {children() - before - _cluster_pids() - _resource_tracker()}"
    )
    assert not shmsave_segments(os.getpid()), f"segments left in /dev/shm: {shmsave_segments(os.getpid())}"


@pytest.fixture(scope="module")
def cluster():
    before = children()
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=40
        ) as local,
        distributed.Client(local) as client,
    ):
        yield local, client
        _cluster_pids()
    assert wait_until(lambda: not (children() - before - _resource_tracker()), 20), (
        f"left running: {children() - before - _resource_tracker()}"
    )
    left = {name for pid in _cluster_state["ever"] for name in shmsave_segments(pid)}
    assert not left, f"segments left by the cluster's processes: {left}"


def _resource_tracker() -> set[int]:
    """multiprocessing's resource tracker: started for the cluster's spawned workers, it serves
    this process until it exits (by design, not a leak)."""
    found = set()
    for child in psutil.Process().children():
        try:
            if "multiprocessing.resource_tracker" in " ".join(child.cmdline()):
                found.add(child.pid)
        except psutil.NoSuchProcess:
            pass
    return found


@pytest.fixture
def client(cluster):
    yield cluster[1]
    _cluster_pids()


# -- without a cluster ------------------------------------------------------------


def test_import_shmsave_does_not_import_dask():
    code = (
        "import sys, numpy, shmsave, shmsave.cli; "
        "shmsave.save(numpy.zeros((2, 8, 8), 'uint8'), sys.argv[1] + '/{index}.png'); "
        "print(sorted(m for m in ('dask', 'distributed', 'zarr') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(REPO / ".pytest_tmp_unused")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    try:
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "[]"
    finally:
        for name in ("0.png", "1.png"):
            (REPO / ".pytest_tmp_unused" / name).unlink(missing_ok=True)
        if (REPO / ".pytest_tmp_unused").exists():
            (REPO / ".pytest_tmp_unused").rmdir()


def test_without_dask_the_error_names_the_extra():
    code = textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in ('dask', 'distributed'):
                    raise ImportError(f'No module named {name!r}')
        sys.meta_path.insert(0, Block())
        import shmsave
        try:
            import shmsave.dask
        except ImportError as error:
            print(error)
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert 'pip install "shmsave[dask]"' in done.stdout


@pytest.mark.parametrize(
    "nthreads, cpus, on_host, expected",
    [
        (1, 2, 2, 1),  # the test cluster: one thread each, two workers on two CPUs
        (2, 2, 1, 2),  # one worker with every thread of the host
        (8, 16, 1, 8),  # a worker given half the host: its threads
        (4, 16, 8, 2),  # eight workers share sixteen CPUs: two each
        (4, 2, 4, 1),  # more workers than CPUs: still one
    ],
)
def test_writer_size_follows_the_dask_worker(nthreads, cpus, on_host, expected):
    assert shmsave.dask.writer_size(nthreads, cpus, on_host) == expected


def test_bad_input_is_refused_before_computing(tmp_path):
    calls = []

    def source(block):
        calls.append(1)
        return block

    good = da.zeros((4, 8, 8), dtype="uint8", chunks=2).map_blocks(source, meta=np.empty((0, 0, 0), "uint8"))
    cases = [
        (da.zeros((4, 8), dtype="uint8"), "out/{index}.png", {}, "(N, H, W)"),
        (da.zeros((4, 8, 8, 2), dtype="uint8"), "out/{index}.png", {}, "channel"),
        (da.zeros((4, 8, 8), dtype="float64"), "out/{index}.png", {}, "float64"),
        (good, "out/all.png", {}, "{index}"),
        (good, "out/{index}.png", {"quality": 50}, "quality"),
        (good, "out/{index}.png", {"errors": "ignore"}, "errors"),
        (good, "out/{index}.png", {"workers": 0}, "workers"),
        (np.zeros((4, 8, 8), "uint8"), "out/{index}.png", {}, "shmsave.save"),
    ]
    for array, template, options, words in cases:
        with pytest.raises(shmsave.InvalidRequest, match=None) as info:
            shmsave.dask.save(array, str(tmp_path / template), **options)
        assert words.lower() in str(info.value).lower(), (words, str(info.value))
    assert not calls and not (tmp_path / "out").exists()


def test_threaded_scheduler_is_byte_identical_to_shmsave_save(tmp_path):
    frames = _frames(23)
    shmsave.save(frames, str(tmp_path / "ref" / "{index:03d}.png"), start=10)
    with dask.config.set(scheduler="threads"):
        array = da.from_array(frames, chunks=((3, 7, 5, 8), (20, 28), (64,), (3,)))
        seen = []
        report = shmsave.dask.save(array, str(tmp_path / "dask" / "{index:03d}.png"), start=10, progress=seen.append)
        assert report.count == 23 and report.ok and report.engine == "dask"
        assert sum(seen) == 23
        assert _bytes_of(tmp_path / "dask") == _bytes_of(tmp_path / "ref")
        lazy = shmsave.dask.save(array, str(tmp_path / "lazy" / "{index:03d}.png"), start=10, compute=False)
        assert not (tmp_path / "lazy").exists()
        assert lazy.compute().count == 23
    assert _bytes_of(tmp_path / "lazy") == _bytes_of(tmp_path / "ref")


def test_empty_array(tmp_path):
    with dask.config.set(scheduler="sync"):
        report = shmsave.dask.save(da.zeros((0, 8, 8), dtype="uint8"), str(tmp_path / "{index}.png"))
    assert report.count == 0 and report.ok


# -- on the cluster -----------------------------------------------------------------


@pytest.mark.slow
def test_cluster_is_byte_identical_with_uneven_chunks(client, tmp_path):
    frames = _frames(40)
    shmsave.save(frames, str(tmp_path / "ref" / "{index:04d}.png"), start=100)
    # uneven blocks along axis 0, and a split along axis 1 that must be rechunked to whole images
    array = da.from_array(frames, chunks=((3, 7, 5, 11, 1, 13), (20, 28), (64,), (3,)))
    report = shmsave.dask.save(array, str(tmp_path / "dask" / "{index:04d}.png"), start=100)
    assert (report.count, report.skipped, report.failed) == (40, 0, ())
    assert report.bytes == sum(len(b) for b in _bytes_of(tmp_path / "ref").values())
    assert report.workers == 2  # one inline Writer in each of the two Dask workers
    assert _bytes_of(tmp_path / "dask") == _bytes_of(tmp_path / "ref")


@pytest.mark.slow
def test_cluster_compute_false_returns_a_dask_object(client, tmp_path):
    frames = _frames(12)
    lazy = shmsave.dask.save(da.from_array(frames, chunks=5), str(tmp_path / "{index}.png"), compute=False)
    assert isinstance(lazy, Delayed) and not list(tmp_path.iterdir())
    report = lazy.compute()
    assert report.count == 12 and report.ok and report.seconds > 0
    (tmp_path / "3.png").unlink()
    (tmp_path / "3.png").mkdir()
    lazy = shmsave.dask.save(da.from_array(frames, chunks=5), str(tmp_path / "{index}.png"), compute=False)
    with pytest.raises(shmsave.WriteFailed) as info:
        lazy.compute()
    assert info.value.index == 3 and info.value.report.count == 11


@pytest.mark.slow
@pytest.mark.parametrize("errors", ["raise", "collect"])
def test_a_target_that_is_a_folder_fails_alone(client, tmp_path, errors):
    frames = _frames(20)
    out = tmp_path / "out"
    (out / "13.png").mkdir(parents=True)
    (out / "4.png").mkdir()
    array = da.from_array(frames, chunks=6)
    if errors == "raise":
        with pytest.raises(shmsave.WriteFailed) as info:
            shmsave.dask.save(array, str(out / "{index}.png"))
        error = info.value
        assert (error.index, error.errno, error.path) == (4, errno.EISDIR, str(out / "4.png"))
        report = error.report
    else:
        report = shmsave.dask.save(array, str(out / "{index}.png"), errors="collect")
    # every block ran: the failures of both blocks, by index, and the other 18 images
    assert [(f.index, f.errno) for f in report.failed] == [(4, errno.EISDIR), (13, errno.EISDIR)]
    assert report.count == 18
    assert len([p for p in out.iterdir() if p.is_file()]) == 18


@pytest.mark.slow
@pytest.mark.parametrize("errors", ["raise", "collect"])
def test_a_read_only_folder_fails_every_image(client, tmp_path, errors):
    folder = tmp_path / "ro"
    folder.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if mount.returncode:
        pytest.skip(f"cannot mount a read-only tmpfs here: {mount.stderr.strip()}")
    try:
        array = da.from_array(_frames(9), chunks=4)
        if errors == "raise":
            with pytest.raises(shmsave.WriteFailed) as info:
                shmsave.dask.save(array, str(folder / "{index}.png"))
            assert info.value.index == 0 and info.value.errno == errno.EROFS
            assert "read-only" in str(info.value)
            report = info.value.report
        else:
            report = shmsave.dask.save(array, str(folder / "{index}.png"), errors="collect")
        assert report.count == 0
        assert [f.index for f in report.failed] == list(range(9))
        assert all(f.errno == errno.EROFS and f.path == str(folder / f"{f.index}.png") for f in report.failed)
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


@pytest.mark.slow
def test_overwrite_false_resumes(client, tmp_path):
    frames = _frames(30)
    array = da.from_array(frames, chunks=8)
    template = str(tmp_path / "out" / "{index:02d}.png")
    shmsave.dask.save(array[:13], template)
    (tmp_path / "out" / "05.png").unlink()
    (tmp_path / "out" / "07.png").write_bytes(b"")  # what a writer killed between open and write can leave
    report = shmsave.dask.save(array, template, overwrite=False)
    assert (report.count, report.skipped) == (30 - 11, 11)
    shmsave.save(frames, str(tmp_path / "ref" / "{index:02d}.png"))
    assert _bytes_of(tmp_path / "out") == _bytes_of(tmp_path / "ref")


def _kill_when_saving(block, folder: str, marker: str, first: int, every_time: bool, test_process: int):
    """Compute this block as it is, then kill this Dask worker once the save of its images has
    begun (2 of them on disk), or right away when ``every_time``; the first attempt only,
    unless ``every_time``."""
    if not block.size or os.getpid() == test_process:
        raise RuntimeError("_kill_when_saving must run on a Dask worker, on a block")
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        if not every_time:
            return block
    if every_time:
        os.kill(os.getpid(), signal.SIGKILL)

    def saving_here() -> bool:  # this process is inside shmsave.dask's block function, on this block
        return any(
            frame.f_code.co_name == "save_block" and frame.f_locals.get("first") == first
            for top in sys._current_frames().values()
            for frame in _stack(top)
        )

    def killer():
        names = [f"{index:03d}.png" for index in range(first, first + len(block))]
        if wait_until(
            lambda: saving_here() and sum(os.path.exists(os.path.join(folder, n)) for n in names) >= 2, 20, 0.001
        ):
            Path(marker + ".mid-block").touch()
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=killer, daemon=True).start()
    return block


def _stack(frame):
    while frame is not None:
        yield frame
        frame = frame.f_back


def _with_killer(frames, chunks, index, folder, marker, every_time=False):
    array = da.from_array(frames, chunks=(chunks, -1, -1, -1))
    lo = sum(array.chunks[0][:index])
    hi = lo + array.chunks[0][index]
    killed = array[lo:hi].map_blocks(
        _kill_when_saving,
        str(folder),
        str(marker),
        lo,
        every_time,
        _TEST_PROCESS,
        meta=np.empty((0, 0, 0, 0), frames.dtype),
    )  # never called here
    return da.concatenate([array[:lo], killed, array[hi:]])


@pytest.mark.slow
def test_a_dask_worker_killed_mid_block_is_rerun(client, tmp_path):
    frames = _frames(60, 96, 128)
    out = tmp_path / "out"
    out.mkdir()
    array = _with_killer(frames, 20, 1, out, tmp_path / "marker")
    report = shmsave.dask.save(array, str(out / "{index:03d}.png"), compression=9)
    assert (tmp_path / "marker.mid-block").exists(), "the worker was not killed while it saved the block"
    assert (report.count, report.failed) == (60, ())
    shmsave.save(frames, str(tmp_path / "ref" / "{index:03d}.png"), compression=9)
    assert _bytes_of(out) == _bytes_of(tmp_path / "ref"), "a file is missing, partial or different"


@pytest.mark.slow
@pytest.mark.parametrize("errors", ["raise", "collect"])
def test_a_block_whose_workers_keep_dying_names_its_images(cluster, client, tmp_path, errors):
    local, _ = cluster
    frames = _frames(30)
    array = _with_killer(frames, 10, 1, tmp_path, tmp_path / "marker", every_time=True)
    allowed, local.scheduler.allowed_failures = local.scheduler.allowed_failures, 0  # give up at once
    try:
        if errors == "raise":
            with pytest.raises(shmsave.WriteFailed) as info:
                shmsave.dask.save(array, str(tmp_path / "{index:03d}.png"))
            assert info.value.index == 10 and "died" in str(info.value)
            report = info.value.report
        else:
            report = shmsave.dask.save(array, str(tmp_path / "{index:03d}.png"), errors="collect")
    finally:
        local.scheduler.allowed_failures = allowed
    # the killed block, and any other block that worker held when it died (allowed_failures=0), fail whole
    failed = [f.index for f in report.failed]
    assert set(range(10, 20)) <= set(failed) and failed == sorted(failed)
    assert {index // 10 for index in failed} == {index // 10 for index in failed if index % 10 == 0}
    assert len(failed) % 10 == 0 and report.count == 30 - len(failed)
    assert all("died" in f.message and "overwrite=False" in f.message for f in report.failed)
    written = sorted(int(p.stem) for p in tmp_path.glob("*.png"))
    assert written == sorted(set(range(30)) - set(failed))
    shmsave.save(frames, str(tmp_path / "ref" / "{index:03d}.png"))
    assert all(
        (tmp_path / f"{i:03d}.png").read_bytes() == (tmp_path / "ref" / f"{i:03d}.png").read_bytes() for i in written
    )


# -- the command ---------------------------------------------------------------------


def _zarr_store(path: Path, frames: np.ndarray, chunks) -> Path:
    zarr = pytest.importorskip("zarr")
    store = zarr.open_array(str(path), mode="w", shape=frames.shape, chunks=chunks, dtype=frames.dtype)
    store[:] = frames
    return path


@pytest.mark.slow
@pytest.mark.parametrize("where", ["threads", "cluster"])
def test_command_saves_a_zarr_store(cluster, tmp_path, where):
    local, _ = cluster
    frames = _frames(25)
    store = _zarr_store(tmp_path / "scan.zarr", frames, (6, 48, 64, 3))
    args = [store, "-o", tmp_path / "out" / "{stem}" / "{index:03d}.png", "--start", "5", "--json"]
    if where == "cluster":
        args += ["--scheduler", local.scheduler_address]
    done = subprocess.run([str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["images"] == 25 and summary["failed"] == []
    shmsave.save(frames, str(tmp_path / "ref" / "{index:03d}.png"), start=5)
    assert _bytes_of(tmp_path / "out" / "scan") == _bytes_of(tmp_path / "ref")


def test_command_scheduler_needs_a_zarr_input(tmp_path):
    np.save(tmp_path / "a.npy", _frames(2))
    done = subprocess.run(
        [str(SCRIPT), str(tmp_path / "a.npy"), "-o", str(tmp_path / "{index}.png"), "--scheduler", "tcp://127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "no .zarr input" in done.stderr


def test_command_unreachable_scheduler_is_a_usage_error(tmp_path):
    store = _zarr_store(tmp_path / "s.zarr", _frames(2), (1, 48, 64, 3))
    done = subprocess.run(
        [str(SCRIPT), str(store), "-o", str(tmp_path / "{index}.png"), "--scheduler", "tcp://127.0.0.1:9"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"},
    )
    assert done.returncode == 2, done.stderr
    assert "cannot reach the Dask scheduler" in done.stderr and "Traceback" not in done.stderr
    assert not list(tmp_path.glob("*.png"))
