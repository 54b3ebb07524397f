"""Saving where the user may not write (EACCES): the folder, one file, one subfolder, the command.

Root ignores file modes, so these tests need a user the kernel checks. Not
root: this process itself, in-process. Root: every scenario runs in a child
process, as the first of these that works here (a probe decides, once):

    nobody (uid 65534)              when nobody can run this Python and import shmsave
    root without any capability     uid 0 with an empty bounding set (PR_CAPBSET_DROP
                                    before exec): no CAP_DAC_OVERRIDE, so file modes count

and are skipped only where neither can run Python. In every case the files the
user may write are theirs (chown'ed to nobody when nobody), and a folder they
may not write is theirs with mode 0o555: what ``chmod -w`` leaves.

A child's leaks are checked here (its /dev/shm segments, its worker processes);
conftest's ``no_leaks`` sees only this process.

    scenario                                         test
    -----------------------------------------------  ------------------------------------------
    1  the output folder is not writable            test_unwritable_folder_fails_before_any_image
       ... nor is the folder to create the new one in   (same, [new-subfolder-*])
    2  one target is a read-only file               test_one_forbidden_target_fails_alone
       one target's own folder is read-only             (same, [read-only-subfolder-*])
       a big image and a read-only file             test_a_big_image_does_not_replace_a_read_only_file
    3  the shmsave command, unwritable folder       test_command_into_unwritable_folder
       ... says so in one line                      test_command_into_unwritable_folder_says_it_in_one_line
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import json
import mmap
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import cv2
import numpy as np
import pytest

import shmsave
from shmsave import _files

from .conftest import shmsave_segments

REPO = Path(__file__).resolve().parents[1]  # the child imports shmsave and this module from here
NOBODY = 65534
ENGINES = ("inline", "thread", "process")
_CHILD_TIMEOUT_S = 60
_PR_CAPBSET_DROP = 24  # <linux/prctl.h>
_CAP_SETPCAP = 8  # <linux/capability.h>: needed to drop the others, so dropped last
_PNG = b"\x89PNG\r\n\x1a\n"
_DENIED = "permission denied"
_ACTION = "check the permissions of the file and its folder"


# -- who acts ---------------------------------------------------------------


@dataclass(frozen=True)
class _User:
    """How this run acts as a user the kernel checks file modes for."""

    name: str
    uid: int  # who owns what the user may write
    in_process: bool = False
    popen: dict = field(default_factory=dict)  # extra subprocess.Popen arguments


def _capability_dropper():
    """A preexec_fn that empties the bounding set: after exec, uid 0 has no capability."""
    libc = ctypes.CDLL(None, use_errno=True)  # loaded here: nothing is loaded between fork and exec
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    order = [cap for cap in range(last + 1) if cap != _CAP_SETPCAP] + [_CAP_SETPCAP]

    def drop():
        for cap in order:
            if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), f"prctl(PR_CAPBSET_DROP, {cap}) failed")

    return drop


def _ways_as_root() -> list[_User]:
    ways = [_User("nobody", NOBODY, popen=dict(user=NOBODY, group=NOBODY, extra_groups=[]))]
    try:
        ways.append(_User("root without capabilities", 0, popen=dict(preexec_fn=_capability_dropper())))
    except OSError:  # no /proc/sys/kernel/cap_last_cap or no libc to call
        pass
    return ways


_PROBE = """\
import sys
import shmsave
try:
    open(sys.argv[1] + "/probe", "x")
except PermissionError:
    print("denied")
