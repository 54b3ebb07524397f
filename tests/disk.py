"""A real file system on a loop device, for the tests of a stalled mount and of a power cut.

``ext4_disk`` mounts a fresh ext4 image; ``frozen`` stops every write to it (``fsfreeze``: writers
block in the kernel, unkillable, as on a hung NFS server); ``crash_image`` copies what the
device holds at that instant (what reached the "disk", not the page cache of its file system)
and mounts the copy, as the machine would see its disk after a power cut.

Mounting needs root and a loop device: where the machine refuses, the tests skip and say so.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from pathlib import Path

import pytest

_TOOLS = ("mkfs.ext4", "mount", "umount", "fsfreeze")


def _run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, timeout=60)


def _mount(image: Path, where: Path, options: str) -> None:
    where.mkdir()
    try:
        _run("mount", "-o", f"loop,{options}", str(image), str(where))
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        stderr = getattr(error, "stderr", b"") or b""
        pytest.skip(f"mounting a loop device needs root and /dev/loop* ({stderr.decode().strip() or error})")


@contextlib.contextmanager
def ext4_disk(folder: Path, megabytes: int = 64):
    """A fresh ext4 file system mounted at ``folder / "mnt"``, yielded as that path.

    ``commit=60``: the journal commits only every minute, so nothing reaches the device in the
    test's time unless something syncs it (the kernel's own writeback waits 30 s for a page).
    """
    if missing := [tool for tool in _TOOLS if shutil.which(tool) is None]:
        pytest.skip(f"needs {', '.join(missing)} to make and mount a file system")
    image = folder / "disk.img"
    with open(image, "wb") as file:
        file.truncate(megabytes << 20)
    _run("mkfs.ext4", "-q", "-F", str(image))
    mounted = folder / "mnt"
    _mount(image, mounted, "commit=60")
    try:
        yield mounted
    finally:
        subprocess.run(["fsfreeze", "-u", str(mounted)], capture_output=True, timeout=60)
        _run("umount", str(mounted))


@contextlib.contextmanager
def frozen(mounted: Path):
    """Every write to the file system at ``mounted`` blocks until the block ends."""
    _run("fsfreeze", "-f", str(mounted))
    try:
        yield
    finally:  # not checked: a guard may have thawed it already
        subprocess.run(["fsfreeze", "-u", str(mounted)], capture_output=True, timeout=60)


@contextlib.contextmanager
def crash_image(folder: Path):
    """Mount, at ``folder / "after"``, a copy of the disk of ``ext4_disk(folder)`` as it is now.

    The loop device's backing file holds what the file system has sent to the device (synced
    data, committed journal), not what it still keeps in memory: what a power cut would leave.
    Mounting the copy replays its journal, as booting again would.
    """
    copy = folder / "after.img"
    shutil.copyfile(folder / "disk.img", copy)
    after = folder / "after"
    _mount(copy, after, "rw")
    try:
        yield after
    finally:
        _run("umount", str(after))
