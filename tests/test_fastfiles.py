"""The compiled helper (shmsave._fastfiles): used where built, the same files as Python writes.

Its failure cases (disk full, read-only folders and files, existing targets, symbolic links,
modes and umask, Ctrl-C, a killed worker) are the tests of test_faults.py, test_permissions.py
and test_process_boundaries.py, each run with the helper and without it (``files_by``).
"""

from __future__ import annotations

import errno
import mmap
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

import shmsave
from shmsave import InvalidRequest, _files, _images, _stream_names

needs_helper = pytest.mark.skipif(
    _files.compiled is None,
    reason="the compiled helper shmsave._fastfiles is not built here (no C compiler at install)",
)


def _tiny(count: int) -> np.ndarray:
    return np.random.default_rng(7).integers(0, 255, (count, 50, 50, 1), dtype=np.uint8)


@needs_helper
@pytest.mark.parametrize("engine", ["inline", "thread"])  # in this process, where the spy is
def test_the_helper_writes_every_tiny_file_in_groups(engine, monkeypatch, tmp_path):
    calls = []
    write_files = _files.compiled.write_files

    def counting(folders, names, buffers, *rest):
        written, error = write_files(folders, names, buffers, *rest)
        calls.append((len(names), written, error))
        return written, error

    monkeypatch.setattr(_files.compiled, "write_files", counting)
    count = 1000
    with shmsave.Writer(2, engine=engine) as writer:
        report = writer.save(_tiny(count), str(tmp_path / "{index}.jpg"))
    assert report.count == count
    assert sum(written for _, written, _ in calls) == count, "some files were written without the helper"
    assert all(error == 0 for *_, error in calls)
    assert len(calls) <= count / _files.GROUP_IMAGES + 2 * 8, "one call per file, not per group"


@pytest.mark.parametrize("size", ["tiny", "big"])
def test_files_are_byte_identical_to_imwrite(size, files_by, tmp_path):
    shape = (40, 16, 16) if size == "tiny" else (3, 200, 300, 3)
    stack = np.random.default_rng(3).integers(0, 255, shape, dtype=np.uint8)
    assert (cv2.imencode(".png", stack[0])[1].nbytes <= mmap.PAGESIZE) == (size == "tiny")
    with shmsave.Writer(2, engine="thread") as writer:
        writer.save(stack, str(tmp_path / "a" / "{index}.png"))
    for index, image in enumerate(stack):
        cv2.imwrite(str(tmp_path / f"{index}.png"), image)
        assert (tmp_path / "a" / f"{index}.png").read_bytes() == (tmp_path / f"{index}.png").read_bytes()


def test_shmsave_pure_python_turns_the_helper_off():
    code = "from shmsave import _files; print(_files.compiled is None)"
    env = dict(os.environ, SHMSAVE_PURE_PYTHON="1")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "True"


@needs_helper
def test_the_helper_stops_at_what_python_must_write(tmp_path):
    """It writes new files in order and stops at the first it cannot create, saying why."""
    folder = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        small, big = np.frombuffer(b"small", np.uint8), np.zeros(3 * mmap.PAGESIZE, np.uint8)
        (tmp_path / "c").write_bytes(b"old")
        names = ["a", "b", "c", "d"]
        assert _files.compiled.write_files(
            [folder] * 4, names, [small, big, small, small], False, True, mmap.PAGESIZE
        ) == (
            2,
            errno.EEXIST,
        )
        assert (tmp_path / "a").read_bytes() == b"small" and (tmp_path / "b").read_bytes() == big.tobytes()
        assert (tmp_path / "c").read_bytes() == b"old" and not (tmp_path / "d").exists()
        # without O_TMPFILE (tmpfile=False) a big file is left to Python; so is every durable one
        assert _files.compiled.write_files([folder], ["e"], [big], False, False, mmap.PAGESIZE) == (0, errno.EOPNOTSUPP)
        assert _files.compiled.write_files([folder], ["f"], [small], True, True, mmap.PAGESIZE) == (1, 0)
        assert not (tmp_path / "e").exists() and (tmp_path / "f").read_bytes() == b"small"
        assert sorted(os.listdir(tmp_path)) == ["a", "b", "c", "f"]
    finally:
        os.close(folder)


@needs_helper
def test_the_helper_refuses_lists_of_different_lengths(tmp_path):
    with pytest.raises(ValueError, match="differ in length"):
        _files.compiled.write_files([0], ["a", "b"], [b"", b""], False, True, mmap.PAGESIZE)


@pytest.mark.parametrize(
    "image",
    [
        np.arange(50 * 50, dtype=np.uint8).reshape(50, 50),
        np.arange(7 * 9 * 3, dtype=np.uint16).reshape(7, 9, 3),
        np.arange(64 * 64, dtype=np.float32).reshape(64, 64)[::2, ::3],
        np.arange(40 * 30 * 4, dtype=np.uint8).reshape(40, 30, 4)[:, :, :3],
        np.arange(60 * 70 * 3, dtype=np.uint8).reshape(60, 70, 3)[5:55, 10:60],
        np.arange(50 * 50 * 3, dtype=np.uint8).reshape(50, 50, 3)[..., 0],
        np.arange(20 * 30 * 3, dtype=np.uint16).reshape(20, 30, 3)[::-1, :, ::-1],
        np.arange(12 * 8, dtype=">u2").reshape(12, 8).T,
    ],
    ids=["gray", "uint16-color", "strided-float", "bgra-to-bgr", "crop", "channel", "flipped", "big-endian-T"],
)
def test_a_streams_copy_into_its_ring_is_the_same_in_c_and_python(image):
    """``_fastfiles.place`` and Python's ``_images.place`` copy an image's pixels in C order into
    the buffer at the offset, contiguous or not, and touch nothing else; ValueError when they do not fit."""
    places = [_images.place] + ([_files.compiled.place] if _files.compiled is not None else [])
    expected = np.ascontiguousarray(image).tobytes()
    for place in places:
        ring = np.full(image.nbytes + 200, 7, np.uint8)
        assert place(memoryview(ring), 100, image) is None
        assert ring[100 : 100 + image.nbytes].tobytes() == expected
        assert set(ring[:100]) == {7} and set(ring[100 + image.nbytes :]) == {7}
        with pytest.raises(ValueError):
            place(memoryview(ring), ring.size - image.nbytes + 1, image)  # one byte too far