"""


@pytest.fixture(scope="session")
def user() -> _User:
    if os.geteuid() != 0:
        return _User("this user", os.geteuid(), in_process=True)
    base = _new_base()
    try:
        locked = base / "locked"
        locked.mkdir(mode=0o555)
        for way in _ways_as_root():
            try:
                done = subprocess.run(
                    [sys.executable, "-c", _PROBE, str(locked)],
                    capture_output=True,
                    text=True,
                    env=_child_env(),
                    cwd="/",
                    timeout=_CHILD_TIMEOUT_S,
                    **way.popen,
                )
            except (OSError, subprocess.SubprocessError):  # e.g. nobody may not execute this Python
                continue
            if done.returncode == 0 and done.stdout.strip() == "denied":
                return way
    finally:
        _remove(base)
    pytest.skip("cannot run Python as an unprivileged user here")


def _child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


# -- the folders ------------------------------------------------------------


def _new_base() -> Path:
    base = Path(tempfile.mkdtemp(prefix="shmsave-permissions-"))  # not tmp_path: pytest's is 0o700, root's
    base.chmod(0o755)  # nobody must be able to enter it
    return base


def _remove(base: Path) -> None:
    """Give everything back to this user, writable, then remove it."""
    me = os.geteuid()
    if me == 0:
        os.lchown(base, 0, 0)
    base.chmod(0o755)
    for root, folders, files in os.walk(base):  # top-down: a folder is made writable before it is entered
        for name in folders + files:
            path = os.path.join(root, name)
            if me == 0:
                os.lchown(path, 0, 0)
            if name in folders:
                os.chmod(path, 0o755)
    shutil.rmtree(base)


@pytest.fixture
def place(user):
    """A folder the user may write, removed after the test."""
    base = _new_base()
    _give(base, user, 0o755)
    yield base
    _remove(base)


def _give(path: Path, user: _User, mode: int) -> Path:
    if user.uid != os.geteuid():
        os.chown(path, user.uid, user.uid)
    path.chmod(mode)
    return path


def _folder(path: Path, user: _User, mode: int = 0o755) -> Path:
    path.mkdir()
    return _give(path, user, mode)


def _file(path: Path, user: _User, data: bytes, mode: int) -> Path:
    path.write_bytes(data)
    return _give(path, user, mode)


# -- running a scenario as the user ------------------------------------------

_CHILD_MAIN = """\
import json, sys
import psutil
from shmsave import api
from tests import test_permissions
result = getattr(test_permissions, sys.argv[1])(*json.loads(sys.argv[2]))
if api._shared is not None:
    api._shared.close()
