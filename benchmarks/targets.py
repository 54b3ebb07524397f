"""Where the images are written: a private tmpfs mount and a folder on the real disk."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

_MEMORY_FILESYSTEMS = {"tmpfs", "ramfs"}


@dataclass(frozen=True)
class Target:
    """A folder to write into, the filesystem it lives on, and whether it is a real disk."""

    name: str
    root: Path
    filesystem: str
    is_disk: bool


def filesystem_of(path: Path) -> str:
    """'fstype on mountpoint (device)' for the mount that holds `path`."""
    path = os.path.realpath(path)
    best = None
    for part in psutil.disk_partitions(all=True):
        mount = part.mountpoint
        inside = path == mount or path.startswith(mount.rstrip("/") + "/")
        if inside and (best is None or len(mount) > len(best.mountpoint)):
            best = part
    return f"{best.fstype} on {best.mountpoint} ({best.device})" if best else "unknown"


def _disk_parent() -> Path:
    """The first of /var/tmp, the home folder, /tmp that is not a memory filesystem."""
    candidates = [Path("/var/tmp"), Path.home(), Path(tempfile.gettempdir())]
    for candidate in candidates:
        if candidate.is_dir() and filesystem_of(candidate).split()[0] not in _MEMORY_FILESYSTEMS:
            return candidate
    return candidates[0]


@contextlib.contextmanager
def disk_target() -> Iterator[Target]:
    """A fresh temp folder on the real disk, removed on exit."""
    root = Path(tempfile.mkdtemp(prefix="shmsave-bench-disk-", dir=_disk_parent()))
    try:
        fs = filesystem_of(root)
        yield Target("disk", root, fs, fs.split()[0] not in _MEMORY_FILESYSTEMS)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def tmpfs_target(size: str = "4g") -> Iterator[Target | str]:
    """A tmpfs mounted for this run on a fresh folder (needs root), unmounted and removed on exit.

    Yields the Target, or a string saying why no tmpfs could be mounted.
    /dev/shm is deliberately not used: shmsave checks it for leaked segments.
    """
    if os.geteuid() != 0:
        yield "tmpfs target skipped: mounting a private tmpfs needs root"
        return
    root = Path(tempfile.mkdtemp(prefix="shmsave-bench-tmpfs-", dir=_disk_parent()))
    try:
        mount = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(root)], capture_output=True, text=True
        )
        if mount.returncode:
            yield f"tmpfs target skipped: mount failed: {mount.stderr.strip() or mount.returncode}"
            return
        try:
            yield Target("tmpfs", root, filesystem_of(root), False)
        finally:
            if subprocess.run(["umount", str(root)], capture_output=True).returncode:
                subprocess.run(["umount", "-l", str(root)], capture_output=True)
    finally:
        with contextlib.suppress(OSError):
            root.rmdir()


@contextlib.contextmanager
def open_targets(which: str) -> Iterator[tuple[list[Target], list[str]]]:
    """The targets asked for ('tmpfs', 'disk' or 'both') and notes on any that were skipped."""
    with contextlib.ExitStack() as stack:
        targets, notes = [], []
        if which in ("tmpfs", "both"):
            tmpfs = stack.enter_context(tmpfs_target())
            (notes if isinstance(tmpfs, str) else targets).append(tmpfs)
        if which in ("disk", "both"):
            targets.append(stack.enter_context(disk_target()))
        yield targets, notes


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    """A temp folder on the real disk for untimed files (.npy inputs, joblib memmaps), removed on exit."""
    root = Path(tempfile.mkdtemp(prefix="shmsave-bench-scratch-", dir=_disk_parent()))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)
