"""durable=True: when the call returns, every file it wrote and every folder entry it made is synced.

In-process engines are watched by wrapping ``os.fsync``, ``os.link`` and ``os.replace``: each
event is recorded with the inode it concerns, so the test sees, for every file, that its data
was synced before its name appeared, and for every folder, that it was synced after its last
new name (files written by Python: the compiled helper makes these calls in C). Worker processes
and the compiled helper are watched with strace, where this machine lets it trace.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys

import cv2
import numpy as np
import pytest

import shmsave
from shmsave import _files
from shmsave.errors import InvalidRequest


class SyncLog:
    """``(what, inode)`` events in order: "sync" of a file or folder, "name" when a file gets its name."""

    def __init__(self, monkeypatch) -> None:
        self.events: list[tuple[str, int]] = []
        monkeypatch.setattr(_files, "compiled", None)  # its calls are C's, not these: strace watches them below
        fsync, link, replace = os.fsync, os.link, os.replace

        def logged_fsync(fd):
            fsync(fd)
            self.events.append(("sync", os.fstat(fd).st_ino))

        def logged_link(src, dst, *, src_dir_fd=None, dst_dir_fd=None, follow_symlinks=True):
            inode = os.stat(src, dir_fd=src_dir_fd).st_ino
            link(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd, follow_symlinks=follow_symlinks)
            self.events.append(("name", inode))

        def logged_replace(src, dst, *, src_dir_fd=None, dst_dir_fd=None):
            inode = os.stat(src, dir_fd=src_dir_fd, follow_symlinks=False).st_ino
            replace(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
            self.events.append(("name", inode))

        monkeypatch.setattr(os, "fsync", logged_fsync)
        monkeypatch.setattr(os, "link", logged_link)
        monkeypatch.setattr(os, "replace", logged_replace)

    def synced_before_named(self, path) -> bool:
        """Whether the file at ``path`` was synced before it got its (last) name."""
        inode = os.stat(path).st_ino
        named = max((i for i, event in enumerate(self.events) if event == ("name", inode)), default=None)
        return named is not None and ("sync", inode) in self.events[:named]

    def folder_synced_after_its_files(self, folder, files) -> bool:
        inode = os.stat(folder).st_ino
        last_name = max(i for i, event in enumerate(self.events) if event[0] == "name" and event[1] in files)
        return ("sync", inode) in self.events[last_name:]

    def syncs_of(self, path) -> int:
        return self.events.count(("sync", os.stat(path).st_ino))


def _inodes(paths) -> set[int]:
    return {os.stat(path).st_ino for path in paths}


def _images(count: int, big: bool) -> np.ndarray:
    """Noise: big images make files of several pages (O_TMPFILE), small ones of less than a page."""
    side = 96 if big else 8
    return np.random.default_rng(count).integers(0, 256, (count, side, side, 3), np.uint8)


@pytest.mark.parametrize("engine", ["inline", "thread"])
@pytest.mark.parametrize("big", [False, True], ids=["small", "big"])
@pytest.mark.parametrize("tmpfile", [True, False], ids=["o_tmpfile", "temporary-name"])
def test_every_file_is_synced_before_its_name_and_its_folder_after(engine, big, tmpfile, tmp_path, monkeypatch):
    monkeypatch.setattr(_files, "_tmpfile_works", _files._tmpfile_works and tmpfile)
    images = _images(40, big)
    (tmp_path / "7.png").write_bytes(b"an old file, replaced")
    log = SyncLog(monkeypatch)
    with shmsave.Writer(workers=2, engine=engine) as writer:
        report = writer.save(images, str(tmp_path / "{index}.png"), durable=True)
    assert report.count == 40
    paths = [tmp_path / f"{i}.png" for i in range(40)]
    for i, path in enumerate(paths):
        assert log.synced_before_named(path), f"{path.name} got its name before its data was synced"
        assert np.array_equal(cv2.imread(str(path)), images[i])
    assert log.folder_synced_after_its_files(tmp_path, _inodes(paths))


def test_without_durable_nothing_is_synced(tmp_path, monkeypatch):
    log = SyncLog(monkeypatch)
    shmsave.Writer(workers=2, engine="thread").save(_images(20, True), str(tmp_path / "{index}.png"))
    assert not [event for event in log.events if event[0] == "sync"]


def test_new_folders_are_synced_into_their_parents(tmp_path, monkeypatch):
    log = SyncLog(monkeypatch)
    with shmsave.Writer(workers=2, engine="inline") as writer:
        writer.save(_images(5, False), str(tmp_path / "a/b/c/{index}.png"), durable=True)
        writer.save(_images(3, False), str(tmp_path / "d/{index}/x.png"), durable=True)  # folders per image
    for folder in ("", "a", "a/b", "d", "d/0", "d/2"):
        assert log.syncs_of(tmp_path / folder) >= 1, f"{folder or 'the top folder'} was never synced"
    assert log.folder_synced_after_its_files(tmp_path / "a/b/c", _inodes((tmp_path / "a/b/c").iterdir()))


@pytest.mark.parametrize("engine", ["inline", "thread"])
def test_a_durable_stream_syncs_what_it_wrote(engine, tmp_path, monkeypatch):
    log = SyncLog(monkeypatch)
    images = _images(30, True)
    with (
        shmsave.Writer(workers=2, engine=engine) as writer,
        writer.stream(str(tmp_path / "{index}.png"), durable=True) as stream,
    ):
        for image in images:
            stream.write(image)
    paths = [tmp_path / f"{i}.png" for i in range(30)]
    assert all(log.synced_before_named(path) for path in paths)
    assert log.folder_synced_after_its_files(tmp_path, _inodes(paths))


def test_durable_must_be_true_or_false(tmp_path):
    with pytest.raises(InvalidRequest, match="durable must be True or False"):
        shmsave.save(_images(2, False), str(tmp_path / "{index}.png"), durable="yes")
    assert not list(tmp_path.iterdir())


# -- worker processes and the command, watched with strace ---------------------------------------

_STRACE = shutil.which("strace")


def _strace(args: list[str], log) -> subprocess.CompletedProcess:
    """Run ``args`` under strace, one log per process (``log.<pid>``: no call is split across lines)."""
    if _STRACE is None:
        pytest.skip("strace is not installed: worker processes cannot be watched")
    probe = subprocess.run([_STRACE, "-f", "-qq", "-o", os.devnull, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"strace cannot trace here (no ptrace permission?): {probe.stderr.strip()}")
    return subprocess.run(
        [_STRACE, "-ff", "-qq", "-y", "-e", "trace=fsync,fdatasync,linkat,renameat,renameat2", "-o", str(log), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


_CALL = re.compile(r"^(\w+)\((.*)\)\s+= (-?\d+)")


def _check_strace(log, folder, count: int) -> None:
    """In each process: every linkat of an unnamed file follows an fsync of its descriptor, and a
    process that named files in ``folder`` synced the folder after its last one."""
    named = set()
    for process_log in log.parent.glob(log.name + ".*"):
        synced_fds: set[str] = set()
        last_name = folder_synced = -1
        for number, line in enumerate(process_log.read_text().splitlines()):
            match = _CALL.match(line)
            if not match or match.group(3) != "0":
                continue
            call, args = match.group(1), match.group(2)
            fd = args.split("<", 1)[0]
            if call in ("fsync", "fdatasync"):
                if args.startswith(f"{fd}<{folder}>"):
                    folder_synced = number
                else:
                    synced_fds.add(fd)
            elif call == "linkat" and "/proc/self/fd/" in args:
                linked = re.search(r"/proc/self/fd/(\d+)", args).group(1)
                assert linked in synced_fds, f"{process_log.name}: linked before synced: {line}"
                synced_fds.discard(linked)
                named.add(re.findall(r'"([^"]+)"', args)[-1])
                last_name = number
            elif call.startswith("rename"):
                named.add(re.findall(r'"([^"]+)"', args)[-1])
                last_name = number
        assert last_name < 0 or folder_synced > last_name, (
            f"{process_log.name}: the folder was not synced after its last file"
        )
    assert {name for name in named if not name.startswith(".shmsave-")} == {f"{i}.png" for i in range(count)}


@pytest.mark.parametrize("side", [8, 96], ids=["small", "big"])
@pytest.mark.parametrize("engine", ["process", "thread"])
def test_worker_processes_and_threads_sync_every_file_and_the_folder(engine, side, files_by, tmp_path):
    folder = tmp_path / "out"
    code = (
        "import sys, numpy as np, shmsave\n"
        f"images = np.random.default_rng(0).integers(0, 256, (64, {side}, {side}, 3), np.uint8)\n"
        f"writer = shmsave.Writer(workers=2, engine={engine!r})\n"
        "report = writer.save(images, sys.argv[1] + '/{index}.png', durable=True)\n"
        "assert report.count == 64, report\n"
    )
    done = _strace([sys.executable, "-c", code, str(folder)], tmp_path / "strace.log")
    assert done.returncode == 0, done.stderr
    _check_strace(tmp_path / "strace.log", folder, 64)


def test_the_command_takes_durable(tmp_path):
    source = tmp_path / "frames.npy"
    np.save(source, _images(48, True))
    folder = tmp_path / "out"
    shmsave_command = [sys.executable, "-m", "shmsave", str(source), "-o", str(folder / "{index}.png"), "--durable"]
    done = _strace(shmsave_command, tmp_path / "strace.log")
    assert done.returncode == 0, done.stderr
    assert len(os.listdir(folder)) == 48
    _check_strace(tmp_path / "strace.log", folder, 48)


def test_permission_bits_of_a_replaced_file_are_synced_with_it(tmp_path, monkeypatch):
    target = tmp_path / "0.png"
    target.write_bytes(b"old")
    target.chmod(0o640)
    log = SyncLog(monkeypatch)
    shmsave.Writer(workers=1, engine="inline").save(_images(1, True), str(tmp_path / "{index}.png"), durable=True)
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert log.synced_before_named(target)


def _saved_and_crashed(tmp_path, engine: str, durable: bool) -> tuple[dict, dict]:
    """Save small and big images on a fresh ext4 disk, then mount what a power cut right after the
    call would leave: ``({path: image}, {path: bytes read back from the crashed disk or None})``."""
    from .disk import crash_image, ext4_disk

    small, big = _images(30, big=False), _images(10, big=True)
    expected = {}
    with ext4_disk(tmp_path) as disk, shmsave.Writer(workers=2, engine=engine) as writer:
        for name, images in (("small", small), ("big", big)):
            writer.save(images, str(disk / "run" / name / "{index}.png"), durable=durable)
            expected.update({f"run/{name}/{i}.png": image for i, image in enumerate(images)})
        with crash_image(tmp_path) as after:
            found = {path: (after / path).read_bytes() if (after / path).is_file() else None for path in expected}
    return expected, found


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["thread", "process"])
def test_a_durable_save_survives_a_power_cut(engine, tmp_path):
    """The disk as a power cut right after the call leaves it (a copy of the loop device's file,
    its journal replayed): every file is there, whole."""
    expected, found = _saved_and_crashed(tmp_path, engine, durable=True)
    for path, image in expected.items():
        assert found[path] is not None, f"{path} is missing after the power cut"
        decoded = cv2.imdecode(np.frombuffer(found[path], np.uint8), cv2.IMREAD_UNCHANGED)
        assert decoded is not None and np.array_equal(decoded, image), f"{path} is not whole after the power cut"


@pytest.mark.slow
def test_without_durable_a_power_cut_loses_files_so_the_crash_test_can_fail(tmp_path):
    """The control of the test above: the same save without ``durable`` is not on the disk yet
    (the file system commits every 60 s), so a missing sync would be seen."""
    expected, found = _saved_and_crashed(tmp_path, "process", durable=False)
    whole = [path for path, data in found.items() if data is not None and len(data) > 0]
    assert len(whole) < len(expected), "every file survived without a sync: the crash image shows nothing"