_, alive = psutil.wait_procs(psutil.Process().children(recursive=True), timeout=5)
result["children_left"] = [process.pid for process in alive]
print(json.dumps(result))
"""


def _act(user: _User, scenario, *args) -> dict:
    """``scenario(*args)`` as the user: here, or in a child that must leave nothing behind."""
    if user.in_process:
        return scenario(*args)
    code, out, err, pid = _spawn(
        user, [sys.executable, "-c", _CHILD_MAIN, scenario.__name__, json.dumps(args)], cwd="/"
    )
    assert code == 0, f"the scenario failed as {user.name}:\n{err}"
    result = json.loads(out.splitlines()[-1])
    assert result.pop("children_left") == [], f"worker processes outlived the Writer as {user.name}"
    return result


def _spawn(user: _User, argv: list[str], cwd) -> tuple[int, str, str, int]:
    """Run ``argv`` as the user; return (exit status, stdout, stderr, pid) once no segment of it is left."""
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_child_env(), cwd=cwd, **user.popen
    ) as child:
        try:
            out, err = child.communicate(timeout=_CHILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            raise
    assert not shmsave_segments(child.pid), f"segments left in /dev/shm: {shmsave_segments(child.pid)}"
    return child.returncode, out, err, child.pid


def _tiny(count: int) -> np.ndarray:
    """Images whose PNGs (~80 bytes) take the one-write path of the worker (files up to one page)."""
    return (np.arange(count * 64) % 251).astype(np.uint8).reshape(count, 8, 8)


def _noisy(count: int) -> np.ndarray:
    """Images whose PNGs (~9 KB) take the write-then-link path of the worker (files over one page)."""
    return np.random.default_rng(7).integers(0, 256, (count, 96, 96), np.uint8)


# Scenarios: module-level (a child imports them by name); JSON in, JSON out.


def save_and_catch(how: str, template: str) -> dict:
    """Save 3 images with ``shmsave.save`` or a ``Writer(2, engine=how)``; describe the WriteFailed raised."""
    pids: list[int] = []
    try:
        if how == "shmsave.save":
            shmsave.save(_tiny(3), template)
        else:
            with shmsave.Writer(2, engine=how) as writer:
                try:
                    writer.save(_tiny(3), template)
                finally:
                    pids = writer.pids
    except shmsave.WriteFailed as error:
        return {
            "raised": True,
            "errno": error.errno,
            "index": error.index,
            "path": error.path,
            "message": str(error),
            "after_images": getattr(error, "report", None) is not None,
            "pids": pids,
        }
    return {"raised": False}


def save_and_collect(engine: str, template: str, size: str, tmpfile: bool = True) -> dict:
    """Save 3 images with ``errors="collect"``; return how many were written and the failures.

    ``tmpfile=False``: big files go through a named temporary file, as where O_TMPFILE is missing
    (only the inline engine runs in this process, where that switch holds)."""
    images = _tiny(3) if size == "small" else _noisy(3)
    with mock.patch.object(_files, "_tmpfile_works", tmpfile and _files._tmpfile_works):
        with shmsave.Writer(2, engine=engine) as writer:
            report = writer.save(images, template, errors="collect")
    return {"count": report.count, "failed": [dataclasses.asdict(failure) for failure in report.failed]}


# -- 1. the output folder is not writable -----------------------------------


@pytest.mark.parametrize("how", ["shmsave.save", *ENGINES])
@pytest.mark.parametrize("where", ["folder", "new-subfolder"])
def test_unwritable_folder_fails_before_any_image(where, how, user, place):
    locked = _folder(place / "locked", user, 0o555)
    template = str(locked / "{index}.png") if where == "folder" else str(locked / "new" / "{index}.png")
    result = _act(user, save_and_catch, how, template)
    assert result["raised"], f"as {user.name}, saving into a read-only folder did not fail"
    assert result["errno"] == errno.EACCES
    assert (result["index"], result["path"]) == (0, template.format(index=0))
    message = result["message"]
    assert template.format(index=0) in message and str(locked) in message
    assert _DENIED in message.lower() and _ACTION in message
    assert not result["after_images"], "the folder check failed per image, not once before the first"
    assert result["pids"] == [], "workers were started for a folder that cannot be written"
    assert os.listdir(locked) == []


# -- 2. one target the user may not write, in a folder they may ----------------


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("case", ["read-only-file", "read-only-subfolder"])
def test_one_forbidden_target_fails_alone(case, engine, user, place, files_by):
    out = _folder(place / "out", user)
    if case == "read-only-file":  # the user's own earlier result, write-protected (chmod a-w 1.png)
        kept = _file(out / "1.png", user, b"keep me", 0o444)
        template = str(out / "{index}.png")
    else:  # a per-image folder, write-protected
        kept = _folder(out / "1", user, 0o555)
        template = str(out / "{index}" / "img.png")
    result = _act(user, save_and_collect, engine, template, "small")
    assert result["count"] == 2, f"as {user.name}: {result}"
    [failure] = result["failed"]
    assert (failure["index"], failure["path"], failure["errno"]) == (1, template.format(index=1), errno.EACCES)
    assert _DENIED in failure["message"].lower()
    for index in (0, 2):
        assert Path(template.format(index=index)).read_bytes().startswith(_PNG)
    if kept.is_file():
        assert kept.read_bytes() == b"keep me"
    else:
        assert os.listdir(kept) == []
    assert not [name for name in os.listdir(out) if name.endswith(".part")]


@pytest.mark.parametrize("through", ["O_TMPFILE", "temporary file"])
def test_a_big_image_does_not_replace_a_read_only_file(through, user, place, files_by):
    """Files over a page are linked or renamed into place, which ignores the old file's mode;
    a read-only file must still be refused, as open() refuses it for a small one."""
    assert all(cv2.imencode(".png", image)[1].nbytes > mmap.PAGESIZE for image in _noisy(3))
    out = _folder(place / "out", user)
    kept = _file(out / "1.png", user, b"keep me", 0o444)
    template = str(out / "{index}.png")
    result = _act(user, save_and_collect, "inline", template, "big", through == "O_TMPFILE")
    assert kept.read_bytes() == b"keep me", "a read-only file was replaced"
    [failure] = result["failed"]
    assert (failure["index"], failure["errno"]) == (1, errno.EACCES)
    assert _ACTION in failure["message"]
    assert result["count"] == 2 and Path(template.format(index=2)).read_bytes().startswith(_PNG)
    assert sorted(os.listdir(out)) == ["0.png", "1.png", "2.png"], "a temporary file was left"


# -- 3. the shmsave command ---------------------------------------------------


def _command_into_locked(user: _User, place: Path, template: str) -> tuple[int, str, str, Path]:
    np.save(place / "x.npy", _tiny(3))
    _give(place / "x.npy", user, 0o644)
    locked = _folder(place / "out", user, 0o555)
    code, out, err, _ = _spawn(user, [sys.executable, "-m", "shmsave", "x.npy", "-o", template], cwd=place)
    assert os.listdir(locked) == [], "the command wrote into a read-only folder"
    return code, out, err, locked


@pytest.mark.parametrize("template", ["out/{index}.png", "out/new/{index}.png"])
def test_command_into_unwritable_folder(template, user, place):
    code, out, err, _ = _command_into_locked(user, place, template)
    assert code == 1, f"as {user.name}: exit status {code}\n{err}"
    assert out == ""
    assert "Traceback" not in err
    assert template.format(index=0) in err
    assert _DENIED in err.lower() and _ACTION in err


def test_command_into_unwritable_folder_says_it_in_one_line(user, place):
    code, out, err, _ = _command_into_locked(user, place, "out/{index}.png")
    assert code == 1
    [line] = err.splitlines()
    assert line.count("out/0.png") == 1
    assert "--errors collect" not in line