@pytest.mark.parametrize("files_by", ["compiled", "python"], indirect=True)
def test_a_stream_copies_with_the_helper_where_it_is_built(files_by, tmp_path):
    with shmsave.Writer(workers=1, engine="inline") as writer, writer.stream(tmp_path / "{index}.png") as stream:
        expected = _images.place if files_by == "python" else _files.compiled.place
        assert stream._place is expected
        stream.write(np.arange(2500, dtype=np.uint8).reshape(50, 50))
    assert (cv2.imread(str(tmp_path / "0.png"), cv2.IMREAD_UNCHANGED) == np.arange(2500).reshape(50, 50) % 256).all()


@pytest.mark.parametrize("files_by", ["compiled", "python"], indirect=True)
def test_a_list_of_crops_reaches_the_worker_processes_whole(files_by, tmp_path, monkeypatch):
    """A call's listed images are copied into its staging slots, small ones by ``place`` and big
    ones by numpy: each file is what ``cv2.imencode`` makes of its crop."""
    copies, place = [], _images.place
    monkeypatch.setattr(_images, "place", lambda *args: copies.append(args[2].shape) or place(*args))
    frame = np.random.default_rng(7).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    crops = [frame[10:60, 20:70], frame[::-1, 100:110, 0], frame[5:295, 5:395], frame[40:90, 40:90, ::-1]]
    with shmsave.Writer(workers=2, engine="process") as writer:
        writer.save(crops, tmp_path / "{index}.png")
    for i, crop in enumerate(crops):
        assert (tmp_path / f"{i}.png").read_bytes() == cv2.imencode(".png", crop)[1].tobytes(), i
    if files_by == "python":  # the 290x390 crop (339 KB) went through numpy
        assert copies == [(50, 50, 3), (300, 10), (50, 50, 3)]


class _Text(str):
    pass


PATHS = [
    "/out/a.jpg", "/out/a.png", "/out/a.PNG", "/out.d/a", "/out/ag", "/é/ü.jpg", "/€/x.png", "/😀/x.jpg",
    "out/a.jpg", "/out/./a.jpg", "/out//a.jpg", "//a.jpg", "/out/a.jpg/", "/out/a\0.jpg", "/out/.a.jpg",
    "/out/..", "/out/a.", "/", "", _Text("/out/a.jpg"), b"/out/a.jpg", None,
]  # fmt: skip


def test_the_check_of_a_named_images_path_is_the_same_in_c_and_python():
    """``_fastfiles.plain_kind`` finds the kind of a plain absolute path (a str: no NUL, no ``/.``, no
    ``//``, no ``/`` at the end) by its extension where Python's ``plain_kind`` does, and declines
    (None: the long way, which also refuses) every other path, as the fallback does."""
    kinds = {".jpg": (0, "jpeg"), ".png": (1, "png"), "g": (2, "no extension: the last character")}
    finders = [_stream_names.plain_kind] + ([_files.compiled.plain_kind] if _files.compiled is not None else [])
    expected = [(0, "jpeg"), (1, "png"), None, None, kinds["g"], (0, "jpeg"), (1, "png"), (0, "jpeg")]
    expected += [None] * (len(PATHS) - len(expected))
    for find in finders:
        assert [find(path, kinds) for path in PATHS] == expected, find
    if _files.compiled is not None:
        with pytest.raises(TypeError):  # a kinds table that is not a dict
            _files.compiled.plain_kind("/out/a.jpg", [])


@pytest.mark.parametrize("files_by", ["compiled", "python"], indirect=True)
def test_named_images_are_checked_with_the_helper_where_it_is_built(files_by, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    image = np.arange(2500, dtype=np.uint8).reshape(50, 50)
    with shmsave.Writer(workers=1, engine="inline") as writer, writer.stream(None) as stream:
        expected = _stream_names.plain_kind if files_by == "python" else _files.compiled.plain_kind
        assert stream._names._plain_kind is expected
        for path in [tmp_path / "a.png", "b.png", str(tmp_path / "sub" / ".." / "c.png"), f"{tmp_path}//d.png"]:
            stream.write(image, path=path)  # plain, relative, "/..", "//": the last three the long way
        with pytest.raises(InvalidRequest, match="is a folder"):
            stream.write(image, path=str(tmp_path) + "/")
    assert sorted(os.listdir(tmp_path)) == ["a.png", "b.png", "c.png", "d.png", "sub"]
    assert (cv2.imread(str(tmp_path / "d.png"), cv2.IMREAD_UNCHANGED) == image).all()
